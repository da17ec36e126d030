# gpu_run65 call 1: run 64's unrun call 3 (Triton decode attention against sdpa in the engine's first decode
# step, on distinct rows; the price of prompt tokens riding in a decode step's projections), then 8B caption
# batches of 96 rows, sdpa against the Triton kernel with its one-stretch default (bench_phases, same process)
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 170 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:compiled_graphs,triton:compiled_graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -14
for R in 64 96; do timeout 60 python3 benchmarks/bench_decode_piggyback.py --rows $R --out $OUT/pig$R > $OUT/pig$R.txt 2>&1; tail -22 $OUT/pig$R.txt; done
timeout 190 python3 benchmarks/bench_phases.py --size 8B --rows 96 --repeats 2 --variants sdpa:transcribed,triton:transcribed --out $OUT/ph96 > $OUT/ph96.txt 2>&1; grep -v "^Writing\|Warning" $OUT/ph96.txt | tail -8
cd $OUT && tar czf r1.tgz check pig64 pig96 ph96 *.txt
