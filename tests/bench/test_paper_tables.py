"""configs/paper_tables.yaml: every row of the reverse, denoise, ablations and guidance tables
changes exactly one design factor against another row of its table. The factors are those the
samplers themselves report (Sampler.factors), built from the config's own (untrained) models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import methods
from bench.claims import differing
from bench.config import load_config
from bench.models import build, build_sampler
from bench.tables import _factor
from bench.variants import entries
from methods.base import Factors
from methods.kinds import closure

CONFIG = Path(__file__).parents[2] / "configs" / "paper_tables.yaml"
CPU = torch.device("cpu")


def factor_rows() -> dict[str, list[dict]]:
    """table -> one dict per variant of replicate 0: name, method and its factors as the tables
    compare them."""
    out: dict[str, list[dict]] = {}
    for e in entries(load_config(CONFIG)):
        if e.replicate:
            continue
        cls = methods.get(e.method)
        models: dict = {}
        for k in closure(cls.needs):
            models[k.name] = build(k, e.cfg, (1, 28), models)
        factors = vars(build_sampler(cls, models, CPU, e.cfg).factors())
        row = {"name": e.variant, "method": e.method}
        row |= {f: _factor(factors[f], f) for f in Factors.names()}
        for t in e.tables:
            out.setdefault(t, []).append(row)
    return out


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    return factor_rows()


@pytest.mark.parametrize("table", ["reverse", "denoise"])
def test_ordering_tables_differ_in_their_factor_alone(rows, table):
    """Each row has a partner differing in the table's factor and nothing else; in the reverse
    table every pair does (one denoising for all)."""
    for a in rows[table]:
        partners = [b for b in rows[table] if differing(a, b) == [table]]
        assert partners, f"{a['name']} differs from every row of {table} in more than {table}"
    if table == "reverse":
        for a in rows[table]:
            assert all(set(differing(a, b)) <= {"reverse"} for b in rows[table]), a["name"]
        assert {r["reverse"] for r in rows[table]} == {"exact", "naive", "distilled", "aligned"}


@pytest.mark.parametrize("table", ["ablations", "guidance"])
def test_every_ablation_row_changes_one_factor(rows, table):
    for a in rows[table]:
        one = [b for b in rows[table] if len(differing(a, b)) == 1]
        assert one, f"{a['name']}: no row of {table} differs from it in exactly one factor"


def test_the_ablations_reference_is_changed_once_per_factor(rows):
    ref = next(r for r in rows["ablations"] if r["name"] == "biflow_mse")
    changed = sorted(d for r in rows["ablations"] if r is not ref for d in differing(ref, r))
    assert changed == ["feature_loss", "norm_control", "weighting"]
    assert ref["norm_control"] == "on" and ref["weighting"] == "adaptive"


def test_guidance_forms_and_nfe_are_as_named(rows):
    forms = {r["name"]: r["guidance_form"] for r in rows["guidance"]}
    assert forms["biflow_cfg_w1"] == "training" and forms["biflow_cfg2_w1"] == "inference"
    assert forms["tarflow_cfg_linear"] == "inference, linear"
