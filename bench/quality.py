"""Every configured quality metric of one image set against the reference set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import pretrained, refstats
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
from bench.metrics import DOMAIN, features, fidelity_metrics
from methods import dist, faults

BOOTSTRAPPED = ("fid", "kid", "precision")  # metrics with bootstrap intervals (bench.bootstrap)


@dataclass(frozen=True)
class Extractor:
    """How one ``metrics.extractors`` entry scores: its torch-fidelity name, the metrics it
    gives (``fid`` is shown as ``fd`` outside the Inception family), whether it reads every
    image or the first ``metrics.inception_samples``, and how its weights are found (a path, or
    None for the extractor's own default; UnavailableError when there are none)."""

    name: str  # the config name and the suffix of every column
    registered: str  # torch-fidelity's feature-extractor name
    metrics: tuple[str, ...]
    full_set: bool = False
    fid_as: str = "fid"


def _extractors(cfg: BenchConfig) -> dict[str, Extractor]:
    kinds = {
        "domain": Extractor(
            "domain", DOMAIN, ("fid", "is", "is_std", "kid", "kid_std", "precision", "recall"), True
        ),
        "inception_offline": Extractor(
            "inception_offline", OFFLINE, ("fid", "kid", "kid_std", "precision", "recall")
        ),
        "inception": Extractor("inception", STANDARD, ("fid", "is", "kid", "precision", "recall")),
        "dinov2": Extractor(
            "dinov2",
            pretrained.dinov2_name(cfg.metrics.dinov2_model),
            ("fid", "kid", "precision", "recall"),
            fid_as="fd",
        ),
        "clip": Extractor(
            "clip",
            pretrained.clip_name(cfg.metrics.clip_model),
            ("fid", "kid", "precision", "recall"),
            fid_as="fd",
        ),
    }
    return {name: kinds[name] for name in cfg.metrics.extractors}


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
        reference_stats: Path | None = None,
    ) -> None:
        self.cfg, self.ref, self.dataset = cfg, reference, dataset
        self.domain_path, self.stats_dir, self.cuda = domain_path, stats_dir, device.type == "cuda"
        pretrained.register(cfg.metrics.dinov2_model, cfg.metrics.clip_model)
        self.extractors = _extractors(cfg)
        self.unavailable: dict[str, str] = {}
        self._weights: dict[str, tuple[bool, str | None]] = {}
        self._digests: dict[str, str] = {}
        self._clean_ref: np.ndarray | None = None
        m = cfg.metrics
        self.refstats = (
            refstats.read(reference_stats, m.reference_stats_extractor)
            if reference_stats is not None
            else None
        )
        # The classifier's content, not its config, decides its features.
        self._domain_digest = hashlib.sha256(domain_path.read_bytes()).hexdigest()[:12]

    def _cache(self, extractor: str, n: int, weights: str) -> tuple[Path, str]:
        name = f"{self.dataset}-reference{n}-{extractor}-{weights}".replace("/", "_")
        return self.stats_dir, name

    def _find_weights(self, name: str) -> str | None:
        """The weights of extractor ``name`` (None: its own default); UnavailableError if none."""
        m = self.cfg.metrics
        finders: dict[str, Callable[[], str | None]] = {
            "domain": lambda: str(self.domain_path),
            "inception_offline": lambda: None,
            "inception": lambda: standard_weights(m.inception_weights, m.allow_download),
            "dinov2": lambda: pretrained.dinov2_weights(m.dinov2_weights),
            "clip": lambda: pretrained.clip_weights(m.clip_weights, m.clip_model),
        }
        return finders[name]()

    def weights(self, name: str) -> tuple[bool, str | None]:
        """Whether extractor ``name`` can run, and its weights path; why not goes to
        ``unavailable``. Rank 0 looks and every rank follows its answer, so all ranks take the
        same metric path under torchrun."""
        if name not in self._weights:
            found: tuple[bool, str | None] | None = None
            if dist.is_main():
                try:
                    found = (True, self._find_weights(name))
                except UnavailableError as e:
                    found = (False, str(e))
            self._weights[name] = dist.broadcast(found)
        ok, value = self._weights[name]
        if not ok:
            self.unavailable[name] = value
            return False, None
        return True, value

    def _weights_id(self, name: str, weights: str | None) -> str:
        """What identifies the extractor's weights in the reference-features cache name."""
        if name == "domain":
            return self._domain_digest
        if weights is None:
            return {"inception_offline": "fh", "inception": "tf20151205"}.get(name, name)
        if weights not in self._digests:  # read once: DINOv2/CLIP files run to gigabytes
            self._digests[weights] = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]
        return self._digests[weights]

    def _one(self, ex: Extractor, gen: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        """The columns of one extractor (empty when it is unavailable)."""
        ok, weights = self.weights(ex.name)
        if not ok:
            return {}
        m = self.cfg.metrics
        stats = self.refstats if m.reference_stats_extractor == ex.name else None
        try:
            q = with_download_timeout(
                lambda: fidelity_metrics(
                    gen,
                    ref,
                    ex.registered,
                    weights,
                    self.cfg.eval.kid_subset,
                    cuda=self.cuda,
                    isc="is" in ex.metrics,
                    reference_cache=self._cache(
                        ex.name, len(ref), self._weights_id(ex.name, weights)
                    ),
                    reference_stats=stats,
                    bootstrap=m.bootstrap,
                ),
                what=ex.name,
            )
        except UnavailableError as e:
            self.unavailable[ex.name] = str(e)
            return {}
        shown = {k: ex.fid_as if k == "fid" else k for k in (*ex.metrics, *BOOTSTRAPPED)}
        cols = {f"{shown[k]}_{ex.name}": q[k] for k in ex.metrics}
        for k in BOOTSTRAPPED:  # the 95% bootstrap interval, where one was computed
            for end in ("lo", "hi"):
                if f"{k}_{end}" in q:
                    cols[f"{shown[k]}_{ex.name}_{end}"] = q[f"{k}_{end}"]
        if "fid_refstats" in q:
            cols[f"fid_refstats_{ex.name}"] = q["fid_refstats"]
        return cols

    def features(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """The FID features of ``images`` by extractor ``name`` (UnavailableError: none here)."""
        ok, weights = self.weights(name)
        if not ok:
            raise UnavailableError(self.unavailable[name])
        return features(images, self.extractors[name].registered, weights)

    def reference_count(self, name: str) -> int:
        """How many reference images extractor ``name`` scores against in a run."""
        full = self.extractors[name].full_set
        return len(self.ref) if full else min(self.cfg.metrics.inception_samples, len(self.ref))

    def score(self, images: torch.Tensor, inception: bool = True) -> dict[str, float]:
        """Every configured metric of ``images``; ``inception=False``: the domain extractor's
        only (the Gaussian-noise anchor, whose pretrained-network numbers would say nothing)."""
        m = self.cfg.metrics
        n = min(m.inception_samples, len(images), len(self.ref))
        cols: dict[str, float] = {}
        for ex in self.extractors.values():
            if not ex.full_set and not inception:
                continue
            gen, ref = (images, self.ref) if ex.full_set else (images[:n], self.ref[:n])
            cols |= self._one(ex, gen, ref)
            if ex.full_set:
                cols["n_samples"] = len(images)
                faults.point("metrics")
        if m.clean_fid and "fid_inception_offline" in cols:
            if self._clean_ref is None:
                self._clean_ref = clean_features(self.ref[:n])
            cols["fid_clean_inception_offline"] = clean_fid_from_features(
                clean_features(images[:n]), self._clean_ref
            )
        if any(
            not ex.full_set and f"{ex.fid_as}_{ex.name}" in cols for ex in self.extractors.values()
        ):
            cols["n_samples_inception"] = n
        return cols
