"""What only a GPU can show: run by scripts/gpu_check.sh on a machine with CUDA, skipped here."""

import copy

import pytest
import torch

from bench.nvml import readings
from bench.timing import measure, peak_memory
from methods.base import SamplingConfig
from methods.biflow import BiFlowSampler
from methods.tarflow import TarFlowSampler

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CPU = torch.device("cpu")


@pytest.fixture
def gpu() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def test_cuda_sampling_matches_cpu_sampling(trained_flow, trained_reverse, gpu):
    seeds = list(range(4))
    for cpu_s, gpu_s in (
        (
            TarFlowSampler(trained_flow, CPU),
            TarFlowSampler(copy.deepcopy(trained_flow).to(gpu), gpu),
        ),
        (
            BiFlowSampler(trained_reverse, trained_flow, CPU),
            BiFlowSampler(
                copy.deepcopy(trained_reverse).to(gpu), copy.deepcopy(trained_flow).to(gpu), gpu
            ),
        ),
    ):
        a, b = cpu_s.sample(seeds, 4), gpu_s.sample(seeds, 4)
        assert a.nfe == b.nfe
        # TF32 matmuls and other kernels: a few grey levels at most, on few pixels.
        diff = (a.images.int() - b.images.int()).abs()
        assert diff.float().mean() < 1.0, cpu_s.name


def test_compiled_decoding_with_cuda_graphs_matches_eager(trained_flow, gpu):
    flow = copy.deepcopy(trained_flow).to(gpu)
    eager = TarFlowSampler(flow, gpu)
    graphs = TarFlowSampler(
        copy.deepcopy(trained_flow).to(gpu), gpu, SamplingConfig(compile=True, cuda_graphs=True)
    )
    seeds = list(range(8))
    a = eager.sample(seeds, 8)
    for _ in range(3):  # cudagraph trees record on the first calls, replay after
        b = graphs.sample(seeds, 8)
    assert a.nfe == b.nfe
    assert (a.images.int() - b.images.int()).abs().max() <= 1


def test_cuda_event_timing_and_allocator_peak(trained_flow, gpu):
    sampler = TarFlowSampler(copy.deepcopy(trained_flow).to(gpu), gpu)
    t = measure(lambda: sampler.sample(list(range(16)), 16), gpu, warmup=1, repeats=3)
    assert t.median_s > 0 and len(t.times_s) == 3
    with peak_memory(gpu) as mem:
        sampler.sample(list(range(64)), 64)
    assert mem.kind == "cuda_allocator" and mem.mb > 0


def test_nvml_reads_memory_and_power(gpu):
    r = readings(gpu)
    assert all(v != "n/a" for v in r.values()), r


def test_bf16_sampling_on_cuda(trained_reverse, trained_flow, gpu):
    s = BiFlowSampler(
        copy.deepcopy(trained_reverse).to(gpu),
        copy.deepcopy(trained_flow).to(gpu),
        gpu,
        SamplingConfig(precision="bf16"),
    )
    res = s.sample(list(range(8)), 8)
    assert res.nfe == 1 and res.n_nonfinite == 0
