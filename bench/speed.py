"""Wall-clock speed of sampling: a sweep of batch sizes, every sampler interleaved with a fixed
calibration workload at each size, so machine drift cancels in the ratios."""

from __future__ import annotations

import math
import statistics

import torch

from bench.config import BenchConfig
from bench.timing import Adapt, calibration_workload, measure_interleaved
from methods.base import Sampler

CALIBRATION = "calibration workload"


def time_samplers(
    samplers: dict[str, Sampler],
    cfg: BenchConfig,
    device: torch.device,
    baselines: dict[str, str] | None = None,
) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """Wall time per batch over a sweep of batch sizes, all samplers interleaved at each size.

    Returns the main-table columns per sampler (latency at batch 1, throughput at the
    throughput batch) and one sweep row per (sampler, batch), with the speedup over causal
    decoding at the same batch size (``baselines``: each sampler's causal decoder; default
    the one called "tarflow"), and every timed repeat (``repeat_rows``).
    """
    baselines = baselines or {n: "tarflow" for n in samplers}
    ev = cfg.eval
    calibrate = calibration_workload(device)
    batches = sorted(
        {1, ev.throughput_batch, *(b for b in ev.sweep_batches if b <= ev.throughput_batch)}
    )
    sweep, raw = [], []
    threads = torch.get_num_threads()
    adapt = Adapt(
        ev.timing_max_iqr, ev.timing_min_cpu_share, ev.timing_max_s, ev.timing_max_repeats
    )
    for b in batches:
        seeds = [ev.seed + 10_000_000 + i for i in range(b)]  # timing only; never scored
        repeats = ev.latency_repeats if b == 1 else ev.throughput_repeats
        fns = {n: (lambda s=s, sd=seeds, b=b: s.sample(sd, b)) for n, s in samplers.items()}
        fns[CALIBRATION] = calibrate
        timings = measure_interleaved(fns, device, ev.warmup, repeats, adapt, CALIBRATION)
        raw += repeat_rows(timings, b)
        cal = timings.pop(CALIBRATION)
        for n, t in timings.items():
            shares = [x.cpu_share(threads) for x, u in zip(t.rounds, t.used, strict=True) if u]
            sweep.append(
                {
                    "method": n,
                    "batch": b,
                    "median_s": t.median_s,
                    "ms_per_img": t.median_s / b * 1e3,
                    "img_s": b / t.median_s,
                    "spread": t.spread,
                    "iqr": t.iqr,
                    "repeats": t.repeats,
                    "rounds": len(t.rounds),
                    "busy_rounds": len(t.rounds) - sum(t.used),
                    "cpu_share": statistics.median(shares) if None not in shares else math.nan,
                    "trust": t.verdict,
                    "calibration_s": cal.median_s,
                    "time_vs_calibration": t.median_ratio(cal),
                }
            )
    by = {(r["method"], r["batch"]): r for r in sweep}
    for r in sweep:
        base = by.get((baselines.get(r["method"]), r["batch"]))
        r["speedup_vs_tarflow"] = base["median_s"] / r["median_s"] if base else float("nan")
    main = {}
    for n in samplers:
        lat, thr = by[(n, 1)], by[(n, ev.throughput_batch)]
        main[n] = {
            "latency_ms_b1": lat["median_s"] * 1e3,
            "latency_spread_b1": lat["spread"],
            "throughput_batch": ev.throughput_batch,
            "throughput_img_s": thr["img_s"],
            "throughput_spread": thr["spread"],
            "ms_per_img_tput": thr["ms_per_img"],
            # Each time over the calibration workload's, timed interleaved with it: the
            # machine-speed-free numbers `bench compare` gates on.
            "latency_b1_vs_cal": lat["time_vs_calibration"],
            "tput_time_vs_cal": thr["time_vs_calibration"],
            "calibration_ms_b1": lat["calibration_s"] * 1e3,
            # How far each timing can be trusted (bench.trust adds contradictions later).
            "latency_b1_trust": lat["trust"],
            "throughput_trust": thr["trust"],
            "latency_iqr_b1": lat["iqr"],
            "throughput_iqr": thr["iqr"],
            "latency_cpu_share_b1": lat["cpu_share"],
            "throughput_cpu_share": thr["cpu_share"],
        }
    return main, sweep, raw


def repeat_rows(timings: dict, batch: int) -> list[dict]:
    """Every timed repeat of one batch size, busy ones included: the run folder's
    timing_repeats.csv, which ``bench compare`` tests on."""
    threads = torch.get_num_threads()
    return [
        {
            "method": n,
            "batch": batch,
            "round": i,
            "wall_s": x.wall_s,
            "cpu_s": x.cpu_s,
            "cpu_share": x.cpu_share(threads),
            "nivcsw": x.nivcsw,
            "steal_s": x.steal_s,
            "used": u,
        }
        for n, t in timings.items()
        for i, (x, u) in enumerate(zip(t.rounds, t.used, strict=True))
    ]
