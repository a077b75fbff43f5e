"""Perceptual distances for BiFlow's feature loss: images (b, C, H, W) in [-1, 1] -> (b,).

``cnn``: squared distance between the features of a small CNN trained here on the training
split (offline, always available; never the network that scores FID). The paper's networks, whose
weights a user provides in one folder (``biflow.feature_weights``), since nothing is downloaded
at run time: ``lpips``, torch-fidelity's LPIPS-VGG16 (``checkpoints/`` of torch.hub's layout);
``convnext``, the pooled features of a timm ConvNeXt (``biflow.convnext_model``, its state dict
as ``MODEL.safetensors`` or ``MODEL.pth``); ``lpips+convnext``, their sum (the paper's final
recipe).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.biflow_loss import distance

FEATURE_NETS = ("cnn", "lpips", "convnext", "lpips+convnext")
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


def _convnext_file(folder: str, model: str) -> Path | None:
    found = [Path(folder) / f"{model}{ext}" for ext in (".safetensors", ".pth")]
    return next((f for f in found if f.is_file()), None)


def _weight_files(b: Any) -> list[Path]:
    """The files the perceptual networks of ``b`` (the biflow section) read, in order."""
    folder, nets = b.feature_weights, b.feature_net.split("+")
    files = [Path(folder) / "checkpoints" / f for f in LPIPS_FILES] if "lpips" in nets else []
    if "convnext" in nets:
        files.append(_convnext_file(folder, b.convnext_model) or Path(folder, b.convnext_model))
    return files


def feature_problem(b: Any) -> str:
    """Why ``biflow.feature_weights`` cannot give the networks of ``biflow.feature_net`` their
    weights ("" when it can, or when the net is the CNN trained here)."""
    if b.feature_net == "cnn":
        return ""
    layout = (
        f"checkpoints/{LPIPS_FILES[0]} and checkpoints/{LPIPS_FILES[1]} (torch.hub's layout) for "
        f"lpips, {b.convnext_model}.safetensors or .pth (a timm state dict) for convnext"
    )
    if not b.feature_weights:
        return (
            f"biflow.feature_weights: got ''; feature_net {b.feature_net} needs a folder holding "
            f"{layout}; nothing is downloaded at run time"
        )
    missing = [str(f.relative_to(b.feature_weights)) for f in _weight_files(b) if not f.is_file()]
    if missing:
        return (
            f"biflow.feature_weights: got {b.feature_weights!r}; missing {', '.join(missing)} "
            f"(it holds {layout})"
        )
    if "convnext" in b.feature_net:
        try:
            import timm  # noqa: F401
        except ImportError:
            return (
                f"biflow.feature_net: got {b.feature_net!r}; convnext needs timm "
                "(pip install -e '.[perceptual]'); allowed without it: cnn, lpips"
            )
    return ""


def load_lpips(weights_dir: str | Path) -> nn.Module:
    """torch-fidelity's SampleSimilarityLPIPS, its weights read from ``weights_dir`` (torch.hub
    looks there first and finds them, so nothing is fetched)."""
    from torch_fidelity.sample_similarity_lpips import SampleSimilarityLPIPS

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(weights_dir))
    try:
        net = SampleSimilarityLPIPS("lpips-vgg16")
    finally:
        torch.hub.set_dir(before)
    return net.eval().requires_grad_(False)


class ConvNeXtDistance(nn.Module):
    """Squared distance of a timm ConvNeXt's pooled features (ImageNet-normalised RGB input
    at ``size`` px), normalised like :class:`FeatureDistance`."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, weights: Path, model: str, size: int = 224) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(model, pretrained=False, num_classes=0)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}  # the logits
        self.net.load_state_dict(state, strict=True)
        self.net.eval().requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(-1, 1) + 1) / 2
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = nn.functional.interpolate(x, (self.size, self.size), mode="bilinear")
        return self.net((x - self.mean) / self.std)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self._features(targets)
        return distance(self._features(images), ref, normalise=True)


class SumDistance(nn.Module):
    """The sum of several perceptual distances (LPIPS + ConvNeXt, the paper's final loss)."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(p(images, targets) for p in self.parts)


def user_networks(b: Any) -> nn.Module:
    """The perceptual distance of ``biflow.feature_net`` (not ``cnn``) from the user's weights."""
    if problem := feature_problem(b):
        raise FileNotFoundError(problem)
    parts = []
    for net in b.feature_net.split("+"):
        if net == "lpips":
            parts.append(LPIPSDistance(b.feature_weights))
        else:
            weights = _convnext_file(b.feature_weights, b.convnext_model)
            parts.append(ConvNeXtDistance(weights, b.convnext_model))
    return parts[0] if len(parts) == 1 else SumDistance(*parts)


# What the feature loss compares, by biflow.feature_net (the report says which it is).
FEATURE_NET = {
    "cnn": "independent CNN",
    "lpips": "LPIPS-VGG16",
    "convnext": "ConvNeXt",
    "lpips+convnext": "LPIPS-VGG16 + ConvNeXt",
}


def feature_classifier_config(cfg: Any) -> Any:
    """The network of the feature loss: a CNN trained like the domain classifier
    (``cfg.classifier``) but narrower and from another seed, so the loss never optimises the
    network that scores FID."""
    c = cfg.classifier
    return replace(c, width=max(8, c.width * 2 // 3), seed=c.seed + 1)


def feature_key(cfg: Any) -> tuple:
    """What else identifies G: the feature network its loss used (the CNN's config, or the
    digests of the user's weights files)."""
    b = cfg.biflow
    if not b.feature_weight:
        return ()
    if b.feature_net != "cnn":
        return tuple(hashlib.sha256(f.read_bytes()).hexdigest() for f in _weight_files(b))
    return (feature_classifier_config(cfg),)
