"""Named kill points for the interruption tests (``FLOWBENCH_KILL_AT``).

The resume tests must interrupt a run at a chosen moment (mid-training, mid-sampling,
mid-metrics, while writing results), not whenever a timer fires. Code calls :func:`point` at
those moments; when the environment variable ``FLOWBENCH_KILL_AT`` names the point, the process
sends itself SIGKILL there, exactly as an out-of-memory killer or a cluster scheduler would.
``FLOWBENCH_STOP_AT`` instead stops it there (SIGSTOP) until the test sends SIGCONT: a live run
held at a known moment. Unset (always, outside the tests), :func:`point` does nothing.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("FLOWBENCH_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FLOWBENCH_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)
