"""BiFlow: a learned, non-causal reverse model G trained against a frozen TarFlow F.

F maps noisy data x~ = x + sigma*eps through states h_0 = x~, h_1, ..., h_K = z. G takes z and
runs K bidirectional transformer stages r_{K-1}, ..., r_0, matched with h_{K-1}, ..., h_0 in
training (methods.biflow_loss), then one extra denoising stage whose output x^ is compared with
the clean x. Sampling is x = G(z) with z ~ N(0, I): one network evaluation (two with
inference-time guidance).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from methods import checkpoint
from methods.base import DEFAULT_SAMPLING, Factors, Sampler, SamplingConfig
from methods.biflow_loss import biflow_objective
from methods.flow import TarFlow, norm_control, reverse_guidance_error
from methods.kinds import ModelKind, Models, Services, Shape, register_kind
from methods.perceptual import (
    FEATURE_NET,
    FEATURE_NETS,
    FeatureDistance,
    feature_key,
    feature_problem,
    user_networks,
)
from methods.registry import register
from methods.score_denoise import tweedie_step
from methods.tarflow import decode_problems
from methods.transformer import Layer
from methods.validate import FieldError, check

HIDDEN = ("align", "distill")
OBJECTIVE = 3  # of a conditional G; see _reverse_spec


@dataclass(frozen=True)
class BiFlowConfig:
    width: int = 96  # transformer width of G
    depth: int = 2  # layers per reverse stage (there are K stages plus one denoising stage)
    heads: int = 4  # attention heads
    mlp_ratio: int = 4  # MLP hidden width / width
    align_weight: float = 1.0  # weight of the intermediate-state loss; 0 = naive distillation
    # how G's intermediate states are matched with F's: align (a learned head per state: hidden
    # alignment), distill (G's own output projection: hidden distillation)
    hidden: str = "align"
    recon_weight: float = 1.0  # weight of the reconstruction loss on the clean image
    denoise: bool = True  # learned denoising stage, output matched to the clean x; off: G ends
    # at r_0 and its output is matched to the noisy x~ (the exact inverse's target)
    normalize_states: bool = True  # norm control on the trajectory: state distances divided by
    # the state's variance; off: plain MSE
    adaptive: bool = False  # adaptive loss weighting (eq. 7): each distance D x sg((D + c)^-p)
    adaptive_p: float = 1.0
    adaptive_c: float = 1.0e-3
    feature_weight: float = 0.0  # feature (perceptual) loss on the output; needs a feature net
    # cnn (trained here) | lpips | convnext | lpips+convnext (the paper's; weights from a folder)
    feature_net: str = "cnn"
    feature_weights: str = ""  # the folder of the user's weights files (see methods.perceptual)
    convnext_model: str = "convnext_tiny"  # the timm architecture of feature_net convnext
    label_drop: float = 0.1  # conditional G: share of labels trained as "no class" (needed by
    # both kinds of guidance)
    guidance_max: float = 0.0  # training-time guidance: w ~ U[0, guidance_max] per image is an
    # input of G (class-conditional flows only); 0 = off (guidance, if any, at inference: 2 NFE)

    # Added after checkpoints were shipped: left out of cache keys while at their defaults.
    LATER_FIELDS = (
        "denoise",
        "feature_weight",
        "guidance_max",
        "hidden",
        "normalize_states",
        "adaptive",
        "adaptive_p",
        "adaptive_c",
        "feature_net",
        "feature_weights",
        "convnext_model",
        "label_drop",
    )

    def __post_init__(self) -> None:
        check(
            self,
            width=(1, None),
            depth=(1, None),
            heads=(1, None),
            mlp_ratio=(1, None),
            align_weight=(0, None),
            hidden=HIDDEN,
            recon_weight=(0, None),
            adaptive_p=(0, None),
            adaptive_c=(1e-12, None),
            feature_weight=(0, None),
            feature_net=FEATURE_NETS,
            label_drop=(0, 1),
            guidance_max=(0, None),
        )
        if self.width % self.heads:
            raise FieldError("width", self.width, f"a multiple of heads ({self.heads})")
        if self.guidance_max and not 0 < self.label_drop < 1:
            raise FieldError(
                "label_drop",
                self.label_drop,
                "strictly between 0 and 1 with guidance_max > 0 (the unconditional branch of "
                "training-time guidance learns from the dropped labels)",
            )


class ReverseModel(nn.Module):
    """G: noise tokens (b, T, D) -> image tokens (b, T, D), with bidirectional attention.

    Class-conditional (``num_classes`` > 0): a class embedding ("no class" = ``num_classes``)
    is added to the input of every stage and taken off its output, so each stage is conditioned
    but the state it hands on is not: guidance (eq. 4) then extrapolates what the stage did
    given the class, never the embedding itself. With training-time guidance an embedding of
    the scale w is added the same way, so a guided sample is still one evaluation."""

    def __init__(
        self, cfg: BiFlowConfig, tokens: int, dim: int, flow_blocks: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        if cfg.guidance_max and not num_classes:
            raise FieldError(
                "guidance_max",
                cfg.guidance_max,
                "0 unless the flow is class-conditional (tarflow.num_classes > 0)",
            )
        self.cfg, self.num_classes, self.null = cfg, num_classes, num_classes

        def stage() -> nn.ModuleList:
            return nn.ModuleList(
                Layer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
            )

        self.proj_in = nn.Linear(dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(tokens, cfg.width) * 0.02)
        if num_classes:
            self.class_emb = nn.Embedding(num_classes + 1, cfg.width)
        if cfg.guidance_max:
            self.scale_emb = nn.Sequential(
                nn.Linear(1, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width)
            )
        self.stages = nn.ModuleList(stage() for _ in range(flow_blocks))  # r_{K-1}, ..., r_0
        # learned denoising: r_0 (noisy) -> x^ (clean); none: G's output is r_0's projection
        self.denoise = stage() if cfg.denoise else nn.ModuleList()
        self.norm = nn.LayerNorm(cfg.width)
        self.proj_out = nn.Linear(cfg.width, dim)
        # Projection heads r_k -> space of h_k, used by the alignment loss only.
        heads = flow_blocks if cfg.hidden == "align" else 0
        self.align_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, dim)) for _ in range(heads)
        )

    def training_only_params(self) -> int:
        """Parameters of the alignment heads: used by the loss, never by sampling."""
        return sum(p.numel() for p in self.align_heads.parameters())

    def evaluations(self, args: tuple, kwargs: dict) -> int:
        """Image-evaluations of one call (NFE counting): two per image with inference-time
        guidance, which runs every stage on the conditional and the "no class" rows."""
        return args[0].shape[0] * (2 if kwargs.get("cfg") else 1)

    def _condition(self, n: int, y, w, device) -> torch.Tensor | None:
        """What is added to every stage's input: class (and scale) embeddings; None for an
        unconditional G."""
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("a class-conditional reverse model needs labels")
        c = self.class_emb(y)[:, None]
        if self.cfg.guidance_max:
            w = torch.zeros(n, device=device) if w is None else w
            c = c + self.scale_emb(w.to(c.dtype)[:, None])[:, None]
        return c

    def _stages(self) -> list[nn.ModuleList]:
        return [*self.stages, *([self.denoise] if len(self.denoise) else [])]

    def forward(
        self,
        z: torch.Tensor,
        keep_hidden: bool = False,
        y: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
        cfg: float = 0.0,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z (b, T, D) -> x^ (b, T, D) and, when asked, r_{K-1} .. r_0. ``y``: labels (b,) of a
        conditional G; ``w``: guidance scales (b,) of a G trained with guidance; ``cfg``: the
        scale of inference-time guidance, h <- (1 + cfg) stage(h | y) - cfg stage(h | none)
        after every stage (the paper's eq. 4; two evaluations per image)."""
        h = self.proj_in(z) + self.pos
        if cfg:
            return self._guided(h, y, cfg), []
        cond = self._condition(len(z), y, w, z.device)
        hidden = []
        for i, stage in enumerate(self._stages()):
            if cond is not None:
                h = h + cond
            for layer in stage:
                h = layer(h, causal=False)
            if cond is not None:  # the condition enters each stage but is not carried on
                h = h - cond
            if keep_hidden and i < len(self.stages):
                hidden.append(h)
        return self.proj_out(self.norm(h)), hidden

    def _guided(self, h: torch.Tensor, y: torch.Tensor | None, scale: float) -> torch.Tensor:
        if not self.num_classes or y is None:
            raise ValueError("inference-time guidance needs a class-conditional G and labels")
        n = len(h)
        cond = self.class_emb(torch.cat([y, torch.full_like(y, self.null)]))[:, None]
        for stage in self._stages():  # one call on [h; h] per stage: conditional, "no class"
            hh = torch.cat([h, h]) + cond
            for layer in stage:
                hh = layer(hh, causal=False)
            hh = hh - cond  # each branch's output state, without its condition
            c, u = hh[:n], hh[n:]
            h = c + scale * (c - u)
        return self.proj_out(self.norm(h))


