"""The sampler interface every method implements, and the record sampling returns."""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from methods.validate import FieldError, check


@dataclass(frozen=True)
class SamplingConfig:
    """Implementation switches of sampling that leave the trained models alone."""

    kv_cache: bool = True  # causal decoding with a key/value cache; off: recompute the prefix
    precision: str = "fp32"  # fp32, or bf16 (torch.autocast around every sampling call)
    compile: bool = False  # torch.compile each sampler's networks (the causal decoding step)
    cuda_graphs: bool = False  # with compile, on CUDA: mode="reduce-overhead" (CUDA graphs)

    def __post_init__(self) -> None:
        check(self, precision=("fp32", "bf16"))
        if self.cuda_graphs and not self.compile:
            raise FieldError("cuda_graphs", True, "true only with sampling.compile: true")
        if self.compile and not self.kv_cache:  # only the cached decoding step is compiled
            raise FieldError("compile", True, "true only with sampling.kv_cache: true")

    def for_device(self, device: torch.device) -> SamplingConfig:
        """The switches that take effect on ``device``: a GPU-only one falls back with one
        warning line on stderr."""
        if self.cuda_graphs and device.type != "cuda":
            print(
                f"warning: sampling.cuda_graphs needs a CUDA device (running on {device}); "
                "compiling without CUDA graphs",
                file=sys.stderr,
                flush=True,
            )
            return replace(self, cuda_graphs=False)
        return self


DEFAULT_SAMPLING = SamplingConfig()


@dataclass(frozen=True)
class SampleResult:
    """What one call of :meth:`Sampler.sample` produced.

    ``nfe`` and ``sequential_steps`` are per image and come from hooks on the network modules
    (:class:`CallCounter`), never from a formula.
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    nfe: int  # network evaluations per image
    sequential_steps: int  # evaluations that must run one after another
    wall_s: float  # seconds for the whole call, device synchronised
    n_nonfinite: int  # images whose float output held NaN or inf (clamped, never redrawn)


class CallCounter:
    """Counts outermost calls of the given modules (forward hooks, re-entrancy aware).

    A call of a watched module from inside another watched module is not counted again, so a
    full-flow forward pass counts once while a single decoding step of one block also counts
    once: one count per network evaluation.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.count = 0
        self._depth = 0

    def _pre(self, *_: object) -> None:
        if self._depth == 0:
            self.count += 1
        self._depth += 1

    def _post(self, *_: object) -> None:
        self._depth -= 1

    @contextmanager
    def watch(self) -> Iterator[CallCounter]:
        handles = []
        for m in self.modules:
            handles.append(m.register_forward_pre_hook(self._pre))
            handles.append(m.register_forward_hook(self._post, always_call=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def noise_for_seeds(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise, one generator per image: image i depends on ``seeds[i]`` only."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        out[i] = torch.randn(*shape, generator=g)
    return out


def to_uint8(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[-1, 1] floats -> uint8 in [0, 255]; returns the images and how many held NaN/inf."""
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img, int(bad.sum())


class Sampler(ABC):
    """Turns per-image seeds into images. Subclasses implement :meth:`generate` only."""

    name: str = ""

    def __init__(self, device: torch.device, sampling: SamplingConfig = DEFAULT_SAMPLING) -> None:
        self.device, self.sampling = device, sampling
        if sampling.compile:
            self._compile()

    def compile_targets(self) -> list[nn.Module]:
        """The modules whose ``forward`` torch.compile replaces (``sampling.compile``)."""
        return self.networks()

    def _compile(self) -> None:
        """Replace each target's ``forward`` by its compiled version. Calls still go through the
        module (so the NFE hooks count them, eagerly); compilation itself happens at the first
        call of each shape, which the runner times apart from the steady state."""
        mode = "reduce-overhead" if self.sampling.cuda_graphs else None
        for m in self.compile_targets():
            if getattr(m, "_flowbench_compiled", False):  # models shared by two samplers
                continue
            if hasattr(m, "compile_step"):  # compiles only the path sampling takes
                m.compile_step(mode)
            else:
                m.forward = torch.compile(m.forward, mode=mode, dynamic=True)
            m._flowbench_compiled = True

    needs: tuple[str, ...] = ()  # trained models from_models expects, by name ("flow", ...)

    @classmethod
    @abstractmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ) -> Sampler:
        """Build the sampler from the trained models named in ``needs``."""

    @abstractmethod
    def networks(self) -> list[nn.Module]:
        """The modules whose outermost calls count as network evaluations."""

    @abstractmethod
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Map a batch of prior noise (on ``self.device``) to images in [-1, 1]."""

    @abstractmethod
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one image's prior noise."""

    def sample(
        self,
        seeds: Sequence[int],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> SampleResult:
        """Images for ``seeds`` in batches of ``batch_size``; ``on_batch(n)`` after each batch
        of n images (progress bars)."""
        counter = CallCounter(self.networks())
        images, nfes, bad = [], set(), 0
        synchronize(self.device)
        t0 = time.perf_counter()
        for start in range(0, len(seeds), batch_size):
            z = noise_for_seeds(seeds[start : start + batch_size], self.noise_shape())
            before = counter.count
            with counter.watch(), self._precision():
                x = self.generate(z.to(self.device))
            nfes.add(counter.count - before)
            img, n_bad = to_uint8(x.float().cpu())
            images.append(img)
            bad += n_bad
            if on_batch is not None:
                on_batch(len(img))
        synchronize(self.device)
        wall = time.perf_counter() - t0
        if len(nfes) != 1:
            raise RuntimeError(f"{self.name}: NFE differs between batches: {sorted(nfes)}")
        nfe = nfes.pop()
        return SampleResult(torch.cat(images), nfe, self.sequential_steps(nfe), wall, bad)

    def first_calls(self, seeds: Sequence[int]) -> None:
        """Sample at batch 1, and when compiled at batch 2 too: every lazy initialisation and,
        with ``sampling.compile``, both compilations (batch 1, then dynamic sizes) happen here,
        never inside a measurement."""
        self.sample(seeds[:1], 1)
        if self.sampling.compile:
            self.sample(seeds[:2], 2)

    def _precision(self):
        bf16 = self.sampling.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def num_params(self) -> int:
        """Parameters of the networks sampling runs (each counted once)."""
        seen = {id(p): p.numel() for m in self.networks() for p in m.parameters()}
        return sum(seen.values())

    def sequential_steps(self, nfe: int) -> int:
        """Evaluations that cannot run in parallel; every sampler here is fully sequential."""
        return nfe
