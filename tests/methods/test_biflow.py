import pytest
import torch

from methods.biflow import (
    BiFlowConfig,
    BiFlowSampler,
    BiFlowScoreSampler,
    ReverseModel,
)
from methods.biflow_loss import biflow_losses
from methods.perceptual import FeatureDistance
from methods.tarflow import TarFlowSampler

CPU = torch.device("cpu")


def test_biflow_samples_in_one_network_evaluation(trained_flow, trained_reverse):
    res = BiFlowSampler(trained_reverse, trained_flow, CPU).sample(list(range(5)), batch_size=2)
    assert res.nfe == 1 and res.sequential_steps == 1
    assert res.images.shape == (5, 1, 28, 28) and res.images.dtype == torch.uint8


def test_biflow_is_many_times_fewer_evaluations_than_decoding(trained_flow, trained_reverse):
    dec = TarFlowSampler(trained_flow, CPU).sample([0], 1)
    bi = BiFlowSampler(trained_reverse, trained_flow, CPU).sample([0], 1)
    assert dec.nfe == trained_flow.cfg.blocks * (trained_flow.tokens - 1) * bi.nfe


def test_training_reduces_both_losses(trained_flow, digits):
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(width=32, depth=1, heads=2, mlp_ratio=2), 49, 16, 2)
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    x = digits[:32].float() / 127.5 - 1
    first = None
    for _ in range(30):
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        losses = biflow_losses(g, trained_flow, x, eps)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["align"].item() < 0.7 * first["align"]
    assert losses["recon"].item() < 0.7 * first["recon"]


def test_alignment_heads_are_not_counted_as_sampling_parameters(trained_flow, trained_reverse):
    s = BiFlowSampler(trained_reverse, trained_flow, CPU)
    heads = sum(p.numel() for p in trained_reverse.align_heads.parameters())
    assert s.num_params() == sum(p.numel() for p in trained_reverse.parameters()) - heads


SMALL = dict(width=32, depth=1, heads=2, mlp_ratio=2)


def one_batch(flow, g, digits, features=None):
    x = digits[:16].float() / 127.5 - 1
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return x, eps, biflow_losses(g, flow, x, eps, features=features)


def test_naive_distillation_is_the_output_loss_alone(trained_flow, digits):
    """align_weight 0: the loss is the reconstruction only (no gradient reaches the heads)."""
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL, align_weight=0.0), 49, 16, 2)
    _, _, losses = one_batch(trained_flow, g, digits)
    assert losses["loss"].item() == losses["recon"].item()
    losses["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in g.align_heads.parameters())
    s = BiFlowSampler(g, trained_flow, CPU)
    assert s.factors().reverse == "naive" and s.factors().denoise == "learned"


def test_without_learned_denoising_g_targets_the_noisy_image(trained_flow, digits):
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL, denoise=False), 49, 16, 2)
    assert len(g.denoise) == 0
    x, eps, losses = one_batch(trained_flow, g, digits)
    with torch.no_grad():
        z, _, _ = trained_flow(x + trained_flow.cfg.noise_std * eps)
        out, _ = g(z)
    noisy = trained_flow.to_tokens(x + trained_flow.cfg.noise_std * eps)
    assert torch.allclose(losses["recon"], torch.nn.functional.mse_loss(out, noisy))
    assert BiFlowSampler(g, trained_flow, CPU).factors().denoise == "none"


def test_the_feature_loss_uses_the_given_network_and_trains_g(trained_flow, digits):
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL, feature_weight=1.0), 49, 16, 2)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten()).requires_grad_(False)
    _, _, losses = one_batch(trained_flow, g, digits, features=FeatureDistance(net))
    assert losses["feature"] > 0
    losses["loss"].backward()
    assert g.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="feature network"):
        one_batch(trained_flow, g, digits, features=None)


def test_biflow_then_score_step_counts_both_networks(trained_flow, trained_reverse):
    res = BiFlowScoreSampler(trained_reverse, trained_flow, CPU).sample([0, 1], 2)
    assert res.nfe == 2 and res.sequential_steps == 2  # G, then one flow forward (+ backward)
