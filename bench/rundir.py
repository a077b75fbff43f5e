"""The run folder's lifecycle: where a run goes, whether it resumes, its finished parts, its
status and attempts in run.json, and the wall time of each stage."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from bench.config import BenchConfig, ConfigError
from methods import atomic, dist
from methods.kinds import kinds


class BenchError(RuntimeError):
    """The run cannot produce trustworthy numbers; the message says why."""


@dataclass
class Stages:
    """Wall time of each stage of the run, in seconds, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        say(f"[bench] {name} ...")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        say(f"[bench] {name}: {self.seconds[name]:.1f} s")


def say(text: str) -> None:
    """Progress on stdout, from rank 0 only under torchrun."""
    if dist.is_main():
        print(text, flush=True)


def write_json(path: Path, obj: dict) -> None:
    if dist.is_main():
        atomic.write_text(path, json.dumps(obj, indent=2, default=str))


class Parts:
    """Finished pieces of a run (one JSON file each under ``parts/``): a resumed run reuses
    them instead of measuring again, and only a run whose every part exists is reported."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "parts"

    def get(self, name: str) -> dict | list | None:
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise BenchError(f"{path}: unreadable ({e}); delete it to measure it again") from None

    def put(self, name: str, value: dict | list) -> None:
        if dist.is_main():
            atomic.write_text(self.dir / f"{name}.json", json.dumps(value, indent=1, default=str))


def seeds_record(cfg: BenchConfig) -> dict:
    """Every seed the run uses, and what it decides."""
    ev = cfg.eval
    trains = dict.fromkeys(k.train_section for k in kinds())
    return {
        "data.split_seed": cfg.data.split_seed,
        "classifier.seed": cfg.classifier.seed,
        **{f"{t}.seed": getattr(cfg, t).seed for t in trains},
        "eval.seed": ev.seed,
        "scored images": f"image i of every sampler and of the noise anchor: seed {ev.seed} + i, "
        f"i < {ev.num_samples}",
        "timing images": f"seed {ev.seed} + 10000000 + i (never scored)",
        "likelihood, inversion": f"torch.Generator seeded with {ev.seed}",
        "model initialisation": "torch.manual_seed(<model>_train.seed) before building it",
    }


def make_folder(run_dir: Path, resolved: dict) -> None:
    """Create the run folder and store the resolved config in it (and print it)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    say("[bench] resolved config:\n" + yaml.safe_dump(resolved, sort_keys=False))
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def _check_resumable(run_dir: Path, resolved: dict) -> dict:
    """run.json of an unfinished run made with this same config, or an error saying why not."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {run_dir}: no readable run.json ({e})") from None
    saved = info.get("config", {})
    if saved != resolved:
        diff = sorted(_diff_keys(saved, resolved))
        raise ConfigError(
            f"--resume {run_dir}: the run was made with a different config; differing keys: "
            + ", ".join(diff[:10])
        )
    return info


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            shown = f" ({va!r} then, {vb!r} now)"
            out.append(f"{prefix}{k}" + (shown if len(shown) < 60 else ""))
    return out


def on_main(fn):
    """``fn()`` on rank 0, its result (or its exception) on every rank."""
    result: tuple[bool, object] | None = None
    error: Exception | None = None
    if dist.is_main():
        try:
            result = (True, fn())
        except Exception as e:  # raised here as is; the other ranks get its message
            error, result = e, (False, f"{type(e).__name__}: {e}")
    ok, value = dist.broadcast(result)
    if error is not None:
        raise error
    if not ok:
        raise BenchError(f"rank 0: {value}")
    return value


def locate(
    cfg: BenchConfig,
    resolved: dict,
    started: datetime,
    out: Path | None,
    resume: Path | None,
    retrain: bool,
) -> tuple[Path, dict | None, bool]:
    """The run folder, the unfinished run in it to continue (its run.json), and --retrain."""
    run_dir = resume or out or Path("results") / f"{cfg.name}-{started:%Y%m%d-%H%M%S}"
    if resume is None and (run_dir / "run.json").is_file():
        try:
            status = json.loads((run_dir / "run.json").read_text()).get("status")
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"--out {run_dir}: holds an unreadable run.json ({e})") from None
        if status == "complete":
            raise ConfigError(
                f"--out {run_dir}: already holds a finished run; choose another folder"
            )
        say(f"[bench] {run_dir} holds an unfinished run ({status}): resuming it")
        resume = run_dir
    previous = None
    if resume is not None:
        previous = _check_resumable(run_dir, resolved)
        retrain = previous.get("retrain", retrain)
    return run_dir, previous, retrain
