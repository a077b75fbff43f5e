"""Work split over torchrun ranks, and the single-process no-ops. (Training under a real
2-process group against one process: test_distributed.py.)"""

import pytest
import torch

from methods import dist


def as_rank(monkeypatch, world: int, rank: int) -> None:
    monkeypatch.setattr(dist, "world", lambda: world)
    monkeypatch.setattr(dist, "rank", lambda: rank)


@pytest.mark.parametrize(
    "n,batch,world,shards",
    [
        (10, 3, 2, [(0, 6), (6, 10)]),  # 4 batches: 2 each, the last one short
        (10, 3, 3, [(0, 6), (6, 10), (10, 10)]),  # 2 batches a rank: the third gets none
        (8, 4, 1, [(0, 8)]),
        (5, 8, 2, [(0, 5), (5, 5)]),  # one batch: rank 0 alone
    ],
)
def test_ranks_take_contiguous_runs_of_whole_batches_in_order(monkeypatch, n, batch, world, shards):
    got = []
    for r in range(world):
        as_rank(monkeypatch, world, r)
        got.append(dist.shard(n, batch))
    assert got == shards
    # in rank order the shares are the n items once each, each share starting on a batch
    assert [i for start, stop in got for i in range(start, stop)] == list(range(n))
    assert all(start % batch == 0 for start, stop in got if stop > start)


def test_a_training_batch_splits_into_equal_shares(monkeypatch):
    as_rank(monkeypatch, 4, 2)
    assert dist.local_slice(32) == slice(16, 24)
    monkeypatch.setattr(dist, "world", lambda: 3)
    with pytest.raises(ValueError, match="batch_size: got 32; allowed: a multiple of the world"):
        dist.local_slice(32)


def test_a_single_process_takes_every_helper_as_a_no_op():
    assert not dist.active() and (dist.world(), dist.rank(), dist.is_main()) == (1, 0, True)
    t = torch.arange(6.0)
    cpu = torch.device("cpu")
    assert dist.gather_cat(t, cpu) is t and dist.broadcast({"a": 1}) == {"a": 1}
    assert dist.mean(0.25, cpu) == 0.25 and dist.total(3, cpu) == 3 and dist.maximum(2.0) == 2.0
    assert dist.variance(t) == t.var()  # unbiased: 3.5
    assert dist.shard(7, 2) == (0, 7) and dist.local_slice(5) == slice(0, 5)
    dist.agree(["anything"])
