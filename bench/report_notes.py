"""The notes of a report: timings not to be trusted, marked and listed; what a reader needs to
read BiFlow's and guided rows as the paper's; where the decode's time goes against a forward
pass."""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate

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


def _breakdown(profiled: dict | None) -> list[str]:
    """The decode/forward time by operator group (one profiled run each), as report lines."""
    if not profiled:
        return []
    dec, fwd = profiled["decode"], profiled["forward"]
    rows = [[group, f"{dec[group]:.0f}", f"{fwd[group]:.0f}"] for group in dec]
    lin, att, rest, out = "linear layers", "attention", "other operators", "outside operators"
    return [
        f"Where the time goes, from one run of each under torch.profiler (operators' own CPU "
        f"time; outside operators: the Python and dispatch between them, plus the profiler's "
        f"own cost, which grows with the number of operators). The linear layers, most of the "
        f"arithmetic, take {dec[lin]:.0f} ms in the decode and {fwd[lin]:.0f} ms in the "
        f"forward pass ({dec[lin] / fwd[lin]:.2f}x); attention {dec[att]:.0f} against "
        f"{fwd[att]:.0f} ms (one query a step, re-reading every cached key and value); other "
        f"operators {dec[rest]:.0f} against {fwd[rest]:.0f} ms; outside operators "
        f"{dec[out]:.0f} against {fwd[out]:.0f} ms (many small steps against one pass).",
        "",
        tabulate(rows, ["ms (profiled)", "decode", "forward"], tablefmt="github"),
        "",
    ]


def _batch_one(b1: dict | None) -> str:
    if not b1:
        return ""
    return (
        f" At batch 1 the decode takes {b1['decode_s'] * 1e3:.1f} ms and the forward pass "
        f"{b1['forward_s'] * 1e3:.2f} ms, **{b1['ratio']:.0f}x**: there the decode's time is "
        "the overhead of its sequential steps, not arithmetic."
    )


def decode_vs_forward(dvf: dict | None) -> list[str]:
    if not dvf:
        return []
    return [
        "## Is causal decoding a fair baseline?",
        "",
        f"At batch {dvf['batch']}, one full causal decode takes {dvf['decode_s'] * 1e3:.0f} ms"
        f" and one parallel forward pass of the same flow {dvf['forward_s'] * 1e3:.0f} ms: "
        f"a ratio of **{dvf['ratio']:.2f}x** (the median of the paired repeats' ratios; "
        f"spreads {dvf['decode_spread']:.0%} and {dvf['forward_spread']:.0%}). With the "
        f"key/value cache both do the same arithmetic; the ratio is the price of doing it one "
        f"token at a time: every step multiplies {dvf['batch']}-row matrices and re-reads "
        f"the cached keys and values."
        + (f" The decode attended with {dvf['attention']}." if "attention" in dvf else "")
        + _batch_one(dvf.get("batch1")),
        "",
        *_breakdown(dvf.get("profile_ms")),
    ]
