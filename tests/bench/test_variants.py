"""Entries of a run: methods and variants, each replicate with its own seeds; the choices a
sampler cannot honour are refused before any training."""

from pathlib import Path

import pytest

from bench.config import ConfigError, load_config
from bench.variants import causal_baseline, check_choices, entries, replicate_config

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
V = "variants:\n  - name: x\n    method: biflow\n"


def test_variants_expand_into_entries_with_their_own_config_and_seeds(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(V + "    overrides: {biflow.align_weight: 0.0}\nreplicates: 2\n")
    cfg = load_config(path, ["methods=[tarflow]"])
    got = entries(cfg)
    assert [e.key for e in got] == ["tarflow.r0", "x.r0", "tarflow.r1", "x.r1"]
    assert [e.variant for e in got] == ["default", "x", "default", "x"]
    x0, x1 = got[1].cfg, got[3].cfg
    assert x0.biflow.align_weight == x1.biflow.align_weight == 0.0
    assert got[0].cfg.biflow.align_weight == 1.0  # the override is the variant's alone
    assert x1.eval.seed == x0.eval.seed + cfg.eval.num_samples  # disjoint scored seeds
    # Against causal decoding of the same replicate.
    assert causal_baseline(got[3], got) == "tarflow.r1"


def test_a_replicate_shifts_every_model_kinds_training_seed():
    cfg = load_config(SMOKE)
    r2 = replicate_config(cfg, 2)
    assert r2.tarflow_train.seed == cfg.tarflow_train.seed + 2
    assert r2.biflow_train.seed == cfg.biflow_train.seed + 2
    assert r2.tarflow == cfg.tarflow and replicate_config(cfg, 0) is cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sampling.guidance=1.0"], "tarflow: sampling.guidance: got 1.0; classifier-free"),
        (["methods=[biflow]", "sampling.guidance=1.0"], "biflow: sampling.guidance: got 1.0"),
        # BiFlow too: the run's fairness check decodes its flow with the run's kernel.
        (
            ["methods=[biflow]", "sampling.decode_kernel=native", "sampling.precision=bf16"],
            "biflow: sampling.decode_kernel: native cannot run: it computes in float32",
        ),
        (
            ["methods=[biflow]", "biflow.feature_weight=1", "biflow.feature_net=lpips"],
            "biflow: biflow.feature_weights: got ''; feature_net lpips needs a folder",
        ),
        (
            ["methods=[tarflow_jacobi]", "tarflow.num_classes=10", "sampling.guidance=1"]
            + ["sampling.guidance_schedule=linear"],
            "tarflow_jacobi: sampling.guidance_schedule: got 'linear'; Jacobi decoding",
        ),
        (
            ["methods=[biflow]", "tarflow.num_classes=10", "biflow.label_drop=0"]
            + ["sampling.guidance=1"],
            "biflow: sampling.guidance: got 1.0; inference-time guidance of G needs",
        ),
    ],
)
def test_choices_a_sampler_cannot_honour_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_choices(entries(load_config(SMOKE, overrides)))


def test_honoured_choices_pass():
    todo = entries(load_config(SMOKE))
    assert [e.key for e in todo] == ["tarflow", "tarflow_score", "biflow"]
    assert check_choices(todo) is None  # no refusal
