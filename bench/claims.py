"""The claims ``bench tables`` tests: the paper's FID orderings and its one-factor ablations,
each gap read against the run-to-run spread (rows as aggregated by bench.tables)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from methods.base import Factors

FACTORS = Factors.names()

ABLATED = ("norm_control", "feature_loss", "weighting")
OFF = {"norm_control": "off", "feature_loss": "off", "weighting": "fixed"}  # "without" it
NA = "-"  # a factor that does not apply to a sampler (weighting of TarFlow) matches any value
REVERSE_ORDER = ("aligned", "naive", "exact", "distilled")  # the paper's, lowest FID first
DENOISE_ORDER = ("learned", "score", "none")
GAP = "Gap: FID of the row expected worse minus FID of the one expected better (+: as claimed)."
SPREAD = (
    "Spread: the larger of the two rows' sample standard deviations of FID over replicates "
    "(ddof=1); a gap no larger than the spread is not resolved."
)

Row = Mapping[str, object]


def differing(a: Row, b: Row) -> list[str]:
    """The factors two rows differ in (one that does not apply to either matches any value)."""
    return [f for f in FACTORS if a[f] != b[f] and NA not in (a[f], b[f])]


def row_name(r: Row) -> str:
    """A row's name in sentences: its variant, or its method for the "default" variant."""
    return str(r["method"] if r["variant"] in ("default", "-") else r["variant"])


def _f(value: object, fmt: str) -> str:
    return "" if value is None or pd.isna(value) else fmt.format(value)


def pm(r: Row, column: str, fmt: str = "{:.2f}") -> str:
    """``mean ± std``; the spread is ``n/a`` with one replicate."""
    mean, std = r[f"{column}_mean"], r[f"{column}_std"]
    return "" if pd.isna(mean) else f"{fmt.format(mean)} ± {_f(std, fmt) or 'n/a'}"


def nfe_text(value: object) -> str:
    """Whole NFEs as integers; a mean over images that stopped early (Jacobi) to 0.1."""
    return _f(value, "{:.0f}" if pd.isna(value) or float(value).is_integer() else "{:.1f}")


def compare(better: Row, worse: Row, column: str = "fid_domain") -> tuple[str, str]:
    """Whether ``better`` has the lower FID (``column``) beyond the spread: (verdict, numbers)."""
    gap = float(worse[f"{column}_mean"]) - float(better[f"{column}_mean"])  # FID units
    s1, s2 = float(better[f"{column}_std"]), float(worse[f"{column}_std"])
    spread = math.nan if math.isnan(s1) or math.isnan(s2) else max(s1, s2)
    seeds = min(int(better["replicates"]), int(worse["replicates"]))
    if math.isnan(gap):
        return "not measured (no FID)", "FID missing"
    if math.isnan(spread):
        text = f"gap {gap:+.2f}, spread n/a (one replicate: not tested against noise)"
        return ("holds" if gap > 0 else "does not hold"), text
    text = f"gap {gap:+.2f} vs spread {spread:.2f}"
    if abs(gap) <= spread:
        return f"within the spread (not resolved by {seeds} seeds)", text
    return ("holds" if gap > 0 else "does not hold"), text


