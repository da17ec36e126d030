# gpu_run65 call 2: the first caption and the whole-run rate of a fresh 8B `avcap infer` (192 videos), this
# session's start (first batch decoded first, decoders held to it during the imports) against fd02c70's
# (.baseline/src = `git archive fd02c70 src`), batch 96, Triton decode attention, bytecode cache
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 benchmarks/bench_first_caption.py --out $OUT/fc --runs cold,warm-first@base,warm-first,warm-first@base \
  --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 --decode-attention triton --deadline 540 > $OUT/fc.txt 2>&1
tail -30 $OUT/fc.txt
cd $OUT && tar czf r2.tgz fc *.txt
