"""Solver interface: integrate a generative ODE over a monotone time grid, counting NFE.

Solvers see a **flow** (:class:`Flow`), never a physics class: ``flow.drift(x, t)`` is
``dx/dt``; ``flow.denoiser(x, t)`` is ``E[y | x, t]``; ``flow.last_step(x, t)`` is the exact
step from ``t`` (the grid's last positive time) to ``t = 0``; ``flow.schedule`` is ``None`` or
an affine schedule with ``a(t)``, ``s(t)`` (float64 scalars) for the denoiser-form
(exponential) solvers. ``x`` is ``(B, *shape)`` and ``t`` a scalar tensor; every call of a
flow method is one network evaluation (NFE), counted by wrapping the flow
(:class:`CountingFlow`), never computed from a formula.
:class:`unified_ode.parametrisation.ProbabilityFlow` makes a flow of a model and its field.

Generation runs on a decreasing grid from ``t_max`` to ``t_min`` and, optionally, a final
step to exactly ``t = 0``, where the drift is undefined (``s(0) = 0``). Every solver takes
that last step as ``flow.last_step`` — for an affine field ``x = a(t) y + s(t) eps`` the exact
``x_0 = a(0) D(x, t_min)`` whatever ``a`` and ``s`` — at the cost of one NFE.

Fixed-step solvers share one loop (:meth:`Solver._integrate`) and implement only
:meth:`Solver.step`; states along the way reach the caller through ``record_every`` (kept in
:attr:`SolveResult.trajectory`) and ``callback(i, x, t)``, and ``progress=True`` shows a bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from unified_ode.timegrid import (
    OPTIMISED,
    GridFileError,
    grid_from_file,
    is_grid_file_option,
    load_grid_file,
    make_grid,
)

Drift = Callable[[Tensor, Tensor], Tensor]
#: ``callback(i, x, t)``: called with the state after step ``i`` (``i = 0``: the start) and
#: its float time ``t``.
StepCallback = Callable[[int, Tensor, float], None]


class Schedule(Protocol):
    """``a(t)`` and ``s(t)`` of an affine kernel ``x = a(t) y + s(t) eps`` (float64 floats)."""

    def a(self, t) -> float: ...

    def s(self, t) -> float: ...


class Flow(Protocol):
    """What a solver integrates (see the module docstring)."""

    #: affine schedule for denoiser-form solvers, or None
    schedule: Schedule | None
    #: the field's name, for error messages
    name: str

    def drift(self, x: Tensor, t: Tensor) -> Tensor: ...

    def denoiser(self, x: Tensor, t: Tensor) -> Tensor: ...

    def last_step(self, x: Tensor, t: Tensor) -> Tensor: ...


@dataclass
class SolveResult:
    """What a solver returns.

    x: final states ``(B, *shape)``; nfe: exact number of network calls (every flow call);
    times: the float64 time grid used ``(steps + 1,)`` (for the adaptive solver: the grid of
    output times its dense output is read at); trajectory: recorded states ``(K, B, *shape)``
    or None; trajectory_times: ``(K,)`` times of the recorded states; eval_times: ``(nfe,)``
    float64 times at which the network was called, in call order.
    """

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None
    trajectory_times: Tensor | None = None
    eval_times: Tensor | None = None


class NFELimitExceeded(RuntimeError):
    """A solve needed more network evaluations than the solver's ``max_nfe``."""


class CountingFlow:
    """Wraps a flow and counts its calls (drift, denoiser and last step alike) and their times.

    ``max_nfe``: raise :class:`NFELimitExceeded` at the call that would exceed it (None: no
    limit). ``on_call(t, nfe)``: optional, called at every call (adaptive solvers' progress).
    """

    def __init__(self, flow: Flow, *, max_nfe: int | None = None, on_call=None):
        self.flow = flow
        self.schedule = getattr(flow, "schedule", None)
        self.name = getattr(flow, "name", type(flow).__name__)
        self.calls = 0
        self.times: list[Tensor] = []
        self.max_nfe = max_nfe
        self.on_call = on_call

    def _count(self, t: Tensor) -> None:
        # the time is kept as a tensor (no host sync per call); read once in eval_times()
        t = torch.as_tensor(t).reshape(-1)[0].detach()
        if self.max_nfe is not None and self.calls >= self.max_nfe:
            raise NFELimitExceeded(
                f"the solver reached its limit of {self.max_nfe} network evaluations at "
                f"t = {float(t):.6g} without finishing; raise solver.max_nfe, loosen "
                "solver.rtol/atol, or use a fixed-step solver (solver=heun)")
        self.calls += 1
        self.times.append(t)
        if self.on_call is not None:
            self.on_call(t, self.calls)

    def eval_times(self) -> Tensor:
        """``(calls,)`` float64 CPU times of the calls, in call order."""
        if not self.times:
            return torch.zeros(0, dtype=torch.float64)
        return torch.stack([t.to(torch.float64) for t in self.times]).cpu()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        self._count(t)
        return self.flow.drift(x, t)

    def denoiser(self, x: Tensor, t: Tensor) -> Tensor:
        self._count(t)
        return self.flow.denoiser(x, t)

    def last_step(self, x: Tensor, t: Tensor) -> Tensor:
        self._count(t)
        return self.flow.last_step(x, t)


