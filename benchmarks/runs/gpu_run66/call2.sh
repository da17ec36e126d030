# gpu_run66 call 2 (session 20, ~560 s): goal 2's whole run after call 1 found two memory faults at batch 96
# (inputs of 96 videos did not fit beside the kept 96-row KV cache; the retry inside the except block kept the
# failed attempt's ~19 GiB alive). This checkout makes pixels in the model's dtype, 8 videos per processor call,
# retries out of the except block, rebuilds inputs without the kept cache when they do not fit, splits 8 + 184
# as 8, 92, 92, and records each batch's phases (engine_run.batches). Same bench as call 1; run 1 fills an
# empty compile cache and is not compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
RUNS=${RUNS:-warm-first,warm-first,warm,warm-first}; DEADLINE=${DEADLINE:-550}; TAG=${TAG:-fc}; EXTRA=${EXTRA:-}
mkdir -p /tmp/$TAG-cache
python3 benchmarks/bench_first_caption.py --out $OUT/$TAG --runs $RUNS $EXTRA \
  --cache-dir /tmp/$TAG-cache --bytecode-cache /tmp/pyc --batch-size 96 --deadline $DEADLINE > $OUT/$TAG.txt 2>&1
tail -14 $OUT/$TAG.txt | cut -c1-700
TAG=$TAG python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], os.environ["TAG"], "bench_first_caption.json")))
for name, r in d["runs"].items():
    print(name, "timeline", r.get("timeline"), "paths", r.get("engine_paths"), "fallbacks", r.get("engine_fallbacks"),
          "batch failures", r.get("engine_batch_failures"), "counts", r.get("engine_counts"))
    for b in r.get("engine_batches") or []:
        print("   batch", json.dumps(b))
PY
grep -h "batch of\|refused\|Error\|error" $OUT/$TAG/*.log | sort | uniq -c | sort -rn | head -12 | cut -c1-400
