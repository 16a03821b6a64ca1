"""Interoperability with k-diffusion (Crowson's ``k_diffusion.sampling``) in both directions.

k-diffusion's samplers integrate EDM's ODE ``dz/dσ = (z − D(z, σ))/σ`` for a denoiser
``D(z, σ)`` called as ``model(z, sigma)`` with ``sigma`` of shape ``(B,)``. Every affine field
``x = a(t) y + s(t) ε`` has that form in ``z = x/a(t)``, ``σ = s(t)/a(t)`` (σ increasing in t):

* :class:`KDiffusionDenoiser` (``GenerativeODE.as_k_diffusion()``, or from any flow with an
  affine schedule): our model as a k-diffusion denoiser. ``sigmas(times)`` turns one of our
  grids into k-diffusion's σ list, ``to_k(x, t)`` and ``from_k(z, sigma)`` map states.
  A field with ``a(t_max) = 0`` (rectified flow: σ = ∞ at the prior) can still be used from
  any finite σ_max below it (start from ``to_k(x, t)`` of a state at that ``t``).
* :class:`KDiffusionFlow`: a k-diffusion denoiser as one of our flows (the VE field ``a = 1``,
  ``s = σ``, time = σ), so every solver here, grid optimisation included, runs on it. It
  also has ``t_min``, ``t_max``, ``default_grid`` and ``describe`` so that
  ``solver.time_grid(flow)`` works.

Example (our model, k-diffusion's DPM-Solver++(2M))::

    kd = module.as_k_diffusion()
    times = solver.time_grid(module.field)              # or any grid
    z = sample_dpmpp_2m(kd, kd.to_k(x_T, times[0]), kd.sigmas(times))
    x0 = kd.from_k(z, 0.0)
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import torch
from torch import Tensor

from unified_ode.timegrid import make_grid


def load_k_diffusion():
    """k-diffusion's ``sampling`` module without running its package ``__init__`` (which
    imports clip and other training dependencies): ``(module, None)`` or ``(None, reason)``.
    Install it with ``pip install -e .[bench]``."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], None
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            return None, "k-diffusion is not installed (pip install -e .[bench])"
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    try:
        return importlib.import_module("k_diffusion.sampling"), None
    except ImportError as err:
        return None, f"k-diffusion's sampling.py does not import: {err}"


