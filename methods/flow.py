"""The TarFlow network: an autoregressive transformer flow and its exact inverse.

Block k maps tokens x -> z with z_t = (x_t - b_t) exp(-a_t), where (a_t, b_t) come from a causal
transformer over x_{<t} (the head's output is shifted right by one token, so token 0 passes
unchanged). Odd blocks see the tokens in reversed order. log|det dz/dx| = -sum(a). The inverse
recovers one token at a time (causal decoding), with a key/value cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.transformer import KVCache, Layer, layer_norm, patchify, unpatchify
from methods.validate import FieldError, check

CLIP_MODES = ("hard", "soft")


@dataclass(frozen=True)
class TarFlowConfig:
    patch_size: int = 4  # pixels per patch side; image side must be divisible by it
    width: int = 96  # transformer width
    depth: int = 2  # transformer layers per flow block
    blocks: int = 4  # flow blocks K (token order flips between consecutive blocks)
    heads: int = 4  # attention heads
    mlp_ratio: int = 4  # MLP hidden width / width
    noise_std: float = 0.1  # sigma of the Gaussian noise added to training data
    norm_clip: float = 0.0  # norm control: clip of each block's a and b to [-c, c]; 0 = off
    # hard: clamp to [-c, c], as the BiFlow paper's norm control; soft: c tanh(a / c) (smooth,
    # this project's first form, kept as an option)
    clip_mode: str = "soft"
    num_classes: int = 0  # class-conditional with this many classes (class embedding); 0 = off
    label_drop: float = 0.1  # conditional training: share of labels replaced by "no class"

    # Added after checkpoints were shipped: left out of cache keys while at their defaults.
    LATER_FIELDS = ("num_classes", "label_drop", "clip_mode")

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
            num_classes=(0, None),
            label_drop=(0, 1),
            clip_mode=CLIP_MODES,
        )
        if self.width % self.heads:
            raise FieldError("width", self.width, f"a multiple of heads ({self.heads})")


class CausalNet(nn.Module):
    """The network of one flow block: tokens (b, t, D) -> affine params (b, t, 2D) for t+1.

    Class-conditional (``num_classes`` > 0): a class embedding is added to every token; label
    ``num_classes`` means "no class" (the unconditional model of classifier-free guidance)."""

    def __init__(self, cfg: TarFlowConfig, tokens: int, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(tokens, cfg.width) * 0.02)
        self.classes = cfg.num_classes
        if cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.width)
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
        self,
        x: torch.Tensor,
        caches: list[KVCache] | None = None,
        pos: int | torch.Tensor = 0,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._compiled_step is not None and isinstance(pos, torch.Tensor):
            return self._compiled_step(x, caches, pos, y)
        return self._forward(x, caches, pos, y)

    def _forward(
        self,
        x: torch.Tensor,
        caches: list[KVCache] | None,
        pos: int | torch.Tensor,
        y: torch.Tensor | None,
    ) -> torch.Tensor:
        if caches is not None:  # decoding: one token per sequence, (b, 1, D), at position pos
            return self._step(x[:, 0], caches, pos, y)[:, None]
        h = self.proj_in(x) + self.pos[pos : pos + x.shape[1]]
        if self.classes:
            h = h + self.class_emb(self._labels(x, y))[:, None]
        for layer in self.layers:
            h = layer(h, causal=True)
        return self.proj_out(self.norm(h))

    def _step(
        self,
        x: torch.Tensor,
        caches: list[KVCache],
        pos: int | torch.Tensor,
        y: torch.Tensor | None,
    ) -> torch.Tensor:
        """The same network on one token per sequence, x (b, D), attending to the caches. Kept
        as flat (b, width) rows: the decode runs it K x (T - 1) times, so every view counts."""
        h = F.linear(x, self.proj_in.weight, self.proj_in.bias)
        if isinstance(pos, torch.Tensor):  # static shapes (compiled): the position as a tensor
            h = h + self.pos.index_select(0, pos)
        else:
            h = h + self.pos[pos]
        if self.classes:
            h = h + self.class_emb(self._labels(x, y))
        for layer, cache in zip(self.layers, caches, strict=True):
            h = layer.step(h, cache, pos)
        return F.linear(layer_norm(self.norm, h), self.proj_out.weight, self.proj_out.bias)

    def _labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Class labels, or "no class" for every image (the unconditional model)."""
        if y is None:
            return torch.full((x.shape[0],), self.classes, dtype=torch.long, device=x.device)
        return y


