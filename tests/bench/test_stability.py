"""`bench stability`'s arithmetic: spreads over runs and the thresholds they call for."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.stability import needed_thresholds, spreads

BASELINE = Path(__file__).resolve().parents[2] / "results" / "ci-baseline"


def test_spreads_and_the_thresholds_that_would_pass_every_pair(tmp_path):
    dirs = []
    for i, (slow, fid) in enumerate([(1.0, 0.0), (1.3, 0.5), (1.1, 0.2)]):
        d = tmp_path / f"run-{i}"
        shutil.copytree(BASELINE, d)
        t = pd.read_csv(d / "results.csv")
        t["latency_b1_vs_cal"] *= slow
        t["fid_domain"] += fid
        t.to_csv(d / "results.csv", index=False)
        dirs.append(d)
    table = spreads(dirs).set_index(["method", "metric"])
    lat = table.loc[("tarflow", "latency_b1_vs_cal")]
    assert lat["runs"] == 3 and lat["max_pair_ratio"] == pytest.approx(1.3)
    assert lat["max_rel_dev"] == pytest.approx(0.2 / 1.1)  # 1.3 against the median 1.1
    assert table.loc[("tarflow", "nfe"), "max_abs_diff"] == 0
    need = needed_thresholds(spreads(dirs))
    assert need["latency_rel"] == pytest.approx(0.3)
    assert need["fid_abs"] == pytest.approx(0.5)
