"""FLOPs counted by torch's FlopCounterMode, and the machine's measured matmul peak."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from bench.timing import measure

# torch counts its CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# dispatches to on CPU, which would leave attention out of every CPU count. Registered here with
# torch's formula scaled to the query-key pairs the kernel computes: all of them, except with
# is_causal, where a query sees only the keys up to its own position (so a causal forward pass
# and the causal decoding of the same flow count the same attention). An explicit mask (the
# compiled decoder's static cache) is computed in full and counted in full. On CUDA, torch's
# own formulas apply (they count causal attention in full).
_aten = torch.ops.aten


def _causal_share(q_len: int, k_len: int, is_causal: bool) -> float:
    if not is_causal:
        return 1.0
    # Top-left aligned, as torch's is_causal: query i sees keys 0..i (at most all k_len of them).
    seen = min(q_len, k_len)
    pairs = seen * (seen + 1) // 2 + (q_len - seen) * k_len
    return pairs / (q_len * k_len)


if _aten._scaled_dot_product_flash_attention_for_cpu not in torch.utils.flop_counter.flop_registry:

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa(
        query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *a, **kw
    ) -> int:
        share = _causal_share(query_shape[-2], key_shape[-2], is_causal)
        return round(sdpa_flop_count(query_shape, key_shape, value_shape) * share)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward(
        grad_out_shape,
        query_shape,
        key_shape,
        value_shape,
        out_shape_,
        logsumexp_shape,
        dropout_p=0.0,
        is_causal=False,
        *a,
        **kw,
    ) -> int:
        share = _causal_share(query_shape[-2], key_shape[-2], is_causal)
        flops = sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
        return round(flops * share)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (matmul, conv, attention) ``fn`` runs, forward and backward.

    Elementwise work (norms, activations, the affine update) is not counted, as in the usual
    model-FLOPs convention; it is small next to the products.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # sampling.precision -> dtype


def matmul_peak(
    device: torch.device, n: int = 2048, repeats: int = 5, precision: str = "fp32"
) -> float:
    """Measured FLOP/s of an n x n matmul in ``precision`` (fp32 or bf16): the ceiling a
    sampler's achieved FLOP/s is read against, in the precision it ran in."""
    a = torch.randn(n, n, device=device, dtype=PRECISIONS[precision])
    b = torch.randn(n, n, device=device, dtype=PRECISIONS[precision])
    t = measure(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / t.median_s


def peak_of(flops: dict, precision: str) -> float:
    """The flops stage's matmul peak for ``precision`` (runs made before bf16 was measured
    hold the float32 peak alone: NaN for bf16)."""
    if precision == "bf16":
        return flops.get("matmul_peak_bf16", float("nan"))
    return flops["matmul_peak"]
