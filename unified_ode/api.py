"""The Python API: trained runs and exact fields in a notebook, no Hydra command line.

    import unified_ode
    run = unified_ode.load_run("outputs/2026-11-29/12-00-00")
    x = run.sample(2000, solver="heun", steps=18, seed=0).x      # (2000, *data_shape)
    bpd = run.log_likelihood(run.heldout(200)).bits_per_dim()     # (200,)

and, without any run or config (the exact field of a data set: the ground truth)::

    field = unified_ode.physics.PoissonField()
    model = unified_ode.physics.ExactPosterior(field, unified_ode.toy_samples("moons", 5000, 0))
    x = unified_ode.sample(field, model, unified_ode.solvers.Heun(steps=18), n=1000, seed=0).x

``run.sample`` draws exactly what ``sample.py run=<dir> n=... seed=... batch_size=...``
writes (same batches, same seeds). See ``docs/api.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from unified_ode.errors import UserError


def _solver(solver, options: dict, own: DictConfig):
    """A :class:`~unified_ode.solvers.Solver` from an instance, a ``conf/solver/`` name, or
    ``None`` for the run's own solver config ``own``; ``options`` (e.g. ``steps=10``) change
    that config's settings."""
    from hydra.utils import instantiate

    from unified_ode.app.help import CONF_DIR

    if solver is not None and not isinstance(solver, str):
        if options:
            raise TypeError("solver options (e.g. steps=) go with a solver name or None; set "
                            "them on the solver object itself")
        return solver
    if solver is None:
        cfg, label = OmegaConf.create(OmegaConf.to_container(own)), "the run's solver"
    else:
        path = CONF_DIR / "solver" / f"{solver}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (CONF_DIR / "solver").glob("*.yaml")))
            raise UserError(f"unknown solver {solver!r}; choose one of {known} (or pass a "
                            "unified_ode.solvers.Solver)")
        cfg, label = OmegaConf.load(path), f"solver {solver!r}"
    unknown = sorted(set(options) - set(cfg))
    if unknown:
        raise UserError(f"{label} has no option {unknown[0]!r}; its options are "
                        f"{', '.join(str(k) for k in cfg if not str(k).startswith('_'))}")
    cfg.merge_with(options)
    return instantiate(cfg)


@dataclass
class Run:
    """A trained run loaded for use from Python (see :func:`load_run`).

    ``config``: the run's composed training config (``config_resolved.yaml``, every
    interpolation resolved; a run without that file: its physics/network/dataset/solver);
    ``module``: the :class:`~unified_ode.lit.module.GenerativeODE` in eval mode;
    ``datamodule``: the run's data; ``checkpoint``: the file the weights came from; ``ema``:
    whether they are the EMA weights.
    """

    config: DictConfig
    module: object
    datamodule: object
    checkpoint: Path | None
    ema: bool
    path: Path | None = None

    @property
    def field(self):
        """The force field (:class:`unified_ode.physics.Field`): kernel, prior, drift."""
        return self.module.field

    @property
    def model(self) -> torch.nn.Module:
        """The trained predictor ``model(x, t)`` (preconditioned network or exact posterior)."""
        return self.module.model

    @property
    def denoiser(self):
        """``D(x, t) -> E[y | x, t]`` for ``x`` ``(B, *data_shape)``, ``t`` a scalar or ``(B,)``
        tensor (affine fields; ``None`` for the others, which have no denoiser form)."""
        if not self.module.field.has_denoiser_form:
            return None
        return self.module.flow().denoiser

    @property
    def solver(self):
        """The run's own solver (its ``solver`` config)."""
        return self.module.solver

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.module.data_shape)

    def to(self, device) -> Run:
        """Move the model to ``device`` (``"cuda"``, ...); returns ``self``."""
        self.module.to(device)
        return self

    def heldout(self, n: int | None = None) -> torch.Tensor:
        """``(n, *data_shape)`` held-out data of the run's data set (what the metrics use)."""
        return self.datamodule.heldout(n)

    def sample(self, n: int, *, solver=None, seed: int = 0, batch_size: int | None = None,
               temperature: float = 1.0, record_every: int = 0, progress: bool = True,
               **solver_options):
        """``n`` samples -> :class:`~unified_ode.solvers.SolveResult` (``x`` ``(n,
        *data_shape)`` on the CPU, ``nfe`` per batch summed, ``times``, and the first
        batch's ``trajectory`` when ``record_every > 0``).

        ``solver``: a ``conf/solver/`` name (``"heun"``, ``"dpmpp3m"``, ``"dopri5"``, ...) with
        its options as keywords (``steps=10``, ``rtol=1e-4``), a Solver object, or ``None``
        for the run's own solver (options apply to it). ``seed``, ``batch_size`` (default:
        ``n``) and ``temperature`` as in ``sample.py``: the same arguments give the same
        samples."""
        from unified_ode.app.sample import generate
        from unified_ode.solvers import SolveResult

        solver = _solver(solver, solver_options, self.config.solver)
        with torch.no_grad():
            x, nfes, first = generate(self.module, solver, n, batch_size=batch_size or n,
                                      seed=seed, temperature=temperature,
                                      record_every=record_every, progress=progress)
        return SolveResult(x=x, nfe=sum(nfes), times=first.times, trajectory=first.trajectory,
                           trajectory_times=first.trajectory_times)

    def log_likelihood(self, x: torch.Tensor, *, seed: int = 0, **options):
        """Log-density of data ``x`` ``(B, *data_shape)`` under the probability-flow ODE ->
        :class:`~unified_ode.solvers.likelihood.LikelihoodResult` (``log_prob`` ``(B,)`` in
        nats, ``bits_per_dim()``, ``nfe``). ``options``: those of
        :func:`unified_ode.solvers.likelihood.log_likelihood` (``divergence``, ``probes``,
        ``rtol``, ``atol``, ``t_start``, ``t_end``, ``time_variable``, ...). Uses the weights
        the run was loaded with."""
        from unified_ode.solvers.likelihood import log_likelihood

        x = torch.as_tensor(x, dtype=torch.float32, device=self.module.device)
        if tuple(x.shape[1:]) != self.data_shape:
            raise UserError(f"x has shape {tuple(x.shape)}; this run's data are "
                            f"(B, {', '.join(map(str, self.data_shape))})")
        g = torch.Generator().manual_seed(int(seed))
        return log_likelihood(self.module.drift, self.module.field, x, generator=g, **options)


