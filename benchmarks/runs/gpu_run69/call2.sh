# gpu_run69 call 2 (prepared in session 22, ~40 s plus the start): the chunked weight reader alone on a GPU, a 3.9 GB random bf16 checkpoint (session 22 had no device time left for it)
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY'
import os, time, torch
from safetensors.torch import save_file
os.makedirs('/tmp/wr', exist_ok=True)
t = {}
for i in range(72):
    shape = (4096, 8192) if i % 3 else (1536, 4096)
    t[f"layer{i}.w"] = torch.randn(shape, device="cuda", dtype=torch.bfloat16).cpu()
t["scalar"] = torch.tensor(2.0, dtype=torch.bfloat16); t["ids"] = torch.arange(1000)
t0 = time.time(); save_file(t, "/tmp/wr/model.safetensors"); print("saved", os.path.getsize("/tmp/wr/model.safetensors") / 1e9, "GB in", round(time.time() - t0, 1), "s")
PY
timeout 90 python3 benchmarks/bench_weights_read.py --model /tmp/wr --out $OUT/wr --repeats 3 --threads 2,4,8 2>&1 | tail -6
