"""Training stops on a non-finite loss, and an interrupted training resumes bit-identically."""

import pytest
import torch

from methods import checkpoint
from methods.tarflow import TarFlow
from methods.training import NonFiniteLossError, TrainConfig, train
from tests.conftest import TINY

CFG = TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=3)
CPU = torch.device("cpu")


def flow_and_loss(stop_at: int | None = None, nan_at: int | None = None):
    torch.manual_seed(0)
    flow = TarFlow(TINY, 1, 28)
    calls = [0]

    def loss(net, x, eps, labels=None):
        calls[0] += 1
        if calls[0] == stop_at:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill) does mid-step
        out = net.nll_loss(x + TINY.noise_std * eps)
        return out * float("nan") if calls[0] == nan_at else out

    return flow, loss


def test_resumed_training_equals_uninterrupted_training(tmp_path, digits):
    ref, loss = flow_and_loss()
    meta_ref = train(ref, loss, digits, CFG, "t", CPU)

    state = tmp_path / "t.train-state.pt"
    flow, loss = flow_and_loss(stop_at=8)  # dies during step 8; state saved after step 6
    with pytest.raises(KeyboardInterrupt):
        train(flow, loss, digits, CFG, "t", CPU, state, save_every=3)
    assert checkpoint.load_payload(state)["step"] == 6

    flow, loss = flow_and_loss()  # a fresh process: new model, new optimiser
    meta = train(flow, loss, digits, CFG, "t", CPU, state, save_every=3)
    assert meta["resumed_from_step"] == 6
    assert meta["loss_history"] == meta_ref["loss_history"]
    assert checkpoint.tensor_digest(flow.state_dict()) == checkpoint.tensor_digest(ref.state_dict())


def test_a_nan_loss_stops_training_and_keeps_the_last_good_state(tmp_path, digits):
    state = tmp_path / "t.train-state.pt"
    flow, loss = flow_and_loss(nan_at=5)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 4.*step 3.*t.train"):
        train(flow, loss, digits, CFG, "t", CPU, state, save_every=3)
    assert checkpoint.load_payload(state)["step"] == 3


def test_a_state_of_another_model_is_refused(tmp_path, digits):
    state = tmp_path / "t.train-state.pt"
    flow, loss = flow_and_loss(stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        train(flow, loss, digits, CFG, "one", CPU, state, save_every=3)
    flow, loss = flow_and_loss()
    with pytest.raises(checkpoint.CheckpointError, match="not a training state of 'other'"):
        train(flow, loss, digits, CFG, "other", CPU, state, save_every=3)
