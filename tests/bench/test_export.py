"""Sample export (bench/export.py): the ADM .npz layout, PNG folders, the seeds file, resume,
batch-size independence, torchrun shards, and a run's scored images (eval.export) from which
torch-fidelity recomputes the run's FID."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch_fidelity
from PIL import Image

from bench import data, export
from bench.cli import main
from bench.config import load_config
from bench.config_file import config_hash, to_dict
from bench.metrics import DOMAIN, ImageTensorDataset
from bench.scoring import score_sampler, scored_seeds
from methods.base import labels_for_seeds
from methods.registry import register, unregister
from tests.bench.test_runner import LinearNoise

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
CPU = torch.device("cpu")
SEEDS = list(range(7, 7 + 10))
RECORD = {"sampler": "linear_noise", "config_digest": "d", "git_commit": "c"}


@pytest.fixture
def linear_noise():
    register("linear_noise")(LinearNoise)
    yield "linear_noise"
    unregister("linear_noise")


class Conditional(LinearNoise):
    def num_classes(self) -> int:
        return 10


class Counting(LinearNoise):
    """LinearNoise that counts its sample calls and can fail at the n-th (an interruption)."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__(CPU)
        self.calls, self.fail_at = 0, fail_at

    def sample(self, seeds, batch_size, on_batch=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return super().sample(seeds, batch_size, on_batch)


def reference(sampler=None) -> torch.Tensor:
    """The images of SEEDS drawn in one call, uint8 (N, C, H, W)."""
    return (sampler or LinearNoise(CPU)).sample(SEEDS, len(SEEDS)).images


def test_the_npz_has_the_adm_layout(tmp_path):
    path = export.export(LinearNoise(CPU), SEEDS, 4, export.Target(tmp_path / "s.npz"), RECORD, CPU)
    with np.load(path, allow_pickle=False) as z:
        assert z.files == ["arr_0"]  # an unconditional sampler: no labels
        a = z["arr_0"]
    assert a.dtype == np.uint8 and a.shape == (10, 28, 28, 1)  # (N, H, W, C): channels last
    assert (a == reference().permute(0, 2, 3, 1).numpy()).all()
    rgb = export.export(
        LinearNoise(CPU), SEEDS, 4, export.Target(tmp_path / "rgb.npz", rgb=True), RECORD, CPU
    )
    with np.load(rgb) as z:
        assert z["arr_0"].shape == (10, 28, 28, 3)
        assert (z["arr_0"] == a).all()  # three equal channels


def test_a_class_conditional_sampler_writes_its_labels_as_arr_1(tmp_path):
    path = export.export(Conditional(CPU), SEEDS, 3, export.Target(tmp_path / "c.npz"), RECORD, CPU)
    with np.load(path) as z:
        assert z.files == ["arr_0", "arr_1"]
        labels = z["arr_1"]
    assert labels.dtype == np.int64 and labels.shape == (10,)
    assert (labels == labels_for_seeds(SEEDS, 10).numpy()).all()
    assert labels.tolist() == [s % 10 for s in SEEDS]


def test_a_png_folder_reads_back_as_the_images(tmp_path, capsys):
    folder = export.export(
        LinearNoise(CPU), SEEDS, 4, export.Target(tmp_path / "png", "png"), RECORD, CPU
    )
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    images = reference()
    for i, f in enumerate(files):
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (28, 28)
            assert (np.asarray(im) == images[i, 0].numpy()).all()
    assert (folder / "seeds.json").is_file()
    again = export.export(  # an earlier export in the folder is replaced
        LinearNoise(CPU), SEEDS[:3], 4, export.Target(folder, "png"), RECORD, CPU
    )
    assert len(list(again.glob("*.png"))) == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    args = ["sample", str(SMOKE), "--method", "tarflow", "--format", "png"]
    assert main([*args, "--out", str(tmp_path / "mine")]) == 2  # refused before any model
    assert "a folder that holds no export" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "kept"


def test_the_seeds_file_names_sampler_config_seeds_batch_and_commit(tmp_path):
    cfg = load_config(SMOKE)
    record = export.provenance("linear_noise", cfg, "abc123")
    target = export.Target(tmp_path / "s.npz")
    export.export(LinearNoise(CPU), SEEDS, 4, target, record, CPU)
    assert target.seeds_file == tmp_path / "s.seeds.json"
    got = json.loads(target.seeds_file.read_text())
    assert got["sampler"] == "linear_noise" and got["git_commit"] == "abc123"
    assert got["config_digest"] == config_hash(to_dict(cfg))
    assert got["seeds"] == SEEDS and got["num"] == 10 and got["batch_size"] == 4
    assert got["format"] == "npz" and got["shape"] == [10, 28, 28, 1]


def test_an_interrupted_export_reuses_its_finished_batches(tmp_path):
    target = export.Target(tmp_path / "s.npz")
    first = Counting(fail_at=3)  # interrupted while drawing the third of 4 batches
    with pytest.raises(KeyboardInterrupt):
        export.export(first, SEEDS, 3, target, RECORD, CPU)
    assert not target.path.exists() and len(list(target.work.iterdir())) == 2
    second = Counting()
    export.export(second, SEEDS, 3, target, RECORD, CPU)
    assert second.calls == 2  # batches 3 and 4 only
    assert not target.work.exists()  # removed once the file is written
    with np.load(target.path) as z:
        assert (z["arr_0"] == reference().permute(0, 2, 3, 1).numpy()).all()
    # batches of another export (other seeds) are never taken for this one's
    third = Counting(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        export.export(third, SEEDS, 3, target, RECORD, CPU)
    fourth = Counting()
    export.export(fourth, [s + 1 for s in SEEDS], 3, target, RECORD, CPU)
    assert fourth.calls == 4


def test_an_export_killed_mid_way_continues_where_it_stopped(tmp_path):
    """SIGKILL at a kill point (methods.faults) after the second batch, then the same call."""
    code = (
        "import sys, torch; from pathlib import Path; from bench import export; "
        "from tests.bench.test_export import Counting, SEEDS, RECORD; s = Counting(); "
        f"export.export(s, SEEDS, 3, export.Target(Path({str(tmp_path)!r}) / 's.npz'), RECORD, "
        "torch.device('cpu')); print('calls', s.calls)"
    )
    env = {**os.environ, "FLOWBENCH_KILL_AT": "export:6"}
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True)
    assert killed.returncode == -9 and not (tmp_path / "s.npz").exists()
    env.pop("FLOWBENCH_KILL_AT")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0 and b"calls 2" in done.stdout, done.stderr[-500:]
    with np.load(tmp_path / "s.npz") as z:
        assert (z["arr_0"] == reference().permute(0, 2, 3, 1).numpy()).all()


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_batch_size_1_and_n_give_identical_files(tmp_path, fmt):
    a = export.export(LinearNoise(CPU), SEEDS, 1, export.Target(tmp_path / "a", fmt), RECORD, CPU)
    b = export.export(LinearNoise(CPU), SEEDS, 10, export.Target(tmp_path / "b", fmt), RECORD, CPU)
    if fmt == "npz":
        assert a.read_bytes() == b.read_bytes()
    else:
        names = sorted(p.name for p in a.glob("*.png"))
        assert names == sorted(p.name for p in b.glob("*.png")) and len(names) == 10
        assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_torchrun_ranks_draw_the_images_of_one_process(tmp_path, monkeypatch):
    from methods import dist

    parts = []
    for r in range(3):  # 4 batches of 3 over 3 ranks: 2, 2 and none
        monkeypatch.setattr(dist, "world", lambda: 3)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        parts.append(export._draw(LinearNoise(CPU), SEEDS, 3, tmp_path / f"w{r}", "d", None))
    assert [len(p) for p in parts] == [6, 4, 0]
    assert torch.equal(torch.cat(parts), reference())


class NoScores:
    unavailable: dict = {}

    def score(self, images):
        return {"fid_domain": float(images.float().mean())}


@pytest.mark.parametrize("fmt", ["", "npz", "png"])
def test_eval_export_writes_the_scored_images_and_changes_no_number(tmp_path, fmt):
    cfg = load_config(SMOKE, [f"eval.export={fmt}"] if fmt else [])
    seeds, s = scored_seeds(cfg), LinearNoise(CPU)
    row = score_sampler("lin", s, cfg, seeds, CPU, tmp_path, NoScores())
    off = score_sampler("lin", s, load_config(SMOKE), seeds, CPU, tmp_path / "off", NoScores())
    drop = ("sample_wall_s",)  # a timing
    assert {k: v for k, v in row.items() if k not in drop} == {
        k: v for k, v in off.items() if k not in drop
    }
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "off")
    expected = {
        "": ["samples_lin.png"],
        "npz": ["samples_lin.npz", "samples_lin.png", "samples_lin.seeds.json"],
        "png": ["samples_lin", "samples_lin.png"],
    }[fmt]
    assert written == expected
    if fmt == "npz":
        with np.load(tmp_path / "samples_lin.npz") as z:
            images = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2)
        assert torch.equal(images, s.sample(seeds, 50).images)
        assert json.loads((tmp_path / "samples_lin.seeds.json").read_text())["seeds"] == seeds


