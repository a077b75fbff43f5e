"""Cost of sampling beyond time: FLOPs per image (counted) and peak memory (measured)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bench import data, nvml
from bench.config import BenchConfig
from bench.flops import count_flops
from bench.rundir import BenchError
from bench.timing import peak_memory
from methods.base import Sampler


def sampler_flops(sampler: Sampler, seeds: list[int]) -> int:
    """FLOPs per image of sampling: two images, so nothing is batch-1 special; an adaptive
    sampler (Jacobi), whose work depends on the images, over the first 64 scored ``seeds``."""
    z, y = sampler.inputs(seeds[:2] if sampler.fixed_nfe else seeds[:64])
    # A compiled sampler's code runs eagerly here: the same operations, visible to the counter.
    with torch.compiler.set_stance("force_eager"):
        return count_flops(lambda: sampler.generate(z, y)) // len(z)


def sampler_memory(
    name: str,
    sampler: Sampler,
    cfg: BenchConfig,
    run_dir: Path,
    cache_dir: Path,
    splits: data.Splits,
    device: torch.device,
) -> dict:
    """Peak memory of sampling one throughput batch: the CUDA allocator's peak on GPU; on CPU
    the peak resident set of a fresh process that holds only this sampler (bench.memprobe)."""
    b = cfg.eval.throughput_batch
    if device.type == "cuda":
        with peak_memory(device) as mem:
            sampler.sample(list(range(b)), b)
            after = nvml.readings(device)  # while the batch's memory is still held
        return {"peak_mem_mb": mem.mb, "peak_mem_kind": mem.kind, **after}
    cmd = [
        sys.executable,
        "-m",
        "bench.memprobe",
        str(run_dir / "config.yaml"),
        str(cache_dir),
        name,
        str(b),
        str(splits.channels),
        str(splits.image_size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise BenchError(f"memory probe for {name} failed:\n{out.stderr[-2000:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "peak_mem_mb": probe["peak_mb"],
        "peak_mem_kind": probe["kind"] + "_fresh_process",
        "mem_model_loaded_mb": probe["baseline_mb"],
        "mem_sampling_mb": probe["peak_mb"] - probe["baseline_mb"],
    }
