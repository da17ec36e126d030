# gpu_run65 call 5 (~470 s): the decoders' hold alone. The baseline is this checkout's src with the hold taken
# out (.nohold/src, made here), so both sides queue the first batch first; batch 96, Triton decode attention,
# bytecode cache. Run 1 fills an empty compile cache with every shape and is not compared.
rm -rf .nohold && mkdir -p .nohold && cp -r src .nohold/
sed -i 's/^            self.frames.hold(self.first_batch or self.batch_size)$/            pass  # no hold (gpu_run65 call 5)/' .nohold/src/avcap/engines/hf/engine.py
grep -c "no hold (gpu_run65 call 5)" .nohold/src/avcap/engines/hf/engine.py
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p /tmp/fc5-cache
python3 benchmarks/bench_first_caption.py --out $OUT/fc5 --runs warm-first@base,warm-first,warm-first@base,warm-first --cache-dir /tmp/fc5-cache \
  --baseline-src .nohold/src --bytecode-cache /tmp/pyc --batch-size 96 --decode-attention triton --deadline 450 > $OUT/fc5.txt 2>&1
tail -12 $OUT/fc5.txt | cut -c1-1500
cd $OUT && tar czf r5.tgz fc5 *.txt
