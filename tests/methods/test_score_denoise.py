"""The Tweedie step x + sigma^2 grad log p(x), and the score-denoised sampler, on flows whose
density and inverse are known in closed form."""

import torch

from methods.score_denoise import ScoreDenoiseSampler, tweedie_step
from methods.tarflow import TarFlow
from tests.conftest import TINY, affine_flow

CPU = torch.device("cpu")


def test_on_the_identity_flow_the_step_shrinks_by_one_minus_sigma_squared():
    flow = TarFlow(TINY, 1, 28)  # zero-initialised heads: z = x, so grad log p(x) = -x
    x = torch.randn(3, 1, 28, 28)
    out = tweedie_step(flow, x, sigma=0.3)
    torch.testing.assert_close(out, (1 - 0.09) * x)


def test_on_an_affine_flow_the_step_is_x_plus_sigma_squared_times_the_closed_form_score():
    """grad log p(x) is -x_0 for token 0 and -(x_t - b) exp(-2a) for the others."""
    flow, a, b = affine_flow()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    tokens = flow.to_tokens(x)  # (4, T, D)
    score = -(tokens - b) * torch.exp(-2 * a)
    score[:, 0] = -tokens[:, 0]
    sigma = 0.2
    want = flow.to_image(tokens + sigma**2 * score)
    torch.testing.assert_close(tweedie_step(flow, x, sigma), want, rtol=1e-6, atol=1e-6)


def test_the_sampler_decodes_exactly_then_takes_the_step_and_counts_one_more_evaluation():
    """On the affine flow: decoding is x_t = z_t exp(a) + b (x_0 = z_0), in T - 1 evaluations
    of the block's network, then the step (one pass of the whole flow, and its backward)."""
    flow, a, b = affine_flow()
    sigma = flow.cfg.noise_std
    sampler = ScoreDenoiseSampler(flow, CPU)
    z, _ = sampler.inputs([0, 1, 2])
    x = z * torch.exp(a) + b
    x[:, 0] = z[:, 0]
    score = -(x - b) * torch.exp(-2 * a)
    score[:, 0] = -x[:, 0]
    want = flow.to_image(x + sigma**2 * score)
    torch.testing.assert_close(sampler.generate(z), want, rtol=1e-5, atol=1e-5)
    res = sampler.sample([0, 1, 2], batch_size=2)
    t = flow.tokens
    assert res.nfe == (t - 1) + 1 and res.sequential_steps == t
    assert sampler.factors().denoise == "score"
