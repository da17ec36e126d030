# gpu_run70 call 1 (session 23): d3ca890 reads the workload's shape profile again after the frame thread's colour
# conversion compiled first (gpu_run69: in every run that compiled the colour conversion, attention_inputs and
# attention_output_and_mlp recompiled at the first 88-row batch, "size mismatch at index 0, expected 16, actual 88";
# in the AVCAP_COLOUR_COMPILE=0 runs they did not). Interleaved on one machine after a fill run, one shared compile
# cache and profile: this checkout (fix), a8914e0 (.baseline/src, base), and this checkout with the colour
# conversion eager (eager), twice each, every run logging dynamo's recompiles. END bounds the call.
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
export TORCH_LOGS=recompiles
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8"
left() { echo $(( ${END:-585} - SECONDS )); }
$B --out $OUT/fill --runs warm-first --deadline $(left) > $OUT/fill.txt 2>&1
for i in 1 2; do
  [ $(left) -gt 70 ] && $B --out $OUT/fix$i --runs warm-first --deadline $(left) > $OUT/fix$i.txt 2>&1
  [ $(left) -gt 70 ] && $B --out $OUT/base$i --runs warm-first@base --baseline-src .baseline/src --deadline $(left) > $OUT/base$i.txt 2>&1
  [ $(left) -gt 70 ] && AVCAP_COLOUR_COMPILE=0 $B --out $OUT/eager$i --runs warm-first --deadline $(left) > $OUT/eager$i.txt 2>&1
done
D="$OUT/fill $OUT/fix1 $OUT/base1 $OUT/eager1 $OUT/fix2 $OUT/base2 $OUT/eager2"
python3 benchmarks/first_caption_summary.py $D
for d in $D; do [ -d $d ] && echo "$(basename $d) recompiles: $(cat $d/*.log 2>/dev/null | grep -c 'Recompiling function') $(cat $d/*.log 2>/dev/null | grep -o 'Recompiling function [a-z_]*' | sort | uniq -c | tr '\n' ' ')"; done
cd $OUT && tar czf r70.tgz fill fix1 base1 eager1 fix2 base2 eager2 2>/dev/null; rm -rf fill fix1 base1 eager1 fix2 base2 eager2
