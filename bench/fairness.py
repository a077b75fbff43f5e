"""Fairness check of the causal baseline: one full causal decode against one parallel forward
pass of the same flow, timed interleaved and profiled by operator group."""

from __future__ import annotations

import torch

from bench.config import BenchConfig
from bench.flops import count_flops
from bench.timing import measure_interleaved, op_breakdown
from methods import native
from methods.base import noise_for_seeds
from methods.transformer import native_problem

# Operator groups of the decode/forward breakdown (aten names, as torch.profiler reports them).
OP_GROUPS = {
    "linear layers": lambda name: name in ("aten::addmm", "aten::mm"),
    "attention": lambda name: (
        "attention" in name
        or "softmax" in name
        or name in ("aten::bmm", "aten::baddbmm", "aten::masked_fill")
    ),
}


def decode_attention_form(flow, device: torch.device, kernel: str) -> str:
    """How the cached decode of ``flow`` attends (float32, the growing cache), in words."""
    if kernel == "torch":
        return "torch operators (sampling.decode_kernel: torch)"
    head_dim = flow.cfg.width // flow.cfg.heads
    if problem := native_problem(device, torch.float32, head_dim, static=False):
        return f"torch operators (no native kernel: {problem})"
    return f"the native C kernel ({native.decode_attention().description})"


def decode_vs_forward(flow, device: torch.device, cfg: BenchConfig) -> dict:
    """Fairness check of the causal baseline, measured in this run: one full causal decode
    against one parallel forward pass of the same flow, both at the throughput batch, and
    (``batch1``) both at batch 1, where per-step overhead rather than arithmetic decides."""
    b = cfg.eval.throughput_batch
    kernel = cfg.sampling.decode_kernel
    z = noise_for_seeds(range(b), (flow.tokens, flow.dim)).to(device)
    x = flow.reverse(z, kernel=kernel)
    work = {"decode": lambda: flow.reverse(z, kernel=kernel), "forward": lambda: flow(x)}
    with torch.no_grad():
        paired = _paired(work, device, cfg.eval.warmup, cfg.eval.throughput_repeats)
        fwd_flops = count_flops(lambda: flow(x[:2])) // 2
        profiled = {}
        if device.type == "cpu":  # the profiler's CPU self times; on a GPU they would be launches
            profiled["profile_ms"] = {n: op_breakdown(fn, OP_GROUPS) for n, fn in work.items()}
    # Counted at batch 2 with torch operators (under the FLOP counter a native cache attends
    # with them: the same arithmetic). The torch form's CPU matrix products would pad the first
    # steps to 400 / head_dim keys for BLAS at the throughput batch (see KVCache), not counted.
    dec_flops = count_flops(lambda: flow.reverse(z[:2], kernel=kernel)) // 2
    return {
        "batch1": _at_batch_one(flow, z[:1], x[:1], device, cfg),
        "decode_flops_per_img": dec_flops,
        "forward_flops_per_img": fwd_flops,
        "batch": b,
        "attention": decode_attention_form(flow, device, kernel),
        **paired,
        **profiled,
    }


def _paired(work: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """The decode and the forward pass of ``work`` timed interleaved: medians, spreads, and the
    median of the per-repeat ratios (each decode ran moments before its forward pass, so a slow
    spell of a shared machine cancels instead of tilting one side)."""
    t = measure_interleaved(work, device, warmup, repeats)
    dec, fwd = t["decode"], t["forward"]
    return {
        "decode_s": dec.median_s,
        "forward_s": fwd.median_s,
        "ratio": dec.median_ratio(fwd),
        "decode_spread": dec.spread,
        "forward_spread": fwd.spread,
    }


def _at_batch_one(flow, z, x, device: torch.device, cfg: BenchConfig) -> dict:
    kernel = cfg.sampling.decode_kernel
    work = {"decode": lambda: flow.reverse(z, kernel=kernel), "forward": lambda: flow(x)}
    with torch.no_grad():
        return _paired(work, device, cfg.eval.warmup, cfg.eval.latency_repeats)
