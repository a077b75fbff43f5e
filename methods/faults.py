"""Named kill points for the interruption tests (``FLOWBENCH_KILL_AT``).

The resume tests must interrupt a run at a chosen moment (mid-training, mid-sampling,
mid-metrics, while writing results), not whenever a timer fires. Code calls :func:`point` at
those moments; when the environment variable ``FLOWBENCH_KILL_AT`` names the point, the process
sends itself SIGKILL there, exactly as an out-of-memory killer or a cluster scheduler would.
``FLOWBENCH_STOP_AT`` instead stops it there (SIGSTOP) until the test sends SIGCONT: a live run
held at a known moment. Unset (always, outside the tests), :func:`point` does nothing.

``FLOWBENCH_SLOWDOWN`` (``tarflow=0.2,biflow=0.5``) is the debug switch that tests the
performance gate: after each batch a named sampler keeps its threads busy for that fraction of
the time the batch took, a real slowdown of a known size. A run records it (run.json's
environment) and its report says so.
"""

from __future__ import annotations

import os
import signal
import time

import torch


def point(name: str) -> None:
    if os.environ.get("FLOWBENCH_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FLOWBENCH_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def slowdown(name: str) -> float:
    """The fraction FLOWBENCH_SLOWDOWN slows the sampler ``name`` by (0: not at all)."""
    for part in os.environ.get("FLOWBENCH_SLOWDOWN", "").split(","):
        who, _, frac = part.partition("=")
        if part.strip() and who.strip() == name:
            try:
                value = float(frac)
            except ValueError:
                raise ValueError(
                    f"FLOWBENCH_SLOWDOWN: {part!r}; expected NAME=FRACTION, e.g. tarflow=0.2"
                ) from None
            if not 0 <= value <= 100:
                raise ValueError(f"FLOWBENCH_SLOWDOWN: {part!r}; the fraction must be in [0, 100]")
            return value
    return 0.0


_SPIN = torch.ones(64, 64)


def extra_work(seconds: float) -> None:
    """Matrix products on this process's threads for ``seconds`` (a slowdown's extra work)."""
    end = time.perf_counter() + seconds
    x = _SPIN
    while time.perf_counter() < end:
        x = torch.mm(x, _SPIN).clamp_(-1, 1)
