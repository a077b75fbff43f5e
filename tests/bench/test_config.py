import pytest

from bench.config import BenchConfig, ConfigError, config_hash, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "tarflow:\n  width: 64\n"), ["eval.num_samples=300"])
    assert cfg.tarflow.width == 64 and cfg.eval.num_samples == 300
    assert cfg.biflow == BenchConfig().biflow


def test_the_shipped_configs_load():
    for path in ("bench.yaml", "configs/smoke.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("tarflow:\n  widht: 64\n", [], "tarflow.widht: unknown key; allowed in tarflow: "),
        ("colour: red\n", [], "colour: unknown key; allowed in the top level: name, device"),
        ("tarflow:\n  width: wide\n", [], "tarflow.width: got 'wide' (str); allowed: int"),
        ("tarflow:\n  width: 1.5\n", [], "tarflow.width: got 1.5 (float); allowed: int"),
        ("", ["tarflow.blocks=0"], "tarflow.blocks: got 0; allowed: >= 1"),
        ("", ["tarflow.width=90", "tarflow.heads=4"], "tarflow.width: got 90; allowed: a multiple"),
        ("", ["tarflow_train.lr=-1"], "tarflow_train.lr: got -1.0; allowed: between 0 and 1"),
        ("", ["data.source=imagenet"], "data.source: got 'imagenet'; allowed: one of 'mnist'"),
        ("", ["device=tpu"], "device: got 'tpu'; allowed: cpu, cuda, cuda:N or auto"),
        ("", ["eval.kid_subset=900"], "eval.kid_subset: got 900; allowed: <= num_samples (500)"),
        ("methods: tarflow\n", [], "methods: got 'tarflow'; allowed: a list"),
        ("tarflow: 3\n", [], "tarflow: got 3; allowed: a mapping of TarFlowConfig fields"),
        ("", ["eval.seed"], "--set 'eval.seed': expected dotted.key=value"),
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
