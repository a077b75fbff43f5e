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


def flip_byte(path, offset_from_end: int = 2000) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_with_the_file_name(tmp_path, trained_flow):
    """A flip inside the tensor data still unpickles fine; only the digest catches it."""
    path = tmp_path / "f.pt"
    spec = checkpoint.spec_of(TINY, channels=1, image_size=28)
    checkpoint.save(path, "tarflow", spec, trained_flow, {})
    size = path.stat().st_size
    flip_byte(path, offset_from_end=size // 2)
    with pytest.raises(CheckpointError, match=r"f.pt: (content does not match|not a readable)"):
        checkpoint.load(path, "tarflow", spec, TarFlow(TINY, 1, 28))


def test_a_file_in_another_configs_place_is_refused(tmp_path, trained_flow):
    path = tmp_path / "tarflow-aaaa.pt"
    spec = checkpoint.spec_of(TINY, channels=1, image_size=28)
    checkpoint.save(path, "tarflow", spec, trained_flow, {}, key="tarflow-aaaa")
    path.rename(tmp_path / "tarflow-bbbb.pt")
    with pytest.raises(CheckpointError, match=r"tarflow-bbbb.pt: made by config 'tarflow-aaaa'"):
        checkpoint.load(
            tmp_path / "tarflow-bbbb.pt", "tarflow", spec, TarFlow(TINY, 1, 28), key="tarflow-bbbb"
        )


def test_a_file_without_a_digest_is_refused(tmp_path, trained_flow):
    path = tmp_path / "old.pt"
    torch.save({"kind": "tarflow", "spec": {}, "state_dict": trained_flow.state_dict()}, path)
    with pytest.raises(CheckpointError, match="old.pt: no content digest"):
        checkpoint.load(path, "tarflow", {}, TarFlow(TINY, 1, 28))


def test_the_shipped_checkpoints_verify():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[2] / "checkpoints").glob("*.pt"))
    assert shipped
    for path in shipped:
        assert checkpoint.load_payload(path)["key"] == path.stem
