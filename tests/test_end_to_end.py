"""The whole pipeline on configs/smoke.yaml: real training, sampling and torch-fidelity metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_smoke(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        str(ROOT / "configs" / "smoke.yaml"),
        "--out",
        str(out),
        "--set",
        f"cache_dir={cache}",
        "--set",
        f"metrics.stats_cache={cache / 'stats'}",
        *extra,
    ]
    # An empty torch home: no cached standard-Inception weights, as on a fresh offline machine.
    env = {**os.environ, "TORCH_HOME": str(cache / "torch_home")}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    first = run_smoke(tmp / "first", tmp / "cache")
    # Warm cache: loads every model. Without the offline Inception, which the first run covers.
    second = run_smoke(
        tmp / "second", tmp / "cache", "--set", "metrics.extractors=[domain,inception]"
    )
    return tmp / "first", tmp / "second", first, second


def test_run_folder_holds_every_output(runs):
    first, *_ = runs
    for name in (
        "results.csv",
        "results.parquet",
        "run.json",
        "report.md",
        "config.yaml",
        "sweep.csv",
        "speedup_vs_batch.png",
        "quality_vs_time.png",
        "samples_tarflow.png",
        "samples_tarflow_score.png",
        "samples_biflow.png",
    ):
        assert (first / name).is_file(), name
    table = pd.read_parquet(first / "results.parquet")
    for col in (
        "method",
        "variant",
        "nfe",
        "latency_ms_b1",
        "throughput_img_s",
        "peak_mem_mb",
        "fid_domain",
        "is_domain",
        "kid_domain",
    ):
        assert col in table.columns
    info = json.loads((first / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["environment"]["torch_version"].startswith("2.14.1")
    assert set(info["stages"]) >= {
        "data",
        "domain classifier",
        "sample and score biflow",
        "anchors",
        "timing sweep (samplers interleaved)",
        "peak memory",
    }


def test_counts_and_anchors(runs):
    first, *_ = runs
    t = pd.read_csv(first / "results.csv").set_index("method")
    cfg = json.loads((first / "run.json").read_text())["config"]["tarflow"]
    decode = cfg["blocks"] * ((28 // cfg["patch_size"]) ** 2 - 1)
    assert t.loc["tarflow", "nfe"] == decode
    assert t.loc["tarflow_score", "nfe"] == decode + 1
    assert t.loc["biflow", "nfe"] == 1
    noise, real = (
        t.loc["anchor: gaussian noise", "fid_domain"],
        t.loc["anchor: held-out real", "fid_domain"],
    )
    for m in ("tarflow", "tarflow_score", "biflow"):
        assert real < t.loc[m, "fid_domain"] < noise
    assert (t.loc[["tarflow", "tarflow_score", "biflow"], "peak_mem_mb"] > 0).all()


def test_warm_cache_loads_models_and_reproduces_the_metrics(runs):
    first, second, _, second_log = runs
    info = json.loads((second / "run.json").read_text())
    assert {m["source"] for m in info["models"].values()} == {"cache"}
    a, b = pd.read_csv(first / "results.csv"), pd.read_csv(second / "results.csv")
    for col in ("nfe", "fid_domain", "is_domain", "kid_domain"):
        pd.testing.assert_series_equal(a[col], b[col])
    assert (first / "samples_biflow.png").read_bytes() == (
        second / "samples_biflow.png"
    ).read_bytes()


def test_report_regenerates_from_the_run_folder(runs, tmp_path):
    first, *_ = runs
    before = (first / "report.md").read_text()
    out = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(first)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (first / "report.md").read_text() == before
    assert "anchor: held-out real" in before and "![biflow](samples_biflow.png)" in before


def test_sweep_covers_batch_one_to_the_throughput_batch(runs):
    first, *_ = runs
    sweep = pd.read_csv(first / "sweep.csv")
    ev = json.loads((first / "run.json").read_text())["config"]["eval"]
    expected = {
        1,
        ev["throughput_batch"],
        *(b for b in ev["sweep_batches"] if b <= ev["throughput_batch"]),
    }
    assert set(sweep.batch) == expected
    assert (sweep.loc[sweep.method == "tarflow", "speedup_vs_tarflow"] == 1.0).all()


def test_several_runs_in_one_table(runs, tmp_path):
    first, second, *_ = runs
    out = tmp_path / "both.md"
    res = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(first), str(second), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "| first " in text and "| second " in text
    assert text.count("BiFlow, learned reverse") == 2


def test_offline_inception_numbers_and_an_unavailable_standard_inception(runs):
    first, *_ = runs
    t = pd.read_csv(first / "results.csv").set_index("method")
    assert t["fid_inception_offline"].notna().all()
    assert (t["n_samples_inception"] == 12).all()
    noise, real = t.loc["anchor: gaussian noise"], t.loc["anchor: held-out real"]
    assert real["fid_inception_offline"] < noise["fid_inception_offline"]
    assert "fid_inception" not in t.columns
    info = json.loads((first / "run.json").read_text())
    assert "weights-inception-2015-12-05" in info["unavailable_metrics"]["inception"]
    assert "**unavailable**: inception: no weights offline" in (first / "report.md").read_text()
