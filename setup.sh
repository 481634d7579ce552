#!/usr/bin/env bash
# Create the project's virtual environment from the lock: ./setup.sh [VENV_DIR]   (default .venv)
# Every version comes from requirements.lock; ./lock.sh regenerates it (README "Install notes").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${1:-.venv}"

if command -v python3.11 >/dev/null 2>&1 && python3.11 -c "" >/dev/null 2>&1; then
    PYTHON=python3.11
else
    PYTHON=python3
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
"$PYTHON" -c 'import sys; sys.version_info[:2] == (3, 11) or print("setup: warning: requirements.lock was made for Python 3.11")'

echo "setup: creating $VENV with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
# The locked installer and build tools first, then torch with its own dependencies: on a machine without the CPU wheel
# that is PyPI's CUDA build with the nvidia-* libraries it pins. A CUDA torch of the locked version
# already in the environment is kept.
"${PIP[@]}" install -c requirements.lock pip setuptools wheel
"${PIP[@]}" install -c requirements.lock torch
# Then exactly the lock, nothing resolved beyond it (torchvision stays out, README), and the project.
# No build isolation: the few sdists in the lock build with its setuptools, not the newest one.
"${PIP[@]}" install --no-deps --no-build-isolation -r requirements.lock
"${PIP[@]}" install --no-deps --no-build-isolation -e .
echo "setup: done; run tests with $VENV/bin/python -m pytest -q"