class KDiffusionDenoiser:
    """``denoiser(z, sigma)`` of an affine flow in k-diffusion's variables (see the module
    docstring). ``flow``: anything with ``denoiser(x, t)`` and ``schedule`` (a
    :class:`~unified_ode.parametrisation.ProbabilityFlow`); ``field``: the field (``a``, ``s``
    as tensors, ``t_max``, optional ``t_from_sigma``). ``calls`` counts denoiser calls."""

    def __init__(self, flow, field):
        if getattr(flow, "schedule", None) is None:
            raise ValueError(f"physics={getattr(field, 'name', '?')} is not affine "
                             "(x = a(t) y + s(t) eps): it has no k-diffusion (sigma) form")
        self.flow, self.field = flow, field
        self.calls = 0
        t_max = torch.tensor(float(field.t_max), dtype=torch.float64)
        t_min = torch.tensor(float(field.t_min), dtype=torch.float64)
        #: σ at the field's t_min and t_max (``inf`` where ``a(t_max) = 0``)
        self.sigma_min = float(self.sigma_of_t(t_min))
        self.sigma_max = float(self.sigma_of_t(t_max))

    # --- σ <-> t ------------------------------------------------------------------------
    def sigma_of_t(self, t) -> Tensor:
        """``σ = s(t)/a(t)`` (float64; ``inf`` where ``a = 0``)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = self.field.a(t), self.field.s(t)
        return torch.where(a > 0, s / a.clamp_min(1e-300), torch.full_like(s, math.inf))

    def t_of_sigma(self, sigma) -> Tensor:
        """The time with ``s/a = σ`` (float64): the field's ``t_from_sigma`` where it inverts
        ``s/a`` to 1e-10, else bisection in ``[0, t_max]`` (σ is increasing in ``t``)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        scale = float(getattr(getattr(self.field, "noise", None), "scale", 1.0))
        try:
            t = torch.as_tensor(self.field.t_from_sigma(sigma * scale), dtype=torch.float64)
            back = self.sigma_of_t(t)
            if bool(torch.all((back - sigma).abs() <= 1e-10 * sigma.abs().clamp_min(1e-30))):
                return t
        except (NotImplementedError, TypeError):
            pass
        lo = torch.zeros_like(sigma)
        hi = torch.full_like(sigma, float(self.field.t_max))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            up = self.sigma_of_t(mid) < sigma
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        return 0.5 * (lo + hi)

    def sigmas(self, times) -> Tensor:
        """k-diffusion's σ list for one of our decreasing grids (``0`` stays ``0``)."""
        return self.sigma_of_t(torch.as_tensor(times, dtype=torch.float64))

    # --- states ------------------------------------------------------------------------------
    def to_k(self, x: Tensor, t) -> Tensor:
        """``z = x / a(t)``."""
        a = float(self.field.a(torch.as_tensor(float(t), dtype=torch.float64)))
        if a == 0:
            raise ValueError(f"a(t) = 0 at t = {float(t)}: no k-diffusion state there (σ = ∞); "
                             "start from a grid time with a > 0")
        return x / a

    def from_k(self, z: Tensor, sigma) -> Tensor:
        """``x = a(t(σ)) z``."""
        t = self.t_of_sigma(torch.as_tensor(float(sigma), dtype=torch.float64))
        return float(self.field.a(t)) * z

    # --- the denoiser --------------------------------------------------------------------
    def __call__(self, z: Tensor, sigma: Tensor) -> Tensor:
        """``D(z, σ) = E[y | x = a z, t(σ)]`` for ``z`` ``(B, *shape)``, ``sigma`` ``(B,)`` or
        scalar."""
        self.calls += 1
        sigma = torch.as_tensor(sigma).reshape(-1).to(torch.float64).cpu()
        t = self.t_of_sigma(sigma)
        a = self.field.a(t)
        shape = (-1,) + (1,) * (z.ndim - 1)
        x = z * a.to(dtype=z.dtype, device=z.device).reshape(shape)
        tt = t.to(dtype=z.dtype, device=z.device)
        if tt.numel() == 1:
            tt = tt.reshape(())
        return self.flow.denoiser(x, tt)


class KDiffusionFlow:
    """A k-diffusion denoiser ``model(z, sigma)`` as a flow of the VE field ``x = y + σ ε``
    (time = σ): what our solvers integrate (see the module docstring). ``sigma_min``,
    ``sigma_max``: the σ range of its default grid (EDM's ρ = 7 grid)."""

    name = "k-diffusion"

    class _Schedule:
        def a(self, t) -> float:
            return 1.0

        def s(self, t) -> float:
            return float(t)

    def __init__(self, model, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0):
        if not 0 < float(sigma_min) < float(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.model = model
        self.schedule = self._Schedule()
        self.t_min, self.t_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def _sigma(self, x: Tensor, t) -> Tensor:
        return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])

    def denoiser(self, x: Tensor, t) -> Tensor:
        return self.model(x, self._sigma(x, t))

    def drift(self, x: Tensor, t) -> Tensor:
        sigma = self._sigma(x, t)
        return (x - self.model(x, sigma)) / sigma.reshape((-1,) + (1,) * (x.ndim - 1))

    def last_step(self, x: Tensor, t) -> Tensor:
        """``x_0 = D(x, σ_min)`` (``a(0) = 1``)."""
        return self.denoiser(x, t)

    def default_grid(self, steps: int, *, final_step: bool = True) -> Tensor:
        return make_grid("edm", steps, self.t_min, self.t_max, rho=self.rho,
                         final_step=final_step)

    def describe(self) -> dict:
        return {"field": self.name, "t_min": self.t_min, "t_max": self.t_max}


__all__ = ["KDiffusionDenoiser", "KDiffusionFlow", "load_k_diffusion"]
