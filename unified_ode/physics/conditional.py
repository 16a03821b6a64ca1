"""The exact class-conditional field of a finite labelled data set (issue 16).

The conditional generative ODE of class ``c`` is the field of the class's own points, so its
exact prediction is that of an :class:`~unified_ode.physics.exact.ExactPosterior` of those
points. :class:`ConditionalExactPosterior` holds one such posterior per class plus one of all
the data (the unconditional field, the "null" class ``-1``) and routes every query row to the
posterior of its label. Classifier-free guidance (:mod:`unified_ode.guidance`) then combines
the class and all-data predictions exactly as it combines a network's conditional and
unconditional outputs: the ground truth for tests and for the guidance study.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unified_ode.physics.exact import ExactPosterior


class ConditionalExactPosterior(nn.Module):
    """``forward(x, t, labels=None)``: the exact prediction of each row's class (``labels``
    ``(N,)`` long in ``[0, num_classes)``), or of all the data (label ``-1`` or
    ``labels=None``).

    Parameters
    ----------
    field, parametrisation, **options: as for :class:`ExactPosterior`.
    data: ``(M, *shape)`` points; labels: ``(M,)`` long, their classes.
    num_classes: number of classes (default ``labels.max() + 1``); a class without points
        is an error.
    """

    #: The all-data posterior is exact, so guidance needs no label dropout.
    supports_guidance = True

    def __init__(self, field, data: Tensor, labels: Tensor, *, num_classes: int | None = None,
                 parametrisation=None, **options):
        super().__init__()
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != data.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {data.shape[0]} data points")
        self.num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
        counts = torch.bincount(labels, minlength=self.num_classes)
        if labels.min() < 0 or labels.max() >= self.num_classes or (counts == 0).any():
            raise ValueError(f"labels must cover every class 0..{self.num_classes - 1} with at "
                             f"least one point; counts per class: {counts.tolist()}")
        self.field = field
        self.parametrisation = parametrisation
        self.all = ExactPosterior(field, data, parametrisation=parametrisation, **options)
        self.classes = nn.ModuleList(
            ExactPosterior(field, data[labels == c], parametrisation=parametrisation, **options)
            for c in range(self.num_classes))

    def posterior(self, label: int) -> ExactPosterior:
        """The posterior of class ``label`` (``-1``: all the data)."""
        return self.all if label < 0 else self.classes[label]

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if labels is None:
            return self.all(x, t)
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {x.shape[0]} states")
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}) or -1 (all data), got "
                             f"values in [{int(labels.min())}, {int(labels.max())}]")
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().squeeze(1)
            out[rows] = self.posterior(int(c))(x[rows], t[rows])
        return out


__all__ = ["ConditionalExactPosterior"]
