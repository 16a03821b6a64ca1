"""Class-conditional sampling and classifier-free guidance (issue 16), for every field.

A class-conditional model is called ``model(x, t, labels=...)`` with labels ``(B,)`` long in
``[0, num_classes)``; label ``-1`` is the null class, the unconditional model trained in the
same network by label dropout (:class:`~unified_ode.networks.labels.ClassEmbedding`) or, for
the exact field, the field of all the data
(:class:`~unified_ode.physics.conditional.ConditionalExactPosterior`).

**Guidance** (Ho & Salimans 2022), weight ``w >= 0``, in the parametrisation's own form:

    P_w = P_c + w (P_c − P_u) = (1 + w) P_c − w P_u,

with ``P_c`` the conditional and ``P_u`` the unconditional prediction. ``w = 0`` is the plain
conditional model (this is the convention of Ho & Salimans; EDM-2's "guidance 1 + w" is the
same family with the weight shifted by one). For the denoiser and velocity forms ``P`` is the
prediction itself; for affine fields these two agree, since the drift is affine in the
denoiser. PFGM's normalised field is not linear in the denoiser, so there the denoisers
``D_c``, ``D_u`` are combined and mapped back.

**Cost**: one network call per solver evaluation on the doubled batch ``[x; x]`` with labels
``[c; −1]``. A solver's NFE counts these calls (network evaluations of the doubled batch),
which is what a GPU spends one forward pass on. With a guidance interval ``(t_lo, t_hi)``,
states outside it are evaluated conditionally only (the single batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unified_ode.errors import UserError
from unified_ode.networks.labels import NULL_LABEL
from unified_ode.parametrisation import Denoiser, Parametrisation, ProbabilityFlow, Velocity


def label_info(model) -> tuple[int, bool]:
    """``(num_classes, supports_guidance)`` of a model: 0 classes for an unconditional one;
    guidance needs a null class (a network trained with ``p_uncond > 0``, or the exact field)."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if getattr(model, "supports_guidance", False):
        return num_classes, True
    return num_classes, float(getattr(model, "p_uncond", 0.0) or 0.0) > 0


def check_request(model, labels: Tensor | None, guidance: float = 0.0,
                  interval: Sequence[float] | None = None) -> None:
    """A :class:`UserError` naming the value and what is allowed, for: labels on an
    unconditional model, a label outside ``[0, num_classes)``, a negative weight, guidance
    without labels, guidance on a model trained without label dropout, a malformed interval.
    (A conditional model without labels samples its null class: allowed.)"""
    num_classes, can_guide = label_info(model)
    w = float(guidance)
    if labels is not None:
        if not num_classes:
            raise UserError("labels were given, but the model is unconditional (trained without "
                            "dataset.conditional=true); drop labels=/class= or sample a "
                            "class-conditional run")
        labels = torch.as_tensor(labels)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise UserError(f"label {int(bad[0])} is outside [0, {num_classes}): the model has "
                            f"{num_classes} classes (0..{num_classes - 1})")
    if not w >= 0:
        raise UserError(f"guidance must be a weight >= 0 (0: the conditional model), got {w}")
    if w > 0:
        if labels is None:
            raise UserError(f"guidance={w} needs labels (labels=[...] or class=<c>): it "
                            "sharpens the class-conditional model against the unconditional one")
        if not can_guide:
            raise UserError(f"guidance={w} needs the unconditional model, which this network "
                            "did not learn: it was trained without label dropout "
                            "(network.p_uncond=0). Retrain with network.p_uncond > 0 (e.g. 0.1) "
                            "or sample with guidance=0")
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not lo <= hi:
            raise UserError(f"guidance_interval must be [t_lo, t_hi] with t_lo <= t_hi, got "
                            f"{list(interval)}")


def combine(parametrisation: Parametrisation, x: Tensor, t: Tensor, cond: Tensor,
            uncond: Tensor, w: Tensor | float) -> Tensor:
    """``(1 + w) P_c − w P_u`` in ``parametrisation``'s form (see the module docstring);
    ``w`` a float or ``(B,)``."""
    w = torch.as_tensor(w, dtype=cond.dtype, device=cond.device)
    if w.ndim:
        w = w.view(-1, *([1] * (cond.ndim - 1)))
    if isinstance(parametrisation, (Denoiser, Velocity)):
        return cond + w * (cond - uncond)
    d_c = parametrisation.to_denoiser(x, t, cond)
    d_u = parametrisation.to_denoiser(x, t, uncond)
    return parametrisation.from_denoiser(x, t, d_c + w * (d_c - d_u))


