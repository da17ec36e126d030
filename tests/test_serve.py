"""`avcap serve`: search and review pages over HTTP, what it refuses (traversal, forged writes,
malformed requests, unsafe binding), HTTP range requests, and a real browser (headless Chromium)
searching, playing a clip and making a review decision that `avcap bench apply` accepts.

The world is benchmarks/serve_data.py's: rendered clips, a scenario database of their reference
captions and world-truth attributes, and a benchmark whose video side errs on purpose (a review
queue). The browser tests need Debian's `chromium` and `chromium-driver` and `pip install selenium`;
without them they skip and say so."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_data import build  # noqa: E402  (benchmarks/ is not a package)

from avcap.bench.build import read_pairs  # noqa: E402
from avcap.core.records import iter_records  # noqa: E402
from avcap.scenarios.db import open_db  # noqa: E402
from avcap.serve.app import create_app  # noqa: E402
from avcap.serve.reviews import ReviewQueue  # noqa: E402
from avcap.serve.security import StartupRefused, check_bind  # noqa: E402

CHROMIUM = os.environ.get("AVCAP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AVCAP_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "serve-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-world")
    paths = build(out, videos=6, seed=2, width=160, height=96, seconds=3.0, fps=8.0, workers=1)
    paths["db_handle"] = open_db(paths["db"])
    return paths


def _review_copy(world, tmp_path: Path, name: str = "review.csv") -> Path:
    """A private copy of the review queue (tests that write must not see each other's decisions)."""
    dst = tmp_path / name
    if name.endswith(".jsonl"):
        with open(world["review"], newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        dst.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        shutil.copy(world["review"], dst)
    return dst


def _client(world, review: Path, **kw):
    from starlette.testclient import TestClient

    app = create_app(db=world["db_handle"], db_dir=world["db"], reviews=ReviewQueue(world["dataset"], review), **kw)
    return TestClient(app, base_url="http://127.0.0.1"), app.state.avcap.csrf_token


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- pages over HTTP


def test_search_page_query_filter_and_paging(world, tmp_path):
    client, _ = _client(world, _review_copy(world, tmp_path))
    db = world["db_handle"]
    r = client.get("/", params={"q": "pedestrian crossing"})
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    ids = re.findall(r'class="clip-id">([^<]+)<', r.text)
    assert ids == [h.clip_id for h in db.search("pedestrian crossing", limit=24)]
    assert "Content-Security-Policy".lower() in r.headers and r.headers["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r"app;dur=[0-9.]+, db;dur=[0-9.]+", r.headers["server-timing"])
    assert r.headers["content-encoding"] == "gzip"  # pages go compressed to a client that takes gzip...
    plain = client.get("/", params={"q": "pedestrian crossing"}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers  # ...and plain to one that does not
    assert re.sub(r"\d+ ms", "", plain.text) == re.sub(r"\d+ ms", "", r.text)
    # every attribute is offered as a filter, with its choices
    for a in db.attributes():
        assert f'value="{a.name}=A"' in r.text
    # a filter keeps exactly the clips whose answer it names
    values = db.attribute_values("weather")
    letter = max(values, key=lambda k: values[k]["count"])
    r = client.get("/", params={"where": f"weather={letter}"})
    got = set(re.findall(r'class="clip-id">([^<]+)<', r.text))
    want = {h.clip_id for h in db.search(where={"weather": letter}, limit=100)}
    assert got == want and len(got) == values[letter]["count"] > 0
    assert f"weather</b> {values[letter]['answer']}" in r.text  # the active filter, by its choice text
    # paging: 24 a page; the 6-clip world has one page and no "next"
    assert 'id="next"' not in r.text and "page 1" in r.text


@pytest.mark.parametrize("params, message", [
    ({"where": "wether=C"}, "unknown attribute &#39;wether&#39; (did you mean weather?)"),
    ({"where": "weather=purple"}, "&#39;purple&#39; names no choice of weather"),
    ({"where": "weather"}, "expected NAME=VALUE"),
    ({"page": "0"}, "page: &#39;0&#39; is not a page number"),
    ({"page": "x"}, "page: &#39;x&#39; is not a page number"),
    ({"mode": "best"}, "mode: &#39;best&#39; is not one of hybrid, hybrid-plain, text, vector"),
    ({"sort": "1"}, "unknown parameter(s): sort"),
])
def test_search_page_refuses_bad_parameters_with_one_line(world, tmp_path, params, message):
    client, _ = _client(world, _review_copy(world, tmp_path))
    r = client.get("/", params=params)
    assert r.status_code == 400
    assert len(re.findall(r'id="search-error"', r.text)) == 1 and message in r.text, r.text[-1500:]


def test_clip_page_shows_caption_every_attribute_and_the_labeller(world, tmp_path):
    client, _ = _client(world, _review_copy(world, tmp_path))
    db = world["db_handle"]
    hit = db.search(limit=1)[0]
    r = client.get(f"/clip/{hit.clip_id}")
    assert r.status_code == 200
    assert hit.caption.replace("'", "&#39;") in r.text
    for a in db.attributes():
        got = hit.attributes[a.name]
        assert f">{a.name}</a>" in r.text and f"<b>{got['letter']}</b> {got['answer']}".replace("'", "&#39;") in r.text
    assert "synthetic-annotator" in r.text and "reference" in r.text and "world-truth" in r.text
    assert f'src="/media/video/{hit.clip_id}"' in r.text
    assert client.get("/clip/no-such-clip").status_code == 404


def test_clips_indexed_while_serving_show_up(world, tmp_path):
    """`avcap index` into the database the server has open: the next page sees the new clips."""
    from starlette.testclient import TestClient

    lines = (world["label"] / "scenarios.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])  # as a model that writes JSON captions and once answers no choice
    last["caption_json"] = {"safety_analysis": last["caption"], "hazards": ["a pedestrian at the kerb"]}
    last["attributes"]["weather"] = {"letter": None, "answer": None, "raw": "it is hard to say", "error": None}
    lines[-1] = json.dumps(last)
    for part, chunk in (("a", lines[:3]), ("b", lines[3:])):
        (tmp_path / part).mkdir()
        shutil.copy(world["label"] / "questions.json", tmp_path / part)
        (tmp_path / part / "scenarios.jsonl").write_text("\n".join(chunk) + "\n")
    db_dir = tmp_path / "db"
    open_db(db_dir, create=True).ingest([tmp_path / "a"])
    client = TestClient(create_app(db=open_db(db_dir), db_dir=db_dir), base_url="http://127.0.0.1")
    assert "3 clips" in client.get("/").text
    late = json.loads(lines[-1])["clip_id"]
    assert client.get(f"/clip/{late}").status_code == 404
    open_db(db_dir).ingest([tmp_path / "b"])  # another handle, as another process would
    assert f"{len(lines)} clips" in client.get("/").text
    page = client.get(f"/clip/{late}")
    assert page.status_code == 200 and "a pedestrian at the kerb" in page.text
    assert re.search(r">weather</a></td><td>[^<]*</td>\s*<td><i>no choice", page.text)


# ----------------------------------------------------------------------------- media


def test_video_is_served_with_range_requests(world, tmp_path):
    client, _ = _client(world, _review_copy(world, tmp_path))
    hit = world["db_handle"].search(limit=1)[0]
    data = Path(hit.source).read_bytes()
    size = len(data)
    url = f"/media/video/{hit.clip_id}"
    r = client.get(url)
    assert r.status_code == 200 and r.headers["accept-ranges"] == "bytes" and r.content == data
    assert r.headers["content-type"] == "video/mp4" and "content-encoding" not in r.headers  # media never compressed
    r = client.get(url, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-range"] == f"bytes 0-99/{size}" and r.content == data[:100]
    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:] and r.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    r = client.get(url, headers={"Range": "bytes=-64"})
    assert r.status_code == 206 and r.content == data[-64:]
    # several ranges: one multipart/byteranges answer holding each part
    r = client.get(url, headers={"Range": "bytes=0-9,100-109"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[:10] in r.content and data[100:110] in r.content and f"bytes 100-109/{size}".encode() in r.content
    # a range past the end cannot be satisfied; a range that is not one is a bad request
    r = client.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    for bad in ("bytes=abc", "items=0-9", "bytes=20-10"):
        assert client.get(url, headers={"Range": bad}).status_code == 400, bad
    # thumbnails and preview strips of the record
    assert client.get(f"/media/thumb/{hit.clip_id}").headers["content-type"] == "image/jpeg"
    assert client.get(f"/media/preview/{hit.clip_id}").content == Path(hit.preview).read_bytes()


def _raw_get(port: int, target: str, host: str = "") -> tuple[int, bytes]:
    """GET with the request target exactly as given (no client normalises the dots away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    status = int(buf.split(b" ", 2)[1])
    return status, buf.split(b"\r\n\r\n", 1)[1]


def test_traversal_and_unregistered_media_get_404(world, live):
    db_dir, videos = world["db"], world["dataset"] / "videos"
    # a video beside the registered ones, but not in the database; a symlink to a secret file
    shutil.copy(next(videos.glob("*.mp4")), videos / "unregistered.mp4")
    secret = world["db"].parent / "secret.txt"
    secret.write_text("the server must never send this\n")
    (db_dir / "link.mp4").symlink_to(secret)
    (videos / "link.mp4").symlink_to(secret)
    targets = [
        "/media/video/unregistered", "/media/video/unregistered.mp4", "/media/video/link", "/media/video/link.mp4",
        "/media/video/../../../etc/passwd", "/media/video/..%2F..%2F..%2Fetc%2Fpasswd",
        "/media/video/%2e%2e/%2e%2e/etc/passwd", "/media/video//etc/passwd", "/media/video/%2Fetc%2Fpasswd",
        f"/media/video/{secret}", f"/media/thumb/{secret}", "/media/thumb/..%2Fsecret.txt",
        "/static/../cli.py", "/static/..%2Fcli.py", "/static/%2e%2e%2fapp.py", "/static/app.py", "/static/link.mp4",
        "/static//etc/passwd", "/media/review/0", "/media/review/999", "/media/review/..%2F..%2Fsecret.txt",
        "/media/nope/av00000", f"/clip/..%2F..%2F{secret}", "/etc/passwd", "/..%2F..%2Fetc%2Fpasswd",
    ]
    for target in targets:
        status, body = _raw_get(live.port, target)
        assert status == 404, (target, status)
        assert b"root:" not in body and b"never send" not in body, target
    # the registered ones are served
    assert _raw_get(live.port, "/static/app.js")[0] == 200
    first = world["db_handle"].search(limit=1)[0].clip_id
    assert _raw_get(live.port, f"/media/video/{first}")[0] == 200


def test_review_video_comes_from_the_benchmark_not_from_the_file(world, tmp_path):
    review = _review_copy(world, tmp_path)
    rows = _rows(review)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not the clip")
    for r in rows:
        r["video"] = str(secret)  # a hand-edited (or hostile) review file
    with open(review, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    client, _ = _client(world, review)
    pair = {p["key"]: p for p in read_pairs(world["dataset"])}[rows[0]["item"]]
    want = (world["dataset"] / "bench" / pair["video"]).resolve().read_bytes()
    r = client.get("/media/review/1")
    assert r.status_code == 200 and r.content == want


def test_host_header_must_name_loopback(world, live):
    for host in (f"127.0.0.1:{live.port}", f"localhost:{live.port}", f"[::1]:{live.port}", "localhost"):
        assert _raw_get(live.port, "/", host)[0] == 200, host
    for host in ("attacker.example", f"attacker.example:{live.port}", "127.0.0.1.attacker.example", "10.0.0.1"):
        status, body = _raw_get(live.port, "/", host)
        assert status == 400 and b"answers only requests addressed to 127.0.0.1" in body, host


# ----------------------------------------------------------------------------- review writes


def test_forged_writes_are_refused(world, tmp_path):
    review = _review_copy(world, tmp_path)
    before = review.read_bytes()
    client, token = _client(world, review)
    item = _rows(review)[0]["item"]
    body = {"item": item, "decision": "remove"}
    cases = [
        {},  # no token
        {"X-Avcap-Token": "guessed"},
        {"X-Avcap-Token": token, "Origin": "http://attacker.example"},  # a page elsewhere that somehow has it
        {"X-Avcap-Token": token, "Origin": "null"},
    ]
    for headers in cases:
        r = client.post("/api/review", json=body, headers=headers)
        assert r.status_code == 403, headers
        assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]
    # a plain cross-site form post (no custom header possible)
    r = client.post("/api/review", data={"item": item, "decision": "remove"},
                    headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403
    assert review.read_bytes() == before
    r = client.post("/api/review", json=body, headers={"X-Avcap-Token": token, "Origin": "http://127.0.0.1"})
    assert r.status_code == 200 and _rows(review)[0]["decision"] == "remove"


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "the body is not valid JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'{"item": "nope/sd01", "decision": "remove"}', "unknown item 'nope/sd01'"),
    (b'{"item": "ITEM", "decision": "set:E"}', "set:E: E is not a choice (A, B, C or D)"),
    (b'{"item": "ITEM", "decision": "keep both"}', "unknown decision 'keep both'"),
    (b'{"item": "ITEM", "decision": 3}', "decision: expected a string"),
    (b'{"item": "ITEM"}', "decision: expected a string"),
    (b'{"decision": "remove"}', "item: expected the item key"),
    (b'{"item": "ITEM", "decision": "remove", "by": "me"}', "unknown field(s) by"),
    (b'{"item": "UNPARSEABLE", "decision": "keep_annotation"}', "keep_annotation, but the annotation side gave no letter"),
])
def test_malformed_decisions_get_400_with_one_message(world, tmp_path, payload, message):
    review = _review_copy(world, tmp_path)
    rows = _rows(review)
    # the last pair as an unparseable annotation answer leaves it (no letter: keep_annotation is impossible)
    rows[-1]["annotation_answer"], rows[-1]["reason"] = "", "unparseable"
    with open(review, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    payload = payload.replace(b"UNPARSEABLE", rows[-1]["item"].encode()).replace(b"ITEM", rows[0]["item"].encode())
    before = review.read_bytes()
    client, token = _client(world, review)
    r = client.post("/api/review", content=payload, headers={"X-Avcap-Token": token, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert list(r.json()) == ["error"] and message in r.json()["error"] and "\n" not in r.json()["error"]
    assert review.read_bytes() == before
    r = client.post("/api/review", content=b"item=x", headers={"X-Avcap-Token": token,
                                                              "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type application/json" in r.json()["error"]


@pytest.mark.parametrize("name", ["review.csv", "review.jsonl"])
def test_decisions_are_saved_resumed_and_accepted_by_bench_apply(world, tmp_path, name):
    review = _review_copy(world, tmp_path, name)
    client, token = _client(world, review)
    rows = _rows(review)
    h = {"X-Avcap-Token": token}
    # the first decision, then a restart (a new app on the same file) sees it
    r = client.post("/api/review", json={"item": rows[0]["item"], "decision": "set:b", "note": "looked twice"}, headers=h)
    assert r.status_code == 200 and r.json()["decision"] == "set:B"
    assert r.json()["progress"] == {"decided": 1, "total": len(rows), "left": len(rows) - 1}
    assert r.json()["next_undecided_url"] == "/review/2"
    client, token = _client(world, review)
    h = {"X-Avcap-Token": token}
    page = client.get("/review/1").text
    assert '<b id="decision">set:B</b>' in page and 'value="looked twice"' in page and "1</b> of" in page
    assert client.get("/review", follow_redirects=False).headers["location"] == "/review/2"  # resume where it stopped
    # decide the rest; a clear in between leaves no trace
    decisions = {}
    for i, row in enumerate(rows):
        d = "remove" if i % 4 == 1 else "keep_video" if row["video_answer"] else f"set:{row['world_truth']}"
        if i == 2:
            assert client.post("/api/review", json={"item": row["item"], "decision": "keep_video"}, headers=h).status_code == 200
            assert client.post("/api/review", json={"item": row["item"], "decision": ""}, headers=h).json()["decision"] == ""
        decisions[row["item"]] = d if i else "set:B"
        if i:
            assert client.post("/api/review", json={"item": row["item"], "decision": d}, headers=h).status_code == 200
    saved = _rows(review)
    assert [r["item"] for r in saved] == [r["item"] for r in rows]  # same rows, same order
    assert {r["item"]: r["decision"] for r in saved} == decisions
    for a, b in zip(rows, saved):  # nothing but decision and note changed
        assert {k: v for k, v in a.items() if k not in ("decision", "note")} == {k: v for k, v in b.items() if k not in ("decision", "note")}
    assert client.get("/review", follow_redirects=False).headers["location"].startswith("/review/")
    # `avcap bench apply` takes the file as the page wrote it
    dataset = tmp_path / "ds"
    shutil.copytree(world["dataset"], dataset, ignore=shutil.ignore_patterns("vqa.jsonl"))
    res = subprocess.run([sys.executable, "-m", "avcap", "bench", "apply", "--dataset", str(dataset), "--reviews", str(review)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    vqa = {r["key"]: r for r in iter_records(dataset / "vqa.jsonl")}
    for item, d in decisions.items():
        if d == "remove":
            assert item not in vqa
        else:
            rec = vqa[item]
            assert rec["provenance"] == "reviewed" and rec["review"]["by"] == "reviewer"
            assert rec["answer"] == (d[4:] if d.startswith("set:") else next(r["video_answer"] for r in rows if r["item"] == item))


# ----------------------------------------------------------------------------- start-up


def test_bind_rules():
    assert check_bind("127.0.0.1", None, None) is None
    assert check_bind("localhost", None, None) is None and check_bind("::1", None, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(StartupRefused, match="not a loopback address.*--token-env"):
            check_bind(host, None, None)
    assert "WARNING: listening on 0.0.0.0" in check_bind("0.0.0.0", TOKEN, "T")
    with pytest.raises(StartupRefused, match="environment variable T is not set"):
        check_bind("0.0.0.0", None, "T")
    with pytest.raises(StartupRefused, match="at least 16"):
        check_bind("0.0.0.0", "short", "T")


def test_cli_refuses_unsafe_binding_and_bad_inputs(world, tmp_path):
    def serve(*args, env=None):
        return subprocess.run([sys.executable, "-m", "avcap", "serve", *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})

    r = serve("--db", str(world["db"]), "--host", "0.0.0.0")
    assert r.returncode == 2 and "--host 0.0.0.0: not a loopback address" in r.stderr and "Traceback" not in r.stderr
    r = serve("--db", str(world["db"]), "--host", "0.0.0.0", "--token-env", "AVCAP_TEST_UNSET_TOKEN")
    assert r.returncode == 2 and "AVCAP_TEST_UNSET_TOKEN is not set" in r.stderr
    r = serve("--db", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no scenario database here" in r.stderr
    r = serve("--bench", str(world["dataset"]), "--reviews", str(tmp_path / "none.csv"))
    assert r.returncode == 2 and "none.csv: no review file; write it first with `avcap bench review" in r.stderr
    r = serve()
    assert r.returncode == 2 and "give --db DIR" in r.stderr


def test_access_token_is_required_everywhere_when_set(world, tmp_path):
    """The app as `--token-env` makes it (in-process; the CLI on 0.0.0.0 is the next test)."""
    from starlette.testclient import TestClient

    review = _review_copy(world, tmp_path)
    app = create_app(db=world["db_handle"], db_dir=world["db"], reviews=ReviewQueue(world["dataset"], review),
                     access_token=TOKEN, loopback_only=False)
    client = TestClient(app, base_url="http://192.0.2.7:8765")
    first = world["db_handle"].search(limit=1)[0].clip_id
    for path in ("/", "/review/1", f"/clip/{first}", f"/media/video/{first}", "/static/app.js", "/nope"):
        r = client.get(path)
        assert r.status_code == 401 and "access token required" in r.text and TOKEN not in r.text, path
    assert client.get("/?token=wrong-token-of-enough-length").status_code == 401
    r = client.get(f"/clip/{first}?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/clip/{first}"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert client.get(f"/clip/{first}").status_code == 200  # the cookie, from now on
    assert client.get(f"/media/video/{first}").status_code == 200
    # the token grants reading; writing still needs the page's same-origin token
    item = _rows(review)[0]["item"]
    assert client.post("/api/review", json={"item": item, "decision": "remove"}).status_code == 403
    ok = client.post("/api/review", json={"item": item, "decision": "remove"},
                     headers={"X-Avcap-Token": app.state.avcap.csrf_token})
    assert ok.status_code == 200
    bearer = TestClient(app, base_url="http://192.0.2.7:8765")
    assert bearer.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert bearer.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401


def _unshare_net() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs `unshare` (util-linux) for a private network namespace")
    for args in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*args, "true"], capture_output=True).returncode == 0:
            return args
    pytest.skip("needs a private network namespace (unshare -n as root, or unshare -rn)")


def test_non_loopback_needs_the_token_and_warns(world, tmp_path):
    """`--host 0.0.0.0 --token-env`, run inside a private network namespace (nothing outside this
    test can reach it): a warning at start-up, 401 without the token, the token never printed."""
    ns = _unshare_net()
    script = tmp_path / "probe.py"
    script.write_text(f"""
import os, subprocess, sys, urllib.request, urllib.error, http.client
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
p = subprocess.Popen([sys.executable, "-m", "avcap", "serve", "--db", {str(world['db'])!r}, "--host", "0.0.0.0",
                      "--port", "0", "--token-env", "AVCAP_TEST_TOKEN"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = p.stdout.readline()
port = int(line.rsplit(":", 1)[1].strip("/\\n"))
def get(path, headers={{}}):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()
print("nothing", get("/")[0])
print("wrong", get("/", {{"Authorization": "Bearer not-the-token-at-all"}})[0])
print("bearer", get("/", {{"Authorization": "Bearer " + os.environ["AVCAP_TEST_TOKEN"]}})[0])
s, h, _ = get("/?token=" + os.environ["AVCAP_TEST_TOKEN"] + "&q=rain")
print("login", s, h.get("location"), "HttpOnly" in h.get("set-cookie", ""))
cookie = h["set-cookie"].split(";")[0]
print("cookie", get("/?q=rain", {{"Cookie": cookie}})[0])
print("other-host", get("/", {{"Host": "203.0.113.9", "Cookie": cookie}})[0])
p.terminate()
out, err = p.communicate(timeout=20)
print("STDOUT", repr(line + out))
print("STDERR", repr(err))
""")
    r = subprocess.run([*ns, sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "AVCAP_TEST_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "nothing 401" in out and "wrong 401" in out and "bearer 200" in out
    assert "login 303 /?q=rain True" in out and "cookie 200" in out and "other-host 200" in out
    assert "WARNING: listening on 0.0.0.0" in out and "needs the access token" in out
    assert TOKEN not in out.replace(f"?token={TOKEN}", "")  # printed by the probe's own URL only, never by the server
    assert TOKEN not in out.split("STDOUT", 1)[1]


# ----------------------------------------------------------------------------- a real browser


class LiveServer:
    """The app on a uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        t = time.monotonic()
        while not self.server.started and time.monotonic() - t < 20:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def live(world, tmp_path_factory):
    review = _review_copy(world, tmp_path_factory.mktemp("live"))
    app = create_app(db=world["db_handle"], db_dir=world["db"], reviews=ReviewQueue(world["dataset"], review))
    with LiveServer(app) as srv:
        srv.review = review
        yield srv


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"headless browser tests need {' and '.join(missing)} (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("headless browser tests need selenium (pip install selenium, in the dev extra)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
              "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(fn, timeout: float = 15.0, what: str = "condition"):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_browser_search_filter_and_the_video_plays(world, live, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    db = world["db_handle"]
    browser.get(live.url)
    box = browser.find_element(By.ID, "q")
    box.send_keys("car waiting at a red light", Keys.ENTER)
    _wait(lambda: "q=car" in browser.current_url, what="the query page")
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .clip-id")]
    assert shown == [h.clip_id for h in db.search("car waiting at a red light", limit=24)] and shown
    _wait(lambda: browser.execute_script(  # every thumbnail arrives and decodes
        "const im = document.querySelectorAll('#results img'); "
        "return im.length > 0 && Array.from(im).every(i => i.complete && i.naturalWidth > 0);"), what="the thumbnails")
    # a filter from the attribute list (the page submits itself on change)
    values = db.attribute_values("weather")
    letter = max(values, key=lambda k: values[k]["count"])
    Select(browser.find_element(By.ID, "add-filter")).select_by_value(f"weather={letter}")
    _wait(lambda: "where=weather" in browser.current_url, what="the filtered page")
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .clip-id")]
    assert shown == [h.clip_id for h in db.search("car waiting at a red light", where={"weather": letter}, limit=24)]
    assert "q=car" in browser.current_url  # the query stays
    # open the first clip: its video plays, and seeking (range requests) works
    browser.find_element(By.CSS_SELECTOR, "#results .clip-id").click()
    _wait(lambda: "/clip/" in browser.current_url, what="the clip page")
    assert browser.find_element(By.ID, "caption").text == db.get(shown[0]).caption
    browser.execute_script("document.getElementById('video').play();")
    state = _wait(lambda: browser.execute_script(
        "const v = document.getElementById('video'); return v.currentTime > 0.5 && !v.paused && !v.error"
        " ? [v.currentTime, v.videoWidth, v.duration] : null;"), what="the video to play")
    assert state[1] > 0 and state[2] > 2.5
    browser.execute_script("const v = document.getElementById('video'); v.pause(); v.currentTime = 2.0;")
    _wait(lambda: browser.execute_script("const v = document.getElementById('video'); return !v.seeking && v.currentTime >= 1.99;"),
          what="the seek")
    assert browser.execute_script("return document.getElementById('video').error") is None


def test_browser_review_decision_is_saved_and_survives_a_reload(world, live, browser):
    from selenium.webdriver.common.by import By

    rows = _rows(live.review)
    browser.get(live.url + "review")
    _wait(lambda: re.search(r"/review/\d+$", browser.current_url), what="the first undecided item")
    n = int(browser.current_url.rsplit("/", 1)[1])
    item = browser.find_element(By.ID, "review").get_attribute("data-item")
    assert item == rows[n - 1]["item"]
    assert browser.find_element(By.ID, "question").text == rows[n - 1]["question"]
    _wait(lambda: browser.execute_script("return document.getElementById('video').readyState >= 2"), what="the review video")
    # keyboard: "2" sets B; the page saves it and moves on to the next undecided item
    browser.find_element(By.TAG_NAME, "body").send_keys("2")
    _wait(lambda: browser.current_url.endswith(f"/review/{n + 1}"), what="the next item")
    assert {r["item"]: r["decision"] for r in _rows(live.review)}[item] == "set:B"
    # a button: remove this one
    item2 = browser.find_element(By.ID, "review").get_attribute("data-item")
    browser.find_element(By.CSS_SELECTOR, '#decide button[data-decision="remove"]').click()
    _wait(lambda: browser.current_url.endswith(f"/review/{n + 2}"), what="the item after")
    # back to the first: after a reload it shows the decision, the choice marked, the count
    browser.get(live.url + f"review/{n}")
    assert browser.find_element(By.ID, "decision").text == "set:B"
    assert browser.find_element(By.CSS_SELECTOR, "#choices li.chosen").get_attribute("data-letter") == "B"
    assert browser.find_element(By.ID, "decided-count").text == "2"
    assert {r["item"]: r["decision"] for r in _rows(live.review)}[item2] == "remove"
    # an error shows on the page, the file is unchanged
    before = live.review.read_bytes()
    browser.execute_script("document.getElementById('review').dataset.item = 'nope/sd99';")
    browser.find_element(By.TAG_NAME, "body").send_keys("x")
    _wait(lambda: "not saved" in browser.find_element(By.ID, "status").text, what="the error line")
    assert "unknown item 'nope/sd99'" in browser.find_element(By.ID, "status").text
    assert live.review.read_bytes() == before
