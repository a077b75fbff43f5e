"""Jacobi (fixed-point) decoding of a TarFlow, and the registered tarflow_jacobi sampler."""

import pytest
import torch

from methods.base import DEFAULT_SAMPLING, CallCounter
from methods.jacobi import JacobiConfig, JacobiSampler, jacobi_reverse
from methods.tarflow import TarFlowSampler

CPU = torch.device("cpu")


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
        x, used = jacobi_reverse(trained_flow, z, tol=1e-6, segment=segment)
    assert rel(x, exact) < 1e-4
    # The image-evaluations the hooks saw are the ones reported, image by image.
    assert sum(int(n.sum()) for n in used) == counter.rows
    if not segment:  # one pass over all tokens: exact after T - 1 evaluations at most
        assert all(1 <= int(n.min()) and int(n.max()) <= trained_flow.tokens - 1 for n in used)


def test_it_needs_fewer_evaluations_than_causal_decoding_at_a_loose_tolerance(trained_flow, z):
    exact = trained_flow.reverse(z)
    x, used = jacobi_reverse(trained_flow, z, tol=1e-2)
    per_image = sum(used)  # (6,)
    assert int(per_image.max()) < len(trained_flow.blocks) * (trained_flow.tokens - 1)
    assert rel(x, exact) < 1e-2


def test_t_minus_1_iterations_are_exact_whatever_the_tolerance(trained_flow, z):
    """Token t depends on tokens < t only: after k parallel updates the first k + 1 are exact."""
    x, used = jacobi_reverse(trained_flow, z, tol=0.0)
    assert all(torch.equal(n, torch.full((6,), trained_flow.tokens - 1)) for n in used)
    assert rel(x, trained_flow.reverse(z)) < 1e-5


def test_the_sampler_reports_the_iterations_it_used_and_its_deviation(trained_flow):
    seeds = list(range(8))
    causal = TarFlowSampler(trained_flow, CPU).sample(seeds, 8)
    tight = JacobiSampler(trained_flow, CPU, DEFAULT_SAMPLING, JacobiConfig(tol=1e-6))
    loose = JacobiSampler(trained_flow, CPU, DEFAULT_SAMPLING, JacobiConfig(tol=1e-2))
    a, b = tight.sample(seeds, 8), loose.sample(seeds, 8)
    assert b.nfe < a.nfe <= causal.nfe  # measured, not assumed: fewer at a looser tolerance
    z, _ = loose.inputs(seeds)  # the counted NFE is the mean of what each image took
    _, used = jacobi_reverse(trained_flow, z, tol=1e-2)
    assert b.nfe == pytest.approx(sum(used).float().mean().item())
    two = loose.sample(seeds, 4)  # two batches: nfe_max is the costlier one's per-image mean
    assert two.nfe == pytest.approx(b.nfe) and two.nfe_max >= two.nfe
    assert (a.images.int() - causal.images.int()).abs().max() <= 1
    d = tight.diagnostics(seeds)
    assert d["jacobi_rel_err"] < 1e-4 and d["jacobi_deviation_draws"] == 8
    assert len(d["jacobi_iters_per_block"]) == len(trained_flow.blocks)
    assert loose.factors().reverse == "jacobi"


def test_each_image_converges_on_its_own_so_batching_does_not_change_it(trained_flow):
    s = JacobiSampler(trained_flow, CPU, DEFAULT_SAMPLING, JacobiConfig(tol=1e-3))
    seeds = list(range(6))
    one = [s.sample([i], 1) for i in seeds]
    batch = s.sample(seeds, 6)
    assert abs(sum(r.nfe for r in one) / 6 - batch.nfe) <= 0.5  # rounding may move a boundary
    ones = torch.cat([r.images for r in one])
    assert (ones.int() - batch.images.int()).abs().max() <= 1
