"""BiFlow: a learned, non-causal reverse model G trained against a frozen TarFlow F.

F maps noisy data x~ = x + sigma*eps through states h_0 = x~, h_1, ..., h_K = z. G takes z, runs
K bidirectional transformer stages whose outputs r_{K-1}, ..., r_0 are aligned (through small
projection heads) with h_{K-1}, ..., h_0, then one extra denoising stage whose output x^ is
compared with the clean x. Sampling is x = G(z) with z ~ N(0, I): one network evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods import checkpoint, dist
from methods.base import DEFAULT_SAMPLING, Factors, Sampler, SamplingConfig
from methods.flow import TarFlow, guidance_error
from methods.kinds import ModelKind, Models, Services, Shape, register_kind
from methods.registry import register
from methods.score_denoise import tweedie_step
from methods.tarflow import decode_problems
from methods.training import Labels
from methods.transformer import Layer
from methods.validate import FieldError, check


@dataclass(frozen=True)
class BiFlowConfig:
    width: int = 96  # transformer width of G
    depth: int = 2  # layers per reverse stage (there are K stages plus one denoising stage)
    heads: int = 4  # attention heads
    mlp_ratio: int = 4  # MLP hidden width / width
    align_weight: float = 1.0  # weight of the hidden-alignment loss; 0 = naive distillation
    recon_weight: float = 1.0  # weight of the reconstruction loss on the clean image
    denoise: bool = True  # learned denoising stage, output matched to the clean x; off: G ends
    # at r_0 and its output is matched to the noisy x~ (the exact inverse's target)
    feature_weight: float = 0.0  # feature (perceptual) loss on the output; needs a feature net
    guidance_max: float = 0.0  # training-time guidance: w ~ U[0, guidance_max] per image is an
    # input of G, which follows the guided flow (class-conditional flows only); 0 = off

    # Added after checkpoints were shipped: left out of cache keys while at their defaults.
    LATER_FIELDS = ("denoise", "feature_weight", "guidance_max")

    def __post_init__(self) -> None:
        check(
            self,
            width=(1, None),
            depth=(1, None),
            heads=(1, None),
            mlp_ratio=(1, None),
            align_weight=(0, None),
            recon_weight=(0, None),
            feature_weight=(0, None),
            guidance_max=(0, None),
        )
        if self.width % self.heads:
            raise FieldError("width", self.width, f"a multiple of heads ({self.heads})")


class ReverseModel(nn.Module):
    """G: noise tokens (b, T, D) -> image tokens (b, T, D), with bidirectional attention.

    Class-conditional (``num_classes`` > 0): a class embedding is added to every token; with
    training-time guidance, an embedding of the guidance scale w too, so a guided sample is
    still one evaluation."""

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
        self.cfg, self.num_classes = cfg, num_classes

        def stage() -> nn.ModuleList:
            return nn.ModuleList(
                Layer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
            )

        self.proj_in = nn.Linear(dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(tokens, cfg.width) * 0.02)
        if num_classes:
            self.class_emb = nn.Embedding(num_classes, cfg.width)
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
        self.align_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, dim))
            for _ in range(flow_blocks)
        )

    def training_only_params(self) -> int:
        """Parameters of the alignment heads: used by the loss, never by sampling."""
        return sum(p.numel() for p in self.align_heads.parameters())

    def forward(
        self,
        z: torch.Tensor,
        keep_hidden: bool = False,
        y: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z (b, T, D) -> x^ (b, T, D) and, when asked, r_{K-1} .. r_0. ``y``: labels (b,) of a
        conditional G; ``w``: guidance scales (b,) of a G trained with guidance."""
        h = self.proj_in(z) + self.pos
        if self.num_classes:
            if y is None:
                raise ValueError("a class-conditional reverse model needs labels")
            h = h + self.class_emb(y)[:, None]
        if self.cfg.guidance_max:
            w = torch.zeros(len(z), device=z.device) if w is None else w
            h = h + self.scale_emb(w.to(h.dtype)[:, None])[:, None]
        hidden = []
        for stage in self.stages:
            for layer in stage:
                h = layer(h, causal=False)
            if keep_hidden:
                hidden.append(h)
        for layer in self.denoise:
            h = layer(h, causal=False)
        return self.proj_out(self.norm(h)), hidden


