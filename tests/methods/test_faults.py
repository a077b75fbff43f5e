"""Named kill points: ``FLOWBENCH_KILL_AT`` naming a point SIGKILLs the process there, and only
there; unset, every point does nothing."""

import signal
import subprocess
import sys
from pathlib import Path

from methods import faults

FAULTS = Path(faults.__file__)
# methods/faults.py alone, without methods/__init__ (torch and every sampler: seconds to import)
SCRIPT = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("faults", {str(FAULTS)!r})
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)
faults.point("training")
print("after training", flush=True)
faults.point("metrics")
print("after metrics", flush=True)
"""


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_named_point_kills_the_process_there_and_only_there():
    res = run({"FLOWBENCH_KILL_AT": "metrics"})
    assert res.returncode == -signal.SIGKILL
    assert res.stdout == "after training\n"  # it ran up to the point, not past it


def test_unset_or_another_name_every_point_does_nothing(monkeypatch):
    assert (
        run({}).stdout
        == run({"FLOWBENCH_KILL_AT": "writing"}).stdout
        == ("after training\nafter metrics\n")
    )
    monkeypatch.setenv("FLOWBENCH_KILL_AT", "somewhere else")
    faults.point("metrics")  # this process lives on
