# gpu_run64 call 1: 2B SFT with the host work on one CPU thread (a), then with compile_tuning = "kernels" (k)
nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
B="python3 benchmarks/bench_multi_gpu.py --work /tmp/mg --gpus 1 --k 1 --size 2B --sections sft --steps 10 --warmup-steps 4 --batch-per-gpu 32 --train-clips 4 --eval-clips 1 --compile --workers 14 --memory-budget 0.5 --width 968 --height 610 --seconds 10 --profile-step 9 --run-timeout 170 --sft-need-s 120"
$B --out $OUT/a --deadline 205 > $OUT/a.txt 2>&1; tail -25 $OUT/a.txt
$B --compile-tuning kernels --run-timeout 290 --deadline 320 --out $OUT/k > $OUT/k.txt 2>&1; tail -25 $OUT/k.txt
cd $OUT && tar czf r1.tgz a k *.txt
