"""Perceptual distances for BiFlow's feature loss: images (b, C, H, W) in [-1, 1] -> (b,).

``cnn``: squared distance between the features of a small CNN trained here on the training
split (offline, always available; never the network that scores FID). ``lpips``: torch-fidelity's
LPIPS-VGG16 (the paper's perceptual loss), whose two weights files a user provides in a folder,
since nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.biflow_loss import distance

FEATURE_NETS = ("cnn", "lpips")
# torch.hub's names for the files torch-fidelity's LPIPS loads: its linear heads, then VGG16
LPIPS_FILES = ("weights-vgg16-lpips.pth", "vgg16-397923af.pth")


class FeatureDistance(nn.Module):
    """Per-image squared distance of a frozen network's features, divided by the reference
    features' variance over the batch (so the term's scale does not depend on the network)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.net(targets)
        return distance(self.net(images), ref, normalise=True)


class LPIPSDistance(nn.Module):
    """LPIPS-VGG16 between images and targets; grey images are repeated to three channels."""

    def __init__(self, weights_dir: str | Path) -> None:
        super().__init__()
        self.lpips = load_lpips(weights_dir)

    @staticmethod
    def _rgb255(x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(-1, 1) + 1) * 127.5  # LPIPS normalises inputs given in [0, 255]
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.lpips(self._rgb255(images), self._rgb255(targets)).flatten()


def lpips_problem(weights_dir: str) -> str:
    """Why biflow.feature_weights cannot give LPIPS its weights ("" when it can)."""
    if not weights_dir:
        return (
            "biflow.feature_weights: got ''; feature_net lpips needs a folder holding "
            f"checkpoints/{LPIPS_FILES[0]} and checkpoints/{LPIPS_FILES[1]} (torch.hub's layout; "
            "nothing is downloaded at run time)"
        )
    missing = [f for f in LPIPS_FILES if not (Path(weights_dir) / "checkpoints" / f).is_file()]
    if missing:
        return (
            f"biflow.feature_weights: got {weights_dir!r}; missing "
            + ", ".join(f"checkpoints/{f}" for f in missing)
            + " (torch.hub's layout: the files torch-fidelity's LPIPS-VGG16 loads)"
        )
    return ""


def load_lpips(weights_dir: str | Path) -> nn.Module:
    """torch-fidelity's SampleSimilarityLPIPS, its weights read from ``weights_dir`` (torch.hub
    looks there first and finds them, so nothing is fetched)."""
    if problem := lpips_problem(str(weights_dir)):
        raise FileNotFoundError(problem)
    from torch_fidelity.sample_similarity_lpips import SampleSimilarityLPIPS

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(weights_dir))
    try:
        net = SampleSimilarityLPIPS("lpips-vgg16")
    finally:
        torch.hub.set_dir(before)
    return net.eval().requires_grad_(False)


# What the feature loss compares, by biflow.feature_net (the report says which it is).
FEATURE_NET = {"cnn": "independent CNN", "lpips": "LPIPS-VGG16"}


def feature_classifier_config(cfg: Any) -> Any:
    """The network of the feature loss: a CNN trained like the domain classifier
    (``cfg.classifier``) but narrower and from another seed, so the loss never optimises the
    network that scores FID."""
    c = cfg.classifier
    return replace(c, width=max(8, c.width * 2 // 3), seed=c.seed + 1)


def feature_key(cfg: Any) -> tuple:
    """What else identifies G: the feature network its loss used (the CNN's config, or the
    digests of the LPIPS weights files)."""
    b = cfg.biflow
    if not b.feature_weight:
        return ()
    if b.feature_net == "lpips":
        folder = Path(b.feature_weights) / "checkpoints"
        return tuple(hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in LPIPS_FILES)
    return (feature_classifier_config(cfg),)
