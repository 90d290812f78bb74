#!/usr/bin/env bash
# Reproduction runs on one GPU: BERT4Rec, three seeds per data set and preset, all runs at once
# (small models leave a GPU mostly idle, so several share it well). Each training run stops at
# its time budget at the latest; the learning rate decays to zero by then.
#
#   DATA=dir-with-ml-1m.txt-and-beauty.txt OUT=results-dir \
#     bash benchmarks/gpu_reproduce.sh SECONDS ml-1m.txt:ml-1m [beauty.txt:beauty ...]
set -u
budget=${1:-330}
shift
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(ml-1m.txt:ml-1m)
data=${DATA:-.devdata}
out=${OUT:-benchmarks/results}
export PYTHONPATH=src PYTHONUNBUFFERED=1 BERT4REC_CACHE=/tmp/bert4rec-cache
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for job in "${jobs[@]}"; do
  python3 -m bert4rec prepare --data "$data/${job%%:*}" >/dev/null || exit 1
done
for job in "${jobs[@]}"; do
  file=${job%%:*} preset=${job##*:}
  python3 benchmarks/bert4rec_seeds.py --data "$data/$file" --preset "$preset" \
    --seeds 0 1 2 --parallel 3 --device cuda --precision bf16 --threads 4 \
    --time-budget "$budget" --runs /tmp/bert4rec-runs \
    --out "$out/gpu-$preset.json" >"$out/gpu-$preset.log" 2>&1 &
done
wait
tail -n 3 "$out"/gpu-*.log
