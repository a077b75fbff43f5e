"""Score-denoised TarFlow: exact decoding, then one Tweedie step x + sigma^2 grad log p(x).

The flow was trained on data plus N(0, sigma^2) noise, so its exact samples are noisy; Tweedie's
formula E[x | x~] = x~ + sigma^2 grad log p(x~) removes that noise, with the score computed by
autograd through the flow's own log-likelihood (one forward and one backward pass).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from methods.base import Factors
from methods.flow import TarFlow
from methods.registry import register
from methods.tarflow import TarFlowSampler


def tweedie_step(
    flow: TarFlow,
    x: torch.Tensor,
    sigma: float,
    y: torch.Tensor | None = None,
    w: float = 0.0,
) -> torch.Tensor:
    """x + sigma^2 * grad_x log p(x) for a batch of images (b, C, H, W); with labels ``y``, the
    conditional model's score, and with a guidance scale ``w`` too, the guided flow's."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        x = leaf.clone()  # a non-leaf input keeps module-tracking tools (FLOP counting) working
        (score,) = torch.autograd.grad(flow.log_prob(x, y, w).sum(), x)
    return (leaf + sigma**2 * score).detach()


@register("tarflow_score")
class ScoreDenoiseSampler(TarFlowSampler):
    """K x (T - 1) decoding evaluations plus one forward/backward pass of the whole flow."""

    label = "TarFlow + score denoising"
    includes = "tarflow"  # the same decode, then the score step

    def factors(self) -> Factors:
        return replace(super().factors(), denoise="score")

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.decode(z, y)
        return tweedie_step(self.flow, x, self.flow.cfg.noise_std, y, self.score_w)
