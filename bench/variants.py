"""What a run measures: one entry per (sampler configuration, replicate).

A config names samplers two ways: ``methods`` (registered samplers with the run's own config; the
results call their variant "default") and ``variants`` (named overrides of the model and sampling
sections). ``replicates`` R repeats every entry with fresh training seeds and fresh sampling
seeds, so the tables can set each difference against the run-to-run spread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import methods
from bench.config import BenchConfig, ConfigError, variant_config
from bench.environment import resolve_device
from methods.kinds import kinds


@dataclass(frozen=True)
class Entry:
    key: str  # unique in the run: names its parts, grid, timing and memory rows
    method: str  # registered sampler
    variant: str  # the results' `variant` column
    tables: tuple[str, ...]  # `bench tables` tables that list it
    replicate: int  # 0 .. R-1
    cfg: BenchConfig  # the run's config with the variant's overrides and this replicate's seeds


def replicate_config(cfg: BenchConfig, r: int) -> BenchConfig:
    """Replicate ``r``: every model kind's training seed + r, and scored images drawn from seeds
    shifted by r x eval.num_samples (disjoint from every other replicate's)."""
    if r == 0:
        return cfg
    trains = {k.train_section for k in kinds()}
    seeds = {n: replace(getattr(cfg, n), seed=getattr(cfg, n).seed + r) for n in trains}
    ev = cfg.eval
    return replace(cfg.with_sections(**seeds), eval=replace(ev, seed=ev.seed + r * ev.num_samples))


def entries(cfg: BenchConfig) -> list[Entry]:
    """Every (sampler configuration, replicate) of the run, replicate by replicate."""
    base = [(m, m, "default", ("main",), cfg) for m in cfg.methods]
    base += [
        (v.name, v.method, v.name, v.tables, variant_config(cfg, i))
        for i, v in enumerate(cfg.variants)
    ]
    out = []
    for r in range(cfg.replicates):
        for name, method, variant, tables, c in base:
            key = name if cfg.replicates == 1 else f"{name}.r{r}"
            out.append(Entry(key, method, variant, tables, r, replicate_config(c, r)))
    return out


def check_choices(todo: list[Entry]) -> None:
    """Choices an entry's sampler could not honour (its ``problems``), refused before any
    training, with the entry's key and the first problem."""
    for e in todo:
        device = resolve_device(e.cfg.device)
        if problems := methods.get(e.method).problems(e.cfg, device):
            raise ConfigError(f"{e.key}: {problems[0]}")


def causal_baseline(e: Entry, todo: list[Entry]) -> str:
    """The entry ``e``'s speedups are measured against: exact causal decoding ("tarflow") of the
    same replicate, of the same flow and with the same guidance when the run has one (a guided
    sampler against guided decoding), else the replicate's first; "" when there is none."""
    causal = [c for c in todo if c.method == "tarflow" and c.replicate == e.replicate]
    same = [
        c
        for c in causal
        if (c.cfg.tarflow, c.cfg.tarflow_train) == (e.cfg.tarflow, e.cfg.tarflow_train)
        and c.cfg.sampling.guidance == e.cfg.sampling.guidance
    ]
    best = same or sorted(causal, key=lambda c: c.variant != "default")
    return best[0].key if best else ""
