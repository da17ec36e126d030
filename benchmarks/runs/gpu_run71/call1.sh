# gpu_run71 call 1 (prepared in session 23, ~585 s on a fresh machine; END bounds it to the device time left).
# Carry [".whl", ".baseline"] (.baseline/src: `git archive a8914e0 src`, the checkout before the shape-profile fix).
# Two things, interleaved on one machine after a fill run, one compile cache:
# - AVCAP_GRAPH_WARMUPS=1,0 (w10): a decode step's first CUDA graph of a (B, S) captured after one eager run (was
#   two), each further kv_len bucket of it after none (its kernels already ran). Run 68-70: the three step builds
#   took 0.78-2.56 s in the 16-row batch and 0.46-1.07 s in the first 88-row batch, 3 eager passes each.
# - the shape-profile fix (d3ca890, fix) against a8914e0 (base): run 70 had one round (3.42 against 3.45 videos/s,
#   no recompile at 88 rows with the fix); this adds rounds.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
export TORCH_LOGS=recompiles
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8"
left() { echo $(( ${END:-585} - SECONDS )); }
# the captions' digest (key and text, sorted) of the run just finished: w10 must write the same as fix
digest() { python3 -c "import json,hashlib,sys; r=sorted((d['key'],d['text']) for d in map(json.loads,open(sys.argv[1]))); print(hashlib.sha256(json.dumps(r).encode()).hexdigest()[:16], len(r))" /tmp/avcap-first-caption/runs/warm-first/outputs/first-caption-8B/base/FIRST_CAPTION/caption.jsonl > $OUT/$1.digest 2>&1; }
[ -n "$(ls /tmp/fc-cache 2>/dev/null)" ] || $B --out $OUT/fill --runs warm-first --deadline $(left) > $OUT/fill.txt 2>&1
for i in ${ROUNDS:-1 2 3}; do
  [ $(left) -gt 70 ] && AVCAP_GRAPH_WARMUPS=1,0 $B --out $OUT/w10_$i --runs warm-first --deadline $(left) > $OUT/w10_$i.txt 2>&1 && digest w10_$i
  [ $(left) -gt 70 ] && $B --out $OUT/fix$i --runs warm-first --deadline $(left) > $OUT/fix$i.txt 2>&1 && digest fix$i
  [ $(left) -gt 70 ] && $B --out $OUT/base$i --runs warm-first@base --baseline-src .baseline/src --deadline $(left) > $OUT/base$i.txt 2>&1 && digest base$i
done
# SAMPLED=1: then two plain runs, the second under the stack sampler (what the 16-row batch's Python waits on)
[ -n "${SAMPLED:-}" ] && [ $(left) -gt 150 ] && $B --out $OUT/sampled --runs warm-first,warm-first --sample-stacks warm-first2 --deadline $(left) > $OUT/sampled.txt 2>&1
D=$(ls -d $OUT/*/ 2>/dev/null | tr '\n' ' ')
python3 benchmarks/first_caption_summary.py $D
grep . $OUT/*.digest
for d in $D; do echo "$(basename $d) recompiles: $(cat $d/*.log 2>/dev/null | grep -c 'Recompiling function') graph errors: $(grep -l 'CUDA graph capture failed' $d/*.log 2>/dev/null | wc -l)"; done
cd $OUT && tar czf r71.tgz */ 2>/dev/null && rm -rf */
