"""Whether a run's timings can be trusted, written beside them in results.

Each timing of the main table (batch-1 latency, throughput) carries a ``*_trust`` column:

- ``ok``; ``noisy`` (its repeats' interquartile range stayed above ``eval.timing_max_iqr`` of
  the median after more rounds); ``busy`` (the calibration workload, timed in the same rounds,
  got less than ``eval.timing_min_cpu_share`` of its cores in too many of them: another
  process had the machine). See bench.timing.Adapt.
- ``contradiction: ...`` when the numbers say what is known to be false: a sampler that runs
  another sampler's whole work and more (``Sampler.includes``) measured faster than it, beyond
  the noise of both; or a per-image time at the throughput batch above the per-image time at
  batch 1 beyond noise.

A speedup is only as good as the two timings it divides: ``speedup_b1_trust`` and
``speedup_tput_trust`` are ``ok`` or say which timing is not.
"""

from __future__ import annotations

import math

import pandas as pd

import methods
from bench.variants import Entry

NOISE_FLOOR = 0.05  # the least relative difference read as real, whatever the IQRs say


def contained(e: Entry, todo: list[Entry]) -> str:
    """The entry whose whole work ``e``'s sampler runs before its own extra step: of the method
    ``e``'s sampler includes, same replicate, same model sections and sampling; "" if none."""
    inner = methods.get(e.method).includes
    for c in todo:
        if c.method == inner and c.replicate == e.replicate:
            if c.cfg.sections == e.cfg.sections and c.cfg.sampling == e.cfg.sampling:
                return c.key
    return ""


def _tol(*iqrs: object) -> float:
    return max([NOISE_FLOOR, *(float(i) for i in iqrs if not pd.isna(i))])


def contradictions(table: pd.DataFrame, todo: list[Entry]) -> dict[tuple[str, str], str]:
    """(entry key, timing) -> what contradicts it."""
    rows = {r["key"]: r for r in table.to_dict("records") if isinstance(r.get("key"), str)}
    found: dict[tuple[str, str], str] = {}
    for e in todo:
        r = rows.get(e.key)
        if r is None:
            continue
        inner = rows.get(contained(e, todo))
        pairs = (
            ("latency_b1", "latency_ms_b1", "latency_iqr_b1"),
            ("throughput", "ms_per_img_tput", "throughput_iqr"),
        )
        for timing, col, iqr in pairs if inner is not None else ():
            tol = _tol(r.get(iqr), inner.get(iqr))
            if r[col] < inner[col] * (1 - tol):
                found[(e.key, timing)] = (
                    f"contradiction: {e.key} runs {inner['key']}'s work and more, yet measured "
                    f"{inner[col] / r[col]:.2f}x faster (noise allows {tol:.0%})"
                )
        tol = _tol(r.get("latency_iqr_b1"), r.get("throughput_iqr"))
        if r["ms_per_img_tput"] > r["latency_ms_b1"] * (1 + tol):
            found.setdefault(
                (e.key, "throughput"),
                f"contradiction: {r['ms_per_img_tput']:.3g} ms per image at batch "
                f"{r['throughput_batch']:.0f}, above {r['latency_ms_b1']:.3g} ms at batch 1 "
                f"(noise allows {tol:.0%})",
            )
    return found


def annotate(table: pd.DataFrame, todo: list[Entry], baselines: dict[str, str]) -> pd.DataFrame:
    """``table`` with contradictions written into the timings' trust columns, and the trust of
    each speedup."""
    if "latency_b1_trust" not in table.columns:
        return table
    table = table.copy()
    index = {k: i for i, k in table["key"].items() if isinstance(k, str)}
    for (key, timing), why in contradictions(table, todo).items():
        table.loc[index[key], f"{timing}_trust"] = why
    for timing, speedup in (("latency_b1", "speedup_b1"), ("throughput", "speedup_tput")):
        col = f"{timing}_trust"
        trust = dict(zip(table["key"], table[col], strict=True))

        def verdict(key: object, col: str = col, trust: dict = trust) -> object:
            base = baselines.get(key) if isinstance(key, str) else None
            if not base:
                return math.nan
            bad = [f"{k}: {trust[k]}" for k in (key, base) if trust.get(k) != "ok"]
            return "ok" if not bad else "unreliable (" + "; ".join(bad) + ")"

        table[f"{speedup}_trust"] = table["key"].map(verdict)
    return table


def warnings(table: pd.DataFrame) -> list[str]:
    """One line per timing or speedup that is not ``ok``, naming the sampler and what."""
    out = []
    cols = [c for c in table.columns if c.endswith("_trust")]
    for r in table.to_dict("records"):
        for c in cols:
            v = r.get(c)
            if isinstance(v, str) and v != "ok":
                out.append(f"- `{r['key']}`, {c.removesuffix('_trust').replace('_', ' ')}: {v}")
    return out
