"""What the performance gate catches: scripts/perf_gate.sh run N times per injected slowdown.

    .venv/bin/python scripts/gate_detection.py -n 10 --slowdowns "" tarflow=0.1 tarflow=0.2 \
        tarflow=0.5 --out /tmp/gate

Each slowdown is a FLOWBENCH_SLOWDOWN value (methods.faults: the named sampler keeps its
threads busy for that fraction of each batch's time; "" is no change). Every gate run is the
real one (a reported regression is confirmed by a second run); OUT/detection.md tabulates how
many runs failed and what the failing compare named. Run it on a quiet machine: it measures the
gate, not the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]


def gate(out: Path, slowdown: str) -> tuple[int, str]:
    env = {**os.environ, "FLOWBENCH_SLOWDOWN": slowdown}
    code = subprocess.run(
        ["bash", str(ROOT / "scripts" / "perf_gate.sh"), str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).returncode
    last = Path(f"{out}-confirm") if Path(f"{out}-confirm").exists() else out
    text = (last / "compare.md").read_text() if (last / "compare.md").exists() else ""
    named = re.search(r"\*\*REGRESSED\*\* \(\d+\): (.*)", text)
    return code, named.group(1) if named else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10, help="gate runs per slowdown")
    p.add_argument("--slowdowns", nargs="+", default=["", "tarflow=0.2", "tarflow=0.5"])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.slowdowns:
        codes, names = [], set()
        t0 = time.time()
        for i in range(a.n):
            code, named = gate(a.out / f"{spec or 'none'}-{i}", spec)
            codes.append(code)
            names |= {n.strip() for n in named.split(",") if n.strip()}
            print(
                f"[gate-detection] {spec or 'no change'} run {i}: exit {code} {named}", flush=True
            )
        rows.append(
            [
                spec or "no change",
                a.n,
                sum(c == 1 for c in codes),
                sum(c == 2 for c in codes),
                ", ".join(sorted(names)),
                f"{(time.time() - t0) / a.n:.0f}",
            ]
        )
    heads = ["slowdown", "gate runs", "failed (exit 1)", "unusable (exit 2)", "named", "s/run"]
    table = tabulate(rows, heads, tablefmt="github")
    (a.out / "detection.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
