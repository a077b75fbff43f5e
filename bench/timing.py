"""Timing and memory the way benchmarks do it: warm-up, device sync, repeats, median and spread."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from methods.base import synchronize


@dataclass(frozen=True)
class Repeat:
    """One timed run: its wall time and what the OS says about the process meanwhile."""

    wall_s: float
    cpu_s: float | None = None  # process CPU time, all threads (None on CUDA: not the work)
    nivcsw: int | None = None  # involuntary context switches of the process
    steal_s: float | None = None  # the machine's steal time (a VM's stolen cycles), all CPUs

    def cpu_share(self, threads: int) -> float | None:
        """CPU time over wall time x threads: ~1 when the process had its cores throughout."""
        if self.cpu_s is None or self.wall_s <= 0:
            return None
        return self.cpu_s / (self.wall_s * threads)


@dataclass(frozen=True)
class Adapt:
    """When a timing is trustworthy, and how hard to try before saying it is not.

    A round (one repeat of every workload, interleaved) is *busy* when the reference workload
    (the calibration, whose arithmetic keeps every thread busy) got less than ``min_cpu_share``
    of its cores: another process had them. A timing is *noisy* when the interquartile range of
    its repeats exceeds ``max_iqr`` of their median. Busy rounds are dropped and more rounds run
    while any timing is noisy or too few quiet rounds are left, until ``max_s`` seconds of extra
    rounds or ``max_repeats`` rounds; what is still noisy or busy is flagged."""

    max_iqr: float = 0.15
    min_cpu_share: float = 0.75
    max_s: float = 30.0
    max_repeats: int = 30


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    times_s: tuple[float, ...] = ()  # the repeats the median is over, in order
    rounds: tuple[Repeat, ...] = ()  # every timed repeat, busy ones included, in order
    used: tuple[bool, ...] = ()  # which of ``rounds`` the median is over (not busy)
    verdict: str = "ok"  # ok | noisy | busy (see Adapt)

    def median_ratio(self, other: Timing) -> float:
        """Median over repeats of self / other, repeat by repeat: for two workloads timed
        interleaved, each pair ran within moments of each other, so a slow spell of the machine
        cancels in the ratio."""
        return statistics.median(a / b for a, b in zip(self.times_s, other.times_s, strict=True))

    @property
    def spread(self) -> float:
        """(max - min) / median over the repeats: the noise of this measurement."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0

    @property
    def iqr(self) -> float:
        """Interquartile range / median of the repeats (0 with fewer than 4)."""
        return relative_iqr(self.times_s)


def relative_iqr(times: tuple[float, ...] | list[float]) -> float:
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    med = statistics.median(times)
    return (q3 - q1) / med if med > 0 else 0.0


_PROC_STAT = Path("/proc/stat")


