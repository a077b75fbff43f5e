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

Exit codes: 0 nothing regressed, 1 something did, 2 the inputs cannot be compared: among them
a gated metric the baseline measured and the new run has no column for, and a gated column
holding something other than a number.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench import config_file, gate_stats, runfolder
from bench.columns import GATED, Column
from bench.config import CompareConfig, ConfigError, parse_section
from bench.runfolder import ROW_KEY, Run

METRICS: tuple[Column, ...] = GATED  # what is judged, each by its column's gate
TIMED = ("latency", "throughput")  # gates decided by the test over raw repeats where they exist
KEY = list(ROW_KEY)


class CompareError(ValueError):
    """The two inputs cannot be compared; the message says why."""


def load_results(path: Path) -> Run:
    """A finished run folder or a bare results .csv/.parquet, through the one run reader."""
    return runfolder.load_results(path, need=("dataset", "extractors"))


def thresholds(results: Run, overrides: list[str] = ()) -> CompareConfig:
    """The new run's ``compare`` section (defaults for a bare file), then ``--set`` overrides."""
    section = (results.config or {}).get("compare") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{results.source}: its config's compare section is not a mapping")
    raw = dict(section)
    for assignment in overrides:
        key, _, text = assignment.partition("=")
        key = key.strip().removeprefix("compare.")
        if not text or "." in key:
            raise ConfigError(f"--set {assignment!r}: expected compare.<field>=<number>")
        raw[key] = config_file.parse(text, f"--set compare.{key}")
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


def _numbers(run: Run) -> None:
    """Every gated column of ``run`` holds numbers (or nothing), else a CompareError naming the
    column and the row."""
    table = run.results
    for m in METRICS:
        if m.name not in table.columns:
            continue
        bad = table[m.name].notna() & pd.to_numeric(table[m.name], errors="coerce").isna()
        if bad.any():
            row = table[bad].iloc[0]
            key = ", ".join(str(row[k]) for k in KEY)
            more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
            raise CompareError(
                f"{_file(run)}: column {m.name!r} holds {row[m.name]!r}, not a number, in row "
                f"({key}){more}"
            )


def _lacking(base: Run, new: Run) -> None:
    """A gated metric the baseline measured (a column with a value) and the new run has no
    column for fails the comparison: the gate cannot pass on a number it never saw."""
    lacking = [
        m.name
        for m in METRICS
        if m.name in base.results.columns
        and base.results[m.name].notna().any()
        and m.name not in new.results.columns
    ]
    if lacking:
        raise CompareError(
            f"{_file(new)}: no column {', '.join(map(repr, lacking))}, which the baseline "
            f"{_file(base)} measured; the new run cannot be judged on them"
        )


def _file(run: Run) -> Path:
    return run.dir / "results.csv" if run.dir is not None else run.source


def compare(base: Run, new: Run, th: CompareConfig) -> tuple[pd.DataFrame, bool]:
    """One row per (sampler, metric) present in both; and whether anything regressed."""
    for run in (base, new):
        _numbers(run)
    _lacking(base, new)
    for column in ("dataset", "extractors"):
        _same(base.results, new.results, column)
    merged = base.results.merge(new.results, on=KEY, suffixes=("_base", "_new"))
    if merged.empty:
        raise CompareError(
            f"no common (method, variant, replicate) rows: baseline {_keys(base.results)}, "
            f"new {_keys(new.results)}"
        )
    lost = set(_keys(base.results)) - set(_keys(merged))
    ratios_base, ratios_new = gate_stats.round_ratios(base), gate_stats.round_ratios(new)
    out = []
    for _, r in merged.iterrows():
        for m in METRICS:
            # Only columns in both tables get the suffixes: one the baseline lacks is new.
            cb, cn = f"{m.name}_base", f"{m.name}_new"
            if cb not in merged.columns:
                continue
            b = math.nan if _isnan(r[cb]) else float(r[cb])
            n = math.nan if _isnan(r[cn]) else float(r[cn])
            verdict, allowed = judge(m, b, n, th)
            if verdict == "n/a":
                continue
            change = (n - b) / abs(b) if b != 0 and not _isnan(b) else math.nan
            key = (r["method"], r["variant"], r["replicate"], m.name)
            stats: dict = {"test": "margin on the median"} if m.gate in TIMED else {}
            if m.gate in TIMED and key in ratios_base and key in ratios_new:
                t = gate_stats.test(ratios_base[key], ratios_new[key])
                verdict = t.verdict(allowed / abs(b) if b else 0.0, th.alpha)
                change = t.estimate
                stats = {
                    "test": f"U test, {t.n_base} vs {t.n_new} rounds",
                    "interval": f"[{t.low:+.1%}, {t.high:+.1%}]",
                    "p": t.p_worse,
                }
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
                    **stats,
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


def _text(x: object) -> str:
    return "" if not isinstance(x, str) else x


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
            _text(getattr(r, "interval", "")),
            "" if _isnan(getattr(r, "p", math.nan)) else f"{r.p:.2g}",
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
        "exact. `allowed` is the worsening tolerated, in the metric's units. Timings of two run "
        "folders that kept their repeats are judged by a one-sided Mann-Whitney U test over the "
        "per-round ratios to the calibration workload: regressed when p < "
        f"{th.alpha:g} and the ratio of medians grew by more than the threshold (its change "
        "and bootstrap 95% interval shown); otherwise by the threshold on the median.",
        "",
        tabulate(
            rows,
            [
                "sampler",
                "metric",
                "kind",
                "baseline",
                "new",
                "change",
                "allowed",
                "95% interval",
                "p (worse)",
                "verdict",
            ],
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
