"""`avcap serve` latency and page weight on a scenario database (issue 25, item 4).

    python3 benchmarks/bench_serve.py --db /work/scratch/scale/db-1100k --requests 300 \
        --out benchmarks/runs/serve/bench_serve_1100k.json

starts `avcap serve --db DIR` (loopback, a free port) as a user would, then requests search pages
one after another on one keep-alive connection, cycling through a fixed mix:

    text      free text, hybrid ranking (full text + embedding, fused)
    text+filter  free text and one or two attribute filters, hybrid
    filter    attribute filters only (no query)
    page 3    a free-text query's third page (offset 48)
    clip      a clip page (the database's `get` by clip id)

For each request it records the server-side time (the page's `Server-Timing: app;dur=...`, from
the request reaching the app to the rendered page: query, database, template), the part of it spent
in the database call (`db;dur=...`: `ScenarioDB.search` or `get`) and the time the client saw (adds
HTTP and uvicorn), and reports p50 / p95 / max per kind and overall after
`--warmup` requests. Page weight: the HTML of each page, plus what a browser fetches for a search
page (the stylesheet, the script, every thumbnail on it), in bytes as sent (pages, stylesheet and
script gzip-compressed for a client that asks, as browsers do; thumbnails as stored). The machine's other load is
not controlled: the numbers are what one 2-core box gives with whatever else runs on it.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

QUERIES = [
    "pedestrian crossing at night in the rain",
    "car braking ahead at a red traffic light",
    "cyclist riding towards the ego vehicle",
    "fog on a rural road",
    "bus stopped at the kerb",
    "ambulance with flashing lights",
    "construction cones along the lane",
    "ego vehicle turns left at a junction",
    "snow covered highway",
    "child walking with an adult on the sidewalk",
]
FILTERS = [
    [("weather", "C")], [("lighting", "D")], [("weather", "C"), ("lighting", "D")], [("area", "A")],
    [("pedestrian_crossing", "A")], [("ego_maneuver", "B")], [("road_surface", "B"), ("lighting", "C")],
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(percentile(xs, 0.5), 2), "p95_ms": round(percentile(xs, 0.95), 2),
            "max_ms": round(max(xs), 2) if xs else None, "mean_ms": round(statistics.fmean(xs), 2) if xs else None}


def plan(n: int, clip_ids: list[str]) -> list[tuple[str, str]]:
    """(kind, path) for request i, cycling through the mix deterministically."""
    out = []
    for i in range(n):
        q = QUERIES[i % len(QUERIES)]
        f = FILTERS[i % len(FILTERS)]
        kind = ("text", "text+filter", "filter", "page 3", "clip")[i % 5]
        if kind == "text":
            params = [("q", q)]
        elif kind == "text+filter":
            params = [("q", q)] + [("where", f"{n}={v}") for n, v in f]
        elif kind == "filter":
            params = [("where", f"{n}={v}") for n, v in f]
        elif kind == "page 3":
            params = [("q", q), ("page", "3")]
        else:
            if not clip_ids:
                continue
            out.append((kind, "/clip/" + quote(clip_ids[i % len(clip_ids)], safe="")))
            continue
        out.append((kind, "/?" + urlencode(params)))
    return out


class Client:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[int, dict, bytes, float]:
        """(status, headers, body as decoded, ms); headers["wire-bytes"]: the body's bytes on the wire."""
        t = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept-Encoding": "gzip"})  # as a browser asks
        r = self.conn.getresponse()
        body = r.read()
        headers = {k.lower(): v for k, v in r.getheaders()}
        headers["wire-bytes"] = len(body)
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return r.status, headers, body, (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "avcap", "serve", "--db", str(args.db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("avcap serve: "):
        proc.kill()
        sys.exit(f"avcap serve did not start: {line}{proc.stderr.read()}")
    startup_s = time.perf_counter() - t0
    port = int(line.rsplit(":", 1)[1].strip().strip("/"))
    clips_line = proc.stdout.readline().strip()
    try:
        c = Client(port)
        # clip ids for the clip pages: the first results of a few queries
        ids: list[str] = []
        for q in QUERIES[:4]:
            _, _, body, _ = c.get("/?" + urlencode([("q", q)]))
            ids += [x for x in re.findall(r'class="clip-id">([^<]+)<', body.decode()) if x not in ids][:5]
        requests = plan(args.warmup + args.requests, ids)
        by_kind: dict[str, dict[str, list[float]]] = {}
        html_bytes: dict[str, list[int]] = {}
        failures = []
        for i, (kind, path) in enumerate(requests):
            status, headers, body, wall = c.get(path)
            if status != 200:
                failures.append(f"{status} {path}: {body[:200]!r}")
                continue
            if i < args.warmup:
                continue
            timing = headers.get("server-timing", "")
            m = re.search(r"app;dur=([0-9.]+)", timing)
            mdb = re.search(r"db;dur=([0-9.]+)", timing)
            d = by_kind.setdefault(kind, {"server": [], "client": [], "db": []})
            d["server"].append(float(m.group(1)) if m else float("nan"))
            d["db"].append(float(mdb.group(1)) if mdb else float("nan"))
            d["client"].append(wall)
            html_bytes.setdefault(kind, []).append(len(body))
        # the weight of one search page as a browser loads it
        _, page_headers, page, _ = c.get("/?" + urlencode([("q", QUERIES[0])]))
        assets = {p: c.get(p)[1]["wire-bytes"] for p in ("/static/app.css", "/static/app.js")}
        thumbs = re.findall(r'<img src="(/media/thumb/[^"]+)"', page.decode())
        thumb_bytes = sum(c.get(p)[1]["wire-bytes"] for p in thumbs)
    finally:
        proc.terminate()
        proc.wait(20)

    search_server = [x for k, d in by_kind.items() if k != "clip" for x in d["server"]]
    search_client = [x for k, d in by_kind.items() if k != "clip" for x in d["client"]]
    search_db = [x for k, d in by_kind.items() if k != "clip" for x in d["db"]]
    outside_db = [s - b for k, d in by_kind.items() if k != "clip" for s, b in zip(d["server"], d["db"])]
    result = {
        "db": str(args.db), "db_line": clips_line, "requests": sum(len(d["server"]) for d in by_kind.values()),
        "warmup": args.warmup, "startup_s": round(startup_s, 2), "failures": failures[:10],
        "search_pages": {"server": summary(search_server), "db": summary(search_db),
                         "server_outside_db": summary(outside_db), "client": summary(search_client)},
        "per_kind": {k: {"server": summary(d["server"]), "db": summary(d["db"]), "client": summary(d["client"]),
                         "html_bytes_median": int(statistics.median(html_bytes[k]))} for k, d in by_kind.items()},
        "page_weight": {"html": len(page), "html_gzip": page_headers["wire-bytes"],
                        **{k.rsplit("/", 1)[1] + "_gzip": v for k, v in assets.items()},
                        "thumbnails": len(thumbs), "thumbnail_bytes": thumb_bytes,
                        "total_on_the_wire": page_headers["wire-bytes"] + sum(assets.values()) + thumb_bytes},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
