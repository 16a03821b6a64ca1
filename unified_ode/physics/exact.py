"""The exact generative field of a finite data set (THEORY.md §7).

For data ``{y_i}`` the posterior ``p(y_i | x, t)`` is the softmax over ``i`` of
``log p_t(x | y_i)``, so the ideal denoiser ``D(x, t) = sum_i w_i y_i`` and the ideal velocity
``f(x, t) = sum_i w_i v(x, t | y_i)`` need no training. Integrating this ODE from the prior
lands on the data points: it is the ground truth for kernels, priors and solvers.

Cost and memory. Queries are processed ``query_chunk`` at a time and data ``data_chunk`` at a
time with an online log-sum-exp (:class:`~unified_ode.physics.posterior.StreamingSoftmax`).
For isotropic affine fields the logits come from squared distances by one matrix product
(``||x||² − 2x·y + ||y||²``, the query side prepared once per query chunk:
:class:`~unified_ode.physics.posterior.IsotropicLogits`; for small ``d`` on data rows
augmented with ``[1 | ||y||²]``) and the posterior mean by a second, so a call costs about two
``N × M × d`` matrix products plus a few light passes over the logits; memory is the data (one
copy, in the compute dtype) plus ``query_chunk × data_chunk`` logits (the data chunk from
``d`` and the L2 cache: :func:`auto_data_chunk`). Gaussian kernels in at most
:data:`~unified_ode.physics.posterior.ATTENTION_MAX_DIM` dimensions use one fused attention
call per query chunk instead (``attention``). Non-affine fields (the velocity is not linear
in ``y``) average ``v(x, t | y)`` pair by pair, in sub-chunks of at most :data:`PAIR_BUDGET`
values.

Threads. On the CPU whole query chunks go to ``threads`` worker threads (one core each) while
torch runs single-threaded: per-operation intra-op threads wait at a barrier after every
small operation of the chunk loop (docs/exact.md, Threads).

Precision (measured against a float64 pair-by-pair softmax, tests/test_exact.py: drift within
1e-5 from ``t_min`` to ``t_max`` for poisson, pfgmpp, ve, vp, linear and radial_general on toy,
digits and 3,072-d data). Float32 matrix-product distances have an absolute error of about
``eps·(||x||² + ||y||²)``, comparable near ``t_min`` to the tiny distances that decide the
posterior of data dense in few dimensions; and a float32 logit of size ``L`` carries ``eps·L``
of rounding. Hence: (i) posterior logits are formed relative to a per-query reference
(:meth:`~unified_ode.physics.base.Field.pairwise_posterior_logits`), never as the difference
of two large numbers; (ii) up to :data:`DIRECT_MAX_DIM` dimensions the distances are direct
differences and the average is the residual ``E[x − a y]``; (iii) ``dtype="auto"`` picks
float32 where that suffices and float64 elsewhere (:func:`resolve_dtype`).

Truncation. ``top_k=k`` keeps only the ``k`` points of largest kernel log-density per query
(all logits are still computed, the weighted sums only over the ``k``); the posterior mass it
neglects is measured per call and bounded (:attr:`ExactPosterior.max_neglected_mass`).
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from unified_ode.physics.base import AffineField, Field
from unified_ode.physics.posterior import IsotropicLogits, StreamingSoftmax, floor_weight
from unified_ode.physics.smoothed import check_smoothing, smoothed_mean, smoothed_scale

#: Up to this many dimensions, isotropic affine fields take the direct-difference path: the
#: differences ``x − a y`` per coordinate (as cheap as a matrix product of inner size ``d``),
#: exact squared distances, and the posterior residual ``E[x − a y]`` summed pair by pair, so
#: float32 keeps full relative precision even at ``t_min`` on dense data.
DIRECT_MAX_DIM = 8
#: Between :data:`DIRECT_MAX_DIM` and this many dimensions ``dtype="auto"`` computes in float64
#: (float32 matrix-product distances lose the smallest distances of dense low-dimensional
#: data); from here on, and on the direct path, in float32 (measured in tests/test_exact.py).
AUTO_FLOAT32_MIN_DIM = 32
#: Most pairwise values (pairs × dimensions) held at once by the non-affine velocity average
#: and by the top-k gather.
PAIR_BUDGET = 1 << 22
#: A call with at least this many query·point·dim products shows a progress bar over its query
#: chunks (``progress=None``): about ten seconds of one core's matrix products.
PROGRESS_MIN_WORK = 5e11
#: Rounding allowance, in units of the dtype's eps, added to the measured neglected mass to
#: make it a bound on the true one (logits and sums carry a few eps of relative error).
ROUNDING_EPS = 64

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Data chunk of the direct path (``data_chunk=None``): its differences are ``query_chunk × d
#: × data_chunk`` values.
DIRECT_DATA_CHUNK = 2048
#: Bounds of the matrix-product path's data chunk (``data_chunk=None``, :func:`auto_data_chunk`).
MIN_DATA_CHUNK, MAX_DATA_CHUNK = 4096, 8192


def cache_bytes() -> int:
    """The per-core L2 cache size in bytes (Linux sysfs; 1 MiB where it cannot be read)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return 1 << 20


