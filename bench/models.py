"""Train each model once, or load it from a checkpoint cache keyed by the config that made it."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bench.config import BenchConfig, ClassifierConfig, ConfigError, config_hash
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
    n = cfg.tarflow.num_classes
    return ReverseModel(cfg.biflow, flow.tokens, flow.dim, cfg.tarflow.blocks, n)


def feature_classifier_config(cfg: BenchConfig) -> ClassifierConfig:
    """The network of BiFlow's feature loss: a CNN trained like the domain classifier but
    narrower and from another seed, so the loss never optimises the network that scores FID."""
    c = cfg.classifier
    return replace(c, width=max(8, c.width * 2 // 3), seed=c.seed + 1)


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

    def get(self, name: str, cfg: BenchConfig | None = None) -> nn.Module:
        """The trained model ``name`` ("flow" or "reverse") of ``cfg`` (default: the run's); a
        model several configs share is trained or loaded once."""
        cfg = cfg or self.cfg
        key = self._model_key(name, cfg)
        if key not in self._models:
            build = {"flow": self._flow, "reverse": self._reverse}[name]
            self._models[key] = build(cfg, key)
        return self._models[key]

    def loaded(self, name: str, cfg: BenchConfig | None = None) -> bool:
        """Whether this run has already trained or loaded the model ``name`` of ``cfg``."""
        return self._model_key(name, cfg or self.cfg) in self._models

    def _model_key(self, name: str, cfg: BenchConfig) -> str:
        return self._flow_key(cfg) if name == "flow" else self._reverse_key(cfg)

    def _shape(self) -> dict[str, int]:
        return {"channels": self.splits.channels, "image_size": self.splits.image_size}

    def _key(self, kind: str, *parts: object) -> str:
        data = asdict(self.cfg.data)
        # The expected shape only checks the data (the actual shape is part of the key), so
        # configs that state it share checkpoints with those that do not.
        for check_only in ("image_size", "channels"):
            data.pop(check_only)
        parts = tuple(checkpoint.described(p) if is_dataclass(p) else p for p in parts)
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
        self.records[key] = {
            "kind": kind,
            "source": source,
            "checkpoint": str(path),
            "params": sum(p.numel() for p in model.parameters()),
            **{k: v for k, v in meta.items() if k != "loss_history"},
            "loss_history": meta.get("loss_history", [])[-20:],
        }
        return model.to(self.device).eval().requires_grad_(False)

    def _labels(self, cfg: BenchConfig) -> torch.Tensor | None:
        """Training labels for class-conditional models (checked against tarflow.num_classes)."""
        n = cfg.tarflow.num_classes
        if not n:
            return None
        labels = self.splits.train_labels
        if labels is None:
            raise DataError(
                "tarflow.num_classes > 0 needs class labels: put the images of each class in a "
                "subfolder of data.root"
            )
        found = int(labels.max()) + 1
        if found != n:
            raise ConfigError(
                f"tarflow.num_classes: got {n}; allowed: 0 or {found} (the classes of the data)"
            )
        return labels

    def _flow(self, cfg: BenchConfig, key: str) -> TarFlow:
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
                self._labels(cfg),
            )

        return self._obtain("tarflow", key, flow, spec, fit)

    def _flow_key(self, cfg: BenchConfig | None = None) -> str:
        cfg = cfg or self.cfg
        return self._key("tarflow", cfg.tarflow, cfg.tarflow_train)

    def _reverse_key(self, cfg: BenchConfig) -> str:
        parts = [self._flow_key(cfg), cfg.biflow, cfg.biflow_train]
        if cfg.biflow.feature_weight:
            parts.append(feature_classifier_config(cfg))
        return self._key("biflow", *parts)

    def _reverse(self, cfg: BenchConfig, key: str) -> ReverseModel:
        flow = self.get("flow", cfg)
        g = build_reverse(cfg, flow)
        spec = checkpoint.spec_of(
            cfg.biflow,
            tokens=flow.tokens,
            dim=flow.dim,
            flow_blocks=cfg.tarflow.blocks,
            flow=self._flow_key(cfg),
            **({"num_classes": cfg.tarflow.num_classes} if cfg.tarflow.num_classes else {}),
        )

        def fit(state: Path) -> dict:
            g.to(self.device)
            features = self.feature_net(cfg) if cfg.biflow.feature_weight else None
            return train(
                g,
                biflow_objective(flow, features),
                self.splits.train,
                cfg.biflow_train,
                "biflow reverse",
                self.device,
                state,
                cfg.save_every,
                self._labels(cfg),
            )

        return self._obtain("biflow", key, g, spec, fit)

    def feature_net(self, cfg: BenchConfig) -> nn.Module:
        """The frozen feature network of BiFlow's feature loss: images in [-1, 1] -> features
        (see feature_classifier_config); trained on the training split or loaded."""
        from bench.metrics import DomainFeatureExtractor

        fcfg = feature_classifier_config(cfg)
        key = self._key("featurenet", fcfg)
        if key not in self._models:
            path, source, meta = self._classifier_file(key, fcfg, "feature network")
            net = DomainFeatureExtractor("feature-net", ["logits_unbiased"], path).net
            self.records[key] = {
                "kind": "feature_net",
                "source": source,
                "checkpoint": str(path),
                "width": fcfg.width,
                "seed": fcfg.seed,
                "role": "feature loss of BiFlow variants (never scores)",
                **meta,
            }
            self._models[key] = net.body.to(self.device).eval().requires_grad_(False)
        return self._models[key]

    def classifier(self) -> tuple[Path, float]:
        """Path of the domain classifier (trained or cached) and its held-out accuracy."""
        # Imported here: bench.metrics pulls in torch-fidelity (and torchvision's models), ~2.5 s
        # that the memory probes, which never need the classifier, should not pay.
        from bench.metrics import classifier_accuracy

        s, cfg = self.splits, self.cfg.classifier
        path, source, meta = self._classifier_file(
            self._key("domain", cfg), cfg, "domain classifier"
        )
        acc = classifier_accuracy(path, s.holdout, s.holdout_labels)
        self.records["domain_classifier"] = {
            "kind": "domain_classifier",
            "source": source,
            "checkpoint": str(path),
            "heldout_accuracy": acc,
            "heldout_images": len(s.holdout),
            **meta,
        }
        return path, acc

    def _classifier_file(
        self, key: str, cfg: ClassifierConfig, desc: str
    ) -> tuple[Path, str, dict]:
        """A CNN classifier of the training split (``desc``: the domain feature extractor or
        the feature-loss network), loaded from the cache or trained: its path, "cache" or
        "trained", and what training did."""
        from bench.metrics import train_domain_classifier

        s = self.splits
        if s.train_labels is None:
            raise DataError(
                f"the {desc} needs class labels: put the images of each class in a subfolder "
                "of data.root"
            )
        path = self.cache_dir / f"{key}.pt"
        if dist.broadcast(path.exists() and self._may_load(path)):
            checkpoint.load_payload(path, "domain_classifier", key=path.stem)
            return path, "cache", {}
        # A small network: rank 0 trains it, the other ranks read its file.
        meta = dist.broadcast(
            train_domain_classifier(s.train, s.train_labels, cfg, path, desc)
            if dist.is_main()
            else None
        )
        return path, "trained", meta
