"""The Inception extractors: offline port through torch-fidelity and clean-fid, and the
standard one's offline behaviour. Small sets keep this fast; the arithmetic is the libraries'."""

import numpy as np
import pytest
import torch
import torch_fidelity

from bench.inception import (
    OFFLINE,
    UnavailableError,
    _to_inception_input,
    _write_pngs,
    clean_features,
    clean_fid_from_features,
    offline_weights,
    standard_weights,
)
from bench.metrics import ImageTensorDataset, fidelity_metrics


@pytest.fixture(scope="module")
def sets(digits):
    return digits[:12], digits[256:268]


def test_input_scaling_is_the_tf_graphs_pixel_over_128_minus_1():
    x = _to_inception_input(torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3), 3)
    assert x.shape == (1, 3, 3, 3)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor([-1.0, 0.0, 0.9921875]))


def test_offline_fid_with_cached_reference_equals_torch_fidelity_called_directly(sets, tmp_path):
    gen, ref = sets
    direct = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(gen),
        input2=ImageTensorDataset(ref),
        cuda=False,
        fid=True,
        kid=True,
        kid_subset_size=6,
        feature_extractor=OFFLINE,
        save_cpu_ram=True,
        verbose=False,
        cache=False,
    )
    for _ in range(2):  # the second call reads the reference features from the cache
        ours = fidelity_metrics(
            gen, ref, OFFLINE, None, 6, isc=False, reference_cache=(tmp_path, "test-ref")
        )
        assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-3)
        assert ours["kid"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-3)
    assert any(tmp_path.iterdir())


def test_clean_fid_is_clean_fids_own_pipeline(sets, tmp_path):
    """clean-fid's compute_fid on two folders is get_folder_features on each, then
    frechet_distance of their means and covariances (cleanfid.fid.compare_folders). Checked
    piece by piece: our features equal that call's with the raw network, and our distance equals
    frechet_distance on features of 32 dimensions (on 2048, clean-fid's sqrtm of a rank-11
    covariance takes ~30 s a call)."""
    from cleanfid import fid as cleanfid

    gen, _ = sets
    net = torch.jit.load(str(offline_weights()), map_location="cpu").eval()
    _write_pngs(gen, tmp_path)
    direct = cleanfid.get_folder_features(
        str(tmp_path),
        model=lambda b: net(b / 128.0 - 1.0),
        num_workers=0,
        batch_size=50,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )
    ours = clean_features(gen)
    np.testing.assert_allclose(ours, direct.reshape(len(gen), -1), rtol=1e-4, atol=1e-5)

    a, b = ours[:, :32].astype(np.float64), ours[:, 32:64].astype(np.float64)
    expected = cleanfid.frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert clean_fid_from_features(a, b) == pytest.approx(float(np.real(expected)), rel=1e-6)
    assert clean_fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_standard_inception_offline_is_unavailable_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UnavailableError, match="weights-inception-2015-12-05"):
        standard_weights("", allow_download=False)
    with pytest.raises(UnavailableError, match="not found"):
        standard_weights(str(tmp_path / "nope.pth"), allow_download=False)
    assert standard_weights("", allow_download=True) is None
