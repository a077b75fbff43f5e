"""The Scorer: every configured metric of an image set, each column named by its extractor, the
ones that cannot run recorded with their reason instead of failing, and the reference features
cached under the classifier's content."""

import shutil
from dataclasses import replace

import pytest
import torch

from bench.config import BenchConfig, ClassifierConfig, EvalConfig, MetricsConfig
from bench.metrics import DOMAIN, fidelity_metrics, train_domain_classifier
from bench.quality import Scorer

CPU = torch.device("cpu")
KID = 32
DOMAIN_COLS = [
    f"{m}_domain" for m in ("fid", "is", "is_std", "kid", "kid_std", "precision", "recall")
]
# the 95% bootstrap interval of each (metrics.bootstrap; recall has none: bench.bootstrap)
BOOT_COLS = [f"{m}_domain_{end}" for m in ("fid", "kid", "precision") for end in ("lo", "hi")]


TINY_CNN = ClassifierConfig(steps=3, width=8, batch_size=32)  # any classifier: only equalities


@pytest.fixture(scope="module")
def trained_domain(tmp_path_factory, digits, digit_labels):
    path = tmp_path_factory.mktemp("quality") / "domain.pt"
    train_domain_classifier(digits, digit_labels, TINY_CNN, path)
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch, digits, trained_domain):
    """A config with the domain and the standard Inception extractors, where the standard
    Inception's weights are not to be found (an empty torch hub folder, no download)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = BenchConfig(
        eval=EvalConfig(kid_subset=KID),
        metrics=MetricsConfig(extractors=("domain", "inception")),
    )
    domain = tmp_path / "domain.pt"
    shutil.copy(trained_domain, domain)
    return cfg, digits[:64], digits[64:128], domain, tmp_path / "stats"


def test_the_domain_columns_are_torch_fidelitys_numbers_and_a_missing_extractor_is_noted(setup):
    cfg, ref, gen, domain, stats = setup
    scorer = Scorer(cfg, ref, "digits", domain, stats, CPU)
    want = fidelity_metrics(gen, ref, DOMAIN, domain, KID)
    for _ in range(2):  # the second time from the cached reference features
        cols = scorer.score(gen)
        assert sorted(cols) == sorted([*DOMAIN_COLS, *BOOT_COLS, "n_samples"])
        assert cols["n_samples"] == 64
        for c in DOMAIN_COLS:
            assert cols[c] == pytest.approx(want[c.removesuffix("_domain")], rel=1e-6, abs=1e-9)
        for m in ("fid", "kid", "precision"):  # centred on the reported value
            assert cols[f"{m}_domain_lo"] <= cols[f"{m}_domain"] <= cols[f"{m}_domain_hi"]
    assert list(scorer.unavailable) == ["inception"]
    assert "weights-inception-2015-12-05" in scorer.unavailable["inception"]
    assert any(stats.iterdir())
    assert sorted(scorer.score(gen, inception=False)) == sorted(
        [*DOMAIN_COLS, *BOOT_COLS, "n_samples"]
    )


def test_another_classifier_in_the_same_file_never_reads_the_old_ones_cached_features(
    setup, digits, digit_labels
):
    cfg, ref, gen, domain, stats = setup
    first = Scorer(cfg, ref, "digits", domain, stats, CPU).score(gen, inception=False)
    train_domain_classifier(digits, digit_labels, replace(TINY_CNN, seed=1), domain)
    again = Scorer(cfg, ref, "digits", domain, stats, CPU).score(gen, inception=False)
    want = fidelity_metrics(gen, ref, DOMAIN, domain, KID)
    assert again["fid_domain"] == pytest.approx(want["fid"], rel=1e-6)
    assert again["fid_domain"] != pytest.approx(first["fid_domain"], rel=1e-3)