def guidance_error(w: float, num_classes: int, guidance_max: float | None = None) -> str:
    """Why sampling with guidance scale ``w`` cannot be honoured ("" when it can): guidance
    needs a class-conditional flow, and a reverse model (``guidance_max`` given) a scale within
    those it was trained with."""
    if not w:
        return ""
    if not num_classes:
        also = (
            " and a reverse model trained with it (biflow.guidance_max > 0)"
            if guidance_max is not None
            else ""
        )
        return (
            f"sampling.guidance: got {w}; classifier-free guidance needs a class-conditional "
            f"flow (tarflow.num_classes > 0){also}; allowed: 0"
        )
    if guidance_max is not None and w > guidance_max:
        return (
            f"sampling.guidance: got {w}; the reverse model learns guidance scales up to "
            f"biflow.guidance_max = {guidance_max}; allowed: <= {guidance_max}"
        )
    return ""


def reverse_guidance_error(w: float, num_classes: int, cfg: Any) -> str:
    """Why a reverse model of ``cfg`` (its BiFlowConfig) cannot sample with guidance scale
    ``w`` ("" if it can): training-time guidance within the scales it learned, inference-time
    guidance with labels dropped in training."""
    if not w or not num_classes or cfg.guidance_max:
        return guidance_error(w, num_classes, cfg.guidance_max)
    if not cfg.label_drop:
        return (
            f"sampling.guidance: got {w}; inference-time guidance of G needs its unconditional "
            "mode (biflow.label_drop > 0) or training-time guidance (biflow.guidance_max > 0); "
            "allowed: 0"
        )
    return ""


def norm_control(cfg: TarFlowConfig, states: bool | None = None) -> str:
    """The norm-control factor of a sampler: "on" is the paper's (F's a and b hard-clipped, and,
    for a reverse model, its state distances normalised: ``states``), "off" neither; anything
    between is named by its parts."""
    clip = f"{cfg.clip_mode} clip" if cfg.norm_clip > 0 else ""
    if states is None:  # a sampler of F alone: the clip is all of it that applies
        return {"hard clip": "on", "": "off"}.get(clip, clip)
    if clip == "hard clip" and states:
        return "on"
    parts = [p for p in (clip, "normalised states" if states else "") if p]
    return " + ".join(parts) or "off"


def is_guided(y: torch.Tensor | None, w: float | torch.Tensor) -> bool:
    """Classifier-free guidance is on: labels given and a scale that is a tensor or nonzero."""
    return y is not None and (isinstance(w, torch.Tensor) or w != 0)


