"""Bad input: a one-line error naming the problem and exit code 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

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
            "unknown method 'diffusion'; registered: biflow, tarflow, tarflow_score",
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
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    args = [a if a != SMOKE else SMOKE for a in args]
    out = bench(*args, "--out", str(tmp_path / "run")) if args[0] == "run" else bench(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_yaml_syntax_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: {num_samples: 3\n")
    out = bench("run", str(bad))
    assert out.returncode == 2 and "YAML syntax error" in out.stderr
    assert "Traceback" not in out.stderr


def test_image_folder_without_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    out = bench(
        "run",
        SMOKE,
        "--set",
        "data.source=folder",
        "--set",
        f"data.root={tmp_path / 'imgs'}",
        "--out",
        str(tmp_path / "run"),
    )
    assert out.returncode == 2 and "no images" in out.stderr
