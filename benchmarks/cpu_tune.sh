#!/usr/bin/env bash
# Tune every trainable model of the paper's table on this CPU, JOBS searches at a time (one
# torch thread each), every trial under the same time budget: the equal, recorded tuning budget
# the table then shows. A search resumes from its file, so a command cut short (a session's
# end) is finished by running it again with the same arguments.
#
#   OUT=runs/tune JOBS=2 VALID_USERS=10000 \
#     bash benchmarks/cpu_tune.sh SECONDS TRIALS DATA_FILE PRESET [MODEL ...]
#
# Then the table with the best settings of every search, under the same budget per run:
#
#   bert4rec benchmark quality --data DATA_FILE --preset PRESET --tuned runs/tune/NAME-MODEL.json \
#     ... --jobs 2 --threads 1 --resume --output runs/quality-NAME
set -u
budget=${1:?seconds per trial}
trials=${2:?trials per model}
file=${3:?data file}
preset=${4:?BERT4Rec preset}
shift 4
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(bpr ncf fpmc gru4rec gru4rec+ gru4rec-ce caser sasrec sasrec-ce bert4rec)
out=${OUT:-runs/tune}
name=$(basename "${file%.*}")
mkdir -p "$out"
valid=()
[ -n "${VALID_USERS:-}" ] && valid=(--valid-users "$VALID_USERS")
printf '%s\n' "${models[@]}" | xargs -P "${JOBS:-2}" -I{} sh -c '
  model=$1 file=$2 preset=$3 trials=$4 budget=$5 out=$6 name=$7
  shift 7
  bert4rec tune --model "$model" --data "$file" --preset "$preset" --trials "$trials" \
    --time-budget "$budget" --threads 1 --quiet --output "$out/$name-$model.json" "$@" \
    >"$out/$name-$model.log" 2>&1
  status=$?
  echo "$model: $(tail -n 1 "$out/$name-$model.log")"
  exit $status' \
  _ {} "$file" "$preset" "$trials" "$budget" "$out" "$name" "${valid[@]}"
