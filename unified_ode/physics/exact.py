"""The exact generative field of a finite data set (THEORY.md §7).

For data ``{y_i}`` the posterior ``p(y_i | x, t)`` is the softmax over ``i`` of
``log p_t(x | y_i)``, so the ideal denoiser ``D(x, t) = sum_i w_i y_i`` and the ideal velocity
``f(x, t) = sum_i w_i v(x, t | y_i)`` need no training. Integrating this ODE from the prior
lands on the data points: it is the ground truth for kernels, priors and solvers.

Memory is bounded: queries are processed ``query_chunk`` at a time and data ``data_chunk`` at a
time with an online (streaming) log-sum-exp, so ``N`` queries against ``M`` data points in ``d``
dimensions never hold more than ``query_chunk × data_chunk`` logits (and, for the velocity form
of non-affine fields, ``query_chunk × data_chunk × d`` velocities).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unified_ode.physics.base import Field


class ExactPosterior(nn.Module):
    """A drop-in for a trained network: ``forward(x, t)`` returns the exact prediction.

    Parameters
    ----------
    field:
        The force field whose kernel defines the posterior.
    data:
        ``(M, *shape)`` data points (the finite data set).
    parametrisation:
        What ``forward`` predicts (a :class:`unified_ode.parametrisation.Parametrisation` of
        ``field``, asked through its ``exact(posterior, x, t)``); ``None``: the posterior mean
        for fields with a denoiser form, the posterior velocity otherwise.
    query_chunk, data_chunk:
        Chunk sizes (rows of queries, rows of data) that bound memory.
    dtype:
        Precision of the posterior computation (float64 by default: the posterior is sharpest,
        and rounding matters most, near ``t_min``).
    """

    def __init__(self, field: Field, data: Tensor, *, parametrisation=None,
                 query_chunk: int = 256, data_chunk: int = 2048,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("exact field needs data of shape (M, *shape), got "
                             f"{tuple(data.shape)}")
        self.field = field
        self.parametrisation = parametrisation
        self.register_buffer("data", data.detach().to(dtype), persistent=False)
        self.query_chunk = int(query_chunk)
        self.data_chunk = int(data_chunk)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` ``(N, *shape)``, ``t`` ``(N,)`` or scalar; returns the parametrisation's exact
        prediction ``(N, *shape)`` in ``x``'s dtype."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if self.parametrisation is not None:
            return self.parametrisation.exact(self, x, t)
        if self.field.has_denoiser_form:
            return self.posterior_mean(x, t)
        return self.posterior_velocity(x, t)

    @torch.no_grad()
    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[y | x, t]`` ``(N, *shape)`` in ``x``'s dtype (the exact denoiser)."""
        return self._stream(x, t, velocity=False)

    @torch.no_grad()
    def posterior_velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[v(x, t | y) | x, t]`` ``(N, *shape)`` in ``x``'s dtype (the exact drift)."""
        return self._stream(x, t, velocity=True)

    def _stream(self, x: Tensor, t: Tensor, velocity: bool) -> Tensor:
        out_dtype = x.dtype
        x = x.to(self.dtype)
        t = torch.as_tensor(t, dtype=self.dtype, device=x.device).expand(x.shape[0])
        outs = [self._chunk(x[i:i + self.query_chunk], t[i:i + self.query_chunk], velocity)
                for i in range(0, x.shape[0], self.query_chunk)]
        return torch.cat(outs).to(out_dtype)

    def _chunk(self, x: Tensor, t: Tensor, velocity: bool) -> Tensor:
        n = x.shape[0]
        running_max = torch.full((n,), -torch.inf, dtype=self.dtype, device=x.device)
        denom = torch.zeros(n, dtype=self.dtype, device=x.device)
        acc = torch.zeros_like(x)
        for j in range(0, self.data.shape[0], self.data_chunk):
            y = self.data[j:j + self.data_chunk]
            logits = self.field.pairwise_kernel_log_prob(x, y, t)  # (n, m)
            new_max = torch.maximum(running_max, logits.max(dim=1).values)
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            rescale = torch.exp(running_max - safe_max)
            w = torch.exp(logits - safe_max[:, None])  # (n, m)
            if velocity:
                contrib = self._weighted_velocity(x, y, t, w)
            else:
                contrib = (w @ y.flatten(1)).view_as(x)
            shape = (n, *([1] * (x.ndim - 1)))
            acc = acc * rescale.view(shape) + contrib
            denom = denom * rescale + w.sum(1)
            running_max = new_max
        if not torch.all(denom > 0):
            raise FloatingPointError(
                "exact field: some queries have zero posterior mass under every data point "
                "(the kernel has bounded support and no data point can reach them); "
                "start from the field's prior or raise t")
        return acc / denom.view(n, *([1] * (x.ndim - 1)))

    def _weighted_velocity(self, x: Tensor, y: Tensor, t: Tensor, w: Tensor) -> Tensor:
        n, m = w.shape
        xe = x.unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
        ye = y.unsqueeze(0).expand(n, m, *y.shape[1:]).reshape(n * m, *y.shape[1:])
        te = t.unsqueeze(1).expand(n, m).reshape(-1)
        v = self.field.conditional_velocity(xe, ye, te).view(n, m, -1)
        v = torch.nan_to_num(v) * (w > 0)[..., None]
        return torch.einsum("nm,nmd->nd", w, v).view_as(x)
