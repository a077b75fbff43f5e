"""The one run-folder reader: what it accepts, what it fills, and every way it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.runfolder import (
    ROW_KEY,
    IncompleteRunError,
    Run,
    entry_names,
    load_results,
    load_run,
)

ROWS = [
    {"method": "biflow", "variant": "biflow", "replicate": 0, "key": "biflow.r0", "nfe": 1.0},
    {"method": "biflow", "variant": "biflow_cfg", "replicate": 0, "key": "biflow_cfg.r0"},
    {"method": "biflow", "variant": "biflow", "replicate": 1, "key": "biflow.r1", "nfe": 1.0},
    {"method": "anchor: held-out real", "variant": "-", "replicate": 0},
]


def folder(tmp_path: Path, rows=ROWS, status: str = "complete", **info) -> Path:
    d = tmp_path / "run"
    d.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    (d / "run.json").write_text(json.dumps({"status": status, "config": {"name": "toy"}} | info))
    return d


def refused(path: Path, *, need: tuple[str, ...] = ()) -> str:
    with pytest.raises(IncompleteRunError) as e:
        load_run(path, need)
    return str(e.value)


def test_a_complete_folder(tmp_path):
    d = folder(tmp_path, models={"m": {"params": 3}})
    sweep = {"method": ["biflow.r0"], "batch": [1], "ms_per_img": [2.0], "speedup_vs_tarflow": [3]}
    pd.DataFrame(sweep).to_csv(d / "sweep.csv", index=False)
    run = load_run(d, need=("nfe",))
    assert isinstance(run, Run) and run.dir == run.source == d
    assert run.config == {"name": "toy"} and run.info["models"] == {"m": {"params": 3}}
    assert list(run.results["variant"]) == ["biflow", "biflow_cfg", "biflow", "-"]
    assert run.results["replicate"].tolist() == [0, 0, 1, 0]
    assert list(run.sweep["method"]) == ["biflow.r0"]
    assert list(entry_names(run.results)) == [
        "biflow.r0",
        "biflow_cfg.r0",
        "biflow.r1",
        "anchor: held-out real",
    ]


def test_no_sweep_reads_as_empty(tmp_path):
    assert load_run(folder(tmp_path)).sweep.empty


def test_a_table_from_before_variants_and_replicates_is_filled_once(tmp_path):
    d = folder(tmp_path, rows=[{"method": "tarflow", "nfe": 96}, {"method": "biflow", "nfe": 1}])
    run = load_run(d)
    assert run.results[list(ROW_KEY)].values.tolist() == [
        ["tarflow", "default", 0],
        ["biflow", "default", 0],
    ]
    assert list(entry_names(run.results)) == ["tarflow", "biflow"]  # no key column


@pytest.mark.parametrize(
    ("status", "extra", "why"),
    [
        ("running", {}, "status 'running' (the run was killed or is still running)"),
        ("interrupted", {}, "status 'interrupted' (the run was interrupted)"),
        ("failed", {"error": "OSError: disk full"}, "the run failed: OSError: disk full"),
        ("weird", {}, "unknown status 'weird'"),
    ],
)
def test_an_unfinished_run_is_refused_with_how_to_finish_it(tmp_path, status, extra, why):
    d = folder(tmp_path, status=status, **extra)
    msg = refused(d)
    assert msg.startswith(f"{d}: the run is not complete") and why in msg
    assert f"python -m bench run CONFIG --resume {d}" in msg


def test_no_folder_a_file_or_no_run_json(tmp_path):
    assert refused(tmp_path / "nothing") == (
        f"{tmp_path / 'nothing'}: not a run folder (no such file or folder)"
    )
    (tmp_path / "file").write_text("x")
    assert "not a run folder (a file;" in refused(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused(empty) == f"{empty}: not a run folder (no results.csv and run.json)"
    d = folder(tmp_path)
    (d / "run.json").unlink()
    assert refused(d) == f"{d}: not a run folder (results.csv but no run.json)"


def test_a_torn_run_json(tmp_path):
    d = folder(tmp_path)
    (d / "run.json").write_text('{"status": "compl')
    assert refused(d).startswith(f"{d / 'run.json'}: unreadable (")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[]", "holds a JSON array, not a run's record (a JSON object)"),
        ('"complete"', "holds a JSON string, not a run's record"),
        ("null", "holds a JSON null, not a run's record"),
        ('{"status": "complete", "config": "toy"}', "'config' is a JSON string, not an object"),
        ('{"status": "complete", "stages": [1]}', "'stages' is a JSON array, not an object"),
    ],
)
def test_a_run_json_that_is_not_a_record(tmp_path, text, why):
    d = folder(tmp_path)
    (d / "run.json").write_text(text)
    assert refused(d).startswith(f"{d / 'run.json'}: {why}")


def test_records_may_be_null(tmp_path):
    d = folder(tmp_path, models=None, config=None)
    assert load_run(d).config == {}


def test_missing_results_of_a_complete_run(tmp_path):
    d = folder(tmp_path)
    (d / "results.csv").unlink()
    assert refused(d).startswith(f"{d / 'results.csv'}: no such file")


@pytest.mark.parametrize("content", [b"", b'method,nfe\n"biflow,1\n', b"\xff\xfe\x00garbage"])
def test_an_unreadable_results_csv(tmp_path, content):
    d = folder(tmp_path)
    (d / "results.csv").write_bytes(content)
    assert refused(d).startswith(f"{d / 'results.csv'}: unreadable")


def test_an_unreadable_results_csv_is_one_line(tmp_path):
    d = folder(tmp_path)
    (d / "results.csv").write_bytes(bytes(range(256)))  # pandas' message ends in a newline
    msg = refused(d)
    assert msg.startswith(f"{d / 'results.csv'}: unreadable (Error tokenizing") and "\n" not in msg


def test_a_results_csv_with_only_a_header(tmp_path):
    d = folder(tmp_path)
    (d / "results.csv").write_text("method,variant,replicate,nfe\n")
    assert refused(d) == f"{d / 'results.csv'}: no rows, only a header"


def test_an_unreadable_sweep_csv(tmp_path):
    d = folder(tmp_path)
    (d / "sweep.csv").write_bytes(b"")
    assert refused(d).startswith(f"{d / 'sweep.csv'}: unreadable")
    pd.DataFrame({"method": ["x"], "batch": [1]}).to_csv(d / "sweep.csv", index=False)
    assert refused(d) == f"{d / 'sweep.csv'}: no column 'ms_per_img', 'speedup_vs_tarflow'"


def test_missing_columns_are_named(tmp_path):
    d = folder(tmp_path)
    msg = refused(d, need=("nfe", "tables", "fid_domain"))
    assert msg.startswith(f"{d / 'results.csv'}: no column 'tables', 'fid_domain' (")
    assert "rerun it with this version" in msg
    d2 = folder(tmp_path / "b", rows=[{"a": 1, "b": 2}])
    assert (
        refused(d2) == f"{d2 / 'results.csv'}: not a flowbench results table (no column 'method')"
    )


def test_two_rows_of_one_key_are_refused(tmp_path):
    d = folder(tmp_path, rows=[*ROWS, ROWS[0]])
    msg = refused(d)
    assert "more than one row for the same (method, variant, replicate)" in msg
    assert "2 rows, e.g. (biflow, biflow, 0)" in msg


def test_a_non_integer_replicate(tmp_path):
    d = folder(tmp_path, rows=[{"method": "x", "replicate": "first"}])
    assert "column 'replicate' holds non-integers" in refused(d)


def test_a_bare_results_file(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "r.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.parquet"):
        run = load_results(tmp_path / name)
        assert run.dir is None and run.source == tmp_path / name
        assert run.info == {} and run.config == {} and run.sweep.empty
        assert run.results["replicate"].tolist() == [0, 0, 1, 0]
    (tmp_path / "r.txt").write_text("method\nx\n")
    with pytest.raises(IncompleteRunError, match="expected a run folder, a .csv or a .parquet"):
        load_results(tmp_path / "r.txt")
    with pytest.raises(IncompleteRunError, match="no column 'dataset'"):
        load_results(tmp_path / "r.csv", need=("dataset",))


def test_a_folder_through_load_results_is_checked_like_load_run(tmp_path):
    d = folder(tmp_path, status="running")
    with pytest.raises(IncompleteRunError, match="status 'running'"):
        load_results(d)
    with pytest.raises(IncompleteRunError, match="no such file or folder"):
        load_results(tmp_path / "nothing.csv")