class DriftFlow:
    """A flow from a bare drift ``f(x, t)`` (for ODEs that are not a model's: tests, the
    likelihood). Its last step to ``t = 0`` is one Euler step; it has no denoiser."""

    schedule = None
    name = "drift"

    def __init__(self, drift: Drift):
        self.drift = drift

    def denoiser(self, x, t):
        raise TypeError("a bare drift has no denoiser; use a solver in drift form "
                        "(euler, heun, rk4, lms, dopri5)")

    def last_step(self, x, t):
        return x - torch.as_tensor(t, dtype=x.dtype, device=x.device) * self.drift(x, t)


class Monitor:
    """Observes the states of a solve: keeps every ``record_every``-th one (always the first and
    the last) for trajectories, calls ``callback`` and advances a progress bar."""

    def __init__(self, record_every: int = 0, callback: StepCallback | None = None,
                 bar=None):
        self.every = int(record_every)
        self.callback = callback
        self.bar = bar
        self.states: list[Tensor] = []
        self.times: list[float] = []
        self._last_step = -1

    def __call__(self, step: int, x: Tensor, t, *, final: bool = False) -> None:
        tf = float(t)
        if self.callback is not None:
            self.callback(step, x, tf)
        if self.bar is not None and step > 0:
            self.bar.update(1)
        if self.every > 0 and (step % self.every == 0 or final) and step != self._last_step:
            self.states.append(x.detach().clone())
            self.times.append(tf)
            self._last_step = step

    def result(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.states:
            return None, None
        return torch.stack(self.states), torch.tensor(self.times, dtype=torch.float64)


def step_time(times: Tensor, i: int, x: Tensor) -> Tensor:
    """``times[i]`` as a scalar tensor in ``x``'s dtype and on its device."""
    return times[i].to(dtype=x.dtype, device=x.device)


def check_grid(times) -> Tensor:
    """``times`` as a float64 CPU tensor, checked to be a strictly monotone 1-D grid."""
    times = torch.as_tensor(times).to(torch.float64).cpu()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 times, got shape {tuple(times.shape)}")
    diffs = times[1:] - times[:-1]
    if not (torch.all(diffs < 0) or torch.all(diffs > 0)):
        raise ValueError(f"the time grid must be strictly monotone, got {times.tolist()}")
    return times


class Solver:
    """Base class of grid solvers.

    Parameters
    ----------
    steps:
        Number of steps (intervals) of the grid.
    grid:
        ``None`` for the field's default grid, one of ``"edm"``, ``"log"``, ``"uniform"``,
        or the path of a grid file (``sample.py task=optimise_grid``; checked against the
        field, this solver and ``steps``). ``"optimised"`` stands for the run directory's
        grid file and is replaced by its path by the application (:mod:`unified_ode.app.grid`).
    rho:
        Exponent of the ``"edm"`` grid.
    t_min, t_max:
        Override the field's time range (``None``: the field's).
    final_step:
        End with the exact step from ``t_min`` to 0 (``flow.last_step``).

    A fixed-step solver implements :meth:`step` (one grid interval; ``state`` is a dict it may
    keep history in). An adaptive one overrides :meth:`_integrate`.
    """

    name = "solver"
    #: True for solvers that need ``flow.schedule`` (an affine field's ``a``, ``s``).
    needs_schedule = False

    def __init__(self, steps: int = 18, grid: str | None = None, rho: float = 7.0,
                 t_min: float | None = None, t_max: float | None = None,
                 final_step: bool = True):
        if int(steps) < 1:
            raise ValueError(f"solver.steps must be >= 1, got {steps}")
        #: the loaded grid file (``grid`` is a path), else None
        self.grid_file = load_grid_file(grid) if is_grid_file_option(grid) else None
        self.steps = int(steps)
        self.grid = grid
        self.rho = float(rho)
        self.t_min = t_min
        self.t_max = t_max
        self.final_step = bool(final_step)

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
        """The ``(steps + 1,)`` float64 grid this solver uses with ``field`` (anything with
        ``t_min``, ``t_max`` and ``default_grid(steps, final_step=...)``)."""
        if self.grid == OPTIMISED:
            raise GridFileError("solver.grid=optimised reads the grid fitted in a run directory "
                             "(sample.py run=<dir> solver.grid=optimised); without one, pass "
                             "the grid file's path: solver.grid=<path/to/grid.json>")
        if self.grid_file is not None:
            return grid_from_file(self.grid_file, solver=self.name, steps=self.steps,
                                  final_step=self.final_step, field=field)
        t_min = field.t_min if self.t_min is None else float(self.t_min)
        t_max = field.t_max if self.t_max is None else float(self.t_max)
        if self.grid is None and self.t_min is None and self.t_max is None:
            return field.default_grid(self.steps, final_step=self.final_step)
        return make_grid(self.grid or "edm", self.steps, t_min, t_max, rho=self.rho,
                         final_step=self.final_step)

    def solve(self, flow: Flow, x: Tensor, times: Tensor, *, record_every: int = 0,
              callback: StepCallback | None = None, progress: bool = False) -> SolveResult:
        """Integrate ``flow`` from ``times[0]`` to ``times[-1]`` starting at ``x``
        ``(B, *shape)``. ``times``: a strictly monotone 1-D grid (float64 is kept).

        ``record_every``: keep every k-th state in the result's trajectory (0: none);
        ``callback(i, x, t)``: called with every state; ``progress``: show a bar over steps.
        A bare drift function is accepted too (wrapped in :class:`DriftFlow`).
        """
        times = check_grid(times)
        if callable(flow) and not hasattr(flow, "drift"):
            flow = DriftFlow(flow)
        if self.needs_schedule and getattr(flow, "schedule", None) is None:
            raise ValueError(
                f"solver={self.name} works in denoiser form and needs an affine field "
                f"(x = a(t) y + s(t) eps); physics={getattr(flow, 'name', '?')} is not one. "
                "Use solver=heun, rk4, lms or dopri5.")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(times) - 1, desc=f"{self.name} steps", unit="step",
                       leave=False)
        counter = self._counter(flow, bar)
        monitor = Monitor(record_every, callback, bar)
        try:
            x = self._integrate(counter, x, times, monitor)
        finally:
            if bar is not None:
                bar.close()
        traj, traj_t = monitor.result()
        return SolveResult(x=x, nfe=counter.calls, times=times, trajectory=traj,
                           trajectory_times=traj_t, eval_times=counter.eval_times())

    def _counter(self, flow: Flow, bar) -> CountingFlow:
        """The counting wrapper of this solve (adaptive solvers add a limit and progress)."""
        return CountingFlow(flow)

    def _integrate(self, flow: CountingFlow, x: Tensor, times: Tensor, observe: Monitor
                   ) -> Tensor:
        """The shared fixed-step loop: :meth:`step` on every interval, ``flow.last_step`` on
        an interval that ends at ``t = 0``."""
        observe(0, x, times[0])
        n = len(times) - 1
        # the grid on the states' device once (no host->device copy per step); state["t"][i]
        # is the network's time argument, times[i] (float64, CPU) the step's coefficients'
        state: dict = {"t": times.to(device=x.device, dtype=x.dtype)}
        for i in range(n):
            if times[i + 1] == 0:
                x = flow.last_step(x, state["t"][i])
            else:
                x = self.step(flow, x, times, i, state)
            observe(i + 1, x, times[i + 1], final=i == n - 1)
        return x

    def step(self, flow: CountingFlow, x: Tensor, times: Tensor, i: int, state: dict
             ) -> Tensor:
        """One step from ``times[i]`` to ``times[i + 1]`` (never 0). ``times``: the float64 CPU
        grid; ``state``: a dict that persists over the steps of one solve, holding ``"t"``,
        the grid in the states' dtype and device (call the flow at ``state["t"][i]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step() or "
                                  "_integrate()")

    def describe(self) -> dict:
        """Facts written into outputs (``sample_info.json``) and logs."""
        out = {"solver": self.name, "steps": self.steps, "grid": self.grid or "field default",
               "rho": self.rho, "t_min": self.t_min, "t_max": self.t_max,
               "final_step": self.final_step}
        if self.grid_file is not None:
            out["grid_fit"] = {k: self.grid_file.get(k) for k in
                               ("path", "minimised", "nfe", "cost", "default_cost",
                                "trajectories", "fine_points", "created")}
        return out
