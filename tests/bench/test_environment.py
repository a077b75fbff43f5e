"""Device resolution and the environment record of run.json."""

import pytest
import torch

from bench.config import ConfigError
from bench.environment import environment, resolve_device


def test_device_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: got 'cuda:1', but no CUDA device"):
        resolve_device("cuda:1")


def test_the_environment_names_versions_device_and_commit():
    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch_version"] == torch.__version__.split("+")[0]
    assert env["world_size"] == 1 and env["cpu_count"] >= 1
    assert len(env["git_commit"]) == 40 or env["git_commit"] == "n/a"
    assert "native_decode_kernel" in env and env["torch_threads"] == torch.get_num_threads()
