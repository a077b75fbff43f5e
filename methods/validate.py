"""Range checks for config dataclasses, raised as errors that name the field and what is allowed."""

from __future__ import annotations

from typing import Any


class FieldError(ValueError):
    """A config field holds a value outside what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")


def check(obj: Any, **rules: tuple[float | None, float | None] | tuple[str, ...]) -> None:
    """``check(self, width=(1, None), mode=("a", "b"))``: inclusive numeric bounds or choices."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if rule and all(isinstance(r, str) for r in rule):
            if value not in rule:
                raise FieldError(name, value, "one of " + ", ".join(map(repr, rule)))
            continue
        lo, hi = rule
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # the type check reports this
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                allowed = f">= {lo}"
            elif lo is None:
                allowed = f"<= {hi}"
            else:
                allowed = f"between {lo} and {hi}"
            raise FieldError(name, value, allowed)
