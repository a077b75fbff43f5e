"""`bench stability CONFIG -k K`: run a config K times and measure how much each number moves.

Thresholds of a regression gate must come from measured noise, not from hope. Every run goes to
``OUT/run-i``; ``OUT/stability.csv`` holds, per row (method, variant, replicate: the row key of
``bench.runfolder``) and metric, the K values' median, min, max and the largest relative
deviation from the median, and ``OUT/stability.md`` the same as a table with the smallest
``compare`` thresholds that would have passed every run against every other.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.compare import METRICS
from bench.config import BenchConfig
from bench.runfolder import ROW_KEY, load_run
from bench.runner import run
from methods.atomic import write_text

COLUMNS = (*ROW_KEY, "metric", "kind", "median", "min", "max", "max_rel_dev", "max_pair_ratio")
HEADERS = (
    "sampler",
    "variant",
    "replicate",
    "metric",
    "kind",
    "median",
    "min",
    "max",
    "max rel dev",
    "max/min",
)


def _values(tables: list[pd.DataFrame], key: tuple, column: str) -> list[float]:
    """The runs' non-missing values of ``column`` in the row ``key`` (runs without it skipped)."""
    vals = [float(t.at[key, column]) for t in tables if column in t.columns and key in t.index]
    return [v for v in vals if not math.isnan(v)]


def spreads(run_dirs: list[Path]) -> pd.DataFrame:
    """Per row (method, variant, replicate) of the first run and metric: median, min, max and
    max |x / median - 1| over the runs."""
    tables = [load_run(d).results.set_index(list(ROW_KEY)) for d in run_dirs]
    rows = []
    for key in tables[0].index:
        for m in METRICS:
            vals = _values(tables, key, m.name)
            if not vals:
                continue
            med = float(pd.Series(vals).median())
            dev = max(abs(v / med - 1) for v in vals) if med else 0.0
            rows.append(
                dict(zip(ROW_KEY, key, strict=True))
                | {
                    "metric": m.name,
                    "kind": m.gate,
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
        "Per row (sampler, variant, replicate) and metric over the runs: `max rel dev` is the "
        "largest |x / median - 1|; `max/min` the largest ratio between two runs (what a gate "
        "comparing one run against another sees).",
        "",
        tabulate(
            table[[*COLUMNS]].values.tolist(),
            HEADERS,
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
