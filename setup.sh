#!/usr/bin/env bash
# Create the project's virtual environment: ./setup.sh [VENV_DIR]   (default .venv)
# CPU torch is pinned through constraints.txt so no later install swaps in a CUDA build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${1:-.venv}"

if command -v python3.11 >/dev/null 2>&1 && python3.11 -c "" >/dev/null 2>&1; then
    PYTHON=python3.11
else
    PYTHON=python3
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'

echo "setup: creating $VENV with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -c constraints.txt -e ".[dev]"
# PyPI's torchvision is a CUDA build that breaks `import lmms_eval` and the transformers image
# processors next to CPU torch; without it transformers uses its PIL processors (ECOSYSTEM 0.1).
"${PIP[@]}" uninstall -y torchvision
echo "setup: done; run tests with $VENV/bin/python -m pytest -q"