@register("biflow")
class BiFlowSampler(Sampler):
    """x = G(z): one evaluation of the learned reverse model (guided or not)."""

    label = "BiFlow, learned reverse"

    needs = ("flow", "reverse")

    def __init__(
        self,
        reverse: ReverseModel,
        flow: TarFlow,
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ) -> None:
        self.g, self.flow = reverse.eval(), flow
        if problem := reverse_guidance_error(sampling.guidance, flow.cfg.num_classes, reverse.cfg):
            raise ValueError(problem)
        self.score_w = sampling.guidance if sampling.score_guidance == "guided" else 0.0
        super().__init__(device, sampling)

    @classmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        options: object = None,
    ) -> BiFlowSampler:
        return cls(models["reverse"], models["flow"], device, sampling)

    @classmethod
    def problems(cls, cfg: Any, device: torch.device) -> list[str]:
        w, n, b = cfg.sampling.guidance, cfg.tarflow.num_classes, cfg.biflow
        out = [p] if (p := reverse_guidance_error(w, n, b)) else []
        if b.feature_weight and (p := feature_problem(b)):
            out.append(p)
        return out + decode_problems(cfg, device)  # the run's fairness check decodes its flow

    def networks(self) -> list[nn.Module]:
        return [self.g]

    def noise_shape(self) -> tuple[int, ...]:
        return (self.flow.tokens, self.flow.dim)

    def num_classes(self) -> int:
        return self.flow.cfg.num_classes

    def num_params(self) -> int:
        """G without its alignment heads, which only training uses."""
        heads = self.g.training_only_params()
        return super().num_params() - heads

    def factors(self) -> Factors:
        c, conditional = self.g.cfg, bool(self.flow.cfg.num_classes)
        return Factors(
            reverse={"align": "aligned", "distill": "distilled"}[c.hidden]
            if c.align_weight
            else "naive",
            denoise="learned" if c.denoise else "none",
            norm_control=norm_control(self.flow.cfg, c.normalize_states),
            guidance=self.sampling.guidance,
            guidance_form=("training" if c.guidance_max else "inference") if conditional else "-",
            feature_loss=FEATURE_NET[c.feature_net] if c.feature_weight else "off",
            weighting="adaptive" if c.adaptive else "fixed",
            conditional="yes" if conditional else "no",
        )

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = self.sampling.guidance
        if self.g.cfg.guidance_max:  # training-time guidance: the scale is an input, 1 NFE
            tokens, _ = self.g(z, y=y, w=torch.full((len(z),), w, device=z.device))
        else:  # inference-time guidance (2 NFE) when w > 0
            tokens, _ = self.g(z, y=y, cfg=w)
        return self.flow.to_image(tokens)


