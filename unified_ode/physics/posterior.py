"""Streaming softmax over a large finite set: the one posterior loop of the package.

A posterior over ``M`` points ``y_j`` given ``N`` queries is a softmax over ``j`` of logits
``l_ij`` (log-densities up to a per-query constant). Its normaliser and weighted sums are
accumulated one data chunk at a time with an online log-sum-exp, so memory is one chunk of
logits ``(N, m)`` plus the sums, never ``(N, M)``:

    new_max = max(run_max, max_j l_ij);   w_ij = exp(l_ij − new_max)
    denom   = denom · exp(run_max − new_max) + Σ_j w_ij,   likewise for the weighted sums.

No host synchronisation happens inside the loop (no ``if tensor`` and no ``.item()``): checks
are made once, after it, by the callers.

Used by :class:`unified_ode.physics.exact.ExactPosterior` (the exact field) and by PFGM's
empirical field (:func:`unified_ode.objectives.empirical_poisson_field`).
:class:`IsotropicLogits` forms the logits of isotropic affine kernels in as few passes over a
chunk as the noise law allows, or the whole posterior mean of a Gaussian kernel as one fused
attention call (docs/exact.md, the measurements behind each choice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Up to this many dimensions the posterior mean of a Gaussian kernel on the CPU is one fused
#: attention call (:meth:`IsotropicLogits.attention_mean`); above it the two matrix products
#: of the streaming loop are faster (``python bench/exact_passes.py attention``, docs/exact.md:
#: 1.2x faster at d = 64, 0.9x at d = 256, 0.7x at d = 1,024).
ATTENTION_MAX_DIM = 128


def exp_floor(dtype: torch.dtype) -> float:
    """Smallest shifted logit worth exponentiating in ``dtype``: 30 nats above
    ``log(smallest normal)``; shifted logits are clamped to it before ``exp``.

    Two measured slow paths are avoided so: ``torch.exp`` of a float32 argument below about
    −87.3 takes a scalar path (20–30× slower), and weights near the smallest normal make
    denormal products in the weighted-sum matrix product (many times slower). The floor weight
    ``e^floor`` is ~1e-25 (float32) or ~1e-294 (float64) of the largest weight (1), so even
    ``M = 10^9`` floored points shift the posterior by less than 1e-16.
    """
    return math.log(torch.finfo(dtype).tiny) + 30.0


def floor_weight(dtype: torch.dtype) -> float:
    """``exp(exp_floor(dtype))``: the weight of a floored logit (treated as 0 where a pair's
    value may not be finite, e.g. a velocity outside a bounded kernel)."""
    return math.exp(exp_floor(dtype))


class StreamingSoftmax:
    """Online log-sum-exp accumulator of a softmax over data chunks, for ``n`` queries.

    Parameters
    ----------
    n:
        Number of queries (rows of every logits chunk).
    width:
        Width of the weighted sums ``Σ_j w_ij v_j`` to accumulate (0: normaliser only).
    top_k:
        If given, also keep the ``top_k`` largest logits of each row and their data indices
        (:attr:`top_logits`, :attr:`top_index`), so that a caller can form the posterior over
        the ``k`` nearest points only and bound what it neglects (:meth:`neglected_mass`).
    dtype, device:
        Of the accumulators; the logits passed to :meth:`update` must have this dtype.
    """

    def __init__(self, n: int, width: int = 0, *, top_k: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        self.run_max = torch.full((n,), -math.inf, dtype=dtype, device=device)
        self.denom = torch.zeros(n, dtype=dtype, device=device)
        self.acc = torch.zeros(n, width, dtype=dtype, device=device) if width else None
        self.floor = exp_floor(dtype)
        self.top_k = top_k
        if top_k is not None:
            self.top_logits = torch.full((n, top_k), -math.inf, dtype=dtype, device=device)
            self.top_index = torch.zeros((n, top_k), dtype=torch.long, device=device)
        self._seen = 0

    def update(self, logits: Tensor, values: Tensor | None = None, weighted_sum=None, *,
               scale=None) -> Tensor:
        """Fold in one chunk: ``logits`` ``(n, m)`` for the next ``m`` data points (they are
        **overwritten** with the chunk's weights ``exp(l − new_max)``, which are returned).

        The weighted sums (when ``width > 0``) get ``w @ values`` for ``values`` ``(m, width)``,
        or ``weighted_sum(w)`` ``(n, width)`` when that callable is given instead (e.g. a sum of
        per-pair velocities). ``scale``: the logits are ``scale · logits`` for a negative
        number or ``(n, 1)`` tensor of negatives (as from
        :meth:`~unified_ode.physics.noise.NoiseLaw.scaled_log_prob_`); the product is formed
        in the pass that subtracts the running maximum, not in a pass of its own.
        """
        n, m = logits.shape
        if scale is not None and self.top_k is not None:
            logits, scale = logits.mul_(scale), None  # the top-k merge needs the logits
        if self.top_k is not None:
            self._merge_top(logits)
        if scale is None:
            chunk_max = logits.amax(dim=1)
        elif isinstance(scale, (int, float)):  # scale < 0: the largest logit is scale · min
            scale = float(scale)
            chunk_max = logits.amin(dim=1).mul_(scale)
        else:
            scale = torch.as_tensor(scale, dtype=logits.dtype, device=logits.device)
            chunk_max = logits.amin(dim=1).mul_(scale.view(-1))
        new_max = torch.maximum(self.run_max, chunk_max)
        # rows with no finite logit yet keep a zero shift (their weights stay 0 or the floor)
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.run_max - shift)  # exp(-inf) = 0 on the first chunk
        if scale is None:
            w = logits.sub_(shift[:, None])
        elif isinstance(scale, float):  # one pass: −shift + scale·logits
            w = torch.add(shift[:, None].neg(), logits, alpha=scale, out=logits)
        else:  # two passes with a (n, 1) factor: cheaper than one addcmul (measured)
            w = logits.mul_(scale).sub_(shift[:, None])
        w = w.clamp_min_(self.floor).exp_()
        self.denom.mul_(rescale).add_(w.sum(dim=1))
        if self.acc is not None:
            self.acc.mul_(rescale[:, None])
            if weighted_sum is not None:
                self.acc.add_(weighted_sum(w))
            else:
                self.acc.addmm_(w, values)
        self.run_max = new_max
        self._seen += m
        return w

    def _merge_top(self, logits: Tensor) -> None:
        k = self.top_k
        both = torch.cat([self.top_logits, logits], dim=1)
        vals, pos = torch.topk(both, min(k, both.shape[1]), dim=1)
        old = torch.gather(self.top_index, 1, pos.clamp(max=k - 1))
        self.top_index = torch.where(pos < k, old, pos - k + self._seen)
        self.top_logits = vals

    # --- results ---------------------------------------------------------------------------
    def mean(self) -> Tensor:
        """``Σ_j w_ij v_j / Σ_j w_ij`` ``(n, width)``."""
        return self.acc / self.denom[:, None]

    def log_normaliser(self) -> Tensor:
        """``log Σ_j exp(l_ij)`` ``(n,)`` (``−inf`` for rows whose logits were all ``−inf``)."""
        return self.run_max + torch.log(self.denom)

    def has_mass(self) -> Tensor:
        """``(n,)`` booleans: the row had at least one finite logit (its posterior exists)."""
        return torch.isfinite(self.run_max)

    def top_weights(self) -> Tensor:
        """Posterior weights ``(n, k)`` of the ``k`` largest logits, normalised over the **whole**
        set (they sum to ``1 − neglected mass``)."""
        return torch.exp(self.top_logits - self.log_normaliser()[:, None])

    def neglected_mass(self) -> Tensor:
        """``(n,)`` posterior mass outside the top ``k`` (0 when ``k`` covers every point)."""
        return (1.0 - self.top_weights().sum(dim=1)).clamp(0.0, 1.0)


class IsotropicLogits:
    """Posterior logits of ``n`` queries of an isotropic affine kernel ``x = a y + s eps``
    against data chunks, the per-query work done once (the exact field streams every data
    chunk past each query chunk).

    With ``u = x/s``, ``r = a/s`` and ``base = ||u||²``, ``||eps||² = base + delta`` where
    ``delta = r² ||y||² − 2 r u·y``: one matrix product and a rank-one update, never the large
    common ``base`` (float32 keeps the differences that decide the posterior). The noise law
    may ask for ``k · delta`` with a per-row ``k``
    (:meth:`~unified_ode.physics.noise.NoiseLaw.shift_row_factor`), folded into the two
    factors here, and turns it into ``(ell, scale)`` in place
    (:meth:`~unified_ode.physics.noise.NoiseLaw.scaled_log_prob_shift_`).

    Parameters
    ----------
    noise:
        The isotropic noise law.
    x:
        Queries ``(n, d)`` (flattened), in the compute dtype.
    a, s:
        ``a(t)``, ``s(t)`` per query ``(n,)``, same dtype.
    """

    def __init__(self, noise, x: Tensor, a: Tensor, s: Tensor):
        self.noise = noise
        self.dim = x.shape[1]
        u = x / s[:, None]
        r = a / s
        self.base = (u * u).sum(1, keepdim=True)
        k = noise.shift_row_factor(self.base[:, 0])
        self.has_row_factor = k is not None
        rk = r if k is None else r * k
        self.offset = noise.shift_offset(self.dim, x.dtype)
        self.left = u * (-2.0 * rk)[:, None]  # (n, d): the product's left factor
        self.ycoef = r * rk                     # (n,): the coefficient of ||y_j||²
        self._left_aug = None  # [left | offset | ycoef] (n, d + 2), for augmented rows

    def __call__(self, y: Tensor, y_sqnorm: Tensor | None = None, out: Tensor | None = None):
        """``(ell, scale)`` for data ``y`` ``(m, d)`` (``y_sqnorm``: their ``||y_j||²``
        ``(m,)`` if the caller has them), or augmented rows ``(m, d + 2)`` from
        :meth:`augment`, whose product with the left factor is the whole ``offset + k·delta``
        (no pass of its own for ``||y||²`` and the offset); ``out``: an ``(n, m)`` buffer to
        write into. The logits are ``scale · ell`` up to a constant per row (``scale``
        ``None``: ``ell``)."""
        y = y.flatten(1)
        if y.shape[1] == self.dim + 2:
            if self._left_aug is None:
                self._left_aug = torch.cat([self.left, torch.full_like(self.ycoef, self.offset)
                                            [:, None], self.ycoef[:, None]], dim=1)
            z = torch.mm(self._left_aug, y.T, out=out)
        else:
            if y_sqnorm is None:
                y_sqnorm = torch.linalg.vector_norm(y, dim=1).square()  # no (m, d) temporary
            z = torch.mm(self.left, y.T, out=out).addr_(self.ycoef, y_sqnorm)
            if self.offset:
                z.add_(self.offset)
        return self.noise.scaled_log_prob_shift_(z, self.base, self.dim)

    def worth_augmenting(self) -> bool:
        """Whether augmented rows pay: copying a data chunk ``(m, d + 2)`` per query chunk
        costs ``(d + 2) / n`` of a pass over the ``(n, m)`` logits and saves one or two (the
        rank-one update, the offset); the product's inner size grows by 2 (at d = 64: 5 %,
        ``python bench/exact_passes.py widths``)."""
        return self.dim + 2 <= self.left.shape[0]

    @staticmethod
    def augment(y: Tensor, y_sqnorm: Tensor, out: Tensor) -> Tensor:
        """Rows ``[y_j | 1 | ||y_j||²]`` ``(m, d + 2)`` into ``out`` (a reused buffer). (The
        ones are not reused as a normaliser column of the weighted sum: an output width of
        65 instead of 64 made that product 20 % slower, more than the row sum it would save;
        ``python bench/exact_passes.py widths``.)"""
        d = y.shape[1]
        out[:, :d] = y
        out[:, d] = 1.0
        out[:, d + 1] = y_sqnorm
        return out

    def attention_mean(self, y: Tensor, y_sqnorm: Tensor) -> Tensor | None:
        """The posterior mean ``Σ_j w_ij y_j`` ``(n, d)`` over all of ``y`` ``(M, d)`` as one
        fused attention call (``scaled_dot_product_attention``: its CPU kernel streams over
        ``y`` with an online softmax, the logits never stored), or ``None`` where it does not
        apply: a law whose logits are not affine in ``delta`` (only the Gaussian's are),
        queries at different noise levels (``||y_j||²``'s coefficient is a per-key bias shared
        by all queries), not the CPU, more than :data:`ATTENTION_MAX_DIM` dimensions.

        Logits ``c·delta = c·(r²||y_j||² − 2r u·y_j)``: queries ``−2c r u``, keys and values
        ``y``, a key bias ``c r² ||y_j||²``, scale 1; the same numbers as the streaming loop.
        One host synchronisation (the noise-level check)."""
        slope = self.noise.delta_slope
        if (slope is None or y.device.type != "cpu" or self.dim > ATTENTION_MAX_DIM
                or self.has_row_factor
                or not bool((self.ycoef == self.ycoef[0]).all())):
            return None
        bias = (slope * self.ycoef[0]) * y_sqnorm
        q = (slope * self.left)[None, None]
        kv = y[None, None]
        return F.scaled_dot_product_attention(q, kv, kv, attn_mask=bias.view(1, 1, 1, -1),
                                              scale=1.0)[0, 0]
