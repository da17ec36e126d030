# gpu_run73 call 1 (session 25): the same avcap under the device image's transformers 5.17.0 (t517) and
# under avcap's lock, transformers 5.25.0 with its lock-pinned dependencies (t525: carried wheels, first on
# the path). 5.17 imports scikit-learn (and scipy) at `import transformers.generation` when installed, as
# on the device; 5.25 imports it only where assisted generation uses it. Interleaved after a fill run each
# (the compile cache is keyed on transformers' version, so each has its own entries), one machine.
# Carry [".whl", ".whl525"]. `END=<device time left - ~150>`; ROUNDS (default "1 2"): which rounds run.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tf525 .whl525/*.whl
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
T525="/tmp/tf525:/tmp/avcap-site"
PYTHONPATH=$T525 python3 -c "import transformers, huggingface_hub, sys; from transformers import Qwen3VLForConditionalGeneration, AutoProcessor; import transformers.generation; print('t525', transformers.__version__, huggingface_hub.__version__, 'sklearn' in sys.modules)" || T525=""
mkdir -p /tmp/fc-cache
export TORCH_LOGS=recompiles
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8 --videos ${VIDEOS:-192} --size ${SIZE:-8B}"
left() { echo $(( ${END:-560} - SECONDS )); }
digest() { python3 -c "import json,hashlib,sys; r=sorted((d['key'],d['text']) for d in map(json.loads,open(sys.argv[1]))); print(hashlib.sha256(json.dumps(r).encode()).hexdigest()[:16], len(r))" /tmp/avcap-first-caption/runs/warm-first/outputs/first-caption-${SIZE:-8B}/base/FIRST_CAPTION/caption.jsonl > $OUT/$1.digest 2>&1; }
t517() { [ $(left) -gt 70 ] && $B --out $OUT/t517_$1 --runs warm-first --deadline $(left) > $OUT/t517_$1.txt 2>&1 && digest t517_$1; }
t525() { [ -n "$T525" ] && [ $(left) -gt 70 ] && PYTHONPATH=$T525 $B --out $OUT/t525_$1 --runs warm-first --deadline $(left) > $OUT/t525_$1.txt 2>&1 && digest t525_$1; }
[ -e /tmp/fc-cache/.t517 ] || { t517 fill; touch /tmp/fc-cache/.t517; }
[ -e /tmp/fc-cache/.t525 ] || { t525 fill; touch /tmp/fc-cache/.t525; }
for i in ${ROUNDS:-1 2}; do
  if [ $((i % 2)) = 1 ]; then t517 $i; t525 $i; else t525 $i; t517 $i; fi
done
D=$(ls -d $OUT/*/ 2>/dev/null | tr '\n' ' ')
python3 benchmarks/first_caption_summary.py $D
cat $OUT/*.digest
for d in $D; do echo "$(basename $d) recompiles: $(cat $d/*.log 2>/dev/null | grep -c 'Recompiling function') graph errors: $(grep -l 'CUDA graph capture failed' $d/*.log 2>/dev/null | wc -l)"; done
cd $OUT && tar czf r73.tgz */ *.txt *.digest 2>/dev/null && rm -rf */ *.txt *.digest
