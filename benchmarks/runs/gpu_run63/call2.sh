# gpu_run63 call 2: 2B SFT without host inputs (b, the baseline of call 1's a); 8B caption batches of 64 and 96 rows
# (the bench_phases part failed here: it did not put src/ on the path; fixed after the run)
B="python3 benchmarks/bench_multi_gpu.py --work /tmp/mg --gpus 1 --k 1 --size 2B --sections sft --steps 10 --warmup-steps 4 --batch-per-gpu 32 --train-clips 4 --eval-clips 1 --compile --workers 14 --width 968 --height 610 --seconds 10 --profile-step 9 --run-timeout 170 --sft-need-s 120"
$B --memory-budget 0.5 --no-host-inputs --out $OUT/b --deadline 200 > $OUT/b.txt 2>&1; tail -25 $OUT/b.txt
for R in 64 96; do timeout 170 python3 benchmarks/bench_phases.py --size 8B --rows $R --repeats 2 --variants sdpa:transcribed --out $OUT/ph$R > $OUT/ph$R.txt 2>&1; tail -8 $OUT/ph$R.txt; done
nvidia-smi --query-gpu=memory.used --format=csv
cd $OUT && tar czf r2.tgz b ph64 ph96 *.txt
