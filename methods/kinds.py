"""What a kind of trained network declares about itself, once, next to the sampler that runs it.

The harness trains, caches, seeds, shrinks (for the dry run) and counts every model through
these records, so a new kind of network needs no change outside its own module. A record reads
its configuration from the run's config by section name (``cfg.<section>``), so ``cfg`` is any
object with those attributes (a ``bench.config.BenchConfig`` in practice).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from methods.registry import register_section
from methods.training import TrainConfig

Shape = tuple[int, int]  # (channels, image size) of the data
Models = Mapping[str, nn.Module]  # trained models by kind name
Objective = Callable[..., torch.Tensor]  # loss(net, x, eps, labels) (methods.training.train)


class Services(Protocol):
    """What the harness offers an objective beyond the models it depends on."""

    def feature_net(self, cfg: Any) -> nn.Module:
        """The frozen feature network of a perceptual loss (never the one that scores)."""


@dataclass(frozen=True)
class ModelKind:
    """One kind of trained network (the TarFlow F, BiFlow's reverse model G, ...)."""

    name: str  # what a sampler's ``needs`` names, e.g. "flow"
    checkpoint: str  # checkpoint kind and cache-file prefix, e.g. "tarflow"
    title: str  # names its training in progress lines, training states and fault points
    label: str  # display name in the dry run, e.g. "tarflow F"
    section: str  # config section of its architecture, e.g. "tarflow"
    config: type  # that section's frozen dataclass
    train_section: str  # config section of its training (a TrainConfig), e.g. "tarflow_train"
    # (cfg, shape, models it needs) -> the untrained model (the caller seeds torch first)
    build: Callable[[Any, Shape, Models], nn.Module]
    # (cfg, models it needs, services) -> its training loss
    objective: Callable[[Any, Models, Services], Objective]
    # (cfg, shape, models it needs, their cache keys) -> what a checkpoint must match
    # (methods.checkpoint.spec_of)
    spec: Callable[[Any, Shape, Models, Mapping[str, str]], dict]
    # section -> the dry run's copy: every tensor of a layer its configured shape, fewer layers
    shrink: Callable[[Any], Any]
    # (model, models it needs) -> positional args and kwargs of one image's forward pass
    example: Callable[[nn.Module, Models], tuple[tuple, dict]]
    needs: tuple[str, ...] = ()  # kinds it is trained against (trained first, then frozen)
    # cfg -> further configs its weights depend on (beyond its sections and its needs' keys)
    key_extra: Callable[[Any], tuple] = lambda cfg: ()
    classes: Callable[[Any], int] = lambda cfg: 0  # cfg -> classes of a conditional model

    def section_of(self, cfg: Any) -> Any:
        return getattr(cfg, self.section)

    def train_of(self, cfg: Any) -> TrainConfig:
        return getattr(cfg, self.train_section)


_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Make ``kind`` available by name; its needs must be registered first."""
    if not isinstance(kind, ModelKind):
        raise TypeError(f"{kind!r} is not a ModelKind")
    if kind.name in _KINDS:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    missing = [n for n in kind.needs if n not in _KINDS]
    if missing:
        raise ValueError(f"model kind {kind.name!r} needs unregistered kinds {missing}")

    register_section(kind.section, kind.config)
    register_section(kind.train_section, TrainConfig)
    _KINDS[kind.name] = kind
    return kind


def kind(name: str) -> ModelKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown model kind {name!r}; registered: {', '.join(_KINDS)}") from None


def kinds() -> list[ModelKind]:
    """Every registered kind, each after the kinds it needs."""
    return list(_KINDS.values())


def closure(names: list[str] | tuple[str, ...]) -> list[ModelKind]:
    """The kinds ``names`` and everything they need, dependencies first."""
    wanted: set[str] = set()

    def visit(n: str) -> None:
        if n not in wanted:
            wanted.add(n)
            for d in kind(n).needs:
                visit(d)

    for n in names:
        visit(n)
    return [k for k in _KINDS.values() if k.name in wanted]
