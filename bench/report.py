"""report.md from a run folder alone (results.csv + run.json + the grids beside them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

LABELS = {
    "tarflow": "TarFlow, causal decoding (KV cache)",
    "tarflow_score": "TarFlow + score denoising",
    "biflow": "BiFlow, learned reverse",
}

COLUMNS = [  # (column, header, format)
    ("method", "sampler", None),
    ("nfe", "NFE", "{:.0f}"),
    ("params", "params (M)", "{:.2f}"),
    ("fid_domain", "FID (domain)", "{:.2f}"),
    ("is_domain", "IS (domain)", "{:.2f}"),
    ("kid_domain", "KID (domain)", "{:.3f}"),
    ("latency_ms_b1", "latency b=1 (ms/img)", "{:.1f}"),
    ("speedup_b1", "speedup b=1", "{:.1f}x"),
    ("throughput_img_s", "throughput (img/s)", "{:.0f}"),
    ("speedup_tput", "speedup tput", "{:.1f}x"),
    ("peak_mem_mb", "peak mem (MB)", "{:.0f}"),
    ("mem_sampling_mb", "of which sampling (MB)", "{:.0f}"),
    ("nonfinite", "non-finite", "{:.0f}"),
]


def _fmt(value, fmt: str | None, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "params":
        value = value / 1e6
    if column == "method":
        return LABELS.get(value, value)
    return fmt.format(value) if fmt else str(value)


def main_table(table: pd.DataFrame) -> str:
    rows = [
        [_fmt(r.get(c), f, c) for c, _, f in COLUMNS if c in table.columns]
        for r in table.to_dict("records")
    ]
    headers = [h for c, h, _ in COLUMNS if c in table.columns]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def _memory_note(samplers: pd.DataFrame) -> str:
    kinds = set(samplers.get("peak_mem_kind", pd.Series(dtype=str)).dropna())
    if any(k.startswith("cpu") for k in kinds):
        return (
            "Peak memory is the peak resident set of a fresh process that loaded only that "
            "sampler's models and drew one throughput batch (torch runtime included); "
            "'of which sampling' is the part above the resident set after loading."
        )
    if "cuda_allocator" in kinds:
        return (
            "Peak memory is the CUDA caching allocator's peak while drawing one throughput batch."
        )
    return ""


def render(run_dir: Path) -> str:
    table = pd.read_csv(run_dir / "results.csv")
    info = json.loads((run_dir / "run.json").read_text())
    env, cfg, ds = info["environment"], info["config"], info["dataset"]
    ev = cfg["eval"]
    models = info.get("models", {})
    acc = models.get("domain_classifier", {}).get("heldout_accuracy")
    samplers = table[~table.method.str.startswith("anchor")]
    out = [f"# flowbench run `{cfg['name']}`", ""]
    out += [
        f"Measured on **{env['device_name']}** (`{env['device']}`, {env['torch_threads']} torch "
        f"threads), torch {env['torch_version']}, torch-fidelity {env['torch-fidelity_version']}, "
        f"git `{env['git_commit'][:12]}`{' (dirty)' if env['git_dirty'] else ''}. "
        f"Dataset `{ds['name']}` ({ds['train']} training images, shape {ds['shape']}). "
        f"Quality: {ev['num_samples']} images per sampler (seeds {ev['seed']}..."
        f"{ev['seed'] + ev['num_samples'] - 1}) against {ds['reference']} held-out reference "
        f"images, features from the `domain` extractor (a CNN trained on the training split, "
        f"held-out accuracy {acc:.1%}), metrics by torch-fidelity; FID and KID are therefore "
        f"in that classifier's feature space, comparable within this table, not with Inception "
        f"numbers. Latency: median of {ev['latency_repeats']} runs at batch 1 after "
        f"{ev['warmup']} warm-up; throughput: median of {ev['throughput_repeats']} runs at batch "
        f"{ev['throughput_batch']}. Speedups are against causal decoding in this run.",
        "",
        main_table(table),
        "",
        "The two anchor rows bracket every quality number: Gaussian noise images (the ceiling) "
        "and held-out real images that no model saw (the floor), scored exactly like a sampler. "
        + _memory_note(samplers),
        "",
    ]
    dvf = info.get("decode_vs_forward")
    if dvf:
        out += [
            "## Is causal decoding a fair baseline?",
            "",
            f"At batch {dvf['batch']}, one full causal decode takes {dvf['decode_s'] * 1e3:.0f} ms"
            f" and one parallel forward pass of the same flow {dvf['forward_s'] * 1e3:.0f} ms: "
            f"a ratio of **{dvf['ratio']:.2f}x** (spreads {dvf['decode_spread']:.0%} and "
            f"{dvf['forward_spread']:.0%}). With the key/value cache both do the same arithmetic; "
            f"the ratio is the price of doing it one token at a time.",
            "",
        ]
    lik = []
    if "bits_per_dim_heldout" in info:
        lik.append(
            f"- TarFlow bits/dim on the {ds['reference'] + ds['real_anchor']} held-out "
            f"images (noise-augmented, sigma={cfg['tarflow']['noise_std']}, in 8-bit "
            f"pixel units): **{info['bits_per_dim_heldout']:.3f}**"
        )
    inv = info.get("biflow_inversion")
    if inv:
        lik.append(
            f"- BiFlow inversion on held-out images: ||G(F(x~)) - x~|| / ||x~|| = "
            f"{inv['rel_err_vs_noisy']:.3f}; against the clean image "
            f"{inv['rel_err_vs_clean']:.3f}"
        )
    if lik:
        out += ["## Likelihood and inversion", "", *lik, ""]
    out += ["## Samples", "", "The same seeds for every sampler.", ""]
    for r in samplers.to_dict("records"):
        out += [
            f"**{LABELS.get(r['method'], r['method'])}** (NFE {r['nfe']:.0f})",
            "",
            f"![{r['method']}]({r['grid']})",
            "",
        ]
    train_rows = [
        [
            k,
            v.get("source"),
            v.get("params"),
            v.get("steps", ""),
            f"{v['seconds']:.0f}" if "seconds" in v else "",
            v.get("final_loss_ema", ""),
        ]
        for k, v in models.items()
    ]
    out += [
        "## Models",
        "",
        pd.DataFrame(
            train_rows, columns=["model", "source", "params", "steps", "train s", "final loss"]
        ).to_markdown(index=False),
        "",
    ]
    out += [
        "## Stages (wall time, s)",
        "",
        pd.DataFrame(
            list(info.get("stages", {}).items()), columns=["stage", "seconds"]
        ).to_markdown(index=False),
        "",
    ]
    out += ["## Config", "", "```yaml", (run_dir / "config.yaml").read_text().rstrip(), "```", ""]
    return "\n".join(out)


def write(run_dir: Path) -> Path:
    path = run_dir / "report.md"
    path.write_text(render(run_dir))
    return path
