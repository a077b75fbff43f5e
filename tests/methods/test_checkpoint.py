import pytest
import torch

from methods import checkpoint
from methods.checkpoint import CheckpointError
from methods.tarflow import TarFlow, TarFlowConfig
from tests.conftest import TINY


def test_round_trip(tmp_path, trained_flow):
    path = tmp_path / "f.pt"
    spec = checkpoint.spec_of(TINY, channels=1, image_size=28)
    checkpoint.save(path, "tarflow", spec, trained_flow, {"steps": 40})
    fresh = TarFlow(TINY, 1, 28)
    assert checkpoint.load(path, "tarflow", spec, fresh) == {"steps": 40}
    for a, b in zip(fresh.state_dict().values(), trained_flow.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_different_config_is_refused_by_name(tmp_path, trained_flow):
    path = tmp_path / "f.pt"
    checkpoint.save(
        path, "tarflow", checkpoint.spec_of(TINY, channels=1, image_size=28), trained_flow, {}
    )
    other = TarFlowConfig(**{**TINY.__dict__, "width": 64})
    with pytest.raises(CheckpointError, match=r"width=32 \(model has 64\)"):
        checkpoint.load(
            path,
            "tarflow",
            checkpoint.spec_of(other, channels=1, image_size=28),
            TarFlow(other, 1, 28),
        )
    with pytest.raises(CheckpointError, match="expected 'biflow'"):
        checkpoint.load(path, "biflow", {}, TarFlow(TINY, 1, 28))


def test_a_truncated_file_is_refused_with_its_name(tmp_path, trained_flow):
    path = tmp_path / "f.pt"
    spec = checkpoint.spec_of(TINY, channels=1, image_size=28)
    checkpoint.save(path, "tarflow", spec, trained_flow, {})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="f.pt: not a readable checkpoint"):
        checkpoint.load(path, "tarflow", spec, TarFlow(TINY, 1, 28))
