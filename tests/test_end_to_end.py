"""The whole pipeline on configs/smoke.yaml: real training, sampling and torch-fidelity metrics."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "ci-baseline"  # the CI gate's committed baseline run

pytestmark = pytest.mark.slow


def run_smoke(
    out: Path | None,
    cache: Path,
    *extra: str,
    kill_at: str = "",
    config: str = "smoke.yaml",
    nproc: int = 1,
) -> subprocess.CompletedProcess:
    """``configs/<config>`` into ``out`` (None: ``extra`` names the folder) with its models and
    reference statistics cached in ``cache``; ``kill_at``: the methods.faults point where the
    process SIGKILLs itself; ``nproc`` > 1: launched by torchrun as that many processes."""
    cmd, env = smoke_command(out, cache, *extra, kill_at=kill_at, config=config, nproc=nproc)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    if not kill_at:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def smoke_command(
    out: Path | None,
    cache: Path,
    *extra: str,
    kill_at: str = "",
    config: str = "smoke.yaml",
    nproc: int = 1,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of :func:`run_smoke`."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [
        sys.executable,
        *(launcher if nproc > 1 else ()),
        "-m",
        "bench",
        "run",
        str(ROOT / "configs" / config),
        *(("--out", str(out)) if out is not None else ()),
        "--set",
        f"cache_dir={cache}",
        "--set",
        f"metrics.stats_cache={cache / 'stats'}",
        *extra,
    ]
    # An empty torch home: no cached standard-Inception weights, as on a fresh offline machine.
    env = {**os.environ, "TORCH_HOME": str(cache / "torch_home"), "FLOWBENCH_KILL_AT": kill_at}
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 cores
    return cmd, env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    first = run_smoke(tmp / "first", tmp / "cache")
    # The first run's reference statistics in the ADM layout, which the second run scores against
    stats = tmp / "cache" / "reference-domain.npz"
    made = main(
        ["refstats", "--run", str(tmp / "first"), "--extractor", "domain", "--out", str(stats)]
    )
    assert made == 0 and stats.is_file()
    # Warm cache: loads every model. Without the offline Inception, which the first run covers.
    # Launched by torchrun as 2 processes (gloo): sampling and feature extraction are sharded.
    second = run_smoke(
        tmp / "second",
        tmp / "cache",
        "--set",
        "metrics.extractors=[domain,inception]",
        "--set",
        f"metrics.reference_stats={stats}",
        "--set",
        "metrics.reference_stats_extractor=domain",
        nproc=2,
    )
    return tmp / "first", tmp / "second", first, second


def test_run_folder_holds_every_output(runs):
    first, *_ = runs
    for name in (
        "results.csv",
        "results.parquet",
        "run.json",
        "report.md",
        "config.yaml",
        "sweep.csv",
        "speedup_vs_batch.png",
        "quality_vs_time.png",
        "samples_tarflow.png",
        "samples_tarflow_score.png",
        "samples_biflow.png",
    ):
        assert (first / name).is_file(), name
    table = pd.read_parquet(first / "results.parquet")
    for col in (
        "method",
        "variant",
        "nfe",
        "latency_ms_b1",
        "throughput_img_s",
        "peak_mem_mb",
        "fid_domain",
        "is_domain",
        "kid_domain",
    ):
        assert col in table.columns
    info = json.loads((first / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["environment"]["torch_version"].startswith("2.14.1")
    assert set(info["stages"]) >= {
        "data",
        "domain classifier",
        "sample and score biflow",
        "anchors",
        "timing sweep (samplers interleaved)",
        "peak memory",
    }
    # The fairness check says where the decode's and the forward pass's time goes.
    profiled = info["decode_vs_forward"]["profile_ms"]
    for side in ("decode", "forward"):
        p = profiled[side]
        assert p["linear layers"] > 0 and p["attention"] > 0
        parts = sum(v for k, v in p.items() if k != "profiled wall")
        assert parts == pytest.approx(p["profiled wall"])
    assert "| linear layers " in (first / "report.md").read_text()
    # ... at batch 1 as well: the same arithmetic in 96 sequential steps instead of one pass
    b1 = info["decode_vs_forward"]["batch1"]
    assert b1["ratio"] > 1 and b1["decode_s"] > b1["forward_s"] > 0
    assert "At batch 1 the decode takes" in (first / "report.md").read_text()
    # No DINOv2 or CLIP weights offline: one line each in the report, and everything else ran
    said = [ln for ln in (first / "report.md").read_text().splitlines() if "unavailable" in ln]
    assert any("FD_DINOv2 unavailable" in ln for ln in said), said
    assert any("FD_CLIP unavailable" in ln for ln in said), said
    assert "fd_dinov2" not in table.columns and table["fid_inception_offline"].notna().any()
    # the 95% bootstrap interval of every sampler's FID, beside it in the report
    assert (table.fid_domain_lo <= table.fid_domain).all()
    assert (table.fid_domain <= table.fid_domain_hi).all()
    report_text = (first / "report.md").read_text().replace(" ", "")
    assert "|FID(domain)|fid_domain95%CI|" in report_text


def test_counts_and_anchors(runs):
    first, *_ = runs
    t = pd.read_csv(first / "results.csv").set_index("method")
    cfg = json.loads((first / "run.json").read_text())["config"]["tarflow"]
    decode = cfg["blocks"] * ((28 // cfg["patch_size"]) ** 2 - 1)
    assert t.loc["tarflow", "nfe"] == decode
    assert t.loc["tarflow_score", "nfe"] == decode + 1
    assert t.loc["biflow", "nfe"] == 1
    noise, real = (
        t.loc["anchor: gaussian noise", "fid_domain"],
        t.loc["anchor: held-out real", "fid_domain"],
    )
    for m in ("tarflow", "tarflow_score", "biflow"):
        assert real < t.loc[m, "fid_domain"] < noise
    assert (t.loc[["tarflow", "tarflow_score", "biflow"], "peak_mem_mb"] > 0).all()


def test_warm_cache_loads_models_and_reproduces_the_metrics(runs):
    """The second run loads the first run's models and runs as 2 torchrun processes: each draws
    and extracts features for its share of the seeds; the images (all of them, by digest) and
    every metric equal the single-process run's."""
    first, second, _, second_log = runs
    info = json.loads((second / "run.json").read_text())
    assert {m["source"] for m in info["models"].values()} == {"cache"}
    assert info["environment"]["world_size"] == 2
    assert info["environment"]["dist_backend"] == "gloo"
    a, b = pd.read_csv(first / "results.csv"), pd.read_csv(second / "results.csv")
    cols = ("nfe", "images_sha256", "n_samples")
    metrics = ("fid", "is", "kid", "precision", "recall")
    for col in (*cols, *(f"{m}_domain" for m in metrics)):
        pd.testing.assert_series_equal(a[col], b[col])
    assert (first / "samples_biflow.png").read_bytes() == (
        second / "samples_biflow.png"
    ).read_bytes()


