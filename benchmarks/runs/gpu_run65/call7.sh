# gpu_run65 call 7 (session 18, ~570 s): (a) the Triton decode attention check (first decode step against sdpa and
# against float32; greedy tokens), in the background while (b) sets up its model and clips; (b) goal 2's whole run
# as it stands: a fresh 8B `avcap infer` over 192 videos, batch 96, Triton decode attention, bytecode cache, with a
# first batch of 8 (warm-first) and without (warm), this checkout against fd02c70 (.baseline/src). Run 1 fills an
# empty compile cache (and this checkout's shape profile) and is not compared.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
(timeout 150 python3 benchmarks/check_decode_attention_gpu.py --configs sdpa:graphs,triton:graphs,triton:eager,sdpa:eager --out $OUT/check > $OUT/check.txt 2>&1) &
RUNS=${RUNS:-warm-first,warm-first,warm-first@base,warm,warm-first}; DEADLINE=${DEADLINE:-520}; TAG=${TAG:-fc7}
mkdir -p /tmp/$TAG-cache
python3 benchmarks/bench_first_caption.py --out $OUT/$TAG --runs $RUNS \
  --cache-dir /tmp/$TAG-cache --baseline-src .baseline/src --bytecode-cache /tmp/pyc --batch-size 96 \
  --decode-attention triton --deadline $DEADLINE > $OUT/$TAG.txt 2>&1
wait
grep -v "Warning\|warn" $OUT/check.txt | tail -8 | cut -c1-600
tail -14 $OUT/$TAG.txt | cut -c1-1200
cd $OUT && tar czf r-$TAG.tgz check $TAG *.txt
