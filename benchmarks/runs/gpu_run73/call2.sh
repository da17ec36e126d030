# gpu_run73 call 2 (session 25, short of device time for call 1): only the imports an engine needs, in fresh
# processes (benchmarks/bench_imports.py, idle machine, the bytecode cache as bench_first_caption's runs use it),
# under the device image's transformers 5.17.0 (t517) and under avcap's lock, 5.25.0 with its lock-pinned
# dependencies (t525), alternating. Carry [".whl", ".whl525"]. First (~1 min): whether the device's torch 2.11 has
# the caching precompile that skips dynamo's tracing in a fresh process (benchmarks/probe_precompile.py).
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/avcap-site .whl/*.whl && export PYTHONPATH=/tmp/avcap-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tf525 .whl525/*.whl
export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
python3 -c "import torch, triton, transformers, sys; print(torch.__version__, triton.__version__, transformers.__version__)"
PYTHONPATH=/tmp/tf525:/tmp/avcap-site python3 -c "import transformers, huggingface_hub, sys; from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor; print('t525', transformers.__version__, huggingface_hub.__version__, 'sklearn' in sys.modules, 'scipy' in sys.modules)"
python3 -c "import transformers, sys; from transformers import Qwen3VLForConditionalGeneration; print('t517 sklearn', 'sklearn' in sys.modules, 'scipy' in sys.modules)"
python3 benchmarks/probe_precompile.py --out $OUT/precompile 2>&1 | tail -6
for i in ${ROUNDS:-1 2}; do
  python3 benchmarks/bench_imports.py --repeats ${REPEATS:-3} --conditions idle --out $OUT/t517_$i > $OUT/t517_$i.txt 2>&1
  PYTHONPATH=/tmp/tf525:/tmp/avcap-site python3 benchmarks/bench_imports.py --repeats ${REPEATS:-3} --conditions idle --out $OUT/t525_$i > $OUT/t525_$i.txt 2>&1
done
for f in $OUT/*/bench_imports.json; do python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))['conditions']['idle']
print(sys.argv[1].split('/')[-2], 'median', d['median'], 'samples', [s['sum'] for s in d['samples']])" $f; done
