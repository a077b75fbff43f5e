import math

import pytest
import torch
import torch.nn.functional as F

from bench.flops import count_flops, matmul_peak, peak_of
from methods.biflow import BiFlowSampler
from methods.score_denoise import ScoreDenoiseSampler, tweedie_step

CPU = torch.device("cpu")


def forward_and_decode(flow) -> tuple[torch.Tensor, int, int]:
    """Prior noise for two images, and the FLOPs of one forward pass and of a full decode."""
    z = torch.randn(2, flow.tokens, flow.dim)
    x = flow.reverse(z)
    with torch.no_grad():
        forward = count_flops(lambda: flow(x))
    return z, forward, count_flops(lambda: flow.reverse(z))


def test_causal_decode_does_the_arithmetic_of_one_forward_pass(trained_flow):
    _, forward, decode = forward_and_decode(trained_flow)
    # Same products, one token at a time; decoding skips the last token's (unused) parameters.
    assert decode == pytest.approx(forward, rel=0.05)
    assert decode < forward


def test_score_step_adds_a_forward_and_a_backward_pass(trained_flow):
    z, forward, decode = forward_and_decode(trained_flow)
    score = count_flops(lambda: ScoreDenoiseSampler(trained_flow, CPU).generate(z))
    x = trained_flow.reverse(z)
    step = count_flops(lambda: tweedie_step(trained_flow, x, 0.1))
    assert score == decode + step
    # The flow's weights are frozen, so the backward pass only propagates to the input: one
    # product per forward linear product; attention's backward (gradients of queries, keys and
    # values) costs 2.5 times its forward. So the step is between 2 and 3 forward passes.
    assert 2 * forward < step < 3 * forward


def test_attention_is_counted_on_cpu_and_a_causal_mask_halves_it():
    """torch registers no FLOP formula for the CPU attention kernel; bench.flops does."""
    q = torch.randn(1, 2, 16, 8)
    full = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    causal = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert full == 4 * 2 * 16 * 16 * 8  # QK^T and AV, 2 FLOPs per multiply-add
    assert causal == full * (16 * 17 // 2) // (16 * 16)


def test_biflow_flops_are_one_pass_of_its_network(trained_flow, trained_reverse):
    z = torch.randn(2, trained_flow.tokens, trained_flow.dim)
    sampler = BiFlowSampler(trained_reverse, trained_flow, CPU)
    assert count_flops(lambda: sampler.generate(z)) == count_flops(lambda: trained_reverse(z))


def test_matmul_peak_is_a_plausible_rate():
    peak = matmul_peak(CPU, n=256, repeats=2)
    assert 1e8 < peak < 1e15


def test_each_sampler_is_read_against_the_peak_of_its_precision():
    """bf16 is measured in its own product; a bf16 sampler's share is of that peak, a float32
    one's of the float32 peak; a run made before bf16 was measured has no bf16 peak (NaN)."""
    bf16 = matmul_peak(CPU, n=256, repeats=2, precision="bf16")
    assert 1e8 < bf16 < 1e15
    flops = {"matmul_peak": 1.0e11, "matmul_peak_bf16": 4.0e11}
    assert peak_of(flops, "bf16") == 4.0e11 and peak_of(flops, "fp32") == 1.0e11
    assert math.isnan(peak_of({"matmul_peak": 1.0e11}, "bf16"))
