# gpu_run65 call 3 (call 2 cut to the device time left): (a) Triton decode attention against sdpa and against the
# same weights in float32, first decode step and greedy tokens on distinct rows; (b) the whole-run rate and first
# caption of a fresh 8B `avcap infer` (192 videos, batch 96, first batch 8, Triton decode attention, bytecode
# cache) with this session's start; run 1 (fd02c70's src) only fills an empty compile cache with every shape.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 90 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:graphs,triton:graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -8
mkdir -p /tmp/fc-cache
python3 benchmarks/bench_first_caption.py --out $OUT/fc --runs warm-first@base,warm-first --cache-dir /tmp/fc-cache \
  --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 --decode-attention triton --deadline 255 > $OUT/fc.txt 2>&1
tail -10 $OUT/fc.txt | cut -c1-1500
cd $OUT && tar czf r3.tgz check fc *.txt
