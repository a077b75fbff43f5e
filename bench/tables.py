"""Paper-style tables from a finished run folder, aggregated over replicates.

``python -m bench tables RUN_DIR [--out DIR]`` writes ``main.csv``, ``reverse.csv``,
``denoise.csv``, ``ablations.csv``, ``guidance.csv`` and ``tables.md`` (default
``RUN_DIR/tables/``). Each paragraph tests a claim of the papers (an FID ordering, an
ablation; bench.claims) against the run-to-run spread; every figure in it comes from
results.csv, and each row carries the paper's own number for it (bench.paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.claims import (
    DENOISE_ORDER,
    REVERSE_ORDER,
    ablations,
    nfe_text,
    ordering,
    pm,
    row_name,
)
from bench.columns import Column, view
from bench.paper import SOURCE, guidance_lines, paper_fid
from bench.runfolder import VARIANT_KEY, load_run
from methods.atomic import write_text
from methods.base import Factors

TABLES = ("main", "reverse", "denoise", "ablations", "guidance")
FACTORS = Factors.names()
QUALITY = ("fid_domain", "is_domain", "kid_domain", "fid_inception_offline", "jacobi_rel_err")
TIMING = ("latency_ms_b1", "throughput_img_s", "speedup_b1", "speedup_tput")
COST = ("nfe", "sequential_steps", "params")  # deterministic per variant up to Jacobi stopping
NEED = ("tables", "fid_domain")  # beyond the row key, which the run reader fills
Row = Mapping[str, object]


def _factor(value: object, name: str) -> str:
    """A factor value as a comparable string; guidance 0, 0.0 and '0' are all '0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    number = pd.to_numeric(value, errors="coerce") if name == "guidance" else math.nan
    return str(value) if pd.isna(number) else f"{number:g}"


