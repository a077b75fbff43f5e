#!/usr/bin/env bash
# Create .venv with the pinned environment (torch 2.14.1 / torchvision 0.29.1 come from pip's cache).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
