"""Atomic file writes and content digests: a kill or a full disk never leaves half a file.

Every file the suite writes goes through :func:`atomic_write`: the content goes to a temporary
file in the same folder, is flushed to disk, and only then renamed over the target. A reader sees
the old file or the new one, never a mix.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# errno values that mean "the disk (or quota, or file-size limit) is full".
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(OSError):
    """A file could not be written; the previous version of it, if any, is intact."""

    def __init__(self, path: Path, cause: OSError) -> None:
        why = cause.strerror or str(cause)
        if cause.errno in NO_SPACE:
            why += " (out of disk space?)"
        super().__init__(cause.errno, why)
        self.path, self.why = path, why

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.why}; any previous version of it is intact"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
