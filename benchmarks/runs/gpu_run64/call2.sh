# gpu_run64 call 2: decode attention kernels alone (Triton split-KV vs sdpa, flex); 8B caption batches of 64 and 96
# rows, sdpa against the Triton kernel in the engine (bench_phases, same process)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 150 python3 benchmarks/bench_decode_attention.py --no-chooser --out $OUT/da > $OUT/da.txt 2>&1; cat $OUT/da.txt | grep -v Warning | tail -40
for R in 64 96; do timeout 200 python3 benchmarks/bench_phases.py --size 8B --rows $R --repeats 2 --variants sdpa:transcribed,triton:transcribed --out $OUT/ph$R > $OUT/ph$R.txt 2>&1; grep -v "^Writing\|Warning" $OUT/ph$R.txt | tail -8; done
cd $OUT && tar czf r2.tgz da ph64 ph96 *.txt
