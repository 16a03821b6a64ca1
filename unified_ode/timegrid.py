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

from unified_ode.errors import UserError

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


# --- grid files (optimised grids) ------------------------------------------------------------
#: ``solver.grid=optimised``: the grid fitted for this solver and step count in the run
#: directory (resolved by the application, see :mod:`unified_ode.app.grid`).
OPTIMISED = "optimised"
GRID_FILE_FORMAT = "unified_ode.grid/1"
_GRID_FILE_KEYS = ("format", "times", "solver", "steps", "final_step", "field")


class GridFileError(UserError, ValueError):
    """A grid file that is missing, unreadable, or fitted for another field/solver/steps
    (a ``ValueError`` for library callers, a :class:`UserError` for the command line)."""


def is_grid_file_option(grid) -> bool:
    """True for a ``solver.grid`` value that names a grid file (not a kind, not ``null`` nor
    ``optimised``)."""
    return grid is not None and grid not in GRID_KINDS and grid != OPTIMISED


def jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists, ...), for comparisons."""
    import json

    return json.loads(json.dumps(value, default=str))


def load_grid_file(path) -> dict:
    """Read and check a grid file written by ``sample.py task=optimise_grid``: a JSON object
    with ``times`` (strictly decreasing, from ``t_max``), ``solver``, ``steps``,
    ``final_step`` and ``field`` (the field's ``describe()``). Raises :class:`GridFileError`
    saying what is wrong."""
    import json
    from pathlib import Path

    p = Path(str(path))
    if not p.is_file():
        kinds = ", ".join((*GRID_KINDS, OPTIMISED))
        raise GridFileError(f"solver.grid={path!r} is neither a grid kind ({kinds}) nor an "
                            "existing grid file; write one with `python sample.py run=<dir> "
                            "task=optimise_grid solver=<s> solver.steps=<N>`")
    try:
        info = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise GridFileError(f"solver.grid={path!r} is not a readable JSON grid file: "
                            f"{err}") from None
    missing = [k for k in _GRID_FILE_KEYS if not isinstance(info, dict) or k not in info]
    if missing or info.get("format") != GRID_FILE_FORMAT:
        raise GridFileError(f"solver.grid={path!r} is not a {GRID_FILE_FORMAT} grid file "
                         f"(missing {missing or 'the format tag'})")
    times = torch.tensor(info["times"], dtype=torch.float64)
    if times.ndim != 1 or len(times) < 2 or not bool(torch.all(times[1:] < times[:-1])):
        raise GridFileError(f"grid file {path}: times must be a strictly decreasing list")
    if len(times) != int(info["steps"]) + 1:
        raise GridFileError(f"grid file {path}: {len(times)} times for steps={info['steps']}")
    info["path"] = str(p)
    return info


def grid_from_file(info: dict, *, solver: str, steps: int, final_step: bool, field) -> Tensor:
    """The grid of a loaded grid file, after checking that it was fitted for this solver, step
    count, final step and field (``field.describe()``); :class:`GridFileError` otherwise."""
    where = f"grid file {info['path']}"
    wanted = {"solver": solver, "steps": int(steps), "final_step": bool(final_step)}
    for key, value in wanted.items():
        if info[key] != value:
            raise GridFileError(f"{where} was fitted for {key}={info[key]}, not {key}={value}; "
                             f"fit one with `sample.py task=optimise_grid solver={solver} "
                             f"solver.steps={steps}` or pass the matching solver settings")
    here = jsonable(field.describe())
    if info["field"] != here:
        raise GridFileError(f"{where} was fitted for the field {info['field']}, not {here}: a "
                         "grid is specific to one field; fit one for this field")
    return torch.tensor(info["times"], dtype=torch.float64)
