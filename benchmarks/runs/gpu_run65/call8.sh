# gpu_run65 call 8 (session 18, ~420 s): call 7 cut to one compared pair (fill, this checkout, fd02c70)
RUNS=warm-first,warm-first,warm-first@base DEADLINE=400 TAG=fc8 bash benchmarks/runs/gpu_run65/call7.sh
