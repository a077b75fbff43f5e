#!/usr/bin/env bash
# Performance gate: run configs/ci.yaml and compare it with the committed baseline
# results/ci-baseline/ (exit 1 on a regression, 2 on unusable input). Expects .venv
# (scripts/setup.sh). Usage: bash scripts/perf_gate.sh [RUN_DIR]
#
# A regression is confirmed by a second run before the gate fails: counts (NFE, FLOPs) and
# quality are deterministic and fail both times, and a real slowdown fails both times, while a
# burst of load on a shared machine rarely hits two runs in a row.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)/ci-run}"
gate() {
    .venv/bin/python -m bench run configs/ci.yaml --out "$1" || return 2
    .venv/bin/python -m bench compare results/ci-baseline "$1" --out "$1/compare.md"
}
gate "$out"
code=$?
if [ "$code" -eq 1 ]; then
    echo "[perf-gate] regression reported; confirming with a second run" >&2
    gate "$out-confirm"
    code=$?
fi
exit "$code"