def ordering(sub: pd.DataFrame, factor: str, order: tuple[str, ...], control: str) -> list[str]:
    """Paragraph lines testing FID(order[0]) < FID(order[1]) < ... for adjacent present values,
    pairing rows of equal ``control`` where there are such (else every pair, said so)."""
    claim = " < ".join(f"FID({v})" for v in order)
    present = [v for v in order if (sub[factor] == v).any()]
    lines, verdicts = [], []
    for lo, hi in zip(present, present[1:], strict=False):
        a, b = sub[sub[factor] == lo].to_dict("records"), sub[sub[factor] == hi].to_dict("records")
        pairs = [(x, y) for x in a for y in b if x[control] == y[control]]
        matched = bool(pairs)
        for x, y in pairs or [(x, y) for x in a for y in b]:
            verdict, text = compare(x, y)
            verdicts.append(verdict)
            where = (
                f"{control}={x[control]}"
                if matched
                else f"{control} differs: {x[control]} vs {y[control]}"
            )
            lines.append(
                f"- {lo} vs {hi} ({where}): FID {pm(x, 'fid_domain')} (`{row_name(x)}`) vs "
                f"{pm(y, 'fid_domain')} (`{row_name(y)}`); {text}: **{verdict}**."
            )
    if not verdicts:
        return [f"Fewer than two of {', '.join(order)} are in this table: nothing to compare."]
    n, bad = len(verdicts), sum(v == "does not hold" for v in verdicts)
    unresolved = sum(v.startswith("within") for v in verdicts)
    if all(v == "holds" for v in verdicts):
        head = f"**holds** in all {n} comparisons."
    elif bad:
        head = f"**does not hold**: {bad} of {n} comparisons go the other way."
    else:
        head = f"is **within the spread (not resolved by these seeds)** in {unresolved} of {n}."
    tail = []
    for k, g in sub.groupby(control, sort=False):  # the ordering seen in each control group
        ranked = g.sort_values("fid_domain_mean").to_dict("records")
        if len(ranked) > 1:
            seen = [f"{r[factor]} (`{row_name(r)}`, {r['fid_domain_mean']:.2f})" for r in ranked]
            tail.append(f"Observed FID order within {control}={k}: {' < '.join(seen)}.")
    others = sorted(set(sub[factor]) - set(order))
    tail += [f"Rows with {factor} {', '.join(others)} are not part of the claim."] if others else []
    return [f"The paper's ordering {claim} {head}", GAP, SPREAD, "", *lines, "", *tail]


def ablations(sub: pd.DataFrame) -> list[str]:
    """One line per pair of rows of one sampler that differ in one ablated factor alone."""
    rows = sub[~sub["anchor"]].to_dict("records")
    lines = []
    for f in ABLATED:
        found = 0
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                if (
                    a["method"] != b["method"]
                    or differing(a, b) != [f]
                    or OFF[f] not in (a[f], b[f])
                ):
                    continue
                on, off = (b, a) if a[f] == OFF[f] else (a, b)
                verdict, text = compare(on, off)
                found += 1
                lines.append(
                    f"- **{f}** in `{a['method']}`: FID {pm(on, 'fid_domain')} with {f}={on[f]} "
                    f"(`{row_name(on)}`, NFE {nfe_text(on['nfe'])}) vs {pm(off, 'fid_domain')} "
                    f"with {f}={off[f]} (`{row_name(off)}`, NFE {nfe_text(off['nfe'])}); {text}: "
                    f"**{EFFECT.get(verdict, verdict)}**.{_inception_check(on, off)}"
                )
        if not found:
            lines.append(f"- **{f}**: no two rows of one sampler differ in {f} alone.")
    nets = sorted({str(r["feature_loss"]) for r in rows} - {"off", "-"})
    net = f"`{'`, `'.join(nets)}`" if nets else "none (no row uses it)"
    gap = "Gap: FID without the factor minus FID with it (positive: the factor lowers FID)."
    return [f"Feature loss network: {net}.", gap, SPREAD, "", *lines]


EFFECT = {"holds": "lower FID with it", "does not hold": "higher FID with it"}


def _inception_check(on: Row, off: Row) -> str:
    """The same comparison on the offline Inception FID, where both rows measured it: a gain a
    feature network trained on these digits claims must show there too."""
    if pd.isna(on.get("fid_inception_offline_mean")) or pd.isna(
        off.get("fid_inception_offline_mean")
    ):
        return ""
    verdict, text = compare(on, off, "fid_inception_offline")
    return (
        f" Inception (offline) FID: {pm(on, 'fid_inception_offline')} vs "
        f"{pm(off, 'fid_inception_offline')}; {text}: **{EFFECT.get(verdict, verdict)}**."
    )
