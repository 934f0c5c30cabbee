#!/usr/bin/env bash
# Set up .venv with the dev extras and run the default (CPU, fast) test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,demo
bash scripts/get_fmnist.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -q --durations=10 "$@"   # the ten slowest tests, to keep the suite short
