"""Name -> sampler class registry. Modules register themselves on import of ``methods``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methods.base import Sampler

_REGISTRY: dict[str, type[Sampler]] = {}


def register(name: str):
    """Class decorator: make a :class:`~methods.base.Sampler` subclass available as ``name``."""

    def wrap(cls: type[Sampler]) -> type[Sampler]:
        from methods.base import Sampler

        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"{cls!r} registered as {name!r} is not a Sampler subclass")
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        cls.label = cls.__dict__.get("label") or name  # a subclass names itself, or is its name
        _REGISTRY[name] = cls
        return cls

    return wrap


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> type[Sampler]:
    """The sampler class registered as ``name``; an unknown name lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def label(name: str) -> str:
    """Display name of the sampler registered as ``name`` (an anchor row or a sampler this
    checkout does not have: the name itself)."""
    cls = _REGISTRY.get(name)
    return cls.label if cls is not None else name


def names() -> list[str]:
    return sorted(_REGISTRY)
