"""The BiFlow paper's numbers beside the rows of ``bench tables``, and its guidance claim.

The numbers are the paper's (arXiv 2512.10953: ImageNet 256x256, FID-50k, BiFlow-B/2), quoted so
each row of this project's tables can be read against the row the paper reports for the same
design choice; they are never compared with this project's FIDs as numbers (another dataset,
another feature network, other model sizes), only as orderings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from bench.claims import compare, row_name

Row = Mapping[str, object]
SOURCE = "arXiv 2512.10953, ImageNet 256, FID-50k, BiFlow-B/2"


@dataclass(frozen=True)
class PaperNumber:
    """The paper's FID for the rows of ``table`` whose factors match ``when`` (factor -> value,
    or a test of the value)."""

    table: str
    when: Mapping[str, str | Callable[[str], bool]]
    fid: str  # as the paper gives it, with what it measured where a row here differs

    def matches(self, table: str, row: Row) -> bool:
        if table != self.table:
            return False
        return all(
            v(str(row[f])) if callable(v) else str(row[f]) == v for f, v in self.when.items()
        )


def _on(value: str) -> bool:
    return value not in ("off", "-")


def _guided(value: str) -> bool:
    return value not in ("0", "-")


# Most specific first: a row takes the first number that matches it.
PAPER = (
    PaperNumber("reverse", {"reverse": "aligned"}, "36.93"),
    PaperNumber("reverse", {"reverse": "naive"}, "43.41"),
    PaperNumber("reverse", {"reverse": "exact"}, "44.46"),
    PaperNumber("reverse", {"reverse": "distilled"}, "55.00"),
    PaperNumber("denoise", {"reverse": "aligned", "denoise": "learned"}, "31.88"),
    PaperNumber("denoise", {"reverse": "aligned", "denoise": "score"}, "42.62"),
    PaperNumber("denoise", {"reverse": "aligned", "denoise": "none"}, "100.51"),
    PaperNumber("ablations", {"norm_control": "off"}, "45.54"),
    PaperNumber("ablations", {"feature_loss": _on}, "14.15 (LPIPS); 2.46 (LPIPS + ConvNeXt)"),
    PaperNumber(
        "ablations",
        {"norm_control": "on", "feature_loss": "off", "weighting": "adaptive"},
        "31.88 (MSE only)",
    ),
    PaperNumber("guidance", {"guidance_form": "training", "guidance": _guided}, "6.79 (1 NFE)"),
    PaperNumber(
        "guidance",
        {"guidance_form": "inference", "reverse": "aligned", "guidance": _guided},
        "6.90 (2 NFE)",
    ),
)


def paper_fid(table: str, row: Row) -> str:
    """The paper's FID for ``row`` as a row of ``table`` ("" when the paper has none)."""
    return next((p.fid for p in PAPER if p.matches(table, row)), "")


def guidance_lines(sub: pd.DataFrame) -> list[str]:
    """The paper's guidance claims, tested on the guidance table's rows (bench.claims.compare:
    the tables' FID comparison against the spread). For each reverse sampler and guidance
    form: the sweep of w, its best w against the same model unguided; then training-time
    guidance (1 NFE) against inference-time guidance (2 NFE), each at its best w."""
    rows = [r for r in sub.to_dict("records") if not r["anchor"]]
    best: dict[tuple[str, str], Row] = {}
    lines = []
    for key in dict.fromkeys((str(r["method"]), str(r["guidance_form"])) for r in rows):
        group = [r for r in rows if (str(r["method"]), str(r["guidance_form"])) == key]
        plain = [r for r in group if str(r["guidance"]) == "0"]
        guided = [r for r in group if str(r["guidance"]) != "0"]
        if not guided:
            continue
        sweep = ", ".join(f"w={r['guidance']}: {r['fid_domain_mean']:.2f}" for r in group)
        top = min(guided, key=lambda r: r["fid_domain_mean"])
        best[key] = top
        line = f"- `{key[0]}`, guidance {key[1]}: FID (domain) by w: {sweep}"
        line += f"; best w = {top['guidance']}"
        if plain:
            verdict, text = compare(top, plain[0])
            line += f"; against w = 0 (`{row_name(plain[0])}`): {text}: **{verdict}**"
        lines.append(line + ".")
    one = [r for (m, f), r in best.items() if f == "training"]
    two = [r for (m, f), r in best.items() if f == "inference" and m.startswith("biflow")]
    if one and two:
        verdict, text = compare(one[0], two[0])
        same = "match (within the spread)" if verdict.startswith("within") else verdict
        lines.append(
            f"- training-time (`{row_name(one[0])}`, NFE {one[0]['nfe']:.0f}) vs inference-time "
            f"(`{row_name(two[0])}`, NFE {two[0]['nfe']:.0f}) guidance, each at its best w: "
            f"{text}: **{same}** (the paper: 6.79 vs 6.90, a match)."
        )
    if not lines:
        return ["No guided rows in this table: nothing to compare."]
    head = (
        "The paper's claims: guidance lowers FID, and training-time guidance (the scale an input "
        "of G, 1 NFE) matches inference-time guidance (2 NFE). Best w: the lowest domain FID of a "
        "small sweep, so the best row's FID is biased low by the choice."
    )
    return [head, "", *lines]
