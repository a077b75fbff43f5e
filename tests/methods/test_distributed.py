"""Training under torchrun (2 CPU processes, gloo, DistributedDataParallel) against a single
process. The sharded evaluation is tested end to end in tests/test_end_to_end.py (the warm-cache
run there is a 2-process torchrun run, and its images and metrics equal the first run's); the
split itself and the single-process no-ops in test_dist.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from methods import dist
from methods.biflow import BiFlowConfig, ReverseModel
from methods.biflow_loss import biflow_objective
from methods.tarflow import TarFlow, nll_objective
from methods.training import TrainConfig, train
from tests.conftest import TINY, balanced_draw

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(steps=5, batch_size=32, lr=3e-3, warmup_steps=2)


def train_both() -> dict:
    """Both models of the tests, trained from the same seeds (in whatever world this runs)."""
    from bench.data import mnist_digits

    x, y = mnist_digits()
    digits = x[balanced_draw(y, 256)]  # all ten classes (the file's first 256 rows are zeros)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    flow = TarFlow(TINY, 1, 28)
    flow_meta = train(flow, nll_objective(TINY.noise_std), digits, CFG, "tarflow", cpu)
    flow.requires_grad_(False)
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(width=32, depth=1, heads=2, mlp_ratio=2), 49, 16, TINY.blocks)
    g_meta = train(g, biflow_objective(flow), digits, CFG, "biflow", cpu)
    return {
        "world": dist.world(),
        "flow": flow.state_dict(),
        "reverse": g.state_dict(),
        "losses": [h[1] for h in flow_meta["loss_history"] + g_meta["loss_history"]],
    }


@pytest.mark.slow
def test_training_on_two_processes_equals_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tests.methods.ddp_worker",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    single = train_both()
    assert (ddp["world"], single["world"]) == (2, 1)
    # Each rank trains on its half of every batch with the matching half of the noise; DDP's
    # gradient average is then the full batch's gradient up to float summation order, so the
    # weights agree to rounding, not bit for bit. The loosest entries (~3e-5) are attention key
    # biases: their true gradient is exactly zero (softmax ignores a shift shared by all keys),
    # so AdamW turns their rounding noise into steps; every other weight agrees to ~1e-6.
    for name in ("flow", "reverse"):
        for key, value in single[name].items():
            torch.testing.assert_close(ddp[name][key], value, rtol=0, atol=1e-4, msg=key)
            if "qkv.bias" not in key:
                torch.testing.assert_close(ddp[name][key], value, rtol=0, atol=5e-6, msg=key)
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-5)
