#!/usr/bin/env bash
# The paper's table on one GPU: every model of `bert4rec benchmark quality`, three seeds, the
# same time budget per run, JOBS runs sharing the GPU at a time. Finished runs are kept in
# OUT/quality-NAME and reused (--resume), so a command cut short by a time limit is finished by
# running it again with the same arguments.
#
#   DATA=dir-with-ml-1m.txt OUT=results-dir JOBS=10 \
#     bash benchmarks/gpu_tables.sh SECONDS ml-1m.txt:ml-1m [beauty.txt:beauty ...]
#
# A job is FILE:PRESET (BERT4Rec's preset; the baselines use their papers' settings). Models
# with a finished search of gpu_tune.sh in OUT (tune-NAME-MODEL.json) train with its best
# settings, and the table shows every model's tuning budget.
set -u
budget=${1:-300}
shift
tables=("$@")
[ ${#tables[@]} -gt 0 ] || tables=(ml-1m.txt:ml-1m)
. "$(dirname "$0")/gpu_env.sh"
for table in "${tables[@]}"; do
  IFS=: read -r file preset <<<"$table"
  name=${file%.txt}
  tuned=()
  for search in "$out"/tune-"$name"-*.json; do
    [ -f "$search" ] && tuned+=(--tuned "$search")
  done
  python3 -m bert4rec benchmark quality "${tuned[@]}" --data "$data/$file" --preset "$preset" \
    --seeds ${SEEDS:-0 1 2} --time-budget "$budget" --device "${DEVICE:-cuda}" --threads 1 \
    --jobs "${JOBS:-10}" --resume --quiet --output "$out/quality-$name" \
    2>&1 | tee "$out/quality-$name.log" | grep -v "^  "
done
