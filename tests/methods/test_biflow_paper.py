"""BiFlow as the paper defines it: training-time guidance through the implied conditional state,
hidden distillation, adaptive weighting, norm control's two switches, inference-time guidance,
and TarFlow's annealed guidance."""

import dataclasses

import pytest
import torch

from methods.base import SamplingConfig
from methods.biflow import BiFlowConfig, BiFlowSampler, ReverseModel
from methods.biflow_loss import biflow_losses, conditioning, distance, reduce
from methods.flow import FlowBlock, TarFlowConfig, norm_control
from methods.perceptual import feature_problem
from methods.tarflow import TarFlowSampler
from methods.training import Labels
from methods.validate import FieldError

CPU = torch.device("cpu")
SMALL = dict(width=32, depth=1, heads=2, mlp_ratio=2)


def batch(labelled_digits, n=16, u=0.5):
    x, y = labelled_digits
    x, y = x[::31][:n].float() / 127.5 - 1, y[::31][:n]
    assert len(set(y.tolist())) > 3  # several classes, not one
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return x, eps, Labels(y, torch.full((n,), u))


def test_guided_g_is_trained_on_the_forward_models_unguided_z(trained_cond_flow, labelled_digits):
    """G's input in training is F(x~ | c) of the ordinary conditional flow (what it sees as
    z ~ N(0, I) at sampling), never the guided flow's z."""
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL, guidance_max=3.0), 49, 16, 2, num_classes=10)
    x, eps, labels = batch(labelled_digits)
    seen = []
    g.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    biflow_losses(g, trained_cond_flow, x, eps, labels)
    flow = trained_cond_flow
    unguided, _, _ = flow(x + flow.cfg.noise_std * eps, y=labels.y)
    guided, _, _ = flow(x + flow.cfg.noise_std * eps, y=labels.y, w=1.5)
    assert torch.equal(seen[0], unguided)  # u = 0.5 -> w = 1.67 for these images
    assert not torch.allclose(seen[0], guided, atol=1e-3)


def test_training_time_guidance_fits_the_implied_conditional_state(
    trained_cond_flow, labelled_digits
):
    """recon = MSE((G(z | c, w) + w G(z | none, w)) / (1 + w), x) for kept labels (eq. 5)."""
    torch.manual_seed(0)
    cfg = BiFlowConfig(**SMALL, guidance_max=2.0, align_weight=0.0)
    g = ReverseModel(cfg, 49, 16, 2, num_classes=10)
    x, eps, labels = batch(labelled_digits, u=0.55)  # kept: w = (0.55 - 0.1) / 0.9 * 2 = 1.0
    y, w, kept = conditioning(trained_cond_flow, cfg, labels)
    assert kept.all() and torch.allclose(w, torch.ones(16))
    losses = biflow_losses(g, trained_cond_flow, x, eps, labels)
    flow = trained_cond_flow
    z, _, _ = flow(x + flow.cfg.noise_std * eps, y=y)
    with torch.no_grad():
        c, _ = g(z, y=y, w=w)
        u, _ = g(z, y=torch.full_like(y, 10), w=w)
    want = torch.nn.functional.mse_loss((c + u) / 2, flow.to_tokens(x))
    assert torch.allclose(losses["recon"], want, rtol=1e-5)
    plain = torch.nn.functional.mse_loss(c, flow.to_tokens(x))
    assert not torch.allclose(losses["recon"], plain, rtol=1e-3)


def test_dropped_labels_train_g_on_the_unconditional_trajectory(trained_cond_flow, labelled_digits):
    cfg = BiFlowConfig(**SMALL, label_drop=0.3)
    x, eps, labels = batch(labelled_digits, u=0.1)  # every label dropped
    y, w, kept = conditioning(trained_cond_flow, cfg, labels)
    assert w is None and not kept.any() and (y == 10).all()


def test_hidden_distillation_goes_through_gs_own_output_projection(trained_flow, digits):
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL, hidden="distill", recon_weight=0.0), 49, 16, 2)
    assert len(g.align_heads) == 0 and g.training_only_params() == 0
    x = digits[:16].float() / 127.5 - 1
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    losses = biflow_losses(g, trained_flow, x, eps)
    losses["loss"].backward()
    assert g.proj_out.weight.grad.abs().sum() > 0  # the align term alone reaches proj_out
    s = BiFlowSampler(g.requires_grad_(False), trained_flow, CPU)
    assert s.factors().reverse == "distilled"


def test_adaptive_weighting_divides_each_distance_by_its_stopped_size():
    cfg = BiFlowConfig(**SMALL, adaptive=True, adaptive_p=1.0, adaptive_c=1e-3)
    d = torch.tensor([4.0, 0.01], requires_grad=True)
    loss = reduce(d, cfg)
    assert torch.allclose(loss, ((d / (d + 1e-3)).mean()).detach())
    loss.backward()  # the weight is stopped: each term pulls with 1 / (D + c), so alike
    assert torch.allclose(d.grad, 0.5 / (d.detach() + 1e-3))
    fixed = reduce(d, BiFlowConfig(**SMALL))
    assert torch.allclose(fixed, d.mean())


