"""`bench run`: data -> models -> per-sampler measurements -> run folder with tables and report.

A run is the list :data:`STAGES`, in order. Each stage is a plain function of the run context
:class:`Run`; one that names a part file saves its result under ``parts/``, and a resumed run
reuses it instead of measuring again. Measuring lives in its own modules (scoring, speed, cost,
likelihood, fairness); the run folder's lifecycle in :mod:`bench.rundir`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

import methods
from bench import curves, data, plots, refstats, report
from bench.config import BenchConfig, ConfigError
from bench.config_file import to_dict
from bench.cost import sampler_flops, sampler_memory
from bench.environment import environment, resolve_device
from bench.flops import matmul_peak
from bench.likelihood import likelihood
from bench.models import ModelStore, build_sampler
from bench.quality import Scorer
from bench.results import write_results
from bench.rundir import (
    BenchError,
    Parts,
    Stages,
    abandon,
    locate,
    make_folder,
    on_main,
    say,
    seeds_record,
    terminate_as_interrupt,
    write_json,
)
from bench.scoring import anchors, score_sampler, scored_seeds
from bench.speed import time_samplers
from bench.variants import Entry, causal_baseline, check_choices, entries, replicate_config
from methods import dist
from methods.base import Sampler

__all__ = ["STAGES", "BenchError", "Run", "Stage", "run"]


@dataclass
class Run:
    """What the stages share: the run's inputs, and what earlier stages produced."""

    cfg: BenchConfig
    base: Path  # the folder relative paths of the config resolve against
    dir: Path  # the run folder
    splits: data.Splits
    device: torch.device
    info: dict  # run.json, written after every finished stage
    timer: Stages
    parts: Parts
    todo: list[Entry]
    store: ModelStore | None = None
    scorer: Scorer | None = None
    samplers: dict[str, Sampler] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    out: dict[str, dict] = field(default_factory=dict)  # each stage's result, by stage name

    @property
    def cache_dir(self) -> Path:
        return (self.base / self.cfg.cache_dir).resolve()

    @functools.cached_property
    def baselines(self) -> dict[str, str]:
        """Each entry's causal baseline (bench.variants.causal_baseline): the timing sweep's
        speedups and the results table's both use it."""
        return {e.key: causal_baseline(e, self.todo) for e in self.todo}


@dataclass(frozen=True)
class Stage:
    """One step of a run. ``part``: the file under parts/ that keeps its result (None: it runs
    again on resume, e.g. loading models). ``over``: "entries" runs it once per entry, with
    ``{key}`` in title and part; "replicates" once per replicate, with ``{r}`` ("" or ".rN")."""

    name: str  # its results in Run.out
    title: str
    part: str | None
    fn: Callable
    all_ranks: bool = False  # every torchrun rank takes part (else rank 0 alone)
    over: str = ""  # "", "entries" or "replicates"
    when: Callable[[BenchConfig], bool] = lambda cfg: True


def _classifier(r: Run) -> dict:
    domain_path, acc = r.store.classifier()
    _record_models(r)
    if acc < r.cfg.classifier.min_accuracy:
        raise BenchError(
            f"domain classifier held-out accuracy {acc:.3f} < classifier.min_accuracy "
            f"{r.cfg.classifier.min_accuracy}: its FID/IS would not be trustworthy"
        )
    stats = (r.base / r.cfg.metrics.stats_cache).resolve()
    splits = r.splits
    outside = r.cfg.metrics.reference_stats
    r.scorer = Scorer(
        r.cfg,
        splits.reference,
        splits.name,
        domain_path,
        stats,
        r.device,
        (r.base / outside).resolve() if outside else None,
    )
    r.info["sampling_effective"] = to_dict(r.cfg.sampling.for_device(r.device))
    return {}


def _record_models(r: Run) -> None:
    made = r.parts.get("models") or {}
    kept = {k: v for k, v in made.items() if v["source"] == "trained"}
    r.parts.put("models", {**r.store.records, **kept})


def _models(r: Run, e: Entry) -> dict:
    cls = methods.get(e.method)
    models = {need: r.store.get(need, e.cfg) for need in cls.needs}
    _record_models(r)
    # (choices the models cannot honour were refused by check_choices before any training)
    r.samplers[e.key] = build_sampler(cls, models, r.device, e.cfg)
    return {}


def _compile(r: Run) -> dict:
    """torch.compile works at the first call of each shape: batch 1 and then any larger batch
    (compiled with dynamic sizes). Those calls are timed here, apart from every steady-state
    timing; a resumed run compiles again (compiled code lives in memory)."""
    for e in r.todo:
        t0 = time.perf_counter()
        r.samplers[e.key].first_calls(scored_seeds(e.cfg))
        r.compile_s[e.key] = round(time.perf_counter() - t0, 3)
        say(f"[bench] compiled {e.key}: {r.compile_s[e.key]:.1f} s")
    r.info["compile_s"] = r.compile_s
    return {}


