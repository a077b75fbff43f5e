"""Every configured quality metric of one image set against the reference set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from bench.config import BenchConfig
from bench.inception import (
    OFFLINE,
    STANDARD,
    UnavailableError,
    clean_features,
    clean_fid_from_features,
    standard_weights,
    with_download_timeout,
)
from bench.metrics import DOMAIN, fidelity_metrics
from methods import dist, faults


class Scorer:
    """Scores image sets with each extractor in ``metrics.extractors``; remembers which metrics
    were unavailable and why, so the report can say so instead of failing the run."""

    def __init__(
        self,
        cfg: BenchConfig,
        reference: torch.Tensor,
        dataset: str,
        domain_path: Path,
        stats_dir: Path,
        device: torch.device,
    ) -> None:
        self.cfg, self.ref, self.dataset = cfg, reference, dataset
        self.domain_path, self.stats_dir, self.cuda = domain_path, stats_dir, device.type == "cuda"
        self.unavailable: dict[str, str] = {}
        self._clean_ref: np.ndarray | None = None
        # The classifier's content, not its config, decides its features.
        self._domain_digest = hashlib.sha256(domain_path.read_bytes()).hexdigest()[:12]

    def _cache(self, extractor: str, n: int, weights: str) -> tuple[Path, str]:
        name = f"{self.dataset}-reference{n}-{extractor}-{weights}".replace("/", "_")
        return self.stats_dir, name

    def _standard_weights(self) -> tuple[bool, str | None]:
        """Whether the standard Inception can run, and its weights path (None: torch-fidelity's
        own hub cache); why not goes to ``unavailable``. Rank 0 looks and every rank follows its
        answer, so all ranks take the same metric path under torchrun."""
        if "inception" in self.unavailable:
            return False, None
        found: tuple[bool, str | None] | None = None
        if dist.is_main():
            m = self.cfg.metrics
            try:
                found = (True, standard_weights(m.inception_weights, m.allow_download))
            except UnavailableError as e:
                found = (False, str(e))
        ok, value = dist.broadcast(found)
        if not ok:
            self.unavailable["inception"] = value
            return False, None
        return True, value

    def score(self, images: torch.Tensor, inception: bool = True) -> dict[str, float]:
        """Every configured metric of ``images``; ``inception=False``: the domain extractor's
        only (the Gaussian-noise anchor, whose Inception numbers would say nothing)."""
        m, kid = self.cfg.metrics, self.cfg.eval.kid_subset
        q = fidelity_metrics(
            images,
            self.ref,
            DOMAIN,
            self.domain_path,
            kid,
            cuda=self.cuda,
            reference_cache=self._cache("domain", len(self.ref), self._domain_digest),
        )
        faults.point("metrics")
        cols = {
            **_named(q, "domain", "fid", "is", "is_std", "kid", "kid_std", "precision", "recall"),
            "n_samples": len(images),
        }
        n = min(m.inception_samples, len(images), len(self.ref))
        gen, ref = images[:n], self.ref[:n]
        if not inception:
            return cols
        if "inception_offline" in m.extractors:
            try:
                q = fidelity_metrics(
                    gen,
                    ref,
                    OFFLINE,
                    None,
                    kid,
                    cuda=self.cuda,
                    isc=False,
                    reference_cache=self._cache("inception_offline", n, "fh"),
                )
                cols |= _named(
                    q, "inception_offline", "fid", "kid", "kid_std", "precision", "recall"
                )
                if m.clean_fid:
                    if self._clean_ref is None:
                        self._clean_ref = clean_features(ref)
                    cols["fid_clean_inception_offline"] = clean_fid_from_features(
                        clean_features(gen), self._clean_ref
                    )
            except UnavailableError as e:
                self.unavailable["inception_offline"] = str(e)
        available, weights = (
            self._standard_weights() if "inception" in m.extractors else (False, None)
        )
        if available:
            try:
                q = with_download_timeout(
                    lambda: fidelity_metrics(
                        gen,
                        ref,
                        STANDARD,
                        weights,
                        kid,
                        cuda=self.cuda,
                        reference_cache=self._cache("inception", n, "tf20151205"),
                    )
                )
                cols |= _named(q, "inception", "fid", "is", "kid", "precision", "recall")
            except UnavailableError as e:
                self.unavailable["inception"] = str(e)
        if "fid_inception_offline" in cols or "fid_inception" in cols:
            cols["n_samples_inception"] = n
        return cols


def _named(q: dict[str, float], extractor: str, *metrics: str) -> dict[str, float]:
    """Result columns ``<metric>_<extractor>``: every number names the extractor behind it."""
    return {f"{k}_{extractor}": q[k] for k in metrics}
