"""Quality metrics through torch-fidelity, with a `domain` feature extractor trained here.

The domain extractor is a small CNN classifier trained on the dataset's training split. Its
pooled penultimate features feed FID and KID; its logits feed the Inception Score. It is
registered with torch-fidelity (``register_feature_extractor``), so the metric arithmetic is
torch-fidelity's own, and it works offline on any labelled dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    extract_featuresdict_from_input_id_cached,
    get_featuresdict_from_dataset,
    resolve_feature_layer_for_metric,
)
from tqdm.auto import tqdm

from bench.config import ClassifierConfig
from methods import checkpoint, dist
from methods.atomic import sha256_file, write_text

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


class CacheIntegrityError(RuntimeError):
    """A cached statistics file does not match the digest recorded when it was written."""


def _manifest(folder: Path, name: str) -> Path:
    return folder / f"{name}.sha256.json"


def _cache_files(folder: Path, name: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(f"{name}-") and p.suffix == ".pt"
    )


def verify_reference_cache(folder: Path, name: str) -> set[str]:
    """Check torch-fidelity's cached reference features against the digests recorded when they
    were written. A mismatch or a missing file is an error naming the file; files with no
    record (a write an interrupted run never finished) are discarded and recomputed."""
    manifest = _manifest(folder, name)
    recorded: dict[str, str] = {}
    if manifest.exists():
        try:
            record = json.loads(manifest.read_text())
            recorded = dict(record["files"])
            if record.get("key") != name:
                raise ValueError(f"made for {record.get('key')!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise CacheIntegrityError(
                f"{manifest}: unreadable integrity record ({e}); delete it and the "
                f"{name}-*.pt files next to it to recompute"
            ) from None
    for fname, digest in recorded.items():
        path = folder / fname
        if not path.is_file():
            raise CacheIntegrityError(
                f"{path}: listed in {manifest.name} but missing; "
                f"delete {manifest.name} to recompute"
            )
        if sha256_file(path) != digest:
            raise CacheIntegrityError(
                f"{path}: content does not match the digest recorded when it was written "
                "(corrupted or modified); delete it to recompute"
            )
    for path in _cache_files(folder, name):
        if path.name not in recorded:
            print(f"[bench] discarding unverified cache file {path} (unfinished write)", flush=True)
            path.unlink()
    return set(recorded)


def record_reference_cache(folder: Path, name: str, recorded: set[str]) -> None:
    """Record the digests of the cache files torch-fidelity wrote; a no-op when every file was
    already recorded (the common case: the reference set is scored once per extractor)."""
    paths = _cache_files(folder, name)
    if {p.name for p in paths} <= recorded:
        return
    files = {p.name: sha256_file(p) for p in paths}
    if files:
        write_text(_manifest(folder, name), json.dumps({"key": name, "files": files}, indent=1))


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
) -> dict[str, float]:
    """FID, IS, KID and precision/recall (k = 3 nearest neighbours, Kynkaanniemi et al. 2019) of
    ``generated`` against ``reference`` (uint8 images), all arithmetic torch-fidelity's own.

    The steps are those of ``torch_fidelity.calculate_metrics``, with the generated images'
    features extracted in shards: under torchrun each rank extracts its share (whole batches,
    in order) and the features are gathered before any statistic, so the numbers equal a single
    process's. The reference features come from torch-fidelity's cached extraction (rank 0
    extracts them once; ``reference_cache`` = (folder, name) must identify the dataset, split,
    image count and extractor weights). Statistics are computed on rank 0 and broadcast.
    """
    kwargs = {
        "feature_extractor": extractor,
        "feature_extractor_weights_path": None if weights_path is None else str(weights_path),
        "batch_size": batch_size,
        "cuda": cuda,
        "save_cpu_ram": True,  # no DataLoader worker processes
        "verbose": False,
        "kid_subset_size": min(kid_subset, len(generated), len(reference)),
        "cache": False,
    }
    layers = {m: resolve_feature_layer_for_metric(m, **kwargs) for m in ("fid", "kid", "prc")}
    if isc:
        layers["isc"] = resolve_feature_layer_for_metric("isc", **kwargs)
    fe = create_feature_extractor(extractor, sorted(set(layers.values())), **kwargs)

    start, stop = dist.shard(len(generated), batch_size)
    mine = generated[start:stop] if stop > start else generated[:1]  # an empty share: shapes only
    local = get_featuresdict_from_dataset(
        ImageTensorDataset(mine), fe, batch_size, cuda, save_cpu_ram=True, verbose=False
    )
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    feats = {k: dist.gather_cat(v[: stop - start], device) for k, v in local.items()}

    out: dict[str, float] | None = None
    if dist.is_main():
        ref_kwargs = {**kwargs, "input2": ImageTensorDataset(reference)}
        if reference_cache is not None:
            folder, name = reference_cache
            recorded = verify_reference_cache(folder, name)
            ref_kwargs |= {"cache": True, "cache_root": str(folder), "input2_cache_name": name}
        ref = extract_featuresdict_from_input_id_cached(2, fe, **ref_kwargs)
        if reference_cache is not None:
            record_reference_cache(folder, name, recorded)
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
    return dist.broadcast(out)
