"""Native CPU kernels: the C sources under ``methods/csrc``, compiled on first use with the
machine's C compiler and loaded with ctypes. No build step at install time and no torch headers:
one file of C compiles in well under a second.

The library is cached under ``$FLOWBENCH_KERNEL_CACHE`` (default ``~/.cache/flowbench/kernels``),
named by a hash of the source, the compiler's version, the flags and the CPU's feature flags
(the build targets this CPU: ``-march=native``). Without a working compiler, or with
``FLOWBENCH_NATIVE=0`` in the environment, nothing is built and the callers use their torch
path; :func:`decode_attention` says which happened and why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")


@dataclass(frozen=True)
class Kernel:
    """A loaded native library, or (``lib`` None) why there is none."""

    lib: ctypes.CDLL | None
    description: str  # how it was built, or why it was not


def cache_dir() -> Path:
    if env := os.environ.get("FLOWBENCH_KERNEL_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowbench" / "kernels"


def compiler() -> str | None:
    """``$CC``, else the compiler Python was built with, else ``cc``: the first whose program
    is on PATH, as a command line (``CC="ccache gcc"`` is kept whole)."""
    for cc in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc"):
        if cc and (words := shlex.split(cc)) and shutil.which(words[0]):
            return cc
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _torch_openmp() -> bool:
    """Whether an OpenMP build of a kernel would share torch's threads: torch runs on OpenMP
    and has loaded libgomp.so.1 (Linux), which a ``-fopenmp`` library then binds to by soname
    instead of loading a second runtime whose threads would compete with torch's."""
    if sys.platform != "linux" or not torch.backends.openmp.is_available():
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "/libgomp.so.1\n" in maps


def build(name: str, cc: str | None = None, out_dir: Path | None = None) -> Kernel:
    """Compile (or find in the cache) ``csrc/<name>.c`` and load it; on any failure, a Kernel
    without a library that says what failed."""
    cc = cc or compiler()
    if cc is None:
        return Kernel(None, "no C compiler found ($CC, cc)")
    try:
        out_dir = out_dir or cache_dir()
    except RuntimeError as e:  # Path.home() with neither $HOME nor a user database entry
        return Kernel(None, f"no kernel cache folder ({e}); FLOWBENCH_KERNEL_CACHE selects one")
    try:
        source = (CSRC / f"{name}.c").read_bytes()
    except OSError as e:
        return Kernel(None, f"no kernel source {CSRC / f'{name}.c'} ({e.strerror or e})")
    try:
        cmd = shlex.split(cc)
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
        version = (out.stdout.strip().splitlines() or [cc])[0]
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return Kernel(None, f"{cc} could not be run ({e})")
    errors = []
    for extra in [("-fopenmp",), ()] if _torch_openmp() else [()]:
        flags = (*FLAGS, *extra)
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_flags().encode()])
        ).hexdigest()[:16]
        path = out_dir / f"{name}-{key}.so"
        try:
            if not path.is_file():
                if (why := _unwritable(out_dir)) is not None:
                    return Kernel(None, why)
                _compile(cmd, flags, source, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            errors.append(f"{' '.join(extra) or 'without OpenMP'}: {e}")
            continue
        threads = "OpenMP on torch's threads" if extra else "one thread"
        return Kernel(lib, f"{version}, {' '.join(FLAGS[:2])}, {threads}")
    return Kernel(None, f"{cc} failed: " + "; ".join(errors))


def _unwritable(folder: Path) -> str | None:
    """Why no new library can be written into the cache folder, or None when one can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        where = f": {e.filename}" if e.filename and Path(e.filename) != folder else ""
        return (
            f"the kernel cache folder {folder} cannot be written (writing there failed: "
            f"{e.strerror or e}{where}); FLOWBENCH_KERNEL_CACHE selects another"
        )
    return None


def _compile(cc: list[str], flags: tuple[str, ...], source: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, lib = Path(tmp) / "kernel.c", Path(tmp) / path.name
        src.write_bytes(source)
        cmd = [*cc, *flags, str(src), "-o", str(lib), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError((res.stderr.strip().splitlines() or ["no output"])[-1])
        os.replace(lib, path)  # atomic: a concurrent process sees all of it or none


@functools.cache
def decode_attention() -> Kernel:
    """The causal-decoding attention step (``csrc/decode_attention.c``), built on first use."""
    if os.environ.get("FLOWBENCH_NATIVE", "1") == "0":
        return Kernel(None, "disabled by FLOWBENCH_NATIVE=0")
    kernel = build("decode_attention")
    if kernel.lib is not None:
        fn = kernel.lib.flowbench_decode_attention
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5 + [ctypes.c_float]
        fn.restype = ctypes.c_int
    return kernel


def attention_step(qkv: torch.Tensor, cache: torch.Tensor, pos: int, scale: float) -> torch.Tensor:
    """Store this step's keys and values at ``pos`` and attend: see ``csrc/decode_attention.c``.

    qkv (b, 3, h, d), this step's projections; cache (2, T, b * h, d) as KVCache allocates it
    (contiguous float32 on the CPU). Returns the output (b, h, d). The C code trusts the shapes:
    qkv and pos, which come from the caller, are checked here (~2 us, once per layer and step).
    """
    b, three, h, d = qkv.shape
    _, tokens, rows, dim = cache.shape
    if not (
        three == 3
        and b * h == rows
        and d == dim
        and 0 <= pos < tokens
        and qkv.dtype == torch.float32
        and qkv.is_cpu
        and qkv.is_contiguous()
    ):
        raise ValueError(
            f"decode attention: qkv {tuple(qkv.shape)} ({qkv.dtype}, {qkv.device}) at position "
            f"{pos}: not a step of this cache {tuple(cache.shape)} (contiguous float32 CPU qkv "
            "(b, 3, h, d) with b * h rows)"
        )
    out = qkv.new_empty(b, h, d)
    fn = decode_attention().lib.flowbench_decode_attention
    rc = fn(qkv.data_ptr(), cache.data_ptr(), out.data_ptr(), b, h, tokens, d, pos, scale)
    if rc == -1:
        raise MemoryError("decode attention: could not allocate its scratch memory")
    if rc != 0:
        raise ValueError(f"decode attention: head size {d} is not a multiple of 8")
    return out