def test_fid_against_the_first_runs_exported_statistics_is_the_fid_of_its_reference_set(runs):
    """The second run scores against reference statistics that `bench refstats` wrote from the
    first run in the ADM layout: the same FID as against the reference images themselves."""
    _, second, *_ = runs
    t = pd.read_csv(second / "results.csv")
    assert t["fid_refstats_domain"].notna().all()
    pd.testing.assert_series_equal(
        t["fid_refstats_domain"], t["fid_domain"], check_names=False, rtol=1e-5
    )
    assert "FID vs ref. stats (domain)" in (second / "report.md").read_text()


def test_report_regenerates_from_the_run_folder(runs, tmp_path):
    first, *_ = runs
    before = (first / "report.md").read_text()
    assert main(["report", str(first)]) == 0  # python -m bench report, in-process
    assert (first / "report.md").read_text() == before
    # Written elsewhere (as reports/ holds the default run's), every figure link still resolves.
    elsewhere = tmp_path / "reports" / "first.md"
    assert main(["report", str(first), "--out", str(elsewhere)]) == 0
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", elsewhere.read_text())
    assert len(links) >= 5 and all((elsewhere.parent / link).is_file() for link in links)
    assert "anchor: held-out real" in before and "![biflow](samples_biflow.png)" in before


def test_sweep_covers_batch_one_to_the_throughput_batch(runs):
    first, *_ = runs
    sweep = pd.read_csv(first / "sweep.csv")
    ev = json.loads((first / "run.json").read_text())["config"]["eval"]
    expected = {
        1,
        ev["throughput_batch"],
        *(b for b in ev["sweep_batches"] if b <= ev["throughput_batch"]),
    }
    assert set(sweep.batch) == expected
    assert (sweep.loc[sweep.method == "tarflow", "speedup_vs_tarflow"] == 1.0).all()


