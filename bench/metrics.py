"""Quality metrics through torch-fidelity, with a `domain` feature extractor trained here.

The domain extractor is a small CNN classifier trained on the dataset's training split. Its
pooled penultimate features feed FID and KID; its logits feed the Inception Score. It is
registered with torch-fidelity (``register_feature_extractor``), so the metric arithmetic is
torch-fidelity's own, and it works offline on any labelled dataset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (
    create_feature_extractor,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)
from tqdm.auto import tqdm

from bench import refstats
from bench.bootstrap import intervals
from bench.config import ClassifierConfig
from bench.featcache import load_reference_features, save_reference_features
from methods import checkpoint, dist

DOMAIN = "flowbench-domain"


@dataclass(frozen=True)
class DomainSpec:
    channels: int
    image_size: int
    classes: int
    width: int


class DomainNet(nn.Module):
    """uint8 images (b, C, H, W) -> pooled features (b, 4w) and class logits (b, classes)."""

    def __init__(self, spec: DomainSpec) -> None:
        super().__init__()
        w = spec.width

        def conv(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.GELU()
            )

        self.body = nn.Sequential(
            conv(spec.channels, w, 1),
            conv(w, 2 * w, 2),
            conv(2 * w, 2 * w, 1),
            conv(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, spec.classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x.float() / 127.5 - 1.0)
        return feats, self.head(feats)


class EagerFeatureExtractor(FeatureExtractorBase):
    """Base of the extractors registered here: they run eagerly, never through torch.compile."""

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError


class DomainFeatureExtractor(EagerFeatureExtractor):
    """torch-fidelity adapter: features ``domain_features`` (FID/KID/PRC), ``logits_unbiased``
    (IS). Constructed by torch-fidelity with ``feature_extractor_weights_path``."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{DOMAIN} needs feature_extractor_weights_path")
        payload = checkpoint.load_payload(Path(feature_extractor_weights_path), "domain_classifier")
        self.net = DomainNet(DomainSpec(**payload["spec"]))
        self.net.load_state_dict(payload["state_dict"])
        self.net.eval()

    @staticmethod
    def get_provided_features_list():
        return ("domain_features", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits_unbiased" if metric == "isc" else "domain_features"

    def forward(self, x):
        feats, logits = self.net(x)
        out = {"domain_features": feats, "logits_unbiased": logits}
        return tuple(out[name] for name in self.features_list)


if DOMAIN not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(DOMAIN, DomainFeatureExtractor)


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) as the torch Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels: cheap augmentation that lifts held-out accuracy."""
    pad = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train_domain_classifier(
    train: torch.Tensor,
    labels: torch.Tensor,
    cfg: ClassifierConfig,
    path: Path,
    desc: str = "domain classifier",
) -> dict:
    """Train the domain CNN and save it where torch-fidelity's extractor loads it from (also
    BiFlow's feature-loss network, with its own config; ``desc`` names the progress bar)."""
    torch.manual_seed(cfg.seed)
    spec = DomainSpec(train.shape[1], train.shape[2], int(labels.max()) + 1, cfg.width)
    net = DomainNet(spec)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    t0 = time.perf_counter()
    net.train()
    for _ in tqdm(range(cfg.steps), desc=desc, unit="step", mininterval=1.0):
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=g)
        _, logits = net(_augment(train[idx], g))
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    meta = {"seconds": time.perf_counter() - t0, "steps": cfg.steps}
    checkpoint.save(path, "domain_classifier", asdict(spec), net, meta, key=path.stem)
    # torch-fidelity's extractor reads {"spec", "state_dict"} from the same file.
    return meta


