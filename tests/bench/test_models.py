"""The checkpoint cache: bench.yaml must find the shipped checkpoints (a fresh clone's default run
loads them instead of training for 20 minutes)."""

from pathlib import Path

import torch

from bench.config import load_config
from bench.data import load
from bench.models import ModelStore

ROOT = Path(__file__).resolve().parents[2]


def test_bench_yaml_loads_the_shipped_checkpoints():
    cfg = load_config(ROOT / "bench.yaml")
    splits = load(cfg.data, ROOT)
    store = ModelStore(cfg, splits, ROOT / cfg.cache_dir, torch.device("cpu"), train_allowed=False)
    store.get("reverse")  # and the flow it was trained against
    _, accuracy = store.classifier()
    assert {r["source"] for r in store.records.values()} == {"cache"}
    assert sorted(r["kind"] for r in store.records.values()) == [
        "biflow",
        "domain_classifier",
        "tarflow",
    ]
    assert accuracy > 0.95
