"""Name -> sampler class registry. Modules register themselves on import of ``methods``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methods.base import Sampler

_REGISTRY: dict[str, type[Sampler]] = {}
_SECTIONS: dict[str, type] = {}  # config section name -> its frozen dataclass


def register(name: str):
    """Class decorator: make a :class:`~methods.base.Sampler` subclass available as ``name``."""

    def wrap(cls: type[Sampler]) -> type[Sampler]:
        from methods.base import Sampler

        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"{cls!r} registered as {name!r} is not a Sampler subclass")
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is already registered by {_REGISTRY[name]!r}")
        if cls.__dict__.get("options") is not None:  # the sampler's own config section
            register_section(*cls.options)
        cls.name = name
        cls.label = cls.__dict__.get("label") or name  # a subclass names itself, or is its name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove the sampler ``name`` (a sampler a test or a plugin registered for a while); its
    config section, if any, stays declared."""
    if name not in _REGISTRY:
        raise KeyError(f"no sampler {name!r} is registered")
    del _REGISTRY[name]


def register_section(name: str, config: type) -> None:
    """A config section a method declares (a model's architecture and training, a sampler's
    own options): ``bench.config`` parses it from the YAML's top level as ``config``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config section {name!r}: {config!r} is not a dataclass")
    if _SECTIONS.get(name, config) is not config:
        raise ValueError(f"config section {name!r} is already registered as {_SECTIONS[name]!r}")
    _SECTIONS[name] = config


def sections() -> dict[str, type]:
    """Every registered method config section, in registration order."""
    return dict(_SECTIONS)


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
