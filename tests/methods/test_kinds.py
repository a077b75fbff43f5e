"""Model kinds: declared once by their methods, looked up and ordered by what they need."""

from dataclasses import replace

import pytest

from methods.kinds import ModelKind, closure, kind, kinds, register_kind


def test_the_registered_kinds_come_after_what_they_need():
    names = [k.name for k in kinds()]
    assert names.index("flow") < names.index("reverse")
    assert kind("reverse").needs == ("flow",)
    assert [k.name for k in closure(["reverse"])] == ["flow", "reverse"]
    assert [k.name for k in closure(["flow"])] == ["flow"]


def test_each_kind_names_its_sections_and_shrinks_to_one_layer():
    from bench.config import BenchConfig

    cfg = BenchConfig()
    flow, reverse = kind("flow"), kind("reverse")
    assert flow.section_of(cfg) is cfg.tarflow and flow.train_of(cfg) is cfg.tarflow_train
    assert reverse.section_of(cfg) is cfg.biflow and reverse.train_of(cfg) is cfg.biflow_train
    small = flow.shrink(cfg.tarflow)
    assert (small.blocks, small.depth, small.width) == (1, 1, cfg.tarflow.width)
    assert reverse.shrink(cfg.biflow).depth == 1
    assert reverse.key_extra(cfg) == ()  # no feature loss, no feature network in the key
    with_features = cfg.with_sections(biflow=replace(cfg.biflow, feature_weight=1.0))
    assert len(reverse.key_extra(with_features)) == 1


def test_registration_refuses_duplicates_unknown_needs_and_other_types():
    flow = kind("flow")
    with pytest.raises(ValueError, match="'flow' is already registered"):
        register_kind(flow)
    with pytest.raises(ValueError, match="needs unregistered kinds"):
        register_kind(replace(flow, name="orphan", needs=("nothing",)))
    with pytest.raises(TypeError, match="is not a ModelKind"):
        register_kind("flow")
    with pytest.raises(KeyError, match="unknown model kind 'nope'; registered: flow, reverse"):
        kind("nope")
    assert isinstance(flow, ModelKind)
