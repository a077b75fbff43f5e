"""The sampling switches of issue 6 at work in the samplers: static-shape decoding, torch.compile,
bf16 autocast, a native kernel that cannot run (SamplingConfig itself: test_base.py)."""

from pathlib import Path

import pytest
import torch

from methods.base import SamplingConfig
from methods.biflow import BiFlowSampler
from methods.tarflow import TarFlowSampler

CPU = torch.device("cpu")


def test_static_shape_decoding_equals_the_growing_cache(trained_flow):
    """The masked full-length cache (what a compiled step needs) decodes the same images."""
    z = torch.randn(
        4, trained_flow.tokens, trained_flow.dim, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(
        trained_flow.reverse(z, static=True), trained_flow.reverse(z), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_compiled_samplers_draw_the_same_images_and_count_the_same_nfe(
    trained_flow, trained_reverse
):
    """torch.compile of the decoding step (TarFlow) and of G (BiFlow): compiled once per shape
    class (batch 1, then any larger batch), the NFE hooks still count every evaluation. (The
    score-denoised sampler compiles the same decoding step.)"""
    import copy

    flow, reverse = copy.deepcopy(trained_flow), copy.deepcopy(trained_reverse)
    compiled = SamplingConfig(compile=True)
    seeds = [0, 1, 2]
    for eager, fast in (
        (TarFlowSampler(trained_flow, CPU), TarFlowSampler(flow, CPU, compiled)),
        (
            BiFlowSampler(trained_reverse, trained_flow, CPU),
            BiFlowSampler(reverse, flow, CPU, compiled),
        ),
    ):
        a, b = eager.sample(seeds, 3), fast.sample(seeds, 3)
        assert fast.sample(seeds[:1], 1).nfe == a.nfe  # batch 1 compiles its own graph
        assert a.nfe == b.nfe and a.sequential_steps == b.sequential_steps
        diff = (a.images.int() - b.images.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, eager.name


def test_bf16_autocast_samples_close_to_fp32_with_the_same_nfe(trained_flow, trained_reverse):
    bf16 = SamplingConfig(precision="bf16")
    seeds = [0, 1]
    for fp32, low in (
        (TarFlowSampler(trained_flow, CPU), TarFlowSampler(trained_flow, CPU, bf16)),
        (
            BiFlowSampler(trained_reverse, trained_flow, CPU),
            BiFlowSampler(trained_reverse, trained_flow, CPU, bf16),
        ),
    ):
        a, b = fp32.sample(seeds, 2), low.sample(seeds, 2)
        assert a.nfe == b.nfe
        assert b.n_nonfinite == 0
        # bf16 keeps 8 bits of mantissa: images move by a few grey levels, not more.
        assert (a.images.float() - b.images.float()).abs().mean() < 8, fp32.name


def test_a_native_decode_kernel_that_cannot_run_is_refused_before_any_training():
    from bench.config import ConfigError, load_config
    from bench.variants import check_choices, entries

    smoke = Path(__file__).parents[2] / "configs" / "smoke.yaml"
    cfg = load_config(smoke, ["sampling.decode_kernel=native", "sampling.precision=bf16"])
    with pytest.raises(ConfigError, match="decode_kernel: native cannot run: it computes in float"):
        check_choices(entries(cfg))
