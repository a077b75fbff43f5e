"""FLOPs per image are counted, not typed in: exact for a sampler whose arithmetic is known."""

import torch

from bench.cost import sampler_flops
from tests.bench.test_runner import NOISE, PIXELS, LinearNoise

CPU = torch.device("cpu")


def test_flops_per_image_of_one_linear_layer_are_2_m_n():
    s = LinearNoise(CPU)
    assert sampler_flops(s, list(range(64))) == 2 * NOISE * PIXELS


def test_a_sampler_that_runs_its_network_twice_costs_twice_as_much():
    class Twice(LinearNoise):
        def generate(self, z, y=None):
            return super().generate(super().generate(z, y).flatten(1)[:, :NOISE], y)

    assert sampler_flops(Twice(CPU), [0, 1]) == 2 * 2 * NOISE * PIXELS
