"""Quality along training (bench.curves) on configs/smoke.yaml's tiny models: real training with a
moving average and snapshots, real sampling and scoring at every saved step."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from methods import checkpoint

ROOT = Path(__file__).resolve().parents[2]
F_STEPS, G_STEPS = 30, 20

pytestmark = pytest.mark.slow


def run(out: Path, cache: Path) -> None:
    args = ["run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]
    for s in (
        f"cache_dir={cache}",
        f"metrics.stats_cache={cache / 'stats'}",
        "metrics.extractors=[domain]",
        "eval.memory=false",
        "tarflow_train.ema_decay=0.9",
        "tarflow_train.snapshots=[10,20]",
        f"biflow_train.steps={G_STEPS}",
        "biflow_train.snapshots=[10]",
    ):
        args += ["--set", s]
    assert main(args) == 0


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """A run folder "a" beside its model cache "cache"."""
    root = tmp_path_factory.mktemp("curves")
    run(root / "a", root / "cache")
    return root


def test_every_sampler_is_scored_at_every_saved_step_and_the_last_is_the_main_row(first):
    points = pd.read_csv(first / "a" / "curves.csv")
    by = points.groupby("method")
    # F averages its weights (ema and raw rows); G does not (its last weights alone)
    assert by.step.apply(list).to_dict() == {
        "tarflow": [10, 10, 20, 20, 30, 30],
        "tarflow_score": [10, 10, 20, 20, 30, 30],
        "biflow": [10, 20],
    }
    assert set(points[points.method == "tarflow"].weights) == {"ema", "raw"}
    assert set(points[points.method == "biflow"].weights) == {"last"}
    bi = points[points.method == "biflow"]
    assert list(bi.train_steps) == [F_STEPS + 10, F_STEPS + 20]  # its flow's training counts
    f_full = points[(points.method == "tarflow") & (points.step == F_STEPS)].iloc[0]
    assert (bi.train_flops > f_full.train_flops).all() and (bi.train_s > f_full.train_s).all()
    f = points[points.method == "tarflow"].drop_duplicates("step")
    assert f.train_flops.tolist() == [f.train_flops.iloc[0] * k for k in (1, 2, 3)]

    results = pd.read_csv(first / "a" / "results.csv").set_index("method")
    sampled = points[(points.weights != "raw")]
    last = sampled[sampled.step == sampled.groupby("method").step.transform("max")]
    for _, row in last.iterrows():  # the same weights and seeds as the main table's row
        assert row.fid_domain == pytest.approx(results.loc[row.method, "fid_domain"], rel=1e-9)
    raw = points[(points.method == "tarflow") & (points.weights == "raw")]
    assert not (raw.fid_domain.values == f.fid_domain.values).all()  # the average is used

    loss = pd.read_csv(first / "a" / "curve_loss.csv")
    g_loss = loss[(loss.key == "biflow") & (loss.model.str.contains("G"))]
    assert g_loss.train_steps.min() == F_STEPS and g_loss.step.max() == G_STEPS - 1
    report = (first / "a" / "report.md").read_text()
    assert "## Quality along training" in report
    assert "a moving average with decay 0.9" in report and ": the last ones" in report
    assert (first / "a" / "curves.png").is_file()


def test_the_last_snapshot_is_the_checkpoint_and_a_missing_one_retrains(first, capsys):
    cache = first / "cache"
    models = json.loads((first / "a" / "run.json").read_text())["models"]
    key = next(k for k, m in models.items() if m["kind"] == "tarflow")
    final = checkpoint.load_payload(cache / f"{key}.pt")["state_dict"]
    snap = checkpoint.load_payload(cache / f"{key}.step{F_STEPS}.pt")
    assert checkpoint.tensor_digest(snap["state_dict"]) == checkpoint.tensor_digest(final)
    assert not all(torch.equal(snap["raw_state_dict"][n], final[n]) for n in final)

    (cache / f"{key}.step10.pt").unlink()
    capsys.readouterr()
    run(first / "b", cache)
    assert "training again to save the weights at steps [10]" in capsys.readouterr().out
    before, again = (pd.read_csv(first / d / "curves.csv") for d in ("a", "b"))
    cols = ["method", "weights", "step", "fid_domain"]
    pd.testing.assert_frame_equal(before[cols], again[cols])  # retraining is deterministic
