"""The hot paths under pytest-benchmark, each with its NFE and FLOPs in ``extra_info``.

The normal test run measures them too (about 10 s; tiny models). To compare against the
committed baseline (``.benchmarks/``):

    .venv/bin/python -m pytest tests/benchmarks --benchmark-compare=0001 \\
        --benchmark-compare-fail=median:100%

(pytest-benchmark keeps only the last ``--benchmark-compare-fail`` flag: give every expression
after one flag, comma-separated.) Refresh the baseline with ``--benchmark-save=baseline``.
"""

import pytest
import torch

from bench.config import ClassifierConfig
from bench.flops import count_flops
from bench.metrics import DOMAIN, DomainFeatureExtractor, train_domain_classifier
from methods.base import CallCounter, noise_for_seeds
from methods.biflow import BiFlowSampler
from methods.score_denoise import tweedie_step
from methods.tarflow import TarFlowSampler
from methods.transformer import KVCache

B = 16  # images per call
CPU = torch.device("cpu")


def record(benchmark, nfe: int, flops: int, images: int = B) -> None:
    benchmark.extra_info.update(nfe=nfe, flops_per_img=flops // images, batch=images)


def test_causal_decoding_step(benchmark, trained_flow):
    """One token of one block with the key/value cache, half-way through the sequence."""
    net, cfg = trained_flow.blocks[0].net, trained_flow.cfg
    t = trained_flow.tokens // 2
    prefix = torch.randn(B, t + 1, trained_flow.dim)
    caches = [
        KVCache(B, cfg.heads, trained_flow.tokens, cfg.width // cfg.heads, prefix)
        for _ in net.layers
    ]
    with torch.no_grad():
        for p in range(t):  # fill the cache as decoding would have
            net(prefix[:, p : p + 1], caches, pos=p)
        step = prefix[:, t : t + 1]
        counter = CallCounter([net])
        with counter.watch():
            benchmark(net, step, caches, pos=t)
        flops = count_flops(lambda: net(step, caches, pos=t))
    record(benchmark, nfe=1 if counter.count else 0, flops=flops)


def test_full_causal_decode(benchmark, trained_flow):
    sampler = TarFlowSampler(trained_flow, CPU)
    res = benchmark(sampler.sample, list(range(B)), B)
    z = noise_for_seeds(range(B), sampler.noise_shape())
    record(benchmark, res.nfe, count_flops(lambda: sampler.generate(z)))


def test_biflow_sampling(benchmark, trained_flow, trained_reverse):
    sampler = BiFlowSampler(trained_reverse, trained_flow, CPU)
    res = benchmark(sampler.sample, list(range(B)), B)
    assert res.nfe == 1
    z = noise_for_seeds(range(B), sampler.noise_shape())
    record(benchmark, res.nfe, count_flops(lambda: sampler.generate(z)))


def test_score_step(benchmark, trained_flow):
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    sigma = trained_flow.cfg.noise_std
    counter = CallCounter([trained_flow])
    with counter.watch():
        tweedie_step(trained_flow, x, sigma)
    benchmark(tweedie_step, trained_flow, x, sigma)
    record(benchmark, counter.count, count_flops(lambda: tweedie_step(trained_flow, x, sigma)))


@pytest.fixture(scope="module")
def domain_path(tmp_path_factory, digits):
    from bench.data import mnist_digits

    path = tmp_path_factory.mktemp("bench-domain") / "domain.pt"
    labels = mnist_digits()[1][: len(digits)]
    train_domain_classifier(digits, labels, ClassifierConfig(steps=5, width=8), path)
    return path


def test_domain_feature_extraction(benchmark, domain_path, digits):
    ext = DomainFeatureExtractor(DOMAIN, ["domain_features"], domain_path)
    images = digits[:B]
    with torch.no_grad():
        benchmark(ext, images)
        flops = count_flops(lambda: ext(images))
    record(benchmark, 1, flops)
