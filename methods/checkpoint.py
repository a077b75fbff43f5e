"""Save and load a model together with the config that built it; refuse any mismatch.

A checkpoint carries a SHA-256 digest of its tensors (so a flipped byte or a truncated file is
caught before any weight is used) and the cache key of the config that made it (so a file copied
or renamed into another config's slot is refused). Loading uses ``weights_only=True``: nothing
in the file is executed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.atomic import atomic_write


class CheckpointError(RuntimeError):
    pass


def tensor_digest(state: dict[str, Any]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor in a (nested) state dict."""
    h = hashlib.sha256()

    def visit(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                visit(f"{prefix}/{k}", obj[k])
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                visit(f"{prefix}/{i}", v)
        else:
            h.update(f"{prefix}={obj!r}".encode())

    visit("", state)
    return h.hexdigest()


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus the digest of its ``state`` entries, atomically."""
    body = {k: v for k, v in payload.items() if k != "digest"}
    atomic_write(path, lambda tmp: torch.save({**body, "digest": tensor_digest(body)}, tmp))


def _gist(e: BaseException) -> str:
    """One line of a load error: the weights-only unpickler's "unsupported GLOBAL" line (what
    a code-carrying file tried to call) when there is one, else its first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or ["(no message)"]
    return next((ln for ln in lines if "GLOBAL" in ln), lines[0])[:200]


def load_payload(path: Path, kind: str | None = None, key: str = "") -> dict[str, Any]:
    """Read a payload written by :func:`save_payload`; verify its digest and, when given, that
    it holds a ``kind`` checkpoint made by the config with cache key ``key``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, code-carrying or not a checkpoint at all
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {_gist(e)}); "
            "delete it to retrain, or restore it from a copy"
        ) from None
    if not isinstance(payload, dict) or "digest" not in payload:
        raise CheckpointError(
            f"{path}: no content digest: not a flowbench checkpoint, or one made before digests "
            "were added; delete it to retrain"
        )
    body = {k: v for k, v in payload.items() if k != "digest"}
    if tensor_digest(body) != payload["digest"]:
        raise CheckpointError(
            f"{path}: content does not match its digest (corrupted on disk); delete it to "
            "retrain, or restore it from a copy"
        )
    if kind is not None and payload.get("kind") != kind:
        got = payload.get("kind")
        raise CheckpointError(f"{path}: holds a {got!r} checkpoint, expected {kind!r}")
    if key and payload.get("key") != key:
        raise CheckpointError(
            f"{path}: made by config {payload.get('key')!r}, but this run's config is {key!r} "
            "(a file copied or renamed into another config's place)"
        )
    return payload


def save(
    path: Path,
    kind: str,
    spec: dict[str, Any],
    model: nn.Module | dict,
    meta: dict,
    key: str = "",
    **states: dict,
) -> None:
    """Write atomically (temporary file, then rename): a kill leaves the old file or the new.
    ``model``: the module or its state dict; ``states``: further named state dicts (e.g. the
    raw weights beside a moving average), which ``load(..., state=NAME)`` reads."""
    payload = {
        "kind": kind,
        "key": key,
        "spec": spec,
        "state_dict": model if isinstance(model, dict) else model.state_dict(),
        "meta": meta,
        **states,
    }
    save_payload(path, payload)


def load(
    path: Path,
    kind: str,
    spec: dict[str, Any],
    model: nn.Module,
    key: str = "",
    state: str = "state_dict",
) -> dict:
    """Load weights into ``model`` if the file was made for the same kind, key and spec.

    ``spec`` is everything that decides the architecture (config plus data shape); ``key`` is the
    cache key of the config that trained it (empty: not checked); ``state``: which of its state
    dicts. Returns the metadata.
    """
    payload = load_payload(path, kind, key)
    saved = payload.get("spec", {})
    diff = [
        f"{k}={saved.get(k)!r} (model has {spec.get(k)!r})"
        for k in sorted(set(saved) | set(spec))
        if saved.get(k) != spec.get(k)
    ]
    if diff:
        raise CheckpointError(f"{path}: made for a different {kind} config: " + "; ".join(diff))
    try:
        if state not in payload:
            raise KeyError(f"no {state!r} weights in the file")
        model.load_state_dict(payload[state], strict=True)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from None
    return payload.get("meta", {})


def described(config: Any) -> dict[str, Any]:
    """A config dataclass's fields as they identify a model: fields named in the class's
    ``LATER_FIELDS`` (added after checkpoints were shipped) are left out while at their
    defaults, so checkpoints made before those fields existed keep their specs and cache keys;
    fields named in ``UNKEYED`` (what is saved along the way, not what is learnt) always are."""
    out = asdict(config)
    for f in fields(config):
        if f.name in getattr(config, "LATER_FIELDS", ()) and out[f.name] == f.default:
            del out[f.name]
        elif f.name in getattr(config, "UNKEYED", ()):
            del out[f.name]
    return out


def spec_of(config: Any, **shape: Any) -> dict[str, Any]:
    """Flat dict naming every architecture choice: dataclass fields plus data shape."""
    return {**described(config), **shape}
