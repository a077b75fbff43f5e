"""The sampler interface every method implements, and the record sampling returns."""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from methods import faults
from methods.transformer import KERNELS
from methods.validate import FieldError, check

SCHEDULES = ("constant", "linear")  # sampling.guidance_schedule


@dataclass(frozen=True)
class SamplingConfig:
    """How the trained models are sampled: implementation switches (which must not change the
    images beyond rounding), then guidance, which does. Options of one sampler alone live in
    that sampler's own section (:attr:`Sampler.options`)."""

    kv_cache: bool = True  # causal decoding with a key/value cache; off: recompute the prefix
    precision: str = "fp32"  # fp32, or bf16 (torch.autocast around every sampling call)
    compile: bool = False  # torch.compile each sampler's networks (the causal decoding step)
    # How the cached decoding step attends: auto (the native C kernel on the CPU in float32,
    # else torch), native (that kernel or an error), torch (torch operators only)
    decode_kernel: str = "auto"
    cuda_graphs: bool = False  # with compile, on CUDA: mode="reduce-overhead" (CUDA graphs)
    guidance: float = 0.0  # classifier-free guidance scale w (class-conditional models); 0 = off
    # causal decoding: the scale of every token (constant), or annealed over the tokens as
    # apple/ml-tarflow samples, (t + 1) / (T - 1) x w (linear)
    guidance_schedule: str = "constant"
    # the score step of a guided sample: through the conditional model without guidance, as
    # apple/ml-tarflow denoises (conditional), or through the guided flow that drew it (guided)
    score_guidance: str = "conditional"

    def __post_init__(self) -> None:
        check(
            self,
            precision=("fp32", "bf16"),
            decode_kernel=KERNELS,
            guidance=(0, None),
            guidance_schedule=SCHEDULES,
            score_guidance=("conditional", "guided"),
        )
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
class Factors:
    """The design choices a sampler embodies, as the paper's ablation tables name them."""

    reverse: str = "exact"  # exact | jacobi | naive | distilled | aligned: noise mapped back
    denoise: str = "none"  # none | score | learned: how the training noise is removed
    # on (F's a, b hard-clipped and G's state distances normalised) | off | the parts present
    norm_control: str = "off"
    guidance: float = 0.0  # classifier-free guidance scale; 0 = off
    # how a conditional sampler guides: inference (two passes per step; ", linear": annealed
    # over the tokens) | training (the scale is an input of G: one pass) | - (unconditional)
    guidance_form: str = "-"
    feature_loss: str = "off"  # off | the network of the reverse model's perceptual loss
    weighting: str = "-"  # fixed | adaptive: the reverse model's loss weights; - (no G)
    conditional: str = "no"  # yes | no: class-conditional

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The factor columns of a results row, in table order."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class SampleResult:
    """What one call of :meth:`Sampler.sample` produced.

    ``nfe`` and ``sequential_steps`` come from hooks on the network modules (:class:`CallCounter`),
    never from a formula. ``nfe`` counts an image once for every network call whose batch held
    it (so two passes per step, batched together or not, count twice); ``sequential_steps``
    counts the calls, which must run one after another. ``nfe`` is per image over all the
    images, ``sequential_steps`` the mean over batches; for an adaptive sampler (Jacobi)
    ``nfe_max`` is the largest batch's per-image NFE.
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    nfe: float  # network evaluations per image
    sequential_steps: float  # network calls per batch, one after another
    nfe_max: float  # the largest per-image NFE of any batch (= nfe unless adaptive)
    wall_s: float  # seconds for the whole call, device synchronised
    n_nonfinite: int  # images whose float output held NaN or inf (clamped, never redrawn)


class CallCounter:
    """Counts outermost calls of the given modules (forward hooks, re-entrancy aware), and the
    images they processed: the first dimension of each call's first argument, or what the
    module's own ``evaluations(args, kwargs)`` says (a guided flow pass runs two per image).

    A call of a watched module from inside another watched module is not counted again, so a
    full-flow forward pass counts once while a single decoding step of one block also counts
    once: one count per network evaluation.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.count = 0  # calls
        self.rows = 0  # images summed over calls
        self._depth = 0

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._depth == 0:
            self.count += 1
            if hasattr(module, "evaluations"):  # a module that runs several passes per call
                self.rows += module.evaluations(args, kwargs)
            elif args and isinstance(args[0], torch.Tensor):
                self.rows += args[0].shape[0]
            else:
                raise TypeError(f"{type(module).__name__}: NFE counting needs a batch first")
        self._depth += 1

    def _post(self, *_: object) -> None:
        self._depth -= 1

    @contextmanager
    def watch(self) -> Iterator[CallCounter]:
        handles = []
        for m in self.modules:
            handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
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


