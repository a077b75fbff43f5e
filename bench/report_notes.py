"""The notes under a report's main table: timings not to be trusted, marked and listed, and
what a reader needs to read BiFlow's and guided rows as the paper's."""

from __future__ import annotations

import pandas as pd

from bench import trust
from bench.columns import view

# a timing column -> the trust column that says whether it holds
FLAGGED = {
    "latency_ms_b1": "latency_b1_trust",
    "throughput_img_s": "throughput_trust",
    "speedup_b1": "speedup_b1_trust",
    "speedup_tput": "speedup_tput_trust",
}


def marked(table: pd.DataFrame) -> pd.DataFrame:
    """The main table with every timing or speedup that is not trusted shown with a warning
    sign, as text, so it can never pass for a finding."""
    out = table.copy()
    for col, trust_col in FLAGGED.items():
        if col not in out or trust_col not in out:
            continue
        bad = out[trust_col].notna() & (out[trust_col] != "ok") & out[col].notna()
        if bad.any():
            out[col] = out[col].astype(object)
            out.loc[bad, col] = [f"{view(col).cell(v)} ⚠" for v in out.loc[bad, col]]
    return out


def timing_warnings(table: pd.DataFrame, slowdown: str = "") -> list[str]:
    lines = trust.warnings(table)
    if slowdown:
        lines.insert(0, f"- samplers slowed on purpose (FLOWBENCH_SLOWDOWN={slowdown})")
    if not lines:
        return []
    return [
        f"**Timing warnings** ({len(lines)}): these timings (⚠ above) were measured on a busy "
        "or noisy machine, or contradict what is known about the samplers; read no finding "
        "from them (bench.trust says how each is judged).",
        "",
        *lines,
        "",
    ]


def method_notes(cfg: dict, samplers: pd.DataFrame) -> list[str]:
    """What a reader must know to read the rows as the paper's: the perceptual network of any
    BiFlow feature loss, and how guided rows were guided."""
    out = []
    nets = sorted(set(samplers.get("feature_loss", pd.Series(dtype=str)).dropna()) - {"off", "-"})
    if nets:
        out.append(
            f"BiFlow's perceptual loss: {', '.join(nets)} (the independent CNN is trained here on "
            "the training split and is never the network that scores FID; the paper's LPIPS "
            "and ConvNeXt need weights that are not available offline)."
        )
    guided = pd.to_numeric(samplers.get("guidance", pd.Series(dtype=float)), errors="coerce")
    if (guided > 0).any():
        s = cfg.get("sampling", {})
        out.append(
            f"Guidance: TarFlow's scale is {s.get('guidance_schedule', 'constant')} over the "
            f"tokens and a score step after guided sampling goes through the "
            f"{s.get('score_guidance', 'conditional')} model, unless a variant overrides them "
            "(results.csv's `guidance_form` says how each row guided)."
        )
    return [" ".join(out), ""] if out else []
