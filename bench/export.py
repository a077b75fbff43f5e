"""Samples in the formats outside evaluators read: an ADM-style ``.npz`` or a PNG folder.

``python -m bench sample`` draws a sampler's images, from a config or from a finished run folder
(its resolved config, its models from the checkpoint cache; it never trains), resumable batch by
batch and sharded across torchrun ranks; a run with ``eval.export`` writes the images it scored.
The layout and the choices behind it are in docs/export.md.

- ``.npz``: ``arr_0`` uint8 (N, H, W, C), channels last as guided-diffusion's evaluator reads
  it; ``arr_1`` int64 (N,) class labels, for class-conditional samplers only.
- PNG folder: ``000000.png`` ... one file per image, by index; grey as mode L, colour as RGB.
- Seeds beside it (``NAME.seeds.json`` beside a ``.npz``, ``seeds.json`` in a PNG folder): the
  sampler, the config digest, every image's seed, the batch size, the git commit.

Grey images keep C = 1 unless ``rgb`` is set: the domain extractor (and so ``fid_domain``) reads
one channel, while the ADM evaluator and every Inception tool need three (``--rgb`` repeats it).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import methods
from bench import data, refstats
from bench.config import BenchConfig, ConfigError, load_config
from bench.config_file import config_hash, to_dict
from bench.data import Splits
from bench.environment import environment, resolve_device
from bench.inception import UnavailableError
from bench.models import ModelStore, build_sampler
from bench.quality import Scorer
from bench.runfolder import load_run
from bench.variants import entries
from methods import atomic, dist, faults
from methods.base import Sampler, labels_for_seeds

FORMATS = ("npz", "png")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # every zip member's date: the same images, the same bytes


@dataclass(frozen=True)
class Target:
    """Where and how the images go."""

    path: Path  # the .npz file, or the PNG folder
    fmt: str = "npz"  # npz | png
    rgb: bool = False  # grey images written with 3 equal channels

    @property
    def seeds_file(self) -> Path:
        if self.fmt == "png":
            return self.path / "seeds.json"
        return self.path.with_name(self.path.stem + ".seeds.json")

    def check(self) -> None:
        """Refuse a target that would overwrite something that is not an earlier export."""
        p = self.path
        if self.fmt == "png" and p.is_dir() and any(p.iterdir()):
            if not (p / "seeds.json").is_file():
                raise ConfigError(f"--out {p}: a folder that holds no export; choose another")
        elif self.fmt == "png" and p.exists() and not p.is_dir():
            raise ConfigError(f"--out {p}: a file; --format png writes a folder")
        elif self.fmt == "npz" and p.is_dir():
            raise ConfigError(f"--out {p}: a folder; --format npz writes a file")

    @property
    def work(self) -> Path:
        """The folder of finished batches while an export is under way (removed after)."""
        return self.path.with_name(f".{self.path.name}.shards")


def provenance(name: str, cfg: BenchConfig, git_commit: str) -> dict:
    """What the seeds file says besides the seeds: the sampler and the config it was drawn with."""
    return {"sampler": name, "config_digest": config_hash(to_dict(cfg)), "git_commit": git_commit}


def channels_last(images: torch.Tensor, rgb: bool = False) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W, C); ``rgb``: a grey C = 1 repeated to 3 channels."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images: got {images.dtype} {tuple(images.shape)}; allowed: uint8 NCHW")
    if rgb and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's layout (one ``.npy`` member per array, uncompressed) with fixed member dates,
    so equal images give equal files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", FIXED_TIME), buf.getvalue())


def _png_folder(folder: Path, hwc: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, img in enumerate(hwc):
        im = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img)
        im.save(folder / f"{i:06d}.png", format="png")


def _replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``; an earlier export there is replaced."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def write(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    target: Target,
    record: dict,
) -> Path:
    """Write ``images`` (uint8 NCHW) and ``labels`` to ``target``, the seeds file beside them;
    each file atomically. ``record``: the seeds file's content (provenance, seeds, batch size)."""
    target.check()
    hwc = channels_last(images, target.rgb)
    seeds_text = json.dumps({**record, "format": target.fmt, "shape": list(hwc.shape)}) + "\n"
    path = target.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if target.fmt == "npz":
        arrays = {"arr_0": hwc}
        if labels is not None:
            arrays["arr_1"] = labels.to(torch.int64).numpy()
        atomic.atomic_write(path, lambda tmp: _npz(tmp, arrays))
        atomic.write_text(target.seeds_file, seeds_text)
    elif target.fmt == "png":
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _png_folder(tmp, hwc)
        atomic.write_text(tmp / "seeds.json", seeds_text)
        _replace_folder(tmp, path)
    else:
        raise ValueError(f"format: got {target.fmt!r}; allowed: one of {', '.join(FORMATS)}")
    return path