def test_bench_sample_refuses_a_model_that_is_not_cached(tmp_path, capsys):
    args = ["sample", str(SMOKE), "--method", "tarflow", "--out", str(tmp_path / "s.npz")]
    assert main([*args, "--set", f"cache_dir={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "never trains" in err, err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_fid_recomputed_from_a_runs_exported_npz_equals_its_fid_domain(tmp_path):
    """A real (smoke-sized) tarflow: digits, whose FID moves when the images do."""
    out, key = tmp_path / "run", "tarflow"
    args = ["run", str(SMOKE), "--out", str(out)]
    for s in (
        f"methods=[{key}]",
        f"cache_dir={tmp_path / 'cache'}",
        f"metrics.stats_cache={tmp_path / 'stats'}",
        "metrics.extractors=[domain]",
        "eval.memory=false",
        "eval.export=npz",
    ):
        args += ["--set", s]
    assert main(args) == 0
    fid = pd.read_csv(out / "results.csv").set_index("method").loc[key, "fid_domain"]
    with np.load(out / f"samples_{key}.npz") as z:
        generated = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).contiguous()
    cfg = load_config(out / "config.yaml")
    ref = data.load(cfg.data, ROOT / "configs").reference
    models = json.loads((out / "run.json").read_text())["models"]

    def fid_of(images: torch.Tensor) -> float:  # torch-fidelity itself, no flowbench code
        return torch_fidelity.calculate_metrics(
            input1=ImageTensorDataset(images),
            input2=ImageTensorDataset(ref),
            feature_extractor=DOMAIN,
            feature_extractor_weights_path=models["domain_classifier"]["checkpoint"],
            fid=True,
            cuda=False,
            batch_size=64,
            save_cpu_ram=True,
            cache=False,
            verbose=False,
        )["frechet_inception_distance"]

    assert fid_of(generated) == pytest.approx(fid, rel=1e-3)
    # bench sample --run draws the same images again, from the run folder and the cache alone
    again = tmp_path / "again.npz"
    assert main(["sample", "--run", str(out), "--method", key, "--out", str(again)]) == 0
    with np.load(again) as z:
        assert torch.equal(torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2), generated)
    ran = json.loads((out / f"samples_{key}.seeds.json").read_text())
    drawn = json.loads(again.with_suffix(".seeds.json").read_text())
    assert ran["seeds"] == drawn["seeds"] == scored_seeds(cfg)
    assert ran["config_digest"] == drawn["config_digest"]
    # ... and as a PNG folder, whose files read back by PIL give the same FID
    folder = tmp_path / "pngs"
    assert (
        main(
            ["sample", "--run", str(out), "--method", key, "--format", "png", "--out", str(folder)]
        )
        == 0
    )
    files = sorted(folder.glob("*.png"))
    pngs = torch.stack([torch.from_numpy(np.array(Image.open(f)))[None] for f in files])
    assert len(files) == len(generated) and torch.equal(pngs, generated)
    assert fid_of(pngs) == pytest.approx(fid, rel=1e-3)


def test_eval_export_takes_only_the_formats():
    from bench.config import ConfigError

    assert load_config(SMOKE).eval.export == ""  # off by default
    with pytest.raises(ConfigError, match=r"eval.export: got 'zip'; allowed: one of '', 'npz'"):
        load_config(SMOKE, ["eval.export=zip"])


def _sample_args(out: Path) -> list[str]:
    """bench sample of the test sampler from the smoke config: 10 images in batches of 3."""
    sets = ["--set", "methods=[linear_noise]"]
    return ["sample", str(SMOKE), "--method", "linear_noise", *sets, "--num", "10", "--seed", "3",
            "--batch-size", "3", "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_bench_sample_on_two_torchrun_processes_writes_one_processs_file(tmp_path, linear_noise):
    assert main(_sample_args(tmp_path / "one.npz")) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.bench.test_export", str(tmp_path / "two.npz")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert not export.Target(tmp_path / "two.npz").work.exists()


if __name__ == "__main__":  # one torchrun rank of the test above
    register("linear_noise")(LinearNoise)
    sys.exit(main(_sample_args(Path(sys.argv[1]))))
