"""FLOPs counted by torch's FlopCounterMode, and the machine's measured matmul peak."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import measure


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (matmul, conv, attention) ``fn`` runs, forward and backward.

    Elementwise work (norms, activations, the affine update) is not counted, as in the usual
    model-FLOPs convention; it is small next to the products.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n float32 matmul: the ceiling achieved FLOP/s is read against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = measure(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / t.median_s