def _common(r: Run, c: BenchConfig, replicate: int) -> dict:
    return {
        "dataset": r.splits.name,
        "extractors": ",".join(r.cfg.metrics.extractors),
        "replicate": replicate,
        "seed": c.eval.seed,
        "device": str(r.device),
    }


def _score(r: Run, e: Entry) -> dict:
    sampler = r.samplers[e.key]
    return {
        "method": e.method,
        "variant": e.variant,
        "key": e.key,
        "tables": ",".join(e.tables),
        **asdict(sampler.factors()),
        **_common(r, e.cfg, e.replicate),
        **score_sampler(e.key, sampler, e.cfg, scored_seeds(e.cfg), r.device, r.dir, r.scorer),
        "unavailable": dict(r.scorer.unavailable),
    }


def _anchors(r: Run, rep: int) -> list[dict]:
    c = replicate_config(r.cfg, rep)
    return [
        {"method": label, "variant": "-", "tables": "main", **_common(r, c, rep), **scores}
        for label, scores in anchors(c, r.splits, r.scorer)
    ]


def _timing(r: Run) -> dict:
    main, sweep, repeats = time_samplers(r.samplers, r.cfg, r.device, r.baselines)
    return {"main": main, "sweep": sweep, "repeats": repeats}


def _flops(r: Run) -> dict:
    return {
        "matmul_peak": matmul_peak(r.device),
        "matmul_peak_bf16": matmul_peak(r.device, precision="bf16"),
        "per_img": {e.key: sampler_flops(r.samplers[e.key], scored_seeds(e.cfg)) for e in r.todo},
    }


def _memory(r: Run) -> dict:
    # One probe at a time: side by side, their thread pools oversubscribe the cores (the stage
    # took 2x longer on 2 cores), though each reads its own high-water mark.
    return {
        n: sampler_memory(n, s, r.cfg, r.dir, r.cache_dir, r.splits, r.device)
        for n, s in r.samplers.items()
    }


def _likelihood(r: Run) -> dict:
    return likelihood(r.todo, r.store, r.splits, r.cfg, r.device)


# The run, in order; then rank 0 writes the results, the figures and the report. Stages up to
# the anchors run on every torchrun rank (sampling is sharded across them); the rest on rank 0.
STAGES = [
    Stage("classifier", "domain classifier", None, _classifier, all_ranks=True),
    Stage("models", "train or load models for {key}", None, _models, True, "entries"),
    Stage(
        "compile",
        "compile (first calls of each sampler)",
        None,
        _compile,
        all_ranks=True,
        when=lambda cfg: cfg.sampling.compile,
    ),
    Stage("score", "sample and score {key}", "score-{key}", _score, True, "entries"),
    Stage("anchors", "anchors{r}", "anchors{r}", _anchors, True, "replicates"),
    Stage("timing", "timing sweep (samplers interleaved)", "timing", _timing),
    Stage("flops", "flops", "flops", _flops),
    Stage("memory", "peak memory", "memory", _memory, when=lambda cfg: cfg.eval.memory),
    Stage("likelihood", "likelihood and baseline fairness", "likelihood", _likelihood),
    Stage(
        "curves",
        "quality along training of {key}",
        "curve-{key}",
        curves.curve,
        over="entries",
        when=curves.wanted,
    ),
]


def _run_stage(r: Run, s: Stage) -> None:
    """Run ``s`` (once per entry or replicate when it says so) and keep its result in r.out."""
    if s.over == "entries":
        items = [({"key": e.key}, e.key, e) for e in r.todo]
    elif s.over == "replicates":
        items = [({"r": f".r{i}" if i else ""}, i, i) for i in range(r.cfg.replicates)]
    else:
        items = [({}, None, None)]
    results = {}
    for names, slot, arg in items:
        title, part = s.title.format(**names), s.part and s.part.format(**names)
        done = r.parts.get(part) if part else None
        if s.all_ranks:  # every rank reuses what rank 0 found, or none does (no shared disk)
            done = dist.broadcast(done)
        if done is not None:
            say(f"[bench] {title}: kept from an earlier attempt")
            results[slot] = done
            continue
        with r.timer.stage(title):
            results[slot] = s.fn(r) if arg is None else s.fn(r, arg)
        if part:
            r.parts.put(part, results[slot])
            write_json(r.dir / "run.json", r.info)
    r.out[s.name] = results if s.over else results[None]


