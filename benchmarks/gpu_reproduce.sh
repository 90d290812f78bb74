#!/usr/bin/env bash
# Reproduction runs on one GPU: BERT4Rec, three seeds per data set and preset, all runs at once
# (small models leave a GPU mostly idle, so several share it well). Each training run stops at
# its time budget at the latest; the learning rate decays to zero by then.
#
#   DATA=dir-with-ml-1m.txt-and-beauty.txt OUT=results-dir \
#     bash benchmarks/gpu_reproduce.sh SECONDS ml-1m.txt:ml-1m [beauty.txt:beauty ...]
#
# A job is FILE:PRESET[:NAME[:KEY=VALUE,...]]; NAME labels its results, the settings override
# the preset (e.g. ml-1m.txt:ml-1m:ml-1m-popinit:popularity_bias_init=true).
set -u
budget=${1:-330}
shift
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(ml-1m.txt:ml-1m)
. "$(dirname "$0")/gpu_env.sh"
for job in "${jobs[@]}"; do
  python3 -m bert4rec prepare --data "$data/${job%%:*}" >/dev/null || exit 1
done
for job in "${jobs[@]}"; do
  IFS=: read -r file preset name sets <<<"$job"
  name=${name:-$preset}
  overrides=()
  IFS=, read -ra pairs <<<"${sets:-}"
  for pair in "${pairs[@]}"; do overrides+=(--set "$pair"); done
  python3 benchmarks/bert4rec_seeds.py --data "$data/$file" --preset "$preset" --name "$name" \
    "${overrides[@]}" --seeds 0 1 2 --parallel 3 --device "${DEVICE:-cuda}" --precision bf16 \
    --threads "${THREADS:-1}" --time-budget "$budget" --runs /tmp/bert4rec-runs \
    --out "$out/gpu-$name.json" >"$out/gpu-$name.log" 2>&1 &
done
wait
tail -n 3 "$out"/gpu-*.log
