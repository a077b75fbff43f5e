"""Bad input: a one-line error naming the problem and a non-zero exit, never a traceback.

Most cases call ``bench.cli.main`` in-process (the code path of ``python -m bench`` without the
interpreter start-up); a few run the real command in a subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (
            ["run", SMOKE, "--set", "methods=[tarflow,diffusion]"],
            "unknown method 'diffusion'; registered: biflow, biflow_score, tarflow, "
            "tarflow_jacobi, tarflow_score",
        ),
        (
            ["run", SMOKE, "--set", "tarflow.patch_size=5"],
            "tarflow.patch_size: got 5; allowed: a divisor of the image size 28",
        ),
        (
            ["run", SMOKE, "--set", "data.source=folder", "--set", "data.root=/no/such/dir"],
            "data.root: '/no/such/dir' does not exist",
        ),
        (["run", SMOKE, "--set", "tarflow.depth=-1"], "tarflow.depth: got -1; allowed: >= 1"),
        (["run", SMOKE, "--set", "device=cuda:0"], "device: got 'cuda:0', but no CUDA device"),
        (["report", "/no/such/run"], "not a run folder"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    code = main([*args, "--out", str(tmp_path / "run")] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1


def test_the_real_command_exits_2_with_one_line():
    out = bench("run", "missing.yaml")
    assert out.returncode == 2
    assert out.stderr == "error: config file 'missing.yaml' does not exist\n"


def test_yaml_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: {num_samples: 3\n")
    assert main(["run", str(bad)]) == 2
    assert "bad.yaml: YAML syntax error at line 2, column 1" in capsys.readouterr().err


def test_image_folder_without_images(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    code = main(
        [
            "run",
            SMOKE,
            "--set",
            "data.source=folder",
            "--set",
            f"data.root={tmp_path / 'imgs'}",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2 and "no images" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["run", SMOKE, "--out", str(tmp_path / "file" / "run")]) == 1
    err = capsys.readouterr().err
    assert f"cannot create the run folder {tmp_path / 'file' / 'run'}: Not a directory" in err


@pytest.mark.skipif(
    hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
    reason="root writes through permission bits",
)
def test_a_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    out = bench("run", SMOKE, "--out", str(ro / "run"))
    assert out.returncode == 1 and "cannot create the run folder" in out.stderr
    assert "Permission denied" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_disk_that_fills_while_writing(tmp_path):
    """RLIMIT_FSIZE makes every write past 1 KiB fail, as a full disk does."""
    import resource
    import signal

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    res = subprocess.run(
        [sys.executable, "-m", "bench", "run", SMOKE, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        preexec_fn=small_disk,
    )
    assert res.returncode == 1, res.stderr
    assert f"cannot write {tmp_path / 'run'}" in res.stderr
    assert "out of disk space?" in res.stderr and "Traceback" not in res.stderr
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written file left behind


def test_resume_refuses_a_different_config_and_report_an_unfinished_run(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "running", "config": {"name": "x"}}))
    (run / "results.csv").write_text("method\nx\n")
    assert main(["run", SMOKE, "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "made with a different config; differing keys: biflow, biflow_train, cache_dir" in err
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "status 'running' (the run was killed or is still running)" in err
    assert f"--resume {run}" in err


def test_a_finished_run_folder_is_not_overwritten(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    assert main(["run", SMOKE, "--out", str(run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_an_output_folder_with_a_garbled_run_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"status": "runn')  # torn by something other than us
    assert main(["run", SMOKE, "--out", str(run)]) == 2
    assert f"--out {run}: holds an unreadable run.json" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_check_refuses_without_cuda_in_one_line():
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode != 0
    assert res.stderr.strip().startswith("error: no CUDA device visible to torch")
    assert res.stderr.strip().count("\n") == 0
