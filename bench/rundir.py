"""The run folder's lifecycle: where a run goes, whether it resumes, its finished parts, its
status and attempts in run.json, and the wall time of each stage."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from bench.config import BenchConfig, ConfigError
from bench.runfolder import json_kind
from methods import atomic, dist
from methods.kinds import kinds


class BenchError(RuntimeError):
    """The run cannot produce trustworthy numbers; the message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled like Ctrl-C: run.json says
    "interrupted" and the run can be resumed."""


@contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


LOCK = ".flowbench.lock"  # in the run folder: held by the live run, released when it dies
_held: dict[Path, int] = {}  # run folder -> the open lock file of this process


def lock(run_dir: Path, flag: str) -> None:
    """Hold the run folder's lock for the rest of this process (an OS lock: a killed run
    leaves none behind), or refuse with the live run's process id."""
    key = run_dir.resolve()
    if key in _held:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BenchError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"{flag} {run_dir}: another run (process {holder}) is writing this folder; wait "
            "for it to finish or choose another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = fd


def unlock(run_dir: Path) -> None:
    """Release the lock this process holds on ``run_dir`` (tests; a run keeps it until exit)."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)


def abandon(run_dir: Path) -> None:
    """Undo a run that failed before its run.json existed: drop its lock and, when nothing
    else is in it, the folder it created."""
    if (run_dir / "run.json").exists():
        return
    unlock(run_dir)
    (run_dir / LOCK).unlink(missing_ok=True)
    try:
        run_dir.rmdir()  # only when empty: a folder the user made stays
    except OSError:
        pass


def _read_info(path: Path, flag: str, run_dir: Path) -> dict:
    """run.json as a mapping, or one line saying why it cannot be read."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} {run_dir}: holds an unreadable run.json ({e})") from None
    if not isinstance(info, dict):
        raise ConfigError(
            f"{flag} {run_dir}: run.json holds a JSON {json_kind(info)}, not a run's record (a "
            "JSON object)"
        )
    return info


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
    info = _read_info(run_dir / "run.json", "--resume", run_dir)
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
    """The run folder, the unfinished run in it to continue (its run.json), and --retrain. The
    folder is locked for this process's lifetime before anything in it is read or written."""
    run_dir = resume or out or Path("results") / f"{cfg.name}-{started:%Y%m%d-%H%M%S}"
    flag = "--resume" if resume is not None else "--out"
    if resume is None and run_dir.is_dir() and not (run_dir / "run.json").exists():
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(
                f"--out {run_dir}: a folder that holds no run ({shown}); choose an empty or "
                "new folder"
            )
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{flag} {run_dir}: not a folder")
    if resume is not None and not (run_dir / "run.json").is_file():
        raise ConfigError(f"--resume {run_dir}: no run.json; not a run folder")
    if resume is None and (run_dir / "run.json").is_file():  # refused unlocked: nothing written
        if _read_info(run_dir / "run.json", "--out", run_dir).get("status") == "complete":
            raise ConfigError(
                f"--out {run_dir}: already holds a finished run; choose another folder"
            )
    lock(run_dir, flag)
    if resume is None and (run_dir / "run.json").is_file():
        status = _read_info(run_dir / "run.json", "--out", run_dir).get("status")
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
