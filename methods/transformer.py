"""Pre-norm transformer layers shared by the forward flow (causal) and the reverse model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys/values of one attention layer: decoding writes one position a step.

    Stored together, ``kv`` is (2, b, h, t, d): one copy writes a step's key and value. The
    default cache attends to the ``pos + 1`` filled positions, so each step's shapes grow. A
    ``static`` cache keeps every shape fixed for torch.compile (and CUDA graphs): the step's
    position is a tensor, keys/values are written with ``index_copy_`` and the query attends to
    the full length with the unfilled positions masked out (zero-initialised, weight exactly 0).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        tokens: int,
        head_dim: int,
        like: torch.Tensor,
        static: bool = False,
    ) -> None:
        shape = (2, batch, heads, tokens, head_dim)
        # Keys come out of a Linear: under autocast in its lower precision, else like's dtype.
        dtype = like.dtype
        if torch.is_autocast_enabled(like.device.type):
            dtype = torch.get_autocast_dtype(like.device.type)
        alloc = torch.zeros if static else torch.empty
        self.kv = alloc(shape, dtype=dtype, device=like.device)
        self.static = static

    def write(self, pos: int | torch.Tensor, kv: torch.Tensor) -> None:
        """Store one position's keys and values, ``kv`` (b, 2, h, d)."""
        kv = kv.transpose(0, 1)  # (2, b, h, d)
        if self.static:
            self.kv.index_copy_(3, pos, kv.unsqueeze(3))
        else:
            self.kv[:, :, :, pos] = kv

    def attend(self, q: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """One query per sequence, ``q`` (b, h, 1, d), over the cached positions <= pos."""
        if self.static:
            k, v = self.kv
            filled = (torch.arange(k.shape[2], device=q.device) <= pos)[None]  # (1, t)
        else:
            k, v = self.kv[:, :, :, : pos + 1]
            filled = None
        # One query per sequence on CPU: SDPA's fused kernel sets up per (image, head), which
        # adds up over many. Measured on 2 cores over a whole decode (4 heads), two batched
        # matrix products and a softmax are ~7% faster at batch 256, as fast at 64 (256
        # image-heads, where they take over) and 5-10% slower at 1-16.
        if q.device.type != "cpu" or q.shape[0] * q.shape[1] < 256:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=filled)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (b, h, 1, t)
        if filled is not None:
            scores = scores.masked_fill(~filled, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (b, h, t, d)
        return self.proj(out.transpose(1, 2).reshape(b, t, w))

    def step(self, x: torch.Tensor, cache: KVCache, pos: int | torch.Tensor) -> torch.Tensor:
        """Decoding: one new token per sequence, ``x`` (b, w) at position ``pos``, attends to
        itself and every cached one before it."""
        b, w = x.shape
        qkv = self.qkv(x).view(b, 3, self.heads, w // self.heads)
        cache.write(pos, qkv[:, 1:])
        out = cache.attend(qkv[:, 0, :, None], pos)  # (b, h, 1, d): contiguous, so a view
        return self.proj(out.view(b, w))


class Layer(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal)
        return x + self.mlp(self.norm2(x))

    def step(self, x: torch.Tensor, cache: KVCache, pos: int | torch.Tensor) -> torch.Tensor:
        """The same layer for one token per sequence, ``x`` (b, w), with a key/value cache."""
        x = x + self.attn.step(self.norm1(x), cache, pos)
        return x + self.mlp(self.norm2(x))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(b, c, H, W) -> (b, T, D) with T = (H/p)(W/p) tokens of D = c p^2, row-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)
