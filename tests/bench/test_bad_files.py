"""Every bad file the suite reads (but the config): one ``error: `` line naming the file, a
non-zero exit, no traceback, nothing written where it should not be; and no file read as wrong
data.

Images are read by ``bench.data.load`` (a ``bench run`` would go on to train), with one case
through ``bench run`` that fails at the data stage; results files and run folders go through
``bench.cli.main``; the native kernel's cache folder through ``methods.native.build``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import DataConfig
from bench.data import DataError, load
from methods import native

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "results" / "ci-baseline"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
GREY = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4 + 1  # (8, 8): 1 .. 253, mean 127
SIZE = GREY.shape


# ---------------------------------------------------------------------------------------------
# images


def png(pixels: np.ndarray, depth: int, colour: int, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written byte by byte (PIL writes neither 16-bit colour nor a lying header):
    ``pixels`` (h, w[, c]), ``colour`` the PNG colour type (0 grey, 2 RGB, 4 grey+alpha),
    ``size`` (w, h) the header's claim."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    h, w = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(f">u{depth // 8}").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", *(size or (w, h)), depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def saved(image: Image.Image, fmt: str = "PNG", **kw) -> Callable[[Path], None]:
    return lambda path: image.save(path, fmt, **kw)


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def edited(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    out[at] = value
    return bytes(out)


GOOD_PNG = png(GREY, 8, 0)
OPAQUE = np.full(SIZE, 255, np.uint8)
HALF = np.where(GREY > 128, 255, 0).astype(np.uint8)  # alpha: half the pixels transparent
RGB = np.stack([GREY, GREY[::-1], GREY.T], axis=-1)  # (8, 8, 3), not grey


def palette(rgb: np.ndarray) -> Image.Image:
    """``rgb`` (h, w, 3) as a palette image holding exactly its colours."""
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    image = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), "P")
    image.putpalette(colours.astype(np.uint8).tobytes())
    return image


BAD_IMAGES = [
    ("truncated.png", raw(GOOD_PNG[:60]), "cannot read image", "truncated"),
    ("text.png", raw(b"just some notes\n"), "cannot read image", "cannot identify"),
    ("empty.png", raw(b""), "cannot read image", "cannot identify"),
    # the IDAT length field points past the data: PIL raises SyntaxError, not OSError
    ("torn_chunk.png", raw(edited(GOOD_PNG, 36, 0)), "cannot read image", "broken PNG file"),
    # an IHDR of length 0: PIL raises ValueError
    ("short_ihdr.png", raw(edited(GOOD_PNG, 11, 0)), "cannot read image", "Truncated IHDR"),
    # 10^10 pixels claimed: DecompressionBombError; 10^8: PIL's warning, taken as an error
    ("bomb.png", raw(png(GREY, 8, 0, size=(100_000, 100_000))), "cannot read", "exceeds limit"),
    ("big.png", raw(png(GREY, 8, 0, size=(10_000, 10_000))), "cannot read", "exceeds limit"),
    (
        "grey_alpha.png",
        saved(Image.fromarray(np.stack([GREY, HALF], -1), "LA")),
        "32 of 64 pixels not fully opaque (PIL mode LA)",
        "flatten",
    ),
    (
        "rgba.png",
        saved(Image.fromarray(np.concatenate([RGB, HALF[..., None]], -1), "RGBA")),
        "32 of 64 pixels not fully opaque (PIL mode RGBA)",
        "flatten",
    ),
    (
        "palette_transparent.png",
        saved(Image.fromarray(GREY).convert("P"), transparency=int(GREY[0, 0])),
        "1 of 64 pixels not fully opaque (PIL mode P)",
        "flatten",
    ),
    (
        "int32.tif",
        saved(Image.fromarray(GREY.astype(np.int32)), "TIFF"),
        "holds 32-bit integer pixels (PIL mode I)",
        "16-bit grey",
    ),
    (
        "float.tif",
        saved(Image.fromarray(GREY.astype(np.float32)), "TIFF"),
        "holds 32-bit float pixels (PIL mode F)",
        "16-bit grey",
    ),
    (
        "lab.tif",
        saved(Image.fromarray(RGB).convert("LAB"), "TIFF"),
        "unsupported kind of pixels (PIL mode LAB)",
        "allowed",
    ),
    ("larger.png", raw(png(np.zeros((12, 12)), 8, 0)), "images differ in size", "(12, 12)"),
]


def folder(tmp_path: Path, name: str = "", write: Callable[[Path], None] | None = None) -> Path:
    """A data.source: folder tree: two classes of four good 8x8 grey PNGs, and ``write``'s
    file as class1/``name``."""
    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(GREY // (c + 1) + i).save(root / f"class{c}" / f"{i}.png")
    if write is not None:
        write(root / "class1" / name)
    return root


def loaded(root: Path) -> torch.Tensor:
    """Every image of the folder, training and held-out, in file order."""
    s = load(DataConfig(source="folder", root=str(root), holdout=2, split_seed=0), base=root)
    order = torch.randperm(
        len(s.train) + len(s.holdout), generator=torch.Generator().manual_seed(0)
    )
    images = torch.cat([s.holdout, s.train])
    return images[torch.argsort(order)]


@pytest.mark.parametrize(
    ("name", "write", "message", "why"), BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES]
)
def test_a_bad_image_is_one_line_naming_it(tmp_path, name, write, message, why):
    root = folder(tmp_path, name, write)
    with pytest.raises(DataError) as e:
        load(DataConfig(source="folder", root=str(root), holdout=2), base=tmp_path)
    text = str(e.value)
    assert "\n" not in text and text.startswith("data.root: ")
    assert name in text and message in text and why in text, text


def truncated_jpeg(path: Path) -> None:
    Image.fromarray(RGB).save(path, "JPEG", quality=95)
    path.write_bytes(path.read_bytes()[:300])


def test_a_truncated_jpeg_is_named(tmp_path):
    root = folder(tmp_path, "cut.jpg", truncated_jpeg)
    with pytest.raises(DataError, match=r"cannot read image '.*cut\.jpg': .*[Tt]runcated"):
        load(DataConfig(source="folder", root=str(root), holdout=2), base=tmp_path)


# (file, writer, the pixels it must load as: (8, 8) grey or (8, 8, 3) colour)
GOOD_IMAGES = [
    ("grey.png", saved(Image.fromarray(GREY)), GREY),
    ("bilevel.png", saved(Image.fromarray(GREY > 128)), np.where(GREY > 128, 255, 0)),
    # 16 bits, widened both usual ways (v * 257 and v << 8): the high byte gives v back
    ("grey16.png", saved(Image.fromarray(GREY.astype(np.uint16) * 257)), GREY),
    ("grey16_shifted.png", saved(Image.fromarray(GREY.astype(np.uint16) << 8)), GREY),
    ("grey16.tif", saved(Image.fromarray(GREY.astype(np.uint16) * 257), "TIFF"), GREY),
    ("grey_alpha.png", saved(Image.fromarray(np.stack([GREY, OPAQUE], -1), "LA")), GREY),
    # PIL reads 16-bit grey+alpha as RGBA: it stays grey
    (
        "grey_alpha16.png",
        raw(png(np.stack([GREY, OPAQUE], -1).astype(np.uint16) * 257, 16, 4)),
        GREY,
    ),
    ("palette_grey.png", saved(Image.fromarray(GREY).convert("P")), GREY),
    ("palette_grey.gif", saved(Image.fromarray(GREY), "GIF"), GREY),
    ("rgb.png", saved(Image.fromarray(RGB)), RGB),
    ("rgb16.png", raw(png(RGB.astype(np.uint16) * 257, 16, 2)), RGB),
    ("rgba.png", saved(Image.fromarray(np.concatenate([RGB, OPAQUE[..., None]], -1))), RGB),
    ("palette_colour.png", saved(palette(RGB)), RGB),
]


@pytest.mark.parametrize(("name", "write", "want"), GOOD_IMAGES, ids=[c[0] for c in GOOD_IMAGES])
def test_every_mode_is_read_as_its_own_pixels(tmp_path, name, write, want):
    """Alone in a folder of its kind; grey stays one channel. A colour file among grey ones
    makes the whole folder RGB with the grey repeated exactly."""
    root = tmp_path / "one"
    root.mkdir()
    write(root / name)
    Image.fromarray(want.astype(np.uint8)).save(root / "twin.png")  # the same pixels, 8-bit
    Image.fromarray(want.astype(np.uint8)).save(root / "twin2.png")
    x = loaded(root)  # files sorted: name, twin, twin2
    channels = 1 if want.ndim == 2 else 3
    assert x.shape == (3, channels, *SIZE) and x.dtype == torch.uint8
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    pixels = torch.from_numpy(want.astype(np.uint8))
    assert torch.equal(x[0], pixels[None] if want.ndim == 2 else pixels.permute(2, 0, 1))


def test_16_bit_grey_keeps_its_mean_and_a_colour_file_makes_the_folder_rgb(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("a16.png", "b16.png", "c16.png"):
        Image.fromarray(GREY.astype(np.uint16) * 257).save(root / name)
    x = loaded(root)
    assert x.shape == (3, 1, *SIZE)
    assert x.float().mean().item() == pytest.approx(GREY.mean())  # 127, not 254 (clipped)
    Image.fromarray(RGB).save(root / "d_colour.png")
    x = loaded(root)
    assert x.shape == (4, 3, *SIZE)
    assert torch.equal(x[0], torch.from_numpy(GREY)[None].expand(3, -1, -1))
    assert torch.equal(x[3], torch.from_numpy(RGB).permute(2, 0, 1))


def test_a_bad_image_stops_bench_run_at_the_data_stage(tmp_path, capsys):
    root = folder(tmp_path, "bomb.png", raw(png(GREY, 8, 0, size=(100_000, 100_000))))
    run = tmp_path / "run"
    code = main(
        ["run", SMOKE, "--set", "data.source=folder", "--set", f"data.root={root}"]
        + ["--out", str(run)]
    )
    err = capsys.readouterr().err
    assert code == 2 and one_error(err) and "bomb.png" in err and "exceeds limit" in err
    # the run folder holds at most its lock: no run.json, no results, no cache
    assert not run.exists() or [p.name for p in run.iterdir()] == [".flowbench.lock"]


# ---------------------------------------------------------------------------------------------
# results files and run folders, through the command line


def one_error(err: str) -> bool:
    """Exactly one line on stderr, and it is the error (so no traceback either)."""
    return err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1


def results(tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """The CI baseline's results table, changed by ``edit``, as a bare .csv."""
    path = tmp_path / "new.csv"
    edit(pd.read_csv(BASELINE / "results.csv")).to_csv(path, index=False)
    return path


