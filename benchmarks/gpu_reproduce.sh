#!/usr/bin/env bash
# Reproduction runs on one GPU: BERT4Rec on ML-1m and Beauty, three seeds per preset, all runs
# at once (small models leave a GPU mostly idle, so several share it well). Each training run
# stops at its time budget at the latest; the learning rate decays to zero by then.
#
#   DATA=/path/with/ml-1m.txt+beauty.txt OUT=results-dir bash benchmarks/gpu_reproduce.sh [SECONDS]
set -u
budget=${1:-330}
data=${DATA:-.devdata}
out=${OUT:-benchmarks/results}
export PYTHONPATH=src PYTHONUNBUFFERED=1 BERT4REC_CACHE=/tmp/bert4rec-cache
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# A one-epoch smoke run first: a broken GPU path fails in seconds, not at the end.
python3 -m bert4rec synthetic --output /tmp/smoke.csv --users 300 &&
  python3 -m bert4rec train --model bert4rec --data /tmp/smoke.csv --preset demo --set epochs=1 \
    --device cuda --precision bf16 --output /tmp/smoke-run --overwrite --quiet &&
  python3 -m bert4rec evaluate --run /tmp/smoke-run --data /tmp/smoke.csv --json || exit 1
common=(--seeds 0 1 2 --parallel 3 --device cuda --precision bf16 --threads 1
        --time-budget "$budget" --runs /tmp/bert4rec-runs)
python3 -m bert4rec prepare --data "$data/ml-1m.txt" >/dev/null
python3 -m bert4rec prepare --data "$data/beauty.txt" >/dev/null
for preset in ml-1m ml-1m-small; do
  python3 benchmarks/bert4rec_seeds.py --data "$data/ml-1m.txt" --preset $preset "${common[@]}" \
    --out "$out/gpu-$preset.json" >"$out/gpu-$preset.log" 2>&1 &
done
for preset in beauty beauty-large; do
  python3 benchmarks/bert4rec_seeds.py --data "$data/beauty.txt" --preset $preset "${common[@]}" \
    --out "$out/gpu-$preset.json" >"$out/gpu-$preset.log" 2>&1 &
done
wait
tail -n 3 "$out"/gpu-*.log