@torch.no_grad()
def classifier_accuracy(path: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    ext = DomainFeatureExtractor(DOMAIN, ["logits_unbiased"], feature_extractor_weights_path=path)
    correct = 0
    for s in range(0, len(images), 500):
        (logits,) = ext(images[s : s + 500])
        correct += int((logits.argmax(1) == labels[s : s + 500]).sum())
    return correct / len(images)


def _extract(images: torch.Tensor, fe, batch_size: int, cuda: bool) -> dict[str, torch.Tensor]:
    """torch-fidelity's feature extraction of uint8 images, in this process (no workers)."""
    ds = ImageTensorDataset(images)
    return get_featuresdict_from_dataset(ds, fe, batch_size, cuda, save_cpu_ram=True, verbose=False)


def features(
    images: torch.Tensor, extractor: str, weights_path: str | None, batch_size: int = 64
) -> torch.Tensor:
    """The (N, D) features of uint8 ``images`` that ``extractor``'s FID reads (one process)."""
    kwargs = {
        "feature_extractor": extractor,
        "feature_extractor_weights_path": weights_path,
        "cuda": False,
        "verbose": False,
    }
    layer = resolve_feature_layer_for_metric("fid", **kwargs)
    fe = create_feature_extractor(extractor, [layer], **kwargs)
    return _extract(images, fe, batch_size, cuda=False)[layer]


def fidelity_metrics(
    generated: torch.Tensor,
    reference: torch.Tensor,
    extractor: str,
    weights_path: Path | str | None,
    kid_subset: int,
    batch_size: int = 64,
    cuda: bool = False,
    isc: bool = True,
    reference_cache: tuple[Path, str] | None = None,
    reference_stats: dict[str, np.ndarray] | None = None,
    bootstrap: int = 0,
) -> dict[str, float]:
    """FID, IS, KID and precision/recall (k = 3 nearest neighbours, Kynkaanniemi et al. 2019) of
    ``generated`` against ``reference`` (uint8 images), all arithmetic torch-fidelity's own.

    The steps are those of ``torch_fidelity.calculate_metrics``, with the generated images'
    features extracted in shards: under torchrun each rank extracts its share (whole batches,
    in order) and the features are gathered before any statistic, so the numbers equal a single
    process's. The reference features are extracted once by rank 0 and kept as plain arrays
    (:func:`load_reference_features`; ``reference_cache`` = (folder, name) must identify the
    dataset, split, image count and extractor weights). torch-fidelity itself never caches: its
    cache files are pickles it loads with ``weights_only=False``. Statistics are computed on
    rank 0 and broadcast.

    ``reference_stats`` (mu, sigma from a file, :mod:`bench.refstats`): also ``fid_refstats``,
    the FID of the generated features against them. ``bootstrap`` > 0: also ``<metric>_lo`` and
    ``<metric>_hi``, the 95% interval over that many resamples of the generated features
    (:mod:`bench.bootstrap`; FID, KID, precision, recall).
    """
    kwargs = {
        "feature_extractor": extractor,
        "feature_extractor_weights_path": None if weights_path is None else str(weights_path),
        "batch_size": batch_size,
        "cuda": cuda,
        "save_cpu_ram": True,  # no DataLoader worker processes
        "verbose": False,
        "kid_subset_size": min(kid_subset, len(generated), len(reference)),
        "cache": False,  # torch-fidelity's own cache is pickles: never written, never read
    }
    layers = {m: resolve_feature_layer_for_metric(m, **kwargs) for m in ("fid", "kid", "prc")}
    if isc:
        layers["isc"] = resolve_feature_layer_for_metric("isc", **kwargs)
    fe = create_feature_extractor(extractor, sorted(set(layers.values())), **kwargs)

    start, stop = dist.shard(len(generated), batch_size)
    mine = generated[start:stop] if stop > start else generated[:1]  # an empty share: shapes only
    local = _extract(mine, fe, batch_size, cuda)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    feats = {k: dist.gather_cat(v[: stop - start], device) for k, v in local.items()}

    out: dict[str, float] | None = None
    if dist.is_main():
        ref = None
        if reference_cache is not None:
            ref = load_reference_features(*reference_cache, fe.get_requested_features_list())
        if ref is None:
            ref = _extract(reference, fe, batch_size, cuda)
            if reference_cache is not None:
                save_reference_features(*reference_cache, ref)
        fid = fid_statistics_to_metric(
            fid_featuresdict_to_statistics(feats, layers["fid"]),
            fid_featuresdict_to_statistics(ref, layers["fid"]),
            verbose=False,
        )
        kid = kid_featuresdict_to_metric(feats, ref, layers["kid"], **kwargs)
        prc = prc_featuresdict_to_metric(feats, ref, layers["prc"], **kwargs)
        isc_out = isc_featuresdict_to_metric(feats, layers["isc"], **kwargs) if isc else {}
        out = {
            "fid": fid["frechet_inception_distance"],
            "is": isc_out.get("inception_score_mean", float("nan")),
            "is_std": isc_out.get("inception_score_std", float("nan")),
            "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"],
            "precision": prc["precision"],
            "recall": prc["recall"],
        }
        out |= _extras(feats[layers["fid"]], ref[layers["fid"]], reference_stats, bootstrap)
    return dist.broadcast(out)


def _extras(
    gen: torch.Tensor, ref: torch.Tensor, stats: dict[str, np.ndarray] | None, bootstrap: int
) -> dict[str, float]:
    """FID against outside statistics and the bootstrap intervals, where asked for."""
    out = {}
    if stats is not None:
        out["fid_refstats"] = refstats.fid_against(gen, stats)
    if bootstrap:
        ci = intervals(gen, ref, bootstrap, seed=0)
        del ci["recall"]  # fixed k-NN radii: its interval would understate the noise 2-3x
        for k, (lo, hi) in ci.items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out
