"""Progressive distillation (Salimans & Ho 2022) for any affine field: halve the steps per round.

The student samples with the first-order (DDIM) step of the field's kernel
``x = a(t) y + s(t) eps``,

    x' = (s'/s) x + (a' − a s'/s) D(x, t),

(``solver=dpmpp2m solver._target_=unified_ode.solvers.DPMSolverPP solver.order=1``; NFE =
steps) on the solver's grid. Round ``k`` (``k = 0, ..., rounds − 1``) trains a student of
``N_k = N_0 / 2^(k+1)`` steps against a teacher of ``2 N_k`` steps on the *same* grid (every
other point of the teacher's): for a state ``x`` at a student grid time ``t_i`` (drawn from the
field's kernel around a data batch), the teacher's two DDIM steps ``t_i → t_mid → t_{i+1}``
give ``x''``, and the student's denoiser target is the ``D~`` whose one DDIM step lands there:

    D~ = (x'' − (s''/s) x) / (a'' − a s''/s),

trained in the student's parametrisation with its objective's weight (EDM's ``1/c_out²`` for the
denoiser). Round 0's teacher is ``distill.teacher`` (``N_0 = distill.solver.steps``); round
``k > 0``'s is a frozen copy of the student when round ``k − 1`` ended. After the last round
the student samples in ``N_0 / 2^rounds`` steps.

The grids must nest (the ``2N``-step grid's every other point is the ``N``-step grid): EDM's
ρ-grid, log and uniform grids without the final step to 0 do (``solver.final_step=false``);
this is checked before training. The round counter and the current teacher's weights go into
checkpoints, so a resumed run continues the same round.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from unified_ode.distill.base import Distillation
from unified_ode.errors import UserError
from unified_ode.objectives.base import per_sample_mse
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics.base import bcast


def ddim_denoiser_target(field, x: Tensor, t: Tensor, t_next: Tensor, x_next: Tensor) -> Tensor:
    """The denoiser ``D~`` ``(B, *shape)`` whose DDIM step from ``x`` at ``t`` ``(B,)`` lands on
    ``x_next`` at ``t_next`` ``(B,)``: ``(x_next − (s'/s) x) / (a' − a s'/s)`` (float64
    coefficients)."""
    t64, n64 = t.to(torch.float64), t_next.to(torch.float64)
    a, s = field.a(t64), field.s(t64)
    a2, s2 = field.a(n64), field.s(n64)
    ratio = s2 / s
    denom = a2 - a * ratio
    return (x_next - bcast(ratio.to(x.dtype), x) * x) / bcast(denom.to(x.dtype), x)


class ProgressiveDistillation(Distillation):
    """``distill=progressive`` (see the module docstring).

    Parameters: ``teacher``; ``solver``, the first-order DDIM sampler of the round-0 teacher
    (``DPMSolverPP`` with ``order: 1``; its ``steps`` is ``N_0``, a multiple of
    ``2^rounds``); ``rounds`` (halvings); ``steps_per_round`` (optimiser steps per round; the
    run's ``trainer.max_steps`` should be at least ``rounds × steps_per_round``, later steps
    go on training the last round).
    """

    name = "progressive"
    needs_denoiser_form = True

    def __init__(self, teacher: str, solver, rounds: int = 3, steps_per_round: int = 100):
        super().__init__(teacher, solver)
        from unified_ode.solvers import DPMSolverPP

        if not isinstance(solver, DPMSolverPP) or solver.order != 1:
            raise UserError("distill=progressive halves DDIM steps: distill.solver must be "
                            "_target_: unified_ode.solvers.DPMSolverPP with order: 1, got "
                            f"{solver.describe()}")
        self.rounds = int(rounds)
        self.steps_per_round = int(steps_per_round)
        if self.rounds < 1 or self.steps_per_round < 1:
            raise UserError(f"distill.rounds and distill.steps_per_round must be >= 1, got "
                            f"{rounds} and {steps_per_round}")
        self.first_steps = int(solver.steps)
        if self.first_steps % (2 ** self.rounds):
            raise UserError(f"distill.solver.steps={self.first_steps} cannot be halved "
                            f"{self.rounds} times: use a multiple of {2 ** self.rounds}")
        self.final_steps = self.first_steps // 2 ** self.rounds
        self.calls = 0          # loss evaluations so far (one per optimiser step)
        self.round = 0
        self.round_teacher = None  # round k > 0: the frozen student of round k - 1
        self.grid = None        # float64 (N_0 + 1,) grid, t_max first

    def bind(self, student_objective, field):
        self.check_field(field)
        self.student_objective = student_objective
        self.parametrisation = student_objective.parametrisation
        self.grid = self.grid_of(field, self.first_steps)
        for k in range(1, self.rounds + 1):
            coarse = self.grid_of(field, self.first_steps // 2 ** k)
            if not torch.allclose(coarse, self.grid[:: 2 ** k], rtol=1e-12, atol=0):
                raise UserError("distill=progressive needs nested grids (the 2N-step grid's "
                                "every other point is the N-step grid); "
                                f"distill.solver's grid is not ({self.solver.describe()}): use "
                                "solver.final_step=false with an edm, log or uniform grid")
        return self.parametrisation

    def grid_of(self, field, steps: int) -> Tensor:
        solver = copy.copy(self.solver)
        solver.steps = steps
        return solver.time_grid(field).to(torch.float64)

    def student_steps(self) -> int:
        """``N_k``: the student's steps in the current round."""
        return self.first_steps // 2 ** (self.round + 1)

    def teacher_flow(self):
        if self.round == 0:
            return self.teacher.flow
        return ProbabilityFlow(self.parametrisation, self.round_teacher)

    def advance(self, model) -> None:
        """Count one loss evaluation; start the next round (the teacher becomes a frozen copy
        of ``model``) every ``steps_per_round`` of them, up to ``rounds``."""
        want = min(self.calls // self.steps_per_round, self.rounds - 1)
        while self.round < want:
            self.round += 1
            self.round_teacher = copy.deepcopy(model).requires_grad_(False).eval()
            print(f"distill=progressive: round {self.round}: a {self.student_steps()}-step "
                  f"student of the {2 * self.student_steps()}-step student", flush=True)
        self.calls += 1

    def pieces(self, model, field, y: Tensor, *, generator=None):
        """``(prediction, target, weight, i)`` of one loss evaluation in the current round."""
        if self.teacher is None:
            raise RuntimeError("ProgressiveDistillation.prepare() was not called (build the "
                               "student with unified_ode.distill.build_distillation)")
        stride = 2 ** (self.round + 1)  # teacher points per student interval: stride / 2 each
        n = self.student_steps()
        i = torch.randint(0, n, (y.shape[0],), generator=generator)
        t = self.grid[i * stride].to(y.device, y.dtype)
        x = field.sample_kernel(y, t, generator=generator)
        flow = self.teacher_flow()
        x2 = torch.empty_like(x)
        with torch.no_grad():
            for k in torch.unique(i).tolist():
                rows = i == k
                times = self.grid[[k * stride, k * stride + stride // 2, (k + 1) * stride]]
                x2[rows] = self.solver.solve(flow, x[rows], times).x
        t_next = self.grid[(i + 1) * stride].to(y.device)
        d_target = ddim_denoiser_target(field, x, t, t_next, x2)
        prediction, coefficients = model(x, t, return_coefficients=True)
        target = self.parametrisation.from_denoiser(x, t, d_target)
        return prediction, target, self.parametrisation.loss_weight(coefficients), i

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        self.advance(model)
        prediction, target, weight, _ = self.pieces(model, field, y, generator=generator)
        return (weight * per_sample_mse(prediction, target)).mean()

    def checkpoint_state(self) -> dict:
        """The loss-evaluation count, the round and (rounds > 0) the round's teacher weights."""
        state = {"calls": self.calls, "round": self.round}
        if self.round_teacher is not None:
            state["teacher"] = self.round_teacher.state_dict()
        return state

    def restore_checkpoint_state(self, state: dict, model) -> None:
        unknown = set(state) - {"calls", "round", "teacher"}
        if unknown:
            raise UserError(f"the checkpoint's distill state has unknown entries "
                            f"{sorted(unknown)}; distill=progressive keeps calls, round, teacher")
        self.calls, self.round = int(state["calls"]), int(state["round"])
        self.round_teacher = None
        if self.round > 0:
            teacher = copy.deepcopy(model).requires_grad_(False).eval()
            try:
                teacher.load_state_dict(state["teacher"])
            except (KeyError, RuntimeError) as err:
                raise UserError("the checkpoint's progressive-distillation teacher does not "
                                f"fit the student's network config ({err})") from err
            self.round_teacher = teacher

    def describe(self) -> dict:
        return {**super().describe(), "rounds": self.rounds,
                "steps_per_round": self.steps_per_round, "first_steps": self.first_steps,
                "final_steps": self.final_steps}
