set -x
nvidia-smi --query-gpu=name --format=csv
mkdir -p /tmp/w && cp .whl/*.whl .whl-tf525-min/*.whl /tmp/w/
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/avcap-site /tmp/w/*.whl
W=/tmp/w
if ! PYTHONPATH=/tmp/avcap-site python3 -c "import transformers, transformers.models.qwen3_vl.modeling_qwen3_vl as m; from transformers import AutoModelForImageTextToText, AutoProcessor; print('tf', transformers.__version__)"; then
  echo "transformers 5.25 does not import here: falling back to the box's"; rm -rf /tmp/avcap-site; W=.whl
fi
python3 benchmarks/bench_first_caption.py --wheels $W --out $OUT/fc --runs cold,warm-first,warm-first,warm --sample-stacks warm-first2 --deadline 470 > $OUT/fc.log 2>&1
tail -12 $OUT/fc.log
C=$(ls -d /tmp/avcap-first-caption/cache/*-cold | tail -1)
TORCHINDUCTOR_COMPILE_THREADS=1 python3 benchmarks/bench_first_caption.py --wheels $W --out $OUT/fc_ct1 --cache-dir $C --runs warm-first --deadline 75 > $OUT/fc_ct1.log 2>&1
tail -4 $OUT/fc_ct1.log
cd $OUT && tar czf fc.tgz fc fc_ct1 *.log && rm -rf fc fc_ct1
