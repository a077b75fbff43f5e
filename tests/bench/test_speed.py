"""The timing sweep: every sampler and the calibration workload interleaved at each batch size,
speedups against each sampler's own causal baseline."""

from dataclasses import replace

import torch

from bench.config import BenchConfig
from bench.speed import time_samplers
from tests.bench.test_runner import LinearNoise

CPU = torch.device("cpu")


class Twice(LinearNoise):
    """The same map, evaluated twice per image: strictly more work than LinearNoise."""

    def generate(self, z, y=None):
        super().generate(z, y)
        return super().generate(z, y)


def test_the_sweep_covers_every_batch_and_relates_each_sampler_to_its_baseline():
    cfg = BenchConfig()
    cfg = replace(
        cfg,
        eval=replace(
            cfg.eval, throughput_batch=8, sweep_batches=(1, 4, 16), latency_repeats=3,
            throughput_repeats=2, warmup=1, timing_max_repeats=3,
        ),
    )  # fmt: skip
    samplers = {"base": LinearNoise(CPU), "twice": Twice(CPU)}
    main, sweep, raw = time_samplers(samplers, cfg, CPU, {"base": "base", "twice": "base"})
    # 16 > throughput_batch is left out; 1 and the throughput batch are always in.
    assert sorted({r["batch"] for r in sweep}) == [1, 4, 8]
    assert {(r["method"], r["batch"]) for r in sweep} == {
        (m, b) for m in samplers for b in (1, 4, 8)
    }
    by = {(r["method"], r["batch"]): r for r in sweep}
    for b in (1, 4, 8):
        base, twice = by[("base", b)], by[("twice", b)]
        assert base["speedup_vs_tarflow"] == 1.0  # against itself
        assert twice["speedup_vs_tarflow"] == base["median_s"] / twice["median_s"]
        want = 3 if b == 1 else 2  # at least as asked, at most timing_max_repeats
        assert want <= twice["rounds"] == base["rounds"] <= 3 and base["calibration_s"] > 0
        assert base["img_s"] == b / base["median_s"]
    assert main["twice"]["throughput_batch"] == 8
    assert main["twice"]["latency_ms_b1"] == by[("twice", 1)]["median_s"] * 1e3
    assert main["base"]["tput_time_vs_cal"] == by[("base", 8)]["time_vs_calibration"]
    assert main["base"]["latency_b1_trust"] in ("ok", "noisy", "busy")
    # every round of every workload, the calibration's too, is kept
    assert len(raw) == sum(r["rounds"] for r in sweep) + sum(
        by[("base", b)]["rounds"] for b in (1, 4, 8)
    )
    assert {r["method"] for r in raw} == {"base", "twice", "calibration workload"}
