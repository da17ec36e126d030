# gpu_run65 call 6 (session 18, ~560 s): goal 2's whole run as it stands. A fresh 8B `avcap infer` over 192 videos,
# batch 96, Triton decode attention, bytecode cache: with a first batch of 8 (warm-first) and without (warm), this
# checkout against fd02c70 (.baseline/src). Run 1 fills an empty compile cache with every shape and is not compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
mkdir -p /tmp/fc6-cache
python3 benchmarks/bench_first_caption.py --out $OUT/fc6 --runs warm-first,warm-first,warm,warm-first@base,warm@base \
  --cache-dir /tmp/fc6-cache --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 \
  --decode-attention triton --deadline 545 > $OUT/fc6.txt 2>&1
tail -16 $OUT/fc6.txt | cut -c1-1500
cd $OUT && tar czf r6.tgz fc6 *.txt
