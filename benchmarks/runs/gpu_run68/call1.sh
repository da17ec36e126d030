# gpu_run68 call 1 (session 22, ~500 s): where a warm 192-video run's one-off seconds go. Run 67 (this checkout's plan,
# 16 + 88 + 88) gave 3.27 videos/s against 3.24-3.27 for 8 + 96 + 88: the plan changed nothing. Here: the price of
# prompt tokens riding in an 88-row decode step (chunked prefill's lever, never measured); whether torch 2.11 has
# torch.compile's aot_compile (loading compiled graphs without dynamo's re-trace); then a fill run, a plain run and a
# stack-sampled run, each batch now recording torch.compile's seconds in it (compile_s); then one run with 8 decode
# processes instead of 16 (do the imports take longer beside 16 decoders?).
nproc; nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep -E "^(Thread|Core|Socket|Model name)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
python3 -c "
import torch
f = torch.compile(lambda x: x * 2, fullgraph=True)
print('aot_compile', hasattr(f, 'aot_compile'), 'load_compiled_function', hasattr(torch.compiler, 'load_compiled_function'),
      'precompile', hasattr(torch.compiler, 'precompile'), 'config.aot_compile', hasattr(torch._dynamo.config, 'enable_aot_compile') or hasattr(torch._dynamo.config, 'aot_compile'))"
timeout 70 python3 benchmarks/bench_decode_piggyback.py --rows 88 --out $OUT/pig88 > $OUT/pig88.txt 2>&1; tail -22 $OUT/pig88.txt
mkdir -p /tmp/fc-cache
python3 benchmarks/bench_first_caption.py --out $OUT/plan --runs warm-first,warm-first,warm-first --sample-stacks warm-first3 \
  --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8 --deadline ${DEADLINE:-380} > $OUT/plan.txt 2>&1
python3 benchmarks/bench_first_caption.py --out $OUT/plan8 --runs warm-first --decode-workers 8 \
  --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8 --deadline ${DEADLINE8:-90} > $OUT/plan8.txt 2>&1
python3 - <<'PY'
import json, os
for sub in ("plan", "plan8"):
    p = os.path.join(os.environ["OUT"], sub, "bench_first_caption.json")
    if not os.path.exists(p):
        print(sub, "no result"); continue
    for name, r in json.load(open(p))["runs"].items():
        el, st = r.get("engine_load") or {}, r.get("engine_startup") or {}
        print(sub, name, "first", r.get("first_record_s"), "last", r.get("last_record_s"), "v/s", r.get("videos_per_s_from_start"),
              "imports", el.get("imports_s"), "ready", st.get("model_ready_at_s"), "frames", (st.get("frames") or {}).get("decoded_at_s"),
              "fallbacks", r.get("engine_fallbacks"), "failures", r.get("engine_batch_failures"))
        for b in r.get("engine_batches") or []:
            print("   batch", json.dumps({k: b.get(k) for k in ("rows", "started_at_s", "generate_s", "compile_s", "prefix_s", "suffix_s",
                                                             "decode_s", "step_build_s", "step_builds")}))
PY
cd $OUT && tar czf plan.tgz plan plan8 pig88 && rm -rf plan plan8 pig88
