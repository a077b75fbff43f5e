"""Pre-norm transformer layers shared by the forward flow (causal) and the reverse model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys/values of one attention layer: decoding writes one position a step.

    The default cache attends to the ``pos + 1`` filled positions, so each step's shapes grow.
    A ``static`` cache keeps every shape fixed for torch.compile (and CUDA graphs): the step's
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
        shape = (batch, heads, tokens, head_dim)  # (b, h, t, d)
        # Keys come out of a Linear: under autocast in its lower precision, else like's dtype.
        dtype = like.dtype
        if torch.is_autocast_enabled(like.device.type):
            dtype = torch.get_autocast_dtype(like.device.type)
        alloc = torch.zeros if static else torch.empty
        self.k = alloc(shape, dtype=dtype, device=like.device)
        self.v = alloc(shape, dtype=dtype, device=like.device)
        self.static = static

    def write(self, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.static:
            self.k.index_copy_(2, pos, k)
            self.v.index_copy_(2, pos, v)
        else:
            self.k[:, :, pos] = k[:, :, 0]
            self.v[:, :, pos] = v[:, :, 0]

    def attend(self, q: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        if self.static:
            filled = (torch.arange(self.k.shape[2], device=q.device) <= pos)[None]  # (1, t)
            return F.scaled_dot_product_attention(q, self.k, self.v, attn_mask=filled)
        return F.scaled_dot_product_attention(q, self.k[:, :, : pos + 1], self.v[:, :, : pos + 1])


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool,
        cache: KVCache | None = None,
        pos: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (b, h, t, d)
        else:
            # One new token at position `pos` attends to itself and every cached one before it.
            assert t == 1, "the key/value cache decodes one token at a time"
            cache.write(pos, k, v)
            out = cache.attend(q, pos)
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


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

    def forward(
        self,
        x: torch.Tensor,
        causal: bool,
        cache: KVCache | None = None,
        pos: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal, cache, pos)
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
