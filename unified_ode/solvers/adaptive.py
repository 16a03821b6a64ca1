"""Adaptive Dormand–Prince 5(4) through torchdiffeq, in ``t`` or in ``ln t`` (PFGM's sampler).

The adaptive solver integrates from ``times[0]`` to the last nonzero time of the grid; the
grid's other times are only where its dense output is read (for trajectories), so they do not
change the steps it takes. A grid that ends at ``t = 0`` gets the flow's exact last step from
``t_min`` to 0 afterwards, as in the fixed-step solvers. NFE is the measured number of drift
calls, including torchdiffeq's initial step-size selection and rejected steps; ``max_nfe``
ends a solve that cannot reach its tolerance with a clear error (the ``t`` reached, the NFE).

``time_variable="log"`` integrates ``dx/du = t · f(x, t)`` in ``u = ln t``; this is how PFGM
samples (RK45 in ``ln z`` from ``z_max`` to ``z_min = 1e-3`` with ``rtol = atol = 1e-4`` and no
denoising step): ``conf/solver/pfgm_rk45.yaml``. scipy's RK45, which PFGM called, is the same
Dormand–Prince pair with the same RMS error norm over the whole batch.
"""

from __future__ import annotations

from torch import Tensor

from unified_ode.solvers.base import CountingFlow, Solver

TIME_VARIABLES = ("t", "log")


class Dopri5(Solver):
    """Adaptive Dormand–Prince (torchdiffeq ``dopri5``) on the states' device.

    Parameters (besides :class:`Solver`'s, where ``steps`` and ``grid`` give the output grid)
    ----------
    rtol, atol:
        Relative and absolute tolerances of the error control (RMS norm over the batch).
    time_variable:
        ``"t"`` or ``"log"`` (integrate in ``ln t``; needs ``t > 0`` on the adaptive part).
    max_num_steps:
        Upper bound on accepted + rejected steps (an error beyond it).
    max_nfe:
        Upper bound on network evaluations (``None``: none); beyond it the solve stops with
        :class:`~unified_ode.solvers.base.NFELimitExceeded` naming the ``t`` reached.
    """

    name = "dopri5"

    def nfe_for_steps(self, steps: int) -> None:
        return None  # set by the step-size control, measured by a call counter

    def __init__(self, steps: int = 18, *, rtol: float = 1e-5, atol: float = 1e-5,
                 time_variable: str = "log", max_num_steps: int = 100_000,
                 max_nfe: int | None = 10_000, **kwargs):
        super().__init__(steps=steps, **kwargs)
        if time_variable not in TIME_VARIABLES:
            raise ValueError(f"solver.time_variable must be one of {TIME_VARIABLES}, got "
                             f"{time_variable!r}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"solver.rtol and solver.atol must be positive, got {rtol}, {atol}")
        if max_nfe is not None and int(max_nfe) < 3:
            raise ValueError(f"solver.max_nfe must be null or >= 3, got {max_nfe}")
        if self.final_step and self.steps < 2:
            raise ValueError("dopri5 with final_step needs solver.steps >= 2: its output grid "
                             "must contain t_min before the final step to 0")
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.time_variable = time_variable
        self.max_num_steps = int(max_num_steps)
        self.max_nfe = None if max_nfe is None else int(max_nfe)

    def _counter(self, flow, bar):
        """Counts calls up to ``max_nfe`` (then a clear error naming the reached ``t``); the
        progress bar shows the time reached and the NFE so far (this solver syncs anyway)."""
        def on_call(t, nfe):
            if bar is not None and nfe % 10 == 0:
                bar.set_postfix_str(f"t = {float(t):.4g}, NFE = {nfe}", refresh=False)
                bar.refresh()

        return CountingFlow(flow, max_nfe=self.max_nfe, on_call=on_call)

    def _integrate(self, flow, x, times, observe):
        from torchdiffeq import odeint

        denoise = bool(times[-1] == 0)
        out_t = times[:-1] if denoise else times
        if len(out_t) < 2:
            raise ValueError("dopri5 needs a grid with t_min > 0 before the final step to 0 "
                             f"(at least 3 times), got {times.tolist()}")
        log = self.time_variable == "log"
        if log and bool(out_t.min() <= 0):
            raise ValueError("time_variable=log needs t > 0 on the adaptive part of the grid")

        def rate(u: Tensor, state: Tensor) -> Tensor:
            t = (u.exp() if log else u).to(dtype=state.dtype)
            f = flow.drift(state, t)
            return t * f if log else f

        if observe.every <= 0 and observe.callback is None:
            out_t = out_t[[0, -1]]  # no trajectory: read the dense output at the end only
        grid = (out_t.log() if log else out_t).to(device=x.device)
        first_step, f0 = initial_step(rate, grid[0], grid[-1], x, self.rtol, self.atol)
        cache = [f0]

        def func(u: Tensor, state: Tensor) -> Tensor:
            if cache:  # torchdiffeq's first call is at (u0, x0), already evaluated
                return cache.pop()
            return rate(u, state)

        # step_t: the last step lands exactly on t_min, never beyond it (the drift is singular
        # at t = 0, and torchdiffeq would otherwise step past the end and interpolate back).
        states = odeint(func, x, grid, rtol=self.rtol, atol=self.atol, method="dopri5",
                        options={"max_num_steps": self.max_num_steps, "first_step": first_step,
                                 "step_t": grid[-1:]})
        for i in range(len(out_t)):
            observe(i, states[i], out_t[i], final=not denoise and i == len(out_t) - 1)
        x = states[-1]
        if denoise:
            x = flow.last_step(x, times[-2].to(dtype=x.dtype, device=x.device))
            observe(len(out_t), x, times[-1], final=True)
        return x

    def describe(self) -> dict:
        return {**super().describe(), "rtol": self.rtol, "atol": self.atol,
                "max_nfe": self.max_nfe,
                "time_variable": self.time_variable, "adaptive": True,
                "note": "steps/grid set only the output grid; the solver picks its own steps"}


def _rms(v: Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


def initial_step(rate, u0: Tensor, u1: Tensor, y0: Tensor, rtol: float, atol: float,
                 order: int = 4) -> tuple[float, Tensor]:
    """Hairer–Nørsett–Wanner's starting step size (as scipy's RK45 chooses it), clamped to the
    interval ``[u0, u1]`` so that no evaluation falls outside it. Returns ``(|step|, f0)``;
    costs two evaluations of ``rate``, the first of which (``f0``) the solver reuses."""
    span = abs(float(u1 - u0))
    direction = 1.0 if float(u1) > float(u0) else -1.0
    f0 = rate(u0, y0)
    scale = atol + rtol * y0.abs()
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = rate(u0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, span), f0


__all__ = ["Dopri5", "TIME_VARIABLES", "initial_step"]
