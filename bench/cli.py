"""Command line: ``python -m bench run CONFIG [--out DIR | --resume DIR] [--set key=value ...]
[--retrain | --dry-run]`` and ``python -m bench report RUN_DIR...``."""

from __future__ import annotations

import argparse
import os
import select
import sys
from pathlib import Path

from bench import dryrun, dryrun_render, export, plots, tables
from bench.compare import CompareError, compare, load_results, render, thresholds
from bench.config import EXTRACTORS, ConfigError, load_config, variant_config
from bench.data import DataError
from bench.featcache import CacheIntegrityError
from bench.report import render_many, write
from bench.runfolder import IncompleteRunError
from bench.runner import BenchError, run
from bench.stability import stability
from bench.variants import check_choices, entries
from methods.atomic import WriteError, write_text
from methods.checkpoint import CheckpointError
from methods.registry import UnknownMethodError
from methods.training import NonFiniteLossError

# Errors that are the user's input, not a bug: one line and exit 2, never a traceback.
USER_ERRORS = (
    ConfigError,
    DataError,
    CheckpointError,
    CacheIntegrityError,
    CompareError,
    IncompleteRunError,
    UnknownMethodError,
    NonFiniteLossError,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train or load every model, sample, measure, report")
    r.add_argument("config", type=Path, help="YAML config, e.g. bench.yaml")
    r.add_argument("--out", type=Path, default=None, help="run folder (default results/NAME-TIME)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set eval.num_samples=1000",
    )
    r.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="finish an interrupted run: resume training, keep finished stages",
    )
    r.add_argument("--retrain", action="store_true", help="ignore the checkpoint cache")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="build the models, print parameters and FLOPs per image, run one training step and "
        "one sampling call on CPU, and exit; writes nothing",
    )
    c = sub.add_parser(
        "compare",
        help="compare two runs metric by metric; exit 1 on a regression, 2 on unusable input",
    )
    c.add_argument("baseline", type=Path, help="run folder, or results .csv/.parquet")
    c.add_argument("new", type=Path, help="run folder, or results .csv/.parquet")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="compare.FIELD=VALUE",
        help="override a threshold, e.g. --set compare.timing_rel=0.5",
    )
    c.add_argument("--out", type=Path, default=None, help="also write the table here")
    st = sub.add_parser("stability", help="run a config K times; measure each number's spread")
    st.add_argument("config", type=Path)
    st.add_argument("-k", type=int, default=5, help="how many runs (default 5)")
    st.add_argument("--out", type=Path, required=True, help="folder for the runs and tables")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rep = sub.add_parser(
        "report", help="regenerate report.md from a run folder; several folders: one table"
    )
    rep.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    rep.add_argument(
        "--out", type=Path, default=None, help="write here instead of RUN_DIR/report.md"
    )
    tab = sub.add_parser(
        "tables", help="paper-style tables (main, reverse, denoise, ablations) from a run folder"
    )
    tab.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    tab.add_argument(
        "--out", type=Path, default=None, help="folder for the tables (default RUN_DIR/tables)"
    )
    _export_parsers(sub)
    return p


def _export_parsers(sub) -> None:
    """`bench sample` and `bench refstats`: files that outside evaluators read."""
    sa = sub.add_parser(
        "sample", help="draw one sampler's images into an ADM-style .npz or a PNG folder"
    )
    sa.add_argument("config", type=Path, nargs="?", help="YAML config (or give --run)")
    sa.add_argument("--run", type=Path, default=None, metavar="RUN_DIR", help="a finished run")
    sa.add_argument("--method", required=True, metavar="KEY", help="the sampler's entry key")
    sa.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sa.add_argument("--num", type=int, default=None, help="images (default eval.num_samples)")
    sa.add_argument("--seed", type=int, default=None, help="image i from seed S + i")
    sa.add_argument("--batch-size", type=int, default=None, help="default eval.batch_size")
    sa.add_argument("--format", choices=export.FORMATS, default="npz")
    sa.add_argument("--rgb", action="store_true", help="grey images as 3 equal channels")
    sa.add_argument("--out", type=Path, required=True, help="the .npz file or PNG folder")
    rs = sub.add_parser(
        "refstats", help="write reference statistics (mu, sigma) and images as an ADM .npz"
    )
    rs.add_argument("config", type=Path, nargs="?", help="YAML config (or give --run)")
    rs.add_argument("--run", type=Path, default=None, metavar="RUN_DIR", help="a finished run")
    rs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rs.add_argument("--extractor", choices=EXTRACTORS, default="inception_offline")
    rs.add_argument("--num", type=int, default=None, help="reference images (default: a run's)")
    rs.add_argument("--images-only", action="store_true", help="arr_0 only, no mu/sigma")
    rs.add_argument("--out", type=Path, required=True, help="the .npz file")