def run_folder(tmp_path: Path) -> Path:
    """A copy of the CI baseline's run folder (results, run.json, sweep; no figures)."""
    d = tmp_path / "run"
    d.mkdir()
    for name in ("results.csv", "run.json", "sweep.csv", "config.yaml"):
        shutil.copy(BASELINE / name, d / name)
    return d


def drop(*columns):
    return lambda t: t.drop(columns=list(columns))


def cell(column, value, method="tarflow"):
    def edit(t):
        t[column] = t[column].astype(object)
        t.loc[t.method == method, column] = value
        return t

    return edit


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# (id, make(tmp) -> the bad results file, the compare's argument order, what the line says)
RESULTS = [
    (
        "missing_metric_columns",
        lambda tmp: results(tmp, drop("fid_domain", "latency_b1_vs_cal")),
        "new",
        "no column 'latency_b1_vs_cal', 'fid_domain', which the baseline",
    ),
    (
        "non_numeric_metric",
        lambda tmp: results(tmp, cell("fid_domain", "oops")),
        "new",
        "column 'fid_domain' holds 'oops', not a number, in row (tarflow, default, 0)",
    ),
    (
        "non_numeric_in_the_baseline",
        lambda tmp: results(tmp, cell("nfe", "ninety-six", method="biflow")),
        "base",
        "column 'nfe' holds 'ninety-six', not a number, in row (biflow, default, 0)",
    ),
    ("empty_file", lambda tmp: written(tmp / "new.csv", b""), "new", "unreadable (No columns"),
    (
        "binary_not_csv",
        lambda tmp: written(tmp / "new.csv", bytes(range(256))),
        "new",
        "unreadable (Error tokenizing data",
    ),
    (
        "png_named_csv",
        lambda tmp: written(tmp / "new.csv", GOOD_PNG),
        "new",
        "unreadable ('utf-8' codec can't decode",
    ),
    (
        "json_named_csv",
        lambda tmp: written(tmp / "new.csv", b'{"method": "tarflow"}'),
        "new",
        "not a flowbench results table (no column 'method')",
    ),
    (
        "not_parquet",
        lambda tmp: written(tmp / "new.parquet", b"PAR1 but not really"),
        "new",
        "unreadable (Could not open Parquet input source",
    ),
    (
        "header_only",
        lambda tmp: results(tmp, lambda t: t.iloc[:0]),  # every column, no row
        "new",
        "no rows, only a header",
    ),
]


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("make", "side", "message"), [c[1:] for c in RESULTS], ids=[c[0] for c in RESULTS]
)
def test_a_bad_results_file_fails_the_comparison_in_one_line(tmp_path, capsys, make, side, message):
    bad = make(tmp_path)
    good = BASELINE / "results.csv"
    before = snapshot(tmp_path)
    base, new = (bad, good) if side == "base" else (good, bad)
    code, out, err = cli(capsys, "compare", base, new, "--out", tmp_path / "verdict.md")
    assert code == 2 and one_error(err), err
    assert str(bad) in err and message in err, err
    assert out == "" and snapshot(tmp_path) == before  # no verdict written


