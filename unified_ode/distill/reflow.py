"""Reflow (k-rectified flow): train the student on straight paths between teacher pairs.

The teacher maps prior states ``z`` to samples ``x`` (any solver; pairs cached on disk by
:class:`~unified_ode.distill.pairs.PairCache`). The student learns the ODE whose path from
``z`` at ``t_max`` to ``x`` at ``t = 0`` is the field's own interpolation with the noise of
the pair fixed:

* affine field (``x_t = a(t) y + s(t) eps``): ``eps = (z − a(t_max) x)/s(t_max)``, so
  ``x_t = a(t) x + s(t) eps`` passes through ``z`` at ``t_max`` and ``x`` at 0; the target is
  the student's parametrisation of the denoiser ``x`` (``from_denoiser``), weighted as its
  objective weights it (EDM's ``1/c_out²`` for the denoiser). For the linear field this is
  rectified flow; for VE/PFGM/PFGM++ (``a = 1``, ``s = t``) the path is the straight line
  ``x + (t/t_max)(z − x)``, whose drift ``(x_t − D)/t`` is constant.
* a field without a denoiser form: ``x_t = x + σ(t)/σ(t_max) (z − x)`` and the velocity target
  ``σ'(t)/σ(t_max) (z − x)`` (the student must predict the velocity), so the field's last step
  ``D ≈ x − (σ/σ') f`` is exact along the path.

A perfect student maps ``z`` to ``x`` in one step (Euler's step to ``t = 0`` is the exact last
step ``a(0) D(z, t_max)``): the student run samples with ``solver=euler solver.steps=1``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from unified_ode.distill.base import TIME_LAWS, Distillation, draw_times
from unified_ode.distill.pairs import PairCache
from unified_ode.errors import UserError
from unified_ode.objectives.base import per_sample_mse
from unified_ode.parametrisation import Velocity
from unified_ode.physics.base import bcast


def sigma_and_rate(field, t: Tensor) -> tuple[Tensor, Tensor]:
    """``σ(t)`` and ``dσ/dt`` ``(B,)`` in float64 (autograd through the field's ``sigma``)."""
    with torch.enable_grad():
        tg = t.detach().to(torch.float64).clone().requires_grad_(True)
        sig = torch.as_tensor(field.sigma(tg), dtype=torch.float64)
        (dsig,) = torch.autograd.grad(sig.sum(), tg)
    return sig.detach(), dsig


class Reflow(Distillation):
    """``distill=reflow`` (see the module docstring).

    Parameters: ``teacher``, ``solver`` (the teacher's; default Heun 18 steps = NFE 35),
    ``pairs`` (number of teacher pairs), ``seed`` (of the pairs' prior draws), ``chunk`` (pairs
    per cache file), ``cache_dir`` (default ``<run dir>/reflow_pairs``; point several students
    at one directory to share pairs), ``time_law`` and ``p_t_max`` (training times, see
    :func:`~unified_ode.distill.base.draw_times`), ``batch_size`` (pairs per step; default the
    data batch's size).
    """

    name = "reflow"

    def __init__(self, teacher: str, solver, pairs: int = 20000, seed: int = 0,
                 chunk: int = 2000, cache_dir: str | None = None,
                 time_law: str = "log_uniform", p_t_max: float = 0.25,
                 batch_size: int | None = None):
        super().__init__(teacher, solver)
        if int(pairs) < 1:
            raise UserError(f"distill.pairs must be >= 1, got {pairs}")
        if not 0 <= float(p_t_max) <= 1:
            raise UserError(f"distill.p_t_max must be in [0, 1], got {p_t_max}")
        self.pairs = int(pairs)
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.cache_dir = cache_dir
        self.time_law = str(time_law)
        self.p_t_max = float(p_t_max)
        self.batch_size = None if batch_size is None else int(batch_size)
        if self.time_law not in TIME_LAWS:
            raise UserError(f"unknown distill.time_law={time_law!r}; choose one of "
                            f"{', '.join(TIME_LAWS)}")
        self.z = self.x = None
        self.cache: PairCache | None = None
        self.stats: dict = {}

    def bind(self, student_objective, field):
        self.student_objective = student_objective
        self.parametrisation = student_objective.parametrisation
        if not field.has_denoiser_form and not isinstance(self.parametrisation, Velocity):
            raise UserError(f"distill=reflow on physics={field.name} (no denoiser form) trains "
                            "the velocity: use objective=velocity")
        return self.parametrisation

    def prepare(self, teacher, run_dir, datamodule) -> None:
        super().prepare(teacher, run_dir, datamodule)
        shape = tuple(datamodule.data_shape)
        root = Path(self.cache_dir) if self.cache_dir else Path(run_dir) / "reflow_pairs"
        self.cache = PairCache(root, teacher_key=teacher.key,
                               solver_desc=self.solver.describe(),
                               nfe=self.solver.nfe_for_steps(self.solver.steps),
                               seed=self.seed, chunk=self.chunk, shape=shape)
        field = teacher.field

        def make(i, m, generator):
            z = field.sample_prior(m, shape, generator=generator)
            result = self.solver.solve(teacher.flow, z, self.solver.time_grid(field))
            return z, result.x, result.nfe

        self.stats = self.cache.generate(self.pairs, make)
        self.z, self.x = self.cache.load(self.pairs)
        if not (torch.isfinite(self.z).all() and torch.isfinite(self.x).all()):
            raise FloatingPointError(f"the teacher's pairs in {self.cache.dir} are not finite")

    def path(self, field, z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """The state ``x_t`` on the pair's path at ``t`` ``(B,)``, and (fields without a
        denoiser form) the velocity target there; ``(x_t, None)`` for affine fields."""
        if field.has_denoiser_form:
            tb = bcast(t, x)
            t_max = torch.full_like(t, field.t_max)
            a_max, s_max = bcast(field.a(t_max), x), bcast(field.s(t_max), x)
            eps = (z - a_max * x) / s_max
            return field.a(tb) * x + field.s(tb) * eps, None
        sig, dsig = sigma_and_rate(field, t)
        sig_max, _ = sigma_and_rate(field, torch.full_like(t, field.t_max))
        ratio = bcast((sig / sig_max).to(x.dtype), x)
        rate = bcast((dsig / sig_max).to(x.dtype), x)
        return x + ratio * (z - x), rate * (z - x)

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        if self.z is None:
            raise RuntimeError("Reflow.prepare() was not called (build the student with "
                               "unified_ode.distill.build_distillation)")
        b = self.batch_size or y.shape[0]
        idx = torch.randint(0, self.z.shape[0], (b,), generator=generator)
        z, x = self.z[idx].to(y.device, y.dtype), self.x[idx].to(y.device, y.dtype)
        t = draw_times(self.time_law, field, b, p_t_max=self.p_t_max,
                       objective=self.student_objective, generator=generator,
                       device=y.device, dtype=y.dtype)
        xt, velocity = self.path(field, z, x, t)
        prediction, coefficients = model(xt, t, return_coefficients=True)
        if velocity is None:
            target = self.parametrisation.from_denoiser(xt, t, x)
            weight = self.parametrisation.loss_weight(coefficients)
        else:
            target, weight = velocity, 1.0
        return (weight * per_sample_mse(prediction, target)).mean()

    def describe(self) -> dict:
        out = {**super().describe(), "pairs": self.pairs, "seed": self.seed,
               "time_law": self.time_law, "p_t_max": self.p_t_max}
        if self.cache is not None:
            out.update({"pair_cache": str(self.cache.dir), **self.stats})
        return out
