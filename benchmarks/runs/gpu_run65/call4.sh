# gpu_run65 call 4 (what ~400 s of device time allows): Triton decode attention against sdpa and against the same
# weights in float32 (first decode step, greedy tokens, distinct rows); the price of prompt tokens riding in a
# 96-row decode step's projections (chunked prefill's lever)
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 100 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:graphs,triton:graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -8
timeout 60 python3 benchmarks/bench_decode_piggyback.py --rows 96 --out $OUT/pig96 > $OUT/pig96.txt 2>&1; tail -22 $OUT/pig96.txt
cd $OUT && tar czf r4.tgz check pig96 *.txt
