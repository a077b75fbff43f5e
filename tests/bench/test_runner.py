"""The runner loops over what is registered: a sampler defined here, in a test file, runs through
the whole pipeline (training of what it needs, sampling, scoring, timing, FLOPs, report, tables)
without any change to bench/. docs/adding-a-sampler.md walks through the same example."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import methods
from bench.cli import main
from bench.runner import STAGES
from methods.base import DEFAULT_SAMPLING, Factors, Sampler, SamplingConfig
from methods.registry import register, unregister

ROOT = Path(__file__).resolve().parents[2]

NOISE, PIXELS = 16, 28 * 28  # a 16-d prior mapped to a 28x28 grey image


class LinearNoise(Sampler):
    """x = tanh(A z + c): a fixed random linear map of the noise, one network evaluation."""

    label = "Linear map of the noise (a test sampler)"

    def __init__(self, device: torch.device, sampling: SamplingConfig = DEFAULT_SAMPLING) -> None:
        torch.manual_seed(0)
        self.net = nn.Linear(NOISE, PIXELS).to(device).eval().requires_grad_(False)
        super().__init__(device, sampling)

    @classmethod
    def from_models(cls, models, device, sampling=DEFAULT_SAMPLING, options=None):
        return cls(device, sampling)

    def networks(self) -> list[nn.Module]:
        return [self.net]

    def noise_shape(self) -> tuple[int, ...]:
        return (NOISE,)

    def factors(self) -> Factors:
        return Factors(reverse="linear map")

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.net(z)).view(-1, 1, 28, 28)


@pytest.fixture
def linear_noise():
    register("linear_noise")(LinearNoise)
    yield "linear_noise"
    unregister("linear_noise")


@pytest.mark.slow
def test_a_sampler_defined_in_a_test_runs_through_the_whole_pipeline(tmp_path, linear_noise):
    out = tmp_path / "run"
    args = ["run", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)]
    for s in (
        f"methods=[{linear_noise}]",
        f"cache_dir={tmp_path / 'cache'}",
        f"metrics.stats_cache={tmp_path / 'stats'}",
        "metrics.extractors=[domain]",
        "eval.memory=false",  # the memory probe is a fresh process, which has no test sampler
    ):
        args += ["--set", s]
    assert main(args) == 0
    rows = pd.read_csv(out / "results.csv").set_index("method")
    row = rows.loc[linear_noise]
    # One network evaluation of a 16 -> 784 linear layer: 2 x 16 x 784 FLOPs (tanh is free).
    assert row["nfe"] == 1 and row["sequential_steps"] == 1
    assert row["flops_per_img"] == 2 * NOISE * PIXELS
    assert row["params"] == NOISE * PIXELS + PIXELS
    assert row["reverse"] == "linear map"
    assert row["fid_domain"] > 0 and row["latency_ms_b1"] > 0
    assert (out / f"samples_{linear_noise}.png").is_file()
    assert LinearNoise.label in (out / "report.md").read_text()
    assert main(["tables", str(out)]) == 0
    main_table = pd.read_csv(out / "tables" / "main.csv")
    assert linear_noise in main_table.to_string()
    assert linear_noise in (out / "tables" / "tables.md").read_text()


def test_every_stage_has_a_unique_name_and_part():
    names = [s.name for s in STAGES]
    parts = [s.part for s in STAGES if s.part]
    assert len(set(names)) == len(names) and len(set(parts)) == len(parts)
    assert methods.get("tarflow").label != "tarflow"  # a declared label, not the fallback
