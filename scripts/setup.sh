#!/usr/bin/env bash
# Create .venv and install diffdistill with the given extras, keeping the CPU torch pin.
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh dev
# Why the pin: an unpinned torch pulls several GB of CUDA packages, and torchvision (pulled by clean-fid) breaks
# diffusers/transformers/torchmetrics imports next to a CPU torch (README, Installing by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
torch_pin="${DIFFDISTILL_TORCH:-torch==2.13.0}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "$torch_pin" > .venv/constraints.txt
pip_quiet=(-q --disable-pip-version-check)
.venv/bin/python -c "import torch" 2>/dev/null \
    || .venv/bin/pip install "${pip_quiet[@]}" "$torch_pin" 2> >(grep -v "is ignored: it is neither" >&2)
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# (grep drops the pip warnings about unreachable local index folders on the build machines)
.venv/bin/pip install "${pip_quiet[@]}" -c .venv/constraints.txt -e "$spec" 2> >(grep -v "is ignored: it is neither" >&2)
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
    echo "error: torchvision is installed in .venv; it breaks diffusers/torchmetrics next to CPU torch." >&2
    echo "       remove it: .venv/bin/pip uninstall -y torchvision" >&2
    exit 1
fi
