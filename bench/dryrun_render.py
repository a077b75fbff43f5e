"""The dry run's printout (``bench run CONFIG --dry-run``): models and published sizes, then
every step that ran (bench.dryrun measures them)."""

from __future__ import annotations

from tabulate import tabulate

from bench.dryrun import FULL_SIZE_BUDGET_S, DryRun
from methods.kinds import kinds


def _m(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,.0f}"


def _flop(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f}"


def _s(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}" if x < 10 else f"{x:,.0f}"


def render(r: DryRun) -> str:
    """The dry run's printout: models and published sizes, then every step that ran."""
    names = {k.name: k.label for k in kinds()}
    c, h, w = r.shape
    lines = [
        f"dry run of {r.name!r} ({r.config_path}): CPU, {r.threads} thread"
        f"{'s' * (r.threads != 1)}; writes nothing, downloads nothing",
        f"data: {r.data_note}",
        f"shape: {c}x{h}x{w} images -> {r.tokens} tokens of {r.token_dim}; the steps below "
        "train and sample on synthetic uint8 images of this shape",
        "",
        "models at full size (built on the meta device: counted, not allocated)",
    ]
    rows = [
        [
            names[m.name],
            f"{m.params:,} ({_m(m.params)})",
            m.layers,
            "" if m.published is None else _m(m.published.params),
            "" if m.difference is None else f"{m.difference:+.1%}",
            _flop(m.forward_flops),
        ]
        for m in r.models
    ]
    heads = ["model", "parameters", "layers", "published", "difference", "forward FLOP/img"]
    lines.append(tabulate(rows, heads, tablefmt="github", disable_numparse=True))
    for m in r.models:
        if m.training_only:
            lines.append(f"{names[m.name]}: +{m.training_only:,} training-only (alignment heads)")
        if m.published is not None:
            lines.append(f"published {names[m.name]}: {m.published.source}")
    if r.steps:
        lines += ["", "one training step (batch 2) and one sampling call (1 image) each, on CPU"]
        rows = [
            [
                f"{s.kind} {names.get(s.name, s.name) if s.kind == 'train' else s.name}",
                "full size" if s.copy_s is None else "copy" + (", full size" * bool(s.full_s)),
                _s(s.copy_s),
                _s(s.full_s) if s.full_s is not None else "not run",
                _s(s.full_estimate_s),
                "" if s.params is None else _m(s.params),
                "" if s.nfe is None else s.nfe,
                "" if s.flops_per_img is None else _flop(s.flops_per_img),
            ]
            for s in r.steps
        ]
        heads = [
            "step", "ran on", "copy s", "full-size s", "full-size s (est.)", "params", "NFE",
            "FLOP/img (full size)",
        ]  # fmt: skip
        lines.append(tabulate(rows, heads, tablefmt="github", disable_numparse=True))
        lines += [
            r.copy_note,
            "full-size s (est.): the copy's time x the ratio of transformer layers; a step runs "
            f"at full size too while the estimates fit {FULL_SIZE_BUDGET_S:.0f} s in all",
            "NFE: of the call that ran last. FLOP/img: counted on the copy, scaled by the "
            "full-size / copy forward-pass FLOPs of the models the sampler runs",
        ]
    verdict = (
        "ok" if r.ok else "FAILED: " + "; ".join(r.problems()) + " (no step was run)"
    ) + f" ({r.seconds:.1f} s)"
    return "\n".join([*lines, "", verdict])
