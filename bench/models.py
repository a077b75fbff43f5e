"""Train each model once, or load it from a checkpoint cache keyed by the config that made it.

Every kind of network is declared in its method's module (:mod:`methods.kinds`); the store only
loops over what a sampler needs."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from torch import nn

from bench.config import BenchConfig, ClassifierConfig, ConfigError
from bench.config_file import config_hash
from bench.data import DataError, Splits
from methods import checkpoint, dist
from methods.base import Sampler
from methods.kinds import ModelKind, kind
from methods.perceptual import feature_classifier_config
from methods.training import snapshot_steps, train

# Bump when a change to the code makes old checkpoints of the same config mean something else.
CODE_VERSION = 1


def build(k: ModelKind, cfg: BenchConfig, shape: tuple[int, int], deps: dict) -> nn.Module:
    """The model of kind ``k`` initialised as its training starts (its training seed)."""
    torch.manual_seed(k.train_of(cfg).seed)
    return k.build(cfg, shape, deps)


def build_sampler(cls: type[Sampler], models: dict, device: torch.device, cfg: BenchConfig):
    """The sampler ``cls`` of ``cfg`` on ``device``, from the trained models it needs."""
    options = getattr(cfg, cls.options[0]) if cls.options else None
    sampling = cfg.sampling.for_device(device)
    return cls.from_models({n: models[n] for n in cls.needs}, device, sampling, options)


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
        self._meta: dict[str, dict] = {}  # what training did, by cache key

    def get(self, name: str, cfg: BenchConfig | None = None) -> nn.Module:
        """The trained model of kind ``name`` ("flow", "reverse", ...) of ``cfg`` (default: the
        run's), after the models it needs; a model several configs share is obtained once."""
        cfg = cfg or self.cfg
        key = self.key(name, cfg)
        if key not in self._models:
            self._models[key] = self._obtain(kind(name), cfg, key)
        return self._models[key]

    def loaded(self, name: str, cfg: BenchConfig | None = None) -> bool:
        """Whether this run has already trained or loaded the model ``name`` of ``cfg``."""
        return self.key(name, cfg or self.cfg) in self._models

    def key(self, name: str, cfg: BenchConfig) -> str:
        """Cache key of the model ``name`` of ``cfg``: its kind, the data, the keys of the
        models it needs, its sections and what else its weights depend on."""
        k = kind(name)
        parts = [self.key(n, cfg) for n in k.needs]
        parts += [k.section_of(cfg), k.train_of(cfg), *k.key_extra(cfg)]
        return self._key(k.checkpoint, *parts)

    def _shape(self) -> dict[str, int]:
        return {"channels": self.splits.channels, "image_size": self.splits.image_size}

    def _key(self, kind_name: str, *parts: object) -> str:
        data = asdict(self.cfg.data)
        # The expected shape only checks the data (the actual shape is part of the key), so
        # configs that state it share checkpoints with those that do not.
        for check_only in ("image_size", "channels"):
            data.pop(check_only)
        parts = tuple(checkpoint.described(p) if is_dataclass(p) else p for p in parts)
        return f"{kind_name}-{config_hash(kind_name, CODE_VERSION, data, self._shape(), *parts)}"

    def _may_load(self, path: Path) -> bool:
        return not self.retrain or str(path) in self.made_by_this_run

    def _obtain(self, k: ModelKind, cfg: BenchConfig, key: str) -> nn.Module:
        deps = {n: self.get(n, cfg) for n in k.needs}
        shape = (self.splits.channels, self.splits.image_size)
        model = build(k, cfg, shape, deps)
        spec = k.spec(cfg, shape, deps, {n: self.key(n, cfg) for n in k.needs})
        path = self.cache_dir / f"{key}.pt"
        tc = k.train_of(cfg)
        missing = [s for s in snapshot_steps(tc) if not self.snapshot_path(key, s).exists()]
        cached = path.exists() and self._may_load(path)
        # Under torchrun rank 0 decides; every rank then trains (DDP) or loads alike.
        if dist.broadcast(cached and not missing):
            meta = checkpoint.load(path, k.checkpoint, spec, model, key=key)
            source = "cache"
        elif not self.train_allowed:
            raise FileNotFoundError(
                f"{path}: no cached {k.checkpoint} checkpoint"
                + (f" with snapshots at steps {missing}" if cached else "")
                + ", and training is off"
            )
        else:
            if cached and dist.is_main():  # deterministic: the same weights, and the snapshots
                print(
                    f"[bench] {k.title}: training again to save the weights at steps {missing} "
                    f"({k.train_section}.snapshots); {path.name} holds only the last",
                    flush=True,
                )
            state = self.cache_dir / f"{key}.train-state.pt"  # resumable until the checkpoint
            model.to(self.device)
            meta = train(
                model,
                k.objective(cfg, deps, self),
                self.splits.train,
                k.train_of(cfg),
                k.title,
                self.device,
                state,
                cfg.save_every,
                self.labels(k, cfg),
                self._snapshot_writer(k, spec, key),
            )
            if dist.is_main():
                checkpoint.save(path, k.checkpoint, spec, model, meta, key=key)
                state.unlink(missing_ok=True)
            source = "trained"
        self._meta[key] = meta
        self.records[key] = {
            "kind": k.checkpoint,
            "source": source,
            "checkpoint": str(path),
            "params": sum(p.numel() for p in model.parameters()),
            **{k: v for k, v in meta.items() if k != "loss_history"},
            "loss_history": meta.get("loss_history", [])[-20:],
        }
        return model.to(self.device).eval().requires_grad_(False)

    def meta(self, name: str, cfg: BenchConfig | None = None) -> dict:
        """What the training of model ``name`` of ``cfg`` did (seconds, loss history, ...), as
        its checkpoint records it; trains or loads the model first if need be."""
        cfg = cfg or self.cfg
        self.get(name, cfg)
        return self._meta[self.key(name, cfg)]

    def snapshot_path(self, key: str, step: int) -> Path:
        """Where the weights of model ``key`` after ``step`` training steps are kept."""
        return self.cache_dir / f"{key}.step{step}.pt"

    def _snapshot_writer(self, k: ModelKind, spec: dict, key: str):
        def write(step: int, weights: dict, raw: dict | None, meta: dict) -> None:
            extra = {"raw_state_dict": raw} if raw is not None else {}
            path = self.snapshot_path(key, step)
            checkpoint.save(path, k.checkpoint, spec, weights, meta, key=key, **extra)

        return write

    def snapshot(
        self, name: str, cfg: BenchConfig, step: int, raw: bool = False
    ) -> tuple[nn.Module, dict]:
        """The model ``name`` of ``cfg`` as it was after ``step`` training steps (one of
        ``snapshot_steps`` of its training), its moving average or (``raw``) its raw weights,
        and what its training had done by then; the models it needs are the final ones."""
        k = kind(name)
        self.get(name, cfg)  # trains it (saving the snapshots) if need be
        deps = {n: self.get(n, cfg) for n in k.needs}
        shape = (self.splits.channels, self.splits.image_size)
        model = build(k, cfg, shape, deps)
        key = self.key(name, cfg)
        spec = k.spec(cfg, shape, deps, {n: self.key(n, cfg) for n in k.needs})
        state = "raw_state_dict" if raw else "state_dict"
        path = self.snapshot_path(key, step)
        meta = checkpoint.load(path, k.checkpoint, spec, model, key=key, state=state)
        return model.to(self.device).eval().requires_grad_(False), meta

    def labels(self, k: ModelKind, cfg: BenchConfig) -> torch.Tensor | None:
        """Training labels of a class-conditional model (checked against the data's classes)."""
        n = k.classes(cfg)
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
