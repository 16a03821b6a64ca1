"""The samplers agree with the log-densities: kernel and prior, by goodness-of-fit tests.

For each law tested (the kernel at ``y = 0`` and ``y = (0.5, −0.5, …)``, three times each, and
the prior) the sampler's draws are compared with what the law's log-density implies. When the
log-density is isotropic about a centre ``m`` (found from the log-density alone: the point its
gradients all point at), with the radius law ``F`` integrated from the log-density
(:func:`~unified_ode.physics.validator.numerics.radial_law`):

* **radius KS**: sampled radii ``||x − m||`` against ``F`` (critical value ``1.95/sqrt(n)``);
* **mean log-density**: ``z = (mean_i log p(x_i) − E_p[log p]) / (sd_p(log p)/sqrt(n))``, with
  ``E_p`` and ``sd_p`` by the same quadrature (critical value 3.29). Against small changes of
  shape it is far stronger than KS: PFGM++ drawn with ``D = 128`` but scored with ``D = 100``
  in ``d = 2`` moves the radius CDF by at most 0.0012 (KS needs ~10⁷ draws) but the mean
  log-density by 0.0043 standard deviations (z ≈ 6 at 2·10⁶ draws);
* **centre**: a sign test that the draws are centred on ``m`` (``P(u·(x − m) > 0) = 1/2`` for
  two directions ``u``; critical value ``3.29·0.5/sqrt(n)``), which sees a wrong ``a(t)·y``.

Otherwise the projections of (the first 8000) draws on two directions are KS-tested against the
importance-weighted log-density (critical value ``1.95·sqrt(1/n + 1/n_eff)``).

Two laws get a large sample, ``n_big = min(2^21, 2^23/d)`` draws: the kernel at ``y = 0`` at
the middle time and the prior; the others ``n = 8000``. Every statistic is divided by its 0.1 %
critical value; the residual is the largest ratio, so the tolerance is 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.physics.validator.base import CheckResult
from unified_ode.physics.validator.numerics import (
    DTYPE,
    KS_C,
    Z_C,
    check_times,
    gen,
    importance,
    is_isotropic,
    kernel_at,
    kernel_sample,
    ks_statistic,
    radial_centre,
    radial_law,
    weighted_ks,
)


def big_sample_size(d: int) -> int:
    """Draws for the two large-sample laws: ``min(2^21, 2^23 // d)`` (at most 64 MiB a copy)."""
    return max(8000, min(2**21, 2**23 // d))


class _Record:
    """The worst statistic/critical ratio seen, where, and how many tests of each kind."""

    def __init__(self):
        self.worst, self.where = 0.0, ""
        self.counts = {"radius": 0, "log-density": 0, "sign": 0, "projection": 0}
        self.min_ess = math.inf

    def __call__(self, ratio: float, label: str, kind: str) -> None:
        self.counts[kind] += 1
        if not math.isfinite(ratio):
            ratio = math.inf
        if ratio > self.worst:
            self.worst, self.where = ratio, label


def _radial_tests(record: _Record, log_prob, sample: Tensor, centre: Tensor, label: str,
                  directions: list[Tensor] | None) -> None:
    """Radius KS and mean-log-density z-test of ``sample`` ``(n, d)`` against an isotropic
    ``log_prob`` about ``centre``; sign tests of the centre along ``directions``."""
    n, d = sample.shape
    law = radial_law(lambda z: log_prob(centre + z), d)
    record(ks_statistic((sample - centre).norm(dim=1), law) / (KS_C / math.sqrt(n)),
           f"radius, {label}", "radius")
    lp = log_prob(sample)
    z = (float(lp.mean()) - law.mean_log_p) / (law.std_log_p / math.sqrt(n))
    record(abs(z) / Z_C, f"mean log-density, {label}", "log-density")
    for u in directions or []:
        frac = float(((sample - centre) @ u > 0).to(DTYPE).mean())
        record(abs(frac - 0.5) / (Z_C * 0.5 / math.sqrt(n)), f"centre, {label}", "sign")


def _test_law(record: _Record, log_prob, sample: Tensor, label: str, directions: list[Tensor],
              n_is: int, generator, *, centre_known: bool = False) -> None:
    """Every test that applies to one law: radial ones if ``log_prob`` is isotropic about a
    centre (the origin when ``centre_known``), projected weighted KS otherwise."""
    d = sample.shape[1]
    probe = sample[:8000]
    if centre_known:
        m = torch.zeros(d, dtype=DTYPE)
    else:
        m = radial_centre(log_prob, probe[:256])
    if m is not None and is_isotropic(lambda z: log_prob(m + z), probe - m, generator):
        _radial_tests(record, log_prob, sample, m, label, None if centre_known else directions)
        return
    x, log_w = importance(log_prob, probe, n_is, generator)
    for u in directions:
        stat, ess = weighted_ks(probe @ u, x @ u, log_w)
        record.min_ess = min(record.min_ess, ess)
        record(stat / (KS_C * math.sqrt(1.0 / probe.shape[0] + 1.0 / max(ess, 1.0))),
               f"projection, {label}", "projection")


@torch.no_grad()
def check_samplers(field, d: int, *, seed: int = 0, n: int = 8000, n_big: int | None = None,
                   n_is: int = 100_000) -> CheckResult:
    """The kernel and prior samplers match the log-densities (see the module docstring).
    ``n`` draws per law, ``n_big`` (default :func:`big_sample_size`) for the kernel at
    ``y = 0`` at the middle time and for the prior."""
    g = gen(seed, 5)
    n_big = big_sample_size(d) if n_big is None else int(n_big)
    record = _Record()
    directions = [torch.eye(d, dtype=DTYPE)[0], torch.ones(d, dtype=DTYPE) / math.sqrt(d)]
    sources = {"y=0": torch.zeros(d, dtype=DTYPE),
               "y!=0": torch.tensor([0.5 * (-1) ** i for i in range(d)], dtype=DTYPE)}
    for label, y in sources.items():
        for k, t in enumerate(check_times(field, 3)):
            size = n_big if (label == "y=0" and k == 1) else n
            sample = kernel_sample(field, y, t, size, g)
            _test_law(record, kernel_at(field, y, t), sample,
                      f"kernel {label}, t={t:.3g}, n={size}", directions, n_is, g)
            del sample
    prior = field.sample_prior(n_big, (d,), generator=g, dtype=DTYPE).to(DTYPE)
    _test_law(record, field.prior_log_prob, prior, f"prior, n={n_big}", directions, n_is, g,
              centre_known=is_isotropic(field.prior_log_prob, prior[:8000], g))
    parts = [f"{k} tests: {v}" for k, v in record.counts.items() if v]
    if math.isfinite(record.min_ess):
        parts.append(f"min n_eff {record.min_ess:.0f}")
    return CheckResult.of("samplers match log-densities", record.worst, 1.0,
                          f"max statistic/critical ({', '.join(parts)}); worst: {record.where}")
