"""Quality along training: each sampler scored at the weights its training saved
(``<train section>.snapshots``), against training steps, training wall time and training FLOPs.

A sampler's curve follows the last model it needs (TarFlow's F; BiFlow's G, trained against the
final F), and its x-axes count the full training of the models before it (BiFlow's include
F's). With a moving average of the weights (``ema_decay``), each point is scored with the
average (every extractor) and with the raw weights (domain extractor only), so the report shows
what the average buys. The seeds are the scored seeds of the main table: the last point with the
sampled weights is the main table's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

import methods
from bench.config import BenchConfig
from bench.models import ModelStore, build, build_sampler
from bench.scoring import scored_seeds
from bench.variants import entries
from methods.kinds import kind
from methods.training import Labels, snapshot_steps

if TYPE_CHECKING:
    from bench.runner import Run
    from bench.variants import Entry

FILE = "curves.csv"  # one row per (entry, step, weights)
LOSS_FILE = "curve_loss.csv"  # one row per (entry, model, logged step)


def axis(method: str) -> str:
    """The model kind a sampler's curve follows: the last of its needs (trained last)."""
    return methods.get(method).needs[-1]


def steps(cfg: BenchConfig, method: str) -> tuple[int, ...]:
    """The training steps at which ``method``'s curve is scored (none: no curve, as for a
    sampler that needs no trained model)."""
    if not methods.get(method).needs:
        return ()
    return snapshot_steps(kind(axis(method)).train_of(cfg))


def wanted(cfg: BenchConfig) -> bool:
    """Whether the run draws curves: some sampler's model saves snapshots."""
    return any(steps(e.cfg, e.method) for e in entries(cfg))


def step_flops(store: ModelStore, name: str, cfg: BenchConfig) -> int:
    """FLOPs of one training step of model ``name`` (forward and backward of its objective on
    one batch, as torch's FlopCounterMode counts them; the optimiser's update is not counted)."""
    k, s = kind(name), store.splits
    deps = {n: store.get(n, cfg) for n in k.needs}
    model = build(k, cfg, (s.channels, s.image_size), deps).to(store.device).train()
    b = k.train_of(cfg).batch_size
    x = s.train[:b].to(store.device).float() / 127.5 - 1.0
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(x.shape, generator=gen).to(store.device)
    y = store.labels(k, cfg)
    lab = Labels(y[:b].to(store.device), torch.rand(b, generator=gen)) if y is not None else None
    with FlopCounterMode(display=False) as counter:
        k.objective(cfg, deps, store)(model, x, eps, lab).backward()
    return counter.get_total_flops()


def curve(r: Run, e: Entry) -> dict:
    """The curve of entry ``e``: its scored points and the loss histories of its models."""
    cls, name = methods.get(e.method), axis(e.method)
    store, train = r.store, kind(name).train_of(e.cfg)
    before = [n for n in cls.needs if n != name]  # trained in full before the curve's model
    flops = {n: step_flops(store, n, e.cfg) for n in cls.needs}
    done = {n: store.meta(n, e.cfg) for n in cls.needs}
    base = {
        "steps": sum(kind(n).train_of(e.cfg).steps for n in before),
        "seconds": sum(done[n]["seconds"] for n in before),
        "flops": sum(kind(n).train_of(e.cfg).steps * flops[n] for n in before),
    }
    seeds, points = scored_seeds(e.cfg), []
    for step in steps(e.cfg, e.method):
        for raw in (False, True) if train.ema_decay else (False,):
            model, meta = store.snapshot(name, e.cfg, step, raw)
            models = {n: store.get(n, e.cfg) for n in before} | {name: model}
            sampler = build_sampler(cls, models, r.device, e.cfg)
            images = sampler.sample(seeds, e.cfg.eval.batch_size).images
            points.append(
                {
                    "key": e.key,
                    "method": e.method,
                    "variant": e.variant,
                    "replicate": e.replicate,
                    "weights": "raw" if raw else ("ema" if train.ema_decay else "last"),
                    "ema_decay": train.ema_decay,
                    "step": step,
                    "train_steps": base["steps"] + step,
                    "train_s": base["seconds"] + meta["seconds"],
                    "train_flops": base["flops"] + step * flops[name],
                    **r.scorer.score(images, inception=not raw),
                }
            )
    offset, loss = 0, []
    for n in cls.needs:
        loss += [
            {"key": e.key, "model": kind(n).label, "step": s, "train_steps": offset + s, "loss": v}
            for s, v in done[n]["loss_history"]
        ]
        offset += kind(n).train_of(e.cfg).steps
    return {"points": points, "loss": loss}


def write(r: Run) -> None:
    """curves.csv and curve_loss.csv of the run's curves (nothing without any)."""
    from methods.atomic import atomic_write

    done = r.out.get("curves") or {}
    for file, part in ((FILE, "points"), (LOSS_FILE, "loss")):
        rows = [row for c in done.values() for row in c[part]]
        if rows:
            table = pd.DataFrame(rows)
            atomic_write(r.dir / file, lambda p, t=table: t.to_csv(p, index=False))
