"""Reference statistics in the layout outside evaluators use: FID against them, and ours for them.

A reference-statistics file is an ``.npz`` holding ``mu`` (D,) and ``sigma`` (D, D), the mean and
covariance of one extractor's features of a reference set: the layout of guided-diffusion's
(ADM's) reference batches and of clean-fid's stored statistics. ``metrics.reference_stats``
names one; every scored image set then also gets ``fid_refstats_<extractor>``, the Frechet
distance of its features (``metrics.reference_stats_extractor``) to that ``mu``/``sigma``, by
torch-fidelity's own arithmetic. The file is read with ``allow_pickle=False``: it cannot carry
code. Nothing in it says which network made the features, so the config names it; a file this
suite wrote records it (``feature_extractor``) and a different name is refused.

``python -m bench refstats`` writes such a file from a config's (or a finished run's) reference
set: ``arr_0`` (the reference images, uint8 (N, H, W, 3) as the ADM evaluator reads them),
``mu`` and ``sigma`` (float64) of the chosen extractor, and ``feature_extractor``. The ADM
evaluator, given ``mu``, also reads ``mu_s``/``sigma_s`` (its spatial sFID features), which no
extractor here computes: for that evaluator pass ``--images-only`` and it computes its own
statistics from ``arr_0``. The layout and its checks are in docs/export.md.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from bench.config_file import ConfigError

FIELD = "metrics.reference_stats"


def read(path: Path, extractor: str) -> dict[str, np.ndarray]:
    """``{"mu", "sigma"}`` (float64) of the statistics file ``path``, checked: a missing or
    unreadable file, missing keys, wrong shapes, non-finite values or another extractor's
    statistics are one line naming the field and the file."""
    where = f"{FIELD} {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        why = "it holds pickled objects" if "allow_pickle" in str(e) else str(e)[:200]
        raise ConfigError(f"{where}: not a plain .npz of arrays ({why})") from None
    missing = [k for k in ("mu", "sigma") if k not in arrays]
    if missing:
        raise ConfigError(
            f"{where}: no {' or '.join(missing)} array (holds {', '.join(sorted(arrays)) or 'none'}"
            "); allowed: an .npz with mu (D,) and sigma (D, D)"
        )
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ConfigError(
            f"{where}: mu {mu.shape} and sigma {sigma.shape}; allowed: mu (D,), sigma (D, D)"
        )
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise ConfigError(f"{where}: mu and sigma must be numeric (got {mu.dtype}, {sigma.dtype})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError(f"{where}: mu or sigma holds non-finite values")
    made_by = str(arrays["feature_extractor"]) if "feature_extractor" in arrays else None
    if made_by is not None and made_by != extractor:
        raise ConfigError(
            f"{where}: statistics of {made_by} features, but metrics.reference_stats_extractor "
            f"is {extractor}; set it to {made_by}"
        )
    return {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """mu and sigma of (N, D) float32 features as torch-fidelity computes them, in float64."""
    stats = fid_features_to_statistics(features.float().cpu())
    return {k: v.astype(np.float64) for k, v in stats.items()}


def fid_against(features: torch.Tensor, stats: dict[str, np.ndarray]) -> float:
    """FID of generated ``features`` against the file's statistics (torch-fidelity's formula);
    a feature width other than the file's is an error naming both."""
    if features.shape[1] != len(stats["mu"]):
        raise ConfigError(
            f"{FIELD}: statistics of {len(stats['mu'])}-d features, but "
            f"metrics.reference_stats_extractor gives {features.shape[1]}-d ones; set it to the "
            "extractor the file was made with"
        )
    out = fid_statistics_to_metric(statistics(features), stats, verbose=False)
    return float(out["frechet_inception_distance"])


def batch(
    images_hwc: np.ndarray, features: torch.Tensor, extractor: str, images_only: bool
) -> dict[str, np.ndarray]:
    """The arrays of a reference batch: ``arr_0`` (uint8 (N, H, W, 3), as the ADM evaluator
    reads it) and, unless ``images_only``, ``mu``/``sigma`` of ``features`` and the name of the
    extractor that made them (``feature_extractor``)."""
    arrays = {"arr_0": images_hwc}
    if not images_only:
        arrays |= statistics(features)
        arrays["feature_extractor"] = np.array(extractor)
    return arrays
