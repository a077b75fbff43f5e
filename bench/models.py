"""Train each model once, or load it from a checkpoint cache keyed by the config that made it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from bench.config import BenchConfig, config_hash
from bench.data import DataError, Splits
from methods import checkpoint, dist
from methods.biflow import ReverseModel, biflow_objective
from methods.tarflow import TarFlow, nll_objective
from methods.training import train

# Bump when a change to the code makes old checkpoints of the same config mean something else.
CODE_VERSION = 1


def build_flow(cfg: BenchConfig, channels: int, image_size: int) -> TarFlow:
    """The configured TarFlow, initialised as its training starts (``tarflow_train.seed``)."""
    torch.manual_seed(cfg.tarflow_train.seed)
    return TarFlow(cfg.tarflow, channels, image_size)


def build_reverse(cfg: BenchConfig, flow: TarFlow) -> ReverseModel:
    """BiFlow's reverse model for ``flow``, initialised as its training starts."""
    torch.manual_seed(cfg.biflow_train.seed)
    return ReverseModel(cfg.biflow, flow.tokens, flow.dim, cfg.tarflow.blocks)


class ModelStore:
    """Lazily provides the trained models a run needs; records how each was obtained."""

    def __init__(
        self,
        cfg: BenchConfig,
        splits: Splits,
        cache_dir: Path,
        device: torch.device,
        retrain: bool = False,
        train_allowed: bool = True,
        made_by_this_run: frozenset[str] = frozenset(),
    ) -> None:
        self.cfg, self.splits, self.cache_dir = cfg, splits, cache_dir
        self.device, self.retrain, self.train_allowed = device, retrain, train_allowed
        # Checkpoints an interrupted attempt of this run already (re)trained: a resumed
        # --retrain run loads them instead of training them a second time.
        self.made_by_this_run = made_by_this_run
        self.records: dict[str, dict] = {}
        self._models: dict[str, nn.Module] = {}

    def get(self, name: str) -> nn.Module:
        if name not in self._models:
            self._models[name] = {"flow": self._flow, "reverse": self._reverse}[name]()
        return self._models[name]

    def loaded(self, name: str) -> bool:
        """Whether this run has already trained or loaded the model ``name``."""
        return name in self._models

    def _shape(self) -> dict[str, int]:
        return {"channels": self.splits.channels, "image_size": self.splits.image_size}

    def _key(self, kind: str, *parts: object) -> str:
        data = asdict(self.cfg.data)
        # The expected shape only checks the data (the actual shape is part of the key), so
        # configs that state it share checkpoints with those that do not.
        for check_only in ("image_size", "channels"):
            data.pop(check_only)
        return f"{kind}-{config_hash(kind, CODE_VERSION, data, self._shape(), *parts)}"

    def _may_load(self, path: Path) -> bool:
        return not self.retrain or str(path) in self.made_by_this_run

    def _state_path(self, key: str) -> Path:
        """Where training of ``key`` keeps its resumable state until the checkpoint is saved."""
        return self.cache_dir / f"{key}.train-state.pt"

    def _obtain(self, kind: str, key: str, model: nn.Module, spec: dict, fit) -> nn.Module:
        path = self.cache_dir / f"{key}.pt"
        state = self._state_path(key)
        # Under torchrun rank 0 decides; every rank then trains (DDP) or loads alike.
        if dist.broadcast(path.exists() and self._may_load(path)):
            meta = checkpoint.load(path, kind, spec, model, key=key)
            source = "cache"
        elif not self.train_allowed:
            raise FileNotFoundError(f"{path}: no cached {kind} checkpoint, and training is off")
        else:
            meta = fit(state)
            if dist.is_main():
                checkpoint.save(path, kind, spec, model, meta, key=key)
                state.unlink(missing_ok=True)
            source = "trained"
        self.records[kind] = {
            "source": source,
            "checkpoint": str(path),
            "params": sum(p.numel() for p in model.parameters()),
            **{k: v for k, v in meta.items() if k != "loss_history"},
            "loss_history": meta.get("loss_history", [])[-20:],
        }
        return model.to(self.device).eval().requires_grad_(False)

    def _flow(self) -> TarFlow:
        cfg = self.cfg
        key = self._flow_key()
        flow = build_flow(cfg, self.splits.channels, self.splits.image_size)
        spec = checkpoint.spec_of(cfg.tarflow, **self._shape())

        def fit(state: Path) -> dict:
            flow.to(self.device)
            return train(
                flow,
                nll_objective(cfg.tarflow.noise_std),
                self.splits.train,
                cfg.tarflow_train,
                "tarflow",
                self.device,
                state,
                cfg.save_every,
            )

        return self._obtain("tarflow", key, flow, spec, fit)

    def _flow_key(self) -> str:
        return self._key("tarflow", self.cfg.tarflow, self.cfg.tarflow_train)

    def _reverse(self) -> ReverseModel:
        cfg = self.cfg
        flow = self.get("flow")
        key = self._key("biflow", self._flow_key(), cfg.biflow, cfg.biflow_train)
        g = build_reverse(cfg, flow)
        spec = checkpoint.spec_of(
            cfg.biflow,
            tokens=flow.tokens,
            dim=flow.dim,
            flow_blocks=cfg.tarflow.blocks,
            flow=self._flow_key(),
        )

        def fit(state: Path) -> dict:
            g.to(self.device)
            return train(
                g,
                biflow_objective(flow),
                self.splits.train,
                cfg.biflow_train,
                "biflow reverse",
                self.device,
                state,
                cfg.save_every,
            )

        return self._obtain("biflow", key, g, spec, fit)

    def classifier(self) -> tuple[Path, float]:
        """Path of the domain classifier (trained or cached) and its held-out accuracy."""
        # Imported here: bench.metrics pulls in torch-fidelity (and torchvision's models), ~2.5 s
        # that the memory probes, which never need the classifier, should not pay.
        from bench.metrics import classifier_accuracy, train_domain_classifier

        s, cfg = self.splits, self.cfg.classifier
        if s.train_labels is None:
            raise DataError(
                "the domain feature extractor needs class labels: put the images of each class "
                "in a subfolder of data.root"
            )
        path = self.cache_dir / f"{self._key('domain', cfg)}.pt"
        if dist.broadcast(path.exists() and self._may_load(path)):
            source, meta = "cache", {}
            checkpoint.load_payload(path, "domain_classifier", key=path.stem)
        else:  # a small evaluation network: rank 0 trains it, the other ranks read its file
            source = "trained"
            meta = dist.broadcast(
                train_domain_classifier(s.train, s.train_labels, cfg, path)
                if dist.is_main()
                else None
            )
        acc = classifier_accuracy(path, s.holdout, s.holdout_labels)
        self.records["domain_classifier"] = {
            "source": source,
            "checkpoint": str(path),
            "heldout_accuracy": acc,
            "heldout_images": len(s.holdout),
            **meta,
        }
        return path, acc
