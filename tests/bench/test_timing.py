import os
import subprocess
import sys
import time

import pytest
import torch

from bench.fairness import OP_GROUPS
from bench.timing import measure, op_breakdown, peak_memory, self_times_ms
from methods import native
from methods.transformer import KVCache, Layer

CPU = torch.device("cpu")


def test_measure_runs_warmup_plus_repeats_and_reports_the_median():
    calls = []
    t = measure(lambda: calls.append(1), CPU, warmup=2, repeats=5)
    assert len(calls) == 7 and t.repeats == 5
    assert t.min_s <= t.median_s <= t.max_s


def test_peak_memory_sees_a_large_temporary_allocation():
    with peak_memory(CPU) as small:
        torch.ones(10)
    with peak_memory(CPU) as big:
        x = torch.ones(64 * 2**20)  # 256 MiB, freed before the block ends
        x += 1
        del x
    assert big.kind == small.kind and big.kind.startswith("cpu")
    assert big.mb - small.mb > 200


def test_op_breakdown_splits_the_wall_time_into_operator_groups_and_the_rest():
    a = torch.randn(512, 512)

    def work():
        for _ in range(4):
            a @ a  # aten::mm
        torch.softmax(a, dim=-1)
        time.sleep(0.05)  # no operator: Python's time

    got = op_breakdown(work, {"products": lambda name: name == "aten::mm"})
    assert list(got) == ["products", "other operators", "outside operators", "profiled wall"]
    assert got["products"] > 0 and got["other operators"] > 0
    assert got["outside operators"] >= 45  # the sleep
    parts = got["products"] + got["other operators"] + got["outside operators"]
    assert parts == pytest.approx(got["profiled wall"])


def test_self_times_equal_the_profilers_own_key_averages():
    layer = Layer(32, 4, 4)  # nested operators: linear -> addmm, attention -> its kernel
    x = torch.randn(8, 10, 32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            layer(x, causal=True)
    want = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    got = self_times_ms(prof)
    assert set(got) == set(want) and "aten::addmm" in got
    for name, ms in want.items():
        assert got[name] == pytest.approx(ms, abs=1e-3), name


PROFILE_ONE_PRODUCT = """
import torch
from bench.timing import op_breakdown
a = torch.ones(64, 64)
got = op_breakdown(lambda: a @ a, {"mm": lambda n: n == "aten::mm"})
print("mm", got["mm"] > 0)
"""


def test_op_breakdown_keeps_the_profilers_native_logging_off_the_console():
    res = subprocess.run(
        [sys.executable, "-c", PROFILE_ONE_PRODUCT], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "mm True", res.stderr[-2000:]
    assert "profiler_start" not in res.stderr and "gpuGetDeviceCount" not in res.stderr


def test_op_breakdown_runs_without_a_stderr_file_descriptor():
    res = subprocess.run(
        [sys.executable, "-c", PROFILE_ONE_PRODUCT],
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(2),
    )
    assert res.returncode == 0 and res.stdout.strip() == "mm True"


@pytest.mark.parametrize("pos", [3, 19])  # padded to 17 keys (BLAS's minimum), and not
@pytest.mark.parametrize("kernel", ["torch", "native"])
def test_the_reports_attention_group_holds_every_product_of_the_cached_attention(pos, kernel):
    """The decode/forward breakdown files the one-query attention's matrix products and softmax
    under "attention", whichever form the cache computes them in (64 images x 4 heads: the
    torch form's matrix products, or the native kernel), not under "other operators"."""
    if kernel == "native" and native.decode_attention().lib is None:
        pytest.skip(native.decode_attention().description)
    cache = KVCache(64, 4, 20, 24, torch.empty(0), kernel=kernel)
    assert cache.native or cache.matmul
    with torch.no_grad():
        for p in range(pos):
            cache.step(torch.randn(64, 3, 4, 24), p)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            cache.step(torch.randn(64, 3, 4, 24), pos)
    names = list(self_times_ms(prof))
    compute = [n for n in names if "mm" in n or "softmax" in n or "attention" in n]
    assert compute, names
    assert [n for n in compute if not OP_GROUPS["attention"](n)] == []
