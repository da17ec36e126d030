# gpu_run65 call 2: (a) the first decode step's logits and greedy tokens, Triton decode attention against sdpa, on
# distinct rows; (b) the first caption and the whole-run rate of a fresh 8B `avcap infer` (192 videos), this
# session's start (first batch decoded first, decoders held to it during the imports) against fd02c70's
# (.baseline/src = `git archive fd02c70 src`), batch 96, Triton decode attention, bytecode cache. The first run
# compiles every shape (8, 96, 88) and is not compared; runs 2 and 3 find everything cached.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 100 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:graphs,triton:graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -14
mkdir -p /tmp/fc-cache  # empty: the first run fills it (it compiles every shape), runs 2 and 3 find it full
python3 benchmarks/bench_first_caption.py --out $OUT/fc --runs warm-first@base,warm-first,warm-first@base --cache-dir /tmp/fc-cache \
  --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 --decode-attention triton --deadline 330 > $OUT/fc.txt 2>&1
tail -16 $OUT/fc.txt
cd $OUT && tar czf r2.tgz check fc *.txt
