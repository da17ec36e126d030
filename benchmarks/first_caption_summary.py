"""One line per run of bench_first_caption.py outputs, and one per recorded batch: the start's timeline
(imports, the weights' reading, model ready, decoded frames) and where each batch's time went.

    python3 benchmarks/first_caption_summary.py $OUT/fill $OUT/plain ...    # folders given to --out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BATCH_KEYS = ("rows", "started_at_s", "inputs_waited_s", "generate_s", "compile_s", "prefix_s", "suffix_s", "decode_s", "step_build_s",
              "step_builds")


def main(dirs: list[str]) -> int:
    for d in dirs:
        p = Path(d) / "bench_first_caption.json"
        if not p.exists():
            print(Path(d).name, "no result")
            continue
        for name, r in json.loads(p.read_text())["runs"].items():
            el, st = r.get("engine_load") or {}, r.get("engine_startup") or {}
            fr, ew = st.get("frames") or {}, el.get("early_weights") or {}
            print(Path(d).name, name, "first", r.get("first_record_s"), "last", r.get("last_record_s"),
                  "v/s", r.get("videos_per_s_from_start"), "imports", el.get("imports_s"), "read", ew.get("read_s"),
                  "waited", ew.get("waited_s"), "reader", ew.get("reader"), "ready", st.get("model_ready_at_s"),
                  "frames", fr.get("decoded_at_s"), "held", fr.get("held"), "fallbacks", r.get("engine_fallbacks"),
                  "failures", r.get("engine_batch_failures"),
                  "profile", ((r.get("compile_cache") or {}).get("shape_profile") or {}).get("read_late"))
            for b in r.get("engine_batches") or []:
                print("   batch", json.dumps({k: b.get(k) for k in BATCH_KEYS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
