"""torch.distributed as torchrun launches it: the process group, rank-0 duties, sharding, gathers.

A process started by ``torchrun --nproc_per_node=N`` (or with the usual multi-node rendezvous
flags) finds WORLD_SIZE, RANK and LOCAL_RANK in its environment; :func:`init` joins the group
(NCCL on GPU, gloo on CPU). A plain ``python -m bench run`` is world size 1 and every helper here
is then a no-op, so single-process runs take exactly the code path they always took.

Work is split in whole batches, in order: rank r takes a contiguous run of the batches, so every
batch any rank computes is the batch a single process would compute (same images, same size),
and concatenating the ranks' results in rank order gives the single-process result.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns the device of this rank
    (``cuda:LOCAL_RANK`` for a CUDA run, the given device otherwise)."""
    if not launched() or active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=int(os.environ.get("FLOWBENCH_DIST_TIMEOUT_MIN", 60))),
    )
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's items out of ``n`` split into batches of ``batch_size``:
    a contiguous run of whole batches (the last rank may get fewer, or none)."""
    batches = -(-n // batch_size)
    per_rank = -(-batches // world())
    start = min(n, rank() * per_rank * batch_size)
    return start, min(n, start + per_rank * batch_size)


def local_slice(batch: int) -> slice:
    """This rank's share of one training batch of ``batch`` items (equal shares)."""
    w = world()
    if batch % w:
        raise ValueError(f"batch_size: got {batch}; allowed: a multiple of the world size {w}")
    per = batch // w
    return slice(rank() * per, (rank() + 1) * per)


def _comm(device: torch.device) -> torch.device:
    """Where collectives move tensors: NCCL moves CUDA tensors, gloo CPU ones."""
    return device if device.type == "cuda" else torch.device("cpu")


def gather_cat(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same trailing shape, any length) in rank order; every
    rank receives the result, on the CPU."""
    if not active():
        return t
    comm = _comm(device)
    n = torch.tensor([len(t)], device=comm)
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=comm)
    padded[: len(t)] = t.to(comm)
    parts = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())].cpu() for p, s in zip(parts, sizes, strict=True)])


def _sum(value: float | int, dtype: torch.dtype, device: torch.device) -> float | int:
    v = torch.tensor([value], dtype=dtype, device=_comm(device))
    dist.all_reduce(v)
    return v.item()


def mean(value: float, device: torch.device) -> float:
    """The mean of a float over ranks (for logged losses: every rank logs the same number)."""
    return _sum(value, torch.float64, device) / world() if active() else value


def total(value: int, device: torch.device) -> int:
    """The sum of an integer over ranks."""
    return int(_sum(value, torch.int64, device)) if active() else value


@torch.no_grad()
def variance(t: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of all elements of ``t`` over every rank's ``t`` (no gradient): the
    statistic of the whole batch when each rank holds a share of it. ``t.var()`` in a single
    process."""
    if not active():
        return t.var()
    d = t.double()  # float64 sums: the one-pass formula cancels badly in float32
    stats = torch.stack([d.sum(), d.pow(2).sum(), torch.tensor(float(d.numel()), device=d.device)])
    dist.all_reduce(stats)
    sums, squares, n = stats.unbind()
    return ((squares - sums * sums / n) / (n - 1)).to(t.dtype)


def maximum(value: float) -> float:
    if not active():
        return value
    out: list = [None] * world()
    dist.all_gather_object(out, value)
    return max(out)


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(values: Sequence[object]) -> None:
    """Fail loudly if ranks disagree on something that must be identical (e.g. a config)."""
    if not active():
        return
    out: list = [None] * world()
    dist.all_gather_object(out, list(values))
    if any(o != out[0] for o in out):
        raise RuntimeError(f"ranks disagree: {out}")
