# gpu_run65 call 9 (session 19, ~560 s): goal 2's whole run again after call 7 found its third batch failing
# (a batch of 88 rows ran request by request, one video's frames failed with torch's nested-FX-trace error).
# This checkout records batch failures (engine_run.batch_failures), converts frames eagerly when another
# thread compiles, and lets the model's compiled calls run eagerly while another thread traces. A fresh 8B
# `avcap infer` over 192 videos, batch 96, decode_attention "auto" (the new default), bytecode cache; run 1
# fills an empty compile cache and is not compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
RUNS=${RUNS:-warm-first,warm-first,warm,warm-first}; DEADLINE=${DEADLINE:-550}; TAG=${TAG:-fc9}; EXTRA=${EXTRA:-}
mkdir -p /tmp/$TAG-cache
python3 benchmarks/bench_first_caption.py --out $OUT/$TAG --runs $RUNS $EXTRA \
  --cache-dir /tmp/$TAG-cache --bytecode-cache /tmp/pyc --batch-size 96 --deadline $DEADLINE > $OUT/$TAG.txt 2>&1
tail -14 $OUT/$TAG.txt | cut -c1-1500
python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], os.environ.get("TAG", "fc9"), "bench_first_caption.json")))
for name, r in d["runs"].items():
    e = r.get("engine_fallbacks"); t = r.get("timeline")
    print(name, "timeline", t, "paths", r.get("engine_paths"), "fallbacks", e, "batch failures",
          r.get("engine_batch_failures"), "counts", r.get("engine_counts"))
    print("   startup", json.dumps(r.get("engine_startup"))[:900])
PY
grep -h "batch of\|refused\|Error\|error" $OUT/$TAG/*.log | sort | uniq -c | sort -rn | head -12 | cut -c1-600
