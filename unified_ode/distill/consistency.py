"""Consistency distillation in the field's own time variable (Song et al. 2023, for any
affine field).

The student is a **consistency function** ``f(x, t)``: every state on one teacher ODE
trajectory maps to the same point, that trajectory's state at ``t_min`` (in data scale,
``x~ = x / a(t_min)``). The boundary condition ``f(x, t_min) = x~`` holds *exactly* by
construction (:class:`ConsistencyFunction`) from the field's own preconditioned denoiser
``D = c_skip x~ + c_out F`` (EDM's coefficients, or the field's adaptation for heavy tails or
``a(1) = 0``):

    f = x~ + w(t) (D − x~),   w(t) = 1 − t_min / t,

so ``w(t_min) = 0`` and ``f = x~`` whatever the network ``F`` outputs. For VE (``σ = t``) the
coefficient of ``F`` is ``(σ − σ_min) sd / sqrt(σ² + sd²)``, exactly Song et al.'s ``c_out``;
at high noise ``f`` is the field's denoiser parametrisation, so a student starts well from a
denoiser teacher's weights.

Training (:class:`ConsistencyDistillation`): on the grid ``t_min = t_0 < ... < t_N = t_max``
(EDM's ρ = 7 spacing in the field's time), ``n ~ U{0, ..., N−1}``, ``x_{n+1}`` drawn from the
field's kernel around a data batch, one step of the teacher's ODE with any of our solvers from
``t_{n+1}`` to ``t_n`` gives ``x̂_n``, and the loss is ``||f_θ(x_{n+1}, t_{n+1}) −
f_θ⁻(x̂_n, t_n)||²`` (mean over coordinates) with ``θ⁻`` an exponential moving average of the
student's weights (the target network, not trained by gradients).

Sampling: :class:`~unified_ode.solvers.consistency.ConsistencySampler` (``solver=consistency``)
evaluates ``f`` and re-noises with the field's kernel (multi-step consistency sampling).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from unified_ode.distill.base import Distillation
from unified_ode.errors import UserError
from unified_ode.objectives.base import Objective, per_sample_mse
from unified_ode.parametrisation import Denoiser, Parametrisation, denoiser_output
from unified_ode.physics.base import bcast
from unified_ode.timegrid import make_grid


class ConsistencyFunction(Parametrisation):
    """The model predicts the consistency function ``f(x, t)`` ≈ the ``t_min`` end of the ODE
    trajectory through ``(x, t)``, in data scale; ``f(x, t_min) = x / a(t_min)`` exactly (see
    the module docstring). Read as a denoiser by samplers (``a(0) f`` is the last step)."""

    name = "consistency"

    @classmethod
    def unsupported(cls, field):
        reason = Denoiser.unsupported(field)  # the same requirement: a denoiser form
        if reason is None:
            return None
        return f"{reason}; consistency distillation needs an affine field (use distill=reflow)"

    def boundary_weight(self, t: Tensor, like: Tensor) -> Tensor:
        """``w(t) = 1 − t_min/t`` ``(B,)``: 0 exactly at ``t_min``, -> 1 at high noise."""
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device).expand(like.shape[0])
        return 1.0 - self.field.t_min / t

    def from_network(self, x, t, f, coefficients, sigma_data):
        scaled = x * bcast(self.field.input_scale(t), x)
        denoised = denoiser_output(self.field, x, t, f, coefficients)
        return scaled + bcast(self.boundary_weight(t, x), x) * (denoised - scaled)

    def from_denoiser(self, x, t, denoised):
        return denoised

    def to_denoiser(self, x, t, prediction):
        return prediction

    def exact(self, posterior, x, t):
        raise TypeError("the exact consistency function is the ODE map of the data's exact "
                        "field, not a posterior average: integrate ProbabilityFlow.exact(...) "
                        "from (x, t) to t_min instead")


class ConsistencyObjective(Objective):
    """``objective=consistency``: the student's parametrisation is the consistency function.
    It is trained only by distillation (``distill=consistency``), which sets this objective."""

    parametrisation_class = ConsistencyFunction
    name = ConsistencyFunction.name

    def __call__(self, model, field, y, *, generator=None):
        raise UserError("objective=consistency is trained from a teacher: add "
                        "distill=consistency distill.teacher=<teacher run dir>")


class ConsistencyDistillation(Distillation):
    """``distill=consistency`` (see the module docstring).

    Parameters: ``teacher``, ``solver`` (the teacher's one-step ODE solver, e.g. Heun),
    ``intervals`` (``N``, the grid's intervals), ``rho`` (the grid's EDM exponent),
    ``target_ema`` (``μ`` of the target network ``θ⁻ ← μ θ⁻ + (1 − μ) θ``, updated before
    every loss evaluation from the weights the optimiser left).

    The target network lives in this object and goes into every checkpoint
    (:meth:`checkpoint_state`: its ``state_dict`` under ``"target"``), so a resumed run
    continues the same average instead of restarting it from the student's weights.
    """

    name = "consistency"
    needs_denoiser_form = True

    def __init__(self, teacher: str, solver, intervals: int = 18, rho: float = 7.0,
                 target_ema: float = 0.95):
        super().__init__(teacher, solver)
        if int(intervals) < 1:
            raise UserError(f"distill.intervals must be >= 1, got {intervals}")
        if not 0 <= float(target_ema) < 1:
            raise UserError(f"distill.target_ema must be in [0, 1), got {target_ema}")
        self.intervals = int(intervals)
        self.rho = float(rho)
        self.target_ema = float(target_ema)
        self.grid = None
        self.target = None

    def bind(self, student_objective, field):
        self.check_field(field)
        param = student_objective.parametrisation
        if not isinstance(param, ConsistencyFunction):
            raise UserError(f"distill=consistency trains a consistency function, but "
                            f"objective={student_objective.name}: use objective=consistency "
                            "(conf/distill/consistency.yaml sets it unless overridden)")
        self.student_objective = student_objective
        self.parametrisation = param
        #: ascending float64 grid t_0 = t_min < ... < t_N = t_max
        self.grid = make_grid("edm", self.intervals, field.t_min, field.t_max, rho=self.rho,
                              final_step=False).flip(0)
        return param

    @torch.no_grad()
    def update_target(self, model) -> torch.nn.Module:
        """The target network after one EMA update towards ``model`` (a copy on first use)."""
        if self.target is None:
            self.target = copy.deepcopy(model).requires_grad_(False).eval()
            return self.target
        for p_t, p in zip(self.target.parameters(), model.parameters(), strict=True):
            p_t.lerp_(p.detach(), 1.0 - self.target_ema)
        for b_t, b in zip(self.target.buffers(), model.buffers(), strict=True):
            b_t.copy_(b)
        return self.target

    def checkpoint_state(self) -> dict:
        """``{"target": state_dict}`` of the target network (empty before the first step)."""
        return {} if self.target is None else {"target": self.target.state_dict()}

    def restore_checkpoint_state(self, state: dict, model) -> None:
        """The target network from a checkpoint: a frozen copy of ``model``'s architecture
        holding the saved weights (a :class:`UserError` when they do not fit it)."""
        unknown = set(state) - {"target"}
        if unknown:
            raise UserError(f"the checkpoint's distill state has unknown entries "
                            f"{sorted(unknown)}; distill=consistency keeps only 'target'")
        if "target" not in state:
            self.target = None
            return
        target = copy.deepcopy(model).requires_grad_(False).eval()
        try:
            target.load_state_dict(state["target"])
        except RuntimeError as err:
            raise UserError("the checkpoint's consistency target network does not fit the "
                            f"student's network config ({err}); resume with the network "
                            "config the run was trained with") from err
        self.target = target

    @torch.no_grad()
    def teacher_step(self, x: Tensor, n: Tensor) -> Tensor:
        """One teacher solver step of each row of ``x`` from ``t_{n+1}`` to ``t_n``."""
        out = torch.empty_like(x)
        for k in torch.unique(n).tolist():
            rows = n == k
            times = torch.stack([self.grid[k + 1], self.grid[k]])
            out[rows] = self.solver.solve(self.teacher.flow, x[rows], times).x
        return out

    def pieces(self, model, field, y: Tensor, *, generator=None):
        """``(prediction, target, n)`` of one loss evaluation (for tests and diagnostics)."""
        if self.teacher is None:
            raise RuntimeError("ConsistencyDistillation.prepare() was not called (build the "
                               "student with unified_ode.distill.build_distillation)")
        n = torch.randint(0, self.intervals, (y.shape[0],), generator=generator)
        t_hi = self.grid[n + 1].to(y.device, y.dtype)
        t_lo = self.grid[n].to(y.device, y.dtype)
        x_hi = field.sample_kernel(y, t_hi, generator=generator)
        if getattr(self, "_device", None) != y.device:
            self.teacher.to(y.device)
            self._device = y.device
        target_model = self.update_target(model)
        with torch.no_grad():
            x_lo = self.teacher_step(x_hi, n.to(y.device))
            target = target_model(x_lo, t_lo)
        return model(x_hi, t_hi), target, n

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        prediction, target, _ = self.pieces(model, field, y, generator=generator)
        return per_sample_mse(prediction, target).mean()

    def describe(self) -> dict:
        return {**super().describe(), "intervals": self.intervals, "rho": self.rho,
                "target_ema": self.target_ema}


def check_boundary(param: ConsistencyFunction, model, x: Tensor) -> Tensor:
    """``|f(x, t_min) − x / a(t_min)|`` ``(B,)``, the boundary condition's error (0 exactly)."""
    t = torch.full((x.shape[0],), param.field.t_min, dtype=x.dtype, device=x.device)
    scaled = x * bcast(param.field.input_scale(t), x)
    return (model(x, t) - scaled).flatten(1).abs().amax(1)
