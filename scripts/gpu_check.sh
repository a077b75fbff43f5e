#!/usr/bin/env bash
# On a machine with a GPU: the tests that need CUDA, the default benchmark on CUDA (eager, then
# with the decoding step compiled and captured as CUDA graphs), and a short table last.
# Under 8 minutes on one modern GPU. Uses .venv (bash scripts/setup.sh) or $PYTHON.
#
#   bash scripts/gpu_check.sh            # writes results/gpu-check-<time>{,-compiled}/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible to torch " + torch.__version__ + "; run this on a GPU machine")
print("[gpu_check]", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)'

"$PY" -m pytest -q -m cuda tests

out="results/gpu-check-$(date -u +%Y%m%d-%H%M%S)"
# The shipped checkpoints load on any device; the default run, scored with every extractor.
"$PY" -m bench run bench.yaml --out "$out" --set device=cuda \
    --set 'metrics.extractors=[domain,inception_offline,inception]'
"$PY" -m bench run bench.yaml --out "$out-compiled" --set device=cuda \
    --set sampling.compile=true --set sampling.cuda_graphs=true

"$PY" - "$out" "$out-compiled" <<'PYEOF'
import json, sys
import pandas as pd
from tabulate import tabulate

rows = []
for run in sys.argv[1:]:
    t = pd.read_csv(f"{run}/results.csv")
    info = json.load(open(f"{run}/run.json"))
    mode = "compiled+graphs" if info["config"]["sampling"]["compile"] else "eager"
    for _, r in t[t["nfe"].notna()].iterrows():
        rows.append({
            "mode": mode,
            "method": r["method"],
            "nfe": int(r["nfe"]),
            "latency_ms_b1": r["latency_ms_b1"],
            "img_s": r["throughput_img_s"],
            "speedup_b1": r.get("speedup_b1"),
            "peak_mem_mb": r["peak_mem_mb"],
            "fid_domain": r["fid_domain"],
            "fid_inc_offline": r.get("fid_inception_offline", float("nan")),
            "compile_s": r.get("compile_s", float("nan")),
        })
print(f"\n{info['environment']['device_name']}, torch {info['environment']['torch_version']}")
print(tabulate(rows, headers="keys", floatfmt=".3g", tablefmt="github"))
PYEOF
