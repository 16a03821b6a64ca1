"""The DDPM++ / NCSN++ U-Net of score-SDE (Song et al. 2021), as used by PFGM, PFGM++ and EDM.

One class, :class:`UNet`, covers both architectures; they differ in three switches:

========================  ==========================  ==================================
switch                    DDPM++ (``conf/network/     NCSN++ (``conf/network/
                          ddpmpp.yaml``)              ncsnpp.yaml``)
========================  ==========================  ==================================
noise embedding           positional (transformer)    Gaussian Fourier features, scale 16
resampling in res blocks  average pool / nearest      FIR filter ``[1, 3, 3, 1]``
encoder input             standard                    ``residual`` input pyramid
========================  ==========================  ==================================

Layout (score-SDE's ``NCSNpp`` module with ``resblock_type='biggan'``): a 3×3 input conv to
``model_channels``; per level ``num_blocks`` residual blocks of width
``model_channels·channel_mult[level]`` (self-attention after each block at the
``attn_resolutions``), then a down-sampling residual block; a middle of block–attention–block; a
decoder with ``num_blocks + 1`` blocks per level, each fed the concatenated skip activation,
one attention block per level at the ``attn_resolutions``, and an up-sampling residual block;
GroupNorm–SiLU–3×3 conv to the output. The noise label ``c_noise`` ``(B,)`` is embedded, mapped
by two linear layers (width ``4·model_channels``) and added inside every residual block.

Simplifications relative to score-SDE's code (documented so results can be compared):

* NCSN++'s input pyramid uses FIR blur followed by a stride-2 3×3 conv, the unfused
  equivalent of score-SDE's fused ``upfirdn``+conv layer (same receptive field and weights);
* NCSN++'s ``progressive='none'`` output (as in the CIFAR-10 continuous config) is the only
  output mode: the ``output_skip``/``residual`` output pyramids are not implemented;
* no ``scale_by_sigma`` (the :class:`~unified_ode.networks.Preconditioned` wrapper scales);
* initialisation: Xavier-uniform, with the last conv of every residual branch, the attention
  output and the final conv zero-initialised (score-SDE's ``init_scale=0``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unified_ode.networks.labels import ClassEmbedding
from unified_ode.networks.unet_layers import (
    AttentionBlock,
    GaussianFourierEmbedding,
    Norm32,
    PositionalEmbedding,
    PyramidDown,
    ResBlock,
    conv,
    linear,
)

EMBEDDINGS = ("positional", "fourier")
ENCODERS = ("standard", "residual")


class UNet(nn.Module):
    """``F(x, c_noise, labels=None)``: ``(B, C, H, W), (B,) -> (B, C, H, W)``.

    Parameters
    ----------
    data_shape: ``(C, H, W)`` of one image; ``H`` and ``W`` must be divisible by
        ``2^(len(channel_mult) - 1)``.
    model_channels: base width (128 on CIFAR-10).
    channel_mult: width multiplier per level (resolution halves from one level to the next).
    num_blocks: residual blocks per level in the encoder (decoder: one more).
    attn_resolutions: feature-map sizes (``H``) with self-attention, e.g. ``[16]``.
    dropout: dropout probability inside residual blocks.
    embedding: ``"positional"`` (DDPM++) or ``"fourier"`` (NCSN++); ``fourier_scale``: std of
        the Fourier frequencies.
    resample_filter: ``None`` (pool / nearest) or an even FIR filter such as ``[1, 3, 3, 1]``.
    encoder: ``"standard"`` or ``"residual"`` (NCSN++'s input pyramid, summed into each
        down-sampled level with ``1/√2``).
    num_classes, p_uncond: class conditioning (:class:`~unified_ode.networks.labels.
        ClassEmbedding`, added to the noise embedding before its MLP, as in EDM); 0/None:
        unconditional, with the state_dict of an unconditional U-Net.
    """

    def __init__(self, data_shape, model_channels: int = 128,
                 channel_mult=(1, 2, 2, 2), num_blocks: int = 4, attn_resolutions=(16,),
                 dropout: float = 0.1, embedding: str = "positional",
                 fourier_scale: float = 16.0, resample_filter=None,
                 encoder: str = "standard", num_classes: int | None = None,
                 p_uncond: float = 0.1):
        super().__init__()
        shape = tuple(int(s) for s in data_shape)
        if len(shape) != 3:
            raise ValueError(f"a U-Net needs image data of shape (C, H, W), got {shape}; use "
                             "network=mlp for vectors")
        cin, height, width = shape
        levels = len(channel_mult)
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise ValueError(f"image size {height}x{width} is not divisible by {factor} "
                             f"(2^(levels-1) for channel_mult={list(channel_mult)}); use fewer "
                             "levels (network.channel_mult) or resize the data")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"network.embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"network.encoder must be one of {ENCODERS}, got {encoder!r}")
        self.data_shape = shape
        fir = list(resample_filter) if resample_filter else None
        attn = {int(r) for r in (attn_resolutions or ())}
        nf = int(model_channels)
        emb_dim = 4 * nf

        if embedding == "positional":
            self.embed = PositionalEmbedding(nf)
            embed_out = nf
        else:
            self.embed = GaussianFourierEmbedding(2 * nf, scale=fourier_scale)
            embed_out = 2 * nf
        self.num_classes = int(num_classes or 0)
        self.p_uncond = float(p_uncond)
        if self.num_classes:
            self.class_embed = ClassEmbedding(self.num_classes, embed_out, self.p_uncond)
        self.embed_mlp = nn.Sequential(linear(embed_out, emb_dim), nn.SiLU(),
                                       linear(emb_dim, emb_dim))

        # encoder ---------------------------------------------------------------------------
        self.conv_in = conv(cin, nf)
        self.enc = nn.ModuleList()
        self.pyramid = nn.ModuleList() if encoder == "residual" else None
        skips = [nf]
        ch, res, pyr_ch = nf, height, cin
        for level, mult in enumerate(channel_mult):
            cout = nf * int(mult)
            for _ in range(num_blocks):
                self.enc.append(ResBlock(ch, cout, emb_dim, dropout=dropout, fir=fir))
                ch = cout
                if res in attn:
                    self.enc.append(AttentionBlock(ch))
                skips.append(ch)
            if level != levels - 1:
                self.enc.append(ResBlock(ch, ch, emb_dim, dropout=dropout, down=True, fir=fir))
                if self.pyramid is not None:
                    self.pyramid.append(PyramidDown(pyr_ch, ch, fir))
                    pyr_ch = ch
                res //= 2
                skips.append(ch)

        # middle ----------------------------------------------------------------------------
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout=dropout),
                                  AttentionBlock(ch),
                                  ResBlock(ch, ch, emb_dim, dropout=dropout)])

        # decoder ---------------------------------------------------------------------------
        self.dec = nn.ModuleList()
        for level in reversed(range(levels)):
            cout = nf * int(channel_mult[level])
            for _ in range(num_blocks + 1):
                self.dec.append(ResBlock(ch + skips.pop(), cout, emb_dim, dropout=dropout,
                                         fir=fir))
                ch = cout
            if res in attn:
                self.dec.append(AttentionBlock(ch))
            if level != 0:
                self.dec.append(ResBlock(ch, ch, emb_dim, dropout=dropout, up=True, fir=fir))
                res *= 2
        assert not skips
        self.norm_out = Norm32(ch)
        self.conv_out = conv(ch, cin, zero=True)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)`` (unit scale), ``c_noise`` ``(B,)``, ``labels`` ``(B,)`` long
        (conditional nets; ``-1`` = no class) -> ``(B, C, H, W)`` in ``x``'s dtype (also
        under autocast)."""
        emb = self.embed(c_noise.reshape(-1).expand(x.shape[0]))
        if self.num_classes:
            emb = emb + self.class_embed(labels, x.shape[0]).to(emb.dtype)
        elif labels is not None:
            raise ValueError("labels given to an unconditional U-Net (num_classes=0)")
        emb = self.embed_mlp(emb)
        h = self.conv_in(x)
        hs = [h]
        pyramid = x if self.pyramid is not None else None
        n_down = 0
        for block in self.enc:
            if isinstance(block, AttentionBlock):
                h = block(h)
                hs[-1] = h
                continue
            h = block(h, emb)
            if block.resample is not None and pyramid is not None:
                pyramid = self.pyramid[n_down](pyramid)
                pyramid = (pyramid + h) * (1 / math.sqrt(2))
                h = pyramid
            n_down += block.resample is not None
            hs.append(h)
        for block in self.mid:
            h = block(h) if isinstance(block, AttentionBlock) else block(h, emb)
        for block in self.dec:
            if isinstance(block, AttentionBlock):
                h = block(h)
            elif block.resample is not None:
                h = block(h, emb)
            else:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.to(x.dtype)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
