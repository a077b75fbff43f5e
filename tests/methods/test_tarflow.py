import pytest
import torch

from methods.base import CallCounter
from methods.score_denoise import ScoreDenoiseSampler, tweedie_step
from methods.tarflow import TarFlow, TarFlowConfig, TarFlowSampler
from tests.conftest import TINY

CPU = torch.device("cpu")


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


def test_nfe_is_counted_from_network_calls(trained_flow):
    k, t = TINY.blocks, trained_flow.tokens
    res = TarFlowSampler(trained_flow, CPU).sample([0, 1, 2], batch_size=2)
    assert res.nfe == k * (t - 1) and res.sequential_steps == k * (t - 1)
    res = ScoreDenoiseSampler(trained_flow, CPU).sample([0, 1, 2], batch_size=3)
    assert res.nfe == k * (t - 1) + 1


def test_counter_counts_a_parallel_pass_once(trained_flow):
    counter = CallCounter(trained_flow.networks())
    with counter.watch():
        trained_flow(torch.zeros(2, 1, 28, 28))
    assert counter.count == 1


def test_images_do_not_depend_on_batch_size(trained_flow):
    sampler = TarFlowSampler(trained_flow, CPU)
    seeds = list(range(100, 164))
    one = sampler.sample(seeds, batch_size=1).images.int()
    many = sampler.sample(seeds, batch_size=64).images.int()
    # Identical up to float rounding in batched matmuls: at most 1 grey level, on rare pixels.
    assert (one - many).abs().max() <= 1
    assert (one != many).float().mean() < 1e-3
    assert not torch.equal(one[0], one[1])


def test_tweedie_step_on_the_identity_flow_shrinks_by_one_minus_sigma_squared():
    flow = TarFlow(TINY, 1, 28)  # zero-initialised heads: z = x, so grad log p(x) = -x
    x = torch.randn(3, 1, 28, 28)
    out = tweedie_step(flow, x, sigma=0.3)
    torch.testing.assert_close(out, (1 - 0.09) * x)
