"""Building blocks of the DDPM++ / NCSN++ U-Nets (score-SDE, Song et al. 2021; EDM, Karras et al.
2022), written from the papers' descriptions.

All feature maps are ``(B, C, H, W)`` (contiguous or ``channels_last``); noise labels are
``(B,)``. Every block runs under ``torch.autocast`` (bf16/fp16): normalisation and the noise
embedding's sinusoids are computed in float32, the convolutions in the autocast dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --- noise-level embeddings ----------------------------------------------------------------


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of the noise label (DDPM++): ``(B,) -> (B, dim)``.

    Frequencies ``(1/max_positions)^(k/half)``, ``k = 0..half-1``, so the fastest feature has
    period ``2π`` in the label's own units.
    """

    def __init__(self, dim: int, max_positions: int = 10_000):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (score-SDE / NCSN++; the MLP's time embedding
    too): ``(B,) -> (B, dim)`` sin/cos features of fixed frequencies ``~ N(0, scale²)`` (stored
    in the checkpoint, never trained), computed in the frequencies' dtype (float32 under
    autocast, float64 for a double network)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = 2 * math.pi * c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


# --- resampling ----------------------------------------------------------------------------


class Resample(nn.Module):
    """Up- or down-sampling by 2 of ``(B, C, H, W)``, with no learned weights.

    ``fir=None`` (DDPM++): average pooling / nearest-neighbour repeat. ``fir=[1, 3, 3, 1]``
    (NCSN++): the separable FIR low-pass filter ``k kᵀ / (Σk)²`` applied as a depthwise
    (transposed) convolution of stride 2 (StyleGAN2's ``upfirdn2d`` for an even filter).
    """

    def __init__(self, mode: str, fir: list[float] | None = None):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        self.mode = mode
        self.fir = list(fir) if fir else None
        if self.fir:
            if len(self.fir) % 2:
                raise ValueError("the FIR resampling filter needs an even length, e.g. [1,3,3,1]")
            k = torch.tensor(self.fir, dtype=torch.float32)
            k2 = torch.outer(k, k)
            k2 = k2 / k2.sum()
            if mode == "up":
                k2 = k2 * 4  # keeps the mean: each output pixel gets 1/4 of the taps
            self.register_buffer("kernel", k2[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fir:
            if self.mode == "down":
                return F.avg_pool2d(x, 2)
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        c = x.shape[1]
        w = self.kernel.to(x.dtype).expand(c, 1, *self.kernel.shape[-2:])
        pad = (self.kernel.shape[-1] - 2) // 2
        if self.mode == "down":
            return F.conv2d(x, w, stride=2, padding=pad, groups=c)
        return F.conv_transpose2d(x, w, stride=2, padding=pad, groups=c)


# --- layers with the score-SDE initialisation ----------------------------------------------


def conv(cin: int, cout: int, k: int = 3, *, stride: int = 1, padding: int | None = None,
         zero: bool = False) -> nn.Conv2d:
    """A ``k×k`` convolution, Xavier-uniform initialised (or zero when ``zero``, for the last
    layer of a residual branch, as score-SDE's ``init_scale=0``)."""
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding)
    return _initialised(layer, zero)


def linear(cin: int, cout: int, *, zero: bool = False) -> nn.Linear:
    """A dense layer, initialised as :func:`conv`."""
    return _initialised(nn.Linear(cin, cout), zero)


def _initialised(layer, zero: bool):
    """Xavier-uniform weights (zeros when ``zero``) and zero bias, in place; returns ``layer``."""
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """Score-SDE's GroupNorm: ``min(C/4, 32)`` groups, eps 1e-6."""
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


class Norm32(nn.Module):
    """GroupNorm computed in float32 (stable under bf16/fp16 autocast), returned in the input's
    dtype."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.norm(x.float()).to(x.dtype)


# --- blocks ---------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """BigGAN-style residual block of DDPM++/NCSN++ (``resblock_type='biggan'``).

    ``h = Conv(act(GN(x)))`` (resampled before the conv when ``up``/``down``), plus the projected
    noise embedding; then ``Conv(Dropout(act(GN(h))))`` (zero-initialised). The skip path is
    resampled the same way and projected by a 1×1 conv when the shape changes. Output
    ``(x + h)/√2`` (``skip_rescale``).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, *, dropout: float = 0.0,
                 up: bool = False, down: bool = False, fir: list[float] | None = None):
        super().__init__()
        self.norm0 = Norm32(cin)
        self.conv0 = conv(cin, cout)
        self.emb = linear(emb_dim, cout)
        self.norm1 = Norm32(cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = conv(cout, cout, zero=True)
        self.resample = (Resample("up", fir) if up else Resample("down", fir) if down
                         else None)
        self.skip = conv(cin, cout, 1) if (cin != cout or up or down) else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h)
        h = h + self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * (1 / math.sqrt(2))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the ``H·W`` positions (DDPM's ``AttnBlock``), with
    ``(x + h)/√2`` residual; the output projection is zero-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Norm32(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, hgt * wid).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each (B, HW, C)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        h = self.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))
        return (x + h) * (1 / math.sqrt(2))


class PyramidDown(nn.Module):
    """NCSN++'s ``progressive_input='residual'`` path: the input image pyramid is FIR-blurred and
    brought down by a stride-2 3×3 conv to the next level's width (``cin -> cout``)."""

    def __init__(self, cin: int, cout: int, fir: list[float] | None):
        super().__init__()
        self.fir = list(fir) if fir else None
        if self.fir:
            k = torch.tensor(self.fir, dtype=torch.float32)
            k2 = torch.outer(k, k)
            self.register_buffer("kernel", (k2 / k2.sum())[None, None], persistent=False)
            # blur with pad (len(k)-2+1)/2 each side, then a stride-2 valid 3x3 conv: H -> H/2
            self.conv = conv(cin, cout, 3, stride=2, padding=0)
        else:
            self.conv = conv(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            c = x.shape[1]
            w = self.kernel.to(x.dtype).expand(c, 1, *self.kernel.shape[-2:])
            pad = (self.kernel.shape[-1] - 2 + 2) // 2  # filter taps + 3x3 conv support
            x = F.conv2d(x, w, padding=pad, groups=c)
        return self.conv(x)
