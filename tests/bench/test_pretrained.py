"""DINOv2 and CLIP feature spaces from local weight files: FD/KID/precision/recall through
torch-fidelity, "unavailable" in one line without weights, and no weights file runs code."""

import os
import pickle

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch_fidelity.feature_extractor_clip import CLIPVisual

from bench import pretrained
from bench.config import BenchConfig, ClassifierConfig, EvalConfig, MetricsConfig
from bench.inception import UnavailableError
from bench.metrics import fidelity_metrics, train_domain_classifier
from bench.quality import Scorer
from bench.report import QUALITY, md_table

DINO = "vit_small_patch14_dinov2"
CLIP = "clip-vit-b-32"
TINY_CNN = ClassifierConfig(steps=2, width=8)  # the domain columns are not what is tested
pretrained.register(DINO, CLIP)


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    """A DINOv2 ViT-S/14 of random weights (timm's class), saved as timm saves it."""
    torch.manual_seed(0)
    net = timm.create_model(DINO, pretrained=False, num_classes=0, img_size=224)
    path = tmp_path_factory.mktemp("dino") / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A tiny CLIP ViT image tower (torch-fidelity's class) in OpenAI's key layout."""
    torch.manual_seed(0)
    visual = CLIPVisual(32, 32, 2, 64, 16)  # embed dim, resolution, layers, width, patch
    state = {f"visual.{k}" if not k.startswith("visual.") else k: v
             for k, v in visual.state_dict().items()}  # fmt: skip
    state["text_projection"] = torch.zeros(64, 32)
    path = tmp_path_factory.mktemp("clip") / "clip.pth"
    torch.save(state, path)
    return path


def test_dinov2_features_are_the_cls_token_and_fd_tells_sets_apart(dino_file, digits):
    name = pretrained.dinov2_name(DINO)
    a, b = digits[:20], digits[20:40]
    noise = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    fd = {
        k: fidelity_metrics(a, x, name, str(dino_file), 10, isc=False)["fid"]
        for k, x in (("same", a), ("digits", b), ("noise", noise))
    }
    # (random weights: small distances, ordered as they must be)
    assert abs(fd["same"]) < 1e-3 * fd["digits"] and fd["noise"] > 100 * fd["digits"], fd
    ext = pretrained.DinoV2Extractor(name, ["dinov2"], str(dino_file))
    (f,) = ext(b)
    assert f.shape == (20, 384) and torch.equal(f, ext(b)[0])
    # the CLS token after the final norm, at 224 px with ImageNet normalisation
    x = pretrained._rgb_float(b, 224, pretrained.IMAGENET)
    assert torch.allclose(f, ext.net.forward_features(x)[:, 0], atol=1e-5)


def test_clip_metrics_appear_in_a_scorer_with_its_weights(clip_file, dino_file, digits, tmp_path):
    domain = tmp_path / "domain.pt"
    train_domain_classifier(
        digits, torch.arange(len(digits)) % 10, ClassifierConfig(steps=2, width=8), domain
    )
    cfg = BenchConfig(
        eval=EvalConfig(kid_subset=8),
        metrics=MetricsConfig(
            extractors=("domain", "dinov2", "clip"),
            inception_samples=16,
            dinov2_weights=str(dino_file),
            clip_weights=str(clip_file),
            bootstrap=0,
        ),
    )
    cols = Scorer(cfg, digits[:16], "d", domain, tmp_path / "s", torch.device("cpu")).score(
        digits[16:32]
    )
    for space in ("dinov2", "clip"):
        for m in ("fd", "kid", "precision", "recall"):
            assert torch.isfinite(torch.tensor(cols[f"{m}_{space}"])), (m, space)
    assert cols["n_samples_inception"] == 16
    shown = md_table(pd.DataFrame([{"method": "tarflow", **cols}]), QUALITY)  # report.md's table
    assert "| FD dinov2 " in shown and "| FD clip " in shown


def test_without_weights_each_is_unavailable_in_one_line(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    domain = tmp_path / "domain.pt"
    train_domain_classifier(
        digits, torch.arange(len(digits)) % 10, ClassifierConfig(steps=2, width=8), domain
    )
    cfg = BenchConfig(metrics=MetricsConfig(extractors=("domain", "dinov2", "clip"), bootstrap=0))
    scorer = Scorer(cfg, digits[:16], "d", domain, tmp_path / "s", torch.device("cpu"))
    cols = scorer.score(digits[16:32])
    assert "fid_domain" in cols and not any(k.endswith(("_dinov2", "_clip")) for k in cols)
    assert "metrics.dinov2_weights" in scorer.unavailable["dinov2"]
    assert "metrics.clip_weights" in scorer.unavailable["clip"]
    assert all("\n" not in msg for msg in scorer.unavailable.values())


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": Payload(marker)}, f)
    with pytest.raises(UnavailableError, match="refused unread") as e:
        pretrained.DinoV2Extractor(pretrained.dinov2_name(DINO), ["dinov2"], str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(UnavailableError, match="refused unread"):
        pretrained.ClipExtractor(pretrained.clip_name(CLIP), ["clip"], str(bad))
    assert not marker.exists()


def test_weights_of_another_network_are_refused_by_name(clip_file, dino_file):
    with pytest.raises(UnavailableError, match="holds other weights than"):
        pretrained.DinoV2Extractor(pretrained.dinov2_name(DINO), ["dinov2"], str(clip_file))
    with pytest.raises(UnavailableError, match="holds no CLIP weights"):
        pretrained.ClipExtractor(pretrained.clip_name(CLIP), ["clip"], str(dino_file))
