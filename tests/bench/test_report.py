"""report.md from a run folder: writing it writes nothing else; the figures are drawn apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import plots, report
from bench.cli import main
from bench.columns import with_intervals
from bench.runfolder import IncompleteRunError

BASELINE = Path(__file__).resolve().parents[2] / "results" / "ci-baseline"
LINKS = ("![speedup against batch size](", "![quality against time per image](")


def bare_copy(tmp_path: Path) -> Path:
    """The committed CI baseline without its report and figures."""
    d = tmp_path / "run"
    shutil.copytree(BASELINE, d, ignore=shutil.ignore_patterns("report.md", *plots.FIGURES))
    return d


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def test_writing_the_report_writes_only_report_md(tmp_path):
    d = bare_copy(tmp_path)
    before = snapshot(d)
    assert report.write(d) == d / "report.md"
    after = snapshot(d)
    assert set(after) - set(before) == {"report.md"}
    assert all(after[k] == v for k, v in before.items())
    text = after["report.md"].decode()
    assert "## Speed against batch size" in text  # the sweep table, without figures to link
    assert not any(link in text for link in LINKS)


def test_figures_are_drawn_apart_and_then_linked(tmp_path):
    d = bare_copy(tmp_path)
    paths = plots.write_figures(d)
    assert paths == [d / name for name in plots.FIGURES]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    text = report.write(d).read_text()
    assert all(link in text for link in LINKS)
    assert "![speedup against batch size](speedup_vs_batch.png)" in text


def test_a_report_elsewhere_links_back_into_the_run_folder(tmp_path):
    d = bare_copy(tmp_path)
    plots.write_figures(d)
    out = report.write(d, tmp_path / "elsewhere" / "r.md")
    text = out.read_text()
    assert "![quality against time per image](../run/quality_vs_time.png)" in text
    assert "](../run/samples_biflow.png)" in text
    assert not (d / "report.md").exists()


def test_missing_only_keeps_the_figures_there(tmp_path):
    d = bare_copy(tmp_path)
    (d / "speedup_vs_batch.png").write_bytes(b"kept")
    plots.write_figures(d, missing_only=True)
    assert (d / "speedup_vs_batch.png").read_bytes() == b"kept"
    assert (d / "quality_vs_time.png").read_bytes().startswith(b"\x89PNG")
    plots.write_figures(d)
    assert (d / "speedup_vs_batch.png").read_bytes().startswith(b"\x89PNG")


def test_no_sweep_no_figures(tmp_path):
    d = bare_copy(tmp_path)
    (d / "sweep.csv").unlink()
    assert plots.write_figures(d) == []
    assert "## Speed against batch size" not in report.write(d).read_text()


def test_the_report_command_draws_only_missing_figures(tmp_path, capsys):
    d = bare_copy(tmp_path)
    (d / "quality_vs_time.png").write_bytes(b"kept")
    assert main(["report", str(d)]) == 0
    assert capsys.readouterr().out.strip() == str(d / "report.md")
    assert (d / "quality_vs_time.png").read_bytes() == b"kept"
    assert (d / "speedup_vs_batch.png").read_bytes().startswith(b"\x89PNG")


def test_an_unfinished_run_is_neither_drawn_nor_reported(tmp_path):
    d = bare_copy(tmp_path)
    (d / "run.json").write_text('{"status": "running"}')
    for write in (report.write, plots.write_figures):
        with pytest.raises(IncompleteRunError, match="status 'running'"):
            write(d)
    assert not (d / "report.md").exists() and not (d / "speedup_vs_batch.png").exists()


def test_the_tables_render_from_the_registry(tmp_path):
    run = bare_copy(tmp_path)
    text = report.write(run).read_text()
    present = with_intervals(pd.read_csv(run / "results.csv")).columns  # _ci: where measured
    main_header = "| " + " | ".join(c.header for c in report.MAIN if c.name in present)
    assert main_header.replace(" ", "") in text.replace(" ", "")
    assert "| GFLOP/img " in text and "| KID domain " in text


def test_a_run_json_without_its_environment_is_refused_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(BASELINE, run)
    info = json.loads((run / "run.json").read_text())
    del info["environment"]
    (run / "run.json").write_text(json.dumps(info))
    before = (run / "report.md").read_bytes()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run}: run.json has no environment record; a report needs them to "
                   "say how its numbers were obtained"]  # fmt: skip
    assert (run / "report.md").read_bytes() == before


def test_a_run_folder_without_its_config_yaml_is_refused_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(BASELINE, run)
    (run / "config.yaml").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run}: no config.yaml; a report prints the run's config"]
