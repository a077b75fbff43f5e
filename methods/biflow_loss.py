"""BiFlow's training objective: G is fitted to the trajectory of a frozen TarFlow F.

F maps noisy data x~ = x + sigma*eps through states h_0 = x~, ..., h_K = z. G, given z, is asked
for every intermediate state (hidden alignment through a learned head per state, or hidden
distillation through G's own output projection; neither: naive distillation, the output alone)
and for the clean image (learned denoising) or x~ (without). Each distance term D is a mean over
images of per-image distances; with adaptive weighting (the paper's eq. 7) each image's D is
weighted by sg((D + c)^-p), so terms of different scales pull alike.

Class-conditional G: a share ``label_drop`` of the labels is replaced by "no class", and those
images are fitted to F's unconditional trajectory. With training-time guidance (eq. 5) G is also
given a scale w ~ U[0, guidance_max] and its guided output G(. | c, w) is trained through the
conditional state it implies, (G(. | c, w) + w sg(G(. | none, w))) / (1 + w), against F's
ordinary (unguided) conditional trajectory, so G's input is always the z it sees at sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from methods import dist
from methods.flow import TarFlow
from methods.training import Labels

# images (b, C, H, W) in [-1, 1], targets of that shape -> one perceptual distance per image
Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def distance(pred: torch.Tensor, target: torch.Tensor, normalise: bool) -> torch.Tensor:
    """Per-image mean squared error (b,); ``normalise``: divided by the target's variance over
    the batch (over every rank's share under torchrun), so no state's scale dominates."""
    d = (pred - target).pow(2).flatten(1).mean(1)
    return d / dist.variance(target.detach()).clamp_min(1e-6) if normalise else d


def reduce(d: torch.Tensor, cfg) -> torch.Tensor:
    """The batch mean of per-image distances, adaptively weighted when ``cfg.adaptive``."""
    if not cfg.adaptive:
        return d.mean()
    weight = (d.detach() + cfg.adaptive_c).pow(-cfg.adaptive_p)
    return (weight * d).mean()


def conditioning(
    flow: TarFlow, cfg, labels: Labels | None
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(labels with "no class" where dropped, guidance scales, kept mask) of a training batch;
    all None for an unconditional flow. One uniform draw per image decides both the dropout and
    (rescaled within its side of ``label_drop``) the scale w, uniform on [0, guidance_max]."""
    n = flow.cfg.num_classes
    if not n:
        return None, None, None
    if labels is None:
        raise ValueError("a class-conditional flow needs labelled training data")
    u, p = labels.u, cfg.label_drop
    kept = u >= p
    y = torch.where(kept, labels.y, n)
    if not cfg.guidance_max:
        return y, None, kept
    frac = torch.where(kept, (u - p) / max(1 - p, 1e-12), u / max(p, 1e-12))
    return y, frac.clamp(0, 1) * cfg.guidance_max, kept


def _in_flow_space(g: nn.Module, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """G's intermediate states r_{K-1} .. r_0 in F's token space: through the alignment heads
    (hidden alignment) or through G's own output projection (hidden distillation)."""
    if g.cfg.hidden == "distill":
        return [g.proj_out(g.norm(r)) for r in hidden]
    return [head(r) for head, r in zip(g.align_heads, hidden, strict=True)]


def biflow_losses(
    g: nn.Module,
    flow: TarFlow,
    x: torch.Tensor,
    eps: torch.Tensor,
    labels: Labels | None = None,
    features: Perceptual | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted total and each term, for clean images x (b, C, H, W) in [-1, 1] and
    standard normal noise eps of their shape. ``g`` is the ReverseModel or its
    DistributedDataParallel wrapper (whose forward must be the call that runs G); ``features``:
    the perceptual distance of the feature loss (biflow.feature_weight)."""
    net = getattr(g, "module", g)
    cfg = net.cfg
    y, w, kept = conditioning(flow, cfg, labels)
    x_noisy = x + flow.cfg.noise_std * eps
    with torch.no_grad():  # h_0 .. h_K of F, unguided (unconditional where labels dropped)
        z, _, states = flow(x_noisy, keep_states=True, y=y)
    out, hidden = g(z, keep_hidden=True, y=y, w=w)
    preds = _in_flow_space(net, hidden)
    if w is not None:  # training-time guidance: the conditional state G's guided output implies
        with torch.no_grad():
            out_u, hidden_u = net(z, keep_hidden=True, y=torch.full_like(y, net.null), w=w)
        scale = w.view(-1, 1, 1)

        def implied(guided: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
            mixed = (guided + scale * uncond) / (1 + scale)
            return torch.where(kept.view(-1, 1, 1), mixed, guided)

        out = implied(out, out_u)
        preds = [implied(p, q) for p, q in zip(preds, _in_flow_space(net, hidden_u), strict=True)]
    k = len(preds)
    align = sum(
        reduce(distance(p, states[k - 1 - j], cfg.normalize_states), cfg)
        for j, p in enumerate(preds)
    ) / max(k, 1)
    target = x if cfg.denoise else x_noisy  # learned denoising: the clean image
    recon = reduce(distance(out, flow.to_tokens(target), normalise=False), cfg)
    total = cfg.align_weight * align + cfg.recon_weight * recon
    terms = {"align": align.detach(), "recon": recon.detach()}
    if cfg.feature_weight:
        if features is None:
            raise ValueError("biflow.feature_weight > 0 needs a feature network")
        feat = reduce(features(flow.to_image(out), target), cfg)
        total = total + cfg.feature_weight * feat
        terms["feature"] = feat.detach()
    return {"loss": total, **terms}


def biflow_objective(flow: TarFlow, features: Perceptual | None = None):
    """The training loss ``loss(net, x, eps, labels)`` of a reverse model against the frozen
    ``flow`` (and the frozen perceptual distance ``features`` of the feature loss)."""

    def loss(
        net: nn.Module, x: torch.Tensor, eps: torch.Tensor, labels: Labels | None = None
    ) -> torch.Tensor:
        return biflow_losses(net, flow, x, eps, labels, features)["loss"]

    return loss


@torch.no_grad()
def inversion_error(
    g: nn.Module,
    flow: TarFlow,
    x: torch.Tensor,
    g_noise: torch.Generator,
    y: torch.Tensor | None = None,
) -> dict[str, float]:
    """How well G inverts F, as relative L2 errors.

    On held-out images x: G(F(x~)) against x~ = x + sigma*eps and against the clean x. On prior
    noise z ~ N(0, I) (what sampling feeds G; at most 256 draws): G(z) against the exact inverse
    F^-1(z), with G's output denoised and F^-1's not, so part of that gap is the denoising G
    learned. Conditional models: ``y`` are the images' labels (the prior draws take the first
    ones), without guidance.
    """
    eps = torch.randn(x.shape, generator=g_noise).to(x.device)
    xn = flow.to_tokens(x + flow.cfg.noise_std * eps)
    z, _, _ = flow(flow.to_image(xn), y=y)
    out, _ = g(z, y=y)
    clean = flow.to_tokens(x)
    # The exact inverse is a full causal decode: 256 prior draws are plenty for a relative error.
    prior = torch.randn(z[:256].shape, generator=g_noise).to(x.device)
    y_prior = None if y is None else y[:256]
    exact = flow.to_tokens(flow.reverse(prior, y=y_prior))
    learned, _ = g(prior, y=y_prior)
    return {
        "rel_err_vs_noisy": ((out - xn).norm() / xn.norm()).item(),
        "rel_err_vs_clean": ((out - clean).norm() / clean.norm()).item(),
        "rel_err_vs_exact_inverse_on_prior": ((learned - exact).norm() / exact.norm()).item(),
        "prior_draws": len(prior),
    }