def _num(group: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(group.get(column, pd.Series(math.nan, group.index)), errors="coerce")


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, variant) (anchors: per method; every listed method's variant is
    "default"), in order of first appearance. Quality: mean and sample std (ddof=1, NaN with one
    replicate); timings: median; NFE, steps, params: mean."""
    rows = rows.assign(method=rows["method"].astype(str), variant=rows["variant"].astype(str))
    out = []
    for _, g in rows.groupby(list(VARIANT_KEY), sort=False):  # replicates: aggregated over
        first = g.iloc[0]
        member = {t.strip() for cell in g["tables"].dropna() for t in str(cell).split(",")}
        rec: dict[str, object] = {
            "method": first["method"],
            "variant": first["variant"],
            "anchor": first["method"].startswith("anchor"),
            "tables": ",".join(t for t in TABLES if t in member),
            "replicates": g["replicate"].nunique(),
        }
        rec |= {f: _factor(first.get(f), f) for f in FACTORS}
        for c in QUALITY:
            rec[f"{c}_mean"], rec[f"{c}_std"] = _num(g, c).mean(), _num(g, c).std(ddof=1)
        # the sample noise beside the seed noise: the bootstrap interval's mean half-width
        rec["fid_domain_boot_mean"] = (
            (_num(g, "fid_domain_hi") - _num(g, "fid_domain_lo")) / 2
        ).mean()
        rec |= {f"{c}_median": _num(g, c).median() for c in TIMING}
        rec |= {c: _num(g, c).mean() for c in COST}
        out.append(rec)
    return pd.DataFrame(out)


def select(agg: pd.DataFrame, table: str) -> pd.DataFrame:
    """The aggregated rows that belong to ``table``, with the paper's FID for each; anchors
    last."""
    sub = agg[agg["tables"].str.split(",").apply(lambda ts: table in ts)]
    sub = pd.concat([sub[~sub["anchor"]], sub[sub["anchor"]]])
    paper = [paper_fid(table, r) if not r["anchor"] else "" for r in sub.to_dict("records")]
    return sub.assign(paper_fid=paper)


HOW = ("text", "value", "count", "mean", "median", "spread")


@dataclass(frozen=True)
class Cell:
    """One column of a tables.md table: a registered results column (bench.columns) as
    aggregated over replicates. ``how``: "text" (as written: names, factors), "value" (a mean
    kept under the column's own name, formatted: params), "count" (NFE: whole numbers as
    integers, a mean that is not whole to 0.1), "mean", "median", "spread" (mean ± std)."""

    column: Column
    how: str  # one of HOW

    def __post_init__(self) -> None:
        if self.how not in HOW:
            raise ValueError(f"cell {self.column.name}: how {self.how!r}; allowed: {HOW}")

    @property
    def keys(self) -> list[str]:
        """The aggregated frame's (and the CSV's) columns this cell reads."""
        name = self.column.name
        return {
            "mean": [f"{name}_mean"],
            "median": [f"{name}_median"],
            "spread": [f"{name}_mean", f"{name}_std"],
        }.get(self.how, [name])

    def render(self, r: Row) -> str:
        value = r[self.keys[0]]
        if self.how == "text":
            return str(value)
        if self.how == "count":
            return nfe_text(value)
        if self.how == "spread":
            return pm(r, self.column.name, self.column.format)
        return self.column.cell(value)


def _cell(name: str, how: str) -> Cell:
    return Cell(view(name), how)


LEAD = [_cell("method", "text"), _cell("variant", "text")]
FID = [
    _cell("replicates", "text"),
    _cell("nfe", "count"),
    _cell("fid_domain", "spread"),
    _cell("fid_domain_boot", "mean"),
    _cell("is_domain", "spread"),
]
JACOBI = _cell("jacobi_rel_err", "mean")
KID = _cell("kid_domain", "mean")
FACTOR = {f: _cell(f, "text") for f in FACTORS}
PAPER_FID = _cell("paper_fid", "text")
INCEPTION = _cell("fid_inception_offline", "spread")
SPECS: dict[str, list[Cell]] = {
    "main": [
        *LEAD,
        *FID,
        _cell("latency_ms_b1", "median"),
        _cell("throughput_img_s", "median"),
        _cell("speedup_b1", "median"),
        _cell("params", "value"),
        _cell("fid_inception_offline", "spread"),
    ],
    "reverse": [*LEAD, FACTOR["reverse"], FACTOR["denoise"], *FID, KID, JACOBI, PAPER_FID],
    "denoise": [*LEAD, FACTOR["reverse"], FACTOR["denoise"], *FID, KID, PAPER_FID],
    "ablations": [*LEAD, *FACTOR.values(), *FID, KID, INCEPTION, PAPER_FID],
    "guidance": [
        *LEAD,
        FACTOR["guidance"],
        FACTOR["guidance_form"],
        *FID,
        KID,
        INCEPTION,
        PAPER_FID,
    ],
}


def _present(sub: pd.DataFrame, spec: list[Cell]) -> list[Cell]:
    """The cells of ``spec`` that the rows measure (all of them for no rows)."""
    return [c for c in spec if sub.empty or any(sub[k].notna().any() for k in c.keys)]


def csv_frame(sub: pd.DataFrame, table: str) -> pd.DataFrame:
    """The machine-readable form of one table: raw numbers, means and stds in their own columns."""
    cols = [k for c in _present(sub, SPECS[table]) for k in c.keys]
    return sub[cols]


def md_table(sub: pd.DataFrame, table: str) -> str:
    """The table in GitHub markdown, numbers formatted as in report.md."""
    cols = _present(sub, SPECS[table])
    rows = [[c.render(r) for c in cols] for r in sub.to_dict("records")]
    heads = [c.column.header for c in cols]
    return tabulate(rows, heads, tablefmt="github", disable_numparse=True)


def _main_note(sub: pd.DataFrame) -> list[str]:
    samplers = sub[~sub["anchor"]]
    out = [
        "Anchors (last rows) are scored like samplers: Gaussian noise marks the FID ceiling, held-"
        "out real images the floor. Speedups are against exact causal "
        "decoding (`tarflow`) of the same replicate, of the same flow and guidance where the run "
        "has it (results column `speedup_vs`)."
    ]
    if samplers["fid_domain_mean"].notna().any():
        best = samplers.loc[samplers["fid_domain_mean"].idxmin()]
        out.append(f"Lowest sampler FID: `{row_name(best)}` ({pm(best, 'fid_domain')}).")
    if samplers["speedup_b1_median"].notna().any():
        fast = samplers.loc[samplers["speedup_b1_median"].idxmax()]
        out.append(
            f"Largest batch-1 speedup: `{row_name(fast)}` ({fast['speedup_b1_median']:.1f}x)."
        )
    return [" ".join(out)]


def feature_net_note(models: dict, config: dict) -> list[str]:
    """What the feature loss compared, from run.json's model records and config."""
    nets = [(k, r) for k, r in models.items() if r.get("kind") == "feature_net"]
    scorer = config.get("classifier", {})
    which = f", width {scorer['width']}, seed {scorer.get('seed')}" if "width" in scorer else ""
    return [
        f"The feature loss network is `{k}`: a CNN of the domain classifier's architecture "
        f"(width {r.get('width')}, seed {r.get('seed')}), trained on the same training split. "
        f"It is not the network that scores FID (`domain_classifier`"
        f"{which}), but it learned the "
        f"same task from the same images, so part of a lower domain FID with the feature loss "
        f"may be shared features rather than better images."
        for k, r in nets
    ]