def run(
    cfg: BenchConfig,
    config_path: Path | None,
    out: Path | None,
    retrain: bool,
    resume: Path | None = None,
) -> Path:
    """Run the benchmark, or finish an interrupted run (``resume``: its folder).

    The run folder's run.json says "running" while it works (a killed run keeps saying so),
    then "complete", or "failed"/"interrupted" and why. Finished stages are kept under
    ``parts/``; a resumed run measures only what is missing.
    """
    base = config_path.resolve().parent if config_path else Path.cwd()
    todo = entries(cfg)
    for e in todo:
        methods.get(e.method)  # unknown names fail before any work
    check_choices(todo)
    if cfg.metrics.reference_stats:  # a bad statistics file fails before any work
        refstats.read(base / cfg.metrics.reference_stats, cfg.metrics.reference_stats_extractor)
    with terminate_as_interrupt():
        run_dir = _run(cfg, base, out, retrain, resume, todo)
    # The other ranks left after the last collective stage (anchors); rank 0 ran the rest alone.
    dist.shutdown()
    return run_dir


def _run(cfg, base, out, retrain, resume, todo) -> Path:
    device = dist.init(resolve_device(cfg.device))  # joins the process group under torchrun
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolved = to_dict(cfg)
    started = datetime.now(UTC)
    env = environment(device)  # before the run folder exists: git status must not see it
    # Rank 0 decides where the run goes and whether it resumes; every rank follows.
    run_dir, previous, retrain = on_main(
        lambda: locate(cfg, resolved, started, out, resume, retrain)
    )
    if previous is not None and previous.get("status") == "complete":
        if dist.is_main():
            say(f"[bench] {run_dir}: already complete; report regenerated")
            plots.write_figures(run_dir, missing_only=True)
            report.write(run_dir)
        return run_dir
    try:
        r = _start(cfg, base, run_dir, previous, retrain, device, todo, resolved, started, env)
    except BaseException:
        if dist.is_main():
            abandon(run_dir)  # nothing of a run was written: leave no folder behind
        raise
    try:
        _prepare(r, retrain)
        _run_stages(r)
    except BaseException as e:
        r.info.update(
            status="failed" if isinstance(e, Exception) else "interrupted",
            error=f"{type(e).__name__}: {e}",
        )
        write_json(run_dir / "run.json", r.info)
        raise
    if dist.is_main():
        plots.write_figures(run_dir)
        report.write(run_dir)
        say(f"[bench] report: {run_dir / 'report.md'}")
    return run_dir


def _run_stages(r: Run) -> None:
    for s in STAGES:
        if s.when(r.cfg) and (s.all_ranks or dist.is_main()):
            _run_stage(r, s)
    if dist.is_main():
        write_results(r)


def _start(cfg, base, run_dir, previous, retrain, device, todo, resolved, started, env) -> Run:
    """Load the data, then mark the run "running" in run.json (the last step: a run that
    fails before it leaves nothing behind)."""
    # Wall time of each stage; a resumed run keeps the earlier attempts' times of stages it reuses.
    timer = Stages(dict(previous.get("stages", {})) if previous else {})
    with timer.stage("data"):
        splits = data.load(cfg.data, base)
        if splits.image_size % cfg.tarflow.patch_size:
            raise ConfigError(
                f"tarflow.patch_size: got {cfg.tarflow.patch_size}; allowed: a divisor of the "
                f"image size {splits.image_size} of data {splits.name!r}"
            )
    info: dict = previous or {
        "started": started.isoformat(),
        "config": resolved,
        "retrain": retrain,
        "seeds": seeds_record(cfg),
        "dataset": {
            "name": splits.name,
            "train": len(splits.train),
            "reference": len(splits.reference),
            "real_anchor": len(splits.real_anchor),
            "shape": list(splits.train.shape[1:]),
        },
    }
    info.update(status="running", environment=env)
    info["stages"] = timer.seconds  # the same dict: every finished stage shows up in run.json
    attempt = {"started": started.isoformat(), "pid": os.getpid()}
    info["attempts"] = [*info.get("attempts", []), attempt]
    info.pop("error", None)
    # run.json first: a folder holding it is a run's (bench.rundir refuses any other)
    write_json(run_dir / "run.json", info)
    return Run(cfg, base, run_dir, splits, device, info, timer, Parts(run_dir), todo)


def _prepare(r: Run, retrain: bool) -> None:
    """The resolved config beside run.json, and the model store (which knows the models an
    interrupted attempt of this run already trained)."""
    on_main(lambda: make_folder(r.dir, r.info["config"]))
    made = r.parts.get("models") or {}
    trained = frozenset(v["checkpoint"] for v in made.values() if v["source"] == "trained")
    r.store = ModelStore(r.cfg, r.splits, r.cache_dir, r.device, retrain, made_by_this_run=trained)
