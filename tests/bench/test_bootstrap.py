"""Bootstrap intervals of FID/KID/precision/recall: the fast formulas against torch-fidelity's
own functions, and the intervals' behaviour (containment, shrinking with n, determinism)."""

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kernel_poly, kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric

from bench.bootstrap import _evaluate, _prepare, bootstrap, format_interval, full_set, intervals


def gaussian(n: int, d: int, shift: float = 0.0, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, d)) * scale + shift)


def correlated(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """Features on a tilted low-rank subspace plus a little noise: an ill-spread covariance."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)) * np.linspace(3, 0.1, rank)[:, None]
    x = rng.standard_normal((n, rank)) @ basis + 0.05 * rng.standard_normal((n, d)) + 1.0
    return torch.from_numpy(x)


def grid(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integer features: many exactly tied distances (a radius equal to a distance)."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 3, (n, d)).astype(np.float32))


def tf_fid(gen: torch.Tensor, ref: torch.Tensor) -> float:
    stats = [fid_featuresdict_to_statistics({"f": x}, "f") for x in (gen, ref)]
    return fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]


def tf_prc(gen: torch.Tensor, ref: torch.Tensor) -> dict:
    # save_cpu_ram=True: the path bench.metrics takes
    return prc_featuresdict_to_metric({"f": gen}, {"f": ref}, "f", save_cpu_ram=True, verbose=False)


CASES = {
    "n>d": (gaussian(300, 16, 0.3, 1, 1.2), gaussian(400, 16, seed=2)),
    "n>d correlated": (correlated(500, 96, 12, 3), correlated(300, 96, 12, 4)),
    "n<d": (gaussian(40, 256, 0.2, 5), gaussian(300, 256, seed=6)),
    "n<d correlated": (correlated(60, 128, 20, 7), correlated(80, 128, 20, 8)),
}


@pytest.mark.parametrize("case", CASES)
def test_full_set_fid_is_torch_fidelitys(case):
    gen, ref = CASES[case]
    assert full_set(gen, ref, kid=False, prc=False)["fid"] == pytest.approx(
        tf_fid(gen, ref), rel=1e-6
    )


def test_full_set_fid_of_float32_features():
    gen, ref = gaussian(200, 32, 0.5, 9).float(), gaussian(300, 32, seed=10).float()
    # torch-fidelity averages float32 features in float32; here everything is float64
    assert full_set(gen, ref, kid=False, prc=False)["fid"] == pytest.approx(
        tf_fid(gen, ref), rel=1e-5
    )


PRC_CASES = {
    **CASES,
    "float32": (gaussian(200, 8, 0.4, 11).float(), gaussian(250, 8, seed=12).float()),
    "tied distances": (grid(150, 6, 13), grid(120, 6, 14)),
}


@pytest.mark.parametrize("case", PRC_CASES)
def test_full_set_precision_and_recall_are_torch_fidelitys_counts(case):
    gen, ref = PRC_CASES[case]
    ours, theirs = full_set(gen, ref, kid=False), tf_prc(gen, ref)
    # torch-fidelity returns float32 means: compare the counts of points, exactly
    assert ours["precision"] == round(theirs["precision"] * len(gen)) / len(gen)
    assert ours["recall"] == round(theirs["recall"] * len(ref)) / len(ref)
    assert 0 < ours["precision"] < 1 or case == "n<d"  # the comparison is not vacuous


@pytest.mark.parametrize("case", ["n>d", "n<d correlated"])
def test_full_set_kid_lies_within_torch_fidelitys_subset_std(case):
    gen, ref = CASES[case]
    ours = full_set(gen, ref, prc=False)["kid"]
    kw = {"kid_subset_size": len(gen) // 2, "verbose": False}
    tf = kid_featuresdict_to_metric({"f": gen}, {"f": ref}, "f", **kw)
    mean, std = tf["kernel_inception_distance_mean"], tf["kernel_inception_distance_std"]
    assert std > 0 and abs(ours - mean) <= std


def test_full_set_kid_equals_torch_fidelitys_when_its_subsets_are_the_whole_sets():
    gen, ref = gaussian(120, 24, 0.3, 15), gaussian(120, 24, seed=16)
    tf = kid_featuresdict_to_metric({"f": gen}, {"f": ref}, "f", kid_subset_size=120, verbose=False)
    assert full_set(gen, ref, prc=False)["kid"] == pytest.approx(
        tf["kernel_inception_distance_mean"], rel=1e-9
    )


def evaluate(gen, ref, idx) -> dict[str, np.ndarray]:
    return _evaluate(_prepare(gen, ref, True, True, 3)[1], np.asarray(idx))


@pytest.mark.parametrize("case", ["n>d correlated", "n<d"])  # both sides of the FD formula
def test_each_resample_is_the_metrics_of_the_resampled_rows(case):
    """FID and precision of a resample are torch-fidelity's on the drawn rows; KID is the
    U-statistic over pairs of distinct images; recall keeps the full set's radii."""
    gen, ref = CASES[case]
    idx = np.random.default_rng(0).integers(0, len(gen), (3, len(gen)))
    got = evaluate(gen, ref, idx)
    k_gg, k_gr = kernel_poly(gen.numpy(), gen.numpy()), kernel_poly(gen.numpy(), ref.numpy())
    k_rr = kernel_poly(ref.numpy(), ref.numpy())
    m = len(ref)
    for b, rows in enumerate(idx):
        assert got["fid"][b] == pytest.approx(tf_fid(gen[rows], ref), rel=1e-6)
        n_prec = round(tf_prc(gen[rows], ref)["precision"] * len(gen))
        assert got["precision"][b] == n_prec / len(gen)
        distinct = rows[:, None] != rows[None, :]
        k_xx = k_gg[rows][:, rows][distinct].mean()
        k_yy = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
        expect = k_xx + k_yy - 2 * k_gr[rows].mean()
        assert got["kid"][b] == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_recall_keeps_the_full_sets_radii_and_a_permutation_changes_nothing():
    gen, ref = gaussian(100, 4, 0.3, 17), gaussian(150, 4, seed=18)
    full = full_set(gen, ref)
    perm = evaluate(gen, ref, np.random.default_rng(1).permutation(len(gen))[None])
    for k in full:
        assert perm[k][0] == pytest.approx(full[k], rel=1e-9, abs=1e-12)
    # one image drawn n times: its own ball from the full set (among n copies of itself its
    # k-th neighbour would be at distance 0, and recall 0); KID has no pair of distinct images
    alone = evaluate(gen, ref, np.zeros((1, len(gen)), dtype=int))
    radius = torch.cdist(gen[:1], gen).kthvalue(4).values
    covered = (torch.cdist(ref, gen[:1])[:, 0] <= radius).float().mean().item()
    assert alone["recall"][0] == pytest.approx(covered) and covered > 0
    assert np.isnan(alone["kid"][0])


def test_centred_intervals_always_contain_the_full_set_value():
    for gen, ref in [CASES["n>d"], CASES["n<d"], (gaussian(40, 2048, 0.1, 19), gaussian(60, 2048))]:
        full, iv = full_set(gen, ref), intervals(gen, ref, 60, seed=3)
        for k, (lo, hi) in iv.items():
            assert lo <= full[k] <= hi, (k, lo, full[k], hi)
            assert lo < hi, k


def test_percentile_intervals_contain_unbiased_metrics_but_sit_above_fid():
    """Precision and KID are unbiased in a resample, so their percentile intervals hold the
    full-set value; FID of a resample (~63% distinct images) is biased up well past its width,
    the reason "centred" is the default."""
    gen, ref = gaussian(500, 96, 0.2, 20), gaussian(2000, 96, seed=21)
    full, iv = full_set(gen, ref), intervals(gen, ref, 200, method="percentile")
    for k in ("precision", "kid"):
        assert iv[k][0] <= full[k] <= iv[k][1], k
    assert iv["fid"][0] > full["fid"]


def width(iv: tuple[float, float]) -> float:
    return iv[1] - iv[0]


def test_intervals_shrink_as_the_generated_set_grows():
    ref = gaussian(1000, 8, 0.5, 22)
    small = intervals(gaussian(100, 8, seed=23), ref, 200, kid=False)
    large = intervals(gaussian(800, 8, seed=24), ref, 200, kid=False)
    for k in ("fid", "precision"):
        assert width(small[k]) > 1.8 * width(large[k]), (k, small[k], large[k])


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    gen, ref = CASES["n<d correlated"]
    a, b = intervals(gen, ref, 50, seed=7), intervals(gen, ref, 50, seed=7)
    c = intervals(gen, ref, 50, seed=8)
    assert a == b
    assert all(a[k] != c[k] for k in ("fid", "kid"))
    assert np.array_equal(bootstrap(gen, ref, 20, seed=1)["fid"], bootstrap(gen, ref, 20, 1)["fid"])


@pytest.mark.parametrize("resamples", [0, -5, 2.5, True])
def test_resamples_must_be_a_positive_integer(resamples):
    gen, ref = CASES["n>d"]
    with pytest.raises(ValueError, match=r"resamples must be a positive integer \(>= 1\)"):
        intervals(gen, ref, resamples)


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, 95])
def test_level_must_lie_strictly_between_0_and_1(level):
    gen, ref = CASES["n>d"]
    with pytest.raises(ValueError, match="level must be a number strictly between 0 and 1"):
        intervals(gen, ref, 10, level=level)


def test_bad_inputs_are_refused_by_name():
    gen, ref = CASES["n>d"]
    with pytest.raises(ValueError, match="method must be one of centred, percentile"):
        intervals(gen, ref, 10, method="bca")
    with pytest.raises(ValueError, match="feature dims differ: 16 vs 8"):
        intervals(gen, ref[:, :8], 10)
    with pytest.raises(ValueError, match="gen must be a float"):
        intervals(gen[0], ref, 10)
    with pytest.raises(ValueError, match="at least 4 rows"):
        intervals(gen[:3], ref, 10)


def test_numpy_inputs_and_switched_off_metrics():
    gen, ref = CASES["n>d"]
    iv = intervals(gen.numpy(), ref.numpy(), 10, kid=False, prc=False)
    assert set(iv) == {"fid"}
    assert set(intervals(gen, ref, 10, prc=False)) == {"fid", "kid"}


def test_format_interval():
    assert format_interval(44.1, 47.3) == "[44.10, 47.30]"
    assert format_interval(0.01234, 0.0201, "{:.3f}") == "[0.012, 0.020]"