def run_json(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "run.json").write_text(text)


def with_info(**fields) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        info = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps(info | fields))

    return edit


# (id, how the copied run folder is broken, which file the line names, what it says)
FOLDERS = [
    ("run_json_array", run_json("[]"), "run.json", "holds a JSON array, not a run's record"),
    ("run_json_string", run_json('"x"'), "run.json", "holds a JSON string, not a run's record"),
    ("run_json_number", run_json("3"), "run.json", "holds a JSON number, not a run's record"),
    ("run_json_torn", run_json('{"status": "compl'), "run.json", "unreadable (Unterminated"),
    ("run_json_empty", run_json(""), "run.json", "unreadable (Expecting value"),
    ("config_not_an_object", with_info(config=[1, 2]), "run.json", "'config' is a JSON array"),
    ("dataset_not_an_object", with_info(dataset="mnist"), "run.json", "'dataset' is a JSON string"),
    (
        "results_missing",
        lambda d: (d / "results.csv").unlink(),
        "results.csv",
        "no such file, though run.json says the run finished",
    ),
    ("sweep_torn", lambda d: (d / "sweep.csv").write_bytes(b""), "sweep.csv", "unreadable"),
    (
        "sweep_without_columns",
        lambda d: pd.DataFrame({"method": ["tarflow"]}).to_csv(d / "sweep.csv", index=False),
        "sweep.csv",
        "no column 'batch', 'ms_per_img', 'speedup_vs_tarflow'",
    ),
]


