"""The run folder's lifecycle: where a run goes, when it resumes, its parts and its seeds."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.config import ConfigError, load_config, to_dict
from bench.rundir import BenchError, Parts, Stages, locate, seeds_record

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
WHEN = datetime(2026, 12, 1, 21, 30, 5, tzinfo=UTC)


@pytest.fixture
def cfg():
    return load_config(SMOKE)


def unfinished(folder: Path, config: dict, retrain: bool = False) -> Path:
    folder.mkdir()
    info = {"status": "running", "config": config, "retrain": retrain}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def test_a_new_run_goes_to_results_name_time(cfg):
    run_dir, previous, retrain = locate(cfg, to_dict(cfg), WHEN, None, None, False)
    assert run_dir == Path("results") / "smoke-20261201-213005"
    assert previous is None and retrain is False


def test_an_unfinished_run_with_the_same_config_resumes_with_its_own_retrain(cfg, tmp_path):
    folder = unfinished(tmp_path / "run", to_dict(cfg), retrain=True)
    run_dir, previous, retrain = locate(cfg, to_dict(cfg), WHEN, folder, None, False)
    assert run_dir == folder and previous["status"] == "running" and retrain is True


def test_resuming_with_another_config_names_the_keys_that_differ(cfg, tmp_path):
    other = to_dict(cfg)
    other["tarflow"] = {**other["tarflow"], "width": 48}
    folder = unfinished(tmp_path / "run", other)
    with pytest.raises(ConfigError, match=r"differing keys: tarflow.width \(48 then, 32 now\)"):
        locate(cfg, to_dict(cfg), WHEN, None, folder, False)


def test_a_finished_run_is_never_overwritten(cfg, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        locate(cfg, to_dict(cfg), WHEN, folder, None, False)


def test_parts_round_trip_and_a_torn_part_says_how_to_recover(tmp_path):
    parts = Parts(tmp_path)
    assert parts.get("timing") is None
    parts.put("timing", {"main": {"tarflow": 1.5}})
    assert parts.get("timing") == {"main": {"tarflow": 1.5}}
    (tmp_path / "parts" / "flops.json").write_text('{"per_img": ')
    with pytest.raises(BenchError, match="flops.json: unreadable .*delete it to measure it again"):
        parts.get("flops")


def test_stage_times_are_kept_in_order(capsys):
    timer = Stages({"data": 1.0})
    with timer.stage("flops"):
        pass
    assert list(timer.seconds) == ["data", "flops"] and timer.seconds["flops"] >= 0
    assert "[bench] flops: " in capsys.readouterr().out


def test_the_seed_record_names_every_model_kinds_training_seed(cfg):
    seeds = seeds_record(cfg)
    assert seeds["tarflow_train.seed"] == cfg.tarflow_train.seed
    assert seeds["biflow_train.seed"] == cfg.biflow_train.seed
    assert seeds["eval.seed"] == cfg.eval.seed
