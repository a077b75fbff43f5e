"""Likelihood of the run's flow on held-out images, how well a reverse model inverts it, and
the fairness check of the causal baseline (bench.fairness)."""

from __future__ import annotations

import torch

import methods
from bench import data
from bench.config import BenchConfig
from bench.fairness import decode_vs_forward
from bench.models import ModelStore
from bench.variants import Entry
from methods.biflow_loss import inversion_error
from methods.tarflow import bits_per_dim


def likelihood(
    todo: list[Entry], store: ModelStore, splits: data.Splits, cfg: BenchConfig, device
) -> dict:
    """Of the first entry's flow (and of the first reverse model the run already has)."""
    out: dict = {}
    uses = [e for e in todo if "flow" in methods.get(e.method).needs]
    if not uses:
        return out
    c = uses[0].cfg
    flow = store.get("flow", c)
    g = torch.Generator().manual_seed(cfg.eval.seed)
    held = splits.holdout.float().to(device) / 127.5 - 1
    y = splits.holdout_labels.to(device) if c.tarflow.num_classes else None
    out["likelihood_of"] = uses[0].key
    out["bits_per_dim_heldout"] = bits_per_dim(flow, held, g, y)
    out["decode_vs_forward"] = decode_vs_forward(flow, device, cfg)
    reverse = [e for e in uses if "reverse" in methods.get(e.method).needs]
    if reverse and store.loaded("reverse", reverse[0].cfg):
        rc = reverse[0].cfg
        g_model, its_flow = store.get("reverse", rc), store.get("flow", rc)
        y = splits.holdout_labels.to(device) if rc.tarflow.num_classes else None
        out["biflow_inversion"] = {
            "of": reverse[0].key,
            **inversion_error(g_model, its_flow, held, g, y),
        }
    return out
