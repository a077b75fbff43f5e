"""Range checks of config dataclasses: the error names the field, the value and what is allowed."""

from dataclasses import dataclass

import pytest

from methods.validate import FieldError, check


@dataclass
class Cfg:
    width: int = 8
    rate: float = 0.5
    mode: str = "a"
    flag: bool = True


def test_values_inside_the_bounds_and_choices_pass():
    check(Cfg(width=1, rate=1.0), width=(1, None), rate=(0, 1), mode=("a", "b"))
    check(Cfg(rate=-5.0), rate=(None, 0))


@pytest.mark.parametrize(
    "cfg,rule,message",
    [
        (Cfg(width=0), {"width": (1, None)}, "width: got 0; allowed: >= 1"),
        (Cfg(rate=1.5), {"rate": (None, 1)}, "rate: got 1.5; allowed: <= 1"),
        (Cfg(rate=-0.1), {"rate": (0, 1)}, "rate: got -0.1; allowed: between 0 and 1"),
        (Cfg(mode="c"), {"mode": ("a", "b")}, "mode: got 'c'; allowed: one of 'a', 'b'"),
    ],
)
def test_a_value_outside_is_refused_by_name(cfg, rule, message):
    with pytest.raises(FieldError) as e:
        check(cfg, **rule)
    assert str(e.value) == message
    name = next(iter(rule))
    assert (e.value.field, e.value.value) == (name, getattr(cfg, name))


def test_bounds_leave_non_numbers_and_booleans_to_the_type_check():
    check(Cfg(width="wide", flag=True), width=(1, None), flag=(2, None))
