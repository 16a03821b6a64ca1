"""Time grids for integrating a generative ODE from ``t_max`` down to ``t_min`` (and optionally 0).

A grid of ``steps`` steps is a decreasing 1-D tensor of ``steps + 1`` times. With
``final_step=True`` (the EDM convention) the first ``steps`` entries run from ``t_max`` to
``t_min`` and the last entry is exactly 0: the last step is a denoising step from ``t_min`` to
the data plane. With ``final_step=False`` the ``steps + 1`` entries run from ``t_max`` to
``t_min``.

Every grid is float64 so that the times written into outputs are the times used.
"""

from __future__ import annotations

import torch
from torch import Tensor

GRID_KINDS = ("edm", "log", "uniform")


def _points(kind: str, t_min: float, t_max: float, n: int, rho: float) -> Tensor:
    if n == 1:
        return torch.tensor([t_max], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    if kind == "edm":
        lo, hi = t_min ** (1.0 / rho), t_max ** (1.0 / rho)
        return (hi + i * (lo - hi)) ** rho
    if kind == "log":
        return torch.exp(torch.log(torch.tensor(t_max, dtype=torch.float64)) * (1 - i)
                         + torch.log(torch.tensor(t_min, dtype=torch.float64)) * i)
    if kind == "uniform":
        return t_max + i * (t_min - t_max)
    raise ValueError(f"unknown time grid {kind!r}; choose one of {', '.join(GRID_KINDS)}")


def make_grid(kind: str, steps: int, t_min: float, t_max: float, *, rho: float = 7.0,
              final_step: bool = True) -> Tensor:
    """Return the ``(steps + 1,)`` decreasing float64 grid described in the module docstring.

    ``kind``: ``"edm"`` (EDM's rho-schedule ``(t_max^(1/rho) + i/(N-1)(t_min^(1/rho) -
    t_max^(1/rho)))^rho``), ``"log"`` (log-uniform) or ``"uniform"``.
    """
    if steps < 1:
        raise ValueError(f"a time grid needs at least 1 step, got steps={steps}")
    if not 0 <= t_min < t_max:
        raise ValueError(f"a time grid needs 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if kind == "log" and t_min <= 0:
        raise ValueError("a log-uniform grid needs t_min > 0")
    if final_step:
        pts = _points(kind, t_min, t_max, steps, rho)
        return torch.cat([pts, torch.zeros(1, dtype=torch.float64)])
    return _points(kind, t_min, t_max, steps + 1, rho)
