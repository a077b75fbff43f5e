"""One training loop for every model here: AdamW, linear warm-up then cosine decay, grad clip."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from methods import checkpoint, dist, faults
from methods.validate import FieldError, check


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak learning rate (AdamW)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 0
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    seed: int = 0  # batch order and training noise
    # The weights sampled: an exponential moving average of the trained ones with this decay
    # (warmed up as min(decay, (1 + n) / (10 + n)) after n updates), or the last ones (0).
    ema_decay: float = 0.0
    # Steps at which the weights are also saved (as they would be sampled, and raw), so a run
    # can score every sampler along training (bench.curves); with any, the last step's too.
    snapshots: tuple[int, ...] = ()

    LATER_FIELDS = ("ema_decay",)  # added after checkpoints were shipped: keyed when set
    UNKEYED = ("snapshots",)  # which steps are saved does not change the weights: never keyed

    def __post_init__(self) -> None:
        check(
            self,
            steps=(1, None),
            batch_size=(1, None),
            lr=(0, 1),
            warmup_steps=(0, None),
            weight_decay=(0, None),
            grad_clip=(0, None),
            seed=(0, None),
            ema_decay=(0, 0.99999),
        )
        snaps = list(self.snapshots)
        if snaps != sorted(set(snaps)) or (snaps and not 1 <= snaps[0] <= snaps[-1] < self.steps):
            raise FieldError(
                "snapshots", snaps, f"increasing steps from 1 to {self.steps - 1} (steps - 1)"
            )


class NonFiniteLossError(RuntimeError):
    pass


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class Labels:
    """Class labels of a training batch, and one uniform draw per image from the training
    generator (label dropout, per-image guidance scales), so conditional training stays
    deterministic."""

    y: torch.Tensor  # (b,) long
    u: torch.Tensor  # (b,) uniform in [0, 1)


# loss(net, x, eps, labels): ``net`` is the module to call for the forward pass (the model, or
# its DistributedDataParallel wrapper), x a batch of images in [-1, 1], eps standard normal noise
# of x's shape drawn by the training loop, labels the batch's Labels (None: unlabelled training).
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, Labels | None], torch.Tensor]


def train(
    model: nn.Module,
    loss_fn: Objective,
    data: torch.Tensor,
    cfg: TrainConfig,
    desc: str,
    device: torch.device,
    state_path: Path | None = None,
    save_every: int = 0,
    labels: torch.Tensor | None = None,
    snapshot: Snapshot | None = None,
) -> dict:
    """Minimise ``loss_fn(net, batch, eps)`` over batches of ``data`` (uint8 images, on CPU).

    Batches are drawn without replacement within an epoch, in an order fixed by ``cfg.seed``,
    and the noise ``eps`` of each batch comes from the same generator, so a run on CPU is
    deterministic. With ``labels`` (one class per image of ``data``) each batch also gets its
    :class:`Labels` (an unlabelled run draws exactly what it drew before labels existed).

    Under torchrun (world size N > 1) the model is wrapped in DistributedDataParallel and each
    rank takes its 1/N of every batch, and the matching rows of the batch's noise: the ranks
    together see exactly the batches and noise of a single-process run, and DDP's gradient
    average over equal shares is the full batch's mean gradient. Only rank 0 writes files.

    With ``state_path`` and ``save_every`` > 0, the whole training state (model, optimiser,
    scheduler, step, batch order, generator) is saved there atomically every ``save_every``
    steps, and a state found there is resumed: the result is the same as an uninterrupted run.
    The caller deletes the file once the final checkpoint is written.

    With ``cfg.ema_decay`` > 0 the model ends holding the moving average of its weights (what
    is sampled). At each step of ``snapshot_steps(cfg)``, ``snapshot(step, weights, raw,
    meta)`` gets the weights as they would be sampled, the raw ones (None without an average)
    and what training did so far (rank 0 only; before the training state of that step is saved).
    Returns what the run did: steps, seconds, final loss, a coarse loss history.
    """
    loop = _Loop(model, cfg, len(data), desc)
    if state_path is not None and state_path.exists():
        loop.resume(state_path)
    model.train()
    net = _distributed(model, device)
    share = dist.local_slice(cfg.batch_size)  # the whole batch in a single process
    last_saved = loop.resumed_from
    bar = _progress(loop.first, cfg.steps, desc)
    for step in bar:
        x, eps, lab = loop.batch(data, labels, share, device)
        loss = loss_fn(net, x, eps, lab)
        value = dist.mean(loss.item(), device)  # the whole batch's loss, on every rank
        if not math.isfinite(value):
            kept = (
                f"; the last good training state (step {last_saved}) is kept in {state_path}"
                if last_saved is not None
                else ""
            )
            raise NonFiniteLossError(f"{desc}: loss became {value} at step {step}{kept}")
        loop.update(loss, value)
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loop.ema:.4f}")
            loop.history.append((step, value))
        done = step + 1
        if snapshot is not None and done in snapshot_steps(cfg) and dist.is_main():
            snapshot(done, *loop.weights(), loop.meta(done))
        if state_path is not None and save_every and done % save_every == 0 and done < cfg.steps:
            loop.save(state_path, done)
            last_saved = done
        faults.point(f"train:{desc}:{done}")
    loop.finish()
    model.eval()
    return {
        **loop.meta(cfg.steps),
        **({"resumed_from_step": loop.resumed_from} if loop.resumed_from is not None else {}),
    }


def _distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, as it is otherwise."""
    if dist.world() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _progress(first: int, steps: int, desc: str) -> tqdm:
    """The progress bar over steps ``first`` .. ``steps`` - 1 (rank 0 only)."""
    return tqdm(
        range(first, steps),
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not dist.is_main(),
        initial=first,
        total=steps,
    )


