"""Jacobi decoding: the TarFlow inverse by parallel fixed-point iteration instead of token by token.

Block k's inverse solves x = z exp(a(x)) + b(x), where (a, b) of token t depend on x_{<t} only.
Start from x = z, evaluate the block's network on the whole current guess at once, update every
token, and repeat. After j iterations the first j + 1 tokens are exact, so T - 1 iterations are
always exact; the point is that far fewer usually get within a tolerance. Each image stops when
its own largest change falls below the tolerance (so image i still depends on seed i only, not
on what else is in the batch), and later iterations run on the images still moving.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from methods.base import DEFAULT_SAMPLING, Factors, SamplingConfig
from methods.flow import FlowBlock, TarFlow
from methods.registry import register
from methods.tarflow import TarFlowSampler
from methods.validate import check


@torch.no_grad()
def jacobi_reverse_block(
    block: FlowBlock,
    z: torch.Tensor,
    tol: float,
    max_iters: int,
    segment: int = 0,
    y: torch.Tensor | None = None,
    w: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert one flow block by Jacobi iteration.

    Iterates until an image's largest change (absolute, data units) is below ``tol`` or after
    ``max_iters`` evaluations. ``segment`` > 0 solves that many tokens at a time, each segment
    iterated to convergence with the prefix before it fixed (the network sees prefix + segment).
    Guidance (labels ``y``, scale ``w``) as in :meth:`FlowBlock.params`. Returns x (b, T, D) and
    the network evaluations each image took (b,), summed over segments.
    """
    zp = block.order(z)
    n, n_tokens, _ = zp.shape
    x = zp.clone()
    evals = torch.zeros(n, dtype=torch.long)
    size = segment or n_tokens
    for start in range(1, n_tokens, size):  # token 0 passes unchanged
        stop = min(n_tokens, start + size)
        active = torch.arange(n, device=z.device)
        for _ in range(max_iters):
            a, b = block.params(x[active, : stop - 1], None if y is None else y[active], w)
            a, b = a[:, start - 1 :], b[:, start - 1 :]  # params for tokens start .. stop-1
            new = zp[active, start:stop] * torch.exp(a) + b
            change = (new - x[active, start:stop]).abs().amax(dim=(1, 2))  # (active,)
            x[active, start:stop] = new
            evals[active.cpu()] += 1
            active = active[change >= tol]
            if not len(active):
                break
    return block.order(x), evals


@torch.no_grad()
def jacobi_reverse(
    flow: TarFlow,
    z: torch.Tensor,
    tol: float,
    max_iters: int = 0,
    segment: int = 0,
    y: torch.Tensor | None = None,
    w: float = 0.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Noise tokens -> image by Jacobi decoding of every block, last block first. ``max_iters``
    0: the count at which the iteration is exact (T - 1, or the segment length). Also returns
    each block's evaluations per image."""
    cap = max_iters or min(segment or flow.tokens - 1, flow.tokens - 1)
    used = []
    for block in reversed(flow.blocks):
        z, n = jacobi_reverse_block(block, z, tol, cap, segment, y, w)
        used.append(n)
    return flow.to_image(z), used


@dataclass(frozen=True)
class JacobiConfig:
    """The ``jacobi`` section: options of Jacobi decoding only."""

    tol: float = 1e-3  # stop a block when no value changes more than this (data units)
    max_iters: int = 0  # iteration cap per block; 0 = T - 1 (exact)
    segment: int = 0  # tokens solved at a time; 0 = all at once

    def __post_init__(self) -> None:
        check(self, tol=(0, None), max_iters=(0, None), segment=(0, None))


@register("tarflow_jacobi")
class JacobiSampler(TarFlowSampler):
    """TarFlow decoded by Jacobi iteration (the ``jacobi`` section). Its NFE is the iterations
    images actually took, counted by the same hooks: it varies from batch to batch, so the table
    reports the mean per image (and ``nfe_max``)."""

    label = "TarFlow, Jacobi decoding"
    options = ("jacobi", JacobiConfig)
    fixed_nfe = False
    DEVIATION_DRAWS = 64  # prior draws for the deviation from the exact inverse

    def __init__(
        self,
        flow: TarFlow,
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        options: JacobiConfig | None = None,
    ) -> None:
        self.jacobi = options or JacobiConfig()
        super().__init__(flow, device, sampling)
        if self.guidance and self.schedule != "constant":
            raise ValueError("Jacobi decoding guides every token alike: use a constant schedule")

    @classmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        options: JacobiConfig | None = None,
    ) -> JacobiSampler:
        return cls(models["flow"], device, sampling, options)

    @classmethod
    def problems(cls, cfg: Any, device: torch.device) -> list[str]:
        s = cfg.sampling
        out = super().problems(cfg, device)
        if s.guidance and s.guidance_schedule != "constant":
            out.append(
                f"sampling.guidance_schedule: got {s.guidance_schedule!r}; Jacobi decoding "
                "(tarflow_jacobi) guides every token alike; allowed: 'constant'"
            )
        return out

    def factors(self) -> Factors:
        return replace(super().factors(), reverse="jacobi")

    def _solve(
        self, z: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        j = self.jacobi
        return jacobi_reverse(self.flow, z, j.tol, j.max_iters, j.segment, y, self.guidance)

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self._solve(z, y)[0]

    def diagnostics(self, seeds: list[int]) -> dict[str, float]:
        """Relative L2 deviation of Jacobi decoding from exact causal decoding of the same noise
        (the first ``DEVIATION_DRAWS`` seeds), and the evaluations per block per image."""
        z, y = self.inputs(seeds[: self.DEVIATION_DRAWS])
        with self._precision():  # as the scored images were drawn
            x, used = self._solve(z, y)
            exact = self.flow.reverse(z, y=y, w=self.guidance)
        return {
            "jacobi_rel_err": ((x - exact).norm() / exact.norm()).item(),
            "jacobi_iters_per_block": [round(n.float().mean().item(), 2) for n in used],
            "jacobi_deviation_draws": len(z),
        }