@register("biflow_score")
class BiFlowScoreSampler(BiFlowSampler):
    """x = G(z), then the score step through the forward flow (for a G without learned
    denoising: the denoising ablation's "score" row). 1 + one flow forward/backward."""

    label = "BiFlow + score denoising"
    includes = "biflow"  # the same G, then the score step

    def networks(self) -> list[nn.Module]:
        return [self.g, self.flow]

    def factors(self) -> Factors:
        return replace(super().factors(), denoise="score")

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = super().generate(z, y)
        return tweedie_step(self.flow, x, self.flow.cfg.noise_std, y, self.score_w)


def _reverse_spec(cfg: Any, shape: Shape, models: Models, keys: Mapping[str, str]) -> dict:
    flow = models["flow"]
    n = cfg.tarflow.num_classes
    return checkpoint.spec_of(
        cfg.biflow,
        tokens=flow.tokens,
        dim=flow.dim,
        flow_blocks=cfg.tarflow.blocks,
        flow=keys["flow"],
        # conditional G: the class enters every stage (and leaves its output: 3; 2 carried it on
        # in the state), training-time guidance fits the implied conditional state (1 fitted
        # the guided forward flow's states)
        **({"num_classes": n, "objective": OBJECTIVE} if n else {}),
    )


def _reverse_example(g: ReverseModel, models: Models) -> tuple[tuple, dict]:
    flow, dev = models["flow"], next(g.parameters()).device
    y = torch.zeros(1, dtype=torch.long, device=dev) if g.num_classes else None
    return (torch.zeros(1, flow.tokens, flow.dim, device=dev),), ({"y": y} if g.num_classes else {})


def _reverse_objective(cfg: Any, models: Models, services: Services):
    b = cfg.biflow
    if not b.feature_weight:
        return biflow_objective(models["flow"])
    if b.feature_net != "cnn":
        dev = next(models["flow"].parameters()).device
        return biflow_objective(models["flow"], user_networks(b).to(dev))
    return biflow_objective(models["flow"], FeatureDistance(services.feature_net(cfg)))


def _key_extra(cfg: Any) -> tuple:
    """The feature network of G's loss, and for a conditional G the objective's version (the
    spec's ``objective``), so a G of an older objective is never loaded for a newer one."""
    version = (f"conditional objective {OBJECTIVE}",) if cfg.tarflow.num_classes else ()
    return (*feature_key(cfg), *version)


REVERSE = register_kind(
    ModelKind(
        name="reverse",
        checkpoint="biflow",
        title="biflow reverse",
        label="biflow reverse G",
        section="biflow",
        config=BiFlowConfig,
        train_section="biflow_train",
        build=lambda cfg, shape, models: ReverseModel(
            cfg.biflow,
            models["flow"].tokens,
            models["flow"].dim,
            cfg.tarflow.blocks,
            cfg.tarflow.num_classes,
        ),
        objective=_reverse_objective,
        spec=_reverse_spec,
        shrink=lambda c: replace(c, depth=1),  # one stage of one layer (+ the denoising stage)
        example=_reverse_example,
        needs=("flow",),
        key_extra=_key_extra,
        classes=lambda cfg: cfg.tarflow.num_classes,
    )
)
