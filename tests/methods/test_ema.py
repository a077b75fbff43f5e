"""The moving average of the weights and the snapshots along training (methods.training)."""

import dataclasses

import pytest
import torch

from methods import checkpoint
from methods.training import TrainConfig, snapshot_steps, train
from methods.validate import FieldError
from tests.methods.test_training import CPU, flow_and_loss

CFG = TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=3, ema_decay=0.8)


def recorded(cfg: TrainConfig, digits):
    """Train the tiny flow with a snapshot at every step; return it, the meta and the records."""
    cfg = dataclasses.replace(cfg, snapshots=tuple(range(1, cfg.steps)))
    flow, loss = flow_and_loss()
    seen = {}

    def keep(step, weights, raw, meta):
        seen[step] = (weights, raw, meta)

    return flow, train(flow, loss, digits, cfg, "t", CPU, snapshot=keep), seen


def test_the_average_is_the_warmed_up_exponential_average_of_the_raw_weights(digits):
    flow, meta, seen = recorded(CFG, digits)
    assert sorted(seen) == list(range(1, CFG.steps + 1))
    assert meta["ema_decay"] == 0.8
    name = next(n for n, _ in flow.named_parameters())
    avg = seen[1][1][name].clone()  # the first update copies the weights
    for n in range(1, CFG.steps):  # n updates so far
        d = min(0.8, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * seen[n + 1][1][name]
        torch.testing.assert_close(seen[n + 1][0][name], avg)
    assert not torch.equal(avg, seen[CFG.steps][1][name])  # an average, not the last weights
    torch.testing.assert_close(flow.state_dict()[name], avg)  # the model ends holding it


def test_without_an_average_the_snapshots_are_the_raw_weights_and_the_model_the_last(digits):
    flow, _, seen = recorded(dataclasses.replace(CFG, ema_decay=0.0), digits)
    weights, raw, meta = seen[CFG.steps]
    assert raw is None and meta["steps"] == CFG.steps
    assert checkpoint.tensor_digest(weights) == checkpoint.tensor_digest(flow.state_dict())


def test_training_resumed_with_an_average_equals_an_uninterrupted_one(tmp_path, digits):
    ref, loss = flow_and_loss()
    train(ref, loss, digits, CFG, "t", CPU)
    state = tmp_path / "t.train-state.pt"
    flow, loss = flow_and_loss(stop_at=8)  # dies during step 8; state saved after step 6
    with pytest.raises(KeyboardInterrupt):
        train(flow, loss, digits, CFG, "t", CPU, state, save_every=3)
    flow, loss = flow_and_loss()
    meta = train(flow, loss, digits, CFG, "t", CPU, state, save_every=3)
    assert meta["resumed_from_step"] == 6
    assert checkpoint.tensor_digest(flow.state_dict()) == checkpoint.tensor_digest(ref.state_dict())


@pytest.mark.parametrize("snaps", [(5, 3), (3, 3), (0, 4), (4, 12), (4, 20)])
def test_a_bad_snapshot_list_names_the_field_and_what_is_allowed(snaps):
    with pytest.raises(FieldError, match=r"snapshots.*increasing steps from 1 to 11"):
        TrainConfig(steps=12, snapshots=snaps)


def test_snapshot_steps_end_at_the_last_step_and_none_without_snapshots():
    assert snapshot_steps(TrainConfig(steps=12, snapshots=(2, 5))) == (2, 5, 12)
    assert snapshot_steps(TrainConfig(steps=12)) == ()


def test_the_average_changes_the_cache_key_and_the_snapshots_do_not():
    plain = checkpoint.described(TrainConfig())
    assert "ema_decay" not in plain and "snapshots" not in plain  # shipped keys unchanged
    assert checkpoint.described(TrainConfig(snapshots=(3,))) == plain
    assert checkpoint.described(TrainConfig(ema_decay=0.999))["ema_decay"] == 0.999
