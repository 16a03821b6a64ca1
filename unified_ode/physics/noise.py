"""Noise laws ``q`` of the affine kernels ``x = a(t) y + s(t) eps, eps ~ q``.

A noise law is the one thing that distinguishes most physical fields from each other
(THEORY.md §3): Gaussian for the heat equation (VE/EDM/VP), multivariate Student-t with ``D``
degrees of freedom for PFGM++ (``D = 1`` is PFGM's multivariate Cauchy), a uniform cube or any
other easy law for rectified flow; the radial profiles of the new fields of §5 are in
:mod:`unified_ode.physics.radial_noise`.

Every law works on tensors of shape ``(B, *shape)``: ``sample`` draws ``eps`` of that shape and
``log_prob`` returns ``(B,)`` log-densities summed over all non-batch dimensions (nats).
Isotropic laws also expose ``log_prob_sqnorm``, the log-density as a function of ``||eps||^2``,
which lets the exact field compute pairwise posteriors from distances alone.

Only torch is imported here: this layer is usable from a notebook.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def event_dim(x: Tensor) -> int:
    """Number of data dimensions of a batch ``(B, *shape)``: ``prod(shape)``."""
    return int(math.prod(x.shape[1:]))



def sample_gamma(concentration: float, n: int, *, generator: torch.Generator | None = None,
                 device=None, dtype=torch.float32) -> Tensor:
    """Draw ``n`` samples of Gamma(concentration, 1), shape ``(n,)``, in ``dtype``.

    Two exact samplers, chosen by whether a generator is given:

    * ``generator`` given (seeded prior draws: sampling, metrics, the validator): the
      Marsaglia–Tsang squeeze method as a float64 rejection loop, boosted by ``U^(1/alpha)`` for
      ``alpha < 1`` (:func:`seeded_gamma`). ``torch.distributions.Gamma`` cannot take a
      ``torch.Generator``, and this loop's consumption of the generator is what every seeded
      heavy-tailed draw so far was made with, so old runs' samples stay reproducible. Its
      ``while`` reads the number of rejected proposals on the host: a sync once per sampling
      batch, never inside a solver step.
    * ``generator=None`` (the training step's kernel draws, from the global RNG that Lightning
      seeds): ``torch.distributions.Gamma`` (torch's own kernel, float64), which has no host
      sync on any device.
    """
    if concentration <= 0:
        raise ValueError(f"Gamma concentration must be positive, got {concentration}")
    if generator is not None:
        return seeded_gamma(float(concentration), n, generator=generator, device=device,
                            dtype=dtype)
    alpha = torch.tensor(float(concentration), dtype=torch.float64, device=device)
    law = torch.distributions.Gamma(alpha, torch.ones_like(alpha), validate_args=False)
    return law.sample((n,)).to(dtype)


def seeded_gamma(concentration: float, n: int, *, generator: torch.Generator, device=None,
                 dtype=torch.float32) -> Tensor:
    """Gamma(concentration, 1) draws ``(n,)`` from ``generator`` by the Marsaglia–Tsang
    rejection loop (float64; see :func:`sample_gamma`). The order in which it consumes the
    generator is part of every seeded prior draw of a Student-t field: do not change it."""
    alpha = float(concentration)
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device, dtype=torch.float64)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        z = torch.randn(m, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z**2 + d - d * v
                        + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        out = out * u ** (1.0 / alpha)
    return out.to(dtype)


def uniform_directions(n: int, shape: tuple[int, ...], *, generator=None, device=None,
                       dtype=torch.float32) -> Tensor:
    """``n`` directions uniform on the unit sphere of ``R^prod(shape)``, shaped ``(n, *shape)``."""
    g = torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-30)
    return g / norm.view(n, *([1] * len(shape)))


class NoiseLaw:
    """Base class of noise laws. Subclasses set ``isotropic`` and implement the methods."""

    #: True when the density depends on ``eps`` only through ``||eps||``.
    isotropic: bool = False
    #: ``c`` when ``log q(base + delta) − log q(base) = c · delta`` exactly (log-density affine
    #: in the squared norm: the Gaussian, ``c = −1/2``), so that posterior logits are affine in
    #: ``x·y`` (attention); ``None`` otherwise.
    delta_slope: float | None = None
    #: Per-coordinate scale of ``eps`` used to express the noise level in data units (the
    #: ``sigma`` of EDM preconditioning): 1 for N(0, I) and for the Student-t laws of PFGM++.
    scale: float = 1.0

    def sample(self, shape: tuple[int, ...], *, generator=None, device=None,
               dtype=torch.float32) -> Tensor:
        raise NotImplementedError

    def log_prob(self, eps: Tensor) -> Tensor:
        """Log-density of each row of ``eps`` ``(B, *shape)``; returns ``(B,)``."""
        if not self.isotropic:
            raise NotImplementedError
        return self.log_prob_sqnorm(eps.flatten(1).pow(2).sum(1), event_dim(eps))

    def log_prob_sqnorm(self, sqnorm: Tensor, dim: int, *, inplace: bool = False) -> Tensor:
        """Log-density at any point with ``||eps||^2 = sqnorm`` in ``R^dim`` (isotropic laws),
        elementwise, same shape. ``inplace=True`` lets the law overwrite ``sqnorm`` with the
        result (the exact field's ``(N, M)`` chunks: no new allocation)."""
        raise NotImplementedError(f"{type(self).__name__} is not isotropic")

    def log_prob_sqnorm_shift(self, delta: Tensor, base: Tensor, dim: int, *,
                              inplace: bool = False) -> Tensor:
        """``log q(base + delta) − log q(base)`` for squared norms ``base`` ``(N, 1)`` (or
        broadcastable) and ``delta`` ``(N, M)``, with ``base + delta >= 0``: a log-density
        relative to a per-row reference, never formed as the difference of two large numbers
        (the exact field's logits in float32). ``inplace=True`` may overwrite ``delta``."""
        sq = (base + delta).clamp_min_(0.0)
        return self.log_prob_sqnorm(sq, dim, inplace=True).sub_(self.log_prob_sqnorm(base, dim))

    def shift_row_factor(self, base: Tensor) -> Tensor | None:
        """A per-row factor ``k`` ``(N,)`` (or ``None``: 1) for squared norms ``base`` ``(N,)``:
        a caller of :meth:`scaled_log_prob_shift_` forms ``k·delta`` instead of ``delta`` in
        its matrix product (the factor costs no pass over the ``(N, M)`` chunk there)."""
        return None

    def shift_offset(self, dim: int, dtype: torch.dtype) -> float:
        """A constant ``c`` that :meth:`scaled_log_prob_shift_` wants added: it takes ``c +
        k·delta`` (a caller may fold ``c`` into its matrix product). Default 0."""
        return 0.0

    def scaled_log_prob_shift_(self, z: Tensor, base: Tensor, dim: int):
        """In place, the exact field's logits in as few passes as the law allows: ``(ell,
        scale)`` with ``scale · ell = log q(base + delta) − log q(base) + c`` (``c`` constant
        along a row), given ``z = shift_offset + k · delta`` ``(N, M)`` with ``k`` from
        :meth:`shift_row_factor` and ``base`` ``(N, 1)``. ``scale`` is ``None`` (``ell`` is the
        logit itself) or a negative Python number with ``ell`` increasing in ``delta``, so that
        a row's largest logit is ``scale · min(ell)`` (the softmax folds the product into its
        shift pass). Overwrites ``z``. Default: :meth:`log_prob_sqnorm_shift`."""
        return self.log_prob_sqnorm_shift(z, base, dim, inplace=True), None

    def scaled_log_prob_(self, sqnorm: Tensor, inv_var: Tensor, dim: int):
        """In place, for the exact field's ``(N, M)`` chunks: ``(ell, scale)`` with
        ``log q(eps) = scale · ell + c`` at ``||eps||² = sqnorm · inv_var``, where ``inv_var``
        ``(N, 1)`` scales each row and ``c`` is constant along a row (it cancels in a softmax
        over the row). ``scale`` is ``None`` (``ell`` is the log-density itself) or a negative
        number or ``(N, 1)`` tensor of negatives, with ``ell`` increasing in ``sqnorm``, so
        that a row's largest logit is ``scale · min(ell)``. Overwrites ``sqnorm``.

        Laws override it to skip passes over the chunk (constants, a final multiply); this
        default is :meth:`log_prob_sqnorm` at the scaled squared norm."""
        return self.log_prob_sqnorm(sqnorm.mul_(inv_var), dim, inplace=True), None

    def mixture_precisions(self) -> Tensor | None:
        """For a Gaussian scale mixture ``eps = g / sqrt(w)`` (g ~ N(0, I)): a fixed, quasi-random
        float64 sample of ``w`` used to adapt EDM's preconditioning to the law (``None`` when the
        law is not such a mixture, or is Gaussian, ``w = 1``)."""
        return None

    def coordinate_scale(self, dim: int) -> float:
        """Per-coordinate scale of ``eps`` in ``R^dim``, for preconditioning: :attr:`scale`
        unless the law's spread per coordinate depends on the dimension (radial profiles, whose
        radius is O(1) rather than O(sqrt(dim)))."""
        return self.scale

    def sample_radius(self, n: int, dim: int, *, generator=None, device=None,
                      dtype=torch.float32) -> Tensor:
        """``n`` draws of ``||eps||`` in ``R^dim`` (isotropic laws)."""
        eps = self.sample((n, dim), generator=generator, device=device, dtype=dtype)
        return eps.norm(dim=1)

    def describe(self) -> str:
        return type(self).__name__


class GaussianNoise(NoiseLaw):
    """``eps ~ N(0, I)``: the heat-equation kernel (VE, EDM, VP)."""

    isotropic = True
    delta_slope = -0.5

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def log_prob_sqnorm(self, sqnorm, dim, *, inplace=False):
        const = -0.5 * dim * math.log(2 * math.pi)
        if inplace:
            return sqnorm.mul_(-0.5).add_(const)
        return const - 0.5 * sqnorm

    def log_prob_sqnorm_shift(self, delta, base, dim, *, inplace=False):
        return delta.mul_(self.delta_slope) if inplace else self.delta_slope * delta

    def scaled_log_prob_(self, sqnorm, inv_var, dim):
        # −||eps||²/2 + const: ell = sqnorm itself, no pass over the chunk
        return sqnorm, self.delta_slope * inv_var

    def scaled_log_prob_shift_(self, z, base, dim):
        # −(base + delta)/2: ell = delta itself, no pass over the chunk
        return z, self.delta_slope

    def describe(self):
        return "N(0, I)"


def log1p_fast_(z: Tensor, factor: float) -> Tensor:
    """In place, ``log(1 + z)`` for ``z > −1`` that will be multiplied by ``factor``.

    torch's ``log1p`` on CPU is several times slower than ``log`` (measured: ~19 vs ~3 ns per
    float32 value); ``log(1 + z)`` is off by at most ``eps`` (of 1), i.e. ``|factor|·eps`` after
    the multiplication. So ``log`` is used when that is below 1e-5 nats (float64 always;
    float32 for ``|factor| <= 83``, e.g. the Poisson kernel up to 165 dimensions), ``log1p``
    otherwise (the exact field's drift stays within 1e-5 of float64: tests/test_exact.py)."""
    if abs(factor) * torch.finfo(z.dtype).eps <= 1e-5:
        return z.add_(1.0).log_()
    return z.log1p_()


class StudentTNoise(NoiseLaw):
    """Multivariate Student-t with ``dof`` degrees of freedom and identity scale.

    ``q(eps) ∝ (1 + ||eps||^2 / dof)^(-(dof + d)/2)``. This is exactly the PFGM++ kernel with
    ``D = dof`` extra dimensions in units of ``sigma = r / sqrt(D)``; ``dof = 1`` is the
    multivariate Cauchy kernel of PFGM (the (d+1)-dimensional Coulomb field), and
    ``dof -> inf`` tends to ``N(0, I)``.

    Sampling: ``eps = g / sqrt(chi2_dof / dof)``, i.e. ``||eps||^2 / dof = B / (1 - B)`` with
    ``B ~ Beta(d/2, dof/2)`` (THEORY.md §4).
    """

    isotropic = True

    def __init__(self, dof: float):
        if dof <= 0:
            raise ValueError(f"Student-t degrees of freedom must be positive, got {dof}")
        self.dof = float(dof)

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        g = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        chi2 = 2.0 * sample_gamma(self.dof / 2.0, shape[0], generator=generator, device=device,
                                  dtype=torch.float64)
        scale = torch.sqrt(self.dof / chi2).to(dtype)
        return g * scale.view(shape[0], *([1] * (len(shape) - 1)))

    def log_prob_sqnorm(self, sqnorm, dim, *, inplace=False):
        nu = self.dof
        const = (math.lgamma((nu + dim) / 2) - math.lgamma(nu / 2)
                 - 0.5 * dim * math.log(nu * math.pi))
        if inplace:
            p = 0.5 * (nu + dim)
            return log1p_fast_(sqnorm.div_(nu), p).mul_(-p).add_(const)
        return const - 0.5 * (nu + dim) * torch.log1p(sqnorm / nu)

    def scaled_log_prob_(self, sqnorm, inv_var, dim):
        # −(ν+d)/2 · log(1 + sqnorm·inv_var/ν) + const: ell = the log, in two passes
        p = 0.5 * (self.dof + dim)
        z = inv_var / self.dof
        if p * torch.finfo(sqnorm.dtype).eps <= 1e-5:  # log(1 + z) suffices (log1p_fast_)
            ell = torch.addcmul(torch.ones((), dtype=sqnorm.dtype, device=sqnorm.device),
                                sqnorm, z, out=sqnorm).log_()
        else:
            ell = sqnorm.mul_(z).log1p_()
        return ell, -p

    def shift_row_factor(self, base):
        return 1.0 / (base + self.dof)

    def _log_suffices(self, dim: int, dtype: torch.dtype) -> bool:
        """``log(1 + r)`` is within 1e-5 nats of ``log1p(r)`` after the factor (ν+d)/2
        (:func:`log1p_fast_`)."""
        return 0.5 * (self.dof + dim) * torch.finfo(dtype).eps <= 1e-5

    def shift_offset(self, dim, dtype):
        return 1.0 if self._log_suffices(dim, dtype) else 0.0

    def scaled_log_prob_shift_(self, z, base, dim):
        # ell = log(1 + r), r = delta/(ν + base) (the division made in the caller's matrix
        # product), kept at 1 + r >= ν/(ν + base) (base + delta >= 0 up to rounding); scale
        # −(ν+d)/2. Given z = 1 + r (the 1 folded in by the caller): two light passes; else
        # z = r and log1p (precise where r is small: the large-d case in float32)
        p = 0.5 * (self.dof + dim)
        if self._log_suffices(dim, z.dtype):
            return z.clamp_(min=self.dof / (base + self.dof)).log_(), -p
        return z.clamp_(min=(base / (base + self.dof)).neg()).log1p_(), -p

    def log_prob_sqnorm_shift(self, delta, base, dim, *, inplace=False):
        # −(ν+d)/2 · log((ν + base + delta)/(ν + base)), the ratio's argument kept > −1
        # (base + delta >= 0 up to rounding: clamped in place, no new chunk-sized tensor)
        denom = base + self.dof
        delta = delta.clamp_(min=-base) if inplace else delta.clamp(min=-base)
        p = 0.5 * (self.dof + dim)
        if p * torch.finfo(delta.dtype).eps <= 1e-5:  # log(1 + r) suffices (log1p_fast_)
            one = torch.ones((), dtype=delta.dtype, device=delta.device)
            return torch.addcdiv(one, delta, denom, out=delta).log_().mul_(-p)
        return delta.div_(denom).log1p_().mul_(-p)

    def mixture_precisions(self):
        # eps = g / sqrt(w), w = chi2_dof / dof: a Gaussian scale mixture. A fixed draw (seeded)
        # keeps the preconditioning deterministic.
        if getattr(self, "_w", None) is None:
            g = torch.Generator().manual_seed(0)
            w = 2.0 * sample_gamma(self.dof / 2.0, 65536, generator=g,
                                   dtype=torch.float64) / self.dof
            # 256 strata means of the sorted draw: cheap per call, accurate for the bounded
            # functions of w that the preconditioning averages.
            self._w = torch.sort(w).values.view(256, -1).mean(1)
        return self._w

    def describe(self):
        return "multivariate Cauchy" if self.dof == 1 else f"Student-t(dof={self.dof:g})"


def log_sphere_area(dim: int) -> float:
    """``log S_{dim−1}``, the log surface area of the unit sphere in ``R^dim``."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def invert_increasing(fn, target: Tensor, *, iters: int = 200) -> Tensor:
    """Solve ``fn(s) = target`` for ``s >= 0`` elementwise by bisection, for an increasing
    ``fn`` with ``fn(0) <= target < sup fn``.

    ``target`` is any float tensor; ``fn`` maps a tensor of the same shape to one of the same
    shape. The bracket ``[0, hi]`` is found by doubling ``hi`` from 1; then at most ``iters``
    halvings, stopping once every bracket is down to the last bits of its upper end. Returns a
    tensor like ``target``.
    """
    target = target.detach()
    lo = torch.zeros_like(target)
    hi = torch.ones_like(target)
    for _ in range(1100):  # 2^1100 overflows float64: stop well before
        low = fn(hi) < target
        if not bool(low.any()):
            break
        hi = torch.where(low, hi * 2.0, hi)
        lo = torch.where(low, hi / 2.0, lo)
    else:
        raise ValueError("invert_increasing: no bracket found (is the function a CDF that "
                         "tends to 1?)")
    eps = torch.finfo(target.dtype).eps
    for i in range(iters):
        mid = 0.5 * (lo + hi)
        below = fn(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        if i % 8 == 7 and bool(torch.all(hi - lo <= 2 * eps * hi)):
            break  # every bracket is down to the last bits
    return 0.5 * (lo + hi)


class UniformCubeNoise(NoiseLaw):
    """``eps`` uniform on the cube ``[−h, h]^d`` (not isotropic; bounded support).

    The default half-width ``h = sqrt(3)`` gives unit variance per coordinate, like N(0, I),
    so the same preconditioning fits both priors of rectified flow. ``log_prob`` is
    ``−d·log(2h)`` inside the cube and ``−inf`` outside.
    """

    isotropic = False

    def __init__(self, half_width: float = math.sqrt(3.0)):
        if not half_width > 0:
            raise ValueError(f"uniform cube half-width must be positive, got {half_width}")
        self.half_width = float(half_width)
        self.scale = self.half_width / math.sqrt(3.0)  # per-coordinate standard deviation

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return (2.0 * u - 1.0) * self.half_width

    def log_prob(self, eps):
        flat = eps.flatten(1)
        inside = (flat.abs() <= self.half_width).all(dim=1)
        value = -flat.shape[1] * math.log(2.0 * self.half_width)
        return torch.where(inside, torch.full_like(flat[:, 0], value),
                           torch.full_like(flat[:, 0], -math.inf))

    def log_prob_floored(self, eps: Tensor, floor: float = 1e4) -> Tensor:
        """:meth:`log_prob` with the ``−inf`` outside the cube replaced by
        ``−d·log(2h) − floor·(1 + e/h)``, ``e`` the Euclidean distance of ``eps`` from the cube
        (not the L∞ one, whose ties between sources cover whole regions).

        ``exp`` of it is exactly 0 in float32 and float64 (``floor`` ≫ 745 nats below the
        density inside), so any posterior with mass inside some cube is unchanged, while a point
        that lies outside every cube (where the density is 0 and the posterior undefined: a
        solver step can land there) gets the posterior of the nearest cube instead of NaN.
        """
        flat = eps.flatten(1)
        excess = (flat.abs() - self.half_width).clamp_min(0).norm(dim=1)
        value = -flat.shape[1] * math.log(2.0 * self.half_width)
        return value - floor * torch.where(excess > 0, 1.0 + excess / self.half_width,
                                           torch.zeros_like(excess))

    def describe(self):
        return f"Uniform[-{self.half_width:g}, {self.half_width:g}]^d"
