"""One training loop for every model here: AdamW, linear warm-up then cosine decay, grad clip."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from methods import checkpoint, dist, faults
from methods.validate import check


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak learning rate (AdamW)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 0
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    seed: int = 0  # batch order and training noise

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
    The caller deletes the file once the final checkpoint is written. Returns what the run did:
    steps, seconds, final loss, a coarse loss history.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    share = dist.local_slice(cfg.batch_size)  # the whole batch in a single process
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    order, cursor = torch.randperm(len(data), generator=g), 0
    history: list[tuple[int, float]] = []
    ema, first, seconds_before, resumed_from = None, 0, 0.0, None
    if state_path is not None and state_path.exists():
        st = checkpoint.load_payload(state_path, "train_state")
        if st.get("desc") != desc:
            raise checkpoint.CheckpointError(
                f"{state_path}: not a training state of {desc!r} (holds {st.get('desc')!r})"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        g.set_state(st["generator"])
        order, cursor, first = st["order"], st["cursor"], st["step"]
        ema, history, seconds_before = st["ema"], [tuple(h) for h in st["history"]], st["seconds"]
        resumed_from = first
        print(f"[train] {desc}: resuming at step {first} from {state_path}", flush=True)
    model.train()
    net = model
    if dist.world() > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    t0 = time.perf_counter()
    last_saved = resumed_from

    def save_state(step: int) -> None:
        if not dist.is_main():
            return
        checkpoint.save_payload(
            state_path,
            {
                "kind": "train_state",
                "desc": desc,
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": g.get_state(),
                "order": order,
                "cursor": cursor,
                "ema": ema,
                "history": [list(h) for h in history],
                "seconds": seconds_before + time.perf_counter() - t0,
            },
        )

    bar = tqdm(
        range(first, cfg.steps),
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not dist.is_main(),
        initial=first,
        total=cfg.steps,
    )
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=g), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        eps = torch.randn((len(idx), *data.shape[1:]), generator=g)
        x = data[idx[share]].to(device).float() / 127.5 - 1.0
        lab = None
        if labels is not None:
            u = torch.rand(len(idx), generator=g)
            lab = Labels(labels[idx[share]].to(device), u[share].to(device))
        loss = loss_fn(net, x, eps[share].to(device), lab)
        value = dist.mean(loss.item(), device)  # the whole batch's loss, on every rank
        if not math.isfinite(value):
            kept = (
                f"; the last good training state (step {last_saved}) is kept in {state_path}"
                if last_saved is not None
                else ""
            )
            raise NonFiniteLossError(f"{desc}: loss became {value} at step {step}{kept}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{ema:.4f}")
            history.append((step, value))
        done = step + 1
        if state_path is not None and save_every and done % save_every == 0 and done < cfg.steps:
            save_state(done)
            last_saved = done
        faults.point(f"train:{desc}:{done}")
    model.eval()
    return {
        "steps": cfg.steps,
        "seconds": seconds_before + time.perf_counter() - t0,
        "final_loss_ema": ema,
        "loss_history": history,
        **({"resumed_from_step": resumed_from} if resumed_from is not None else {}),
    }
