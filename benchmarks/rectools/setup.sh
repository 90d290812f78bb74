#!/usr/bin/env bash
# A separate environment for the RecTools peer benchmark: .venv-rectools in the repository root.
#
#   bash benchmarks/rectools/setup.sh
#
# RecTools 0.19.0 (the newest release) accepts torch 2.13.0 and needs numpy < 2, so it cannot
# share .venv (numpy 2). torch==2.13.0 is installed first so that pip takes the CPU build; an
# unpinned torch would pull a CUDA build of several GB. Our package goes in as well (it accepts
# numpy 1.26), so that peer.py builds the split with our own data and split code; numpy is held
# below 2 for that install too (newer releases of our dependencies would lift it), pyarrow 26
# needs numpy 2, so it is held below 26 here.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
venv=.venv-rectools
"$python" -m venv "$venv"
. "$venv/bin/activate"
pip install torch==2.13.0
pip install "rectools[torch]==0.19.0"
pip install -e . "pyarrow<26" "numpy<2"
python - <<'PY'
import numpy, pyarrow, rectools, torch
import bert4rec  # noqa: F401
print(f"rectools {rectools.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"pyarrow {pyarrow.__version__}")
PY
