"""The one reader of a finished run folder (run.json + results.csv [+ sweep.csv]).

Every command that reads a run's numbers (``bench report``, ``tables``, ``compare``,
``stability``, the figures) goes through ``load_run``; it alone decides that a folder holds a
finished, readable run, and raises ``IncompleteRunError`` saying why not. Rows are matched
across runs by ``ROW_KEY``; tables from before variants and replicates get variant "default"
and replicate 0 here, once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROW_KEY = ("method", "variant", "replicate")  # one results row; unique within a run
VARIANT_KEY = ROW_KEY[:-1]  # what replicates repeat: tables aggregate over the rest
FILLED = {"variant": "default", "replicate": 0}  # for tables from before variants/replicates
# run.json's records that the readers index into: a JSON object (or null) where present
OBJECTS = ("config", "dataset", "environment", "models", "stages", "unavailable_metrics")
SWEEP = ("method", "batch", "ms_per_img", "speedup_vs_tarflow")  # what the figures read
WHY = {
    "running": "the run was killed or is still running",
    "interrupted": "the run was interrupted",
}


class IncompleteRunError(ValueError):
    """The folder (or results file) holds no finished, readable run: its numbers must not be
    reported or compared. The message says what is missing and how to finish the run."""


@dataclass(frozen=True, eq=False)
class Run:
    """A finished run as read from its folder, or a bare results table (``dir`` None)."""

    source: Path  # the run folder, or the results .csv/.parquet file
    dir: Path | None  # the run folder; None for a bare results file
    info: dict  # run.json ({} for a bare results file)
    results: pd.DataFrame  # results.csv: one row per ROW_KEY
    sweep: pd.DataFrame  # sweep.csv: one row per (sampler entry, batch); empty if absent

    @property
    def config(self) -> dict:
        """The run's resolved config ({} for a bare results file)."""
        return self.info.get("config") or {}


def load_run(path: Path, need: Sequence[str] = ()) -> Run:
    """The finished run in folder ``path``; ``need``: results columns the caller reads beyond
    the row key. Anything else (no folder, no or torn run.json, a run still running,
    interrupted or failed, a missing or unreadable results.csv, missing columns, two rows of
    one key) raises IncompleteRunError."""
    path = Path(path)
    if not path.exists():
        raise IncompleteRunError(f"{path}: not a run folder (no such file or folder)")
    if not path.is_dir():
        raise IncompleteRunError(
            f"{path}: not a run folder (a file; a run folder holds results.csv and run.json)"
        )
    info = _info(path)
    file = path / "results.csv"
    if not file.is_file():
        raise IncompleteRunError(f"{file}: no such file, though run.json says the run finished")
    sweep = path / "sweep.csv"
    swept = _read(sweep) if sweep.is_file() else pd.DataFrame()
    if missing := [c for c in SWEEP if not swept.empty and c not in swept.columns]:
        raise IncompleteRunError(f"{sweep}: no column {', '.join(map(repr, missing))}")
    return Run(path, path, info, _results(file, need), swept)


def load_results(path: Path, need: Sequence[str] = ()) -> Run:
    """A finished run folder (as ``load_run``) or a bare results .csv/.parquet file."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        return load_run(path, need)
    if path.suffix not in (".csv", ".parquet"):
        raise IncompleteRunError(f"{path}: expected a run folder, a .csv or a .parquet file")
    return Run(path, None, {}, _results(path, need), pd.DataFrame())


def entry_names(results: pd.DataFrame) -> pd.Series:
    """Each row's entry name, as sweep.csv and the sample grids name it: the ``key`` column
    (e.g. ``biflow_cfg.r1``) where the run wrote one, else the method."""
    if "key" not in results.columns:
        return results["method"]
    return results["key"].fillna(results["method"])


def _info(run_dir: Path) -> dict:
    """run.json of a finished run."""
    path = run_dir / "run.json"
    if not path.is_file():
        have = "results.csv but no run.json" if (run_dir / "results.csv").is_file() else None
        raise IncompleteRunError(
            f"{run_dir}: not a run folder ({have or 'no results.csv and run.json'})"
        )
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise IncompleteRunError(f"{path}: unreadable ({e})") from None
    if not isinstance(info, dict):
        raise IncompleteRunError(
            f"{path}: holds a JSON {json_kind(info)}, not a run's record (a JSON object)"
        )
    for key in OBJECTS:
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise IncompleteRunError(
                f"{path}: {key!r} is a JSON {json_kind(info[key])}, not an object"
            )
    status = info.get("status")
    if status != "complete":
        why = WHY.get(status, f"unknown status {status!r}")
        if status == "failed":
            why = f"the run failed: {info.get('error', '?')}"
        raise IncompleteRunError(
            f"{run_dir}: the run is not complete: status {status!r} ({why}); finish it with "
            f"python -m bench run CONFIG --resume {run_dir}"
        )
    return info


def json_kind(value: object) -> str:
    """What JSON calls the type of a parsed value."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    names[type(None)] = "null"
    return names.get(type(value), type(value).__name__)


def _read(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
    except (ValueError, OSError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        why = " ".join(str(e).split())[:200]  # one line: pandas' C parser ends in a newline
        raise IncompleteRunError(f"{file}: unreadable ({why})") from None


def _results(file: Path, need: Sequence[str]) -> pd.DataFrame:
    """The results table with the row key complete and unique, and the ``need``ed columns."""
    table = _read(file)
    if "method" not in table.columns:
        raise IncompleteRunError(f"{file}: not a flowbench results table (no column 'method')")
    if table.empty:
        raise IncompleteRunError(f"{file}: no rows, only a header")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise IncompleteRunError(
            f"{file}: no column {', '.join(map(repr, missing))} (a run from an older version, "
            f"before variants and replicates?); rerun it with this version"
        )
    for column, value in FILLED.items():
        table[column] = table[column].fillna(value) if column in table.columns else value
    try:
        table["replicate"] = table["replicate"].astype(int)
    except (ValueError, TypeError):
        raise IncompleteRunError(f"{file}: column 'replicate' holds non-integers") from None
    dup = table[table.duplicated(list(ROW_KEY), keep=False)]
    if len(dup):
        first = ", ".join(str(v) for v in dup.iloc[0][list(ROW_KEY)])
        raise IncompleteRunError(
            f"{file}: more than one row for the same (method, variant, replicate): "
            f"{len(dup)} rows, e.g. ({first})"
        )
    return table
