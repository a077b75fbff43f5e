"""TarFlow as a sampler: its training loss, its likelihood, exact causal decoding, and the
``flow`` model kind (methods.kinds). The network itself is methods/flow.py.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from methods import checkpoint
from methods.base import DEFAULT_SAMPLING, Factors, Sampler, SamplingConfig
from methods.flow import (  # noqa: F401  (re-exported: the flow's public names)
    CausalNet,
    FlowBlock,
    TarFlow,
    TarFlowConfig,
    guidance_error,
    is_guided,
    nll,
    norm_control,
)
from methods.kinds import ModelKind, Models, register_kind
from methods.registry import register
from methods.training import Labels
from methods.transformer import native_problem


def nll_objective(noise_std: float):
    """The training loss ``loss(net, x, eps, labels)`` of a TarFlow: NLL of x + noise_std * eps,
    with the forward pass through ``net`` (the flow, or its DistributedDataParallel wrapper).
    Class-conditional: each label is replaced by "no class" with probability label_drop."""

    def loss(
        net: nn.Module, x: torch.Tensor, eps: torch.Tensor, labels: Labels | None = None
    ) -> torch.Tensor:
        cfg = getattr(net, "module", net).cfg
        y = None
        if cfg.num_classes:
            if labels is None:
                raise ValueError("a class-conditional TarFlow needs labelled training data")
            y = torch.where(labels.u < cfg.label_drop, cfg.num_classes, labels.y)
        return nll(*net(x + noise_std * eps, y=y)[:2])

    return loss


def bits_per_dim(
    flow: TarFlow, x: torch.Tensor, generator: torch.Generator, y: torch.Tensor | None = None
) -> float:
    """Bits/dim of the noise-augmented data x + sigma*eps, in 8-bit pixel units.

    x lives in [-1, 1] (pixel/127.5 - 1); the change of variables to [0, 256) pixel units adds
    log(127.5) nats per dimension. The Gaussian noise (sigma = flow.cfg.noise_std) plays the role
    of dequantisation, so this is the likelihood of the noisy data the flow was trained on
    (given the labels ``y``, for a class-conditional flow).
    """
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    xn = x + flow.cfg.noise_std * eps
    with torch.no_grad():
        lp = flow.log_prob(xn, y)
    d = x[0].numel()
    nats = -lp.mean().item() / d + math.log(127.5)
    return nats / math.log(2)


@register("tarflow")
class TarFlowSampler(Sampler):
    """Exact causal decoding with a key/value cache: K x (T - 1) sequential evaluations."""

    label = "TarFlow, causal decoding (KV cache)"

    needs = ("flow",)

    def __init__(
        self, flow: TarFlow, device: torch.device, sampling: SamplingConfig = DEFAULT_SAMPLING
    ) -> None:
        self.flow = flow.eval()
        self.cached = sampling.kv_cache
        # A compiled decoding step needs the same shapes every step: see KVCache. (compile
        # implies kv_cache: SamplingConfig refuses one without the other.)
        self.static = sampling.compile
        self.kernel = sampling.decode_kernel
        self.guidance, self.schedule = sampling.guidance, sampling.guidance_schedule
        # the score step's scale (score_denoise): the guided flow's, or 0 (conditional model)
        self.score_w = self.guidance if sampling.score_guidance == "guided" else 0.0
        if problem := guidance_error(self.guidance, flow.cfg.num_classes):
            raise ValueError(problem)
        super().__init__(device, sampling)

    @classmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        options: object = None,
    ) -> TarFlowSampler:
        return cls(models["flow"], device, sampling)

    @classmethod
    def problems(cls, cfg: Any, device: torch.device) -> list[str]:
        s, t = cfg.sampling, cfg.tarflow
        out = [p] if (p := guidance_error(s.guidance, t.num_classes)) else []
        return out + decode_problems(cfg, device)

    def networks(self) -> list[nn.Module]:
        return self.flow.networks()

    def compile_targets(self) -> list[nn.Module]:
        """The decoding step: each block's network (the score step's pass stays eager)."""
        return [b.net for b in self.flow.blocks]

    def noise_shape(self) -> tuple[int, ...]:
        return (self.flow.tokens, self.flow.dim)

    def num_classes(self) -> int:
        return self.flow.cfg.num_classes

    def factors(self) -> Factors:
        return Factors(
            reverse="exact",
            denoise="none",
            norm_control=norm_control(self.flow.cfg),
            guidance=self.guidance,
            guidance_form=(
                "inference" if self.schedule == "constant" else f"inference, {self.schedule}"
            )
            if self.flow.cfg.num_classes
            else "-",
            conditional="yes" if self.flow.cfg.num_classes else "no",
        )

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact causal decoding of z as the sampling config asks (cache, kernel, guidance)."""
        return self.flow.reverse(
            z, self.cached, self.static, y, self.guidance, self.kernel, self.schedule
        )


def decode_problems(cfg: Any, device: torch.device) -> list[str]:
    """Why the flow of ``cfg`` cannot be causally decoded as ``sampling.decode_kernel`` asks
    (every sampler built on the flow: the run's fairness check decodes it too)."""
    s, t = cfg.sampling, cfg.tarflow
    if s.decode_kernel != "native":
        return []
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    if p := native_problem(device, dtype, t.width // t.heads, s.compile):
        return [f"sampling.decode_kernel: native cannot run: {p}"]
    return []


def _flow_example(flow: TarFlow, models: Models) -> tuple[tuple, dict]:
    dev = next(flow.parameters()).device
    return (torch.zeros(1, flow.channels, flow.image_size, flow.image_size, device=dev),), {}


FLOW = register_kind(
    ModelKind(
        name="flow",
        checkpoint="tarflow",
        title="tarflow",
        label="tarflow F",
        section="tarflow",
        config=TarFlowConfig,
        train_section="tarflow_train",
        build=lambda cfg, shape, models: TarFlow(cfg.tarflow, *shape),
        objective=lambda cfg, models, services: nll_objective(cfg.tarflow.noise_std),
        spec=lambda cfg, shape, models, keys: checkpoint.spec_of(
            cfg.tarflow, channels=shape[0], image_size=shape[1]
        ),
        shrink=lambda c: replace(c, blocks=1, depth=1),  # one flow block of one layer
        example=_flow_example,
        classes=lambda cfg: cfg.tarflow.num_classes,
    )
)
