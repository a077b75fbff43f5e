#!/usr/bin/env bash
# Performance gate: run configs/ci.yaml and compare it with the committed baseline
# results/ci-baseline/ (exit 1 on a regression, 2 on unusable input). Expects .venv
# (scripts/setup.sh). Usage: bash scripts/perf_gate.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)/ci-run}"
.venv/bin/python -m bench run configs/ci.yaml --out "$out"
.venv/bin/python -m bench compare results/ci-baseline "$out" --out "$out/compare.md"
