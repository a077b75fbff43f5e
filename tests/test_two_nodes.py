"""Two torchrun nodes on one machine (c10d rendezvous on loopback, gloo, one process per node):
launched as docs/scaling.md shows a multi-node run, sharing one run folder and one warm cache,
they draw the same images (by digest) and score the same domain metrics as a single process."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_end_to_end import ROOT, run_smoke, smoke_command

pytestmark = pytest.mark.slow

# Only what neither the images nor the domain metrics depend on is cut (both runs alike).
FAST = [
    "metrics.extractors=[domain]",
    "eval.memory=false",
    "eval.sweep_batches=[1]",
    "eval.latency_repeats=1",
    "eval.throughput_repeats=1",
    "eval.timing_max_s=0",
]
SETS = [a for s in FAST for a in ("--set", s)]
COMPARED = ("method", "nfe", "n_samples", "images_sha256")
METRICS = tuple(f"{m}_domain" for m in ("fid", "is", "kid", "precision", "recall"))
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(out: Path, cache: Path, node_rank: int, port: int) -> tuple[list, dict]:
    """The smoke run as node ``node_rank`` of 2 (one process each), rendezvous at ``port``.
    (c10d ignores --node_rank: the nodes take ranks in the order they join.)"""
    cmd, env = smoke_command(out, cache, *SETS)
    python, bench = cmd[0], cmd[1:]  # smoke_command's single-process line: python -m bench ...
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=two-nodes",
        "--local-addr=127.0.0.1",  # the workers' process group too on loopback, not the FQDN
    ]
    return [python, *launcher, *bench], {**env, "OMP_NUM_THREADS": "1"}


def launch_two_nodes(out: Path, cache: Path, logs: Path) -> None:
    """Both nodes started at once, each in a session of its own (its launcher and worker are
    killed together): one that fails, or the timeout, kills the other, and the assertion shows
    both nodes' stderr."""
    port = free_port()
    procs, errs = [], []
    for r in (0, 1):
        cmd, env = node_command(out, cache, r, port)
        errs.append(logs / f"node{r}.err")
        with open(logs / f"node{r}.out", "w") as o, open(errs[-1], "w") as e:
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=o, stderr=e, start_new_session=True)
            )
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            break
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    codes = [p.returncode for p in procs]
    tails = [f"\n--- node {r} stderr ---\n{e.read_text()[-2500:]}" for r, e in enumerate(errs)]
    assert codes == [0, 0], f"exit codes {codes} (limit {TIMEOUT_S} s){''.join(tails)}"


def test_two_nodes_reproduce_a_single_process_run(tmp_path):
    """A single process trains the models; two nodes then load them and each samples and scores
    its half of the seeds (100 images, batches of 50): same images, same domain metrics."""
    cache, single, both = tmp_path / "cache", tmp_path / "single", tmp_path / "two-nodes"
    run_smoke(single, cache, *SETS)  # trains every model into the cache
    logs = tmp_path / "logs"
    logs.mkdir()
    launch_two_nodes(both, cache, logs)

    info = json.loads((both / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["environment"]["world_size"] == 2
    assert info["environment"]["dist_backend"] == "gloo"
    assert {m["source"] for m in info["models"].values()} == {"cache"}  # warm: no training
    # One rank made the run, not one per node: the rank that holds the run folder's lock.
    (attempt,) = info["attempts"]
    assert (both / ".flowbench.lock").read_text() == str(attempt["pid"])
    a, b = pd.read_csv(single / "results.csv"), pd.read_csv(both / "results.csv")
    assert len(a) == len(b) == 5  # 3 samplers, 2 anchors
    assert a.images_sha256[:3].notna().all()  # the samplers' rows carry a digest
    for col in (*COMPARED, *METRICS):
        pd.testing.assert_series_equal(a[col], b[col])
    # Only rank 0 speaks: its node's log holds the run, the other node's holds none of it.
    said = [(logs / f"node{r}.out").read_text() for r in (0, 1)]
    assert sorted("[bench] report:" in s for s in said) == [False, True]