def normalised_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE divided by the target's variance over the batch, so no state's scale dominates (the
    whole batch's variance under torchrun, where each rank holds a share of the batch)."""
    return F.mse_loss(pred, target) / dist.variance(target.detach()).clamp_min(1e-6)


def biflow_losses(
    g: nn.Module,
    flow: TarFlow,
    x: torch.Tensor,
    eps: torch.Tensor,
    labels: Labels | None = None,
    features: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Hidden alignment, reconstruction and (optional) feature losses for clean images x
    (b, C, H, W) in [-1, 1] and standard normal noise eps of the same shape. ``g`` is the
    ReverseModel, or its DistributedDataParallel wrapper (whose forward must be the call that
    runs G). Conditional: ``labels`` give y, and with training-time guidance the scale
    w = u * guidance_max of each image; G then follows the guided flow's states. ``features``:
    images in [-1, 1] -> feature vectors, for the feature loss (biflow.feature_weight)."""
    cfg = getattr(g, "module", g).cfg
    y = w = None
    if flow.cfg.num_classes:
        if labels is None:
            raise ValueError("a class-conditional flow needs labelled training data")
        y = labels.y
        if cfg.guidance_max:
            w = labels.u * cfg.guidance_max
    x_noisy = x + flow.cfg.noise_std * eps
    with torch.no_grad():  # h_0 .. h_K of the (guided) forward flow
        z, _, states = flow(x_noisy, keep_states=True, y=y, w=0.0 if w is None else w)
    x_hat, hidden = g(z, keep_hidden=True, y=y, w=w)
    g = getattr(g, "module", g)
    k = len(g.stages)
    align = (
        sum(
            normalised_mse(head(r), states[k - 1 - j])
            for j, (head, r) in enumerate(zip(g.align_heads, hidden, strict=True))
        )
        / k
    )
    target = x if cfg.denoise else x_noisy  # learned denoising: the clean image
    recon = F.mse_loss(x_hat, flow.to_tokens(target))
    total = cfg.align_weight * align + cfg.recon_weight * recon
    out = {"align": align.detach(), "recon": recon.detach()}
    if cfg.feature_weight:
        if features is None:
            raise ValueError("biflow.feature_weight > 0 needs a feature network")
        f_hat = features(flow.to_image(x_hat))
        with torch.no_grad():
            f_ref = features(target)
        feat = normalised_mse(f_hat, f_ref)
        total = total + cfg.feature_weight * feat
        out["feature"] = feat.detach()
    return {"loss": total, **out}


def biflow_objective(flow: TarFlow, features: nn.Module | None = None):
    """The training loss ``loss(net, x, eps, labels)`` of a reverse model against the frozen
    ``flow`` (and the frozen ``features`` network of the feature loss)."""

    def loss(
        net: nn.Module, x: torch.Tensor, eps: torch.Tensor, labels: Labels | None = None
    ) -> torch.Tensor:
        return biflow_losses(net, flow, x, eps, labels, features)["loss"]

    return loss


@torch.no_grad()
def inversion_error(
    g: ReverseModel,
    flow: TarFlow,
    x: torch.Tensor,
    g_noise: torch.Generator,
    y: torch.Tensor | None = None,
) -> dict[str, float]:
    """How well G inverts F, as relative L2 errors.

    On held-out images x: G(F(x~)) against x~ = x + sigma*eps and against the clean x. On prior
    noise z ~ N(0, I) (what sampling feeds G; at most 256 draws): G(z) against the exact inverse
    F^-1(z), with G's output denoised and F^-1's not, so part of that gap is the denoising G
    learned. Conditional models: ``y`` are the images' labels (the prior draws take the first
    ones), without guidance.
    """
    eps = torch.randn(x.shape, generator=g_noise).to(x.device)
    xn = flow.to_tokens(x + flow.cfg.noise_std * eps)
    z, _, _ = flow(flow.to_image(xn), y=y)
    out, _ = g(z, y=y)
    clean = flow.to_tokens(x)
    # The exact inverse is a full causal decode: 256 prior draws are plenty for a relative error.
    prior = torch.randn(z[:256].shape, generator=g_noise).to(x.device)
    y_prior = None if y is None else y[:256]
    exact = flow.to_tokens(flow.reverse(prior, y=y_prior))
    learned, _ = g(prior, y=y_prior)
    return {
        "rel_err_vs_noisy": ((out - xn).norm() / xn.norm()).item(),
        "rel_err_vs_clean": ((out - clean).norm() / clean.norm()).item(),
        "rel_err_vs_exact_inverse_on_prior": ((learned - exact).norm() / exact.norm()).item(),
        "prior_draws": len(prior),
    }


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
        gmax = reverse.cfg.guidance_max
        if problem := guidance_error(sampling.guidance, flow.cfg.num_classes, gmax):
            raise ValueError(problem)
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
        w, n, gmax = cfg.sampling.guidance, cfg.tarflow.num_classes, cfg.biflow.guidance_max
        out = [p] if (p := guidance_error(w, n, gmax)) else []
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
        c = self.g.cfg
        return Factors(
            reverse="aligned" if c.align_weight > 0 else "naive",
            denoise="learned" if c.denoise else "none",
            norm_control="on" if self.flow.cfg.norm_clip > 0 else "off",
            guidance=self.sampling.guidance,
            feature_loss=FEATURE_NET if c.feature_weight else "off",
            conditional="yes" if self.flow.cfg.num_classes else "no",
        )

    def _scales(self, z: torch.Tensor) -> torch.Tensor | None:
        if not self.g.cfg.guidance_max:
            return None
        return torch.full((len(z),), self.sampling.guidance, device=z.device)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        tokens, _ = self.g(z, y=y, w=self._scales(z))
        return self.flow.to_image(tokens)


@register("biflow_score")
class BiFlowScoreSampler(BiFlowSampler):
    """x = G(z), then the score step through the forward flow (for a G without learned
    denoising: the denoising ablation's "score" row). 1 + one flow forward/backward."""

    label = "BiFlow + score denoising"

    def networks(self) -> list[nn.Module]:
        return [self.g, self.flow]

    def factors(self) -> Factors:
        return replace(super().factors(), denoise="score")

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = super().generate(z, y)
        return tweedie_step(self.flow, x, self.flow.cfg.noise_std, y, self.sampling.guidance)


# What the feature loss compares (bench.models trains it; the report says which it is).
FEATURE_NET = "independent CNN"


def feature_classifier_config(cfg: Any) -> Any:
    """The network of the feature loss: a CNN trained like the domain classifier
    (``cfg.classifier``) but narrower and from another seed, so the loss never optimises the
    network that scores FID."""
    c = cfg.classifier
    return replace(c, width=max(8, c.width * 2 // 3), seed=c.seed + 1)


def _reverse_spec(cfg: Any, shape: Shape, models: Models, keys: Mapping[str, str]) -> dict:
    flow = models["flow"]
    n = cfg.tarflow.num_classes
    return checkpoint.spec_of(
        cfg.biflow,
        tokens=flow.tokens,
        dim=flow.dim,
        flow_blocks=cfg.tarflow.blocks,
        flow=keys["flow"],
        **({"num_classes": n} if n else {}),
    )


def _reverse_example(g: ReverseModel, models: Models) -> tuple[tuple, dict]:
    flow, dev = models["flow"], next(g.parameters()).device
    y = torch.zeros(1, dtype=torch.long, device=dev) if g.num_classes else None
    return (torch.zeros(1, flow.tokens, flow.dim, device=dev),), ({"y": y} if g.num_classes else {})


def _reverse_objective(cfg: Any, models: Models, services: Services):
    features = services.feature_net(cfg) if cfg.biflow.feature_weight else None
    return biflow_objective(models["flow"], features)


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
        key_extra=lambda cfg: (
            (feature_classifier_config(cfg),) if cfg.biflow.feature_weight else ()
        ),
        classes=lambda cfg: cfg.tarflow.num_classes,
    )
)
