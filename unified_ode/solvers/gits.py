"""Optimised time grids: a GITS-style dynamic programme on the model's own trajectories.

GITS (Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion sampling") picks
the ``N``-step subset of a fine grid that minimises the accumulated one-step error measured on
a few hundred "warm-up" trajectories of the model itself:

1. **Reference trajectories**: from ``B`` prior draws, RK4 with ``substeps`` steps per
   interval of a fine grid of ``M`` times from ``t_max`` to ``t_min`` gives the states
   ``x_ref(t_m)`` ``(M, B, *shape)`` (the teacher).
2. **Costs**: ``c(m, m')`` = RMS over samples and coordinates of one step of the solver from
   ``x_ref(t_m)`` to ``t_m'`` minus ``x_ref(t_m')``, for every pair ``m < m'``. The step is the
   solver's own :meth:`~unified_ode.solvers.base.Solver.step` from a fresh state — for a
   multistep solver (iPNDM, DPM-Solver++, UniPC) that is its first-order warm-up step (Euler in
   its variable / DDIM), GITS's choice; for Heun or RK4 their full step. Denoiser/drift values
   at a start point are shared between all pairs from it (one call per start point for
   first-order steps).
3. **Dynamic programme**: the cheapest path ``t_max = t_{m_0} > t_{m_1} > … > t_{m_K} = t_min``
   with ``K`` intervals (``K = steps − 1`` with the exact final step to 0, else ``steps``)
   under the summed cost, exactly (``O(K M²)``).

The fine grid contains the solver's default grid, so the optimised grid's summed cost is never
above the default grid's on the fitting trajectories (the default grid is a feasible path);
:func:`grid_cost` measures any grid's cost on the same trajectories. Torch only: the field is
seen through the flow and a grid function, like every solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.solvers.base import CountingFlow, Solver, check_grid
from unified_ode.solvers.fixed import RK4


@dataclass
class FittedGrid:
    """Result of :func:`optimise_grid`: the grid ``(steps + 1,)`` float64, its summed one-step
    cost and the default grid's on the same trajectories, and how it was fitted."""

    times: Tensor
    cost: float
    default_cost: float
    default_times: Tensor
    fine_points: int
    trajectories: int
    substeps: int
    nfe_fit: int
    #: the teacher's states at the grid's last positive time ``(B, *shape)`` (the fitting
    #: trajectories' ends), and its final samples (after the exact step to 0 where the grid
    #: has one; else the same states), for :func:`refine_grid`
    teacher: Tensor | None = None
    teacher_end: Tensor | None = None


class _SharedCalls:
    """A flow that remembers its calls at one start state ``start`` (by identity) per time:
    one network call per start point however many step ends are tried from it. Calls at
    other states (a Heun or RK4 stage) go straight to the flow."""

    def __init__(self, flow):
        self.flow = flow
        self.schedule = getattr(flow, "schedule", None)
        self.name = getattr(flow, "name", "flow")
        self.start: Tensor | None = None
        self.cache: dict = {}

    def reset(self, start: Tensor) -> None:
        self.start, self.cache = start, {}

    def _call(self, method, x: Tensor, t: Tensor) -> Tensor:
        """``method(x, t)`` (a bound method of the flow), remembered when ``x`` is the start."""
        if x is not self.start:
            return method(x, t)
        key = (getattr(method, "__func__", method), float(t))
        if key not in self.cache:
            self.cache[key] = method(x, t)
        return self.cache[key]

    def drift(self, x, t):
        return self._call(self.flow.drift, x, t)

    def denoiser(self, x, t):
        return self._call(self.flow.denoiser, x, t)

    def last_step(self, x, t):
        return self.flow.last_step(x, t)


def one_step(solver: Solver, flow, x: Tensor, t0: float, t1: float) -> Tensor:
    """One step of ``solver`` from ``(x, t0)`` to ``t1`` (``t1 > 0``) from a fresh state."""
    times = torch.tensor([t0, t1], dtype=torch.float64)
    state = {"t": times.to(dtype=x.dtype, device=x.device)}
    return solver.step(flow, x, times, 0, state)


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).double().pow(2).mean().sqrt())


