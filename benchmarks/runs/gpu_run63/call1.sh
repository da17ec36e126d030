# gpu_run63 call 1: imports idle/busy, prefill attention backends, 2B SFT with host inputs (a)
nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
timeout 170 python3 benchmarks/bench_imports.py --repeats 2 --importtime --out $OUT/imports > $OUT/imports.txt 2>&1; tail -30 $OUT/imports.txt
timeout 120 python3 benchmarks/bench_prefill_attention.py --out $OUT/pa > $OUT/pa.txt 2>&1; tail -40 $OUT/pa.txt
B="python3 benchmarks/bench_multi_gpu.py --work /tmp/mg --gpus 1 --k 1 --size 2B --sections sft --steps 10 --warmup-steps 4 --batch-per-gpu 32 --train-clips 4 --eval-clips 1 --compile --workers 14 --memory-budget 0.5 --width 968 --height 610 --seconds 10 --profile-step 9 --run-timeout 170 --sft-need-s 120"
$B --out $OUT/a --deadline 205 > $OUT/a.txt 2>&1; tail -25 $OUT/a.txt
cd $OUT && tar czf r1.tgz imports pa a *.txt
