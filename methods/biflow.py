"""BiFlow: a learned, non-causal reverse model G trained against a frozen TarFlow F.

F maps noisy data x~ = x + sigma*eps through states h_0 = x~, h_1, ..., h_K = z. G takes z, runs
K bidirectional transformer stages whose outputs r_{K-1}, ..., r_0 are aligned (through small
projection heads) with h_{K-1}, ..., h_0, then one extra denoising stage whose output x^ is
compared with the clean x. Sampling is x = G(z) with z ~ N(0, I): one network evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods import dist
from methods.base import DEFAULT_SAMPLING, Sampler, SamplingConfig
from methods.registry import register
from methods.tarflow import TarFlow
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

    def __post_init__(self) -> None:
        check(
            self,
            width=(1, None),
            depth=(1, None),
            heads=(1, None),
            mlp_ratio=(1, None),
            align_weight=(0, None),
            recon_weight=(0, None),
        )
        if self.width % self.heads:
            raise FieldError("width", self.width, f"a multiple of heads ({self.heads})")


class ReverseModel(nn.Module):
    """G: noise tokens (b, T, D) -> image tokens (b, T, D), with bidirectional attention."""

    def __init__(self, cfg: BiFlowConfig, tokens: int, dim: int, flow_blocks: int) -> None:
        super().__init__()
        self.cfg = cfg

        def stage() -> nn.ModuleList:
            return nn.ModuleList(
                Layer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
            )

        self.proj_in = nn.Linear(dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(tokens, cfg.width) * 0.02)
        self.stages = nn.ModuleList(stage() for _ in range(flow_blocks))  # r_{K-1}, ..., r_0
        self.denoise = stage()  # learned denoising: r_0 (noisy) -> x^ (clean)
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
        self, z: torch.Tensor, keep_hidden: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.proj_in(z) + self.pos
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
    g: nn.Module, flow: TarFlow, x: torch.Tensor, eps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Hidden alignment and reconstruction losses for clean images x (b, C, H, W) in [-1, 1]
    and standard normal noise eps of the same shape. ``g`` is the ReverseModel, or its
    DistributedDataParallel wrapper (whose forward must be the call that runs G)."""
    with torch.no_grad():
        z, _, states = flow(x + flow.cfg.noise_std * eps, keep_states=True)  # h_0 .. h_K
    x_hat, hidden = g(z, keep_hidden=True)
    g = getattr(g, "module", g)
    k = len(g.stages)
    align = (
        sum(
            normalised_mse(head(r), states[k - 1 - j])
            for j, (head, r) in enumerate(zip(g.align_heads, hidden, strict=True))
        )
        / k
    )
    recon = F.mse_loss(x_hat, flow.to_tokens(x))
    total = g.cfg.align_weight * align + g.cfg.recon_weight * recon
    return {"loss": total, "align": align.detach(), "recon": recon.detach()}


def biflow_objective(flow: TarFlow):
    """The training loss ``loss(net, x, eps)`` of a reverse model against the frozen ``flow``."""

    def loss(net: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return biflow_losses(net, flow, x, eps)["loss"]

    return loss


@torch.no_grad()
def inversion_error(
    g: ReverseModel, flow: TarFlow, x: torch.Tensor, g_noise: torch.Generator
) -> dict[str, float]:
    """How well G inverts F, as relative L2 errors.

    On held-out images x: G(F(x~)) against x~ = x + sigma*eps and against the clean x. On prior
    noise z ~ N(0, I) (what sampling feeds G; at most 256 draws): G(z) against the exact inverse
    F^-1(z), with G's output denoised and F^-1's not, so part of that gap is the denoising G
    learned.
    """
    eps = torch.randn(x.shape, generator=g_noise).to(x.device)
    xn = flow.to_tokens(x + flow.cfg.noise_std * eps)
    z, _, _ = flow(flow.to_image(xn))
    out, _ = g(z)
    clean = flow.to_tokens(x)
    # The exact inverse is a full causal decode: 256 prior draws are plenty for a relative error.
    prior = torch.randn(z[:256].shape, generator=g_noise).to(x.device)
    exact = flow.to_tokens(flow.reverse(prior))
    learned, _ = g(prior)
    return {
        "rel_err_vs_noisy": ((out - xn).norm() / xn.norm()).item(),
        "rel_err_vs_clean": ((out - clean).norm() / clean.norm()).item(),
        "rel_err_vs_exact_inverse_on_prior": ((learned - exact).norm() / exact.norm()).item(),
        "prior_draws": len(prior),
    }


@register("biflow")
class BiFlowSampler(Sampler):
    """x = G(z): one evaluation of the learned reverse model."""

    needs = ("flow", "reverse")

    def __init__(
        self,
        reverse: ReverseModel,
        flow: TarFlow,
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ) -> None:
        self.g, self.flow = reverse.eval(), flow
        super().__init__(device, sampling)

    @classmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ) -> BiFlowSampler:
        return cls(models["reverse"], models["flow"], device, sampling)

    def networks(self) -> list[nn.Module]:
        return [self.g]

    def noise_shape(self) -> tuple[int, ...]:
        return (self.flow.tokens, self.flow.dim)

    def num_params(self) -> int:
        """G without its alignment heads, which only training uses."""
        heads = self.g.training_only_params()
        return super().num_params() - heads

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.g(z)
        return self.flow.to_image(tokens)
