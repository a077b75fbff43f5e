import pytest

from bench.config import BenchConfig, ConfigError, load_config
from bench.config_file import config_hash

V = "variants:\n  - name: x\n    method: biflow\n"  # one variant; tests append its fields
V_ERR = "variants[0] (x): "
N = "name: t\n"  # the least a config holds: an empty one is refused


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "tarflow:\n  width: 64\n"), ["eval.num_samples=300"])
    assert cfg.tarflow.width == 64 and cfg.eval.num_samples == 300
    assert cfg.biflow == BenchConfig().biflow


def test_the_shipped_configs_load(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "configs").glob("*.yaml")) + [root / "bench.yaml"]:
        assert load_config(path).name, path
    assert "warning" not in capsys.readouterr().err  # none uses a key that moved


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("tarflow:\n  widht: 64\n", [], "tarflow.widht: unknown key; allowed in tarflow: "),
        ("colour: red\n", [], "colour: unknown key; allowed in the top level: name, device"),
        ("tarflow:\n  width: wide\n", [], "tarflow.width: got 'wide' (str); allowed: int"),
        ("tarflow:\n  width: 1.5\n", [], "tarflow.width: got 1.5 (float); allowed: int"),
        (N, ["tarflow.blocks=0"], "tarflow.blocks: got 0; allowed: >= 1"),
        (N, ["tarflow.width=90", "tarflow.heads=4"], "tarflow.width: got 90; allowed: a multiple"),
        (N, ["tarflow_train.lr=-1"], "tarflow_train.lr: got -1.0; allowed: between 0 and 1"),
        (N, ["data.source=imagenet"], "data.source: got 'imagenet'; allowed: one of 'mnist'"),
        (N, ["device=tpu"], "device: got 'tpu'; allowed: cpu, cuda, cuda:N or auto"),
        (N, ["eval.kid_subset=900"], "eval.kid_subset: got 900; allowed: <= num_samples (500)"),
        ("methods: tarflow\n", [], "methods: got 'tarflow'; allowed: a list"),
        ("tarflow: 3\n", [], "tarflow: got 3; allowed: a mapping of TarFlowConfig fields"),
        (N, ["eval.seed"], "--set 'eval.seed': expected dotted.key=value"),
        (N, ["replicates=0"], "replicates: got 0; allowed: >= 1"),
        (V + "    overrides: {biflow.align_weight: -1}\n", [], V_ERR + "biflow.align_weight: got"),
        (V + "    overrides: {eval.seed: 3}\n", [], "overrides: got 'eval.seed'; allowed: dotted"),
        (V + "    overrides: {tarflow.widht: 3}\n", [], V_ERR + "tarflow.widht: unknown key"),
        (V + "    tables: [main, misc]\n", [], "tables: got ['main', 'misc']; allowed: a list"),
        (V.replace("name: x", "name: biflow"), [], "variants: got ['biflow']; allowed: names"),
        (V.replace("name: x", "name: a b"), [], "name: got 'a b'; allowed: letters"),
    ],
)
def test_bad_config_names_key_value_and_what_is_allowed(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), overrides)
    assert message in str(e.value)


def test_missing_file_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line 3"):
        load_config(write(tmp_path, "tarflow:\n  width: [1, 2\n"))


def test_hash_is_stable_and_sensitive():
    a, b = BenchConfig(), BenchConfig()
    assert config_hash(a.tarflow) == config_hash(b.tarflow)
    c = load_config(None, ["tarflow.noise_std=0.2"])
    assert config_hash(a.tarflow) != config_hash(c.tarflow)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{sampling.guidance: 1.0}", "x: sampling.guidance: got 1.0; classifier-free guidance"),
        (
            "{sampling.guidance: 3.0, tarflow.num_classes: 10, biflow.guidance_max: 2.0}",
            "x: sampling.guidance: got 3.0; the reverse model learns guidance scales up to",
        ),
    ],
)
def test_guidance_the_models_cannot_honour_is_refused_before_training(
    tmp_path, capsys, overrides, message
):
    from bench.cli import main

    path = write(tmp_path, V + f"    overrides: {overrides}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_moved_key_is_read_at_its_new_place_with_a_warning(tmp_path, capsys):
    cfg = load_config(write(tmp_path, "sampling:\n  jacobi_tol: 0.01\n"))
    assert cfg.jacobi.tol == 0.01
    assert "warning: sampling.jacobi_tol is now jacobi.tol" in capsys.readouterr().err


def test_the_field_that_holds_the_method_sections_is_not_a_key(tmp_path):
    with pytest.raises(ConfigError, match="sections: unknown key; allowed in the top level"):
        load_config(write(tmp_path, "sections: {jacobi: {tol: 1.0}}\njacobi: {tol: 0.5}\n"))


def test_a_method_section_cannot_hide_a_field_of_the_config():
    from dataclasses import dataclass

    from methods.registry import _SECTIONS, register_section

    @dataclass(frozen=True)
    class Options:
        tol: float = 1.0

    register_section("eval", Options)  # a sampler naming its own section "eval"
    try:
        with pytest.raises(TypeError, match=r"sections \['eval'\] would hide"):
            BenchConfig()
    finally:
        del _SECTIONS["eval"]
