# gpu_run69 call 1 (prepared in session 22, ~560 s on a fresh machine; END bounds it to the device time left).
# Run 68 showed a fresh process's first frames and its imports taking turns: the engine's loading thread holds
# avcap.core.imports' lock while it imports transformers, and the frame finisher's first conversion (importing
# torchvision and compiling the colour conversion) takes the same lock. Whichever goes first delays the other
# (imports 7.0 s with the frames at 10.8 s; 8.9-12.7 s with the frames first). AVCAP_COLOUR_COMPILE=0 converts
# eagerly (the same integers; ~2.3 ms more GPU time per 16-frame video, bench_finish.py): no compile in the first
# finish. A/B interleaved after one fill run, then a run under the stack sampler (its label must be warm-first2:
# a lone run is labelled warm-first and was never sampled in run 68). plain2 logs dynamo's recompiles
# (TORCH_LOGS=recompiles, in plain2/*.log). After the fill: the 8B checkpoint read onto the GPU by avcap's chunked
# reader (read_checkpoint, now EarlyWeights' reader on CUDA) against safetensors' own, every tensor compared
# (bench_weights_read.py); run 68's reads took 6.7-8.9 s and in one run the model waited 2.4 s for them: run 68's first 88-row batch spent 0.7-0.8 s in torch.compile, where the
# CPU box's torch 2.14 recompiles nothing at a new row count in a warm process (tiny model, batches 2, 4, 4, 2).
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -c "import torch, triton, transformers, av; print(torch.__version__, triton.__version__, transformers.__version__, av.__version__)"
mkdir -p /tmp/fc-cache
B="python3 benchmarks/bench_first_caption.py --cache-dir /tmp/fc-cache --bytecode-cache /tmp/pyc --batch-size 96 --first-batch 8"
left() { echo $(( ${END:-585} - SECONDS )); }  # END: seconds this call may run (device time left)
$B --out $OUT/fill --runs warm-first --deadline $(left) > $OUT/fill.txt 2>&1  # fills the empty compile cache: not compared
timeout 120 python3 benchmarks/bench_weights_read.py --model /tmp/avcap-first-caption/models/8B --out $OUT/wr > $OUT/wr.txt 2>&1; tail -4 $OUT/wr.txt
[ $(left) -gt 75 ] && AVCAP_COLOUR_COMPILE=0 $B --out $OUT/eager --runs warm-first --deadline $(left) > $OUT/eager.txt 2>&1
[ $(left) -gt 75 ] && $B --out $OUT/plain --runs warm-first --deadline $(left) > $OUT/plain.txt 2>&1
[ $(left) -gt 75 ] && AVCAP_COLOUR_COMPILE=0 $B --out $OUT/eager2 --runs warm-first --deadline $(left) > $OUT/eager2.txt 2>&1
[ $(left) -gt 75 ] && TORCH_LOGS=recompiles $B --out $OUT/plain2 --runs warm-first --deadline $(left) > $OUT/plain2.txt 2>&1
[ $(left) -gt 150 ] && $B --out $OUT/sampled --runs warm-first,warm-first --sample-stacks warm-first2 --deadline $(left) > $OUT/sampled.txt 2>&1
python3 benchmarks/first_caption_summary.py $OUT/fill $OUT/eager $OUT/plain $OUT/eager2 $OUT/plain2 $OUT/sampled
cd $OUT && tar czf r69.tgz fill wr eager plain eager2 plain2 sampled 2>/dev/null; rm -rf fill wr eager plain eager2 plain2 sampled
