"""The result columns: one record each (header, format, how ``bench compare`` gates it).

``COLUMNS`` is keyed by the results.csv column name. report.md's tables, ``bench tables`` and
``bench compare`` read their headers, formats and gates from here; a table that shows a column
under another header says so with ``view(name, header=...)``.

Gates (how ``bench compare`` judges a change; ``worse``: +1 higher is worse, -1 lower is worse):

- ``exact``: deterministic counts; any change fails.
- ``latency``/``throughput``: ratios to the calibration workload timed in the same run, failing
  beyond ``compare.latency_rel``/``compare.throughput_rel``.
- ``memory``: failing beyond ``compare.memory_rel``.
- ``fid``/``kid``/``is``: absolute thresholds in the metric's units.
- ``info``: shown, never failing. ``none``: not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from bench.config import EXTRACTORS
from methods.base import Factors

GATES = ("exact", "latency", "throughput", "memory", "fid", "kid", "is", "info", "none")


@dataclass(frozen=True)
class Column:
    """One results column as tables show it and as ``bench compare`` judges it."""

    name: str  # the results.csv column
    header: str  # markdown table header
    format: str | None = None  # str.format of one (scaled) number; None: shown as text
    gate: str = "none"  # one of GATES
    worse: int = 0  # +1: higher is worse, -1: lower is worse, 0: any change (or not gated)
    scale: float = 1.0  # shown divided by this (params in millions, FLOPs in billions)

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise ValueError(f"column {self.name}: gate {self.gate!r}; allowed: {GATES}")
        if self.worse not in (-1, 0, 1):
            raise ValueError(f"column {self.name}: worse {self.worse!r}; allowed: -1, 0, +1")

    def cell(self, value: object) -> str:
        """One value as a table cell: empty when missing, text as it is (e.g. "n/a" for an NVML
        reading without a driver), numbers divided by ``scale`` and formatted."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, str) or self.format is None:
            return str(value)
        return self.format.format(value / self.scale)


# The results with a bootstrap interval: FID (FD outside the Inception family), KID, precision
# (not recall: with the generated k-NN radii fixed, its interval understates the noise 2-3x)
INTERVALS = tuple(
    f"{'fd' if m == 'fid' and ex in ('dinov2', 'clip') else m}_{ex}"
    for ex in EXTRACTORS
    for m in ("fid", "kid", "precision")
)

