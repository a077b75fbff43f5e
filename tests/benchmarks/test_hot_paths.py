"""The hot paths under pytest-benchmark, each with its NFE and FLOPs in ``extra_info``.

Each also asserts both numbers exactly: the NFE the hooks counted against what the architecture
implies, and the FLOPs ``bench.flops.count_flops`` counted against a closed form written out
from the layer shapes here (2 FLOPs per multiply-add of every matrix product: linear layers,
convolutions, attention's QK^T and AV; elementwise work is not counted).

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


def layer_linear_flops(rows: int, width: int, mlp_ratio: int) -> int:
    """One transformer layer's linear products on ``rows`` tokens: qkv (w -> 3w), the attention
    output projection (w -> w), the MLP (w -> r w -> w)."""
    return 2 * rows * (3 * width**2 + width**2 + 2 * mlp_ratio * width**2)


def decode_step_flops(flow, batch: int, pos: int) -> int:
    """One cached decoding step of one block's network at position ``pos``: every product on one
    token per image, and attention of that token over the pos + 1 cached keys and values."""
    c, d = flow.cfg, flow.dim
    linear = 2 * batch * d * c.width + 2 * batch * c.width * 2 * d  # proj_in, proj_out (-> a, b)
    per_layer = layer_linear_flops(batch, c.width, c.mlp_ratio) + 4 * batch * c.width * (pos + 1)
    return linear + c.depth * per_layer


def forward_pass_flops(flow, batch: int) -> tuple[int, int]:
    """One parallel pass of the whole flow on ``batch`` images, as (linear products, causal
    attention): query t sees keys 0..t, T (T + 1) / 2 query-key pairs per head."""
    c, d, t = flow.cfg, flow.dim, flow.tokens
    linear = 2 * batch * t * (d * c.width + c.width * 2 * d)
    linear += c.depth * layer_linear_flops(batch * t, c.width, c.mlp_ratio)
    attention = c.depth * 4 * batch * c.width * t * (t + 1) // 2
    return c.blocks * linear, c.blocks * attention


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
            net(step, caches, pos=t)
        benchmark(net, step, caches, pos=t)
        flops = count_flops(lambda: net(step, caches, pos=t))
    assert (counter.count, counter.rows) == (1, B)  # one call, one evaluation per image
    assert flops == decode_step_flops(trained_flow, B, t)
    record(benchmark, nfe=counter.count, flops=flops)


def test_full_causal_decode(benchmark, trained_flow):
    """K blocks x (T - 1) steps, each the step above at positions 0 .. T - 2: the attention term
    sums to 4 B w depth (1 + ... + (T - 1)) per block."""
    sampler = TarFlowSampler(trained_flow, CPU)
    res = benchmark(sampler.sample, list(range(B)), B)
    k, t = trained_flow.cfg.blocks, trained_flow.tokens
    assert res.nfe == res.sequential_steps == k * (t - 1)
    z = noise_for_seeds(range(B), sampler.noise_shape())
    flops = count_flops(lambda: sampler.generate(z))
    assert flops == k * sum(decode_step_flops(trained_flow, B, p) for p in range(t - 1))
    record(benchmark, res.nfe, flops)


def test_biflow_sampling(benchmark, trained_flow, trained_reverse):
    """G on all T tokens at once: K reverse stages and the denoising stage, each ``depth``
    layers with bidirectional attention (all T x T query-key pairs); the alignment heads are
    training-only and never run."""
    sampler = BiFlowSampler(trained_reverse, trained_flow, CPU)
    res = benchmark(sampler.sample, list(range(B)), B)
    assert res.nfe == res.sequential_steps == 1
    z = noise_for_seeds(range(B), sampler.noise_shape())
    flops = count_flops(lambda: sampler.generate(z))
    g, d, t = trained_reverse.cfg, trained_flow.dim, trained_flow.tokens
    stages = trained_flow.cfg.blocks + 1
    layer = layer_linear_flops(B * t, g.width, g.mlp_ratio) + 4 * B * g.width * t * t
    assert flops == 2 * B * t * (d * g.width + g.width * d) + stages * g.depth * layer
    record(benchmark, res.nfe, flops)


def test_score_step(benchmark, trained_flow):
    """One forward pass of the frozen flow, then the backward pass to the input alone: one
    product per linear product of the forward pass (no weight gradients), and attention's
    backward (recomputed scores, grads of scores, V, Q and K) 5/2 times its forward."""
    x = torch.rand(B, 1, 28, 28) * 2 - 1
    sigma = trained_flow.cfg.noise_std
    counter = CallCounter(trained_flow.networks())
    with counter.watch():
        tweedie_step(trained_flow, x, sigma)
    benchmark(tweedie_step, trained_flow, x, sigma)
    flops = count_flops(lambda: tweedie_step(trained_flow, x, sigma))
    assert (counter.count, counter.rows) == (1, B)
    linear, attention = forward_pass_flops(trained_flow, B)
    assert flops == 2 * linear + attention + 5 * attention // 2
    record(benchmark, counter.count, flops)


@pytest.fixture(scope="module")
def domain_path(tmp_path_factory, digits, digit_labels):
    path = tmp_path_factory.mktemp("bench-domain") / "domain.pt"
    train_domain_classifier(digits, digit_labels, ClassifierConfig(steps=5, width=8), path)
    return path


def test_domain_feature_extraction(benchmark, domain_path, digits):
    """Four 3x3 convolutions (28x28 at w channels, 14x14 at 2w twice, 7x7 at 4w), then the class
    head (4w -> 10), which runs though only the pooled features are asked for."""
    ext = DomainFeatureExtractor(DOMAIN, ["domain_features"], domain_path)
    images = digits[:B]
    counter = CallCounter([ext.net])
    with torch.no_grad():
        with counter.watch():
            ext(images)
        benchmark(ext, images)
        flops = count_flops(lambda: ext(images))
    assert (counter.count, counter.rows) == (1, B)
    w = 8
    convs = 28 * 28 * 1 * w + 14 * 14 * w * 2 * w + 14 * 14 * 2 * w * 2 * w + 7 * 7 * 2 * w * 4 * w
    assert flops == 2 * B * 9 * convs + 2 * B * 4 * w * 10
    record(benchmark, counter.count, flops)
