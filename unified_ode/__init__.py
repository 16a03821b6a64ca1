"""unified_ode: generative ODEs from physical force fields (PFGM, PFGM++, diffusion, flows).

The Python API (``docs/api.md``), imported on first use so that ``import unified_ode`` stays
cheap (no torch until you touch something that needs it):

* :func:`load_run` ``(path)`` -> :class:`Run`: a trained run; ``run.sample(n, solver="heun",
  steps=18, seed=0)``, ``run.log_likelihood(x)``, ``run.field``, ``run.denoiser``,
  ``run.config``;
* :func:`sample` ``(field, model, solver, n=...)``: sample any field with any predictor (a
  network or ``physics.ExactPosterior``) without a run or a config;
* :func:`toy_samples` ``(name, n, seed)``: the 2-D toy data sets;
* the subpackages ``physics``, ``solvers``, ``networks``, ``metrics``, ``data``, ``viz``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: name -> module that defines it (imported when the name is first used)
_LAZY = {
    "load_run": "unified_ode.api",
    "Run": "unified_ode.api",
    "sample": "unified_ode.api",
    "toy_samples": "unified_ode.data.toy2d",
}
_SUBPACKAGES = ("physics", "solvers", "networks", "metrics", "data", "viz", "objectives",
                "api")

__all__ = [*_LAZY, *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"unified_ode.{name}")
    else:
        raise AttributeError(f"module 'unified_ode' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
