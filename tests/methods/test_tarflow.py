"""TarFlow as a sampler (methods/tarflow.py): NFE counted from the decoding calls, images that do
not depend on the batch, and its loss and bits/dim on the identity flow in closed form. (The
network itself: test_flow.py.)"""

import math

import torch

from methods.tarflow import TarFlow, TarFlowSampler, bits_per_dim, nll_objective
from tests.conftest import TINY

CPU = torch.device("cpu")


def test_nfe_is_counted_from_network_calls(trained_flow):
    k, t = TINY.blocks, trained_flow.tokens
    res = TarFlowSampler(trained_flow, CPU).sample([0, 1, 2], batch_size=2)
    assert res.nfe == k * (t - 1) and res.sequential_steps == k * (t - 1)


def test_images_do_not_depend_on_batch_size(trained_flow):
    sampler = TarFlowSampler(trained_flow, CPU)
    seeds = list(range(100, 164))
    one = sampler.sample(seeds, batch_size=1).images.int()
    many = sampler.sample(seeds, batch_size=64).images.int()
    # Identical up to float rounding in batched matmuls: at most 1 grey level, on rare pixels.
    assert (one - many).abs().max() <= 1
    assert (one != many).float().mean() < 1e-3
    assert not torch.equal(one[0], one[1])


def test_loss_and_bits_per_dim_of_the_identity_flow_are_the_standard_normals():
    """Zero-initialised heads: z = x~ = x + sigma eps and log|det| = 0, so the loss is
    0.5 mean(x~^2) and bits/dim (0.5 mean(x~^2) + 0.5 log 2 pi + log 127.5) / log 2."""
    flow = TarFlow(TINY, 1, 28)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = x + TINY.noise_std * eps
    loss = nll_objective(TINY.noise_std)(flow, x, eps)
    torch.testing.assert_close(loss, 0.5 * noisy.pow(2).mean())
    nats = 0.5 * noisy.pow(2).mean().item() + 0.5 * math.log(2 * math.pi) + math.log(127.5)
    got = bits_per_dim(flow, x, torch.Generator().manual_seed(1))
    assert math.isclose(got, nats / math.log(2), rel_tol=1e-6)