@pytest.mark.parametrize("command", ["compare", "report", "tables"])
@pytest.mark.parametrize(
    ("breaks", "culprit", "message"), [c[1:] for c in FOLDERS], ids=[c[0] for c in FOLDERS]
)
def test_a_bad_run_folder_is_one_line_for_every_reader(
    tmp_path, capsys, command, breaks, culprit, message
):
    d = run_folder(tmp_path)
    breaks(d)
    before = snapshot(tmp_path)
    args = {
        "compare": ["compare", BASELINE, d, "--out", tmp_path / "verdict.md"],
        "report": ["report", d],
        "tables": ["tables", d],
    }[command]
    code, out, err = cli(capsys, *args)
    assert code == 2 and one_error(err), err
    assert f"{d / culprit}" in err and message in err, err
    assert out == "" and snapshot(tmp_path) == before  # no report.md, tables/ or verdict


# ---------------------------------------------------------------------------------------------
# a reader that leaves early: `bench compare A B | head`


def closed_pipe(monkeypatch) -> None:
    """stdout a pipe whose reader has gone: the first line written raises BrokenPipeError."""
    r, w = os.pipe()
    os.close(r)
    monkeypatch.setattr(sys, "stdout", open(w, "w", buffering=1))  # noqa: SIM115


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["compare", BASELINE, BASELINE], 0),
        (["compare", BASELINE, "REGRESSED"], 1),  # the verdict's code, though nothing was read
        (["tables", "RUN", "--out", "TABLES"], 0),
        (["report", "RUN", "RUN", "--out", "REPORT"], 0),  # several folders: one table
    ],
    ids=["compare", "compare_regressed", "tables", "report"],
)
def test_a_closed_stdout_ends_the_printing_quietly(tmp_path, capsys, monkeypatch, args, code):
    regressed = results(tmp_path, cell("nfe", 1e6))
    d = run_folder(tmp_path)
    swap = {"REGRESSED": regressed, "RUN": d, "TABLES": tmp_path / "t", "REPORT": tmp_path / "r.md"}
    closed_pipe(monkeypatch)
    assert main([str(swap.get(a, a)) for a in args]) == code
    sys.stdout.flush()  # what the interpreter does at exit: the rest goes to /dev/null
    assert capsys.readouterr().err == ""
    assert args[0] == "compare" or (tmp_path / ("t" if args[0] == "tables" else "r.md")).exists()


