#!/usr/bin/env bash
# Regenerate every paper table: execute notebooks/NN_*.ipynb with papermill into reports/<profile>/,
# render them to HTML without code and write reports/<profile>/index.html.
#
#   ./run_all.sh [--profile demo|paper] [--only NAMES] [--jobs N] [--force] [-p NAME VALUE ...]
#                [--reports-dir DIR]
#
# The work is done by `python -m clipdepth.run.run_all` (see its docstring and `./run_all.sh --help`);
# this wrapper only picks the interpreter: $CLIPDEPTH_PYTHON, else the repository's .venv, else python3.
set -euo pipefail
# relative paths on the command line (-p data_dir, -p weights, --reports-dir) mean the caller's directory
export CLIPDEPTH_CALLER_CWD="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ -n "${CLIPDEPTH_PYTHON:-}" ]; then
  PY="$CLIPDEPTH_PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
# papermill's `-k python3` resolves to the kernel of the interpreter that runs it; put that
# interpreter's bin/ first so jupyter helpers found on PATH belong to the same environment.
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH
exec "$PY" -m clipdepth.run.run_all "$@"
