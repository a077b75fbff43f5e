"""Every bad config is refused before any work, with one line that names the culprit.

Each case is a config file's text (or bytes, or a path that is not a file) and ``--set``
assignments, run through ``bench run``: exit 2, exactly one ``error: `` line on stderr holding
the expected fragment, no traceback, and nothing written. The runner and the dry run are stubbed
with a function that fails the test, so a config that wrongly passes cannot start a benchmark.
Type, range and finiteness cases are generated from the config dataclasses' fields; the rest
are listed.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from bench import cli
from bench.config import BenchConfig
from methods.registry import sections
from methods.validate import FieldError

BASE = "name: t\n"  # a config that loads: the --set cases override it
FOLDER = object()  # the config path is a folder
TOP = ("threads", "save_every", "replicates", "name", "device", "cache_dir", "methods")


def _sections() -> list[tuple[str, type]]:
    """(name, dataclass) of every config section: BenchConfig's own and the methods'."""
    hints = typing.get_type_hints(BenchConfig)
    own = [(f.name, hints[f.name]) for f in dataclasses.fields(BenchConfig)]
    return [(n, t) for n, t in own if dataclasses.is_dataclass(t)] + list(sections().items())


def _fields() -> list[tuple[str, type]]:
    """(dotted key, type) of every scalar or list field: the top level's, then each section's."""
    hints = typing.get_type_hints(BenchConfig)
    out = [(n, hints[n]) for n in TOP]
    for name, cls in _sections():
        h = typing.get_type_hints(cls)
        out += [(f"{name}.{f.name}", h[f.name]) for f in dataclasses.fields(cls)]
    return out


def _yaml(key: str, value: str) -> str:
    section, _, field = key.rpartition(".")
    return f"{section}:\n  {field}: {value}\n" if section else f"{key}: {value}\n"


# A value of the wrong type for each type, and how the message shows it.
WRONG = {
    int: [("many", "'many' (str)"), ("true", "True (bool)")],
    float: [("fast", "'fast' (str)"), ("false", "False (bool)")],
    str: [("3", "3 (int)"), ("[a]", "['a'] (list)")],
    bool: [("maybe", "'maybe' (str)"), ("1", "1 (int)")],
}
NONFINITE = ((".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"))


def _generated() -> list:
    cases = []
    for i, (key, tp) in enumerate(_fields()):
        name = getattr(tp, "__name__", "tuple")
        for value, shown in WRONG.get(tp, []):
            message = f"{key}: got {shown}; allowed: {name}"
            cases.append(pytest.param(_yaml(key, value), [], message, id=f"{key}={value}"))
        if tp is int:  # every int field is >= 0 or >= 1
            cases.append(pytest.param(_yaml(key, "-1"), [], f"{key}: got -1; allowed: ", id=key))
        if tp is float:  # every float field is >= 0; none may be NaN or infinite
            cases.append(pytest.param(_yaml(key, "-1"), [], f"{key}: got -1.0; allowed: ", id=key))
            for value, shown in NONFINITE:
                message = f"{key}: got {shown}; allowed: a finite number"
                cases.append(pytest.param(_yaml(key, value), [], message, id=f"{key}={value}"))
            value, shown = NONFINITE[i % 3]  # and one of them through --set
            message = f"{key}: got {shown}; allowed: a finite number"
            cases.append(pytest.param(BASE, [f"{key}={value}"], message, id=f"--set {key}"))
        if typing.get_origin(tp) is tuple:
            message = f"{key}: got {{'a': 1}}; allowed: a list"
            cases.append(pytest.param(_yaml(key, "{a: 1}"), [], message, id=f"{key}=mapping"))
    for name, cls in _sections():
        message = f"{name}: got [1]; allowed: a mapping of {cls.__name__} fields"
        cases.append(pytest.param(f"{name}: [1]\n", [], message, id=f"{name}=list"))
    return cases


V = "variants:\n  - name: v\n    method: biflow\n"
LAUGHS = (  # nested aliases: each level 4 times the last (the 518-byte one had 9 levels of 9)
    V + "    overrides:\n      tarflow.width: &a [1, 1, 1, 1]\n      tarflow.depth: &b [*a, *a]\n"
)
DUP = "name: t\neval:\n  seed: 1\ntarflow:\n  width: 32\nclassifier:\n  steps: 3\n\neval: {}\n"
LISTED = [
    # 1. a key given twice
    (DUP, [], "c.yaml: duplicate key 'eval' at lines 2 and 9"),
    ("eval:\n  seed: 1\n  seed: 2\n", [], "c.yaml: duplicate key 'seed' at lines 2 and 3"),
    ("eval: {seed: 1, seed: 2}\n", [], "c.yaml: duplicate key 'seed' at line 1, columns 8 and 17"),
    (V + "    name: w\n", [], "c.yaml: duplicate key 'name' at lines 2 and 4"),
    (V + "    overrides: {eval.seed: 1, eval.seed: 2}\n", [], "c.yaml: duplicate key 'eval.seed'"),
    (BASE, ["eval={seed: 1, seed: 2}"], "--set eval: duplicate key 'seed' at line 1"),
    # 2. non-finite numbers written other ways
    ("tarflow_train:\n  lr: 1.0e+400\n", [], "tarflow_train.lr: got inf; allowed: a finite"),
    ("compare:\n  fid_abs: " + "9" * 400 + "\n", [], "compare.fid_abs: got inf; allowed: a finite"),
    (
        V + "    overrides: {biflow.align_weight: .nan}\n",
        [],
        "variants[0] (v): biflow.align_weight",
    ),
    # 3. anchors, aliases, merge keys, a file too large, nesting too deep
    (LAUGHS, [], "c.yaml: anchor &a: anchors are not allowed at line 5, column 22"),
    ("name: *a\n", [], "c.yaml: alias *a: aliases are not allowed at line 1, column 7"),
    ("eval:\n  <<: {seed: 1}\n", [], "c.yaml: merge keys (<<) are not allowed at line 2"),
    (BASE, ["eval.seed=&a 1"], "--set eval.seed: anchor &a: anchors are not allowed"),
    (BASE, ["eval.seed=*a"], "--set eval.seed: alias *a: aliases are not allowed"),
    (BASE + "#" * 2**20 + "\n", [], "c.yaml: larger than 1 MiB"),
    ("eval: " + "[" * 1000 + "]" * 1000 + "\n", [], "c.yaml: nested deeper than 32 levels"),
    # 4. nothing in the file
    ("", [], "c.yaml: empty config; it must hold at least one section or key"),
    ("# only a comment\n", [], "c.yaml: empty config"),
    ("\n  \n\n", [], "c.yaml: empty config"),
    ("{}\n", [], "c.yaml: empty config"),
    ("---\n", [], "c.yaml: empty config"),
    ("", ["eval.seed=1"], "c.yaml: empty config"),
    # 5. the file itself; run names; sizes beyond memory; a data source without its data
    (b"name: caf\xe9\n", [], "c.yaml: not UTF-8 text (byte 0xe9 at offset 9)"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", [], "c.yaml: a binary file (NUL byte at offset 8)"),
    (FOLDER, [], "config file 'c.yaml' is a folder"),
    ("name: a/b\n", [], "name: got 'a/b'; allowed: letters, digits, _, - and . (1 to 100"),
    ("name: ../../etc\n", [], "name: got '../../etc'"),
    ("name: .hidden\n", [], "name: got '.hidden'"),
    ("name: 'a\\b'\n", [], "name: got 'a\\\\b'"),
    ("name: a b\n", [], "name: got 'a b'"),
    ("name: ''\n", [], "name: got ''"),
    ("name: " + "a" * 101 + "\n", [], "name: got 'aaaa"),
    (BASE, ["name=x/../.."], "name: got 'x/../..'"),
    ("eval:\n  num_samples: 1000001\n", [], "eval.num_samples: got 1000001; allowed: between 2"),
    (BASE, ["eval.throughput_batch=10000000"], "eval.throughput_batch: got 10000000"),
    ("eval:\n  sweep_batches: [1, 2000000]\n", [], "eval.sweep_batches: got [1, 2000000]"),
    ("data:\n  source: folder\n", [], "data.root: got ''; allowed: a path (data.source: folder"),
    ("data:\n  source: torchvision\n  name: CIFAR10\n", [], "data.root: got ''"),
    ("data:\n  source: torchvision\n  root: x\n", [], "data.name: got ''; allowed: a torchvision"),
    (BASE, ["data.source=folder"], "data.root: got ''"),
    # 6. --set
    (BASE, ["eval.seed"], "--set 'eval.seed': expected dotted.key=value"),
    (BASE, ["eval=[1]"], "eval: got [1]; allowed: a mapping of EvalConfig fields"),
    ("eval:\n  seed: 3\n", ["eval.seed.x=1"], "--set eval.seed.x: seed is not a section"),
    (BASE, ["eval.seed="], "eval.seed: got '' (str); allowed: int"),
    (BASE, ["colour=red"], "colour: unknown key; allowed in the top level: name"),
    (BASE, ["eval.seed=many"], "eval.seed: got 'many' (str); allowed: int"),
    (BASE, ["eval.seed=1.5"], "eval.seed: got 1.5 (float); allowed: int"),
    (BASE, ["sampling.kv_cache=maybe"], "sampling.kv_cache: got 'maybe' (str); allowed: bool"),
    (BASE, ["methods=tarflow"], "methods: got 'tarflow'; allowed: a list"),
    (BASE, ["compare.fid_abs=.inf"], "compare.fid_abs: got inf; allowed: a finite number"),
    # zero (or one) where more is needed, and other ranges and choices
    ("tarflow:\n  blocks: 0\n", [], "tarflow.blocks: got 0; allowed: >= 1"),
    ("biflow:\n  depth: 0\n", [], "biflow.depth: got 0; allowed: >= 1"),
    ("tarflow_train:\n  steps: 0\n", [], "tarflow_train.steps: got 0; allowed: >= 1"),
    ("biflow_train:\n  batch_size: 0\n", [], "biflow_train.batch_size: got 0; allowed: >= 1"),
    ("classifier:\n  width: 0\n", [], "classifier.width: got 0; allowed: >= 1"),
    ("eval:\n  latency_repeats: 0\n", [], "eval.latency_repeats: got 0; allowed: >= 1"),
    ("eval:\n  num_samples: 1\n", [], "eval.num_samples: got 1; allowed: between 2"),
    ("eval:\n  sweep_batches: []\n", [], "eval.sweep_batches: got []; allowed: batch sizes"),
    ("eval:\n  sweep_batches: [0]\n", [], "eval.sweep_batches: got [0]; allowed: batch sizes"),
    ("eval:\n  sweep_batches: [a]\n", [], "eval.sweep_batches[0]: got 'a' (str); allowed: int"),
    ("data:\n  holdout: 1\n", [], "data.holdout: got 1; allowed: >= 2"),
    ("metrics:\n  inception_samples: 1\n", [], "metrics.inception_samples: got 1; allowed"),
    ("metrics:\n  extractors: [inception]\n", [], "metrics.extractors: got ['inception']"),
    ("replicates: 0\n", [], "replicates: got 0; allowed: >= 1"),
    ("methods: []\n", [], "methods: got []; allowed: a non-empty list"),
    ("methods: [1]\n", [], "methods[0]: got 1 (int); allowed: str"),
    ("classifier:\n  min_accuracy: 1.5\n", [], "classifier.min_accuracy: got 1.5; allowed: betw"),
    ("tarflow_train:\n  lr: 2\n", [], "tarflow_train.lr: got 2.0; allowed: between 0 and 1"),
    ("sampling:\n  precision: fp16\n", [], "sampling.precision: got 'fp16'; allowed: one of"),
    ("tarflow:\n  clip_mode: tanh\n", [], "tarflow.clip_mode: got 'tanh'; allowed: one of"),
    ("biflow:\n  hidden: heads\n", [], "biflow.hidden: got 'heads'; allowed: one of 'align'"),
    ("biflow:\n  feature_net: vgg\n", [], "biflow.feature_net: got 'vgg'; allowed: one of"),
    ("biflow:\n  adaptive_c: 0\n", [], "biflow.adaptive_c: got 0.0; allowed: >= 1e-12"),
    (
        "biflow:\n  guidance_max: 2\n  label_drop: 0\n",
        [],
        "biflow.label_drop: got 0.0; allowed: strictly between 0 and 1 with guidance_max > 0",
    ),
    ("sampling:\n  guidance_schedule: cosine\n", [], "sampling.guidance_schedule: got 'cosine'"),
    ("sampling:\n  score_guidance: none\n", [], "sampling.score_guidance: got 'none'"),
    ("eval:\n  timing_min_cpu_share: 2\n", [], "eval.timing_min_cpu_share: got 2.0; allowed"),
    ("compare:\n  alpha: 1.5\n", [], "compare.alpha: got 1.5; allowed: between 0 and 1"),
    ("device: cuda:x\n", [], "device: got 'cuda:x'; allowed: cpu, cuda, cuda:N or auto"),
    ("eval:\n  seed: " + "9" * 30 + "\n", [], "eval.seed: got 999999999999999999999999999999"),
    # variants
    ("variants: {}\n", [], "variants: got {}; allowed: a list"),
    ("variants: [3]\n", [], "variants[0]: got 3; allowed: a mapping of VariantConfig fields"),
    (V.replace("name: v", "name: a/b"), [], "variants[0].name: got 'a/b'; allowed: letters"),
    (V.replace("name: v", "name: " + "v" * 101), [], "variants[0].name: got 'vvvv"),
    (V + "    overrides: 5\n", [], "variants[0].overrides: got 5; allowed: a mapping"),
    (V + "    tables: {}\n", [], "variants[0].tables: got {}; allowed: a list"),
    # YAML its constructors cannot build, or that a config never holds
    ("name: 2024-13-45\n", [], "c.yaml: '2024-13-45' is not a valid timestamp"),
    ("eval:\n  seed: !!int abc\n", [], "c.yaml: 'abc' is not a valid int"),
    ("name: !!python/object:os.system x\n", [], "c.yaml: YAML error at line 1, column 7"),
    ("? [a]\n: 1\n", [], "c.yaml: a key must be a plain value at line 1"),
    ("name: a\n---\nname: b\n", [], "c.yaml: YAML syntax error at line 2"),
]


def _listed() -> list:
    return [pytest.param(*case, id=f"listed-{i}") for i, case in enumerate(LISTED)]


def _no_work(*args, **kwargs):
    raise AssertionError("the config was accepted: validation let it through")


def _refused(tmp_path, monkeypatch, capsys, text, overrides, message, dry_run=False) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "run", _no_work)
    monkeypatch.setattr(cli.dryrun, "dry_run", _no_work)
    path = tmp_path / "c.yaml"
    if text is FOLDER:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    sets = [a for o in overrides for a in ("--set", o)]
    code = cli.main(["run", "c.yaml", *sets, *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err
    assert "Traceback" not in out + err and out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]  # no results/, no run folder


@pytest.mark.parametrize(("text", "overrides", "message"), _generated() + _listed())
def test_a_bad_config_is_one_line_and_no_work(
    tmp_path, monkeypatch, capsys, text, overrides, message
):
    _refused(tmp_path, monkeypatch, capsys, text, overrides, message)


@pytest.mark.parametrize(("text", "overrides", "message"), _listed()[::8])
def test_the_dry_run_refuses_them_alike(tmp_path, monkeypatch, capsys, text, overrides, message):
    _refused(tmp_path, monkeypatch, capsys, text, overrides, message, dry_run=True)


@pytest.mark.parametrize(("name", "cls"), _sections())
def test_a_section_built_in_python_refuses_nan_and_inf_too(name, cls):
    """Not only the YAML path: ``dataclasses.replace(cfg.compare, fid_abs=nan)`` is refused by
    the section's own range check, in every float field, ruled or not."""
    hints = typing.get_type_hints(cls)
    for f in (f for f in dataclasses.fields(cls) if hints[f.name] is float):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(FieldError, match=rf"^{f.name}: got {bad}; allowed: a finite"):
                cls(**{f.name: bad})
