# Shared by the GPU scripts (sourced): where data and results are, the package from this tree,
# a fresh cache, and which card this is.
data=${DATA:-.devdata}
out=${OUT:-benchmarks/results}
export PYTHONPATH=src PYTHONUNBUFFERED=1 BERT4REC_CACHE=/tmp/bert4rec-cache
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