def nested_fine_grid(default: Tensor, fine_points: int, *, final_step: bool) -> Tensor:
    """A decreasing fine grid of about ``fine_points`` times from ``default[0]`` to its last
    positive time that contains every positive time of ``default``: each default interval is
    split into equal parts in ``log t`` (uniform in ``t`` where the interval ends at 0)."""
    pos = default[:-1] if final_step else default
    intervals = len(pos) - 1
    if intervals < 1:
        return pos.clone()
    per = max(1, math.ceil((fine_points - 1) / intervals))
    out = [pos[:1]]
    for a, b in zip(pos[:-1], pos[1:]):
        u = torch.arange(1, per + 1, dtype=torch.float64) / per
        if b > 0:
            seg = torch.exp(torch.log(a) + u * (torch.log(b) - torch.log(a)))
        else:
            seg = a + u * (b - a)
        seg[-1] = b
        out.append(seg)
    return torch.cat(out)


def reference_trajectories(flow, x_T: Tensor, fine: Tensor, substeps: int = 4
                           ) -> tuple[Tensor, int]:
    """States ``(M, B, *shape)`` at the ``M`` fine times (RK4 with ``substeps`` steps per fine
    interval, log-uniform inside it), and the NFE spent."""
    pieces = [fine[:1]]
    for a, b in zip(fine[:-1], fine[1:]):
        u = torch.arange(1, substeps + 1, dtype=torch.float64) / substeps
        seg = torch.exp(torch.log(a) + u * (torch.log(b) - torch.log(a)))
        seg[-1] = b
        pieces.append(seg)
    dense = torch.cat(pieces)
    res = RK4(steps=len(dense) - 1, final_step=False).solve(flow, x_T, dense,
                                                           record_every=substeps)
    return res.trajectory, res.nfe


def cost_matrix(solver: Solver, flow, traj: Tensor, fine: Tensor) -> tuple[Tensor, int]:
    """``(M, M)`` float64 costs ``c[m, m']`` (``inf`` where ``m' <= m``) and the NFE spent."""
    m = len(fine)
    counted = CountingFlow(flow)
    shared = _SharedCalls(counted)
    cost = torch.full((m, m), math.inf, dtype=torch.float64)
    for i in range(m - 1):
        x = traj[i]
        shared.reset(x)
        for j in range(i + 1, m):
            xj = one_step(solver, shared, x, float(fine[i]), float(fine[j]))
            cost[i, j] = rms(xj, traj[j])
    return cost, counted.calls


def best_path(cost: Tensor, intervals: int) -> tuple[list[int], float]:
    """The cheapest path ``0 → M − 1`` with exactly ``intervals`` steps under ``cost``
    (dynamic programme); returns node indices and the summed cost."""
    m = cost.shape[0]
    if not 1 <= intervals <= m - 1:
        raise ValueError(f"cannot pick {intervals} steps from a fine grid of {m} points")
    best = torch.full((intervals + 1, m), math.inf, dtype=torch.float64)
    arg = torch.zeros((intervals + 1, m), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, intervals + 1):
        total = best[k - 1][:, None] + cost  # (from, to)
        best[k], arg[k] = total.min(dim=0)
    path = [m - 1]
    for k in range(intervals, 0, -1):
        path.append(int(arg[k, path[-1]]))
    path.reverse()
    return path, float(best[intervals, m - 1])


def grid_cost(solver: Solver, flow, traj: Tensor, fine: Tensor, grid: Tensor) -> float:
    """Summed one-step cost of ``grid`` (its positive times must be fine-grid times) on the
    trajectories ``traj`` at ``fine``."""
    pos = grid[grid > 0]
    idx = []
    for t in pos:
        hit = torch.nonzero(torch.isclose(fine, t, rtol=1e-12, atol=0)).flatten()
        if len(hit) == 0:
            raise ValueError(f"grid time {float(t)} is not on the fine grid")
        idx.append(int(hit[0]))
    total = 0.0
    for i, j in zip(idx[:-1], idx[1:]):
        total += rms(one_step(solver, flow, traj[i], float(fine[i]), float(fine[j])), traj[j])
    return total