def test_several_runs_in_one_table(runs, tmp_path):
    first, second, *_ = runs
    out = tmp_path / "both.md"
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| first " in text and "| second " in text
    assert text.count("BiFlow, learned reverse") == 2


def test_offline_inception_numbers_and_an_unavailable_standard_inception(runs):
    first, *_ = runs
    t = pd.read_csv(first / "results.csv").set_index("method")
    scored = t.drop(index="anchor: gaussian noise")  # scored with the domain extractor only
    assert scored["fid_inception_offline"].notna().all()
    assert (scored["n_samples_inception"] == 12).all()
    assert pd.isna(t.loc["anchor: gaussian noise", "fid_inception_offline"])
    real = t.loc["anchor: held-out real", "fid_inception_offline"]
    assert (real < t.loc[["tarflow", "tarflow_score", "biflow"], "fid_inception_offline"]).all()
    assert "fid_inception" not in t.columns
    info = json.loads((first / "run.json").read_text())
    assert "weights-inception-2015-12-05" in info["unavailable_metrics"]["inception"]
    assert "**unavailable**: inception: no weights offline" in (first / "report.md").read_text()


def test_a_run_killed_anywhere_resumes_to_the_same_results(runs, tmp_path, capsys):
    """SIGKILL mid-training, mid-sampling, mid-metrics and while writing results; each resume
    continues; an interrupted folder is never reported; the final numbers equal an
    uninterrupted run's (the second fixture run: same config, domain + inception extractors)."""
    first, second, *_ = runs
    cache = tmp_path / "cache"
    cache.mkdir()
    # The domain classifier is not what this test interrupts; train only the two flows again.
    for f in (first.parent / "cache").glob("domain-*.pt"):
        (cache / f.name).write_bytes(f.read_bytes())
    run = tmp_path / "run"
    extractors = ("--set", "metrics.extractors=[domain,inception]")
    kills = ["train:tarflow:15", "sample:biflow:50", "metrics", "write:results"]
    logs = []
    for i, point in enumerate(kills):
        where = ("--out", str(run)) if i == 0 else ("--resume", str(run))
        res = run_smoke(None, cache, *where, *extractors, kill_at=point)
        logs.append(res.stdout)
        assert res.returncode == -9, (point, res.stderr[-2000:])
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "running" and len(info["attempts"]) == i + 1
        assert main(["report", str(run)]) == 2, point
        assert "killed or is still running" in capsys.readouterr().err, point
        if point == "train:tarflow:15":
            assert "resuming" not in res.stdout
            assert list(cache.glob("tarflow-*.train-state.pt"))
    res = run_smoke(None, cache, "--resume", str(run), *extractors)
    assert "[train] tarflow: resuming at step 10" in logs[1]
    assert "sample and score tarflow: kept from an earlier attempt" in logs[2]
    assert "anchors: kept from an earlier attempt" in res.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and len(info["attempts"]) == 5
    (flow,) = [m for m in info["models"].values() if m["kind"] == "tarflow"]
    assert flow["resumed_from_step"] == 10
    assert not list(cache.glob("*.train-state.pt"))

    a, b = pd.read_csv(second / "results.csv"), pd.read_csv(run / "results.csv")
    for col in (
        "method",
        "nfe",
        "params",
        "flops_per_img",
        "fid_domain",
        "is_domain",
        "kid_domain",
    ):
        pd.testing.assert_series_equal(a[col], b[col])
    for name in ("samples_tarflow.png", "samples_tarflow_score.png", "samples_biflow.png"):
        assert (second / name).read_bytes() == (run / name).read_bytes(), name
    from methods.checkpoint import load_payload, tensor_digest

    for kind in ("tarflow", "biflow"):
        (ref,) = (first.parent / "cache").glob(f"{kind}-*.pt")
        got = cache / ref.name  # same config, same cache key
        assert tensor_digest(load_payload(got)["state_dict"]) == tensor_digest(
            load_payload(ref)["state_dict"]
        )