def _steal_s() -> float | None:
    """Steal time of all CPUs since boot (the 8th field of /proc/stat's cpu line), seconds."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _time_once(fn: Callable[[], object], device: torch.device) -> Repeat:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        synchronize(device)
        return Repeat(start.elapsed_time(end) / 1e3)
    synchronize(device)
    steal0, ru0, cpu0 = _steal_s(), resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    wall = time.perf_counter() - t0
    cpu, ru, steal1 = (
        time.process_time() - cpu0,
        resource.getrusage(resource.RUSAGE_SELF),
        _steal_s(),
    )
    steal = None if steal0 is None or steal1 is None else steal1 - steal0
    return Repeat(wall, cpu, ru.ru_nivcsw - ru0.ru_nivcsw, steal)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times, each bracketed by syncs.

    On CUDA the interval is taken with CUDA events; on CPU with ``time.perf_counter``.
    """
    return measure_interleaved({"fn": fn}, device, warmup, repeats)["fn"]


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int,
    repeats: int,
    adapt: Adapt | None = None,
    reference: str | None = None,
) -> dict[str, Timing]:
    """Time several workloads round-robin: repeat r of every workload runs before repeat r+1 of
    any. A shared machine drifts in speed over seconds; interleaving spreads that drift over all
    workloads instead of charging it to whichever ran during a slow spell, so their ratios hold.

    With ``adapt``, rounds in which the ``reference`` workload was starved of CPU are dropped
    and more rounds run while a timing is noisy (see :class:`Adapt`); every round is kept in
    ``Timing.rounds``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds: list[dict[str, Repeat]] = []

    def one_round() -> None:
        rounds.append({name: _time_once(fn, device) for name, fn in fns.items()})

    for _ in range(repeats):
        one_round()
    threads = torch.get_num_threads()

    def busy(rnd: dict[str, Repeat]) -> bool:
        if adapt is None or reference is None:
            return False
        share = rnd[reference].cpu_share(threads)
        return share is not None and share < adapt.min_cpu_share

    def quiet() -> list[dict[str, Repeat]]:
        return [r for r in rounds if not busy(r)]

    def noisy() -> bool:
        q = quiet()
        return len(q) < repeats or any(
            relative_iqr([r[n].wall_s for r in q]) > adapt.max_iqr for n in fns
        )

    if adapt is not None:
        t_end = time.perf_counter() + adapt.max_s
        while noisy() and len(rounds) < adapt.max_repeats and time.perf_counter() < t_end:
            one_round()
    q = quiet()
    use = q if len(q) >= min(repeats, 2) else rounds  # next to no quiet round: all of them
    used = tuple(any(r is u for u in use) for r in rounds)
    out = {}
    for name in fns:
        t = [r[name].wall_s for r in use]
        verdict = "ok"
        if adapt is not None:
            if len(q) < repeats:  # not as many quiet rounds as asked for, even after more
                verdict = "busy"
            elif relative_iqr(t) > adapt.max_iqr:
                verdict = "noisy"
        out[name] = Timing(
            statistics.median(t),
            min(t),
            max(t),
            len(t),
            tuple(t),
            tuple(r[name] for r in rounds),
            used,
            verdict,
        )
    return out


def op_breakdown(fn: Callable[[], object], groups: dict[str, Callable[[str], bool]]) -> dict:
    """Where the time of one CPU run of ``fn`` goes, in milliseconds, from torch.profiler.

    Each operator's self time (its own, not its callees') goes to the first group whose test
    accepts its name, else to "other operators"; "outside operators" is the wall time no
    operator accounts for (Python, dispatch, the profiler's own cost); "profiled wall" is the
    whole run, which the profiler slows down, so read the groups as shares of it.
    """
    prof = profile(activities=[ProfilerActivity.CPU])
    with _quiet_stderr():  # the profiler's C++ side logs its start (and a missing GPU) there
        prof.start()
    t0 = time.perf_counter()
    fn()
    wall_ms = (time.perf_counter() - t0) * 1e3
    with _quiet_stderr():
        prof.stop()
    out = dict.fromkeys([*groups, "other operators"], 0.0)
    for name, ms in self_times_ms(prof).items():
        group = next((g for g, test in groups.items() if test(name)), "other operators")
        out[group] += ms
    out["outside operators"] = max(0.0, wall_ms - sum(out.values()))
    out["profiled wall"] = wall_ms
    return out


def self_times_ms(prof: profile) -> dict[str, float]:
    """Self time per operator name of a finished profile, from its raw events: an event's
    duration less that of the events directly nested in it on the same thread. This is what
    ``key_averages()`` sums too, but that builds an object per event first: ~6 s for the ~56k
    events of a decode at batch 256, against ~0.3 s here."""
    by_thread: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for e in prof.profiler.kineto_results.events():
        by_thread[e.start_thread_id()].append((e.start_ns(), e.duration_ns(), e.name()))
    own: dict[str, float] = defaultdict(float)
    for events in by_thread.values():
        events.sort(key=lambda e: (e[0], -e[1]))  # an enclosing event before what it encloses
        open_: list[list] = []  # [end, name, duration, nested duration] of enclosing events
        for start, duration, name in events:
            while open_ and open_[-1][0] <= start:
                _, done, d, nested = open_.pop()
                own[done] += (d - nested) / 1e6
            if open_:
                open_[-1][3] += duration
            open_.append([start + duration, name, duration, 0])
        for _, done, d, nested in open_:
            own[done] += (d - nested) / 1e6
    return dict(own)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null (native code's logging, which sys.stderr misses)."""
    if sys.stderr is not None:  # None when Python started without a file descriptor 2
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (closed): nothing to quiet
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def calibration_workload(device: torch.device) -> Callable[[], torch.Tensor]:
    """A fixed piece of work shaped like the samplers' (matrix products at a few hundred rows,
    GELU, layer norm; ~2 GFLOP) that is timed interleaved with them. A timing divided by this
    one's cancels how fast the machine happens to be right now, which is what a regression
    check on a shared machine must compare."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 256, generator=g).to(device)
    w1 = (torch.randn(256, 1024, generator=g) / 16).to(device)
    w2 = (torch.randn(1024, 256, generator=g) / 32).to(device)

    def run() -> torch.Tensor:
        h = x
        for _ in range(8):
            h = torch.nn.functional.layer_norm(h + torch.nn.functional.gelu(h @ w1) @ w2, (256,))
        return h

    return run


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; None where unreadable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class PeakMemory:
    """Filled in by :func:`peak_memory`: the peak and which counter measured it."""

    mb: float | None = None
    kind: str = "n/a"


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Peak memory of the enclosed work.

    CUDA: the caching allocator's peak of allocated bytes. CPU (Linux): the process's peak
    resident set size (VmHWM) after resetting it through /proc/self/clear_refs, so it covers only
    the enclosed work (plus everything already resident: model, torch runtime). Elsewhere the
    lifetime peak from getrusage, marked as such.
    """
    out = PeakMemory()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        synchronize(device)
        out.mb, out.kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocator"
        return
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    yield out
    hwm = proc_status_mb("VmHWM") if reset else None
    if hwm is not None:
        out.mb, out.kind = hwm, "cpu_peak_rss"
    else:
        out.mb, out.kind = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cpu_rss_lifetime",
        )