def auto_data_chunk(dim: int, element_size: int) -> int:
    """Data rows per chunk of the matrix-product path: as many as fit the L2 cache
    (:func:`cache_bytes`), so that the second read of a chunk (the weighted sum after the
    distances) hits the cache, within [:data:`MIN_DATA_CHUNK`, :data:`MAX_DATA_CHUNK`]: fewer
    rows make torch's per-operation overhead count, more make the logits buffer
    (``query_chunk × data_chunk``) large. Measured (docs/exact.md, ``python
    bench/exact_passes.py chunks``): at d = 64, 8,192 rows (2 MB) 5–12 % faster than 2,048; at
    d = 3,072, 4,096 rows 5–7 % faster than 1,024 on a quiet machine (8 % slower under load)."""
    rows = cache_bytes() // max(1, dim * element_size)
    return int(min(MAX_DATA_CHUNK, max(MIN_DATA_CHUNK, rows)))


def resolve_dtype(dtype, dim: int, direct: bool = False, unit_a: bool = True,
                  data_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The compute dtype: a ``torch.dtype``, ``"float32"``, ``"float64"``, or ``"auto"``/None:
    float64 for float64 data (the caller asked for double precision); else float32 from
    :data:`AUTO_FLOAT32_MIN_DIM` dimensions on, and on the direct path of fields with
    ``a(t) = 1`` (``x − y`` of float32 numbers is exact when they are close); float64 otherwise
    (the rounding of ``a·y`` is comparable to ``x − a y`` near ``t_min``, and
    ``E[y] = (x − E[x − a y])/a`` amplifies it where ``a`` is small)."""
    if dtype is None or dtype == "auto":
        if data_dtype == torch.float64:
            return torch.float64
        if dim >= AUTO_FLOAT32_MIN_DIM or (direct and unit_a):
            return torch.float32
        return torch.float64
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"network.dtype={dtype!r}: choose auto, float32 or float64")
        return DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"exact field dtype must be float32 or float64, got {dtype}")
    return dtype


class ExactPosterior(nn.Module):
    """A drop-in for a trained network: ``forward(x, t)`` returns the exact prediction.

    Parameters
    ----------
    field:
        The force field whose kernel defines the posterior.
    data:
        ``(M, *shape)`` data points (the finite data set). Kept as given when already in the
        compute dtype and contiguous (no copy), else converted once.
    parametrisation:
        What ``forward`` predicts (a :class:`unified_ode.parametrisation.Parametrisation` of
        ``field``, asked through its ``exact(posterior, x, t)``); ``None``: the posterior mean
        for fields with a denoiser form, the posterior velocity otherwise.
    query_chunk, data_chunk:
        Chunk sizes (rows of queries, rows of data) that bound memory (``query_chunk ×
        data_chunk`` logits). ``data_chunk=None``: :data:`DIRECT_DATA_CHUNK` on the direct
        path, else :func:`auto_data_chunk` (a function of ``d`` and the L2 cache).
    dtype:
        Compute precision: ``"auto"`` (default: float64 for float64 data, else as the module
        docstring says), ``"float32"`` or ``"float64"`` (or a ``torch.dtype``).
    top_k:
        ``None`` (every point) or ``k``: only the ``k`` points of largest kernel log-density
        enter each query's posterior. Exact when ``k >= M``.
    progress:
        Show a progress bar over the query chunks of one call: ``True``, ``False``, or ``None``
        (default: when the call's ``N·M·d`` reaches :data:`PROGRESS_MIN_WORK` and stderr is a
        terminal). Per-step progress of a whole solve is the solver's.
    threads:
        Cores used on the CPU: query chunks computed concurrently, one core each (``None``:
        torch's intra-op thread count, ``torch.get_num_threads()``). Torch itself runs
        single-threaded during a call (its thread count is restored after), so that the
        cores share whole chunks, not every small operation (2 intra-op threads on 2 busy
        cores: 17x the CPU time of one, measured). With fewer queries than
        ``threads × query_chunk`` the chunks shrink so that each thread gets one; otherwise
        the chunks, and the result, do not depend on ``threads``.
    attention:
        Gaussian kernels (ve, vp, linear) on the CPU with at most
        :data:`~unified_ode.physics.posterior.ATTENTION_MAX_DIM` dimensions on the
        matrix-product path: the posterior mean of a query chunk as one fused attention call
        (:meth:`~unified_ode.physics.posterior.IsotropicLogits.attention_mean`) instead of the
        streaming loop (``False``: always the loop). Same numbers up to float rounding.
    smoothing:
        ``h > 0``: the smoothed closed-form field, the exact field of the data convolved with
        ``N(0, h² I)`` (Gaussian kernels only; :mod:`unified_ode.physics.smoothed`); 0: the
        exact field of the points.
    """

    def __init__(self, field: Field, data: Tensor, *, parametrisation=None,
                 query_chunk: int = 256, data_chunk: int | None = None, dtype="auto",
                 top_k: int | None = None, progress: bool | None = None,
                 threads: int | None = None, attention: bool = True, smoothing: float = 0.0):
        super().__init__()
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("exact field needs data of shape (M, *shape), got "
                             f"{tuple(data.shape)}")
        if int(query_chunk) < 1 or (data_chunk is not None and int(data_chunk) < 1):
            raise ValueError("network.query_chunk and network.data_chunk must be >= 1, got "
                             f"{query_chunk} and {data_chunk}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"network.threads must be a positive number of threads or null "
                             f"(torch's thread count), got {threads}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"network.top_k must be a positive number of points or null "
                             f"(all points), got {top_k}")
        self.field = field
        self.parametrisation = parametrisation
        self.dim = int(math.prod(data.shape[1:]))
        #: direct-difference path (see :data:`DIRECT_MAX_DIM`)
        self.direct = (isinstance(field, AffineField) and field.has_isotropic_kernel()
                       and self.dim <= DIRECT_MAX_DIM)
        self.unit_a = isinstance(field, AffineField) and type(field).a is AffineField.a
        self.dtype = resolve_dtype(dtype, self.dim, self.direct, self.unit_a, data.dtype)
        self.register_buffer("data", data.detach().to(self.dtype).contiguous(),
                             persistent=False)
        self.query_chunk = int(query_chunk)
        if data_chunk is None:
            data_chunk = (DIRECT_DATA_CHUNK if self.direct
                          else auto_data_chunk(self.dim, self.data.element_size()))
        self.data_chunk = int(data_chunk)
        self.top_k = None if top_k is None or int(top_k) >= data.shape[0] else int(top_k)
        #: Largest posterior mass neglected by ``top_k`` over the queries of the last call and
        #: over all calls since :meth:`reset_stats` (0-d tensors; 0 without truncation).
        self.last_neglected_mass = torch.zeros(())
        self.max_neglected_mass = torch.zeros(())
        self.progress = progress
        self.threads = None if threads is None else int(threads)
        self.attention = bool(attention)
        self.smoothing = check_smoothing(field, smoothing)
        self._radius = None
        self._data_mean = None
        #: ``||y_j||²`` ``(M,)`` of the data, for the matrix-product distances (computed once:
        #: per call it would be an ``(m, d)`` temporary per chunk pair)
        self._sqnorm = None if self.direct else torch.cat([
            torch.linalg.vector_norm(c, dim=1).square()
            for c in self.data.flatten(1).split(self.data_chunk)])

    # --- the two posterior averages ------------------------------------------------------
    @torch.no_grad()
    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[y | x, t]``: ``x`` ``(N, *shape)``, ``t`` ``(N,)`` or scalar; returns the shape
        and dtype of ``x``."""
        return self._mean(x, t).to(x.dtype)

    @torch.no_grad()
    def posterior_velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[v(x, t | y) | x, t]``, the drift of the exact ODE: shape and dtype of ``x``.

        Affine fields: ``v`` is linear in ``y``, so this is the field's drift at the posterior
        mean (computed in the wider of the two dtypes). Other fields: the per-pair velocities
        averaged under the posterior."""
        if self.field.has_denoiser_form:
            mean = self._mean(x, t)
            xw = x.to(mean.dtype)
            tw = torch.as_tensor(t, dtype=mean.dtype, device=x.device).expand(x.shape[0])
            return self.field.drift_from_denoiser(xw, tw, mean).to(x.dtype)
        return self._stream(x, t, velocity=True).to(x.dtype)

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The parametrisation's exact prediction; shape and dtype of ``x``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if self.parametrisation is not None:
            return self.parametrisation.exact(self, x, t)
        if self.field.has_denoiser_form:
            return self.posterior_mean(x, t)
        return self.posterior_velocity(x, t)

    # --- truncation statistics -------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero :attr:`max_neglected_mass` (e.g. before a sampling run)."""
        self.max_neglected_mass = torch.zeros(())

    def neglected_mass_bound(self) -> float:
        """Bound on the posterior mass ``top_k`` neglected at any query since
        :meth:`reset_stats`: the measured mass plus a rounding allowance (0 without
        truncation). The posterior mean is then within ``bound · diameter(data)`` of the
        exact one (:meth:`mean_error_bound`)."""
        if self.top_k is None:
            return 0.0
        slack = ROUNDING_EPS * torch.finfo(self.dtype).eps
        return min(1.0, float(self.max_neglected_mass) + slack)

    def mean_error_bound(self) -> float:
        """Bound on ``||E_k[y] − E[y]||`` over the same queries: the neglected mass ``ε``
        times the data's diameter (``E[y] = (1 − ε) E_k[y] + ε E_rest[y]``, both means in the
        data's convex hull), bounded by twice the largest distance from the data mean."""
        if self._radius is None:
            flat = self.data.flatten(1)
            centre = flat.mean(0, dtype=torch.float64).to(flat.dtype)
            self._radius = max(float((flat[j:j + self.data_chunk] - centre).norm(dim=1).max())
                               for j in range(0, flat.shape[0], self.data_chunk))
        return self.neglected_mass_bound() * 2.0 * self._radius

    def describe(self) -> dict:
        """Facts for ``sample_info.json``: sizes, dtype, truncation and its measured bound."""
        out = {"points": int(self.data.shape[0]), "dim": self.dim,
               "dtype": str(self.dtype).replace("torch.", ""), "top_k": self.top_k,
               "smoothing": self.smoothing}
        if self.top_k is not None:
            out["max_neglected_mass_bound"] = self.neglected_mass_bound()
            out["mean_error_bound"] = self.mean_error_bound()
        return out

    # --- the streaming loop ----------------------------------------------------------------
    def _mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[y | x, t]`` in the wider of ``x``'s and the compute dtype (float64 on the direct
        path, where it is formed from the accurate residual ``E[x − a y]``)."""
        out = self._stream(x, t, velocity=False)
        wide = torch.float64 if self.direct else torch.promote_types(x.dtype, self.dtype)
        tw = torch.as_tensor(t, dtype=wide, device=x.device).expand(x.shape[0])
        a = (self.field.a(tw).view(-1, *([1] * (x.ndim - 1)))
             if isinstance(self.field, AffineField) else None)
        if not self.direct:
            mean = out.to(wide)
        else:  # D = (x − E[x − a y]) / a; where a = 0 the kernel forgets y: the data mean
            if self._data_mean is None:
                self._data_mean = self.data.mean(0, dtype=torch.float64)
            safe = torch.where(a != 0, a, torch.ones_like(a))
            mean = torch.where(a != 0, (x.detach().to(wide) - out.to(wide)) / safe,
                               self._data_mean)
        if self.smoothing:  # the KDE's posterior mean from the points' (smoothed.py)
            s = self.field.s(tw).view_as(a)
            mean = smoothed_mean(x.detach().to(wide), a, s, mean, self.smoothing)
        return mean

    def _stream(self, x: Tensor, t: Tensor, *, velocity: bool) -> Tensor:
        n = x.shape[0]
        xc = x.detach().to(self.dtype)
        tc = torch.as_tensor(t, dtype=self.dtype, device=x.device).expand(n)
        workers = self.workers() if x.device.type == "cpu" else 1
        size = max(1, min(self.query_chunk, -(-n // workers)))  # a chunk for each worker
        starts = range(0, n, size)
        workers = min(workers, len(starts))
        show = self.progress
        if show is None:
            show = n * self.data.shape[0] * self.dim >= PROGRESS_MIN_WORK and sys.stderr.isatty()

        def chunk(i):
            with torch.no_grad():  # grad mode is per thread
                return self._chunk(xc[i:i + size], tc[i:i + size], velocity)

        # On the CPU torch runs single-threaded during the call and whole query chunks go to
        # `workers` threads (one core each): torch's own threads would meet at a barrier after
        # each of the ~20 operations per data chunk, which costs 17x on busy cores (measured).
        threads = torch.get_num_threads()
        if x.device.type == "cpu":
            torch.set_num_threads(1)  # threads started now inherit it
        try:
            if workers > 1:
                with ThreadPoolExecutor(workers, thread_name_prefix="exact") as pool:
                    results = list(self._bar(pool.map(chunk, starts), len(starts), show))
            else:
                results = [chunk(i) for i in self._bar(starts, len(starts), show)]
        finally:
            torch.set_num_threads(threads)
        outs, masses, neglected = zip(*results)
        # one host synchronisation per call, after the loop
        if not bool(torch.cat(masses).all()):
            raise FloatingPointError(
                "exact field: some queries have no posterior: their kernel log-density is -inf "
                "under every data point (a kernel of bounded support that no data point "
                "reaches: start from the field's prior or raise t) or NaN (non-finite states: "
                "the solver diverged; try more steps)")
        self.last_neglected_mass = torch.cat(neglected).max()
        self.max_neglected_mass = torch.maximum(self.max_neglected_mass.to(x.device),
                                                self.last_neglected_mass)
        return torch.cat(outs)

    def workers(self) -> int:
        """Query chunks computed concurrently: :attr:`threads`, or torch's intra-op thread
        count when that is ``None``."""
        return max(1, int(self.threads or torch.get_num_threads()))

    @staticmethod
    def _bar(items, total: int, show: bool):
        if not show:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, total=total, desc="exact field", unit="chunk", leave=False)

    def _chunk(self, x: Tensor, t: Tensor, velocity: bool):
        """One query chunk: ``(average (n, *shape), has_mass (n,), neglected mass (n,))``.
        The average is ``E[y]`` (``E[v]`` with ``velocity``), or on the direct path the
        residual ``E[x − a y]``."""
        n = x.shape[0]
        flat = self.data.flatten(1)
        width = 0 if self.top_k is not None else self.dim
        acc = StreamingSoftmax(n, width, top_k=self.top_k, dtype=self.dtype, device=x.device)
        if self.direct:
            a, s = self._kernel_scales(t)
            xf = x.flatten(1)
            inv_var = (1.0 / s**2)[:, None]
            # one buffer each for the differences and the logits, reused by every data chunk
            cap = min(self.data_chunk, flat.shape[0])
            diff_buf = torch.empty(n * self.dim * cap, dtype=self.dtype, device=x.device)
            sq_buf = torch.empty(n * cap, dtype=self.dtype, device=x.device)
        else:  # the queries' side of the logits once, one logits buffer for every data chunk
            logits_of = (IsotropicLogits(self.field.noise, x.flatten(1), *self._kernel_scales(t))
                         if self.smoothing else self.field.posterior_logit_chunks(x, t))
            if (self.attention and width and not velocity
                    and isinstance(logits_of, IsotropicLogits)):
                mean = logits_of.attention_mean(flat, self._sqnorm)
                if mean is not None:  # Gaussian kernels: one fused call over all the data
                    return (mean.view_as(x), torch.isfinite(mean).all(dim=1),
                            torch.zeros(n, dtype=self.dtype, device=x.device))
            cap = min(self.data_chunk, flat.shape[0])
            buf = torch.empty(n * cap, dtype=self.dtype, device=x.device)
            # small d: data rows [y | 1 | ||y||²], so that the distances' product also does
            # the rank-one update and the law's offset (IsotropicLogits.augment)
            augment = isinstance(logits_of, IsotropicLogits) and logits_of.worth_augmenting()
            if augment:
                rows = torch.empty(cap, self.dim + 2, dtype=self.dtype, device=x.device)
        for j in range(0, flat.shape[0], self.data_chunk):
            if self.direct:
                yt = flat[j:j + self.data_chunk].T.contiguous()
                m = yt.shape[1]
                diffs = self._differences(xf, yt, a, diff_buf[:n * self.dim * m]
                                          .view(n, self.dim, m))
                sq = torch.mul(diffs[:, 0], diffs[:, 0], out=sq_buf[:n * m].view(n, m))
                for k in range(1, self.dim):
                    sq.addcmul_(diffs[:, k], diffs[:, k])
                ell, scale = self.field.noise.scaled_log_prob_(sq, inv_var, self.dim)
                if width:  # the residual: (n, 1, m) @ (n, m, d), a batched row-vector product
                    acc.update(ell, scale=scale, weighted_sum=lambda w, diffs=diffs: torch.bmm(
                        w.unsqueeze(1), diffs.transpose(1, 2)).squeeze(1))
                else:
                    acc.update(ell, scale=scale)
                continue
            y = self.data[j:j + self.data_chunk]
            m = y.shape[0]
            if augment:
                ya = IsotropicLogits.augment(flat[j:j + m], self._sqnorm[j:j + m], rows[:m])
                ell, scale = logits_of(ya, out=buf[:n * m].view(n, m))
            else:
                ell, scale = logits_of(y, self._sqnorm[j:j + m], out=buf[:n * m].view(n, m))
            ell = ell.to(self.dtype)
            if not width:
                acc.update(ell, scale=scale)
            elif velocity:
                acc.update(ell, scale=scale,
                           weighted_sum=lambda w, y=y: self._velocity_sum(x, y, t, w))
            else:
                acc.update(ell, flat[j:j + self.data_chunk], scale=scale)
        if self.top_k is None:
            return (acc.mean().view_as(x), acc.has_mass(),
                    torch.zeros(n, dtype=self.dtype, device=x.device))
        w = torch.softmax(acc.top_logits, dim=1)  # the posterior over the k nearest
        index = acc.top_index
        out = torch.zeros(n, self.dim, dtype=self.dtype, device=x.device)
        step = max(1, PAIR_BUDGET // max(1, n * self.dim))
        for c in range(0, index.shape[1], step):
            idx = index[:, c:c + step]
            y = self.data[idx.reshape(-1)].view(n, idx.shape[1], *x.shape[1:])
            wc = w[:, c:c + step]
            if velocity:
                out += self._velocity_sum_paired(x, y, t, wc)
            elif self.direct:
                res = x.flatten(1)[:, None, :] - a[:, None, None] * y.flatten(2)
                out += torch.einsum("nk,nkd->nd", wc, res)
            else:
                out += torch.einsum("nk,nkd->nd", wc, y.flatten(2))
        return out.view_as(x), acc.has_mass(), acc.neglected_mass()

    def _kernel_scales(self, t: Tensor):
        """``a(t)``, and ``s(t)`` or with :attr:`smoothing` the KDE's wider scale."""
        a, s = self.field.a(t), self.field.s(t)
        return a, (smoothed_scale(a, s, self.smoothing) if self.smoothing else s)

    def _differences(self, x: Tensor, yt: Tensor, a: Tensor, out: Tensor) -> Tensor:
        """``x_ik − a_i y_jk`` into ``out`` ``(n, d, m)`` for rows ``x`` ``(n, d)`` and the data
        chunk transposed, ``yt`` ``(d, m)`` (contiguous rows: broadcasting is fastest so)."""
        for k in range(self.dim):
            if self.unit_a:  # a = 1: plain differences
                torch.sub(x[:, k:k + 1], yt[k], out=out[:, k])
            else:
                torch.addr(x[:, k:k + 1], a, yt[k], alpha=-1.0, out=out[:, k])
        return out

    def _velocity_sum(self, x: Tensor, y: Tensor, t: Tensor, w: Tensor) -> Tensor:
        """``Σ_j w_ij v(x_i, t_i | y_j)`` ``(n, d)`` over every pair of a data chunk, in
        sub-chunks of at most :data:`PAIR_BUDGET` values."""
        n, m = w.shape
        out = torch.zeros(n, self.dim, dtype=self.dtype, device=x.device)
        step = max(1, PAIR_BUDGET // max(1, n * self.dim))
        for c in range(0, m, step):
            yc = y[c:c + step]
            ye = yc.unsqueeze(0).expand(n, *yc.shape)
            out += self._velocity_sum_paired(x, ye, t, w[:, c:c + step])
        return out

    def _velocity_sum_paired(self, x: Tensor, y: Tensor, t: Tensor, w: Tensor) -> Tensor:
        """``Σ_c w_ic v(x_i, t_i | y_ic)`` for ``y`` ``(n, c, *shape)`` and ``w`` ``(n, c)``.
        Weights at the exp floor (pairs of zero kernel density) count as 0, so a velocity that
        is not finite there (outside a bounded kernel) does not enter."""
        n, c = w.shape
        xe = x.unsqueeze(1).expand(n, c, *x.shape[1:]).reshape(n * c, *x.shape[1:])
        te = t.unsqueeze(1).expand(n, c).reshape(-1)
        v = self.field.conditional_velocity(xe, y.reshape(n * c, *x.shape[1:]), te)
        v = v.to(self.dtype).view(n, c, -1)
        live = w > 2.0 * floor_weight(self.dtype)
        v = torch.where(live[..., None], torch.nan_to_num(v), torch.zeros_like(v))
        return torch.einsum("nc,ncd->nd", w, v)