_ALL = [
    # which row: the row key, the table memberships, the design factors
    Column("method", "sampler"),
    Column("variant", "variant"),
    Column("replicate", "replicate", "{:.0f}"),
    *[Column(f, f.replace("_", " ")) for f in Factors.names()],
    Column("replicates", "R"),  # bench tables' aggregate: how many replicates a row averages
    Column("paper_fid", "paper FID"),  # bench tables: the BiFlow paper's number for the row
    # deterministic counts
    Column("nfe", "NFE", "{:.0f}", "exact"),
    Column("sequential_steps", "sequential steps", "{:.0f}", "exact"),
    Column("flops_per_img", "GFLOP/img", "{:.3f}", "exact", scale=1e9),
    Column("params", "params (M)", "{:.2f}", "exact", scale=1e6),
    Column("nonfinite", "non-finite", "{:.0f}", "exact"),
    # time: gated as ratios to the calibration workload, raw times shown only
    Column("latency_b1_vs_cal", "latency b=1 / calibration", "{:.3f}", "latency", +1),
    Column("tput_time_vs_cal", "tput batch time / calibration", "{:.3f}", "throughput", +1),
    Column("latency_ms_b1", "latency b=1 (ms/img)", "{:.1f}", "info", +1),
    Column("throughput_img_s", "throughput (img/s)", "{:.0f}", "info", -1),
    Column("speedup_b1", "speedup b=1", "{:.1f}x"),
    Column("speedup_tput", "speedup tput", "{:.1f}x"),
    Column("ms_per_img_tput", "ms/img at tput batch", "{:.2f}"),
    # how far each timing can be trusted (bench.trust): ok | noisy | busy | contradiction: ...
    Column("latency_b1_trust", "latency b=1 trust"),
    Column("throughput_trust", "throughput trust"),
    Column("speedup_b1_trust", "speedup b=1 trust"),
    Column("speedup_tput_trust", "speedup tput trust"),
    Column("latency_iqr_b1", "latency b=1 IQR / median", "{:.1%}"),
    Column("throughput_iqr", "throughput IQR / median", "{:.1%}"),
    Column("latency_cpu_share_b1", "latency b=1 CPU share", "{:.2f}"),
    Column("throughput_cpu_share", "throughput CPU share", "{:.2f}"),
    Column("achieved_gflop_s", "achieved GFLOP/s", "{:.1f}"),
    Column("peak_fraction", "% of matmul peak", "{:.1%}"),
    Column("peak_precision", "peak of"),  # fp32 | bf16: the precision the sampler ran in
    # memory
    Column("peak_mem_mb", "peak mem (MB)", "{:.0f}", "memory", +1),
    Column("mem_sampling_mb", "of which sampling (MB)", "{:.0f}"),
    Column("nvml_memory_used_mb", "NVML device mem (MB)", "{:.0f}"),  # GPU runs only
    Column("nvml_power_w", "NVML power (W)", "{:.0f}"),
    # quality, by the extractor that produced the features
    Column("fid_domain", "FID (domain)", "{:.2f}", "fid", +1),
    Column("kid_domain", "KID (domain)", "{:.3f}", "kid", +1),
    Column("is_domain", "IS (domain)", "{:.2f}", "is", -1),
    Column("precision_domain", "precision domain", "{:.3f}"),
    Column("recall_domain", "recall domain", "{:.3f}"),
    Column("n_samples", "n (domain)", "{:.0f}"),
    Column("fid_inception_offline", "FID (inception_offline)", "{:.2f}", "fid", +1),
    Column("kid_inception_offline", "KID inception_offline", "{:.4f}", "kid", +1),
    Column("precision_inception_offline", "precision inception_offline", "{:.3f}"),
    Column("recall_inception_offline", "recall inception_offline", "{:.3f}"),
    Column("fid_clean_inception_offline", "clean-FID inception_offline", "{:.2f}"),
    Column("fid_inception", "FID inception", "{:.2f}", "fid", +1),
    Column("kid_inception", "KID inception", "{:.4f}", "kid", +1),
    Column("is_inception", "IS inception", "{:.2f}", "is", -1),
    Column("precision_inception", "precision inception", "{:.3f}"),
    Column("recall_inception", "recall inception", "{:.3f}"),
    Column("n_samples_inception", "n (inception, dinov2, clip)", "{:.0f}"),
    *[
        Column(f"{m}_{ex}", f"{label} {ex}", fmt, "info", worse)
        for ex in ("dinov2", "clip")
        for m, label, fmt, worse in (
            ("fd", "FD", "{:.2f}", +1),
            ("kid", "KID", "{:.4f}", +1),
            ("precision", "precision", "{:.3f}", 0),
            ("recall", "recall", "{:.3f}", 0),
        )
    ],
    # FID against outside statistics (metrics.reference_stats), by the extractor they are of
    *[Column(f"fid_refstats_{ex}", f"FID vs ref. stats ({ex})", "{:.2f}") for ex in EXTRACTORS],
    # 95% bootstrap intervals over the generated features (metrics.bootstrap): ends, and as text
    *[
        Column(f"{name}_{end}", f"{name} 95% {end}", "{:.4g}")
        for name in INTERVALS
        for end in ("lo", "hi")
    ],
    *[Column(f"{name}_ci", f"{name} 95% CI") for name in INTERVALS],
    Column("fid_domain_boot", "FID bootstrap ± (95%)", "{:.2f}"),  # bench tables: half-width
    Column("jacobi_rel_err", "Jacobi rel. err", "{:.1e}"),
]


def _index(columns: list[Column]) -> dict[str, Column]:
    out: dict[str, Column] = {}
    for c in columns:
        if c.name in out:
            raise ValueError(f"column {c.name} registered twice")
        out[c.name] = c
    return out


COLUMNS: dict[str, Column] = _index(_ALL)

# What `bench compare` judges (and `bench stability` measures), in the order it lists them.
GATED: tuple[Column, ...] = tuple(c for c in COLUMNS.values() if c.gate != "none")


def view(name: str, header: str | None = None, format: str | None = None) -> Column:
    """The registered column ``name``, shown under another header or format where given."""
    if name not in COLUMNS:
        raise KeyError(f"no result column {name!r} in bench.columns.COLUMNS")
    column = COLUMNS[name]
    return replace(column, header=header or column.header, format=format or column.format)


def pick(*names: str) -> list[Column]:
    """The registered columns ``names``, in that order."""
    return [view(n) for n in names]


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a text column ``<metric>_ci`` ("[lo, hi]", in the metric's format) for
    every metric whose bootstrap ends (``_lo``, ``_hi``) it holds."""
    out = table.copy()
    for name in INTERVALS:
        lo, hi = f"{name}_lo", f"{name}_hi"
        if lo in out.columns and hi in out.columns:
            c = COLUMNS[name]
            out[f"{name}_ci"] = [
                "" if (c.cell(a) == "" or c.cell(b) == "") else f"[{c.cell(a)}, {c.cell(b)}]"
                for a, b in zip(out[lo], out[hi], strict=True)
            ]
    return out
