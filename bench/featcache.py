"""The reference features of each extractor, cached as plain arrays with a recorded digest.

Reference features live in ``<name>-features.npz`` (one float array per feature layer, read
with ``allow_pickle=False``: the file cannot carry code) beside ``<name>.sha256.json``, which
records its digest (catches corruption; the format, not the digest, stops tampering).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from methods.atomic import atomic_write, sha256_file, write_text


class CacheIntegrityError(RuntimeError):
    """A cached reference-features file does not match the digest recorded when it was written,
    or is not a plain array file."""


CACHE_FORMAT = "npz-1"


def _manifest(folder: Path, name: str) -> Path:
    return folder / f"{name}.sha256.json"


def _features_file(folder: Path, name: str) -> Path:
    return folder / f"{name}-features.npz"


def _drop_old_format(folder: Path, name: str) -> None:
    """Remove the torch-fidelity pickles (``<name>-*.pt``) and their record that this cache used
    to hold, with one line saying so: they are never loaded (a pickle can run code when read),
    only recomputed."""
    manifest = _manifest(folder, name)
    pickles = (
        sorted(p for p in folder.iterdir() if p.name.startswith(f"{name}-") and p.suffix == ".pt")
        if folder.is_dir()
        else []
    )
    stale = False
    if manifest.is_file():
        try:
            stale = json.loads(manifest.read_text()).get("format") != CACHE_FORMAT
        except (ValueError, AttributeError):
            pass  # unreadable: verification names it
    if not pickles and not stale:
        return
    record = " and its digest record" if stale else ""
    print(
        f"[bench] {folder}: old-format reference cache of {name} ({len(pickles)} torch pickle "
        f"file(s){record}) removed unread; recomputing it as .npz",
        flush=True,
    )
    for path in pickles + ([manifest] if stale else []):
        path.unlink()


def _recorded_digest(folder: Path, name: str) -> str | None:
    """The digest recorded for the features file (None: no record, so nothing to trust)."""
    manifest, path = _manifest(folder, name), _features_file(folder, name)
    if not manifest.exists():
        if path.exists():
            print(f"[bench] discarding unverified cache file {path} (unfinished write)", flush=True)
            path.unlink()
        return None
    try:
        record = json.loads(manifest.read_text())
        if record.get("key") != name:
            raise ValueError(f"made for {record.get('key')!r}")
        digest = record["files"][path.name]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheIntegrityError(
            f"{manifest}: unreadable integrity record ({e}); delete it and {path.name} to recompute"
        ) from None
    if not path.is_file():
        raise CacheIntegrityError(
            f"{path}: listed in {manifest.name} but missing; delete {manifest.name} to recompute"
        )
    return digest


def load_reference_features(
    folder: Path, name: str, layers: list[str]
) -> dict[str, torch.Tensor] | None:
    """Cached reference features of ``layers`` (None: not cached, or not all of them: the caller
    extracts them). A file that fails its digest or holds anything but numeric arrays is an
    error naming it; nothing in it is ever executed."""
    _drop_old_format(folder, name)
    digest = _recorded_digest(folder, name)
    if digest is None:
        return None
    path = _features_file(folder, name)
    if sha256_file(path) != digest:
        raise CacheIntegrityError(
            f"{path}: content does not match the digest recorded when it was written "
            "(corrupted or modified); delete it to recompute"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        bad = [
            k
            for k, a in arrays.items()
            if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu"
        ]
        if bad:
            raise ValueError(f"its array {bad[0]!r} is not numeric")
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        # numpy's own text for an object array suggests loading it with pickle: never say so
        why = "it holds pickled objects" if "allow_pickle" in str(e) else str(e)[:200]
        raise CacheIntegrityError(
            f"{path}: not a plain array file ({why}); it was not loaded; delete it to recompute"
        ) from None
    if not set(layers) <= set(arrays):
        return None
    return {k: torch.from_numpy(arrays[k]) for k in layers}


def save_reference_features(folder: Path, name: str, feats: dict[str, torch.Tensor]) -> None:
    """Write the features as plain arrays, then record their digest (a kill in between leaves
    an unrecorded file, discarded on the next read)."""
    path = _features_file(folder, name)
    arrays = {k: v.detach().cpu().numpy() for k, v in feats.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    record = {"key": name, "format": CACHE_FORMAT, "files": {path.name: sha256_file(path)}}
    write_text(_manifest(folder, name), json.dumps(record, indent=1))
