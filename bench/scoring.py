"""Draw a sampler's scored images and score them; the two anchors that bracket every metric."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from bench import data, export
from bench.config import BenchConfig
from bench.environment import environment
from bench.quality import Scorer
from methods import atomic, dist, faults
from methods.base import Sampler, labels_for_seeds, noise_for_seeds, to_uint8


def scored_seeds(cfg: BenchConfig) -> list[int]:
    """The seeds of the scored images: image i is drawn from eval.seed + i."""
    return [cfg.eval.seed + i for i in range(cfg.eval.num_samples)]


def score_sampler(
    key: str,
    sampler: Sampler,
    cfg: BenchConfig,
    seeds: list[int],
    device: torch.device,
    run_dir: Path,
    scorer: Scorer,
) -> dict:
    """Draw the scored images: counts, quality, the sample grid.

    Under torchrun each rank draws a contiguous run of whole batches of the seeds (the batches a
    single process would draw) and the images are gathered in seed order before scoring."""
    ev = cfg.eval
    start, stop = dist.shard(len(seeds), ev.batch_size)
    mine = seeds[start:stop] or seeds[:1]  # an empty share still learns the NFE
    with tqdm(
        total=len(mine),
        desc=f"sample {key}",
        unit="img",
        mininterval=1.0,
        disable=not dist.is_main(),
    ) as bar:

        def on_batch(n: int) -> None:
            bar.update(n)
            faults.point(f"sample:{key}:{bar.n}")

        res = sampler.sample(mine, ev.batch_size, on_batch)
    images = dist.gather_cat(res.images[: stop - start], device)
    nfe, nfe_max, steps = res.nfe, res.nfe_max, res.sequential_steps
    if sampler.fixed_nfe:
        dist.agree([nfe, steps])
    elif dist.active():  # adaptive (Jacobi): the mean over every rank's images
        evaluations = round(res.nfe * (stop - start))  # image-evaluations of this rank
        nfe = dist.total(evaluations, device) / len(seeds)
        nfe_max, steps = dist.maximum(nfe_max), dist.maximum(steps)
    grid = run_dir / f"samples_{key}.png"
    if dist.is_main():
        shown = images[: ev.grid].float() / 255
        atomic.atomic_write(
            grid, lambda p: save_image(shown, p, nrow=int(ev.grid**0.5), format="png")
        )
        if ev.export:
            _export(key, sampler, cfg, seeds, images, run_dir, device)
    return {
        "nfe": nfe,
        "nfe_max": nfe_max,
        "sequential_steps": steps,
        "params": sampler.num_params(),
        **(sampler.diagnostics(seeds) if dist.is_main() else {}),
        "sample_wall_s": dist.maximum(res.wall_s),  # the slowest rank's
        "nonfinite": dist.total(res.n_nonfinite if stop > start else 0, device),
        "images_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
        **scorer.score(images),
        "grid": grid.name,
    }


def _export(key, sampler, cfg, seeds, images, run_dir, device) -> None:
    """The scored images as ``samples_KEY.npz`` or ``samples_KEY/`` (``eval.export``), so an
    outside tool can recompute every FID of the report (docs/export.md)."""
    name = f"samples_{key}.npz" if cfg.eval.export == "npz" else f"samples_{key}"
    classes = sampler.num_classes()
    labels = labels_for_seeds(seeds, classes) if classes else None
    record = {
        **export.provenance(key, cfg, environment(device)["git_commit"]),
        "batch_size": cfg.eval.batch_size,
        "num": len(seeds),
        "seeds": list(seeds),
    }
    export.write(images, labels, export.Target(run_dir / name, cfg.eval.export), record)


def anchors(cfg: BenchConfig, splits: data.Splits, scorer: Scorer) -> list[tuple[str, dict]]:
    """The metrics' bounds, scored like a sampler: Gaussian noise of the scored seeds' shape
    (the ceiling) and held-out real images (the floor). Inception features of Gaussian noise say
    nothing about a digit sampler: the noise anchor is scored with the domain extractor only."""
    shape = (splits.channels, splits.image_size, splits.image_size)
    noise, _ = to_uint8(noise_for_seeds(scored_seeds(cfg), shape))
    real = splits.real_anchor[: cfg.eval.num_samples]
    return [
        (label, {**scorer.score(images, inception), "unavailable": dict(scorer.unavailable)})
        for label, images, inception in (
            ("anchor: gaussian noise", noise, False),
            ("anchor: held-out real", real, True),
        )
    ]
