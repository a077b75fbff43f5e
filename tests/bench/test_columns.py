"""The column registry: what compare gates, how cells render, and that every table's column
list resolves to registered columns."""

from __future__ import annotations

import math

import pytest

from bench import columns, compare, report, tables
from bench.columns import COLUMNS, GATED, Column, pick, view
from bench.config import CompareConfig
from methods.base import Factors


def test_every_gated_metric_is_registered_and_judged():
    assert compare.METRICS == GATED and len(GATED) > 0
    for m in compare.METRICS:
        assert COLUMNS[m.name] is m and m.gate in columns.GATES and m.gate != "none"
        verdict, _ = compare.judge(m, 1.0, 1.0, CompareConfig())  # every gate has a margin
        assert verdict in ("ok", "info")


@pytest.mark.parametrize(
    ("name", "gate", "worse"),
    [
        ("nfe", "exact", 0),
        ("flops_per_img", "exact", 0),
        ("latency_b1_vs_cal", "latency", +1),
        ("tput_time_vs_cal", "throughput", +1),
        ("latency_ms_b1", "info", +1),
        ("throughput_img_s", "info", -1),
        ("peak_mem_mb", "memory", +1),
        ("fid_domain", "fid", +1),
        ("kid_inception_offline", "kid", +1),
        ("is_domain", "is", -1),
        ("speedup_b1", "none", 0),
    ],
)
def test_gates_and_directions(name, gate, worse):
    assert (COLUMNS[name].gate, COLUMNS[name].worse) == (gate, worse)


def test_worse_direction_decides_the_verdict():
    th = CompareConfig(fid_abs=1.0, is_abs=0.1)
    assert compare.judge(COLUMNS["fid_domain"], 10.0, 12.0, th)[0] == "REGRESSED"
    assert compare.judge(COLUMNS["fid_domain"], 12.0, 10.0, th)[0] == "improved"
    assert compare.judge(COLUMNS["is_domain"], 2.0, 1.5, th)[0] == "REGRESSED"
    assert compare.judge(COLUMNS["nfe"], 96.0, 97.0, th)[0] == "REGRESSED"


def test_cells_render():
    assert COLUMNS["params"].cell(933248) == "0.93"  # millions
    assert COLUMNS["flops_per_img"].cell(2.169e6) == "0.002"  # billions
    assert COLUMNS["speedup_b1"].cell(4.31) == "4.3x"
    assert COLUMNS["peak_fraction"].cell(0.0813) == "8.1%"
    assert COLUMNS["nvml_power_w"].cell("n/a") == "n/a"  # a reading without a driver
    assert COLUMNS["method"].cell("biflow") == "biflow"
    for c in COLUMNS.values():
        assert c.cell(math.nan) == "" and c.cell(None) == ""
        assert isinstance(c.cell(1.5), str)


def test_every_factor_is_a_registered_text_column():
    for f in Factors.names():
        assert COLUMNS[f].format is None and COLUMNS[f].header == f.replace("_", " ")


def test_report_and_tables_columns_resolve_to_the_registry():
    for table in (report.MAIN, report.QUALITY, report.COST):
        assert all(c.name in COLUMNS for c in table)
        assert len({c.header for c in table}) == len(table)  # no two columns under one header
    for spec in tables.SPECS.values():
        for cell in spec:
            assert cell.column.name in COLUMNS and cell.how in tables.HOW
    main = [c.header for c in report.MAIN]
    assert main[:3] == ["sampler", "NFE", "FID (domain)"]
    assert view("kid_domain", "KID domain", "{:.4f}").cell(0.30186) == "0.3019"
    assert COLUMNS["kid_domain"].cell(0.30186) == "0.302"  # the override is a copy


def test_unknown_names_and_bad_records_are_refused():
    with pytest.raises(KeyError, match="no result column 'fid_typo'"):
        pick("nfe", "fid_typo")
    with pytest.raises(ValueError, match="gate 'sometimes'"):
        Column("x", "x", gate="sometimes")
    with pytest.raises(ValueError, match="worse 2"):
        Column("x", "x", worse=2)
