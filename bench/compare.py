"""`bench compare BASELINE NEW`: every metric of two runs side by side, with a verdict.

Rows are matched by the row key (method, variant, replicate) of ``bench.runfolder``; both inputs
are read by its one reader. The metrics are the gated columns of ``bench.columns``, each judged
by its gate:

- ``exact``: deterministic counts (NFE, sequential steps, FLOPs, parameters, non-finite images);
  any change fails.
- ``latency``/``throughput``: times divided by the calibration workload timed in the same run
  (batch-1 latency; time per throughput batch); failing when the ratio grew by more than
  ``compare.latency_rel``/``compare.throughput_rel``. Raw times are shown but not gated: they
  mostly say how busy the machine was. Batch-1 latency of small models is overhead-bound and
  the noisier of the two, hence its own margin.
- ``memory``: peak memory, failing when it grew by more than ``compare.memory_rel``.
- ``fid``/``kid``/``is``: absolute thresholds in the metric's units (worse = higher FID/KID,
  lower IS).

Exit codes: 0 nothing regressed, 1 something did, 2 the inputs cannot be compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml
from tabulate import tabulate

from bench import runfolder
from bench.columns import GATED, Column
from bench.config import CompareConfig, ConfigError, parse_section
from bench.runfolder import ROW_KEY, Run

METRICS: tuple[Column, ...] = GATED  # what is judged, each by its column's gate
KEY = list(ROW_KEY)


class CompareError(ValueError):
    """The two inputs cannot be compared; the message says why."""


def load_results(path: Path) -> Run:
    """A finished run folder or a bare results .csv/.parquet, through the one run reader."""
    return runfolder.load_results(path, need=("dataset", "extractors"))


def thresholds(results: Run, overrides: list[str] = ()) -> CompareConfig:
    """The new run's ``compare`` section (defaults for a bare file), then ``--set`` overrides."""
    raw = dict((results.config or {}).get("compare", {}))
    for assignment in overrides:
        key, _, text = assignment.partition("=")
        key = key.strip().removeprefix("compare.")
        if not text or "." in key:
            raise ConfigError(f"--set {assignment!r}: expected compare.<field>=<number>")
        raw[key] = yaml.safe_load(text)
    return parse_section(CompareConfig, raw, "compare.")


def _same(base: pd.DataFrame, new: pd.DataFrame, column: str) -> None:
    a, b = sorted(set(base[column].astype(str))), sorted(set(new[column].astype(str)))
    if a != b:
        raise CompareError(
            f"different {column}: baseline {a}, new {b}; the numbers cannot be compared"
        )


def _allowed(metric: Column, base: float, th: CompareConfig) -> float:
    """How far the new value may move in the worse direction before it is a regression."""
    return {
        "exact": 0.0,
        "latency": th.latency_rel * abs(base),
        "throughput": th.throughput_rel * abs(base),
        "memory": th.memory_rel * abs(base),
        "fid": th.fid_abs,
        "kid": th.kid_abs,
        "is": th.is_abs,
        "info": math.inf,
    }[metric.gate]


def judge(metric: Column, base: float, new: float, th: CompareConfig) -> tuple[str, float]:
    """(verdict, allowed worsening) for one metric of one row."""
    nan_a, nan_b = _isnan(base), _isnan(new)
    if nan_a and nan_b:
        return "n/a", math.nan
    allowed = _allowed(metric, base, th)
    if nan_a != nan_b:
        return ("info" if metric.gate == "info" else "REGRESSED"), allowed
    if metric.gate == "exact":
        return ("ok" if base == new else "REGRESSED"), 0.0
    worse = (new - base) * metric.worse
    if metric.gate == "info":
        return "info", allowed
    if worse > allowed:
        return "REGRESSED", allowed
    return ("improved" if worse < -allowed else "ok"), allowed


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _keys(table: pd.DataFrame) -> list[tuple[str, str, int]]:
    return sorted(map(tuple, table[KEY].values.tolist()))


def compare(base: Run, new: Run, th: CompareConfig) -> tuple[pd.DataFrame, bool]:
    """One row per (sampler, metric) present in both; and whether anything regressed."""
    for column in ("dataset", "extractors"):
        _same(base.results, new.results, column)
    merged = base.results.merge(new.results, on=KEY, suffixes=("_base", "_new"))
    if merged.empty:
        raise CompareError(
            f"no common (method, variant, replicate) rows: baseline {_keys(base.results)}, "
            f"new {_keys(new.results)}"
        )
    lost = set(_keys(base.results)) - set(_keys(merged))
    out = []
    for _, r in merged.iterrows():
        for m in METRICS:
            cb, cn = f"{m.name}_base", f"{m.name}_new"
            if cb not in merged.columns and cn not in merged.columns:
                continue
            b = float(r[cb]) if cb in merged.columns and not _isnan(r[cb]) else math.nan
            n = float(r[cn]) if cn in merged.columns and not _isnan(r[cn]) else math.nan
            verdict, allowed = judge(m, b, n, th)
            if verdict == "n/a":
                continue
            change = (n - b) / abs(b) if b != 0 and not _isnan(b) else math.nan
            out.append(
                {
                    "method": r["method"],
                    "variant": r["variant"],
                    "replicate": r["replicate"],
                    "metric": m.name,
                    "kind": m.gate,
                    "baseline": b,
                    "new": n,
                    "change": change,
                    "allowed": allowed,
                    "verdict": verdict,
                }
            )
    for method, variant, replicate in sorted(lost):
        out.append(
            {
                "method": method,
                "variant": variant,
                "replicate": replicate,
                "metric": "(row)",
                "kind": "exact",
                "baseline": math.nan,
                "new": math.nan,
                "change": math.nan,
                "allowed": 0.0,
                "verdict": "REGRESSED",  # a sampler the baseline had is gone
            }
        )
    table = pd.DataFrame(out)
    return table, bool((table.verdict == "REGRESSED").any())


def render(table: pd.DataFrame, base: Run, new: Run, th: CompareConfig) -> str:
    def num(x: float) -> str:
        if _isnan(x):
            return ""
        if math.isinf(x):
            return "-"
        return f"{x:.4g}"

    several = table["replicate"].nunique() > 1 if "replicate" in table else False
    rows = [
        [
            (r.method if r.variant in ("default", "-") else f"{r.method} ({r.variant})")
            + (f" r{r.replicate}" if several else ""),
            r.metric,
            r.kind,
            num(r.baseline),
            num(r.new),
            "" if _isnan(r.change) else f"{r.change:+.1%}",
            num(r.allowed),
            r.verdict,
        ]
        for r in table.itertuples()
    ]
    regressed = table[table.verdict == "REGRESSED"]
    head = [
        f"# flowbench compare: `{base.source}` -> `{new.source}`",
        "",
        f"Thresholds (ratios to the calibration workload): latency +{th.latency_rel:.0%}, "
        f"time per throughput batch +{th.throughput_rel:.0%}; memory "
        f"+{th.memory_rel:.0%}, FID +{th.fid_abs}, KID +{th.kid_abs}, IS -{th.is_abs}; counts "
        "exact. `allowed` is the worsening tolerated, in the metric's units.",
        "",
        tabulate(
            rows,
            ["sampler", "metric", "kind", "baseline", "new", "change", "allowed", "verdict"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]
    if len(regressed):
        names = ", ".join(f"{r.method}: {r.metric}" for r in regressed.itertuples())
        head.append(f"**REGRESSED** ({len(regressed)}): {names}")
    else:
        head.append("No regression.")
    return "\n".join(head) + "\n"
