"""`bench stability CONFIG -k K`: run a config K times and measure how much each number moves.

Thresholds of a regression gate must come from measured noise, not from hope. Every run goes to
``OUT/run-i``; ``OUT/stability.csv`` holds, per sampler and metric, the K values' median, min,
max and the largest relative deviation from the median, and ``OUT/stability.md`` the same as a
table with the smallest ``compare`` thresholds that would have passed every run against every
other.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.compare import METRICS
from bench.config import BenchConfig
from bench.runner import run
from methods.atomic import write_text

COLUMNS = ("method", "metric", "kind", "median", "min", "max", "max_rel_dev", "max_pair_ratio")


def spreads(run_dirs: list[Path]) -> pd.DataFrame:
    """Per (method, metric): median, min, max and max |x / median - 1| over the runs."""
    tables = [pd.read_csv(d / "results.csv") for d in run_dirs]
    rows = []
    for method in tables[0].method:
        for m in METRICS:
            vals = [
                float(t.loc[t.method == method, m.column].iloc[0])
                for t in tables
                if m.column in t.columns and (t.method == method).any()
            ]
            vals = [v for v in vals if not math.isnan(v)]
            if not vals:
                continue
            med = float(pd.Series(vals).median())
            dev = max(abs(v / med - 1) for v in vals) if med else 0.0
            rows.append(
                {
                    "method": method,
                    "metric": m.column,
                    "kind": m.kind,
                    "runs": len(vals),
                    "median": med,
                    "min": min(vals),
                    "max": max(vals),
                    "max_abs_diff": max(vals) - min(vals),
                    "max_rel_dev": dev,
                    "max_pair_ratio": max(vals) / min(vals) if min(vals) > 0 else math.nan,
                }
            )
    return pd.DataFrame(rows)


def needed_thresholds(table: pd.DataFrame) -> dict[str, float]:
    """The smallest thresholds under which no run would fail against any other run."""

    def worst(kind: str, col: str) -> float:
        sel = table[table.kind == kind][col]
        return float(sel.max()) if len(sel) else 0.0

    return {
        "latency_rel": worst("latency", "max_pair_ratio") - 1,
        "throughput_rel": worst("throughput", "max_pair_ratio") - 1,
        "memory_rel": worst("memory", "max_pair_ratio") - 1,
        "fid_abs": worst("fid", "max_abs_diff"),
        "kid_abs": worst("kid", "max_abs_diff"),
        "is_abs": worst("is", "max_abs_diff"),
    }


def stability(cfg: BenchConfig, config_path: Path, out: Path, k: int) -> Path:
    dirs = []
    for i in range(1, k + 1):
        print(f"[stability] run {i}/{k}", flush=True)
        d = out / f"run-{i}"
        if not (d / "report.md").exists():
            run(cfg, config_path, d, retrain=False, resume=d if (d / "run.json").exists() else None)
        dirs.append(d)
    table = spreads(dirs)
    table.to_csv(out / "stability.csv", index=False)
    need = needed_thresholds(table)
    th = cfg.compare
    lines = [
        f"# flowbench stability: `{config_path}` x {k}",
        "",
        "Per sampler and metric over the runs: `max rel dev` is the largest |x / median - 1|; "
        "`max/min` the largest ratio between two runs (what a gate comparing one run against "
        "another sees).",
        "",
        tabulate(
            table[[*COLUMNS]].values.tolist(),
            ["sampler", "metric", "kind", "median", "min", "max", "max rel dev", "max/min"],
            tablefmt="github",
            floatfmt=".4g",
        ),
        "",
        "| threshold | needed to pass every pair of these runs | configured |",
        "|---|---|---|",
        *(f"| compare.{k} | {v:.4g} | {getattr(th, k)} |" for k, v in need.items()),
        "",
    ]
    write_text(out / "stability.md", "\n".join(lines))
    print("\n".join(lines), flush=True)
    return out
