# gpu_run65 call 10 (session 19, ~280 s, what is left after call 9): the price of prompt tokens riding in a 96-row
# decode step's projections (chunked prefill's lever), then 8B caption batches of 96 rows, sdpa against the Triton
# kernel with its one-stretch default (bench_phases, same process): goal 1's figure at the new default
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 60 python3 benchmarks/bench_decode_piggyback.py --rows 96 --out $OUT/pig96 > $OUT/pig96.txt 2>&1; tail -22 $OUT/pig96.txt
timeout 190 python3 benchmarks/bench_phases.py --size 8B --rows 96 --repeats 2 --variants sdpa:transcribed,triton:transcribed --out $OUT/ph96 > $OUT/ph96.txt 2>&1; grep -v "^Writing\|Warning" $OUT/ph96.txt | tail -8
