"""TarFlow: an autoregressive transformer flow, its training loss, and exact causal decoding.

Block k maps tokens x -> z with z_t = (x_t - b_t) exp(-a_t), where (a_t, b_t) come from a causal
transformer over x_{<t} (the head's output is shifted right by one token, so token 0 passes
unchanged). Odd blocks see the tokens in reversed order. log|det dz/dx| = -sum(a).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import DEFAULT_SAMPLING, Sampler, SamplingConfig
from methods.registry import register
from methods.transformer import KVCache, Layer, patchify, unpatchify
from methods.validate import FieldError, check


@dataclass(frozen=True)
class TarFlowConfig:
    patch_size: int = 4  # pixels per patch side; image side must be divisible by it
    width: int = 96  # transformer width
    depth: int = 2  # transformer layers per flow block
    blocks: int = 4  # flow blocks K (token order flips between consecutive blocks)
    heads: int = 4  # attention heads
    mlp_ratio: int = 4  # MLP hidden width / width
    noise_std: float = 0.1  # sigma of the Gaussian noise added to training data
    norm_clip: float = 0.0  # norm control: soft clip of |a| and |b| to this bound; 0 = off

    def __post_init__(self) -> None:
        check(
            self,
            patch_size=(1, None),
            width=(1, None),
            depth=(1, None),
            blocks=(1, None),
            heads=(1, None),
            mlp_ratio=(1, None),
            noise_std=(0, None),
            norm_clip=(0, None),
        )
        if self.width % self.heads:
            raise FieldError("width", self.width, f"a multiple of heads ({self.heads})")


class CausalNet(nn.Module):
    """The network of one flow block: tokens (b, t, D) -> affine params (b, t, 2D) for t+1."""

    def __init__(self, cfg: TarFlowConfig, tokens: int, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(tokens, cfg.width) * 0.02)
        self.layers = nn.ModuleList(
            Layer(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.proj_out = nn.Linear(cfg.width, 2 * dim)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as the identity map
        nn.init.zeros_(self.proj_out.bias)
        self._compiled_step = None  # set by compile_step (sampling.compile)

    def compile_step(self, mode: str | None = None) -> None:
        """torch.compile the static-shape decoding step (the forward pass, the growing-cache and
        uncached paths stay eager). Batch 1 and larger batches compile once each."""
        self._compiled_step = torch.compile(self._forward, mode=mode, dynamic=True)

    def forward(
        self, x: torch.Tensor, caches: list[KVCache] | None = None, pos: int | torch.Tensor = 0
    ) -> torch.Tensor:
        if self._compiled_step is not None and isinstance(pos, torch.Tensor):
            return self._compiled_step(x, caches, pos)
        return self._forward(x, caches, pos)

    def _forward(
        self, x: torch.Tensor, caches: list[KVCache] | None, pos: int | torch.Tensor
    ) -> torch.Tensor:
        if isinstance(pos, torch.Tensor):  # a static-shape decoding step: one token at pos
            h = self.proj_in(x) + self.pos.index_select(0, pos)
        else:
            h = self.proj_in(x) + self.pos[pos : pos + x.shape[1]]
        for i, layer in enumerate(self.layers):
            h = layer(h, causal=True, cache=None if caches is None else caches[i], pos=pos)
        return self.proj_out(self.norm(h))


class FlowBlock(nn.Module):
    def __init__(self, cfg: TarFlowConfig, tokens: int, dim: int, flip: bool) -> None:
        super().__init__()
        self.cfg, self.flip = cfg, flip
        self.net = CausalNet(cfg, tokens, dim)

    def order(self, x: torch.Tensor) -> torch.Tensor:
        """Token permutation of this block (its own inverse)."""
        return x.flip(1) if self.flip else x

    def affine(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output (..., 2D) -> (a, b), soft-clipped when norm control is on."""
        c = self.cfg.norm_clip
        if c > 0:
            out = c * torch.tanh(out / c)
        a, b = out.chunk(2, dim=-1)
        return a, b

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, T, D) -> z (b, T, D) and log|det dz/dx| per image (b,)."""
        xp = self.order(x)
        out = self.net(xp)
        out = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)  # shift right by one
        a, b = self.affine(out)
        z = (xp - b) * torch.exp(-a)
        return self.order(z), -a.sum(dim=(1, 2))

    @torch.no_grad()
    def reverse(self, z: torch.Tensor, cached: bool = True, static: bool = False) -> torch.Tensor:
        """Exact inverse, one token at a time: x_{t+1} = z_{t+1} exp(a_{t+1}) + b_{t+1}.

        ``static``: every step has the same shapes (a full-length masked cache, the position
        as a tensor), which a compiled network needs to be compiled once, not once a step."""
        zp = self.order(z)
        n, t_total, _ = zp.shape
        x = torch.empty_like(zp)
        x[:, 0] = zp[:, 0]
        caches = None
        if cached:
            hd = self.cfg.width // self.cfg.heads
            caches = [KVCache(n, self.cfg.heads, t_total, hd, zp, static) for _ in self.net.layers]
        positions = torch.arange(t_total, device=z.device)
        for t in range(t_total - 1):
            if cached:
                pos = positions[t : t + 1] if static else t
                out = self.net(x[:, t : t + 1], caches, pos=pos)[:, 0]  # (b, 2D)
            else:
                out = self.net(x[:, : t + 1])[:, -1]
            a, b = self.affine(out)
            x[:, t + 1] = zp[:, t + 1] * torch.exp(a) + b
        return self.order(x)


def jacobi_reverse_block(
    block: FlowBlock, z: torch.Tensor, tol: float, max_iters: int, segment: int = 0
) -> tuple[torch.Tensor, int]:
    """Invert one flow block by Jacobi (fixed-point) iteration instead of token by token.

    x = z exp(a(x)) + b(x) with (a, b) of token t depending on x_{<t} only: start from x = z,
    evaluate the block's network on the whole current guess in parallel, update every token,
    repeat until the largest change is below ``tol`` (absolute, in data units) or after
    ``max_iters`` evaluations. The causal structure makes T - 1 evaluations exact, so the cap
    never needs to exceed that. ``segment`` > 0 solves ``segment`` tokens at a time, each segment
    iterated to convergence with the prefix before it fixed (the network then sees the prefix
    and the segment). Returns x and the number of network evaluations used.
    """
    zp = block.order(z)
    n_tokens = zp.shape[1]
    x = zp.clone()
    evals = 0
    size = segment or n_tokens
    for start in range(1, n_tokens, size):  # token 0 passes unchanged
        stop = min(n_tokens, start + size)
        for _ in range(max_iters):
            out = block.net(x[:, : stop - 1])  # params for tokens 1 .. stop-1
            evals += 1
            a, b = block.affine(out[:, start - 1 : stop - 1])
            new = zp[:, start:stop] * torch.exp(a) + b
            change = (new - x[:, start:stop]).abs().max().item()
            x[:, start:stop] = new
            if change < tol:
                break
    return block.order(x), evals


class TarFlow(nn.Module):
    """K flow blocks over patch tokens. ``forward`` is data -> noise (the direction trained)."""

    def __init__(self, cfg: TarFlowConfig, channels: int, image_size: int) -> None:
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(
                f"image size {image_size} is not divisible by tarflow.patch_size {cfg.patch_size}"
            )
        self.cfg, self.channels, self.image_size = cfg, channels, image_size
        self.tokens = (image_size // cfg.patch_size) ** 2
        self.dim = channels * cfg.patch_size**2
        self.blocks = nn.ModuleList(
            FlowBlock(cfg, self.tokens, self.dim, flip=k % 2 == 1) for k in range(cfg.blocks)
        )

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.cfg.patch_size)

    def to_image(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        return unpatchify(tokens, self.cfg.patch_size, self.channels, s, s)

    def forward(
        self, x: torch.Tensor, keep_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Image x (b, C, H, W) -> tokens z (b, T, D), log-det per image (b,), and, when asked,
        the states after every block h_0 = tokens(x), h_1, ..., h_K = z."""
        h = self.to_tokens(x)
        states = [h] if keep_states else []
        logdet = torch.zeros(x.shape[0], device=x.device)
        for block in self.blocks:
            h, ld = block(h)
            logdet = logdet + ld
            if keep_states:
                states.append(h)
        return h, logdet, states

    @torch.no_grad()
    def reverse(self, z: torch.Tensor, cached: bool = True, static: bool = False) -> torch.Tensor:
        """Noise tokens z (b, T, D) -> image (b, C, H, W) by exact causal decoding."""
        for block in reversed(self.blocks):
            z = block.reverse(z, cached=cached, static=static)
        return self.to_image(z)

    @torch.no_grad()
    def reverse_jacobi(
        self, z: torch.Tensor, tol: float = 1e-6, max_iters: int = 0, segment: int = 0
    ) -> tuple[torch.Tensor, list[int]]:
        """Noise tokens -> image by Jacobi decoding of every block (``max_iters`` 0: T - 1, the
        count at which the iteration is exact); also returns each block's evaluations."""
        cap = max_iters or self.tokens - 1
        used = []
        for block in reversed(self.blocks):
            z, n = jacobi_reverse_block(block, z, tol, cap, segment)
            used.append(n)
        return self.to_image(z), used

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per image in nats, under a standard normal prior on z."""
        z, logdet, _ = self(x)
        prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(dim=(1, 2))
        return prior + logdet

    def nll_loss(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """Training loss per dimension: 0.5 mean(z^2) - mean(logdet) (constants dropped)."""
        return nll(*self(x_noisy)[:2])

    def networks(self) -> list[nn.Module]:
        """Units of network evaluation: the whole flow (a parallel pass) and each block's net."""
        return [self, *(b.net for b in self.blocks)]


def nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """The NLL per dimension from a forward pass's outputs (constants dropped)."""
    return 0.5 * z.pow(2).mean() - logdet.mean() / z[0].numel()


def nll_objective(noise_std: float):
    """The training loss ``loss(net, x, eps)`` of a TarFlow: NLL of x + noise_std * eps, with the
    forward pass through ``net`` (the flow, or its DistributedDataParallel wrapper)."""

    def loss(net: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return nll(*net(x + noise_std * eps)[:2])

    return loss


def bits_per_dim(flow: TarFlow, x: torch.Tensor, generator: torch.Generator) -> float:
    """Bits/dim of the noise-augmented data x + sigma*eps, in 8-bit pixel units.

    x lives in [-1, 1] (pixel/127.5 - 1); the change of variables to [0, 256) pixel units adds
    log(127.5) nats per dimension. The Gaussian noise (sigma = flow.cfg.noise_std) plays the role
    of dequantisation, so this is the likelihood of the noisy data the flow was trained on.
    """
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    xn = x + flow.cfg.noise_std * eps
    with torch.no_grad():
        lp = flow.log_prob(xn)
    d = x[0].numel()
    nats = -lp.mean().item() / d + math.log(127.5)
    return nats / math.log(2)


@register("tarflow")
class TarFlowSampler(Sampler):
    """Exact causal decoding with a key/value cache: K x (T - 1) sequential evaluations."""

    needs = ("flow",)

    def __init__(
        self, flow: TarFlow, device: torch.device, sampling: SamplingConfig = DEFAULT_SAMPLING
    ) -> None:
        self.flow = flow.eval()
        self.cached = sampling.kv_cache
        # A compiled decoding step needs the same shapes every step: see KVCache. (compile
        # implies kv_cache: SamplingConfig refuses one without the other.)
        self.static = sampling.compile
        super().__init__(device, sampling)

    @classmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ) -> TarFlowSampler:
        return cls(models["flow"], device, sampling)

    def networks(self) -> list[nn.Module]:
        return self.flow.networks()

    def compile_targets(self) -> list[nn.Module]:
        """The decoding step: each block's network (the score step's pass stays eager)."""
        return [b.net for b in self.flow.blocks]

    def noise_shape(self) -> tuple[int, ...]:
        return (self.flow.tokens, self.flow.dim)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.reverse(z, cached=self.cached, static=self.static)
