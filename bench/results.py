"""The results of a run: one row per entry (and anchor) with every measured figure, written as
results.csv/.parquet beside the timing sweep, after which run.json says "complete"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

from bench import curves, trust
from bench.flops import peak_of
from bench.rundir import write_json
from methods import atomic, faults

if TYPE_CHECKING:
    from bench.runner import Run


def write_results(r: Run) -> None:
    """One row per entry (and anchor) with every measured figure: results.csv/.parquet, the
    timing sweep: sweep.csv, and every timed repeat: timing_repeats.csv; then run.json says
    "complete"."""
    table, unavailable = table_of(r)
    atomic.atomic_write(r.dir / "results.csv", lambda p: table.to_csv(p, index=False))
    faults.point("write:results")
    sweep = pd.DataFrame(r.out["timing"]["sweep"])
    atomic.atomic_write(r.dir / "sweep.csv", lambda p: sweep.to_csv(p, index=False))
    repeats = pd.DataFrame(r.out["timing"].get("repeats", []))
    atomic.atomic_write(r.dir / "timing_repeats.csv", lambda p: repeats.to_csv(p, index=False))
    atomic.atomic_write(r.dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    curves.write(r)
    r.info.update(
        status="complete",
        finished=datetime.now(UTC).isoformat(),
        models=r.parts.get("models"),
        unavailable_metrics=unavailable,
        **r.out["likelihood"],
    )
    write_json(r.dir / "run.json", r.info)


def table_of(r: Run) -> tuple[pd.DataFrame, dict[str, str]]:
    timings, fl, mem = r.out["timing"]["main"], r.out["flops"], r.out.get("memory", {})
    r.info["matmul_peak_gflop_s"] = fl["matmul_peak"] / 1e9
    r.info["matmul_peak_bf16_gflop_s"] = peak_of(fl, "bf16") / 1e9
    precision = {e.key: e.cfg.sampling.precision for e in r.todo}
    rows = [dict(row) for row in r.out["score"].values()]
    for row in rows:
        n = row["key"]
        achieved = fl["per_img"][n] * timings[n]["throughput_img_s"]
        row.update(
            flops_per_img=fl["per_img"][n],
            achieved_gflop_s=achieved / 1e9,
            peak_precision=precision[n],  # the peak below is of the precision it ran in
            peak_fraction=achieved / peak_of(fl, precision[n]),
        )
        row.update(timings[n])
        row.update(mem.get(n, {}))
        if r.compile_s:
            row["compile_s"] = r.compile_s[n]
    rows += [dict(a) for rows_r in r.out["anchors"].values() for a in rows_r]
    unavailable: dict[str, str] = {}
    for row in rows:
        unavailable |= row.pop("unavailable", {})
    table = pd.DataFrame(rows)
    baselines = r.baselines
    if any(baselines.values()):
        base = table["key"].map(baselines)  # anchors: NaN
        lat = {row["key"]: row["latency_ms_b1"] for row in rows if "key" in row}
        thr = {row["key"]: row["throughput_img_s"] for row in rows if "key" in row}
        table["speedup_vs"] = base
        table["speedup_b1"] = base.map(lat) / table["latency_ms_b1"]
        table["speedup_tput"] = table["throughput_img_s"] / base.map(thr)
    return trust.annotate(table, r.todo, baselines), unavailable