def load_run(path: str | Path, *, checkpoint: str | Path | None = None,
             ema: bool = True, device: str | torch.device | None = None) -> Run:
    """Load a training run directory (``outputs/<date>/<time>``, as ``train.py`` wrote it).

    ``checkpoint``: the file to load (default ``<path>/checkpoints/last.ckpt``); ``ema``:
    the EMA weights when the checkpoint has them (``False``: the raw weights); ``device``:
    where to put the model (default CPU).
    """
    from unified_ode.app.sample import load_model

    cfg = OmegaConf.create({"run": str(path),
                            "ckpt_path": str(checkpoint) if checkpoint is not None else None,
                            "ema": bool(ema)})
    loaded = load_model(cfg, [])
    resolved = Path(path) / "config_resolved.yaml"
    config = OmegaConf.load(resolved) if resolved.is_file() else loaded.config
    run = Run(config=config, module=loaded.module, datamodule=loaded.datamodule,
              checkpoint=loaded.checkpoint, ema=loaded.ema, path=Path(path))
    return run.to(device) if device is not None else run


def sample(field, model, solver, n: int | None = None, *, x_T: torch.Tensor | None = None,
           data_shape: tuple[int, ...] | None = None, seed: int = 0, device=None):
    """Sample the generative ODE of ``field`` with the predictor ``model(x, t)`` (a trained
    network or :class:`~unified_ode.physics.ExactPosterior`) and ``solver``, no Lightning.

    ``n`` prior draws (seed ``seed``) of shape ``data_shape`` (default: the exact model's
    data shape), or the prior states ``x_T`` ``(B, *data_shape)`` -> :class:`SolveResult`.
    """
    from unified_ode.parametrisation import ProbabilityFlow, natural_parametrisation

    if x_T is None:
        if n is None:
            raise ValueError("sample() needs n or x_T")
        if data_shape is None:
            data = getattr(model, "data", None)
            if data is None:
                raise ValueError("pass data_shape=(...) (the shape of one sample)")
            data_shape = tuple(data.shape[1:])
        g = torch.Generator().manual_seed(int(seed))
        x_T = field.sample_prior(int(n), tuple(data_shape), generator=g, device=device)
    # what the model predicts: its own parametrisation, else the field's natural one
    param = getattr(model, "parametrisation", None) or natural_parametrisation(field)
    with torch.no_grad():
        return solver.solve(ProbabilityFlow(param, model), x_T, solver.time_grid(field))
