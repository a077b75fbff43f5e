import torch

from methods.biflow import BiFlowConfig, BiFlowSampler, ReverseModel, biflow_losses
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
