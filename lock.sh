#!/usr/bin/env bash
# Regenerate requirements.lock, the exact version of every distribution the CPU install holds:
#   ./lock.sh                            after a change to pyproject.toml or constraints.txt
#   ./lock.sh --upgrade-package NAME     move one package (and what it needs) to its newest release
#   ./lock.sh --upgrade                  move everything
# Runs pip-compile from the project environment (pip-tools is a pinned dev dependency). It needs
# the CPU torch wheel visible to pip (as on these machines, or with PyTorch's CPU index added).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=.venv
CUSTOM_COMPILE_COMMAND="./lock.sh" "$VENV/bin/pip-compile" --quiet --allow-unsafe --strip-extras \
    --extra dev --constraint constraints.txt --no-emit-index-url --no-emit-find-links \
    --output-file requirements.lock "$@" pyproject.toml
# The torch line names the version, not the build (+cpu here, +cuXXX on a GPU machine), and the
# lock leaves torchvision out: lmms-eval declares it, but PyPI's build breaks beside CPU torch.
sed -i -e 's/^torch==\([^+ ]*\)+[^ ]*/torch==\1/' -e 's/^torchvision==/# torchvision==/' requirements.lock
echo "lock: wrote requirements.lock ($(grep -c '^[a-z0-9]' requirements.lock) distributions)"
