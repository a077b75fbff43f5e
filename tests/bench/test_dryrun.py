"""``python -m bench run CONFIG --dry-run`` (bench/dryrun.py), through ``bench.cli.main``.

Every dry run here goes through the CLI in-process; the structured result it printed is captured
by wrapping ``bench.dryrun.dry_run``. They run with ``--set threads=1`` (a second process on the
same 2 cores makes torch's 2 threads many times slower). The paper-scale and GPU configs run with
``FULL_SIZE_BUDGET_S = 0``: every step runs on the dry run's copy (the configured layer shapes,
1 block of 1 layer), never also at full size, and the 460M TarFlow config samples with
``tarflow`` only (``--set methods=[tarflow]``; its ``tarflow_score`` repeats the same decode).
Parameter counts and forward-pass FLOPs are always of the full-size models, so the published-size
check is the real one; the smoke config runs every step at full size too.
"""

from pathlib import Path

import pytest
import torch

import methods
from bench import dryrun
from bench.cli import main
from bench.config import load_config
from bench.cost import sampler_flops
from methods.biflow import ReverseModel
from methods.tarflow import TarFlow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SMOKE = CONFIGS / "smoke.yaml"


@pytest.fixture
def dry(monkeypatch, capsys):
    """``dry(config, *sets, budget=None) -> (exit code, DryRun or None, stdout, stderr)``."""
    results: list[dryrun.DryRun] = []
    real = dryrun.dry_run

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(dryrun, "dry_run", spy)
    threads = torch.get_num_threads()

    def call(config: Path, *sets: str, budget: float | None = None):
        if budget is not None:
            monkeypatch.setattr(dryrun, "FULL_SIZE_BUDGET_S", budget)
        args = ["run", str(config), "--dry-run", "--set", "threads=1"]
        for s in sets:
            args += ["--set", s]
        code = main(args)
        out, err = capsys.readouterr()
        return code, results[-1] if results else None, out, err

    yield call
    torch.set_num_threads(threads)


def test_smoke_runs_every_step_at_full_size_and_writes_nothing(dry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run would create results/ here
    cache = tmp_path / "cache"
    code, r, out, _ = dry(SMOKE, f"cache_dir={cache}", f"metrics.stats_cache={tmp_path / 's'}")
    assert code == 0, out
    assert list(tmp_path.iterdir()) == []
    assert [m.name for m in r.models] == ["flow", "reverse"]
    assert all(m.published is None for m in r.models)
    steps = {(s.kind, s.name): s for s in r.steps}
    assert list(steps) == [
        ("train", "flow"),
        ("train", "reverse"),
        ("sample", "tarflow"),
        ("sample", "tarflow_score"),
        ("sample", "biflow"),
    ]
    assert all(s.full_s is not None for s in r.steps)  # tiny models: all of them at full size
    tokens = r.tokens
    assert steps["sample", "tarflow"].nfe == 2 * (tokens - 1)  # smoke: 2 blocks
    assert steps["sample", "biflow"].nfe == 1
    assert "synthetic uint8 images of this shape" in out and out.rstrip().endswith("s)")


def test_scaled_flops_match_a_full_size_count(dry):
    """The FLOPs the dry run scales from its 1-block, 1-layer copy against an exact count of the
    full-size samplers (3 blocks of 2 layers: flipped blocks and depth both scaled)."""
    sets = ("tarflow.blocks=3", "tarflow.depth=2", "biflow.depth=2")
    code, r, out, _ = dry(SMOKE, *sets, budget=0)
    assert code == 0, out
    cfg = load_config(SMOKE, list(sets))
    flow = TarFlow(cfg.tarflow, 1, 28).requires_grad_(False)
    g = ReverseModel(cfg.biflow, flow.tokens, flow.dim, cfg.tarflow.blocks).requires_grad_(False)
    cpu = torch.device("cpu")
    for step in r.steps:
        if step.kind == "sample":
            s = methods.get(step.name).from_models({"flow": flow, "reverse": g}, cpu)
            exact = sampler_flops(s, [0, 1])
            assert step.flops_per_img == pytest.approx(exact, rel=0.01), step.name
            assert step.params == s.num_params()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "sets", "expected"),
    [
        ("tarflow_imagenet64_paper.yaml", ("methods=[tarflow]",), {"flow": 460_155_072}),
        ("biflow_b2_imagenet64.yaml", (), {"flow": 115_882_752, "reverse": 127_854_384}),
    ],
)
def test_paper_scale_configs_are_their_published_sizes(dry, config, sets, expected):
    code, r, out, err = dry(CONFIGS / config, *sets, budget=0)
    assert code == 0, err
    assert {m.name: m.params for m in r.models} == expected
    for m in r.models:
        assert m.published is not None and abs(m.difference) <= 0.05, m
        assert f"{m.published.params / 1e6:.1f}M" in out and f"{m.difference:+.1%}" in out
    assert r.shape == (3, 64, 64) and "the dry run does not read it" in out
    assert [s.kind for s in r.steps].count("train") == len(expected)
    nfe = {"tarflow": r.tokens - 1, "tarflow_score": r.tokens, "biflow": 1}  # the copy: 1 block
    for s in r.steps:
        assert s.copy_s is not None and s.full_s is None and s.full_estimate_s > 0
        if s.kind == "sample":
            assert s.flops_per_img > 0 and s.nfe == nfe[s.name]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar10.yaml", "imagenet64.yaml"])
def test_gpu_sized_configs(dry, config):
    code, r, out, err = dry(CONFIGS / config, budget=0)
    assert code == 0, err
    assert len(r.steps) == 5 and all(m.published is None for m in r.models)
    assert r.shape == ((3, 32, 32) if config == "cifar10.yaml" else (3, 64, 64))


def test_a_count_beyond_5_percent_fails_before_any_step(dry):
    code, r, out, err = dry(CONFIGS / "tarflow_imagenet64_paper.yaml", "tarflow.depth=7")
    assert code == 1 and r.steps == []
    assert "parameters, -12.3% from the published 460.1M (allowed: within 5%)" in err
    assert "FAILED" in out


@pytest.mark.parametrize(
    ("sets", "extra", "message"),
    [
        ((), ["--out", "somewhere"], "--dry-run writes and keeps nothing: drop --out"),
        ((), ["--retrain"], "drop --retrain"),
        (("data.image_size=0",), [], "data.image_size, data.channels: got 0, 3; the dry run"),
        (("tarflow.patch_size=5",), [], "tarflow.patch_size: got 5; allowed: a divisor of"),
        (("methods=[nope]",), [], "unknown method 'nope'"),
    ],
)
def test_bad_input_is_one_line(capsys, sets, extra, message):
    args = ["run", str(CONFIGS / "cifar10.yaml"), "--dry-run", *extra]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
