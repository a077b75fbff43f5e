"""Save and load a model together with the config that built it; refuse any mismatch."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    pass


def save(path: Path, kind: str, spec: dict[str, Any], model: nn.Module, meta: dict) -> None:
    """Write atomically (temporary file, then rename): a kill leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "spec": spec, "state_dict": model.state_dict(), "meta": meta}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path, kind: str, spec: dict[str, Any], model: nn.Module) -> dict:
    """Load weights into ``model`` if the file was made for the same kind and spec.

    ``spec`` is everything that decides the architecture (config plus data shape). Returns the
    checkpoint's metadata. Uses ``weights_only=True``: nothing in the file is executed.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a checkpoint at all
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        got = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: holds a {got!r} checkpoint, expected {kind!r}")
    saved = payload.get("spec", {})
    diff = [
        f"{k}={saved.get(k)!r} (model has {spec.get(k)!r})"
        for k in sorted(set(saved) | set(spec))
        if saved.get(k) != spec.get(k)
    ]
    if diff:
        raise CheckpointError(f"{path}: made for a different {kind} config: " + "; ".join(diff))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from None
    return payload.get("meta", {})


def spec_of(config: Any, **shape: Any) -> dict[str, Any]:
    """Flat dict naming every architecture choice: dataclass fields plus data shape."""
    return {**asdict(config), **shape}