def _schedule(config: dict) -> str:
    return {"linear": "linearly annealed ((t + 1) / (T - 1) x w)"}.get(
        config.get("sampling", {}).get("guidance_schedule", "constant"), "constant"
    )


def _score_model(config: dict) -> str:
    guided = config.get("sampling", {}).get("score_guidance", "conditional") == "guided"
    return "guided" if guided else "unguided conditional"


def render(
    rows: pd.DataFrame, config: dict, name: str, models: dict | None = None
) -> tuple[str, dict[str, pd.DataFrame]]:
    """tables.md and the four CSV frames of one run's rows (``models``: run.json's model
    records, which say what the feature loss used)."""
    agg = aggregate(rows)
    reps = rows["replicate"].nunique()
    extractors = ", ".join(config.get("metrics", {}).get("extractors", ["domain"]))
    out = [
        f"# flowbench tables: run `{name}`",
        "",
        f"FID, IS and KID are computed with the `domain` extractor (features of the classifier "
        f"trained on this dataset's training split; comparable within these tables, not with "
        f"Inception FID; this run's extractors: {extractors}), on "
        f"{config.get('eval', {}).get('num_samples', '?')} images per sampler and replicate, over "
        f"{reps} replicate{'s' if reps != 1 else ''} (each retrains every model and draws new "
        f"sampling seeds). Quality: mean ± sample std over replicates (ddof=1; n/a with one "
        f"replicate). Timings: median over replicates. NFE and params: mean over replicates.",
        "",
        f"`paper FID`: the paper's number for the same design choice ({SOURCE}); another "
        "dataset, scale and feature network, so only orderings compare. Guidance: TarFlow rows "
        f"decode with a {_schedule(config)} scale; their score step, where there is one, goes "
        f"through the {_score_model(config)} model.",
    ]
    titles = {
        "main": ("Main comparison", _main_note),
        "reverse": ("Reverse model", lambda s: ordering(s, "reverse", REVERSE_ORDER, "denoise")),
        "denoise": ("Denoising", lambda s: ordering(s, "denoise", DENOISE_ORDER, "reverse")),
        "ablations": (
            "Ablations",
            lambda s: [*ablations(s), "", *feature_net_note(models or {}, config)],
        ),
        "guidance": ("Guidance", guidance_lines),
    }
    frames = {}
    for table, (title, note) in titles.items():
        sub = select(agg, table)
        frames[table] = csv_frame(sub, table)
        out += ["", f"## {title} (`{table}`)", ""]
        if sub.empty:
            out.append(f"No row of this run belongs to the `{table}` table: skipped.")
            continue
        out += [md_table(sub, table), "", *note(sub)]
    return "\n".join(out) + "\n", frames


def write(run_dir: Path, out: Path | None = None) -> Path:
    """Write tables.md and main/reverse/denoise/ablations.csv (header only for an empty table)
    into ``out`` (default ``RUN_DIR/tables``); return the path of tables.md."""
    run = load_run(run_dir, NEED)
    config, models = run.config, run.info.get("models") or {}
    out = run_dir / "tables" if out is None else out
    text, frames = render(run.results, config, str(config.get("name", run_dir.name)), models)
    for table, frame in frames.items():
        write_text(out / f"{table}.csv", frame.to_csv(index=False))
    write_text(out / "tables.md", text)
    return out / "tables.md"
