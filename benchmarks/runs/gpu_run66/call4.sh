# gpu_run66 call 4 (prepared in session 20, not run; ~590 s): the whole run's batch plan. Call 3's batches took
# 7.39 s (8 rows), 17.06 (96) and 14.69 (88) from a model ready at 11.7 s, first caption 19.9 s: 10 s of slack
# under 30 s. A larger first batch does more of the run while the later batches' one-off costs (each new row
# count: its suffix and decode-step graphs loaded and captured) stay per shape, so two equal later batches with
# row counts that are multiples of prefill_batch (8) pay them once: 48 + 72 + 72 and 32 + 80 + 80 against
# 8 + 96 + 88. Each plan: a run that fills its shapes into the shared compile cache, then one compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
T0=$(date +%s)
for PLAN in 8:96 48:72 32:80; do
  FIRST=${PLAN%%:*}; BATCH=${PLAN##*:}; TAG=fb$FIRST-b$BATCH
  LEFT=$(( 575 - $(date +%s) + T0 )); [ $LEFT -lt 120 ] && { echo "$TAG: skipped, ${LEFT}s left"; continue; }
  python3 benchmarks/bench_first_caption.py --out $OUT/$TAG --runs warm-first,warm-first --first-batch $FIRST \
    --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size $BATCH --deadline $LEFT > $OUT/$TAG.txt 2>&1
  TAG=$TAG python3 - <<'PY'
import json, os
tag = os.environ["TAG"]
d = json.load(open(os.path.join(os.environ["OUT"], tag, "bench_first_caption.json")))
for name, r in d["runs"].items():
    print(tag, name, "first", r.get("first_record_s"), "last", r.get("last_record_s"), "v/s", r.get("videos_per_s_from_start"),
          "fallbacks", r.get("engine_fallbacks"), "failures", r.get("engine_batch_failures"))
    for b in r.get("engine_batches") or []:
        print("   batch", json.dumps(b))
PY
done
