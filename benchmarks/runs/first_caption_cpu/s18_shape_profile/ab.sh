set -u
cd /work/main
for m in on off; do rm -rf /tmp/ab-$m-cache; mkdir -p /tmp/ab-$m-cache; done
run() { # $1 on|off  $2 label
  if [ $1 = off ]; then export TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO=0; else unset TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO; fi
  timeout 600 python benchmarks/bench_first_caption.py --tiny --videos 16 --batch-size 8 --runs warm-first --cache-dir /tmp/ab-$1-cache --bytecode-cache /tmp/pyc-t --work /tmp/fc6t --out /tmp/ab18-$1-$2 > /tmp/ab18-$1-$2.log 2>&1
  echo "$1 $2 $(grep -A1 'run     rc' /tmp/ab18-$1-$2.log | tail -1 | cut -c12-170)"
}
run on fill; run off fill
for i in 1 2 3; do run on $i; run off $i; done
