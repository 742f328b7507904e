#!/usr/bin/env bash
# Install the factory and its whole working set into a virtualenv. The README, the Makefile, CI and
# the Dockerfile all install through this one script, so they cannot drift apart.
#   scripts/install.sh [VENV]      (default .venv; VENV=- installs into the current interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
py="${PYTHON:-python3}"
if [ "$venv" != "-" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  py="$venv/bin/python"
fi
"$py" -m pip install --quiet --upgrade pip
# constraints.txt pins the versions this project was tested with (torch 2.14.1 + torchvision 0.29.1,
# onnxruntime, openvino, nncf, litert, mlflow, dvc ...). Expect ~4-7 minutes and ~7.7 GB.
"$py" -m pip install --quiet --constraint requirements/constraints.txt --editable ".[all,dev,ray]"
"$py" -m pip check
