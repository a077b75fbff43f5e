"""The run folder's lifecycle: where a run goes, when it resumes, its parts and its seeds."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.config import ConfigError, load_config
from bench.config_file import to_dict
from bench.rundir import (
    BenchError,
    Parts,
    Stages,
    Terminated,
    locate,
    seeds_record,
    terminate_as_interrupt,
    unlock,
)

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


def test_a_new_run_goes_to_results_name_time(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir, previous, retrain = locate(cfg, to_dict(cfg), WHEN, None, None, False)
    assert run_dir == Path("results") / "smoke-20261201-213005"
    assert previous is None and retrain is False
    assert [p.name for p in run_dir.iterdir()] == [".flowbench.lock"]  # held, nothing else
    unlock(run_dir)


def test_an_unfinished_run_with_the_same_config_resumes_with_its_own_retrain(cfg, tmp_path):
    folder = unfinished(tmp_path / "run", to_dict(cfg), retrain=True)
    run_dir, previous, retrain = locate(cfg, to_dict(cfg), WHEN, folder, None, False)
    assert run_dir == folder and previous["status"] == "running" and retrain is True
    unlock(folder)


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


HOLD = "import sys, time; from pathlib import Path; from bench.rundir import lock; "
HOLD += "lock(Path(sys.argv[1]), '--out'); print('held', flush=True); time.sleep(60)"


def test_a_live_run_holds_the_folder_and_a_killed_one_leaves_no_stale_lock(cfg, tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = f"another run \\(process {holder.pid}\\) is writing this folder"
        with pytest.raises(ConfigError, match=message):
            locate(cfg, to_dict(cfg), WHEN, folder, None, False)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the OS drops the lock
        holder.wait()
    run_dir, previous, _ = locate(cfg, to_dict(cfg), WHEN, folder, None, False)
    assert run_dir == folder and previous is None
    unlock(folder)


def test_a_folder_that_holds_no_run_is_never_written(cfg, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own notes\n")
    with pytest.raises(ConfigError, match="a folder that holds no run \\(config.yaml\\)"):
        locate(cfg, to_dict(cfg), WHEN, folder, None, False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]
    assert (folder / "config.yaml").read_text() == "my own notes\n"
    with pytest.raises(ConfigError, match="--resume .*: no run.json; not a run folder"):
        locate(cfg, to_dict(cfg), WHEN, None, folder, False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("text, kind", [("[]", "array"), ('"x"', "string"), ("3", "number")])
def test_a_run_json_that_is_not_a_record_is_one_line(cfg, tmp_path, text, kind):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(text)
    for out, resume in ((folder, None), (None, folder)):
        with pytest.raises(ConfigError, match=f"run.json holds a JSON {kind}, not a run's record"):
            locate(cfg, to_dict(cfg), WHEN, out, resume, False)
        unlock(folder)


def test_sigterm_is_an_interrupt_while_a_run_works():
    with pytest.raises(Terminated, match="SIGTERM"), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored afterwards
