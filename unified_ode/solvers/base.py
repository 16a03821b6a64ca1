"""Solver interface: integrate ``dx/dt = f(x, t)`` over a monotone time grid, counting NFE.

A *drift* is any callable ``f(x, t) -> dx/dt`` with ``x`` ``(B, *shape)`` and ``t`` a scalar
tensor; each call is one network evaluation (NFE). A *denoiser* is a callable ``D(x, t) ->
E[y | x, t]`` of the same signature; solvers in denoiser form (the multistep exponential
integrators) call it instead of the drift, and its calls count as NFE too. Solvers never
special-case a field: the field only supplies its default time grid
(:meth:`Field.default_grid`) and, for denoiser-form solvers, its schedule ``a(t)``, ``s(t)``.

Generation runs on a decreasing grid from ``t_max`` to ``t_min`` and, optionally, a final
step to exactly ``t = 0``, where the drift of an affine field, ``(s'/s)(x − a D) + a' D``, is
undefined (``s(0) = 0``). Every solver takes that last step as one Euler step, which for an
affine field is exactly the denoising step ``x_0 = a(0) D(x, t_min)`` when ``a' = 0`` (the
``a = 1, s = t`` fields) and the first-order step otherwise; the denoiser-form solvers take
the denoising step ``x_0 = a(0) D`` itself. Either way it costs one NFE.
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

    x: final states ``(B, *shape)``; nfe: exact number of network calls (drift and denoiser
    calls together); times: the float64 time grid used ``(steps + 1,)`` (for the adaptive
    solver: the grid of output times its dense output is read at); trajectory: recorded states
    ``(K, B, *shape)`` or None; trajectory_times: ``(K,)`` times of the recorded states;
    eval_times: ``(nfe,)`` float64 times at which the network was called, in call order.
    """

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None
    trajectory_times: Tensor | None = None
    eval_times: Tensor | None = None


class CountingDrift:
    """Wraps a drift (or denoiser) and counts its calls: the NFE is measured, never computed
    from a formula. ``log`` (a list, optional, shared between wrappers) receives the time of
    every call."""

    def __init__(self, drift: Drift, log: list[float] | None = None):
        self.drift = drift
        self.calls = 0
        self.log = log

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        if self.log is not None:
            self.log.append(float(torch.as_tensor(t).reshape(-1)[0]))
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


def step_time(times: Tensor, i: int, x: Tensor) -> Tensor:
    """``times[i]`` as a scalar tensor in ``x``'s dtype and on its device."""
    return times[i].to(dtype=x.dtype, device=x.device)


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

    Subclasses implement :meth:`_integrate` (drift form) or, with ``needs_denoiser = True``,
    :meth:`_integrate_denoiser` (denoiser form on an affine field).
    """

    name = "solver"
    #: True for solvers that need ``denoiser=`` and an affine ``field=`` in :meth:`solve`.
    needs_denoiser = False

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

    def nfe_for_steps(self, steps: int) -> int | None:
        """Network calls of a ``steps``-step solve with this solver's settings (``final_step``
        included); ``None`` when the cost is not known in advance (adaptive solvers). One call
        per step unless a subclass says otherwise."""
        return int(steps)

    def steps_within(self, nfe: int) -> int:
        """The most steps whose NFE fits in ``nfe`` (at least 1): how benchmarks give every
        solver the same budget."""
        if self.nfe_for_steps(1) is None:
            raise ValueError(f"{self.name} has no fixed NFE per step; it cannot be given a "
                             "step count for an NFE budget")
        steps = 1
        while self.nfe_for_steps(steps + 1) <= int(nfe):
            steps += 1
        return steps

    def time_grid(self, field) -> Tensor:
        """The ``(steps + 1,)`` float64 grid this solver uses with ``field``."""
        t_min = field.t_min if self.t_min is None else float(self.t_min)
        t_max = field.t_max if self.t_max is None else float(self.t_max)
        if self.grid is None and self.t_min is None and self.t_max is None:
            return field.default_grid(self.steps, final_step=self.final_step)
        return make_grid(self.grid or "edm", self.steps, t_min, t_max, rho=self.rho,
                         final_step=self.final_step)

    def solve(self, drift: Drift, x: Tensor, times: Tensor, *, denoiser: Drift | None = None,
              field=None) -> SolveResult:
        """Integrate from ``times[0]`` to ``times[-1]`` starting at ``x`` ``(B, *shape)``.

        ``drift``: ``f(x, t)``. ``denoiser``, ``field``: the denoiser ``D(x, t)`` and the
        affine field it belongs to, required by denoiser-form solvers (``needs_denoiser``) and
        ignored by the others. ``times``: a strictly monotone 1-D grid (float64 is kept).
        """
        times = torch.as_tensor(times).to(torch.float64).cpu()
        if times.ndim != 1 or times.numel() < 2:
            raise ValueError(f"a time grid needs at least 2 times, got shape {tuple(times.shape)}")
        diffs = times[1:] - times[:-1]
        if not (torch.all(diffs < 0) or torch.all(diffs > 0)):
            raise ValueError("the time grid must be strictly monotone, got "
                             f"{times.tolist()}")
        log: list[float] = []
        counter = CountingDrift(drift, log)
        recorder = Recorder(self.record_every)
        if self.needs_denoiser:
            from unified_ode.solvers.affine import AffineSchedule

            if denoiser is None:
                raise ValueError(
                    f"solver={self.name} works in denoiser form and needs "
                    "solve(..., denoiser=D, field=field); GenerativeODE.sample passes them. "
                    "Use solver=heun, rk4 or dopri5 with a drift only.")
            schedule = AffineSchedule.of(field, self.name)
            den = CountingDrift(denoiser, log)
            x = self._integrate_denoiser(den, x, times, recorder, schedule)
            nfe = den.calls + counter.calls
        else:
            x = self._integrate(counter, x, times, recorder)
            nfe = counter.calls
        traj, traj_t = recorder.result()
        return SolveResult(x=x, nfe=nfe, times=times, trajectory=traj, trajectory_times=traj_t,
                           eval_times=torch.tensor(log, dtype=torch.float64))

    def _integrate(self, drift: Drift, x: Tensor, times: Tensor, record: Recorder) -> Tensor:
        raise NotImplementedError

    def _integrate_denoiser(self, denoiser: Drift, x: Tensor, times: Tensor, record: Recorder,
                            schedule) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Facts written into outputs (``sample_info.json``) and logs."""
        return {"solver": self.name, "steps": self.steps, "grid": self.grid or "field default",
                "rho": self.rho, "t_min": self.t_min, "t_max": self.t_max,
                "final_step": self.final_step, "record_every": self.record_every}
