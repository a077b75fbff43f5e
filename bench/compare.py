"""`bench compare BASELINE NEW`: every metric of two runs side by side, with a verdict.

Rows are matched by (method, variant, replicate). Each metric has a kind that decides how it is
judged:

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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from tabulate import tabulate

from bench.config import CompareConfig, ConfigError, parse_section


class CompareError(ValueError):
    """The two inputs cannot be compared; the message says why."""


@dataclass(frozen=True)
class Metric:
    column: str
    kind: str  # exact, latency, throughput, memory, fid, kid, is, info
    worse: int  # +1: higher is worse, -1: lower is worse, 0: any change


METRICS = [
    Metric("nfe", "exact", 0),
    Metric("sequential_steps", "exact", 0),
    Metric("flops_per_img", "exact", 0),
    Metric("params", "exact", 0),
    Metric("nonfinite", "exact", 0),
    Metric("latency_b1_vs_cal", "latency", +1),
    Metric("tput_time_vs_cal", "throughput", +1),
    Metric("latency_ms_b1", "info", +1),
    Metric("throughput_img_s", "info", -1),
    Metric("peak_mem_mb", "memory", +1),
    Metric("fid_domain", "fid", +1),
    Metric("kid_domain", "kid", +1),
    Metric("is_domain", "is", -1),
    Metric("fid_inception_offline", "fid", +1),
    Metric("kid_inception_offline", "kid", +1),
    Metric("fid_inception", "fid", +1),
    Metric("kid_inception", "kid", +1),
    Metric("is_inception", "is", -1),
]
KEY = ["method", "variant", "replicate"]  # tables from before replicates: replicate 0


@dataclass(frozen=True)
class Results:
    table: pd.DataFrame
    source: Path
    config: dict | None  # the run's resolved config, when the input is a run folder


def load_results(path: Path) -> Results:
    """A run folder (results.csv + run.json; must be complete) or a results .csv/.parquet."""
    path = Path(path)
    config = None
    if path.is_dir():
        info_path = path / "run.json"
        if not info_path.is_file() or not (path / "results.csv").is_file():
            raise CompareError(f"{path}: not a run folder (no results.csv and run.json)")
        try:
            info = json.loads(info_path.read_text())
        except ValueError as e:
            raise CompareError(f"{info_path}: unreadable ({e})") from None
        if info.get("status") != "complete":
            raise CompareError(f"{path}: the run is not complete (status {info.get('status')!r})")
        config, file = info.get("config"), path / "results.csv"
    elif path.is_file():
        file = path
    else:
        raise CompareError(f"{path}: no such file or run folder")
    try:
        if file.suffix == ".parquet":
            table = pd.read_parquet(file)
        elif file.suffix == ".csv":
            table = pd.read_csv(file)
        else:
            raise CompareError(f"{file}: expected a run folder, a .csv or a .parquet file")
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise CompareError(f"{file}: unreadable results table ({str(e)[:200]})") from None
    if "replicate" not in table.columns:
        table["replicate"] = 0
    missing = [c for c in (*KEY, "dataset", "extractors") if c not in table.columns]
    if missing:
        raise CompareError(f"{file}: not a flowbench results table (no column {missing[0]!r})")
    if table.duplicated(KEY).any():
        raise CompareError(f"{file}: more than one row for the same (method, variant, replicate)")
    return Results(table, path, config)


def thresholds(results: Results, overrides: list[str] = ()) -> CompareConfig:
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


def _allowed(metric: Metric, base: float, th: CompareConfig) -> float:
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
    }[metric.kind]


def judge(metric: Metric, base: float, new: float, th: CompareConfig) -> tuple[str, float]:
    """(verdict, allowed worsening) for one metric of one row."""
    nan_a, nan_b = _isnan(base), _isnan(new)
    if nan_a and nan_b:
        return "n/a", math.nan
    allowed = _allowed(metric, base, th)
    if nan_a != nan_b:
        return ("info" if metric.kind == "info" else "REGRESSED"), allowed
    if metric.kind == "exact":
        return ("ok" if base == new else "REGRESSED"), 0.0
    worse = (new - base) * metric.worse
    if metric.kind == "info":
        return "info", allowed
    if worse > allowed:
        return "REGRESSED", allowed
    return ("improved" if worse < -allowed else "ok"), allowed


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _keys(table: pd.DataFrame) -> list[tuple[str, str, int]]:
    return sorted(map(tuple, table[KEY].values.tolist()))


def compare(base: Results, new: Results, th: CompareConfig) -> tuple[pd.DataFrame, bool]:
    """One row per (sampler, metric) present in both; and whether anything regressed."""
    for column in ("dataset", "extractors"):
        _same(base.table, new.table, column)
    merged = base.table.merge(new.table, on=KEY, suffixes=("_base", "_new"))
    if merged.empty:
        raise CompareError(
            f"no common (method, variant, replicate) rows: baseline {_keys(base.table)}, "
            f"new {_keys(new.table)}"
        )
    lost = set(_keys(base.table)) - set(_keys(merged))
    out = []
    for _, r in merged.iterrows():
        for m in METRICS:
            cb, cn = f"{m.column}_base", f"{m.column}_new"
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
                    "metric": m.column,
                    "kind": m.kind,
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


def render(table: pd.DataFrame, base: Results, new: Results, th: CompareConfig) -> str:
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
