"""report.md's section on quality along training (a run that scored curves: bench.curves).

Every number is a mean over the run's replicates, with the spread (max - min) beside it where
there are several. The gap paragraph compares BiFlow with each TarFlow sampler at equal steps of
each one's own training (BiFlow's G at step s, against its fully trained flow, with the flow at
step s), and says whether the ratio of FIDs moved by more than its spread between seeds.
"""

from __future__ import annotations

import pandas as pd

from bench.plots import CURVES, read_curves
from bench.runfolder import Run
from methods import label

THRESHOLDS = (50.0, 20.0, 10.0, 5.0, 3.0, 2.0)  # FIDs (domain) whose training cost is reported
REVERSE, FLOWS = "biflow", ("tarflow", "tarflow_score")


def section(run: Run, links: str = "") -> list[str]:
    """The section's lines (none for a run without curves)."""
    curves = read_curves(run.dir) if run.dir is not None else None
    if curves is None:
        return []
    points = curves[0]
    sampled = points[points.weights != "raw"]
    return [
        "## Quality along training",
        "",
        "Each sampler scored with the weights its training saved at chosen steps, on the seeds "
        "of the main table (its last point is the main table's row). BiFlow's training steps, "
        "seconds and FLOPs include its flow's full training before its own. Weights sampled: "
        + _weights(points)
        + " Wall time is this machine's, inflated by anything else it ran; steps and FLOPs are "
        "not. Means over "
        f"{points.replicate.nunique()} replicate(s).",
        "",
        f"![quality along training]({links}{CURVES})",
        "",
        "### FID (domain) at each saved step of the sampler's own model",
        "",
        _steps_table(points),
        "",
        "### The last point",
        "",
        _final_table(points),
        "",
        "### Training cost to reach a FID (domain; first saved point at or below it)",
        "",
        _cost_table(sampled),
        "",
        *_gap(sampled),
    ]


def _spread(values: pd.Series, fmt: str = "{:.2f}") -> str:
    """Mean, and ``± half the range`` over replicates when there are several."""
    text = fmt.format(values.mean())
    return text + (f" ± {fmt.format((values.max() - values.min()) / 2)}" if len(values) > 1 else "")


def _weights(points: pd.DataFrame) -> str:
    """Which weights each sampler's curve samples: a moving average (and its decay) or the last."""
    decay = points.drop_duplicates("method").set_index("method")["ema_decay"]
    said = "; ".join(
        f"{label(m)}: " + (f"a moving average with decay {d:g}" if d else "the last ones")
        for m, d in decay.items()
    )
    raw = " (solid in the figure; the raw weights dashed, domain extractor only)."
    return said + (raw if decay.any() else ".")


def _steps_table(points: pd.DataFrame) -> str:
    wide = points.pivot_table(
        index="step", columns=["method", "weights"], values="fid_domain", aggfunc="mean"
    )
    order = list(dict.fromkeys(zip(points.method, points.weights, strict=True)))
    wide = wide[order].map(lambda v: f"{v:.2f}" if pd.notna(v) else "")
    wide.columns = [f"{label(m)} ({w})" for m, w in wide.columns]
    return wide.reset_index().to_markdown(index=False)


def _last(points: pd.DataFrame) -> pd.DataFrame:
    """Each sampler's rows at its last saved step (the main table's weights)."""
    return points[points.step == points.groupby("method").step.transform("max")]


def _final_table(points: pd.DataFrame) -> str:
    rows = []
    for (method, weights), g in _last(points).groupby(["method", "weights"], sort=False):
        row = {
            "sampler": label(method),
            "weights": weights,
            "seeds": len(g),
            "FID domain": _spread(g.fid_domain),
            "KID domain": _spread(g.kid_domain, "{:.4f}"),
            "precision": _spread(g.precision_domain),
            "recall": _spread(g.recall_domain),
        }
        if "fid_inception_offline" in g and g.fid_inception_offline.notna().any():
            row["FID inception_offline"] = _spread(g.fid_inception_offline.dropna(), "{:.1f}")
        row |= {
            "training steps": int(g.train_steps.iloc[0]),
            "training min": f"{g.train_s.mean() / 60:.1f}",
            "training TFLOP": _tflop(g.train_flops.iloc[0]),
        }
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def _tflop(flops: float) -> str:
    return f"{flops / 1e12:.3g}"


def reached(sampled: pd.DataFrame, fid: float) -> pd.DataFrame:
    """Per sampler, its first point (mean over replicates) at FID (domain) <= ``fid``."""
    mean = sampled.groupby(["method", "step"], sort=False).mean(numeric_only=True).reset_index()
    hit = mean[mean.fid_domain <= fid]
    return hit.sort_values("train_steps").groupby("method", sort=False).head(1)


def _cost_table(sampled: pd.DataFrame) -> str:
    rows = []
    for fid in THRESHOLDS:
        hit = reached(sampled, fid).set_index("method")
        row = {"FID <=": fid}
        for method in sampled.method.unique():
            row[label(method)] = (
                f"{int(hit.train_steps[method])} steps, {hit.train_s[method] / 60:.1f} min, "
                f"{_tflop(hit.train_flops[method])} TFLOP"
                if method in hit.index
                else "not reached"
            )
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def _gap(sampled: pd.DataFrame) -> list[str]:
    """Whether BiFlow's FID ratio to each TarFlow sampler closes, widens or stays along
    training, at equal steps of each one's own model."""
    if REVERSE not in set(sampled.method):
        return []
    lines = ["### BiFlow's gap along training", ""]
    fid = sampled.pivot_table(index=["step", "replicate"], columns="method", values="fid_domain")
    for flow in (f for f in FLOWS if f in fid):
        ratio = (fid[REVERSE] / fid[flow]).dropna()
        if ratio.empty:
            continue
        by_step = ratio.groupby(level="step")
        means = by_step.mean()
        (s0, s1), (first, last) = means.index[[0, -1]], means.iloc[[0, -1]]
        spread = max(by_step.max().iloc[[0, -1]] - by_step.min().iloc[[0, -1]])
        seeded = by_step.size().iloc[[0, -1]].min() >= 2
        if not seeded:
            verdict = "cannot be told from one seed (no spread to read the change against)"
        elif last < first - spread:
            verdict = "closes"
        elif last > first + spread:
            verdict = "widens"
        else:
            verdict = "stays (the change is within the spread between seeds)"
        end = _last(sampled).groupby("method").fid_domain.mean()
        lines += [
            f"- Against {label(flow)}: BiFlow's FID is {first:.2f}x its FID at step {s0} of each "
            f"one's own training and {last:.2f}x at step {s1}"
            + (f" (largest spread between seeds at either end: {spread:.2f})" if seeded else "")
            + f": the gap **{verdict}**. Last point against last point: "
            f"{end[REVERSE] / end[flow]:.2f}x.",
        ]
    return [*lines, ""]
