# gpu_run64 call 3 (not run: too little device time was left; for the next session, ~250 s):
# the first decode step's logits and greedy tokens, Triton against sdpa, on distinct rows; then the price of
# prompt tokens riding in a decode step's projections (chunked prefill's lever), 8B at 64 and 96 rows
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 170 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:compiled_graphs,triton:compiled_graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -12
for R in 64 96; do timeout 60 python3 benchmarks/bench_decode_piggyback.py --rows $R --out $OUT/pig$R > $OUT/pig$R.txt 2>&1; tail -22 $OUT/pig$R.txt; done
