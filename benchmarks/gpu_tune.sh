#!/usr/bin/env bash
# Tune every trainable model of the paper's table on one GPU, all searches at once (one
# process each, sharing the card), each trial under the same time budget: the equal, recorded
# tuning budget the table then shows. Searches resume from their files, so a command cut
# short is finished by running it again; gpu_tables.sh picks the results up (--tuned).
#
#   DATA=dir-with-ml-1m.txt OUT=results-dir \
#     bash benchmarks/gpu_tune.sh SECONDS TRIALS ml-1m.txt:ml-1m [beauty.txt:beauty ...]
set -u
budget=${1:-60}
trials=${2:-8}
shift 2
tables=("$@")
[ ${#tables[@]} -gt 0 ] || tables=(ml-1m.txt:ml-1m)
. "$(dirname "$0")/gpu_env.sh"
models=(bpr ncf fpmc gru4rec gru4rec+ gru4rec-ce caser sasrec sasrec-ce bert4rec)
for table in "${tables[@]}"; do
  IFS=: read -r file preset <<<"$table"
  name=${file%.txt}
  for model in "${models[@]}"; do
    python3 -m bert4rec tune --model "$model" --data "$data/$file" --preset "$preset" \
      --trials "$trials" --time-budget "$budget" --device "${DEVICE:-cuda}" --threads 1 \
      --quiet --output "$out/tune-$name-$model.json" >"$out/tune-$name-$model.log" 2>&1 &
  done
  wait
  tail -n 1 "$out"/tune-"$name"-*.log
done