def _shard_name(digest: str, start: int) -> str:
    return f"{digest}-{start:08d}.pt"


def _draw(
    sampler: Sampler,
    seeds: Sequence[int],
    batch_size: int,
    work: Path,
    digest: str,
    on_batch: Callable[[int], None] | None,
) -> torch.Tensor:
    """This rank's images of ``seeds`` (its contiguous run of whole batches, as
    ``dist.shard``), one file per batch under ``work``: a batch already there is read back,
    not drawn again."""
    start, stop = dist.shard(len(seeds), batch_size)
    parts = []
    for b in range(start, stop, batch_size):
        shard = work / _shard_name(digest, b)
        if shard.is_file():
            images = torch.load(shard, weights_only=True)
        else:
            images = sampler.sample(seeds[b : min(stop, b + batch_size)], batch_size).images
            atomic.atomic_write(shard, lambda p, x=images: torch.save(x, p))
        parts.append(images)
        if on_batch is not None:
            on_batch(len(images))
        faults.point(f"export:{b + len(images)}")
    if parts:
        return torch.cat(parts)
    return torch.empty(0, *sampler.sample(seeds[:1], 1).images.shape[1:], dtype=torch.uint8)


def export(
    sampler: Sampler,
    seeds: Sequence[int],
    batch_size: int,
    target: Target,
    record: dict,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> Path | None:
    """Draw the images of ``seeds`` and write them to ``target`` (rank 0; None on the other
    ranks). Finished batches are kept under ``target.work`` until the final file is written, so
    an interrupted export draws only the missing ones; the images are those of one process."""
    seeds = [int(s) for s in seeds]
    record = {**record, "batch_size": batch_size, "num": len(seeds), "seeds": seeds}
    # Batches are reused only by an export of the same sampler, config, seeds and batch size.
    digest = config_hash(record, target.fmt)
    mine = _draw(sampler, seeds, batch_size, target.work, digest, on_batch)
    images = dist.gather_cat(mine, device)
    if not dist.is_main():
        return None
    classes = sampler.num_classes()
    labels = labels_for_seeds(seeds, classes) if classes else None
    path = write(images, labels, target, record)
    shutil.rmtree(target.work, ignore_errors=True)
    return path


def _from_run(run_dir: Path) -> tuple[BenchConfig, tuple[int, ...], Path]:
    """A finished run's resolved config, image shape (C, H, W) and checkpoint cache folder."""
    info = load_run(run_dir).info
    cfg = load_config(run_dir / "config.yaml")
    # The folder its checkpoints were recorded in, else cache_dir from here (a moved checkout)
    folders = {Path(m["checkpoint"]).parent for m in (info.get("models") or {}).values()}
    recorded = folders.pop() if len(folders) == 1 else None
    cache = recorded if recorded and recorded.is_dir() else Path(cfg.cache_dir).resolve()
    return cfg, tuple(info["dataset"]["shape"]), cache


def _from_config(args) -> tuple[BenchConfig, tuple[int, ...], Path]:
    cfg = load_config(args.config, args.overrides)
    base = args.config.resolve().parent
    splits = data.load(cfg.data, base)
    return cfg, tuple(splits.train.shape[1:]), (base / cfg.cache_dir).resolve()


def _sampler(cfg: BenchConfig, shape: tuple[int, ...], cache: Path, key: str, device):
    """The entry ``key``'s sampler from cached models (never trained), and its config."""
    found = [e for e in entries(cfg) if e.key == key]
    if not found:
        allowed = ", ".join(e.key for e in entries(cfg)) or "none (the config names no sampler)"
        raise ConfigError(f"--method: got {key!r}; allowed: {allowed}")
    e = found[0]
    cls = methods.get(e.method)
    empty = torch.empty(0, *shape, dtype=torch.uint8)
    store = ModelStore(
        cfg, Splits("shape", empty, None, empty, None), cache, device, train_allowed=False
    )
    try:
        models = {n: store.get(n, e.cfg) for n in cls.needs}
    except FileNotFoundError as err:
        raise ConfigError(
            f"{err}; bench sample never trains: `bench run` the config first"
        ) from None
    return build_sampler(cls, models, device, e.cfg), e.cfg


def sample_command(args) -> Path | None:
    """``bench sample``: the images of one entry, from CONFIG or from --run RUN_DIR."""
    if (args.config is None) == (args.run is None):
        raise ConfigError("bench sample: give CONFIG or --run RUN_DIR, one of them")
    if args.run is not None and args.overrides:
        raise ConfigError("--set: a finished run's config is used as it is; drop --set")
    for flag, v in (("--num", args.num), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag}: got {v}; allowed: >= 1")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed: got {args.seed}; allowed: >= 0")
    target = Target(args.out, args.format, args.rgb)
    target.check()
    cfg, shape, cache = _from_run(args.run) if args.run is not None else _from_config(args)
    device = dist.init(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sampler, ecfg = _sampler(cfg, shape, cache, args.method, device)
    ev = ecfg.eval
    # bench.scoring.scored_seeds's rule, image i from seed S + i: by default the scored images
    first = ev.seed if args.seed is None else args.seed
    seeds = [first + i for i in range(args.num or ev.num_samples)]
    record = provenance(args.method, ecfg, environment(device)["git_commit"])
    with tqdm(total=len(seeds), desc="export", unit="img", disable=not dist.is_main()) as bar:
        path = export(
            sampler, seeds, args.batch_size or ev.batch_size, target, record, device, bar.update
        )
    dist.shutdown()
    return path


def refstats_command(args) -> Path:
    """``bench refstats``: a reference batch (images, and mu/sigma of one extractor's features)
    of the reference set of CONFIG or of the finished run --run RUN_DIR (bench.refstats)."""
    if (args.config is None) == (args.run is None):
        raise ConfigError("bench refstats: give CONFIG or --run RUN_DIR, one of them")
    if args.run is not None and args.overrides:
        raise ConfigError("--set: a finished run's config is used as it is; drop --set")
    if args.num is not None and args.num < 2:
        raise ConfigError(f"--num: got {args.num}; allowed: >= 2 (a covariance needs two)")
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out}: a folder; bench refstats writes an .npz file")
    if args.run is not None:
        cfg, _, cache = _from_run(args.run)
        base = Path.cwd()
    else:
        cfg = load_config(args.config, args.overrides)
        base = args.config.resolve().parent
        cache = (base / cfg.cache_dir).resolve()
    name = args.extractor
    cfg = replace(
        cfg, metrics=replace(cfg.metrics, extractors=tuple(dict.fromkeys(("domain", name))))
    )
    splits = data.load(cfg.data, base)
    device = torch.device("cpu")
    store = ModelStore(cfg, splits, cache, device, train_allowed=False)
    try:
        domain_path, _ = store.classifier()
    except FileNotFoundError as err:
        raise ConfigError(
            f"{err}; bench refstats never trains: `bench run` the config first"
        ) from None
    scorer = Scorer(cfg, splits.reference, splits.name, domain_path, cache / "stats", device)
    n = args.num or scorer.reference_count(name)
    if n > len(splits.reference):
        raise ConfigError(f"--num: got {n}; allowed: <= {len(splits.reference)} reference images")
    ref = splits.reference[:n]
    try:
        feats = scorer.features(name, ref)
    except UnavailableError as e:
        raise ConfigError(str(e)) from None
    arrays = refstats.batch(channels_last(ref, rgb=True), feats, name, args.images_only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(args.out, lambda tmp: _npz(tmp, arrays))
    return args.out
