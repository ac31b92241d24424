#!/usr/bin/env bash
# Creates ./.venv (once) and installs SISC with its dependencies. Sourced by run_main.sh and run_tests.sh.
#
# torch: on a machine without an NVIDIA GPU we install the pinned CPU build first (torch==2.13.0; set
# SISC_TORCH_INDEX_URL, e.g. to PyTorch's CPU wheel index, where your pip would otherwise pick a CUDA build).
# With a GPU, pip's default (CUDA) torch is installed. A torch already in the venv is never replaced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SISC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] GPU found: installing torch (CUDA build)"
        "${PIP[@]}" install "torch${SISC_TORCH_VERSION:+==$SISC_TORCH_VERSION}"
    else
        echo "[setup] no GPU: installing the CPU build torch==${SISC_TORCH_VERSION:-2.13.0}"
        "${PIP[@]}" install "torch==${SISC_TORCH_VERSION:-2.13.0}" ${SISC_TORCH_INDEX_URL:+--index-url "$SISC_TORCH_INDEX_URL"}
    fi
fi

# Install the dependencies listed in pyproject.toml, then SISC itself in editable mode (its model files and the
# `sisc_train` package, which the scripts under train/ import), once per change of pyproject.toml.
STAMP="$VENV/.sisc-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || ! grep -qxF "$ROOT" "$STAMP"; then
    echo "[setup] installing the dependencies of pyproject.toml"
    "$VENV/bin/python" -c "import tomllib" 2>/dev/null || "${PIP[@]}" install tomli
    "$VENV/bin/python" - "$ROOT/pyproject.toml" > "$VENV/sisc-requirements.txt" <<'PY'
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
    "${PIP[@]}" install -r "$VENV/sisc-requirements.txt"
    echo "[setup] installing SISC from $ROOT (editable)"
    "${PIP[@]}" install --no-deps -e "$ROOT"
    echo "$ROOT" > "$STAMP"  # the checkout this venv's editable install points at
fi
"$VENV/bin/python" -c "import torch, transformers; print(f'[setup] torch {torch.__version__} (cuda: {torch.cuda.is_available()}), transformers {transformers.__version__}')"
export PATH="$VENV/bin:$PATH"
