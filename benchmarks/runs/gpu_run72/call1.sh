# gpu_run72 call 1 (session 24): the first call's inputs built while the weights load (prep, this checkout) against
# 583a85e (base: built after the model is ready), interleaved after a fill run, one compile cache.
# Carry [".whl", ".baseline"] (.baseline/src: `git archive 583a85e src`). `END=<device time left - ~150>`.
# VIDEOS=96 (short of device time): batches of 8 + 88 (192 videos make 16 + 88 + 88), ~20 s less per run;
# SIZE=2B: the 2B model (its build and runs far shorter): the mechanism and the captions, not goal 2b's figure.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
export TORCH_LOGS=recompiles
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8 --videos ${VIDEOS:-192} --size ${SIZE:-8B}"
left() { echo $(( ${END:-560} - SECONDS )); }
# the captions' digest (key and text, sorted) of the run just finished: prep must write the same as base
digest() { python3 -c "import json,hashlib,sys; r=sorted((d['key'],d['text']) for d in map(json.loads,open(sys.argv[1]))); print(hashlib.sha256(json.dumps(r).encode()).hexdigest()[:16], len(r))" /tmp/avcap-first-caption/runs/warm-first/outputs/first-caption-${SIZE:-8B}/base/FIRST_CAPTION/caption.jsonl > $OUT/$1.digest 2>&1; }
[ -n "$(ls /tmp/fc-cache 2>/dev/null)" ] || $B --out $OUT/fill --runs warm-first --deadline $(left) > $OUT/fill.txt 2>&1
for i in ${ROUNDS:-1 2 3}; do
  [ $(left) -gt 70 ] && $B --out $OUT/prep$i --runs warm-first --deadline $(left) > $OUT/prep$i.txt 2>&1 && digest prep$i
  [ $(left) -gt 70 ] && $B --out $OUT/base$i --runs warm-first@base --baseline-src .baseline/src --deadline $(left) > $OUT/base$i.txt 2>&1 && digest base$i
done
# SAMPLED=1: then two plain runs, the second under the stack sampler (what the first batch's Python waits on:
# dynamo's re-trace, the suffix's first call, the decode steps' capture)
[ -n "${SAMPLED:-}" ] && [ $(left) -gt 150 ] && $B --out $OUT/sampled --runs warm-first,warm-first --sample-stacks warm-first2 --deadline $(left) > $OUT/sampled.txt 2>&1
D=$(ls -d $OUT/*/ 2>/dev/null | tr '\n' ' ')
python3 benchmarks/first_caption_summary.py $D
cat $OUT/*.digest
for d in $D; do echo "$(basename $d) recompiles: $(cat $d/*.log 2>/dev/null | grep -c 'Recompiling function') graph errors: $(grep -l 'CUDA graph capture failed' $d/*.log 2>/dev/null | wc -l)"; done
cd $OUT && tar czf r72.tgz */ *.txt *.digest 2>/dev/null && rm -rf */ *.txt *.digest
