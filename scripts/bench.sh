#!/usr/bin/env bash
# Set up the environment and run the default benchmark (bench.yaml). Extra arguments go to
# `python -m bench run`, e.g. --retrain or --set eval.num_samples=1000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m bench run bench.yaml "$@"
