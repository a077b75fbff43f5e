"""Where a run executes and what it ran on: device resolution and the environment record."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from bench import nvml
from bench.config import ConfigError
from methods import dist, native


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (cpu, cuda, cuda:N, auto) names, or an error when it is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: got {name!r}, but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def environment(device: torch.device) -> dict:
    """Versions, hardware and git state of this run, as run.json records them."""

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "n/a"

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).resolve().parent,
            )
            return out.stdout.strip() if out.returncode == 0 else "n/a"
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    cpu = platform.processor() or "n/a"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **nvml.readings(device),  # idle device memory and power; "n/a" without a driver
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": dist.world(),  # processes under torchrun; 1 for a plain run
        "dist_backend": torch.distributed.get_backend() if dist.active() else "n/a",
        "python": sys.version.split()[0],
        "native_decode_kernel": native.decode_attention().description,
        "platform": platform.platform(),
        **{f"{p}_version": version(p) for p in ("torch", "torchvision", "torch-fidelity")},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": git("status", "--porcelain") not in ("", "n/a"),
        # the gate's debug switch (methods.faults.slowdown): samplers slowed on purpose
        "slowdown": os.environ.get("FLOWBENCH_SLOWDOWN", ""),
    }
