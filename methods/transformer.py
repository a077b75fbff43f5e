"""Pre-norm transformer layers shared by the forward flow (causal) and the reverse model."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from methods import native

# From this many (image, head) rows up, the CPU decoding step's attention is two batched matrix
# products and a softmax, not SDPA. Measured on 2 cores, one layer's attention over a whole
# 49-token decode (4 heads of 24): 23 ms against SDPA's 43 ms at 256 images, 7.5 against 8.6 at
# 64, and 5-40% slower at 1 to 16 images.
MATMUL_MIN_ROWS = 256
# torch.bmm on CPU hands a product to BLAS from this many multiply-adds (ATen's
# bmm_out_or_baddbmm_: contraction x rows x cols < 400 takes a naive loop).
BLAS_MIN_MACS = 400
# How the decoding step attends (KVCache): the native C kernel where it applies ("auto"), always
# ("native": an error where it cannot), or never ("torch").
KERNELS = ("auto", "native", "torch")


def native_problem(device: torch.device, dtype: torch.dtype, head_dim: int, static: bool) -> str:
    """Why the native decoding kernel cannot serve a cache ("" when it can)."""
    if device.type != "cpu":
        return f"it runs on the CPU (device: {device})"
    if dtype != torch.float32:
        return f"it computes in float32 (the cache holds {dtype})"
    if head_dim % 8:
        return f"it needs a head size divisible by 8 (got {head_dim})"
    if static:
        return "compiled decoding (sampling.compile) keeps the static torch cache"
    kernel = native.decode_attention()
    return "" if kernel.lib is not None else f"not built: {kernel.description}"


def _dispatch_mode_active() -> bool:
    """A TorchDispatchMode (FlopCounterMode, ...) sees only torch operators."""
    return torch._C._len_torch_dispatch_stack() > 0


def _profiling() -> bool:
    """torch.profiler is recording (its C++ state, which ``start()`` and ``with`` both set)."""
    return torch._C._autograd._profiler_enabled()


class KVCache:
    """Keys/values of one attention layer: decoding writes one position a step.

    :meth:`step` stores a step's keys and values and attends with its queries, in one of three
    forms:

    - native (CPU, float32, head_dim a multiple of 8; ``kernel`` "auto" or "native"): one C
      kernel call, ``csrc/decode_attention.c``, over a time-major cache ``kv`` (2, t, b * h, d);
    - the growing torch form (elsewhere, or ``kernel`` "torch"): ``kv`` (2, b, h, t, d), stored
      together so that one copy writes a step's key and value; it attends to the ``pos + 1``
      filled positions, so each step's shapes grow;
    - ``static`` (torch.compile, CUDA graphs): every shape fixed. The step's position is a
      tensor, keys/values are written with ``index_copy_`` and the query attends to the full
      length with the unfilled positions masked out (zero-initialised, weight exactly 0).

    Under a dispatch mode (FLOP counting), or for queries that need gradients, the native cache
    attends with torch operators: the same arithmetic, which those tools see (counted through
    ``bench.flops``, which registers the FLOPs of torch's CPU attention kernel).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        tokens: int,
        head_dim: int,
        like: torch.Tensor,
        static: bool = False,
        kernel: str = "auto",
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"decode kernel: got {kernel!r}; allowed: {', '.join(KERNELS)}")
        # Keys come out of a Linear: under autocast in its lower precision, else like's dtype.
        dtype = like.dtype
        if torch.is_autocast_enabled(like.device.type):
            dtype = torch.get_autocast_dtype(like.device.type)
        self.static = static
        self.native = False
        if kernel != "torch":
            problem = native_problem(like.device, dtype, head_dim, static)
            if problem and kernel == "native":
                raise ValueError(f"decode kernel 'native' cannot run here: {problem}")
            self.native = not problem
        if self.native:
            shape = (2, tokens, batch * heads, head_dim)
            self.kv = torch.empty(shape, dtype=torch.float32, device="cpu")
            return
        shape = (2, batch, heads, tokens, head_dim)
        alloc = torch.zeros if static else torch.empty
        self.kv = alloc(shape, dtype=dtype, device=like.device)
        # The same memory as (2, batch * heads, tokens, head_dim): batched matrix products.
        self.rows = self.kv.view(2, batch * heads, tokens, head_dim)
        # One query per sequence on CPU: SDPA's fused kernel sets up per (image, head), which
        # adds up over many; two batched matrix products and a softmax do not. On GPUs SDPA.
        self.matmul = like.device.type == "cpu" and batch * heads >= MATMUL_MIN_ROWS
        # PyTorch's CPU bmm runs products of under 400 multiply-adds (contraction x rows x
        # cols) as a plain loop, not through BLAS: one query against fewer than 400 / head_dim
        # keys (16 at head_dim 24). Measured at 1024 (image, head) rows, 16 keys took ~2x as
        # long as 17. So early steps attend over at least ``min_keys`` positions, the ones not
        # yet written zero and masked out (softmax weight exactly 0).
        self.min_keys = min(tokens, -(-BLAS_MIN_MACS // head_dim))
        if self.matmul and not static:
            self.kv[:, :, :, : self.min_keys].zero_()
        # Additive masks: row p is 0 over the positions <= p, -inf after them. In the keys'
        # dtype, which baddbmm requires of its added term.
        inf = torch.full((tokens, tokens), float("-inf"), dtype=dtype, device=like.device)
        self.mask = inf.triu(1)

    def step(self, qkv: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """Store one position's keys and values and attend with its queries: ``qkv``
        (b, 3, h, d), unscaled queries then keys then values, to the output (b, h, d)."""
        if not self.native:
            self.write(pos, qkv[:, 1:])
            return self.attend(qkv[:, 0], pos)
        b, _, h, d = qkv.shape
        if _dispatch_mode_active() or (qkv.requires_grad and torch.is_grad_enabled()):
            kv = self.kv.view(2, self.kv.shape[1], b, h, d)  # an error if b * h does not fit
            kv[:, pos] = qkv[:, 1:].transpose(0, 1)
            k, v = kv[:, : pos + 1].permute(0, 2, 3, 1, 4)  # (b, h, pos + 1, d)
            return F.scaled_dot_product_attention(qkv[:, 0, :, None], k, v)[:, :, 0]
        # Named in the profile; a record_function costs ~15 us even when no profiler runs.
        named = record_function("flowbench::decode_attention") if _profiling() else nullcontext()
        with named:
            return native.attention_step(qkv, self.kv, pos, d**-0.5)

    def write(self, pos: int | torch.Tensor, kv: torch.Tensor) -> None:
        """Store one position's keys and values, ``kv`` (b, 2, h, d) (torch forms)."""
        kv = kv.transpose(0, 1)  # (2, b, h, d)
        if self.static:
            self.kv.index_copy_(3, pos, kv.unsqueeze(3))
        else:
            self.kv[:, :, :, pos] = kv

    def attend(self, q: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """One query per sequence, ``q`` (b, h, d), over the cached positions <= pos: (b, h, d)
        (torch forms).

        Unscaled queries (the attention scales them by head_dim ** -0.5)."""
        b, h, d = q.shape
        if self.static:  # every position, the unwritten ones masked out
            n, mask = self.kv.shape[3], self.mask.index_select(0, pos)  # (1, t)
        elif self.matmul:
            n = max(pos + 1, self.min_keys)
            mask = self.mask[pos : pos + 1, :n]
        else:
            n, mask = pos + 1, None
        if not self.matmul:
            k, v = self.kv[:, :, :, :n]
            return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask)[:, :, 0]
        k, v = self.rows[:, :, :n]  # (b * h, n, d)
        q = q.reshape(b * h, 1, d)
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=d**-0.5)  # (b * h, 1, n)
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(b, h, d)


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
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(b, 3, self.heads, w // self.heads)
        out = cache.step(qkv, pos)  # (b, h, d), contiguous
        return F.linear(out.view(b, w), self.proj.weight, self.proj.bias)


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
        """The same layer for one token per sequence, ``x`` (b, w), with a key/value cache.
        Functional calls on the layer's own weights: a decode runs this K x (T - 1) x depth
        times, and a module call costs as much as a small operator."""
        x = x + self.attn.step(layer_norm(self.norm1, x), cache, pos)
        fc1, _, fc2 = self.mlp
        h = F.gelu(F.linear(layer_norm(self.norm2, x), fc1.weight, fc1.bias))
        return x + F.linear(h, fc2.weight, fc2.bias)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` without the module call."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


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
