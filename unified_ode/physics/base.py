"""The force-field interface: one class per physical model (THEORY.md §2–5).

A field is a Green's field ``G(x, t; y)`` on the half-space ``t > 0`` of ``R^(d+1)``. What a
generative model needs of it is

* the **perturbation kernel** ``p_t(x | y) = G_t``: a sampler and a log-density;
* the **conditional velocity** ``v(x, t | y) = G_x / G_t``;
* the **prior** ``pi`` that the kernel forgets the source into at ``t = t_max``: sampler and
  log-density;
* for fields with a **denoiser form**, the drift ``dx/dt = f(x, t)`` of the generative ODE as a
  function of the denoiser ``D(x, t) = E[y | x, t]`` and its inverse, and the exact last step
  from ``t_min`` to ``t = 0``;
* the **time range** ``[t_min, t_max]``, a default time grid and the training-time law.

What a network predicts (denoiser, velocity, PFGM's normalised field) and how its output is
turned into a drift is the job of :mod:`unified_ode.parametrisation`, not of the field.

Conventions: data and states are tensors ``(B, *shape)``; ``t`` is a tensor ``(B,)`` (or a
scalar tensor, which broadcasts); generation integrates from ``t_max`` *down* to ``t_min``.
All log-densities are in nats, over all ``prod(shape)`` dimensions.

Only torch is imported: fields are a small library usable without Lightning or Hydra.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.physics.noise import NoiseLaw, event_dim
from unified_ode.physics.posterior import IsotropicLogits
from unified_ode.timegrid import make_grid


def bcast(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a time tensor ``(B,)`` or ``()`` to broadcast against ``x`` ``(B, *shape)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class AffineSchedule:
    """``a(t)`` and ``s(t)`` of an affine field as float64 scalars: what denoiser-form solvers
    need (the :class:`unified_ode.solvers.base.Schedule` protocol). ``t`` is a float or a 0-d
    tensor; the results are Python floats."""

    field: AffineField

    def a(self, t) -> float:
        return float(self.field.a(torch.as_tensor(t, dtype=torch.float64)))

    def s(self, t) -> float:
        return float(self.field.s(torch.as_tensor(t, dtype=torch.float64)))


class Field(abc.ABC):
    """Abstract force field. Subclasses implement the kernel, the conditional velocity, the
    prior and the noise level; a subclass that leaves one out fails at construction with the
    method's name (``abc``).

    Parameters
    ----------
    t_min, t_max:
        Time range of generation: the ODE is integrated from ``t_max`` (prior) to ``t_min``,
        then one exact step (:meth:`final_state`) to ``t = 0``.
    train_p_mean, train_p_std:
        Training noise levels are drawn as ``ln sigma ~ N(p_mean, p_std^2)`` (EDM, PFGM++) and
        mapped to times with :meth:`t_from_sigma`.
    """

    #: Short name used in configs, logs and file names.
    name: str = "field"
    #: True when the drift is a function of the denoiser ``E[y | x, t]`` (affine fields):
    #: :meth:`drift_from_denoiser`, :meth:`denoiser_from_drift` and :meth:`schedule` then exist.
    has_denoiser_form: bool = False

    def __init__(self, t_min: float, t_max: float, train_p_mean: float = -1.2,
                 train_p_std: float = 1.2):
        if not 0 < t_min < t_max:
            raise ValueError(f"{self.name}: need 0 < t_min < t_max, got t_min={t_min}, "
                             f"t_max={t_max}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.train_p_mean = float(train_p_mean)
        self.train_p_std = float(train_p_std)

    # --- kernel --------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_kernel(self, y: Tensor, t: Tensor, *, generator=None) -> Tensor:
        """Draw ``x ~ p_t(. | y)``: ``y`` ``(B, *shape)``, ``t`` ``(B,)`` -> ``(B, *shape)``."""

    @abc.abstractmethod
    def kernel_log_prob(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        """``log p_t(x | y)`` for matching rows; returns ``(B,)`` nats."""

    def pairwise_kernel_log_prob(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        """``log p_t(x_i | y_j)`` for all pairs: ``x`` ``(N, *shape)``, ``y`` ``(M, *shape)``,
        ``t`` ``(N,)``; returns ``(N, M)``. Used by the exact field; callers chunk N and M.

        The default broadcasts :meth:`kernel_log_prob` over ``(N, M)`` pairs (memory
        ``N * M * d``); isotropic fields override it with a distance computation.
        """
        n, m = x.shape[0], y.shape[0]
        xe = x.unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
        ye = y.unsqueeze(0).expand(n, m, *y.shape[1:]).reshape(n * m, *y.shape[1:])
        te = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(n)
        te = te.unsqueeze(1).expand(n, m).reshape(-1)
        return self.kernel_log_prob(xe, ye, te).view(n, m)

    def pairwise_posterior_logits(self, x: Tensor, y: Tensor, t: Tensor,
                                  y_sqnorm: Tensor | None = None) -> Tensor:
        """Logits ``(N, M)`` of the posterior ``p(y_j | x_i, t)`` over a finite set: ``log
        p_t(x_i | y_j)`` up to a constant per query row (the softmax over ``j`` is the same).
        Default: :meth:`pairwise_kernel_log_prob`; isotropic affine fields drop the common part
        so that float32 keeps the differences that decide the posterior. ``y_sqnorm``:
        optionally ``||y_j||²`` ``(M,)``, precomputed by a caller that streams over the same
        points many times (fields that do not need it ignore it)."""
        return self.pairwise_kernel_log_prob(x, y, t)

    def posterior_logit_chunks(self, x: Tensor, t: Tensor):
        """For a caller that streams many data chunks past the same queries ``x`` ``(n,
        *shape)`` at ``t`` ``(n,)``: a function ``chunk(y, y_sqnorm=None, out=None) -> (ell,
        scale)`` giving the posterior logits of a data chunk ``y`` ``(m, *shape)`` as ``scale ·
        ell`` up to a constant per row (``scale`` ``None``: ``ell`` itself; else a negative
        number, the product left to the softmax's shift pass). ``out``: an ``(n, m)`` buffer
        it may write into. Default: :meth:`pairwise_posterior_logits`, ``scale`` ``None``."""
        return lambda y, y_sqnorm=None, out=None: (
            self.pairwise_posterior_logits(x, y, t, y_sqnorm=y_sqnorm), None)

    @abc.abstractmethod
    def conditional_velocity(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        """``v(x, t | y) = dx/dt`` along the field line through ``x`` of the source ``y``."""

    # --- prior ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_prior(self, n: int, shape: tuple[int, ...], *, generator=None, device=None,
                     dtype=torch.float32) -> Tensor:
        """Draw ``n`` states at ``t = t_max``; returns ``(n, *shape)``."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the prior at ``x`` ``(B, *shape)``; returns ``(B,)`` nats."""

    # --- denoiser form -------------------------------------------------------------------
    def drift_from_denoiser(self, x: Tensor, t: Tensor, denoised: Tensor) -> Tensor:
        """``dx/dt`` at ``(x, t)`` for the denoiser output ``denoised`` (fields with a denoiser
        form only)."""
        raise TypeError(f"physics={self.name} has no denoiser form: its drift is not a "
                        "function of E[y | x, t]; train it with objective=velocity")

    def denoiser_from_drift(self, x: Tensor, t: Tensor, drift: Tensor) -> Tensor:
        """The denoiser ``D`` that gives the drift ``drift`` at ``(x, t)``, ``(B, *shape)``.

        Fields with a denoiser form invert :meth:`drift_from_denoiser` exactly. The default, for
        fields without one, is the small-``t`` limit used only for the last step to ``t = 0``:
        near the data the posterior concentrates on one source and a radial field is, to
        leading order, self-similar with scale ``sigma(t)`` (``ψ_t(r) ≈ F(r/sigma(t))``), whose
        velocity is ``(x − y) sigma'/sigma``; so ``D ≈ x − (sigma/sigma') f``.
        """
        t64 = torch.as_tensor(t, dtype=torch.float64, device=x.device).detach()
        with torch.enable_grad():
            tg = t64.clone().requires_grad_(True)
            sig = torch.as_tensor(self.sigma(tg), dtype=torch.float64)
            (dsig,) = torch.autograd.grad(sig.sum(), tg)
        ratio = (sig.detach() / dsig).to(x.dtype)
        return x - bcast(ratio, x) * drift

    def final_state(self, x: Tensor, t: Tensor, denoised: Tensor) -> Tensor:
        """The state at ``t = 0`` reached from ``(x, t)`` (``t`` = the grid's last positive
        time, ``t_min``) given the denoiser there: the exact last step of every solver. The
        kernel at ``t = 0`` is the source itself, so this is the posterior mean scaled by
        ``a(0)`` — ``denoised`` for fields whose kernel is centred on ``y`` (the default)."""
        return denoised

    def schedule(self) -> AffineSchedule | None:
        """``a(t)``, ``s(t)`` for denoiser-form (exponential) solvers; ``None`` for fields
        without an affine kernel."""
        return None

    # --- noise level and time ------------------------------------------------------------
    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Effective noise level in data units at time ``t`` (EDM's sigma), for
        preconditioning and loss weights."""

    def denoiser_coefficients(self, x: Tensor, t: Tensor, sigma_data: float):
        """EDM preconditioning ``(c_skip, c_out, c_in, c_noise)``, each ``(B,)``, for states
        ``x`` ``(B, *shape)`` at times ``t`` ``(B,)``.

        For Gaussian noise these are EDM's: ``c_skip = sd²/(σ²+sd²)``, ``c_out = σ sd /
        sqrt(σ²+sd²)``, ``c_in = 1/sqrt(σ²+sd²)``, ``c_noise = ln(σ)/4``. ``c_out²`` is the
        error of the ideal denoiser for data of variance ``sd²``, and the denoiser loss weight
        is ``1/c_out²``. Fields with heavy-tailed noise adapt them (see :class:`AffineField`).
        The coefficients may depend on ``x`` but never on the clean data, so the loss weight
        ``1/c_out²`` leaves the minimiser ``E[y | x, t]`` unchanged.
        """
        return edm_coefficients(self.sigma(t), sigma_data)

    def velocity_coefficients(self, x: Tensor, t: Tensor, sigma_data: float,
                              coefficients=None):
        """Velocity-form preconditioning ``(v_skip, v_out)``, each ``(B,)``: the model's
        velocity is ``v_skip·x + v_out·F`` for the raw network output ``F``.

        ``v_skip·x`` should be the part of the velocity known in closed form (the exact
        velocity for data ``N(0, sd² I)``) and ``v_out`` the size per coordinate of the rest,
        so that ``F`` is O(1) and its errors are not multiplied by the long time spans of
        fields with a large ``t_max``. ``coefficients``: this state's
        :meth:`denoiser_coefficients` when the caller has them (saves recomputing them).
        Default: ``(0, 1)`` (the network is the velocity).
        """
        ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.zeros_like(ones), ones

    def input_scale(self, t: Tensor) -> Tensor:
        """Factor that maps the state ``x`` to data scale before the network: ``1 / a(t)``."""
        return torch.ones_like(torch.as_tensor(t))

    @abc.abstractmethod
    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`."""

    def sample_training_time(self, n: int, *, generator=None, device=None,
                             law_hint: str | None = None) -> Tensor:
        """Training times ``(n,)``: ``ln sigma ~ N(p_mean, p_std^2)`` mapped through
        :meth:`t_from_sigma` and kept inside ``(0, t_max]``. ``law_hint`` is the objective's
        preferred law (``"uniform"`` or ``"lognormal"``) for fields whose configured law is
        ``null`` (only the linear field has a choice)."""
        z = torch.randn(n, generator=generator, device=device)
        sigma = torch.exp(self.train_p_mean + self.train_p_std * z)
        return self.t_from_sigma(sigma).clamp(max=self.t_max)

    def default_grid(self, steps: int, *, final_step: bool = True) -> Tensor:
        """EDM's rho=7 grid from ``t_max`` to ``t_min`` (plus a final step to 0)."""
        return make_grid("edm", steps, self.t_min, self.t_max, rho=7.0, final_step=final_step)

    def describe(self) -> dict:
        """Facts written into run directories and logs."""
        return {"field": self.name, "t_min": self.t_min, "t_max": self.t_max}


class AffineField(Field):
    """A field whose kernel is ``x = a(t) y + s(t) eps`` with ``eps ~ q`` (THEORY.md §3).

    Subclasses give ``a``, ``s`` and their time derivatives, and a :class:`NoiseLaw` ``q``.
    Everything else (kernel, velocity, prior, denoiser drift, sigma) follows here, so that a
    new affine field is a few lines.
    """

    has_denoiser_form = True

    def __init__(self, noise: NoiseLaw, **kwargs):
        super().__init__(**kwargs)
        self.noise = noise

    # schedule ---------------------------------------------------------------------------
    def a(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def s(self, t: Tensor) -> Tensor:
        return t

    def da(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def ds(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    # kernel -----------------------------------------------------------------------------
    def sample_kernel(self, y, t, *, generator=None):
        return self.kernel_from_noise(y, t, self.sample_noise(y, generator=generator))

    def sample_noise(self, y: Tensor, *, generator=None) -> Tensor:
        """Noise draws ``eps ~ q`` shaped, typed and placed like ``y`` ``(B, *shape)``."""
        return self.noise.sample(tuple(y.shape), generator=generator, device=y.device,
                                 dtype=y.dtype)

    def kernel_from_noise(self, y: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x = a(t) y + s(t) eps`` for given noise draws ``eps`` ``(B, *shape)`` (couplings pair
        ``eps`` with ``y`` before this)."""
        tb = bcast(t, y)
        return self.a(tb) * y + self.s(tb) * eps

    def prior_scale(self) -> float:
        """``s(t_max)``: the prior is (close to) ``s(t_max)·eps`` — exactly for VP and linear,
        up to the ``a(t_max) y`` term for the others."""
        return float(self.s(torch.tensor(self.t_max, dtype=torch.float64)))

    def kernel_log_prob(self, x, y, t):
        tb = bcast(t, x)
        s = self.s(tb)
        eps = (x - self.a(tb) * y) / s
        log_s = torch.log(self.s(torch.as_tensor(t, dtype=x.dtype, device=x.device)))
        return self.noise.log_prob(eps) - event_dim(x) * log_s.expand(x.shape[0])

    def pairwise_kernel_log_prob(self, x, y, t):
        """As :meth:`Field.pairwise_kernel_log_prob`; for isotropic noise from squared
        distances by one matrix product: ``||eps||² = ||x − a y||²/s²`` is
        ``||u||² − 2 r u·y + r² ||y||²`` with ``u = x/s`` and ``r = a/s`` per query row
        (:func:`scaled_sq_dists`), then the noise law's log-density of the norm, in place.
        Memory: the ``(N, M)`` result and ``O((N + M) d)``."""
        if not self.noise.isotropic:
            return super().pairwise_kernel_log_prob(x, y, t)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a, s = self.a(t), self.s(t)
        d = event_dim(x)
        sq = scaled_sq_dists(x.flatten(1) / s[:, None], y.flatten(1), a / s)
        out = self.noise.log_prob_sqnorm(sq, d, inplace=True)
        return out.sub_(d * torch.log(s)[:, None])

    def pairwise_posterior_logits(self, x, y, t, y_sqnorm=None):
        """``log p_t(x_i | y_j) − log p_t(x_i | reference)`` for isotropic noise, where the
        reference has ``||eps||² = ||x_i||²/s²`` (the point ``y = 0``): with ``u = x/s`` and
        ``r = a/s``, ``||eps||² = ||u||² + δ`` and ``δ = r² ||y||² − 2 r u·y`` comes from one
        matrix product without the large common ``||u||²``; the noise law turns ``δ`` into the
        log-density ratio directly (:class:`~unified_ode.physics.posterior.IsotropicLogits`).
        A subclass that overrides :meth:`pairwise_kernel_log_prob`, or non-isotropic noise,
        uses that instead."""
        if not self.has_isotropic_kernel():
            return self.pairwise_kernel_log_prob(x, y, t)
        ell, scale = self.posterior_logit_chunks(x, t)(y, y_sqnorm)
        return ell if scale is None else ell.mul_(scale)

    def posterior_logit_chunks(self, x, t):
        """As :meth:`Field.posterior_logit_chunks`; for isotropic noise an
        :class:`~unified_ode.physics.posterior.IsotropicLogits` (the queries scaled once, per
        data chunk one matrix product, a rank-one update and the law's few in-place passes)."""
        if not self.has_isotropic_kernel():
            return super().posterior_logit_chunks(x, t)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return IsotropicLogits(self.noise, x.flatten(1), self.a(t), self.s(t))

    def has_isotropic_kernel(self) -> bool:
        """Isotropic noise and this class's pairwise kernel (a subclass that overrides
        :meth:`pairwise_kernel_log_prob` says where it is still this one): the posterior
        logits are a function of ``||x − a y||²`` alone (matrix-product distances, the exact
        field's fast paths)."""
        return (self.noise.isotropic and type(self).pairwise_kernel_log_prob
                is AffineField.pairwise_kernel_log_prob)

    def conditional_velocity(self, x, y, t):
        tb = bcast(t, x)
        a, s = self.a(tb), self.s(tb)
        return self.da(tb) * y + self.ds(tb) / s * (x - a * y)

    # prior ------------------------------------------------------------------------------
    def sample_prior(self, n, shape, *, generator=None, device=None, dtype=torch.float32):
        eps = self.noise.sample((n, *shape), generator=generator, device=device, dtype=dtype)
        return self.s(torch.tensor(self.t_max, dtype=torch.float64)).item() * eps

    def prior_log_prob(self, x):
        s_max = float(self.s(torch.tensor(self.t_max, dtype=torch.float64)))
        return self.noise.log_prob(x / s_max) - event_dim(x) * math.log(s_max)

    # denoiser form ----------------------------------------------------------------------
    def drift_from_denoiser(self, x, t, denoised):
        tb = bcast(t, x)
        a, s = self.a(tb), self.s(tb)
        return self.da(tb) * denoised + self.ds(tb) / s * (x - a * denoised)

    def denoiser_from_drift(self, x, t, drift):
        """Invert ``f = a' D + (s'/s)(x − a D)`` for ``D``: ``D = (s f − s' x) / (s a' − s' a)``;
        the denominator is ``−a² dσ/dt`` (``σ = s/a``), nonzero wherever the noise level
        moves."""
        tb = bcast(t, x)
        a, s, da, ds = self.a(tb), self.s(tb), self.da(tb), self.ds(tb)
        return (s * drift - ds * x) / (s * da - ds * a)

    def final_state(self, x, t, denoised):
        """``x_0 = a(0) D(x, t_min)``: the kernel at ``t = 0`` is ``a(0) y`` (``s(0) = 0``)."""
        a0 = self.a(torch.zeros((), dtype=torch.float64))
        return float(a0) * denoised

    def schedule(self):
        return AffineSchedule(self)

    def sigma(self, t):
        return self.s(t) / self.a(t) * self.noise.scale

    def denoiser_coefficients(self, x, t, sigma_data):
        """EDM's coefficients, adapted to heavy-tailed noise (PFGM, PFGM++).

        A Student-t kernel is a Gaussian kernel at a random level: ``eps = g / sqrt(w)``, so
        the state carries Gaussian noise of level ``σ/sqrt(w)``. Modelling the data as
        ``N(0, sd² I)``, the level's posterior given ``x`` is a softmax over a fixed stratified
        sample of ``w``; the coefficients are EDM's at each level, averaged under it:
        ``c_skip = E[sd²/v]``, ``c_out² = E[sd² σ²/(w v)]``, ``c_in = E[v]^(-1/2)``,
        ``c_noise = ln(E[σ²/w])/8``, with ``v = sd² + σ²/w``. A far-out tail state is thus
        preconditioned as the very noisy state it is (small ``c_skip``, small loss weight)
        instead of as a nearly clean one. For Gaussian noise (``w = 1``) this is exactly EDM.
        """
        w = self.noise.mixture_precisions()
        if w is None:
            return edm_coefficients(self.noise_level(x, t), sigma_data)
        sigma = self.sigma(t)
        xs = x * bcast(self.input_scale(t), x)
        d = event_dim(x)
        sd2 = sigma_data**2
        # in the states' dtype: the softmax is shift-invariant, and float32 keeps the
        # coefficients' relative error ~1e-6 (float64 here cost ~8% of a training step)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        # (B, K) arrays, in few passes (this runs once per training step and per network
        # call, on B × 256 values: for small networks it is a large share of the step)
        level2 = torch.outer(sigma.square(), w.to(device=x.device, dtype=x.dtype).reciprocal())
        var = level2 + sd2
        inv_var = var.reciprocal()
        sq = xs.flatten(1).square().sum(1, keepdim=True)
        logits = var.log().mul_(-0.5 * d).addcmul_(inv_var, sq, value=-0.5)
        post = torch.softmax(logits, dim=1)

        def expect(values):  # E[values] under the level's posterior, per row: (B,)
            return (post * values).sum(1)

        c_skip = sd2 * expect(inv_var)
        c_out = (sd2 * expect(level2 * inv_var)).sqrt()
        c_in = expect(var).rsqrt()
        c_noise = expect(level2).log() / 8
        return c_skip, c_out, c_in, c_noise

    def noise_level(self, x: Tensor, t: Tensor) -> Tensor:
        """Per-coordinate noise level in data units, ``s/a · q.coordinate_scale(d)``, at times
        ``t`` ``(B,)`` for states ``x`` ``(B, *shape)``; equals :meth:`sigma` unless the noise
        law's spread per coordinate depends on ``d`` (radial profiles). Returns ``(B,)``."""
        return self.s(t) / self.a(t) * self.noise.coordinate_scale(event_dim(x))

    def velocity_coefficients(self, x, t, sigma_data, coefficients=None):
        """The denoiser parametrisation carried through the affine drift: with
        ``D = c_skip x~ + c_out F`` (``x~ = x·input_scale``) the velocity
        ``v = (s'/s) x + (a' − a s'/s) D`` is ``v_skip x + v_out F`` with
        ``v_skip = s'/s + (a' − a s'/s) c_skip input_scale`` and
        ``v_out = (a' − a s'/s) c_out``. So the velocity objective trains the same network
        output as the denoiser objective, weighted by ``v_out²`` instead of ``1``."""
        c_skip, c_out, _, _ = coefficients or self.denoiser_coefficients(x, t, sigma_data)
        a, s, da, ds = self.a(t), self.s(t), self.da(t), self.ds(t)
        k = da - a * ds / s
        return ds / s + k * c_skip * self.input_scale(t), k * c_out

    def input_scale(self, t):
        return 1.0 / self.a(t)

    def describe(self):
        return {**super().describe(), "noise": self.noise.describe()}


def edm_coefficients(sigma: Tensor, sigma_data: float):
    """EDM's preconditioning ``(c_skip, c_out, c_in, c_noise)`` at noise levels ``sigma``
    ``(B,)`` for data of scale ``sigma_data``: ``sd²/(σ²+sd²)``, ``σ sd/sqrt(σ²+sd²)``,
    ``1/sqrt(σ²+sd²)``, ``ln(σ)/4``."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1.0 / (sigma**2 + sd2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


def sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances ``(N, M)`` between rows of ``x`` ``(N, d)`` and ``y``
    ``(M, d)``, as ``||x||² − 2 x·y + ||y||²`` (one matrix product, clamped at 0), for every
    ``d``.

    Precision: the absolute error is about ``eps·(||x||² + ||y||²)`` (``eps`` of the dtype),
    so distances much smaller than the points' norms lose relative accuracy; in float64 that
    is ~1e-16 of the norms, far below every kernel width the package uses. The exact field
    picks its dtype with this in mind (:class:`~unified_ode.physics.exact.ExactPosterior`)."""
    return scaled_sq_dists(x, y, None)


def scaled_sq_dists(u: Tensor, y: Tensor, r: Tensor | None) -> Tensor:
    """``||u_i − r_i y_j||²`` ``(N, M)`` for rows ``u`` ``(N, d)``, ``y`` ``(M, d)`` and
    per-row factors ``r`` ``(N,)`` (``None``: 1), by one matrix product and in-place updates:
    ``(−2 r_i u_i)·y_j + r_i² ||y_j||² + ||u_i||²``, clamped at 0."""
    ysq = (y * y).sum(1)
    if r is None:
        out = torch.addmm(ysq[None, :], u, y.T, alpha=-2.0)
    else:
        out = torch.mm(u * (-2.0 * r)[:, None], y.T)
        out.addr_(r * r, ysq)
    return out.add_((u * u).sum(1, keepdim=True)).clamp_min_(0.0)
