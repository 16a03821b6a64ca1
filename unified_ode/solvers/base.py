"""Solver interface: integrate ``dx/dt = f(x, t)`` over a decreasing time grid, counting NFE.

A *drift* is any callable ``f(x, t) -> dx/dt`` with ``x`` ``(B, *shape)`` and ``t`` a scalar
tensor; each call is one network evaluation (NFE). Solvers never special-case a field: the
field only supplies its default time grid (:meth:`Field.default_grid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.timegrid import GRID_KINDS, make_grid

Drift = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SolveResult:
    """What a solver returns.

    x: final states ``(B, *shape)``; nfe: exact number of drift (network) calls;
    times: the float64 time grid used ``(steps + 1,)``; trajectory: recorded states
    ``(K, B, *shape)`` or None; trajectory_times: ``(K,)`` times of the recorded states.
    """

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None
    trajectory_times: Tensor | None = None


class CountingDrift:
    """Wraps a drift and counts its calls: the NFE is measured, never computed from a formula."""

    def __init__(self, drift: Drift):
        self.drift = drift
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.drift(x, t)


class Recorder:
    """Keeps every ``every``-th state (always the first and the last) for field-line plots."""

    def __init__(self, every: int):
        self.every = int(every)
        self.states: list[Tensor] = []
        self.times: list[float] = []
        self._last_step = -1

    def __call__(self, step: int, x: Tensor, t: Tensor, *, final: bool = False) -> None:
        if self.every <= 0:
            return
        if step % self.every == 0 or final:
            if step == self._last_step:
                return
            self.states.append(x.detach().clone())
            self.times.append(float(t))
            self._last_step = step

    def result(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.states:
            return None, None
        return torch.stack(self.states), torch.tensor(self.times, dtype=torch.float64)


class Solver:
    """Base class of grid solvers.

    Parameters
    ----------
    steps:
        Number of steps (intervals) of the grid.
    grid:
        ``None`` for the field's default grid, or one of ``"edm"``, ``"log"``, ``"uniform"``.
    rho:
        Exponent of the ``"edm"`` grid.
    t_min, t_max:
        Override the field's time range (``None``: the field's).
    final_step:
        End with a step from ``t_min`` to exactly 0 (a denoising step for affine fields).
    record_every:
        Record every k-th state into ``SolveResult.trajectory`` (0: none).
    """

    name = "solver"

    def __init__(self, steps: int = 18, grid: str | None = None, rho: float = 7.0,
                 t_min: float | None = None, t_max: float | None = None,
                 final_step: bool = True, record_every: int = 0):
        if int(steps) < 1:
            raise ValueError(f"solver.steps must be >= 1, got {steps}")
        if grid is not None and grid not in GRID_KINDS:
            raise ValueError(f"unknown solver.grid={grid!r}; choose null (the field's default) "
                             f"or one of {list(GRID_KINDS)}")
        self.steps = int(steps)
        self.grid = grid
        self.rho = float(rho)
        self.t_min = t_min
        self.t_max = t_max
        self.final_step = bool(final_step)
        self.record_every = int(record_every)

    def time_grid(self, field) -> Tensor:
        """The ``(steps + 1,)`` float64 grid this solver uses with ``field``."""
        t_min = field.t_min if self.t_min is None else float(self.t_min)
        t_max = field.t_max if self.t_max is None else float(self.t_max)
        if self.grid is None and self.t_min is None and self.t_max is None:
            return field.default_grid(self.steps, final_step=self.final_step)
        return make_grid(self.grid or "edm", self.steps, t_min, t_max, rho=self.rho,
                         final_step=self.final_step)

    def solve(self, drift: Drift, x: Tensor, times: Tensor) -> SolveResult:
        """Integrate from ``times[0]`` to ``times[-1]`` starting at ``x``."""
        counter = CountingDrift(drift)
        recorder = Recorder(self.record_every)
        x = self._integrate(counter, x, times.to(torch.float64), recorder)
        traj, traj_t = recorder.result()
        return SolveResult(x=x, nfe=counter.calls, times=times, trajectory=traj,
                           trajectory_times=traj_t)

    def _integrate(self, drift: Drift, x: Tensor, times: Tensor, record: Recorder) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"solver": self.name, "steps": self.steps, "grid": self.grid or "field default",
                "rho": self.rho, "t_min": self.t_min, "t_max": self.t_max,
                "final_step": self.final_step}
