"""The native decoding kernel (methods/csrc/decode_attention.c): built, exact, and chosen only
where it applies."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import flops  # noqa: F401  (registers torch's CPU attention FLOP formula)
from methods import native
from methods.transformer import KVCache

needs_native = pytest.mark.skipif(
    native.decode_attention().lib is None, reason=native.decode_attention().description
)


def test_the_kernel_builds_wherever_there_is_a_compiler():
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    kernel = native.decode_attention()
    assert kernel.lib is not None, kernel.description


@needs_native
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("tokens,d", [(9, 8), (20, 24), (5, 64), (3, 40)])  # 40: no fixed loop
def test_native_step_equals_sdpa_over_the_filled_positions(batch, tokens, d):
    heads = 4
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(tokens, batch, 3, heads, d, generator=g)  # what each step projects
    cache = KVCache(batch, heads, tokens, d, qkv, kernel="native")
    assert cache.native
    with torch.no_grad():
        for t in range(tokens):
            k, v = qkv[: t + 1, :, 1:].permute(2, 1, 3, 0, 4)  # (2, b, h, t + 1, d)
            want = F.scaled_dot_product_attention(qkv[t, :, 0, :, None], k, v)[:, :, 0]
            torch.testing.assert_close(cache.step(qkv[t], t), want, rtol=1e-5, atol=1e-6)


@needs_native
def test_native_and_torch_decoding_agree(trained_flow):
    z = torch.randn(16, trained_flow.tokens, trained_flow.dim)
    torch.testing.assert_close(
        trained_flow.reverse(z, kernel="native"),
        trained_flow.reverse(z, kernel="torch"),
        rtol=1e-5,
        atol=1e-5,
    )


@needs_native
def test_flop_counting_sees_the_same_arithmetic_through_a_native_cache(trained_flow):
    """Under FlopCounterMode the native cache attends with torch operators: the decode counts
    what the torch form counts, attention included."""
    z = torch.randn(2, trained_flow.tokens, trained_flow.dim)
    ops = {}
    for kernel in ("native", "torch"):
        with FlopCounterMode(display=False) as counter:
            trained_flow.reverse(z, kernel=kernel)
        ops[kernel] = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert ops["native"] == ops["torch"]
    assert any("attention" in op and n > 0 for op, n in ops["native"].items()), ops["native"]


def test_native_is_refused_with_the_reason_where_it_cannot_run():
    like = torch.empty(0)
    with pytest.raises(ValueError, match="head size divisible by 8 \\(got 12\\)"):
        KVCache(2, 4, 9, 12, like, kernel="native")
    with pytest.raises(ValueError, match="float32 \\(the cache holds torch.bfloat16\\)"):
        KVCache(2, 4, 9, 16, like.bfloat16(), kernel="native")
    with pytest.raises(ValueError, match="compiled decoding"):
        KVCache(2, 4, 9, 16, like, static=True, kernel="native")
    with pytest.raises(ValueError, match="allowed: auto, native, torch"):
        KVCache(2, 4, 9, 16, like, kernel="fast")
    assert not KVCache(2, 4, 9, 12, like).native  # auto: the torch form, no error


def test_a_failed_build_says_why_and_nothing_is_loaded(tmp_path):
    """A compiler that fails (here a script that prints a version, then an error): the kernel
    is unavailable with the compiler's last line as the reason, and no library is left behind."""
    cc = tmp_path / "cc"
    cc.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\n'
        'echo "error: nope" >&2\nexit 1\n'
    )
    cc.chmod(0o755)
    out = tmp_path / "kernels"
    kernel = native.build("decode_attention", cc=str(cc), out_dir=out)
    assert kernel.lib is None
    assert kernel.description.startswith(f"{cc} failed: ") and "error: nope" in kernel.description
    assert not list(out.glob("*.so"))
    if native.compiler() is None:
        return  # the rest needs a real compiler
    unwritable = tmp_path / "file"
    unwritable.write_text("")  # a file where the cache folder should be
    kernel = native.build("decode_attention", out_dir=unwritable / "kernels")
    assert kernel.lib is None and "failed" in kernel.description


def test_flowbench_native_0_turns_the_kernel_off():
    code = (
        "import torch; from methods import native; from methods.transformer import KVCache\n"
        "print(native.decode_attention().description, KVCache(2, 4, 9, 16, torch.empty(0)).native)"
    )
    env = {**os.environ, "FLOWBENCH_NATIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "disabled by FLOWBENCH_NATIVE=0 False", out.stderr


@needs_native
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_the_kernel_runs_on_torchs_openmp_runtime_not_a_second_one():
    """Two OpenMP runtimes would each keep threads spinning on the same cores."""
    if not native._torch_openmp():
        pytest.skip("torch has not loaded libgomp.so.1 here: the kernel is built without OpenMP")
    assert "OpenMP on torch's threads" in native.decode_attention().description
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "gomp" in line or "omp.so" in line}
    assert len(runtimes) == 1, runtimes


@needs_native
def test_a_step_that_does_not_fit_the_cache_is_refused_before_the_c_code_runs():
    cache = KVCache(4, 2, 9, 8, torch.empty(0), kernel="native")
    with pytest.raises(ValueError, match="not a step of this cache"):
        cache.step(torch.randn(3, 3, 2, 8), 0)  # 3 images against a cache of 4
    with pytest.raises(ValueError, match="not a step of this cache"):
        cache.step(torch.randn(4, 3, 2, 8), 9)  # past the last position
    with pytest.raises(ValueError, match="not a step of this cache"):
        cache.step(torch.randn(4, 3, 2, 8).double(), 0)


def test_cc_is_kept_as_a_whole_command_line(monkeypatch):
    monkeypatch.setenv("CC", "env cc")
    assert native.compiler() == "env cc"
