# gpu_run68 call 1 (session 22, ~500 s): where a warm 192-video run's one-off seconds go. Run 67 (this checkout's plan,
# 16 + 88 + 88) gave 3.27 videos/s against 3.24-3.27 for 8 + 96 + 88: the plan changed nothing. Here: the price of
# prompt tokens riding in an 88-row decode step (chunked prefill's lever, never measured); whether torch 2.11 has
# torch.compile's aot_compile (loading compiled graphs without dynamo's re-trace); then a fill run, a plain run and a
# run with at most 6 of the first batch's videos decoding during the imports (decoders_during_load = 6: 6 worker
# processes start beside the imports, not 16; session 15 measured the imports 8.1 s idle, 14.3 s beside 16 decoders),
# each batch now recording torch.compile's seconds in it (compile_s); then a stack-sampled run, and if time is left
# one more plain and one more K=6 run. Each bench invocation's --deadline counts from its own start.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep -E "^(Thread|Core|Socket|Model name)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
python3 -c "
import torch
f = torch.compile(lambda x: x * 2, fullgraph=True)
print('aot_compile', hasattr(f, 'aot_compile'), 'load_compiled_function', hasattr(torch.compiler, 'load_compiled_function'),
      'precompile', hasattr(torch.compiler, 'precompile'), 'config.aot_compile', hasattr(torch._dynamo.config, 'enable_aot_compile') or hasattr(torch._dynamo.config, 'aot_compile'))"
[ "${PIG:-1}" = 1 ] && timeout 70 python3 benchmarks/bench_decode_piggyback.py --rows 88 --out $OUT/pig88 > $OUT/pig88.txt 2>&1; tail -22 $OUT/pig88.txt
mkdir -p /tmp/fc-cache
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8"
left() { echo $(( ${END:-585} - SECONDS )); }  # END: seconds this call may run (device time left)
$B --out $OUT/fill --runs warm-first --deadline $(left) > $OUT/fill.txt 2>&1  # fills the empty compile cache: not compared
[ $(left) -gt 75 ] && $B --out $OUT/k6 --runs warm-first --decoders-during-load 6 --deadline $(left) > $OUT/k6.txt 2>&1
[ $(left) -gt 75 ] && $B --out $OUT/plan --runs warm-first --deadline $(left) > $OUT/plan.txt 2>&1
[ $(left) -gt 85 ] && $B --out $OUT/sampled --runs warm-first --sample-stacks warm-first1 --deadline $(left) > $OUT/sampled.txt 2>&1
[ $(left) -gt 75 ] && $B --out $OUT/k6b --runs warm-first --decoders-during-load 6 --deadline $(left) > $OUT/k6b.txt 2>&1
[ $(left) -gt 75 ] && $B --out $OUT/plan2 --runs warm-first --deadline $(left) > $OUT/plan2.txt 2>&1
python3 benchmarks/first_caption_summary.py $OUT/fill $OUT/k6 $OUT/plan $OUT/sampled $OUT/k6b $OUT/plan2
cd $OUT && tar czf plan.tgz fill k6 plan sampled k6b plan2 pig88 2>/dev/null; rm -rf fill k6 plan sampled k6b plan2 pig88
