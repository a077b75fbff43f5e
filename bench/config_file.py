"""Reading a config's YAML, from a file or a ``--set`` value: one line for whatever makes it
unusable, never a traceback.

PyYAML's SafeLoader lets through what a config must not hold: a key given twice (the later one
silently won), anchors and aliases (nested aliases expand exponentially: 518 bytes exhausted the
memory), merge keys (they need aliases), nesting deep enough to overflow the composer's recursion,
and values its constructors fail on with a bare ValueError (``!!int x``, the date 2024-13-45).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from methods.validate import shown

MAX_BYTES = 1 << 20  # 1 MiB: the largest shipped config is ~5 KiB
MAX_DEPTH = 32  # mappings and lists inside each other (a config needs 4)
MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(ValueError):
    """A config (file, ``--set``, variant override) that cannot be used; the message is one
    line naming the key, the value and what is allowed."""


class _Refused(Exception):
    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _both(a: yaml.Mark, b: yaml.Mark) -> str:
    if a.line == b.line:  # a flow mapping: {seed: 1, seed: 2}
        return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    return f"lines {a.line + 1} and {b.line + 1}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, anchors, aliases, merge keys and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"alias *{event.anchor}: aliases are not allowed", event.start_mark)
        if getattr(event, "anchor", None):
            raise _Refused(f"anchor &{event.anchor}: anchors are not allowed", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # !!int x, !!float x, 2024-13-45
            tag = node.tag.rsplit(":", 1)[-1]
            raise _Refused(
                f"{shown(node.value)} is not a valid {tag}: {e}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Mark] = {}  # key -> where it first appeared
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                raise _Refused("merge keys (<<) are not allowed", key_node.start_mark)
            key, mark = self.construct_object(key_node, deep=True), key_node.start_mark
            try:
                seen = first.get(key)
            except TypeError:  # a list or mapping as a key
                raise _Refused("a key must be a plain value", mark) from None
            if seen:
                raise _Refused(f"duplicate key {shown(key)} at {_both(seen, mark)}")
            first[key] = mark
        return super().construct_mapping(node, deep)


def parse(text: str, where: str, text_on_syntax_error: bool = False) -> Any:
    """``text`` read as YAML by the strict loader; ``where`` (the file, or ``--set key``) starts
    every message. ``text_on_syntax_error``: text that is not YAML is returned as the string
    itself (a ``--set`` value), while what the loader refuses is still an error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except _Refused as e:
        raise ConfigError(f"{where}: {e.problem}{_at(e.mark)}") from None
    except yaml.YAMLError as e:
        if text_on_syntax_error:
            return text
        at = _at(getattr(e, "problem_mark", None))
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = (
            "YAML error"
            if isinstance(e, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise ConfigError(f"{where}: {kind}{at}: {problem}") from None


def read(path: Path) -> dict[str, Any]:
    """The top-level mapping of the config file ``path``: a regular UTF-8 file of at most
    :data:`MAX_BYTES` that holds at least one key."""
    name = repr(str(path))
    if path.is_dir():
        raise ConfigError(f"config file {name} is a folder; give the YAML file inside it")
    if not path.exists():
        raise ConfigError(f"config file {name} does not exist")
    if not path.is_file():  # a FIFO or a device such as /dev/zero
        raise ConfigError(f"config file {name} is not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file {name}: cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // 2**20} MiB; a config is a few KiB")
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file (NUL byte at offset {data.index(0)}), not YAML")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    raw = parse(text, str(path))
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: empty config; it must hold at least one section or key")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return raw


# Keys that moved to a method's own section: read at their new place, with one warning line.
MOVED = {f"sampling.jacobi_{k}": f"jacobi.{k}" for k in ("tol", "max_iters", "segment")}


def moved_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every key of :data:`MOVED` at its new place (an old config still runs)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, new in MOVED.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if isinstance(out.get(osec), dict) and okey in out[osec]:
            value = out[osec].pop(okey)
            if isinstance(out.setdefault(nsec, {}), dict):
                out[nsec].setdefault(nkey, value)
            print(f"warning: {old} is now {new}; read as {new}", file=sys.stderr, flush=True)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config dataclass (tuples become lists); a BenchConfig's method
    sections at the top level, where the YAML has them."""
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if "sections" in out:  # a BenchConfig
        flat: dict[str, Any] = {}
        for k, v in out.items():
            flat.update(v if k == "sections" else {k: v})
        out = flat
    return out


def config_hash(*parts: Any) -> str:
    """Stable 12-hex digest of config dataclasses/dicts: keys a checkpoint cache entry."""
    blob = json.dumps(
        [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