def _dry_run(cfg, args: argparse.Namespace) -> int:
    given = [f for f, v in (("--out", args.out), ("--resume", args.resume)) if v is not None]
    if args.retrain:
        given.append("--retrain")
    if given:
        raise ConfigError(f"--dry-run writes and keeps nothing: drop {', '.join(given)}")
    check_choices(entries(cfg))
    # `methods` with the run's config, then every variant with its own (variants.entries).
    configs = [("", cfg)] if cfg.methods else []
    configs += [(f"variant {v.name}: ", variant_config(cfg, i)) for i, v in enumerate(cfg.variants)]
    ok = True
    for title, c in configs:
        result = dryrun.dry_run(c, args.config)
        if title:
            _out(f"\n## {title}{', '.join(c.methods)}")
        _out(dryrun_render.render(result))
        for problem in result.problems():
            print(f"error: {title}{problem}", file=sys.stderr)
        ok = ok and result.ok
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            if args.dry_run:
                return _dry_run(cfg, args)
            if args.resume is not None and args.out is not None:
                raise ConfigError("--out and --resume: give one (--resume names the run folder)")
            run(cfg, args.config, args.out, args.retrain, args.resume)
        elif args.command == "compare":
            base, new = load_results(args.baseline), load_results(args.new)
            th = thresholds(new, args.overrides)
            table, regressed = compare(base, new, th)
            text = render(table, base, new, th)
            if args.out:
                write_text(args.out, text)
            _out(text)
            return 1 if regressed else 0
        elif args.command == "stability":
            if args.k < 2:
                raise ConfigError(f"-k: got {args.k}; allowed: >= 2 runs")
            cfg = load_config(args.config, args.overrides)
            stability(cfg, args.config, args.out, args.k)
        elif args.command == "report":
            if len(args.run_dirs) == 1:  # report.md; figures only where the folder lacks them
                plots.write_figures(args.run_dirs[0], missing_only=True)
                _out(write(args.run_dirs[0], args.out))
            else:
                text = render_many(args.run_dirs)
                if args.out:
                    write_text(args.out, text)
                _out(text)
        elif args.command == "tables":
            _out(tables.write(args.run_dir, args.out))
        elif args.command == "sample":
            if (path := export.sample_command(args)) is not None:
                _out(f"[bench] wrote {path}")
        elif args.command == "refstats":
            _out(f"[bench] wrote {export.refstats_command(args)}")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BenchError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"error: cannot write {e.filename}: permission denied", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe: a bug to show, not a reader that left
        _drop_stdout()  # the progress of `run`/`stability` went to a reader that left
        print(
            f"error: standard output closed before `bench {args.command}` finished; it "
            "stopped there",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _out(text: str) -> None:
    """Print a command's output. A reader that leaves early (``bench compare A B | head``) ends
    the printing, not the command: the rest goes to /dev/null, the command's exit code stays
    its own (compare: 0 or 1 by its verdict, which is known before anything is printed)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _drop_stdout()


def _drop_stdout() -> None:
    """Point stdout at /dev/null: later prints, and the interpreter's last flush of what the
    closed pipe did not take, go nowhere instead of raising again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a captured stream): replace the object
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the rest of the process)
    finally:
        os.close(devnull)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no file descriptor
        return False
