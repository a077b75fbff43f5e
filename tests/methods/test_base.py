"""The sampler interface: NFE counting by hooks, per-seed noise and labels, the uint8 record a
sampling call returns, and the shared sampling switches. Toy networks whose calls and outputs
are known exactly."""

import pytest
import torch
from torch import nn

from methods.base import (
    CallCounter,
    Sampler,
    SamplingConfig,
    labels_for_seeds,
    noise_for_seeds,
    to_uint8,
)
from methods.validate import FieldError

CPU = torch.device("cpu")


class Twice(nn.Module):
    """Runs its inner module twice per call; says it evaluates each image twice."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.inner(x))

    def evaluations(self, args: tuple, kwargs: dict) -> int:
        return 2 * args[0].shape[0]


def test_the_counter_counts_outermost_calls_and_the_images_they_held():
    inner = nn.Identity()
    outer = Twice(inner)
    counter = CallCounter([outer, inner])
    with counter.watch():
        outer(torch.zeros(3, 1))  # one outermost call: the inner ones are inside it
        inner(torch.zeros(5, 1))  # one more, of 5 images
    assert (counter.count, counter.rows) == (2, 2 * 3 + 5)
    inner(torch.zeros(7, 1))  # outside watch(): the hooks are gone
    assert counter.count == 2
    with counter.watch(), pytest.raises(TypeError, match="NFE counting needs a batch first"):
        inner("not a batch")


def test_noise_and_labels_of_image_i_depend_on_seed_i_only():
    both = noise_for_seeds([5, 7], (2, 3))
    alone = noise_for_seeds([7], (2, 3))
    assert torch.equal(both[1], alone[0])
    assert torch.equal(alone[0], torch.randn(2, 3, generator=torch.Generator().manual_seed(7)))
    assert labels_for_seeds([3, 10, 27], 10).tolist() == [3, 0, 7]


def test_to_uint8_maps_minus_one_to_one_onto_0_to_255_and_counts_nonfinite_images():
    x = torch.tensor([[-1.0, 0.0, 1.0, 2.0], [-3.0, 0.5, 0.0, 0.0], [float("nan"), 0, 0, 0]])
    img, bad = to_uint8(x.view(3, 1, 1, 4))
    assert img.dtype == torch.uint8 and bad == 1
    # (x + 1) 127.5 rounded half to even: 0 -> 127.5 -> 128; out-of-range values clamped
    assert img.view(3, 4).tolist() == [[0, 128, 255, 255], [0, 191, 128, 128], [128, 128, 128, 128]]


class Halving(Sampler):
    """x = 0.5 z through ``calls`` calls of an identity network per batch (or one per image);
    ``poison``: the first image of each batch NaN."""

    def __init__(self, calls: int | None = 2, poison: bool = False) -> None:
        self.net, self.calls, self.poison = nn.Identity(), calls, poison
        super().__init__(CPU)

    @classmethod
    def from_models(cls, models, device, sampling=None, options=None):
        return cls()

    def networks(self) -> list[nn.Module]:
        return [self.net, self.net]  # listed twice: still one module, one count per call

    def noise_shape(self) -> tuple[int, ...]:
        return (1, 2, 2)

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for _ in range(len(z) if self.calls is None else self.calls):
            z = self.net(z)
        if self.poison:
            z[0] = float("nan")
        return 0.5 * z


def test_sample_returns_the_images_and_the_counted_evaluations():
    seeds, sizes = [4, 5, 6, 7, 8], []
    res = Halving().sample(seeds, batch_size=2, on_batch=sizes.append)
    want, _ = to_uint8(0.5 * noise_for_seeds(seeds, (1, 2, 2)))
    assert torch.equal(res.images, want)
    assert sizes == [2, 2, 1]
    assert res.nfe == res.nfe_max == res.sequential_steps == 2 and res.n_nonfinite == 0
    assert res.wall_s > 0
    poisoned = Halving(poison=True).sample(seeds, batch_size=2)
    assert poisoned.n_nonfinite == 3  # one a batch, kept (as mid-grey), never redrawn
    assert torch.equal(poisoned.images[[1, 3]], want[[1, 3]])
    assert (poisoned.images[[0, 2, 4]] == 128).all()


def test_a_fixed_nfe_sampler_whose_batches_differ_is_an_error():
    with pytest.raises(RuntimeError, match=r"NFE differs between batches: \[1.0, 2.0\]"):
        Halving(calls=None).sample([0, 1, 2], batch_size=2)  # 2 calls, then 1


def test_parameters_of_a_network_listed_twice_count_once():
    sampler = Halving()
    sampler.net = nn.Linear(3, 4)  # 12 weights + 4 biases
    assert sampler.num_params() == 16


def test_cuda_graphs_fall_back_on_cpu_with_one_warning_line(capsys):
    cfg = SamplingConfig(compile=True, cuda_graphs=True)
    assert cfg.for_device(CPU) == SamplingConfig(compile=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: sampling.cuda_graphs needs a CUDA")
    assert cfg.for_device(torch.device("cuda")) is cfg  # kept where CUDA is the device


def test_bad_sampling_switches_are_refused_by_name():
    with pytest.raises(FieldError, match="precision: got 'fp16'; allowed: one of 'fp32', 'bf16'"):
        SamplingConfig(precision="fp16")
    with pytest.raises(FieldError, match="cuda_graphs: got True; allowed: true only with"):
        SamplingConfig(cuda_graphs=True)
    with pytest.raises(FieldError, match="compile: got True; allowed: true only with sampling.kv"):
        SamplingConfig(compile=True, kv_cache=False)
    with pytest.raises(FieldError, match="decode_kernel: got 'fast'; allowed: one of 'auto', "):
        SamplingConfig(decode_kernel="fast")
