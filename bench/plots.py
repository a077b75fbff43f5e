"""Figures of a run, drawn from its folder's tables into it (matplotlib, no display needed).

``write_figures(run_dir)`` draws every figure report.md links; report.write only links them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.runfolder import Run, entry_names, load_run  # noqa: E402
from methods import label  # noqa: E402
from methods.atomic import atomic_write  # noqa: E402

FIGURES = {  # what write_figures draws into the run folder: alt text in report.md
    "speedup_vs_batch.png": "speedup against batch size",
    "quality_vs_time.png": "quality against time per image",
}
CURVES = "curves.png"  # drawn beside them when the run scored curves (curves.csv)


def write_figures(run: Run | Path, missing_only: bool = False) -> list[Path]:
    """Draw the run's figures into its folder and return their paths: none without a
    sweep.csv. ``run``: a finished run folder (read by bench.runfolder.load_run, so an
    unfinished one raises IncompleteRunError) or a run already read. ``missing_only``: keep the
    figures already there (``bench report`` on an old folder draws only what it lacks)."""
    run = run if isinstance(run, Run) else load_run(run)
    if run.sweep.empty:
        return []
    table = run.results.assign(method=entry_names(run.results))  # named as the sweep names them
    draw = {
        "speedup_vs_batch.png": lambda path: speedup_curve(run.sweep, path),
        "quality_vs_time.png": lambda path: quality_vs_time(run.sweep, table, path),
    }
    paths = []
    for name in FIGURES:
        path = run.dir / name
        if not (missing_only and path.is_file()):
            draw[name](path)
        paths.append(path)
    curves = read_curves(run.dir)
    if curves is not None and not (missing_only and (run.dir / CURVES).is_file()):
        real = run.results.loc[run.results.method == "anchor: held-out real", "fid_domain"]
        paths.append(curves_figure(*curves, real.mean() if len(real) else None, run.dir / CURVES))
    return paths


def _save(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def speedup_curve(sweep: pd.DataFrame, path: Path) -> Path:
    """Speedup over causal decoding against batch size, one line per sampler."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for method, g in sweep.groupby("method", sort=False):
        g = g.sort_values("batch")
        ax.plot(g["batch"], g["speedup_vs_tarflow"], marker="o", label=label(method))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("batch size")
    ax.set_ylabel("speedup over causal decoding")
    return _save(fig, ax, path)


def quality_vs_time(sweep: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """FID against wall time per image: one point per sampler and batch size."""
    fid = table.set_index("method")["fid_domain"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for method, g in sweep.groupby("method", sort=False):
        g = g.sort_values("batch")
        ax.plot(g["ms_per_img"], [fid[method]] * len(g), marker="o", label=label(method))
        for _, r in g.iterrows():
            ax.annotate(
                f"b={r['batch']}",
                (r["ms_per_img"], fid[method]),
                fontsize=6,
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
            )
    real = table.loc[table.method == "anchor: held-out real", "fid_domain"]
    if len(real):
        ax.axhline(real.iloc[0], color="grey", lw=0.8, ls=":", label="held-out real (floor)")
    ax.set_xscale("log")
    ax.set_xlabel("wall time per image (ms, log)")
    ax.set_ylabel("FID (domain features)")
    return _save(fig, ax, path)


def read_curves(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The run's curve points (curves.csv) and its models' loss histories (curve_loss.csv, with
    each row's replicate), or None for a run that scored no curves."""
    from bench.curves import FILE, LOSS_FILE

    if not (run_dir / FILE).is_file():
        return None
    points = pd.read_csv(run_dir / FILE)
    loss = pd.read_csv(run_dir / LOSS_FILE) if (run_dir / LOSS_FILE).is_file() else pd.DataFrame()
    if len(loss) and "replicate" not in loss:
        replicate = points.drop_duplicates("key").set_index("key")["replicate"]
        loss = loss.assign(replicate=loss["key"].map(replicate))
    return points, loss


AXES = (  # curves.png's x-axes: column, label, scale
    ("train_steps", "training steps (BiFlow: its flow's and its own)", 1.0),
    ("train_s", "training wall time (min)", 1 / 60),
    ("train_flops", "training FLOPs (forward + backward)", 1.0),
)


def curves_figure(points: pd.DataFrame, loss: pd.DataFrame, real: float | None, path: Path) -> Path:
    """FID (domain) against training steps, wall time and FLOPs, one line per sampler and
    weights (moving average solid, raw dashed), mean over replicates; and the training loss of
    each model against its own steps."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=110)
    mean = points.groupby(["method", "weights", "step"], sort=False).mean(numeric_only=True)
    colours = {}
    for ax, (col, name, scale) in zip(axes.flat, AXES, strict=False):
        for (method, weights), g in mean.groupby(level=["method", "weights"], sort=False):
            colour = colours.setdefault(method, f"C{len(colours)}")
            style = "--" if weights == "raw" else "-"
            ax.plot(
                g[col] * scale,
                g["fid_domain"],
                style,
                marker="o",
                ms=3,
                color=colour,
                label=f"{label(method)} ({weights})",
            )
        if real is not None:
            ax.axhline(real, color="grey", lw=0.8, ls=":", label="held-out real (floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("FID (domain features)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    _loss_panel(axes[1, 1], loss)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _loss_panel(ax: plt.Axes, loss: pd.DataFrame) -> None:
    """Each model's training loss against its own steps, mean over replicates; the second
    model (BiFlow's G, a distance) on the right-hand axis, the flow's (an NLL) on the left."""
    ax.set_xlabel("training steps of the model itself")
    ax.set_title("training loss (mean over replicates)", fontsize=9)
    if loss.empty:
        return
    runs = loss.drop_duplicates(["model", "replicate", "step"])
    axis = ax
    for i, (model, g) in enumerate(runs.groupby("model", sort=False)):
        if i:
            axis = ax.twinx()
        g = g.groupby("step")["loss"].mean()
        axis.plot(g.index, g.values, color=f"C{i + 3}", lw=0.8, label=model)
        axis.set_ylabel(f"{model} loss", color=f"C{i + 3}")
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