def test_compare_catches_decoding_without_the_kv_cache(runs, tmp_path, capsys):
    """The CI gate's config with a real slowdown (sampling.kv_cache: false recomputes every
    prefix), against the committed CI baseline: `bench compare` fails on the decoding samplers'
    calibrated time per batch and their FLOPs, and on nothing else."""
    first, *_ = runs
    cache = first.parent / "cache"  # configs/ci.yaml's models are the smoke config's
    slow = tmp_path / "slow"
    run_smoke(
        slow,
        cache,
        "--set",
        "sampling.kv_cache=false",
        # Fewer repeats than the gate's own runs: the slowdown (x3.5) dwarfs the noise.
        "--set",
        "eval.latency_repeats=3",
        "--set",
        "eval.throughput_repeats=3",
        config="ci.yaml",
    )
    info = json.loads((slow / "run.json").read_text())
    assert {m["source"] for m in info["models"].values()} == {"cache"}
    code = main(["compare", str(BASELINE), str(slow)])  # python -m bench compare, in-process
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    regressed = {
        tuple(c.strip() for c in line.split("|")[1:3])
        for line in out.out.splitlines()
        if line.startswith("|") and line.split("|")[-2].strip() == "REGRESSED"
    }
    assert ("tarflow", "tput_time_vs_cal") in regressed
    assert ("tarflow", "flops_per_img") in regressed
    assert {m for m, _ in regressed} <= {"tarflow", "tarflow_score"}
    # Recomputing every prefix at the throughput batch also holds larger activations.
    gated = {"latency_b1_vs_cal", "tput_time_vs_cal", "flops_per_img", "peak_mem_mb"}
    assert {k for _, k in regressed} <= gated


VARIANTS = (
    "variants=["
    "{name: jacobi, method: tarflow_jacobi, tables: [main]},"
    "{name: cfg, method: tarflow, tables: [main, guidance],"
    " overrides: {tarflow.num_classes: 10, sampling.guidance: 1.0}},"
    "{name: cond, method: biflow, tables: [guidance],"
    " overrides: {tarflow.num_classes: 10, biflow.guidance_max: 2.0}},"
    "{name: bicfg, method: biflow, tables: [main, guidance],"
    " overrides: {tarflow.num_classes: 10, biflow.guidance_max: 2.0, sampling.guidance: 1.0}}]"
)


def test_variants_and_replicates_run_and_tabulate(runs, tmp_path, capsys):
    """Named variants (Jacobi, class-conditional models with guidance) over 2 replicates, then
    `bench tables`: the counted NFE shows guidance's two passes in TarFlow and one in BiFlow."""
    first, *_ = runs
    cache = first.parent / "cache"  # the classifier and the default flow are reused
    fast = ["eval.memory=false", "eval.sweep_batches=[1]", "metrics.extractors=[domain]"]
    fast += ["eval.num_samples=50", "eval.batch_size=25", "eval.kid_subset=25", "replicates=2"]
    sets = [a for s in ["methods=[tarflow]", VARIANTS, *fast] for a in ("--set", s)]
    run_smoke(tmp_path / "v", cache, *sets)
    t = pd.read_csv(tmp_path / "v" / "results.csv")
    assert len(t) == 2 * 5 + 2 * 2  # 5 samplers and 2 anchors per replicate
    for r in (0, 1):
        rep = t[t.replicate == r].set_index("variant")
        causal = rep.loc["default", "nfe"]
        assert rep.loc["cfg", "nfe"] == 2 * causal  # conditional + unconditional per step
        assert rep.loc["cfg", "sequential_steps"] == causal  # in one batched call
        assert rep.loc["bicfg", "nfe"] == rep.loc["cond", "nfe"] == 1
        assert rep.loc["jacobi", "nfe"] < causal and rep.loc["jacobi", "jacobi_rel_err"] < 0.05
        assert rep.loc["cfg", "conditional"] == "yes" and rep.loc["cfg", "guidance"] == 1.0
    digests = t[t.variant == "default"].images_sha256
    assert digests.nunique() == 2  # replicate 1: other weights and other seeds
    assert main(["tables", str(tmp_path / "v")]) == 0
    text = (tmp_path / "v" / "tables" / "tables.md").read_text()
    # cond vs bicfg: one model, w = 0 and 1
    assert "- `biflow`, guidance training: FID (domain) by w: w=0: " in text
    guidance = pd.read_csv(tmp_path / "v" / "tables" / "guidance.csv")
    assert set(guidance.variant) == {"cfg", "cond", "bicfg"}
    capsys.readouterr()


