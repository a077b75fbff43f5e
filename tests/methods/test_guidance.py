"""Class-conditional TarFlow with classifier-free guidance, and BiFlow's training-time guidance."""

import pytest
import torch

from methods.base import SamplingConfig
from methods.biflow import BiFlowSampler
from methods.score_denoise import ScoreDenoiseSampler
from methods.tarflow import TarFlowSampler

CPU = torch.device("cpu")
SEEDS = list(range(6))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_guided_decoding_inverts_the_guided_forward_flow(trained_cond_flow, labelled_digits, w):
    """With guidance the flow is still an exact bijection: F_w (a, b extrapolated) and its
    inverse by causal decoding, cached or not."""
    flow = trained_cond_flow
    x, y = labelled_digits[0][::50].float() / 127.5 - 1, labelled_digits[1][::50]
    z, _, _ = flow(x, y=y, w=w)
    back = flow.reverse(z, y=y, w=w)
    assert rel(back, x) < 1e-4
    assert rel(flow.reverse(z, cached=False, y=y, w=w), back) < 1e-5


def test_guidance_changes_the_samples(trained_cond_flow):
    plain = TarFlowSampler(trained_cond_flow, CPU).sample(SEEDS, 6)
    guided = TarFlowSampler(trained_cond_flow, CPU, SamplingConfig(guidance=2.0)).sample(SEEDS, 6)
    assert not torch.equal(plain.images, guided.images)


def test_tarflow_guidance_doubles_the_counted_nfe(trained_cond_flow):
    k, t = len(trained_cond_flow.blocks), trained_cond_flow.tokens
    plain = TarFlowSampler(trained_cond_flow, CPU).sample(SEEDS, 3)
    guided = TarFlowSampler(trained_cond_flow, CPU, SamplingConfig(guidance=2.0)).sample(SEEDS, 3)
    assert plain.nfe == k * (t - 1) and guided.nfe == 2 * k * (t - 1)
    assert guided.sequential_steps == plain.sequential_steps == k * (t - 1)  # one batched call
    score = ScoreDenoiseSampler(trained_cond_flow, CPU, SamplingConfig(guidance=2.0))
    assert score.sample(SEEDS, 3).nfe == 2 * k * (t - 1) + 1  # through the conditional model
    guided = SamplingConfig(guidance=2.0, score_guidance="guided")
    score = ScoreDenoiseSampler(trained_cond_flow, CPU, guided)
    assert score.sample(SEEDS, 3).nfe == 2 * k * (t - 1) + 2  # the guided score pass too


def test_biflow_guidance_stays_one_evaluation(trained_guided_reverse, trained_cond_flow):
    mk = lambda w: BiFlowSampler(  # noqa: E731
        trained_guided_reverse, trained_cond_flow, CPU, SamplingConfig(guidance=w)
    )
    plain, guided = mk(0.0).sample(SEEDS, 6), mk(2.0).sample(SEEDS, 6)
    assert plain.nfe == guided.nfe == 1
    assert not torch.equal(plain.images, guided.images)  # the scale is an input of G
    assert mk(2.0).factors().guidance == 2.0


def test_guidance_the_models_cannot_honour_is_refused(
    trained_flow, trained_reverse, trained_guided_reverse, trained_cond_flow
):
    with pytest.raises(ValueError, match="class-conditional"):
        TarFlowSampler(trained_flow, CPU, SamplingConfig(guidance=1.0))
    with pytest.raises(ValueError, match="guidance_max"):
        BiFlowSampler(trained_guided_reverse, trained_cond_flow, CPU, SamplingConfig(guidance=4))
    with pytest.raises(ValueError, match="guidance_max"):
        BiFlowSampler(trained_reverse, trained_flow, CPU, SamplingConfig(guidance=1.0))