class GuidedModel(nn.Module):
    """``forward(x, t)``: the guided prediction of ``model`` for fixed ``labels`` ``(B,)``,
    one ``model`` call per forward (the doubled batch where guidance applies).

    ``guidance``: the weight ``w``; ``interval``: ``(t_lo, t_hi)``, guidance only for
    ``t_lo <= t <= t_hi`` (``None``: everywhere)."""

    def __init__(self, model, parametrisation: Parametrisation, labels: Tensor,
                 guidance: float = 0.0, interval: Sequence[float] | None = None):
        super().__init__()
        self.model = model
        self.parametrisation = parametrisation
        self.labels = torch.as_tensor(labels).long().reshape(-1)
        self.guidance = float(guidance)
        self.interval = None if interval is None else tuple(float(v) for v in interval)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        labels = self.labels.to(x.device)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for a batch of {x.shape[0]} states")
        active = torch.full_like(t, self.guidance > 0, dtype=torch.bool)
        if self.interval is not None:
            active &= (t >= self.interval[0]) & (t <= self.interval[1])
        if not bool(active.any()):
            return self.model(x, t, labels=labels)
        rows = active.nonzero().squeeze(1)
        null = torch.full_like(labels[rows], NULL_LABEL)
        out = self.model(torch.cat([x, x[rows]]), torch.cat([t, t[rows]]),
                         labels=torch.cat([labels, null]))
        cond, uncond = out[: x.shape[0]], out[x.shape[0]:]
        guided = cond.clone()
        guided[rows] = combine(self.parametrisation, x[rows], t[rows], cond[rows], uncond,
                               self.guidance)
        return guided


def guided_flow(parametrisation: Parametrisation, model, labels: Tensor | None,
                guidance: float = 0.0, interval: Sequence[float] | None = None
                ) -> ProbabilityFlow:
    """The generative ODE of class ``labels`` ``(B,)`` (guided with weight ``guidance``),
    checked by :func:`check_request`; ``labels=None``: the unconditional flow of ``model``
    (for a conditional model, its null class)."""
    check_request(model, labels, guidance, interval)
    if labels is None:
        return ProbabilityFlow(parametrisation, model)
    return ProbabilityFlow(parametrisation,
                           GuidedModel(model, parametrisation, labels, guidance, interval))


def requested_labels(labels, klass, n: int) -> Tensor | None:
    """The per-sample labels of ``sample.py``: ``labels=[3,3,7]`` (one sample each; ``n`` is
    its length) or ``class=3`` (``n`` samples of class 3); ``None`` when neither is set."""
    if labels is not None and klass is not None:
        raise UserError("pass either labels=[...] or class=<c>, not both")
    if labels is not None:
        values = list(labels) if isinstance(labels, Sequence) and not isinstance(labels, str) \
            else [labels]
        try:
            out = torch.as_tensor([int(v) for v in values], dtype=torch.long)
        except (TypeError, ValueError) as exc:
            raise UserError(f"labels must be a list of class indices, got {labels!r}") from exc
        if not out.numel():
            raise UserError("labels=[] is empty; give at least one class index")
        return out
    if klass is not None:
        try:
            return torch.full((int(n),), int(klass), dtype=torch.long)
        except (TypeError, ValueError) as exc:
            raise UserError(f"class must be a class index, got {klass!r}") from exc
    return None


def conditional_request(cfg, module) -> tuple[Tensor | None, dict]:
    """``sample.py``'s ``labels``/``class``/``guidance``/``guidance_interval`` options for
    ``module`` (a :class:`~unified_ode.lit.module.GenerativeODE`): ``(labels or None,
    {"guidance": w, "guidance_interval": ...})``, checked (:func:`check_request`)."""
    labels = requested_labels(cfg.get("labels"), cfg.get("class"), int(cfg.n))
    interval = cfg.get("guidance_interval")
    interval = None if interval is None else [float(v) for v in interval]
    if interval is not None and len(interval) != 2:
        raise UserError(f"guidance_interval must be [t_lo, t_hi], got {interval}")
    guidance = float(cfg.get("guidance", 0.0) or 0.0)
    check_request(module.model, labels, guidance, interval)
    return labels, {"guidance": guidance, "guidance_interval": interval}


def batch_labels(labels: Tensor | None, lo: int, batch_size: int, guidance: dict) -> dict:
    """Keyword arguments of ``GenerativeODE.sample`` for the batch starting at sample ``lo``."""
    if labels is None:
        return {}
    return {"labels": labels[lo:lo + batch_size], **guidance}


def guidance_info(labels: Tensor | None, guidance: dict) -> dict:
    """The ``sample_info.json`` entries of a conditional draw (none for an unconditional one);
    NFE counts network calls on the doubled batch where guidance applies."""
    if labels is None:
        return {}
    return {"labels_per_class": torch.bincount(labels).tolist(), **guidance,
            "nfe_counts": "network calls; with guidance each call is on the doubled batch"}


__all__ = ["GuidedModel", "batch_labels", "check_request", "combine", "conditional_request",
           "guided_flow", "guidance_info", "label_info", "requested_labels"]
