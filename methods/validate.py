"""Range checks for config dataclasses, raised as errors that name the field and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import reprlib
from typing import Any

_REPR = reprlib.Repr()  # a value in an error message: long strings, lists and ints cut short
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def shown(value: Any) -> str:
    """``repr(value)``, cut to about a line."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int beyond str()'s 4300 digits
        return f"an int of {value.bit_length()} bits"


class FieldError(ValueError):
    """A config field holds a value outside what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: got {shown(value)}; allowed: {allowed}")


def _bounds(lo: float | None, hi: float | None) -> str:
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"between {lo} and {hi}"


def check(obj: Any, **rules: tuple[float | None, float | None] | tuple[str, ...]) -> None:
    """``check(self, width=(1, None), mode=("a", "b"))``: inclusive numeric bounds or choices.

    A float must be finite, in every float field of a dataclass ``obj`` whether a rule names it
    or not, since NaN compares false to any bound (``nan < 0`` is False) and passes it."""
    fields = dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ()
    for name in (f.name for f in fields if f.name not in rules):
        value = getattr(obj, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(name, value, "a finite number")
    for name, rule in rules.items():
        value = getattr(obj, name)
        if rule and all(isinstance(r, str) for r in rule):
            if value not in rule:
                raise FieldError(name, value, "one of " + ", ".join(map(repr, rule)))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # the type check reports this
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(name, value, f"a finite number {_bounds(*rule)}")
        lo, hi = rule
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise FieldError(name, value, _bounds(lo, hi))
