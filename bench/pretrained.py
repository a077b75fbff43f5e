"""DINOv2 and CLIP feature spaces (FD_DINOv2 as dgm-eval recommends), offline from local files.

Both are registered with torch-fidelity, so FD, KID and precision/recall are its arithmetic.
Neither weights file ever runs code:

- ``dinov2``: timm's implementation of the DINOv2 ViT (``metrics.dinov2_model``, default
  ``vit_small_patch14_dinov2``, CLS token after the final norm: DINOv2's ``x_norm_clstoken``) at
  224 px, as torch-fidelity's DINOv2 extractor feeds it (TF1-style bilinear resize, ImageNet
  mean/std). torch-fidelity's own extractor loads code and weights through
  ``torch.hub.load("facebookresearch/dinov2")`` and takes no weights path, so it cannot work
  offline. The weights (``metrics.dinov2_weights``): the official ``dinov2_vits14_pretrain.pth``
  (original key names, converted by timm's ``checkpoint_filter_fn``, which also resamples the
  position embedding once to the 16 x 16 grid, where the hub model interpolates it per call:
  numbers close to, not identical with, dgm-eval's) or a timm-format ``.safetensors``/``.pth``.
- ``clip``: torch-fidelity's CLIP image tower (``metrics.clip_model``, default
  ``clip-vit-b-32``), built by its ``build_model`` from a state dict, with its preprocessing.
  torch-fidelity calls ``torch.jit.load`` on a weights path (a TorchScript archive is a
  program); here the file is a plain state dict read with ``weights_only=True``, or OpenAI's
  original TorchScript file only when its sha256 is the one torch-fidelity records for that
  model (checked on the bytes that are then loaded). Without ``metrics.clip_weights``,
  torch-fidelity's own download in the torch hub cache is used when present.

Grey images are repeated to RGB. No Inception Score in either space.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import torch
import torch_fidelity
import torchvision.transforms.functional as TF
from torch_fidelity.feature_extractor_clip import MODEL_METADATA as CLIP_MODELS
from torch_fidelity.feature_extractor_clip import build_model
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.inception import UnavailableError, _gist
from bench.metrics import EagerFeatureExtractor

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def dinov2_name(model: str) -> str:
    return f"flowbench-dinov2:{model}"


def clip_name(model: str) -> str:
    return f"flowbench-clip:{model}"


def _rgb_float(x: torch.Tensor, size: int, norm: tuple) -> torch.Tensor:
    """uint8 (b, C, H, W) -> float RGB (b, 3, size, size), resized and normalised as
    torch-fidelity's DINOv2 and CLIP extractors do."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(size, size), align_corners=False)
    mean, std = (tuple(255 * v for v in t) for t in norm)
    return TF.normalize(x, mean, std)


def _tensors(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (.safetensors, or torch's format read with
    ``weights_only=True``); anything else is one line and nothing in it runs."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that calls code, a TorchScript archive, a truncated file
        raise UnavailableError(
            f"{key}: {path} is not a plain weights file, refused unread "
            f"({type(e).__name__}: {_gist(e)})"
        ) from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnavailableError(f"{key}: {path} does not hold a state dict of tensors")
    return state


def dinov2_weights(explicit: str) -> str:
    """The DINOv2 weights file to use (UnavailableError: none, in one line)."""
    if not explicit:
        raise UnavailableError(
            "dinov2: FD_DINOv2 unavailable offline: set metrics.dinov2_weights to "
            "dinov2_vits14_pretrain.pth (or a timm vit_small_patch14_dinov2 .safetensors)"
        )
    if not Path(explicit).is_file():
        raise UnavailableError(f"dinov2: metrics.dinov2_weights {explicit!r} not found")
    return explicit


def clip_hub_file(model: str) -> Path:
    """Where torch-fidelity keeps its CLIP download ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{model}-{CLIP_MODELS[model]['hash']}.pt"


def clip_weights(explicit: str, model: str) -> str:
    """The CLIP weights file to use: ``explicit``, else torch-fidelity's hub-cache download."""
    if model not in CLIP_MODELS:
        raise UnavailableError(
            f"clip: metrics.clip_model {model!r}; allowed: {', '.join(CLIP_MODELS)}"
        )
    if explicit:
        if not Path(explicit).is_file():
            raise UnavailableError(f"clip: metrics.clip_weights {explicit!r} not found")
        return explicit
    cached = clip_hub_file(model)
    if cached.is_file():
        return str(cached)
    raise UnavailableError(
        f"clip: FD_CLIP unavailable offline: set metrics.clip_weights (a state dict, or "
        f"OpenAI's {CLIP_MODELS[model]['filename']}.pt) or put it in {cached}"
    )


class DinoV2Extractor(EagerFeatureExtractor):
    """timm's DINOv2 ViT with torch-fidelity's DINOv2 preprocessing (feature ``dinov2``)."""

    SIZE = 224

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        model = name.split(":", 1)[1]
        path = Path(dinov2_weights(feature_extractor_weights_path or ""))
        try:
            import timm
            from timm.models.vision_transformer import checkpoint_filter_fn
        except ImportError:
            raise UnavailableError("dinov2: needs timm (pip install timm)") from None
        try:
            self.net = timm.create_model(model, pretrained=False, num_classes=0, img_size=self.SIZE)
        except RuntimeError as e:  # an unknown model name
            raise UnavailableError(f"dinov2: metrics.dinov2_model {model!r}: {_gist(e)}") from None
        state = _tensors(path, "dinov2")
        try:
            self.net.load_state_dict(checkpoint_filter_fn(state, self.net))
        except (RuntimeError, KeyError, ValueError) as e:
            raise UnavailableError(
                f"dinov2: {path} holds other weights than {model} ({_gist(e)})"
            ) from None
        self.net.eval().requires_grad_(False)

    @staticmethod
    def get_provided_features_list():
        return ("dinov2",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise UnavailableError("dinov2 has no class logits: no Inception Score")
        return "dinov2"

    def forward(self, x):
        return (self.net(_rgb_float(x, self.SIZE, IMAGENET)),)


def _clip_state(path: Path, model: str) -> dict[str, torch.Tensor]:
    """A CLIP state dict: plain tensors, or OpenAI's TorchScript file with the recorded digest."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() == CLIP_MODELS[model]["hash"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
    return _tensors(path, "clip")


class ClipExtractor(EagerFeatureExtractor):
    """torch-fidelity's CLIP image tower and preprocessing (feature ``clip``)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        model = name.split(":", 1)[1]
        path = Path(clip_weights(feature_extractor_weights_path or "", model))
        state = dict(_clip_state(path, model))
        try:
            self.net = build_model(state, torch.float32)
        except (RuntimeError, KeyError, IndexError, AttributeError) as e:
            raise UnavailableError(f"clip: {path} holds no CLIP weights ({_gist(e)})") from None
        self.size = self.net.visual.input_resolution

    @staticmethod
    def get_provided_features_list():
        return ("clip",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise UnavailableError("clip has no class logits: no Inception Score")
        return "clip"

    def forward(self, x):
        return (self.net.visual(_rgb_float(x, self.size, CLIP_NORM)).float(),)


def register(model_dinov2: str, model_clip: str) -> None:
    """Register the two extractors under names that carry their architecture."""
    for name, cls in (
        (dinov2_name(model_dinov2), DinoV2Extractor),
        (clip_name(model_clip), ClipExtractor),
    ):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)
