"""What every check returns (:class:`CheckResult`), the default tolerances, and the table."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Default tolerances. Each is stated in the table the validator prints.
TOLERANCES = {
    # max relative divergence |div G| / (|d_t G_t| + sum_i |d_i G_x,i|), derivatives by
    # autograd (round-off ~1e-13) or, for fields that are not differentiable, by central
    # differences (truncation and round-off ~1e-7)
    "divergence": 1e-6,
    "divergence_fd": 1e-4,
    # |flux - 1| by radial quadrature (accurate to ~1e-6 for the heavy-tailed Cauchy kernel)
    "flux_quadrature": 1e-3,
    # |flux - 1| by importance sampling (standard error 2e-3 to 4e-3 for a uniform-cube kernel
    # in d = 2 to 8 at the default sample size)
    "flux_mc": 0.02,
    # |mass within delta of y at t_min/100 - 1| by radial quadrature (by importance sampling
    # the flux_mc tolerance applies)
    "point_source": 0.01,
    # total variation between the kernel at t_max from the data's centre y = 0 and the prior
    # (MC standard error < 1e-3 at the default size; built-in fields: 0 to 1e-5; a prior 3 %
    # too wide or narrow in d = 2: 0.022)
    "prior": 0.005,
    # total variation between the kernel at t_max and the prior, for sources y = ±(1, ..., 1)
    # (MC standard error < 0.004). A field forgets y when t_max dwarfs ||y||: VE at t_max = 80
    # gives 0.007-0.014 in d = 2-8, the radial profiles at t_max = 100 up to 0.12 in d = 8.
    "forgets": 0.15,
    # log p_t(x_i | y_j) from pairwise_kernel_log_prob against kernel_log_prob, relative
    # (|a - b| / (1 + |b|); round-off ~1e-13)
    "pairwise": 1e-8,
    # the drift of the exact denoiser against the posterior-weighted conditional velocity,
    # relative to the posterior mean of ||v|| (round-off ~1e-14; a 10 % error gives ~0.1)
    "drift": 1e-6,
}


@dataclass
class CheckResult:
    """Outcome of one check: ``passed`` is ``residual <= tolerance`` (and finite).

    ``skipped`` marks a check that does not apply to the field (e.g. the denoiser drift of a
    field without a denoiser form); it counts as passed, with the reason in ``detail``."""

    name: str
    residual: float
    tolerance: float
    passed: bool
    detail: str = ""
    skipped: bool = False

    @classmethod
    def of(cls, name: str, residual: float, tolerance: float, detail: str = ""):
        residual = float(residual)
        ok = math.isfinite(residual) and residual <= tolerance
        return cls(name, residual, float(tolerance), bool(ok), detail)

    @classmethod
    def not_applicable(cls, name: str, tolerance: float, reason: str):
        return cls(name, math.nan, float(tolerance), True, f"not applicable: {reason}", True)


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table: check, residual, tolerance, PASS/FAIL/SKIP, detail."""
    rows = [("check", "residual", "tolerance", "result", "detail")]
    for r in results:
        verdict = "SKIP" if r.skipped else "PASS" if r.passed else "FAIL"
        residual = "n/a" if r.skipped else f"{r.residual:.3e}"
        rows.append((r.name, residual, f"{r.tolerance:.1e}", verdict, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)