class FlowBlock(nn.Module):
    def __init__(self, cfg: TarFlowConfig, tokens: int, dim: int, flip: bool) -> None:
        super().__init__()
        self.cfg, self.flip = cfg, flip
        self.net = CausalNet(cfg, tokens, dim)

    def order(self, x: torch.Tensor) -> torch.Tensor:
        """Token permutation of this block (its own inverse)."""
        return x.flip(1) if self.flip else x

    def affine(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output (..., 2D) -> (a, b), clipped to [-c, c] when norm control is on."""
        c = self.cfg.norm_clip
        if c > 0:
            out = out.clamp(-c, c) if self.cfg.clip_mode == "hard" else c * torch.tanh(out / c)
        a, b = out.chunk(2, dim=-1)
        return a, b

    def params(
        self,
        xp: torch.Tensor,
        y: torch.Tensor | None = None,
        w: float | torch.Tensor = 0.0,
        caches: list[KVCache] | None = None,
        pos: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) predicted from ordered tokens xp (b, t, D): position t's are for token t + 1.

        Guided (labels ``y`` and scale ``w``, a float or one per image): ONE network call on the
        batch twice over, [xp; xp] with labels [y; no class], then a = a_c + w (a_c - a_u) and
        b = b_c + w (b_c - b_u): two evaluations per image, one sequential step."""
        if not is_guided(y, w):
            return self.affine(self.net(xp, caches, pos, y))
        none = torch.full_like(y, self.cfg.num_classes)
        out = self.net(torch.cat([xp, xp]), caches, pos, torch.cat([y, none]))
        (a_c, b_c), (a_u, b_u) = (self.affine(o) for o in out.chunk(2))
        if isinstance(w, torch.Tensor):
            w = w.view(-1, 1, 1)
        return a_c + w * (a_c - a_u), b_c + w * (b_c - b_u)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, w: float | torch.Tensor = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, T, D) -> z (b, T, D) and log|det dz/dx| per image (b,)."""
        xp = self.order(x)
        a, b = self.params(xp, y, w)
        a, b = (torch.cat([torch.zeros_like(p[:, :1]), p[:, :-1]], dim=1) for p in (a, b))
        z = (xp - b) * torch.exp(-a)  # token 0: a = b = 0, passes unchanged
        return self.order(z), -a.sum(dim=(1, 2))

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        cached: bool = True,
        static: bool = False,
        y: torch.Tensor | None = None,
        w: float = 0.0,
        kernel: str = "auto",
        schedule: str = "constant",
    ) -> torch.Tensor:
        """Exact inverse, one token at a time: x_{t+1} = z_{t+1} exp(a_{t+1}) + b_{t+1}.

        ``static``: every step has the same shapes (a full-length masked cache, the position
        as a tensor), which a compiled network needs to be compiled once, not once a step.
        ``kernel``: how the cached step attends (see KVCache: auto, native or torch).
        ``schedule``: the guidance scale of every step (constant: ``w``), or annealed over the
        tokens as apple/ml-tarflow samples (linear: (t + 1) / (T - 1) x ``w`` at step t)."""
        zp = self.order(z)
        n, t_total, _ = zp.shape
        x = torch.empty_like(zp)
        x[:, 0] = zp[:, 0]
        caches = None
        if cached:
            hd = self.cfg.width // self.cfg.heads
            rows = 2 * n if is_guided(y, w) else n  # guidance: conditional and "no class" rows
            caches = [
                KVCache(rows, self.cfg.heads, t_total, hd, zp, static, kernel)
                for _ in self.net.layers
            ]
        positions = torch.arange(t_total, device=z.device)
        for t in range(t_total - 1):
            wt = w * (t + 1) / (t_total - 1) if schedule == "linear" else w
            if cached:
                pos = positions[t : t + 1] if static else t
                a, b = self.params(x[:, t : t + 1], y, wt, caches, pos)
            else:
                a, b = self.params(x[:, : t + 1], y, wt)
            torch.addcmul(b[:, -1], zp[:, t + 1], torch.exp(a[:, -1]), out=x[:, t + 1])
        return self.order(x)


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
        self,
        x: torch.Tensor,
        keep_states: bool = False,
        y: torch.Tensor | None = None,
        w: float | torch.Tensor = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Image x (b, C, H, W) -> tokens z (b, T, D), log-det per image (b,), and, when asked,
        the states after every block h_0 = tokens(x), h_1, ..., h_K = z. With labels ``y`` and a
        guidance scale ``w`` (float or one per image): the guided flow, itself an invertible
        autoregressive map whose inverse is guided decoding."""
        h = self.to_tokens(x)
        states = [h] if keep_states else []
        logdet = torch.zeros(x.shape[0], device=x.device)
        for block in self.blocks:
            h, ld = block(h, y, w)
            logdet = logdet + ld
            if keep_states:
                states.append(h)
        return h, logdet, states

    def evaluations(self, args: tuple, kwargs: dict) -> int:
        """Image-evaluations of one forward call (NFE counting): two per image when guided."""
        y, w = kwargs.get("y"), kwargs.get("w", 0.0)
        return args[0].shape[0] * (2 if is_guided(y, w) else 1)

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        cached: bool = True,
        static: bool = False,
        y: torch.Tensor | None = None,
        w: float = 0.0,
        kernel: str = "auto",
        schedule: str = "constant",
    ) -> torch.Tensor:
        """Noise tokens z (b, T, D) -> image (b, C, H, W) by exact causal decoding (guided when
        labels ``y`` and a scale ``w`` > 0 are given; ``schedule``: see FlowBlock.reverse)."""
        for block in reversed(self.blocks):
            z = block.reverse(z, cached, static, y, w, kernel, schedule)
        return self.to_image(z)

    def log_prob(
        self, x: torch.Tensor, y: torch.Tensor | None = None, w: float | torch.Tensor = 0.0
    ) -> torch.Tensor:
        """log p(x) per image in nats, under a standard normal prior on z (of the guided flow
        when ``y`` and ``w`` are given)."""
        z, logdet, _ = self(x, y=y, w=w)
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
