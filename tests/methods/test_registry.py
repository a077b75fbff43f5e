import pytest

import methods
from methods.registry import UnknownMethodError, register


def test_three_samplers_are_registered():
    assert {"tarflow", "tarflow_score", "biflow"} <= set(methods.names())


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(UnknownMethodError) as e:
        methods.get("diffusion")
    assert "'diffusion'" in str(
        e.value
    ) and "biflow, biflow_score, tarflow, tarflow_jacobi, tarflow_score" in str(e.value)


def test_duplicates_and_non_samplers_are_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register("tarflow")(methods.get("biflow"))
    with pytest.raises(TypeError, match="not a Sampler"):
        register("thing")(object)
