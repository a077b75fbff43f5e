"""`bench run`: data -> models -> per-sampler measurements -> run folder with tables and report."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
import yaml
from torchvision.utils import save_image
from tqdm.auto import tqdm

import methods
from bench import data, nvml, report
from bench.config import BenchConfig, ConfigError, to_dict
from bench.flops import count_flops, matmul_peak
from bench.models import ModelStore
from bench.quality import Scorer
from bench.timing import calibration_workload, measure_interleaved, op_breakdown, peak_memory
from bench.variants import causal_baseline, check_choices, entries, replicate_config
from methods import atomic, dist, faults, native
from methods.base import Sampler, noise_for_seeds, to_uint8
from methods.biflow import inversion_error
from methods.tarflow import bits_per_dim
from methods.transformer import native_problem

CALIBRATION = "calibration workload"


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: got {name!r}, but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def environment(device: torch.device) -> dict:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "n/a"

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).resolve().parent,
            )
            return out.stdout.strip() if out.returncode == 0 else "n/a"
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    cpu = platform.processor() or "n/a"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **nvml.readings(device),  # idle device memory and power; "n/a" without a driver
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": dist.world(),  # processes under torchrun; 1 for a plain run
        "dist_backend": torch.distributed.get_backend() if dist.active() else "n/a",
        "python": sys.version.split()[0],
        "native_decode_kernel": native.decode_attention().description,
        "platform": platform.platform(),
        **{f"{p}_version": version(p) for p in ("torch", "torchvision", "torch-fidelity")},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": git("status", "--porcelain") not in ("", "n/a"),
    }


def _write_json(path: Path, obj: dict) -> None:
    if dist.is_main():
        atomic.write_text(path, json.dumps(obj, indent=2, default=str))


def score_sampler(
    key: str,
    sampler: Sampler,
    cfg: BenchConfig,
    seeds: list[int],
    device: torch.device,
    run_dir: Path,
    scorer: Scorer,
) -> dict:
    """Draw the scored images: counts, quality, the sample grid.

    Under torchrun each rank draws a contiguous run of whole batches of the seeds (the batches a
    single process would draw) and the images are gathered in seed order before scoring."""
    ev = cfg.eval
    start, stop = dist.shard(len(seeds), ev.batch_size)
    mine = seeds[start:stop] or seeds[:1]  # an empty share still learns the NFE
    with tqdm(
        total=len(mine),
        desc=f"sample {key}",
        unit="img",
        mininterval=1.0,
        disable=not dist.is_main(),
    ) as bar:

        def on_batch(n: int) -> None:
            bar.update(n)
            faults.point(f"sample:{key}:{bar.n}")

        res = sampler.sample(mine, ev.batch_size, on_batch)
    images = dist.gather_cat(res.images[: stop - start], device)
    nfe, nfe_max, steps = res.nfe, res.nfe_max, res.sequential_steps
    if sampler.fixed_nfe:
        dist.agree([nfe, steps])
    elif dist.active():  # adaptive (Jacobi): the mean over every rank's images
        evaluations = round(res.nfe * (stop - start))  # image-evaluations of this rank
        nfe = dist.total(evaluations, device) / len(seeds)
        nfe_max, steps = dist.maximum(nfe_max), dist.maximum(steps)
    grid = run_dir / f"samples_{key}.png"
    if dist.is_main():
        shown = images[: ev.grid].float() / 255
        atomic.atomic_write(
            grid, lambda p: save_image(shown, p, nrow=int(ev.grid**0.5), format="png")
        )
    return {
        "nfe": nfe,
        "nfe_max": nfe_max,
        "sequential_steps": steps,
        "params": sampler.num_params(),
        **(sampler.diagnostics(seeds) if dist.is_main() else {}),
        "sample_wall_s": dist.maximum(res.wall_s),  # the slowest rank's
        "nonfinite": dist.total(res.n_nonfinite if stop > start else 0, device),
        "images_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
        **scorer.score(images),
        "grid": grid.name,
    }


def time_samplers(
    samplers: dict[str, Sampler],
    cfg: BenchConfig,
    device: torch.device,
    baselines: dict[str, str] | None = None,
) -> tuple[dict[str, dict], list[dict]]:
    """Wall time per batch over a sweep of batch sizes, all samplers interleaved at each size.

    Returns the main-table columns per sampler (latency at batch 1, throughput at the
    throughput batch) and one sweep row per (sampler, batch), with the speedup over causal
    decoding at the same batch size (``baselines``: each sampler's causal decoder; default
    the one called "tarflow").
    """
    baselines = baselines or {n: "tarflow" for n in samplers}
    ev = cfg.eval
    calibrate = calibration_workload(device)
    batches = sorted(
        {1, ev.throughput_batch, *(b for b in ev.sweep_batches if b <= ev.throughput_batch)}
    )
    sweep = []
    for b in batches:
        seeds = [ev.seed + 10_000_000 + i for i in range(b)]  # timing only; never scored
        repeats = ev.latency_repeats if b == 1 else ev.throughput_repeats
        fns = {n: (lambda s=s, sd=seeds, b=b: s.sample(sd, b)) for n, s in samplers.items()}
        fns[CALIBRATION] = calibrate
        timings = measure_interleaved(fns, device, ev.warmup, repeats)
        cal = timings.pop(CALIBRATION)
        for n, t in timings.items():
            sweep.append(
                {
                    "method": n,
                    "batch": b,
                    "median_s": t.median_s,
                    "ms_per_img": t.median_s / b * 1e3,
                    "img_s": b / t.median_s,
                    "spread": t.spread,
                    "repeats": repeats,
                    "calibration_s": cal.median_s,
                    "time_vs_calibration": t.median_ratio(cal),
                }
            )
    by = {(r["method"], r["batch"]): r for r in sweep}
    for r in sweep:
        base = by.get((baselines.get(r["method"]), r["batch"]))
        r["speedup_vs_tarflow"] = base["median_s"] / r["median_s"] if base else float("nan")
    main = {}
    for n in samplers:
        lat, thr = by[(n, 1)], by[(n, ev.throughput_batch)]
        main[n] = {
            "latency_ms_b1": lat["median_s"] * 1e3,
            "latency_spread_b1": lat["spread"],
            "throughput_batch": ev.throughput_batch,
            "throughput_img_s": thr["img_s"],
            "throughput_spread": thr["spread"],
            "ms_per_img_tput": thr["ms_per_img"],
            # Each time over the calibration workload's, timed interleaved with it: the
            # machine-speed-free numbers `bench compare` gates on.
            "latency_b1_vs_cal": lat["time_vs_calibration"],
            "tput_time_vs_cal": thr["time_vs_calibration"],
            "calibration_ms_b1": lat["calibration_s"] * 1e3,
        }
    return main, sweep


def sampler_flops(sampler: Sampler, seeds: list[int]) -> int:
    """FLOPs per image of sampling: two images, so nothing is batch-1 special; an adaptive
    sampler (Jacobi), whose work depends on the images, over the first 64 scored ``seeds``."""
    z, y = sampler.inputs(seeds[:2] if sampler.fixed_nfe else seeds[:64])
    # A compiled sampler's code runs eagerly here: the same operations, visible to the counter.
    with torch.compiler.set_stance("force_eager"):
        return count_flops(lambda: sampler.generate(z, y)) // len(z)


def sampler_memory(
    name: str,
    sampler: Sampler,
    cfg: BenchConfig,
    run_dir: Path,
    cache_dir: Path,
    splits: data.Splits,
    device: torch.device,
) -> dict:
    """Peak memory of sampling one throughput batch: the CUDA allocator's peak on GPU; on CPU
    the peak resident set of a fresh process that holds only this sampler (bench.memprobe)."""
    b = cfg.eval.throughput_batch
    if device.type == "cuda":
        with peak_memory(device) as mem:
            sampler.sample(list(range(b)), b)
            after = nvml.readings(device)  # while the batch's memory is still held
        return {"peak_mem_mb": mem.mb, "peak_mem_kind": mem.kind, **after}
    cmd = [
        sys.executable,
        "-m",
        "bench.memprobe",
        str(run_dir / "config.yaml"),
        str(cache_dir),
        name,
        str(b),
        str(splits.channels),
        str(splits.image_size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise BenchError(f"memory probe for {name} failed:\n{out.stderr[-2000:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "peak_mem_mb": probe["peak_mb"],
        "peak_mem_kind": probe["kind"] + "_fresh_process",
        "mem_model_loaded_mb": probe["baseline_mb"],
        "mem_sampling_mb": probe["peak_mb"] - probe["baseline_mb"],
    }


# Operator groups of the decode/forward breakdown (aten names, as torch.profiler reports them).
OP_GROUPS = {
    "linear layers": lambda name: name in ("aten::addmm", "aten::mm"),
    "attention": lambda name: (
        "attention" in name
        or "softmax" in name
        or name in ("aten::bmm", "aten::baddbmm", "aten::masked_fill")
    ),
}


def decode_attention_form(flow, device: torch.device, kernel: str) -> str:
    """How the cached decode of ``flow`` attends (float32, the growing cache), in words."""
    if kernel == "torch":
        return "torch operators (sampling.decode_kernel: torch)"
    head_dim = flow.cfg.width // flow.cfg.heads
    if problem := native_problem(device, torch.float32, head_dim, static=False):
        return f"torch operators (no native kernel: {problem})"
    return f"the native C kernel ({native.decode_attention().description})"


def decode_vs_forward(flow, device: torch.device, cfg: BenchConfig) -> dict:
    """Fairness check of the causal baseline, measured in this run: one full causal decode
    against one parallel forward pass of the same flow, both at the throughput batch."""
    b = cfg.eval.throughput_batch
    kernel = cfg.sampling.decode_kernel
    z = noise_for_seeds(range(b), (flow.tokens, flow.dim)).to(device)
    x = flow.reverse(z, kernel=kernel)
    work = {"decode": lambda: flow.reverse(z, kernel=kernel), "forward": lambda: flow(x)}
    with torch.no_grad():
        t = measure_interleaved(work, device, cfg.eval.warmup, cfg.eval.throughput_repeats)
        fwd_flops = count_flops(lambda: flow(x[:2])) // 2
        profiled = {}
        if device.type == "cpu":  # the profiler's CPU self times; on a GPU they would be launches
            profiled["profile_ms"] = {n: op_breakdown(fn, OP_GROUPS) for n, fn in work.items()}
    # Counted at batch 2 with torch operators (under the FLOP counter a native cache attends
    # with them: the same arithmetic). The torch form's CPU matrix products would pad the first
    # steps to 400 / head_dim keys for BLAS at the throughput batch (see KVCache), not counted.
    dec_flops = count_flops(lambda: flow.reverse(z[:2], kernel=kernel)) // 2
    dec, fwd = t["decode"], t["forward"]
    return {
        "decode_flops_per_img": dec_flops,
        "forward_flops_per_img": fwd_flops,
        "batch": b,
        "attention": decode_attention_form(flow, device, kernel),
        "decode_s": dec.median_s,
        "forward_s": fwd.median_s,
        # Median of the per-repeat ratios: each decode ran moments before its forward pass
        # (interleaved), so a slow spell of a shared machine cancels instead of tilting one side.
        "ratio": dec.median_ratio(fwd),
        "decode_spread": dec.spread,
        "forward_spread": fwd.spread,
        **profiled,
    }


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


def _seeds(cfg: BenchConfig) -> dict:
    """Every seed the run uses, and what it decides."""
    ev = cfg.eval
    return {
        "data.split_seed": cfg.data.split_seed,
        "classifier.seed": cfg.classifier.seed,
        "tarflow_train.seed": cfg.tarflow_train.seed,
        "biflow_train.seed": cfg.biflow_train.seed,
        "eval.seed": ev.seed,
        "scored images": f"image i of every sampler and of the noise anchor: seed {ev.seed} + i, "
        f"i < {ev.num_samples}",
        "timing images": f"seed {ev.seed} + 10000000 + i (never scored)",
        "likelihood, inversion": f"torch.Generator seeded with {ev.seed}",
        "model initialisation": "torch.manual_seed(<model>_train.seed) before building it",
    }


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


def run(
    cfg: BenchConfig,
    config_path: Path | None,
    out: Path | None,
    retrain: bool,
    resume: Path | None = None,
) -> Path:
    """Run the benchmark, or finish an interrupted run (``resume``: its folder).

    The run folder's run.json says "running" while it works (a killed run keeps saying so),
    then "complete", or "failed"/"interrupted" and why. Finished stages are kept under
    ``parts/``; a resumed run measures only what is missing.
    """
    base = config_path.resolve().parent if config_path else Path.cwd()
    for m in [*cfg.methods, *(v.method for v in cfg.variants)]:
        methods.get(m)  # unknown names fail before any work
    check_choices(entries(cfg))
    device = dist.init(resolve_device(cfg.device))  # joins the process group under torchrun
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolved = to_dict(cfg)
    started = datetime.now(UTC)
    # Rank 0 decides where the run goes and whether it resumes; every rank follows.
    located = _on_main(lambda: _locate(cfg, resolved, started, out, resume, retrain))
    run_dir, previous, retrain = located
    if previous is not None and previous.get("status") == "complete":
        if dist.is_main():
            say(f"[bench] {run_dir}: already complete; report regenerated")
            report.write(run_dir)
        return run_dir
    # Wall time of each stage; a resumed run keeps the earlier attempts' times of stages it reuses.
    stages = Stages(dict(previous.get("stages", {})) if previous else {})
    with stages.stage("data"):
        splits = data.load(cfg.data, base)
        if splits.image_size % cfg.tarflow.patch_size:
            raise ConfigError(
                f"tarflow.patch_size: got {cfg.tarflow.patch_size}; allowed: a divisor of the "
                f"image size {splits.image_size} of data {splits.name!r}"
            )
    env = environment(device)  # before the run folder exists: git status must not see it

    def make_folder() -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
        say("[bench] resolved config:\n" + yaml.safe_dump(resolved, sort_keys=False))
        atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    _on_main(make_folder)
    attempt = {"started": started.isoformat(), "pid": os.getpid()}
    info: dict = previous or {
        "started": started.isoformat(),
        "config": resolved,
        "retrain": retrain,
        "seeds": _seeds(cfg),
        "dataset": {
            "name": splits.name,
            "train": len(splits.train),
            "reference": len(splits.reference),
            "real_anchor": len(splits.real_anchor),
            "shape": list(splits.train.shape[1:]),
        },
    }
    info.update(status="running", environment=env)
    info["stages"] = stages.seconds  # the same dict: every finished stage shows up in run.json
    info["attempts"] = [*info.get("attempts", []), attempt]
    info.pop("error", None)
    _write_json(run_dir / "run.json", info)
    try:
        _measure_all(cfg, base, run_dir, splits, device, retrain, stages, info)
    except BaseException as e:
        info.update(
            status="failed" if isinstance(e, Exception) else "interrupted",
            error=f"{type(e).__name__}: {e}",
        )
        _write_json(run_dir / "run.json", info)
        raise
    if dist.is_main():
        report.write(run_dir)
        say(f"[bench] report: {run_dir / 'report.md'}")
    # The other ranks left after the last collective stage (anchors); rank 0 ran the rest alone.
    dist.shutdown()
    return run_dir


def _on_main(fn):
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


def _locate(
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


def _measure_all(
    cfg: BenchConfig,
    base: Path,
    run_dir: Path,
    splits: data.Splits,
    device: torch.device,
    retrain: bool,
    stages: Stages,
    info: dict,
) -> None:
    parts = Parts(run_dir)

    def stage(title: str, part: str, compute):
        """Run a stage once: its result is saved under parts/ and reused on resume."""
        done = parts.get(part)
        if done is not None:
            say(f"[bench] {title}: kept from an earlier attempt")
            return done
        with stages.stage(title):
            value = compute()
        parts.put(part, value)
        _write_json(run_dir / "run.json", info)
        return value

    cache_dir = (base / cfg.cache_dir).resolve()
    made = parts.get("models") or {}
    store = ModelStore(
        cfg,
        splits,
        cache_dir,
        device,
        retrain,
        made_by_this_run=frozenset(
            r["checkpoint"] for r in made.values() if r["source"] == "trained"
        ),
    )

    def record_models() -> None:
        records = {**store.records, **{k: v for k, v in made.items() if v["source"] == "trained"}}
        parts.put("models", records)

    with stages.stage("domain classifier"):
        domain_path, acc = store.classifier()
    record_models()
    if acc < cfg.classifier.min_accuracy:
        raise BenchError(
            f"domain classifier held-out accuracy {acc:.3f} < classifier.min_accuracy "
            f"{cfg.classifier.min_accuracy}: its FID/IS would not be trustworthy"
        )
    scorer = Scorer(
        cfg,
        splits.reference,
        splits.name,
        domain_path,
        (base / cfg.metrics.stats_cache).resolve(),
        device,
    )
    sampling = cfg.sampling.for_device(device)  # a GPU-only switch on CPU: one warning line
    info["sampling_effective"] = to_dict(sampling)
    todo = entries(cfg)
    samplers: dict[str, Sampler] = {}
    for e in todo:
        cls = methods.get(e.method)
        with stages.stage(f"train or load models for {e.key}"):
            models = {need: store.get(need, e.cfg) for need in cls.needs}
        record_models()
        # (sampling choices the models cannot honour were refused by check_choices)
        samplers[e.key] = cls.from_models(models, device, e.cfg.sampling.for_device(device))

    def seeds_of(c: BenchConfig) -> list[int]:
        return [c.eval.seed + i for i in range(c.eval.num_samples)]

    compile_s: dict[str, float] = {}
    if sampling.compile:
        # torch.compile works at the first call of each shape: batch 1 and then any larger
        # batch (compiled with dynamic sizes). Those calls are timed here, apart from every
        # steady-state timing; a resumed run compiles again (compiled code lives in memory).
        with stages.stage("compile (first calls of each sampler)"):
            for e in todo:
                t0 = time.perf_counter()
                samplers[e.key].first_calls(seeds_of(e.cfg))
                compile_s[e.key] = round(time.perf_counter() - t0, 3)
                say(f"[bench] compiled {e.key}: {compile_s[e.key]:.1f} s")
        info["compile_s"] = compile_s

    def common(c: BenchConfig, replicate: int) -> dict:
        return {
            "dataset": splits.name,
            "extractors": ",".join(cfg.metrics.extractors),
            "replicate": replicate,
            "seed": c.eval.seed,
            "device": str(device),
        }

    rows = []
    for e in todo:
        sampler = samplers[e.key]
        row = stage(
            f"sample and score {e.key}",
            f"score-{e.key}",
            lambda e=e, sampler=sampler: {
                "method": e.method,
                "variant": e.variant,
                "key": e.key,
                "tables": ",".join(e.tables),
                **asdict(sampler.factors()),
                **common(e.cfg, e.replicate),
                **score_sampler(e.key, sampler, e.cfg, seeds_of(e.cfg), device, run_dir, scorer),
                "unavailable": dict(scorer.unavailable),
            },
        )
        rows.append(row)

    def anchors(c: BenchConfig, replicate: int) -> list[dict]:
        shape = (splits.channels, splits.image_size, splits.image_size)
        noise, _ = to_uint8(noise_for_seeds(seeds_of(c), shape))
        real = splits.real_anchor[: cfg.eval.num_samples]
        return [
            {
                "method": label,
                "variant": "-",
                "tables": "main",
                **common(c, replicate),
                **scorer.score(images, inception),
                "unavailable": dict(scorer.unavailable),
            }
            # Inception features of Gaussian noise say nothing about a digit sampler: the noise
            # anchor is scored with the domain extractor only (it marks that metric's ceiling).
            for label, images, inception in (
                ("anchor: gaussian noise", noise, False),
                ("anchor: held-out real", real, True),
            )
        ]

    anchor_rows = []
    for r in range(cfg.replicates):
        part = "anchors" if r == 0 else f"anchors.r{r}"
        c = replicate_config(cfg, r)
        anchor_rows += stage(part, part, lambda c=c, r=r: anchors(c, r))

    if not dist.is_main():
        return  # the rest runs on rank 0 alone: timings, FLOPs, memory, likelihood, tables

    baselines = {e.key: causal_baseline(e, todo) for e in todo}
    timing = stage(
        "timing sweep (samplers interleaved)",
        "timing",
        lambda: dict(
            zip(("main", "sweep"), time_samplers(samplers, cfg, device, baselines), strict=True)
        ),
    )
    timings, sweep = timing["main"], timing["sweep"]

    def flops() -> dict:
        return {
            "matmul_peak": matmul_peak(device),
            "per_img": {e.key: sampler_flops(samplers[e.key], seeds_of(e.cfg)) for e in todo},
        }

    fl = stage("flops", "flops", flops)
    info["matmul_peak_gflop_s"] = fl["matmul_peak"] / 1e9
    for row in rows:
        n = row["key"]
        achieved = fl["per_img"][n] * timings[n]["throughput_img_s"]
        row.update(
            flops_per_img=fl["per_img"][n],
            achieved_gflop_s=achieved / 1e9,
            peak_fraction=achieved / fl["matmul_peak"],
        )

    def memory() -> dict:
        # One probe at a time: side by side, their thread pools oversubscribe the cores (the
        # stage took 2x longer on 2 cores), though each reads its own high-water mark.
        return {
            n: sampler_memory(n, s, cfg, run_dir, cache_dir, splits, device)
            for n, s in samplers.items()
        }

    mem = stage("peak memory", "memory", memory) if cfg.eval.memory else {}
    for row in rows:
        row.update(timings[row["key"]])
        row.update(mem.get(row["key"], {}))
        if compile_s:
            row["compile_s"] = compile_s[row["key"]]

    def likelihood() -> dict:
        """Of the first entry's flow (and reverse model), on the held-out images."""
        extra: dict = {}
        uses = [e for e in todo if "flow" in methods.get(e.method).needs]
        if not uses:
            return extra
        c = uses[0].cfg
        flow = store.get("flow", c)
        g = torch.Generator().manual_seed(cfg.eval.seed)
        held = splits.holdout.float().to(device) / 127.5 - 1
        y = splits.holdout_labels.to(device) if c.tarflow.num_classes else None
        extra["likelihood_of"] = uses[0].key
        extra["bits_per_dim_heldout"] = bits_per_dim(flow, held, g, y)
        extra["decode_vs_forward"] = decode_vs_forward(flow, device, cfg)
        reverse = [e for e in uses if "reverse" in methods.get(e.method).needs]
        if reverse and store.loaded("reverse", reverse[0].cfg):
            rc = reverse[0].cfg
            g_model, its_flow = store.get("reverse", rc), store.get("flow", rc)
            y = splits.holdout_labels.to(device) if rc.tarflow.num_classes else None
            extra["biflow_inversion"] = {
                "of": reverse[0].key,
                **inversion_error(g_model, its_flow, held, g, y),
            }
        return extra

    extra = stage("likelihood and baseline fairness", "likelihood", likelihood)

    rows += anchor_rows
    unavailable: dict[str, str] = {}
    for row in rows:
        unavailable |= row.pop("unavailable", {})
    table = pd.DataFrame(rows)
    if any(baselines.values()):
        base = table["key"].map(baselines)  # anchors: NaN
        lat = {r["key"]: r["latency_ms_b1"] for r in rows if "key" in r}
        thr = {r["key"]: r["throughput_img_s"] for r in rows if "key" in r}
        table["speedup_vs"] = base
        table["speedup_b1"] = base.map(lat) / table["latency_ms_b1"]
        table["speedup_tput"] = table["throughput_img_s"] / base.map(thr)
    atomic.atomic_write(run_dir / "results.csv", lambda p: table.to_csv(p, index=False))
    faults.point("write:results")
    atomic.atomic_write(run_dir / "sweep.csv", lambda p: pd.DataFrame(sweep).to_csv(p, index=False))
    atomic.atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    info.update(
        status="complete",
        finished=datetime.now(UTC).isoformat(),
        models=parts.get("models"),
        unavailable_metrics=unavailable,
        **extra,
    )
    _write_json(run_dir / "run.json", info)