def snapshot_steps(cfg: TrainConfig) -> tuple[int, ...]:
    """The steps whose weights a training run saves: its snapshots and then its last step."""
    return (*cfg.snapshots, cfg.steps) if cfg.snapshots else ()


# snapshot(step, weights as sampled, raw weights or None, what training did so far)
Snapshot = Callable[[int, dict, dict | None, dict], None]


def _ema_update(decay: float):
    """AveragedModel's update: an exponential moving average whose decay is warmed up as
    min(decay, (1 + n) / (10 + n)) after n updates, so early weights fade fast in short runs."""

    def update(averaged: list, current: list, n: torch.Tensor) -> None:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        for a, c in zip(averaged, current, strict=True):
            a.lerp_(c, 1 - d)

    return update


class _Loop:
    """The state of one training run that a resumed run restores: model, optimiser, schedule,
    the generator of batch order and noise, the position in the epoch, the loss record."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, n: int, desc: str) -> None:
        self.model, self.cfg, self.n, self.desc = model, cfg, n, desc
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.order, self.cursor = torch.randperm(n, generator=self.g), 0
        self.history: list[tuple[int, float]] = []
        self.ema: float | None = None
        self.first, self.seconds_before = 0, 0.0
        self.resumed_from: int | None = None
        self.average = (
            AveragedModel(model, multi_avg_fn=_ema_update(cfg.ema_decay)) if cfg.ema_decay else None
        )
        self.t0 = time.perf_counter()

    def meta(self, step: int) -> dict:
        """What training did up to ``step``."""
        return {
            "steps": step,
            "seconds": self.seconds(),
            "final_loss_ema": self.ema,
            "loss_history": list(self.history),
            "ema_decay": self.cfg.ema_decay,
        }

    def weights(self) -> tuple[dict, dict | None]:
        """The weights as sampled (the average, if any) and the raw ones (None without one)."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.average is None:
            return raw, None
        return {**raw, **self._averaged()}, raw

    def _averaged(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by the model's names (its buffers are the model's own)."""
        return {n: p.detach().clone() for n, p in self.average.module.named_parameters()}

    def finish(self) -> None:
        """Leave the model holding the weights it is sampled with."""
        if self.average is not None:
            self.model.load_state_dict({**self.model.state_dict(), **self._averaged()})

    def seconds(self) -> float:
        """Training seconds so far, earlier attempts included."""
        return self.seconds_before + time.perf_counter() - self.t0

    def batch(self, data: torch.Tensor, labels, share: slice, device: torch.device):
        """The next batch's images in [-1, 1], noise and labels (this rank's share of them);
        the generator draws the order, the noise and the label draws in that order."""
        cfg = self.cfg
        if self.cursor + cfg.batch_size > len(self.order):
            self.order, self.cursor = torch.randperm(self.n, generator=self.g), 0
        idx = self.order[self.cursor : self.cursor + cfg.batch_size]
        self.cursor += cfg.batch_size
        eps = torch.randn((len(idx), *data.shape[1:]), generator=self.g)
        x = data[idx[share]].to(device).float() / 127.5 - 1.0
        lab = None
        if labels is not None:
            u = torch.rand(len(idx), generator=self.g)
            lab = Labels(labels[idx[share]].to(device), u[share].to(device))
        return x, eps[share].to(device), lab

    def update(self, loss: torch.Tensor, value: float) -> None:
        """One optimiser step on ``loss`` (whose whole-batch value is ``value``)."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        self.ema = value if self.ema is None else 0.98 * self.ema + 0.02 * value

    def save(self, path: Path, step: int) -> None:
        """The whole state, atomically (rank 0 only), to resume after ``step`` steps."""
        if not dist.is_main():
            return
        checkpoint.save_payload(
            path,
            {
                "kind": "train_state",
                "desc": self.desc,
                "step": step,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "generator": self.g.get_state(),
                "order": self.order,
                "cursor": self.cursor,
                "ema": self.ema,
                **({"average": self.average.state_dict()} if self.average is not None else {}),
                "history": [list(h) for h in self.history],
                "seconds": self.seconds(),
            },
        )

    def resume(self, path: Path) -> None:
        st = checkpoint.load_payload(path, "train_state")
        if st.get("desc") != self.desc:
            raise checkpoint.CheckpointError(
                f"{path}: not a training state of {self.desc!r} (holds {st.get('desc')!r})"
            )
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(st["average"])
        self.g.set_state(st["generator"])
        self.order, self.cursor, self.first = st["order"], st["cursor"], st["step"]
        self.ema, self.seconds_before = st["ema"], st["seconds"]
        self.history = [tuple(h) for h in st["history"]]
        self.resumed_from = self.first
        print(f"[train] {self.desc}: resuming at step {self.first} from {path}", flush=True)
