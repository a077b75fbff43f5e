"""The TarFlow network (methods/flow.py): exact inverse by causal decoding, cached or not, the
log-determinant against autograd's Jacobian, causality, norm control, and the log-density of an
affine flow in closed form."""

import math

import pytest
import torch

from methods.base import CallCounter
from methods.flow import TarFlow, TarFlowConfig
from tests.conftest import TINY, affine_flow


def test_training_moved_the_heads_off_identity(trained_flow):
    # Otherwise the exactness tests below would pass for the trivial identity flow.
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    z, logdet, _ = trained_flow(x)
    assert (z - trained_flow.to_tokens(x)).abs().max() > 0.05
    assert logdet.abs().min() > 1.0


def test_decoding_inverts_the_forward_map(trained_flow):
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    z, _, _ = trained_flow(x)
    x_rec = trained_flow.reverse(z)
    assert ((x_rec - x).norm() / x.norm()).item() < 1e-4


def test_cached_and_uncached_decoding_agree(trained_flow):
    z = torch.randn(4, trained_flow.tokens, trained_flow.dim)
    cached = trained_flow.reverse(z, cached=True)
    uncached = trained_flow.reverse(z, cached=False)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_logdet_matches_the_autograd_jacobian():
    torch.manual_seed(0)
    cfg = TarFlowConfig(patch_size=2, width=16, depth=1, blocks=2, heads=2, mlp_ratio=2)
    flow = TarFlow(cfg, 1, 4).double()
    for block in flow.blocks:
        torch.nn.init.normal_(block.net.proj_out.weight, std=0.3)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    _, logdet, _ = flow(x)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.view(1, 1, 4, 4))[0].flatten(), x.flatten()
    )
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)


def test_token_t_depends_only_on_earlier_tokens():
    torch.manual_seed(0)
    flow = TarFlow(TINY, 1, 28)
    block = flow.blocks[0]
    torch.nn.init.normal_(block.net.proj_out.weight, std=0.3)
    x = torch.randn(1, flow.tokens, flow.dim, requires_grad=True)
    z, _ = block(x)
    (grad,) = torch.autograd.grad(z[0, 10].sum(), x)
    assert grad[0, 11:].abs().max() == 0  # no future token
    assert grad[0, :10].abs().max() > 0


def test_norm_control_bounds_the_affine_parameters():
    flow = TarFlow(TarFlowConfig(**{**TINY.__dict__, "norm_clip": 0.5}), 1, 28)
    a, b = flow.blocks[0].affine(torch.randn(8, 49, 32) * 100)
    assert a.abs().max() <= 0.5 and b.abs().max() <= 0.5


def test_counter_counts_a_parallel_pass_once(trained_flow):
    counter = CallCounter(trained_flow.networks())
    with counter.watch():
        trained_flow(torch.zeros(2, 1, 28, 28))
    assert counter.count == 1


def test_the_log_density_of_an_affine_flow_is_the_gaussians_in_closed_form():
    """z_0 = x_0 and z_t = (x_t - b) exp(-a) (t >= 1): log p(x) = sum log N(z; 0, 1) - (T - 1)
    sum(a), the last term the log-determinant."""
    flow, a, b = affine_flow()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    tokens = flow.to_tokens(x)
    z = (tokens - b) * torch.exp(-a)
    z[:, 0] = tokens[:, 0]
    t, d = flow.tokens, flow.dim
    want = -0.5 * z.pow(2).sum(dim=(1, 2)) - 0.5 * t * d * math.log(2 * math.pi)
    want = want - (t - 1) * a.sum()
    torch.testing.assert_close(flow.log_prob(x), want, rtol=1e-6, atol=1e-3)
