rm -rf /tmp/avcap-site
ls /tmp/avcap-first-caption/models/8B /tmp/avcap-first-caption 2>&1 | head -5
python3 benchmarks/bench_first_caption.py --out $OUT/fc --runs cold,warm-first,warm-first,warm --sample-stacks warm-first2 --deadline 420 > $OUT/fc.log 2>&1
tail -12 $OUT/fc.log
C=$(ls -d /tmp/avcap-first-caption/cache/*-cold | tail -1)
TORCHINDUCTOR_COMPILE_THREADS=1 python3 benchmarks/bench_first_caption.py --out $OUT/fc_ct1 --cache-dir $C --runs warm-first --deadline 75 > $OUT/fc_ct1.log 2>&1
tail -4 $OUT/fc_ct1.log
cd $OUT && tar czf fc.tgz fc fc_ct1 *.log && rm -rf fc fc_ct1