def test_state_normalisation_is_a_switch_of_its_own():
    pred, target = torch.zeros(4, 3), torch.full((4, 3), 2.0) + torch.arange(3.0)
    raw = distance(pred, target, normalise=False)
    assert torch.allclose(distance(pred, target, normalise=True), raw / target.var())


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_norm_control_clips_a_and_b_as_named(mode):
    cfg = TarFlowConfig(**SMALL, norm_clip=1.0, clip_mode=mode)
    block = FlowBlock(cfg, 4, 2, flip=False)
    a, b = block.affine(torch.tensor([[0.5, 3.0, -3.0, 0.2]]))
    expected = torch.tensor([0.5, 1.0, -1.0, 0.2])
    if mode == "soft":
        expected = torch.tanh(torch.tensor([0.5, 3.0, -3.0, 0.2]))
    assert torch.allclose(torch.cat([a, b], -1), expected[None])


def test_norm_control_factor_names_both_switches():
    hard = TarFlowConfig(norm_clip=3.0, clip_mode="hard")
    assert norm_control(hard, True) == "on"
    assert norm_control(TarFlowConfig(), False) == "off"
    assert norm_control(TarFlowConfig(), True) == "normalised states"
    soft = TarFlowConfig(norm_clip=3.0)
    assert norm_control(soft, True) == "soft clip + normalised states"
    assert norm_control(hard) == "on" and norm_control(soft) == "soft clip"  # F alone: the clip
    with pytest.raises(FieldError, match="clip_mode"):
        TarFlowConfig(clip_mode="tanh")


def test_inference_time_guidance_is_two_evaluations_stage_by_stage(
    trained_cond_flow, labelled_digits
):
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(**SMALL), 49, 16, 2, num_classes=10).requires_grad_(False)
    mk = lambda w: BiFlowSampler(g, trained_cond_flow, CPU, SamplingConfig(guidance=w))  # noqa: E731
    plain, guided = mk(0.0).sample(list(range(4)), 4), mk(1.5).sample(list(range(4)), 4)
    assert plain.nfe == 1 and guided.nfe == 2 and guided.sequential_steps == 1
    assert not torch.equal(plain.images, guided.images)
    assert mk(1.5).factors().guidance_form == "inference"
    z = torch.randn(3, 49, 16)
    y = torch.tensor([1, 2, 3])
    assert torch.allclose(g(z, y=y, cfg=1e-9)[0], g(z, y=y)[0], atol=1e-5)
    without = ReverseModel(BiFlowConfig(**SMALL, label_drop=0.0), 49, 16, 2, num_classes=10)
    with pytest.raises(ValueError, match="label_drop"):
        BiFlowSampler(without, trained_cond_flow, CPU, SamplingConfig(guidance=1.0))


def test_guided_g_needs_labels_dropped():
    with pytest.raises(FieldError, match="label_drop"):
        BiFlowConfig(**SMALL, guidance_max=2.0, label_drop=0.0)


def test_linear_schedule_anneals_the_scale_over_the_tokens(trained_cond_flow, monkeypatch):
    seen = []
    params = FlowBlock.params

    def spy(self, xp, y=None, w=0.0, caches=None, pos=0):
        seen.append(w)
        return params(self, xp, y, w, caches, pos)

    monkeypatch.setattr(FlowBlock, "params", spy)
    cfg = SamplingConfig(guidance=2.0, guidance_schedule="linear")
    s = TarFlowSampler(trained_cond_flow, CPU, cfg)
    s.sample([0], 1)
    t = trained_cond_flow.tokens
    per_block = [2.0 * (i + 1) / (t - 1) for i in range(t - 1)]
    assert seen == per_block * len(trained_cond_flow.blocks)
    assert s.factors().guidance_form == "inference, linear"


def test_a_users_convnext_weights_are_loaded_and_pull_on_g(tmp_path):
    """feature_net convnext: a timm ConvNeXt state dict from the weights folder (random weights
    here, saved as a user would save real ones), its head dropped, gradients reaching the
    images; the key names the file's bytes."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from methods.perceptual import feature_key, user_networks

    net = timm.create_model("convnext_atto", pretrained=False)
    save_file(net.state_dict(), str(tmp_path / "convnext_atto.safetensors"))
    b = BiFlowConfig(
        **SMALL, feature_weight=1.0, feature_net="convnext", convnext_model="convnext_atto"
    )
    b = dataclasses.replace(b, feature_weights=str(tmp_path))
    dist = user_networks(b)
    images = torch.zeros(2, 1, 28, 28, requires_grad=True)
    d = dist(images, torch.rand(2, 1, 28, 28) * 2 - 1)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert images.grad.abs().sum() > 0
    cfg = type("Cfg", (), {"biflow": b})
    key = feature_key(cfg)
    (tmp_path / "convnext_atto.safetensors").write_bytes(b"other")
    assert feature_key(cfg) != key


def test_missing_perceptual_weights_are_named(tmp_path):
    b = BiFlowConfig(**SMALL, feature_weight=1.0, feature_net="lpips+convnext")
    assert "feature_weights: got ''" in feature_problem(b)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "weights-vgg16-lpips.pth").write_bytes(b"x")
    problem = feature_problem(dataclasses.replace(b, feature_weights=str(tmp_path)))
    assert "missing checkpoints/vgg16-397923af.pth, convnext_tiny" in problem
    assert "weights-vgg16-lpips.pth," not in problem.split("missing")[1].split("(")[0]
    with pytest.raises(FieldError, match="feature_net"):
        BiFlowConfig(**SMALL, feature_net="vgg")
