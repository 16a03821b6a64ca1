"""Radial-profile fields ψ(r/t): a new family of straight-ray fields (THEORY.md §4–5).

Choose a radius CDF ``F = ψ`` on ``[0, ∞)``. The kernel is ``x = y + t·eps`` with
``eps = R·u``, ``R ~ F``, ``u`` uniform on the sphere, i.e. the Green's field with radial CDF
``ψ_t(r) = F(r/t)``; its density is

    p_t(x | y) = F'(r/t) / (t · S_{d−1} · r^{d−1}),   r = ||x − y||,

and the conditional velocity is ``(x − y)/t`` (affine in ``y``), so the generative ODE is
``dx/dt = (x − D(x, t))/t`` as for EDM and PFGM; only the posterior weights differ.

Built-in profiles: ``tanh`` (``ψ(s) = tanh s``, ``R = artanh U``) and ``exp``
(``ψ(s) = 1 − e^{−s}``, ``R ~ Exp(1)``). A user profile is any importable callable
``F(s)`` on float64 tensors (``physics.profile=mypkg.mod:fn``); its derivative comes from
autograd and its inverse from bisection unless ``physics.profile_log_density`` /
``physics.profile_inverse`` name closed forms.

The radius is O(t), not O(t·sqrt(d)): ``t_max`` must make the prior radius dwarf the data's
spread (the default 100 does for standardised toy data in a few dimensions; raise it with the
data's radius, e.g. to ~1000 for images of ~3000 dimensions). The prior is ``t_max·(that
law)`` centred at the origin.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from unified_ode.errors import UserError
from unified_ode.physics.base import AffineField
from unified_ode.physics.radial_noise import PROFILES, RadialProfile, RadialProfileNoise


def import_callable(spec, what: str) -> Callable:
    """Resolve ``"pkg.mod:fn"`` (or ``"pkg.mod.fn"``) to the callable it names; a callable is
    returned as is. Raises :class:`UserError` naming ``what`` (the config key) on failure."""
    if callable(spec):
        return spec
    spec = str(spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise UserError(f"{what}={spec!r} is not an importable callable; write it as "
                        "package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{what}={spec!r}: cannot import module {module_name!r} ({exc}); "
                        "make sure it is on PYTHONPATH") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{what}={spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def build_profile(profile, log_density=None, inverse=None) -> RadialProfile:
    """A :class:`RadialProfile` from a built-in name (``tanh``, ``exp``), a
    :class:`RadialProfile`, or an importable/plain callable CDF (checked to be a CDF)."""
    if isinstance(profile, RadialProfile):
        return profile
    if isinstance(profile, str) and profile in PROFILES:
        if log_density is not None or inverse is not None:
            raise UserError(f"physics.profile={profile} is built in; profile_log_density and "
                            "profile_inverse apply to a user profile only")
        return PROFILES[profile]
    if isinstance(profile, str) and ":" not in profile and "." not in profile:
        raise UserError(f"physics.profile={profile!r} is neither a built-in profile "
                        f"({', '.join(sorted(PROFILES))}) nor an importable callable "
                        "(package.module:function)")
    cdf = import_callable(profile, "physics.profile")
    prof = RadialProfile(
        cdf,
        log_density=None if log_density is None else import_callable(
            log_density, "physics.profile_log_density"),
        inverse=None if inverse is None else import_callable(inverse, "physics.profile_inverse"),
        name=getattr(cdf, "__name__", str(profile)))
    try:
        prof.check()
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"physics.profile={profile!r}: {exc}") from exc
    return prof


class RadialProfileField(AffineField):
    """Straight-ray field with radial profile ψ: ``x = y + t·R·u``, ``R ~ ψ``.

    Parameters
    ----------
    profile:
        ``"tanh"``, ``"exp"``, a :class:`RadialProfile`, or ``"pkg.mod:fn"`` naming a CDF.
    profile_log_density, profile_inverse:
        Optional ``"pkg.mod:fn"`` for ``log ψ'(s)`` and ``ψ^{-1}(u)`` of a user profile.
    t_min, t_max:
        Time range (``t`` is the radius scale, ``sigma(t) = t``).
    """

    name = "radial"

    def __init__(self, profile="tanh", profile_log_density=None, profile_inverse=None,
                 t_min: float = 0.002, t_max: float = 100.0, **kwargs):
        self.profile = build_profile(profile, profile_log_density, profile_inverse)
        super().__init__(noise=RadialProfileNoise(self.profile), t_min=t_min, t_max=t_max,
                         **kwargs)

    def t_from_sigma(self, sigma):
        return sigma

    def describe(self):
        return {**super().describe(), "profile": self.profile.name}
