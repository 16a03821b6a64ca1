"""Numerical proof that a force field is valid (THEORY.md §2) and usable for sampling.

:func:`validate_field` runs every check on a field in a data dimension ``d``:

1. divergence-free, 2. unit flux, 3. point source, 4. the prior is the kernel at ``t_max``
   from the data's centre, and the kernel there forgets the source
   (:mod:`~unified_ode.physics.validator.green`: the Green's-field conditions);
5. the kernel and prior samplers match their log-densities
   (:mod:`~unified_ode.physics.validator.samplers`);
6. the pairwise log-density of the exact field matches the kernel's, and the drift that
   sampling integrates, ``drift_from_denoiser`` of the exact denoiser, equals the
   posterior-weighted conditional velocity (:mod:`~unified_ode.physics.validator.drift`).

Each returns a :class:`CheckResult` (residual, tolerance, verdict, a line of detail);
:func:`format_table` prints them. Everything runs in float64 with seeded generators, so a
verdict is deterministic. Only the field's public methods are used (``sample_kernel``,
``kernel_log_prob``, ``pairwise_kernel_log_prob``, ``conditional_velocity``,
``sample_prior``, ``prior_log_prob``, ``drift_from_denoiser`` where the field has a denoiser
form, ``t_min``, ``t_max``). Torch only; the command line is :mod:`unified_ode.app.validate`.
"""

from __future__ import annotations

import math

from unified_ode.physics.validator.base import TOLERANCES, CheckResult, format_table
from unified_ode.physics.validator.drift import check_exact_drift, check_pairwise_log_prob
from unified_ode.physics.validator.green import (
    check_divergence_free,
    check_forgets_source,
    check_point_source,
    check_prior_is_limit,
    check_unit_flux,
)
from unified_ode.physics.validator.numerics import (
    RadialLaw,
    interp,
    kernel_radius_cdf,
    kernel_radius_ks,
    radial_cdf,
    radial_law,
)
from unified_ode.physics.validator.samplers import check_samplers

CHECKS = (check_divergence_free, check_unit_flux, check_point_source, check_prior_is_limit,
          check_forgets_source, check_samplers, check_pairwise_log_prob, check_exact_drift)

#: Which keyword(s) of which check(s) each entry of :data:`TOLERANCES` sets.
_TOLERANCE_ARGS = {
    "divergence": [(check_divergence_free, "tol")],
    "divergence_fd": [(check_divergence_free, "tol_fd")],
    "flux_quadrature": [(check_unit_flux, "tol_quadrature")],
    "flux_mc": [(check_unit_flux, "tol_mc"), (check_point_source, "tol_mc")],
    "point_source": [(check_point_source, "tol")],
    "prior": [(check_prior_is_limit, "tol")],
    "forgets": [(check_forgets_source, "tol")],
    "pairwise": [(check_pairwise_log_prob, "tol")],
    "drift": [(check_exact_drift, "tol")],
}


def validate_field(field, d: int, *, seed: int = 0,
                   tolerances: dict | None = None) -> list[CheckResult]:
    """Run every check on ``field`` in dimension ``d``; ``tolerances`` overrides entries of
    :data:`TOLERANCES`. A check that raises fails with the exception as its detail (the
    others still run)."""
    tolerances = dict(tolerances or {})
    unknown = sorted(set(tolerances) - set(_TOLERANCE_ARGS))
    if unknown:
        raise ValueError(f"unknown tolerance(s) {unknown}; known: {sorted(_TOLERANCE_ARGS)}")
    results = []
    for check in CHECKS:
        kwargs = {arg: float(tolerances[key]) for key, targets in _TOLERANCE_ARGS.items()
                  for fn, arg in targets if fn is check and key in tolerances}
        try:
            results.append(check(field, d, seed=seed, **kwargs))
        except Exception as exc:  # noqa: BLE001 - a crashing field fails the check, visibly
            label = check.__name__.removeprefix("check_").replace("_", " ")
            results.append(CheckResult(label, math.nan, math.nan, False,
                                       f"raised {type(exc).__name__}: {exc}"))
    return results


__all__ = ["CHECKS", "TOLERANCES", "CheckResult", "RadialLaw", "check_divergence_free",
           "check_exact_drift", "check_forgets_source", "check_pairwise_log_prob",
           "check_point_source", "check_prior_is_limit", "check_samplers", "check_unit_flux",
           "format_table", "interp", "kernel_radius_cdf", "kernel_radius_ks", "radial_cdf",
           "radial_law", "validate_field"]
