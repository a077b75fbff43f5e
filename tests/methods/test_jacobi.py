"""Jacobi (fixed-point) decoding of a TarFlow: issue 4's parallel solver, before it becomes a
registered sampler."""

import pytest
import torch

from methods.base import CallCounter


@pytest.fixture
def z(trained_flow) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, trained_flow.tokens, trained_flow.dim, generator=g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("segment", [0, 12])
def test_a_tight_tolerance_matches_causal_decoding(trained_flow, z, segment):
    exact = trained_flow.reverse(z)
    counter = CallCounter([b.net for b in trained_flow.blocks])
    with counter.watch():
        x, used = trained_flow.reverse_jacobi(z, tol=1e-6, segment=segment)
    assert rel(x, exact) < 1e-4
    assert sum(used) == counter.count  # the evaluations reported are the ones that ran
    if not segment:  # one pass over all tokens: exact after T - 1 evaluations at most
        assert all(1 <= n <= trained_flow.tokens - 1 for n in used)


def test_it_needs_fewer_evaluations_than_causal_decoding_at_a_loose_tolerance(trained_flow, z):
    exact = trained_flow.reverse(z)
    x, used = trained_flow.reverse_jacobi(z, tol=1e-2)
    assert sum(used) < len(trained_flow.blocks) * (trained_flow.tokens - 1)
    assert rel(x, exact) < 1e-2


def test_t_minus_1_iterations_are_exact_whatever_the_tolerance(trained_flow, z):
    """Token t depends on tokens < t only: after k parallel updates the first k + 1 are exact."""
    x, used = trained_flow.reverse_jacobi(z, tol=0.0)
    assert used == [trained_flow.tokens - 1] * len(trained_flow.blocks)
    assert rel(x, trained_flow.reverse(z)) < 1e-5
