"""`bench stability`'s arithmetic: spreads over runs and the thresholds they call for."""

import json
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


def synthetic_run(d: Path, fids: dict[tuple[str, int], float]) -> Path:
    """A finished run folder whose biflow rows differ in variant and replicate."""
    d.mkdir(parents=True)
    rows = [
        {"method": "biflow", "variant": v, "replicate": r, "fid_domain": fid, "nfe": 1.0}
        for (v, r), fid in fids.items()
    ]
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    (d / "run.json").write_text(json.dumps({"status": "complete", "config": {"name": "toy"}}))
    return d


def test_each_variant_and_replicate_gets_its_own_spread(tmp_path):
    keys = [("biflow", 0), ("biflow_cfg", 0), ("biflow", 1), ("biflow_cfg", 1)]
    base = {key: 10.0 * (i + 1) for i, key in enumerate(keys)}  # 10, 20, 30, 40
    shifts = {key: 1.0 + i for i, key in enumerate(keys)}  # each row moves by its own amount
    dirs = [
        synthetic_run(tmp_path / f"run-{k}", {key: base[key] + k * shifts[key] for key in keys})
        for k in range(3)
    ]
    table = spreads(dirs)
    fid = table[table.metric == "fid_domain"].set_index(["method", "variant", "replicate"])
    assert len(fid) == 4 and fid.index.is_unique
    for variant, rep in keys:
        row = fid.loc[("biflow", variant, rep)]
        assert row["runs"] == 3
        assert row["median"] == pytest.approx(base[(variant, rep)] + shifts[(variant, rep)])
        assert row["max_abs_diff"] == pytest.approx(2 * shifts[(variant, rep)])
    assert needed_thresholds(table)["fid_abs"] == pytest.approx(2 * 4.0)  # the worst row