def test_a_closed_stdout_stops_bench_run_with_one_line(tmp_path, capsys, monkeypatch):
    """`bench run ... | head`: the progress line that meets the closed pipe ends the run (here
    the first, before the data stage); one line on stderr says so, exit 1."""
    closed_pipe(monkeypatch)
    assert main(["run", SMOKE, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert one_error(err) and "standard output closed before `bench run` finished" in err


def test_a_broken_pipe_that_is_not_stdout_is_not_swallowed(monkeypatch):
    def broken(*args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("bench.cli.load_results", broken)
    with pytest.raises(BrokenPipeError):
        main(["compare", str(BASELINE), str(BASELINE)])


# ---------------------------------------------------------------------------------------------
# the native kernel's cache folder


@pytest.fixture
def fake_cc(tmp_path) -> str:
    """A compiler that only says its version: the build must stop before it compiles."""
    cc = tmp_path / "cc"
    cc.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\nexit 1\n')
    cc.chmod(0o755)
    return str(cc)


def read_only(tmp_path: Path) -> Path:
    home = tmp_path / "ro"
    home.mkdir(mode=0o555)
    if os.access(home, os.W_OK):
        pytest.skip("this user writes through permission bits (root)")
    return home


def a_file(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.write_text("a file where the home folder should be")
    return home


@pytest.mark.parametrize(
    ("make_home", "why"),
    [(read_only, "Permission denied: {home}/.cache"), (a_file, "Not a directory")],
    ids=["read_only_home", "home_is_a_file"],
)
def test_an_unwritable_kernel_cache_folder_is_the_reason(
    tmp_path, monkeypatch, fake_cc, make_home, why
):
    home = make_home(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("FLOWBENCH_KERNEL_CACHE", raising=False)
    kernel = native.build("decode_attention", cc=fake_cc)
    folder = home / ".cache" / "flowbench" / "kernels"
    assert kernel.lib is None
    assert kernel.description.startswith(f"the kernel cache folder {folder} cannot be written")
    assert why.format(home=home) in kernel.description
    assert "FLOWBENCH_KERNEL_CACHE selects another" in kernel.description
    assert "fake" not in kernel.description and "cc failed" not in kernel.description
