"""Reference statistics from outside (an .npz with mu and sigma, as ADM's reference batches and
clean-fid's stats hold them): FID against them equals FID against the images they were made of,
a file that is not such statistics is one line naming the field, and ours are written in that
layout."""

import numpy as np
import pytest
import torch

from bench import refstats
from bench.cli import main
from bench.config import BenchConfig, ClassifierConfig, ConfigError, EvalConfig, MetricsConfig
from bench.export import _npz, channels_last
from bench.metrics import DOMAIN, features, train_domain_classifier
from bench.quality import Scorer
from methods.validate import FieldError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def domain(tmp_path_factory, digits, digit_labels):
    path = tmp_path_factory.mktemp("refstats") / "domain.pt"
    train_domain_classifier(digits, digit_labels, ClassifierConfig(steps=3, width=8), path)
    return path


def _config(stats: str = "", extractor: str = "domain") -> BenchConfig:
    return BenchConfig(
        eval=EvalConfig(kid_subset=32),
        metrics=MetricsConfig(
            extractors=("domain",),
            reference_stats=stats,
            reference_stats_extractor=extractor,
            bootstrap=0,
        ),
    )


def _write(path, ref, domain, **arrays):
    """Our reference batch of ``ref`` with the domain extractor, in the ADM layout."""
    feats = features(ref, DOMAIN, str(domain))
    batch = refstats.batch(channels_last(ref, rgb=True), feats, "domain", images_only=False)
    _npz(path, {**batch, **arrays})
    return path


def test_fid_against_adm_layout_statistics_equals_fid_against_their_images(
    tmp_path, digits, domain
):
    ref, gen = digits[:96], digits[96:192]
    path = _write(tmp_path / "ref.npz", ref, domain)
    with np.load(path, allow_pickle=False) as z:  # the ADM reference-batch layout
        assert {"arr_0", "mu", "sigma"} <= set(z.files)
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (96, 28, 28, 3)
        assert (z["arr_0"][..., 0] == ref[:, 0].numpy()).all()  # channels last, grey as RGB
        d = len(z["mu"])
        assert z["mu"].dtype == z["sigma"].dtype == np.float64 and z["sigma"].shape == (d, d)
    scorer = Scorer(_config(str(path)), ref, "digits", domain, tmp_path / "c", CPU, path)
    cols = scorer.score(gen)
    assert cols["fid_refstats_domain"] == pytest.approx(cols["fid_domain"], rel=1e-6)
    # against statistics of other images, another number
    other = _write(tmp_path / "other.npz", digits[192:288], domain)
    cols = Scorer(_config(str(other)), ref, "digits", domain, tmp_path / "c", CPU, other).score(gen)
    assert cols["fid_refstats_domain"] != pytest.approx(cols["fid_domain"], rel=1e-3)


def test_statistics_written_by_another_tool_are_read_as_they_are(tmp_path, digits, domain):
    """A file with mu and sigma only (clean-fid's stats, or an ADM batch whose mu is float32)."""
    ref, gen = digits[:96], digits[96:192]
    feats = features(ref, DOMAIN, str(domain)).numpy()
    path = tmp_path / "clean.npz"
    np.savez(path, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    cols = Scorer(_config(str(path)), ref, "digits", domain, tmp_path / "c", CPU, path).score(gen)
    assert cols["fid_refstats_domain"] == pytest.approx(cols["fid_domain"], rel=1e-5)


@pytest.mark.parametrize(
    "arrays, says",
    [
        ({"sigma": np.eye(3)}, "no mu array"),
        ({"mu": np.zeros(3), "sigma": np.eye(4)}, r"allowed: mu \(D,\), sigma \(D, D\)"),
        ({"mu": np.full(3, np.nan), "sigma": np.eye(3)}, "non-finite"),
        ({"mu": np.zeros(3), "sigma": np.eye(3), "feature_extractor": np.array("clip")}, "of clip"),
        ({"mu": np.array([object()] * 3), "sigma": np.eye(3)}, "pickled objects"),
    ],
)
def test_a_file_that_is_not_statistics_is_one_line_naming_the_field(tmp_path, arrays, says):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=says) as e:
        refstats.read(path, "domain")
    assert "metrics.reference_stats" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_and_features_of_another_width_are_refused(tmp_path, digits, domain):
    with pytest.raises(ConfigError, match="no such file"):
        refstats.read(tmp_path / "none.npz", "domain")
    path = tmp_path / "wide.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))  # Inception's width, not the CNN's
    scorer = Scorer(_config(str(path)), digits[:64], "d", domain, tmp_path / "c", CPU, path)
    with pytest.raises(ConfigError, match="2048-d features, but .* gives 32-d"):
        scorer.score(digits[64:128])


def test_the_extractor_must_be_one_the_run_computes():
    with pytest.raises(FieldError, match="reference_stats_extractor.*one of metrics.extractors"):
        _config("ref.npz", extractor="inception_offline")


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--out", "x.npz"], "give CONFIG or --run RUN_DIR, one of them"),
        (["bench.yaml", "--num", "1", "--out", "x.npz"], "--num: got 1; allowed: >= 2"),
        (["bench.yaml", "--out", "."], "a folder; bench refstats writes an .npz file"),
        (["--run", "r", "--set", "a=1", "--out", "x.npz"], "--set: a finished run's config"),
    ],
)
def test_bench_refstats_refuses_bad_arguments_in_one_line(argv, says, capsys):
    assert main(["refstats", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
