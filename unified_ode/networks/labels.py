"""Class conditioning of a network (EDM-style, Karras et al. 2022, ``map_label``).

A label ``c`` in ``[0, num_classes)`` is mapped to a vector ``W·onehot(c)`` (a linear map of
the one-hot code, no bias) that the network adds to its time embedding. The "null" class
(label ``-1``, or a dropped label) is the zero vector, so the same weights also model the
unconditional data distribution: that is what classifier-free guidance
(:mod:`unified_ode.guidance`) combines with the conditional one.

Label dropout: in training mode each label is replaced by the null class with probability
``p_uncond`` (Ho & Salimans 2022); at evaluation no label is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The label of the null (unconditional) class.
NULL_LABEL = -1


class ClassEmbedding(nn.Module):
    """``forward(labels, batch)`` -> ``(batch, dim)``: the class vectors of ``labels``
    ``(batch,)`` long (``-1``: null class, zero vector); ``labels=None``: all null.

    Parameters: ``num_classes`` (>= 1), ``dim`` (the time embedding's width), ``p_uncond``
    (label dropout probability in training, in ``[0, 1)``).
    """

    def __init__(self, num_classes: int, dim: int, p_uncond: float = 0.1):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= float(p_uncond) < 1:
            raise ValueError(f"network.p_uncond must be in [0, 1), got {p_uncond}")
        self.num_classes = int(num_classes)
        self.p_uncond = float(p_uncond)
        self.map = nn.Linear(self.num_classes, int(dim), bias=False)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        weight = self.map.weight  # (dim, num_classes)
        if labels is None:
            return weight.new_zeros(batch, weight.shape[0])
        labels = torch.as_tensor(labels, device=weight.device).long().reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"{labels.shape[0]} labels for a batch of {batch}")
        if labels.numel() and (int(labels.min()) < NULL_LABEL
                               or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}) or {NULL_LABEL} "
                             f"(null class), got values in [{int(labels.min())}, "
                             f"{int(labels.max())}]")
        keep = labels >= 0
        if self.training and self.p_uncond > 0:
            keep = keep & (torch.rand(batch, device=weight.device) >= self.p_uncond)
        onehot = torch.zeros(batch, self.num_classes, dtype=weight.dtype, device=weight.device)
        rows = keep.nonzero().squeeze(1)
        onehot[rows, labels[rows]] = 1.0
        return self.map(onehot)