# The lock and signal tests need a whole run, not its numbers: the cheapest one that measures.
QUICK = tuple(
    arg
    for kv in (
        "metrics.extractors=[domain]",
        "eval.memory=false",
        "eval.num_samples=40",
        "eval.kid_subset=20",
        "eval.batch_size=40",
        "eval.latency_repeats=1",
        "eval.throughput_repeats=1",
        "eval.throughput_batch=8",
        "eval.sweep_batches=[1]",
    )
    for arg in ("--set", kv)
)


def start_smoke(out: Path, cache: Path) -> subprocess.Popen:
    """A smoke run in the background, held (SIGSTOP, by methods.faults) once it has drawn the
    scored images of tarflow: alive, holding its folder, until the test sends SIGCONT."""
    cmd, env = smoke_command(out, cache, *QUICK)
    env["FLOWBENCH_STOP_AT"] = "sample:tarflow:40"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    return proc


def test_a_second_run_into_a_live_runs_folder_is_refused(runs, tmp_path):
    first, *_ = runs
    cache, out = first.parent / "cache", tmp_path / "run"
    live = start_smoke(out, cache)
    cmd, env = smoke_command(out, cache, *QUICK)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    live.send_signal(signal.SIGCONT)
    stdout, stderr = live.communicate(timeout=600)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    lines = second.stderr.strip().splitlines()
    assert lines == [
        f"error: --out {out}: another run (process {live.pid}) is writing this folder; wait "
        "for it to finish or choose another folder"
    ]
    assert live.returncode == 0, stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and len(info["attempts"]) == 1


def test_sigterm_marks_the_run_interrupted_and_it_resumes(runs, tmp_path):
    first, *_ = runs
    cache, out = first.parent / "cache", tmp_path / "run"
    live = start_smoke(out, cache)
    live.send_signal(signal.SIGTERM)  # pending while the run is held, handled once it goes on
    live.send_signal(signal.SIGCONT)
    _, stderr = live.communicate(timeout=300)
    assert live.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and "Terminated: signal SIGTERM" in info["error"]
    run_smoke(None, cache, "--resume", str(out), *QUICK)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# A run while other processes keep every core busy: its timings are within the spread of a
# quiet run's or flagged, in results and report; a contradiction is never left unflagged.
TIMED = {"latency_b1": "latency_b1_vs_cal", "throughput": "tput_time_vs_cal"}
# QUICK with enough repeats to judge the spread by (later --set values win)
SETTINGS = QUICK + tuple(
    arg
    for kv in (
        "eval.latency_repeats=5",
        "eval.throughput_repeats=5",
        "eval.throughput_batch=16",
        "eval.timing_max_s=3",
    )
    for arg in ("--set", kv)
)
HOG = "import time\nend = time.time() + 300\nwhile time.time() < end: pass\n"


@pytest.mark.slow
def test_a_run_on_a_busy_machine_flags_its_timings(runs, tmp_path):
    first, *_ = runs
    cache = first.parent / "cache"  # the models of the end-to-end runs
    run_smoke(tmp_path / "quiet", cache, *SETTINGS)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    try:
        run_smoke(tmp_path / "busy", cache, *SETTINGS)
    finally:
        for h in hogs:
            h.kill()
    quiet = pd.read_csv(tmp_path / "quiet" / "results.csv").dropna(subset=["key"])
    busy = pd.read_csv(tmp_path / "busy" / "results.csv").dropna(subset=["key"])
    quiet, busy = quiet.set_index("key"), busy.set_index("key")
    flagged = 0
    for key in busy.index:
        for timing, ratio in TIMED.items():
            trust = busy.loc[key, f"{timing}_trust"]
            if trust != "ok":
                flagged += 1
                continue
            q = quiet.loc[key]
            tol = max(
                0.25,
                3 * float(q[f"{'latency_iqr_b1' if timing == 'latency_b1' else 'throughput_iqr'}"]),
            )
            assert abs(busy.loc[key, ratio] / q[ratio] - 1) <= tol, (key, timing)
    # a sampler containing another is never reported faster than it without a flag
    t, s = busy.loc["tarflow"], busy.loc["tarflow_score"]
    if s["latency_ms_b1"] < 0.95 * t["latency_ms_b1"]:
        assert s["latency_b1_trust"] != "ok"
    report = (tmp_path / "busy" / "report.md").read_text()
    if flagged:
        assert "**Timing warnings**" in report and "⚠" in report
    shares = pd.read_csv(tmp_path / "busy" / "timing_repeats.csv")["cpu_share"]
    assert shares.min() < 0.75  # the busy loops did take the cores