def _fitting_grids(default: Tensor, fine_points: int) -> tuple[Tensor, bool, Tensor]:
    """The checked default grid, whether it ends with the exact step to 0, and the fine grid
    (:func:`nested_fine_grid`) the fit works on."""
    default = check_grid(default)
    final = bool(default[-1] == 0)
    return default, final, nested_fine_grid(default, fine_points, final_step=final)


def optimise_grid(solver: Solver, flow, default: Tensor, x_T: Tensor, *,
                  fine_points: int = 64, substeps: int = 4) -> FittedGrid:
    """The GITS grid of ``solver`` (its ``steps`` and ``final_step``) for ``flow`` from the
    prior draws ``x_T`` ``(B, *shape)``; ``default``: the solver's default grid for the field
    (``solver.time_grid(field)`` with its default kind), which the fine grid contains."""
    if solver.nfe_for_steps(1) is None:
        raise ValueError(f"solver={solver.name} is adaptive: it has no fixed grid to optimise")
    default, final, fine = _fitting_grids(default, fine_points)
    intervals = len(default) - 1 - (1 if final else 0)
    if intervals == 0:  # one step, straight to 0: nothing to choose
        return FittedGrid(default.clone(), 0.0, 0.0, default.clone(), len(fine), len(x_T),
                          substeps, 0)
    with torch.no_grad():
        traj, nfe_ref = reference_trajectories(flow, x_T, fine, substeps)
        cost, nfe_cost = cost_matrix(solver, flow, traj, fine)
        path, total = best_path(cost, intervals)
        default_cost = grid_cost(solver, flow, traj, fine, default)
        end = _teacher_end(flow, traj[-1], fine, final)
    times = fine[path]
    if final:
        times = torch.cat([times, torch.zeros(1, dtype=torch.float64)])
    return FittedGrid(times, total, default_cost, default.clone(), len(fine), len(x_T), substeps,
                      nfe_ref + nfe_cost + int(final), teacher=traj[-1],
                      teacher_end=end)


def _teacher_end(flow, last: Tensor, fine: Tensor, final: bool) -> Tensor:
    """The reference solution's end: its state at the fine grid's last time, or the exact last
    step from there to 0 when the solver's grid ends at 0 (``final``)."""
    if not final:
        return last
    return flow.last_step(last, fine[-1].to(dtype=last.dtype, device=last.device))


def teacher_end(flow, default: Tensor, x_T: Tensor, *, fine_points: int = 64,
                substeps: int = 4) -> Tensor:
    """What :func:`optimise_grid` stores as ``teacher_end`` for the same arguments (the fine
    reference solution's end, ``(B, *shape)``), without the cost matrix: for refining a stored
    GITS grid (:func:`refine_grid`) without fitting it again."""
    _, final, fine = _fitting_grids(default, fine_points)
    with torch.no_grad():
        traj, _ = reference_trajectories(flow, x_T, fine, substeps)
        return _teacher_end(flow, traj[-1], fine, final)


@dataclass
class RefinedGrid:
    """Result of :func:`refine_grid`: the grid, its error and the best starting grid's (RMS
    against the teacher, :func:`final_error`), the moves accepted and the NFE spent."""

    times: Tensor
    error: float
    start_error: float
    accepted: int
    nfe_fit: int


