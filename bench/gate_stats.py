"""The statistical timing gate of ``bench compare``: a test over the raw repeats of both runs.

Each run folder keeps every timed repeat (timing_repeats.csv). For a sampler and a timing
(batch-1 latency; the throughput batch) the sample is the per-round ratio of its time to the
calibration workload's in the same round (quiet rounds only), which cancels the machine's speed
of the moment. New against baseline: a one-sided Mann-Whitney U test, and the ratio of the
medians minus 1 as the estimate with a bootstrap 95% interval. A regression needs both: p below
``compare.alpha`` and the estimate above the minimum effect (``compare.latency_rel``,
``compare.throughput_rel``), so a real but tiny change does not fail a gate and a large but
noisy one does not either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench.runfolder import ROW_KEY, Run
from bench.speed import CALIBRATION

BOOTSTRAP = 2000


@dataclass(frozen=True)
class Test:
    estimate: float  # median(new) / median(baseline) - 1
    low: float  # bootstrap 95% interval of the estimate
    high: float
    p_worse: float  # one-sided Mann-Whitney U: new slower than baseline
    p_better: float
    n_base: int
    n_new: int

    def verdict(self, min_effect: float, alpha: float) -> str:
        if self.p_worse < alpha and self.estimate > min_effect:
            return "REGRESSED"
        if self.p_better < alpha and self.estimate < -min_effect:
            return "improved"
        return "ok"


def round_ratios(run: Run) -> dict[tuple, list[float]]:
    """(method, variant, replicate, metric) -> per-round time / calibration time, quiet rounds
    only; empty for a run without timing_repeats.csv (made before it existed, or a bare
    results file)."""
    path = None if run.dir is None else Path(run.dir) / "timing_repeats.csv"
    if path is None or not path.is_file() or "key" not in run.results.columns:
        return {}
    raw = pd.read_csv(path)
    if raw.empty:
        return {}
    raw = raw[raw["used"].astype(bool)]
    cal = raw[raw["method"] == CALIBRATION].set_index(["batch", "round"])["wall_s"]
    out: dict[tuple, list[float]] = {}
    for row in run.results.to_dict("records"):
        if not isinstance(row.get("key"), str) or pd.isna(row.get("throughput_batch")):
            continue
        for metric, batch in (
            ("latency_b1_vs_cal", 1),
            ("tput_time_vs_cal", int(row["throughput_batch"])),
        ):
            mine = raw[(raw["method"] == row["key"]) & (raw["batch"] == batch)]
            ratios = [
                w / cal[(batch, r)]
                for w, r in zip(mine["wall_s"], mine["round"], strict=True)
                if (batch, r) in cal.index
            ]
            if ratios:
                out[(*(row[k] for k in ROW_KEY), metric)] = ratios
    return out


def test(base: list[float], new: list[float]) -> Test:
    a, b = np.asarray(base, float), np.asarray(new, float)
    estimate = float(np.median(b) / np.median(a) - 1)
    rng = np.random.default_rng(0)
    boot = [
        np.median(rng.choice(b, len(b))) / np.median(rng.choice(a, len(a))) - 1
        for _ in range(BOOTSTRAP)
    ]
    low, high = (float(q) for q in np.percentile(boot, [2.5, 97.5]))
    if len(a) < 2 or len(b) < 2:
        return Test(estimate, low, high, math.nan, math.nan, len(a), len(b))
    worse = mannwhitneyu(b, a, alternative="greater").pvalue
    better = mannwhitneyu(b, a, alternative="less").pvalue
    return Test(estimate, low, high, float(worse), float(better), len(a), len(b))
