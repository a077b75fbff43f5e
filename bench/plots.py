"""Figures for the report, drawn from a run folder's tables (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from methods import label  # noqa: E402
from methods.atomic import atomic_write  # noqa: E402


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
