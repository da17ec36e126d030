# gpu_run64 call 3: the first decode step's logits and greedy tokens, Triton against sdpa, on distinct rows
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
timeout 170 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:compiled_graphs,triton:compiled_graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1; grep -v "Warning\|warn" $OUT/check.txt | tail -12
