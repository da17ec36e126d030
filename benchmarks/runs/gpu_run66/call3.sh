# gpu_run66 call 3 (session 20, ~540 s): call 2 split 8 + 184 as 8, 92, 92 and was no faster (92 rows made a
# prefill chunk of 4 prefixes, a new compiled shape); the split is back to 8, 96, 88. Its per-batch phases put
# ~12.7 s of the 57.8 s run in one-off costs (dynamo tracing, compiled graphs loaded, decode steps captured,
# new shapes). So: (1) the same run without torch.compile (no tracing, nothing to load; unfused eager layers,
# decode still CUDA-graph captured), two runs; (2) this checkout compiled, with the fixes of call 2 and the old
# split: a run filling an empty compile cache, then one compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/nc-cache /tmp/fc-cache
python3 benchmarks/bench_first_caption.py --out $OUT/nc --runs warm-first,warm-first --no-compile --run-timeout 150 \
  --cache-dir /tmp/nc-cache --bytecode-cache /tmp/pyc --batch-size 96 --deadline 300 > $OUT/nc.txt 2>&1
python3 benchmarks/bench_first_caption.py --out $OUT/fc --runs warm-first,warm-first \
  --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --deadline 230 > $OUT/fc.txt 2>&1
for TAG in nc fc; do
tail -7 $OUT/$TAG.txt | cut -c1-300
TAG=$TAG python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], os.environ["TAG"], "bench_first_caption.json")))
for name, r in d["runs"].items():
    print(name, "timeline", r.get("timeline"), "fallbacks", r.get("engine_fallbacks"),
          "batch failures", r.get("engine_batch_failures"), "load", json.dumps(r.get("engine_load"))[:200])
    for b in r.get("engine_batches") or []:
        print("   batch", json.dumps(b))
PY
grep -h "batch of\|refused\|Error\|error" $OUT/$TAG/*.log | sort | uniq -c | sort -rn | head -6 | cut -c1-300
done
