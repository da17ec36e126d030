# gpu_run67 call 1 (session 21, ~570 s): the whole run's batch plan as `avcap infer` now makes it. Run 66 call 4
# (one machine) measured the first batch and batch size set by hand: 8 + 96 + 88 3.38 videos/s, 48 + 72 + 72
# 3.65, 32 + 80 + 80 3.75. d852133 plans them: with a first batch, the rest in equal batches of the prefill chunk
# (8), the first taking the few left over: 192 at 96 after 8 goes 16 + 88 + 88; 0d305e6 decodes all 16 of the
# first batch's videos during the imports (the hold was first_batch's 8). This checkout against bcb738d
# (.baseline/src, 8 + 96 + 88), interleaved, one shared compile cache; the first run of each fills its shapes and
# is not compared; the last run (warm-first4) runs under the stack sampler (what a new row count's suffix and
# first batch spend their one-off seconds on). Then where the imports' time goes (python -X importtime of what
# the engine's load imports).
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
python3 benchmarks/bench_first_caption.py --out $OUT/plan --runs ${RUNS:-warm-first,warm-first@base,warm-first@base,warm-first,warm-first@base,warm-first,warm-first} \
  --sample-stacks warm-first4 --cache-dir /tmp/fc-cache --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8 \
  --deadline ${DEADLINE:-535} > $OUT/plan.txt 2>&1
python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], "plan", "bench_first_caption.json")))
for name, r in d["runs"].items():
    el, st = r.get("engine_load") or {}, r.get("engine_startup") or {}
    print(name, "first", r.get("first_record_s"), "last", r.get("last_record_s"), "v/s", r.get("videos_per_s_from_start"),
          "imports", el.get("imports_s"), "ready", st.get("model_ready_at_s"), "fallbacks", r.get("engine_fallbacks"),
          "failures", r.get("engine_batch_failures"))
    for b in r.get("engine_batches") or []:
        print("   batch", json.dumps({k: b.get(k) for k in ("rows", "started_at_s", "generate_s", "prefix_s", "suffix_s", "decode_s", "step_build_s")}))
PY
cd /tmp && env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc timeout 40 python3 -X importtime -c "
import safetensors.torch, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
import transformers.models.qwen3_vl.modeling_qwen3_vl, torch._inductor.compile_fx" 2> $OUT/importtime.txt
sort -t'|' -k2 -n $OUT/importtime.txt | tail -12
cd $OUT && tar czf plan.tgz plan && rm -rf plan