def labels_for_seeds(seeds: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class labels of a class-conditional sampler: image i is of class ``seeds[i] % num_classes``
    (so the labels too depend on the seed only, and consecutive seeds cycle through the classes)."""
    return torch.tensor([int(s) % num_classes for s in seeds], dtype=torch.long)


def to_uint8(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[-1, 1] floats -> uint8 in [0, 255]; returns the images and how many held NaN/inf."""
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img, int(bad.sum())


class Sampler(ABC):
    """Turns per-image seeds into images. Subclasses implement :meth:`generate` only."""

    name: str = ""  # set by methods.registry.register
    label: str = ""  # display name in tables and figures; default: the registered name
    fixed_nfe = True  # every batch needs the same NFE (checked); False: adaptive (Jacobi)

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

    needs: tuple[str, ...] = ()  # model kinds from_models expects, by name (methods.kinds)
    # The sampler's own config section, (name, frozen dataclass), handed to from_models as
    # ``options``; None: it reads only the shared sections.
    options: tuple[str, type] | None = None

    @classmethod
    @abstractmethod
    def from_models(
        cls,
        models: dict[str, nn.Module],
        device: torch.device,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        options: object = None,
    ) -> Sampler:
        """Build the sampler from the trained models named in ``needs`` (and its own config
        section's value, when it declares one)."""

    # The registered sampler whose whole work this one runs before its own extra step (the
    # score step after decoding): it can never be faster, which bench.trust checks.
    includes: str = ""

    @classmethod
    def problems(cls, cfg: object, device: torch.device) -> list[str]:
        """What in ``cfg`` (the run's config, read by section) this sampler could not honour,
        found before any training: one line each, naming the field. None by default."""
        return []

    @abstractmethod
    def networks(self) -> list[nn.Module]:
        """The modules whose outermost calls count as network evaluations."""

    @abstractmethod
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Map a batch of prior noise (on ``self.device``) to images in [-1, 1]; ``y``: class
        labels when :meth:`num_classes` > 0, else None."""

    def num_classes(self) -> int:
        """Classes of a class-conditional sampler; 0 = unconditional."""
        return 0

    def factors(self) -> Factors:
        """The design choices this sampler embodies (see :class:`Factors`)."""
        return Factors()

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
        images, nfes, calls, bad = [], [], [], 0
        slowdown = faults.slowdown(self.name)  # the gate's test switch; 0 in a real run
        synchronize(self.device)
        t0 = time.perf_counter()
        for start in range(0, len(seeds), batch_size):
            t_batch = time.perf_counter()
            batch = seeds[start : start + batch_size]
            z, y = self.inputs(batch)
            calls0, rows0 = counter.count, counter.rows
            with counter.watch(), self._precision():
                x = self.generate(z, y)
            nfes.append((counter.rows - rows0) / len(batch))
            calls.append(counter.count - calls0)
            img, n_bad = to_uint8(x.float().cpu())
            images.append(img)
            bad += n_bad
            if slowdown:
                synchronize(self.device)
                faults.extra_work(slowdown * (time.perf_counter() - t_batch))
            if on_batch is not None:
                on_batch(len(img))
        synchronize(self.device)
        wall = time.perf_counter() - t0
        if self.fixed_nfe and len(set(nfes)) != 1:
            raise RuntimeError(f"{self.name}: NFE differs between batches: {sorted(set(nfes))}")
        nfe = counter.rows / len(seeds)  # per image, over all batches
        steps = sum(calls) / len(calls)
        return SampleResult(torch.cat(images), nfe, steps, max(nfes), wall, bad)

    def inputs(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prior noise and (class-conditional samplers) labels for ``seeds``, on the device."""
        z = noise_for_seeds(seeds, self.noise_shape()).to(self.device)
        classes = self.num_classes()
        y = labels_for_seeds(seeds, classes).to(self.device) if classes else None
        return z, y

    def diagnostics(self, seeds: Sequence[int]) -> dict[str, object]:
        """Sampler-specific checks the runner records beside the row (e.g. Jacobi's deviation
        from the exact inverse); none by default."""
        return {}

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
