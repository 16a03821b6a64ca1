"""A residual MLP with a Fourier time embedding, for low-dimensional data (2-D toys, 8×8 digits)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unified_ode.networks.labels import ClassEmbedding
from unified_ode.networks.unet_layers import GaussianFourierEmbedding


class ResidualBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = torch.nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.drop(z))


class MLP(nn.Module):
    """``F(x, c_noise, labels=None)``: maps ``x`` ``(B, *data_shape)`` and a noise label
    ``(B,)`` (and, when ``num_classes``, class labels ``(B,)`` long, ``-1`` = none) to
    ``(B, *data_shape)``.

    Parameters
    ----------
    data_shape: shape of one sample, e.g. ``[2]`` or ``[1, 8, 8]``.
    width: hidden width; depth: number of residual blocks; time_embed_dim: Fourier features.
    num_classes, p_uncond: class conditioning (:class:`~unified_ode.networks.labels.
        ClassEmbedding`, added to the time embedding); 0/None: unconditional, with the
        state_dict of an unconditional MLP.
    """

    def __init__(self, data_shape, width: int = 256, depth: int = 4, time_embed_dim: int = 64,
                 dropout: float = 0.0, num_classes: int | None = None, p_uncond: float = 0.1):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        dim = math.prod(self.data_shape)
        self.time_embed = nn.Sequential(GaussianFourierEmbedding(time_embed_dim),
                                        nn.Linear(time_embed_dim, width), nn.SiLU(),
                                        nn.Linear(width, width))
        self.num_classes = int(num_classes or 0)
        self.p_uncond = float(p_uncond)
        if self.num_classes:
            self.class_embed = ClassEmbedding(self.num_classes, width, self.p_uncond)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([ResidualBlock(width, width, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.time_embed(c_noise)
        if self.num_classes:
            emb = emb + self.class_embed(labels, x.shape[0])
        elif labels is not None:
            raise ValueError("labels given to an unconditional MLP (num_classes=0)")
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).view(x.shape)