def final_error(solver: Solver, flow, grid: Tensor, x_T: Tensor, teacher: Tensor, *,
                at: str = "end") -> tuple[float, int]:
    """RMS over samples and coordinates between ``solver``'s state solved over ``grid`` from
    ``x_T`` and ``teacher`` (the same shape), and the NFE of the solve. ``at="end"``: the final
    samples (after the step to 0 when the grid has one); ``at="t_min"``: the state at the
    grid's last positive time."""
    if at not in ("t_min", "end"):
        raise ValueError(f"at must be 't_min' or 'end', got {at!r}")
    t_end = float(grid[grid > 0][-1])
    seen: dict = {}

    def keep(i, x, t):
        if float(t) == t_end:
            seen["x"] = x

    res = solver.solve(flow, x_T, grid, callback=keep)
    return rms(seen["x"] if at == "t_min" else res.x, teacher), res.nfe


def refine_grid(solver: Solver, flow, grids: list[Tensor], x_T: Tensor, teacher: Tensor, *,
                sweeps: int = 3, first_move: float = 0.25, at: str = "end") -> RefinedGrid:
    """Refine a time grid for ``solver`` by minimising its *own* global error: the RMS between
    its final samples solved from the fitting draws ``x_T`` and the teacher's (``teacher``,
    e.g. :attr:`FittedGrid.teacher_end`; ``at="t_min"`` compares the states at the grid's
    last positive time instead, with :attr:`FittedGrid.teacher`) — the objective of LD3
    (Tong et al. 2025), here without its learned parametrisation.

    GITS's cost is a sum of first-order one-step errors; a solver of order 3–4 whose history
    spans several steps is not graded by it, and this step fixes that. Derivative-free
    coordinate descent: start from the best of ``grids`` (e.g. the GITS grid and the default
    grid; each with the same length, ``t_max`` and last positive time); in each of ``sweeps``
    sweeps, every interior positive time ``t_k`` is written as the fraction ``u`` of the way
    from ``t_{k−1}`` to ``t_{k+1}`` in ``log t`` and moved to ``u ± δ`` (kept in
    ``[0.02, 0.98]``) when that lowers the error; ``δ`` starts at ``first_move`` and halves
    each sweep. The first and last positive times (and a final 0) stay. The result's error is
    never above the best starting grid's (only improvements are accepted); the cost is about
    ``2 × sweeps × (steps − 2)`` solves of ``len(x_T)`` draws."""
    if not grids:
        raise ValueError("refine_grid needs at least one starting grid")
    with torch.no_grad():
        return _refine(solver, flow, [check_grid(g) for g in grids], x_T, teacher, sweeps,
                       first_move, at)


def _refine(solver, flow, grids, x_T, teacher, sweeps, first_move, at) -> RefinedGrid:
    nfe = 0
    scored = []
    for g in grids:
        ref = grids[0]
        if len(g) != len(ref) or g[0] != ref[0] or g[g > 0][-1] != ref[ref > 0][-1]:
            raise ValueError("refine_grid's starting grids must share their length, first time "
                             "and last positive time")
        e, n = final_error(solver, flow, g, x_T, teacher, at=at)
        nfe += n
        scored.append((e, g))
    start_err, best = min(scored, key=lambda p: p[0])
    err, best = start_err, best.clone()
    pos_n = int((best > 0).sum())
    accepted = 0
    delta = float(first_move)
    for _ in range(int(sweeps)):
        for k in range(1, pos_n - 1):
            lo, hi = math.log(float(best[k - 1])), math.log(float(best[k + 1]))
            u0 = (math.log(float(best[k])) - lo) / (hi - lo)
            for u in (u0 - delta, u0 + delta):
                u = min(max(u, 0.02), 0.98)
                if abs(u - u0) < 1e-9:
                    continue
                trial = best.clone()
                trial[k] = math.exp(lo + u * (hi - lo))
                e, n = final_error(solver, flow, trial, x_T, teacher, at=at)
                nfe += n
                if e < err:
                    err, best, accepted = e, trial, accepted + 1
                    break
        delta /= 2
    return RefinedGrid(best, err, start_err, accepted, nfe)


__all__ = ["FittedGrid", "RefinedGrid", "best_path", "cost_matrix", "final_error", "grid_cost",
           "nested_fine_grid", "one_step", "optimise_grid", "reference_trajectories",
           "refine_grid"]
