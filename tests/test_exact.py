"""The exact field at scale (issue 18): agreement of the fast path (matrix-product or direct
distances, float32 where measured safe, streaming log-sum-exp) with a brute-force float64
reference, top-k truncation and its bound, and peak memory in a fresh process."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.exact_reference import (
    reference_drift,
    reference_posterior,
    relative_error,
)
from unified_ode.data.toy2d import toy_samples
from unified_ode.physics import (
    ExactPosterior,
    LinearField,
    PFGMPPField,
    PoissonField,
    RadialGeneralField,
    VEField,
    VPField,
)
from unified_ode.physics.posterior import StreamingSoftmax

FIELDS = {
    "poisson": PoissonField,
    "pfgmpp": lambda: PFGMPPField(D=128),
    "ve": VEField,
    "vp": VPField,
    "linear": LinearField,
    "radial_general": RadialGeneralField,
}


def _data(kind: str, m: int) -> torch.Tensor:
    """Float32-representable data (as a data module gives it), held in float64."""
    if kind == "toy2d":
        return toy_samples("checkerboard", m, 0).double()
    if kind == "digits":
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32)[:m].reshape(-1, 64) / 8.0 - 1.0
        return torch.from_numpy(images).double()
    # 3,072-d points near a 16-d manifold: close neighbours, a posterior that is neither a
    # delta nor uniform over a wide range of t
    g = torch.Generator().manual_seed(1)
    z = torch.randn(m, 16, generator=g, dtype=torch.float64)
    a = torch.randn(16, 3072, generator=g, dtype=torch.float64) / 4
    return torch.tanh(z @ a).float().double()


SIZES = {"toy2d": 20000, "digits": 1797, "3072": 256}


@pytest.mark.parametrize("kind", ["toy2d", "digits", "3072"])
@pytest.mark.parametrize("name", list(FIELDS))
def test_fast_path_agrees_with_float64_reference(kind, name):
    """The drift ``E[v | x, t]`` of the default (dtype auto) exact field is within 1e-5
    (relative, per query) of a float64 pair-by-pair softmax, at 7 times from ``t_min`` to
    ``t_max``, for states drawn from the kernel around data points (float32 states, as the
    solvers carry them)."""
    field = FIELDS[name]()
    m = SIZES[kind] if name != "radial_general" else min(SIZES[kind], 300)
    data = _data(kind, m)
    model = ExactPosterior(field, data.float(), query_chunk=8, data_chunk=1024)
    g = torch.Generator().manual_seed(2)
    nq = 12 if kind != "3072" else 4
    worst = []
    for t in torch.logspace(math.log10(field.t_min), math.log10(field.t_max), 7,
                            dtype=torch.float64):
        tt = torch.full((nq,), float(t), dtype=torch.float64)
        idx = torch.randint(0, m, (nq,), generator=g)
        x = field.sample_kernel(data[idx], tt, generator=g).float().double()
        ref = reference_drift(field, x, data, tt)
        worst.append(relative_error(model.posterior_velocity(x, tt), ref))
    assert max(worst) <= 1e-5, [f"{e:.1e}" for e in worst]


def test_dtype_auto_is_what_was_measured():
    """float32 on the 2-D direct path of a = 1 fields and from 32 dims on; float64 between, for
    a != 1 at low d, and for float64 data."""
    two = torch.zeros(5, 2)
    assert ExactPosterior(PoissonField(), two).dtype == torch.float32
    assert ExactPosterior(VPField(), two).dtype == torch.float64
    assert ExactPosterior(PoissonField(), torch.zeros(5, 16)).dtype == torch.float64
    assert ExactPosterior(PoissonField(), torch.zeros(5, 64)).dtype == torch.float32
    assert ExactPosterior(PoissonField(), two.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="auto, float32 or float64"):
        ExactPosterior(PoissonField(), two, dtype="half")


def test_one_copy_of_the_data():
    """Data already in the compute dtype are used as given, not copied."""
    data = torch.randn(100, 64)
    model = ExactPosterior(PoissonField(), data)
    assert model.data.data_ptr() == data.data_ptr()


@pytest.mark.parametrize("name", ["poisson", "ve", "radial_general"])
def test_top_k_neglected_mass_is_bounded(name):
    """With ``top_k = k`` the mass outside the k nearest points (measured against the float64
    posterior) is below the reported bound, and the posterior mean is within
    :meth:`mean_error_bound` of the exact one."""
    field = FIELDS[name]()
    data = _data("toy2d", 400 if name == "radial_general" else 3000)
    g = torch.Generator().manual_seed(3)
    x = field.sample_kernel(data[:40], torch.full((40,), 0.05, dtype=torch.float64),
                            generator=g).float().double()
    t = torch.full((40,), 0.05, dtype=torch.float64)
    w = reference_posterior(field, x, data, t)
    exact = w @ data
    for k in (5, 50):
        model = ExactPosterior(field, data.float(), top_k=k, data_chunk=128)
        mean = model.posterior_mean(x, t)
        true_lost = (1 - torch.topk(w, k, dim=1).values.sum(1)).max().item()
        bound = model.neglected_mass_bound()
        assert true_lost <= bound + 1e-12, (k, true_lost, bound)
        assert bound <= true_lost + 1e-4  # and it is measured, not a loose guess
        err = (mean - exact).norm(dim=1).max().item()
        assert err <= model.mean_error_bound() + 1e-6, (k, err, model.mean_error_bound())
        assert model.describe()["top_k"] == k
    # the error shrinks with k and the bound with it
    assert ExactPosterior(field, data.float(), top_k=50).top_k == 50


def test_top_k_at_m_is_exact():
    """``top_k >= M`` is the untruncated field: same output, zero neglected mass."""
    field = PoissonField()
    data = _data("digits", 500).float()
    x = torch.randn(20, 64) * 2
    t = torch.full((20,), 0.7)
    full = ExactPosterior(field, data)(x, t)
    model = ExactPosterior(field, data, top_k=500)
    torch.testing.assert_close(model(x, t), full, rtol=0, atol=0)
    assert model.top_k is None and model.neglected_mass_bound() == 0.0


def test_streaming_softmax_matches_one_shot():
    """Chunked online log-sum-exp (with top-k tracking) equals the one-shot softmax."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(7, 300, generator=g, dtype=torch.float64) * 30
    values = torch.randn(300, 3, generator=g, dtype=torch.float64)
    acc = StreamingSoftmax(7, 3, top_k=10, dtype=torch.float64)
    for j in range(0, 300, 64):
        acc.update(logits[:, j:j + 64].clone(), values[j:j + 64])
    w = torch.softmax(logits, dim=1)
    torch.testing.assert_close(acc.mean(), w @ values)
    torch.testing.assert_close(acc.log_normaliser(), torch.logsumexp(logits, dim=1))
    top = torch.topk(logits, 10, dim=1)
    torch.testing.assert_close(acc.top_logits, top.values)
    assert torch.equal(acc.top_index, top.indices)
    torch.testing.assert_close(acc.neglected_mass(), 1 - torch.topk(w, 10, dim=1).values.sum(1))


def test_no_posterior_is_a_clear_error():
    """Queries whose logits are all -inf or NaN raise, saying what to do."""
    data = torch.zeros(10, 2)
    with pytest.raises(FloatingPointError, match="raise t.*more steps"):
        ExactPosterior(VEField(), data).posterior_mean(torch.full((3, 2), float("nan")),
                                                       torch.full((3,), 0.5))


def test_peak_memory_is_the_data_plus_a_chunk():
    """Fresh process: 6,000 float32 points in 3,072 dims (74 MB) and 128 queries; the resident
    memory grows by at most 1.1 x the data's size plus 64 MB (chunks of logits, queries and
    outputs), i.e. no float64 copy and no (queries x data x d) broadcast."""
    code = (
        "import resource, torch\n"
        "from unified_ode.physics import ExactPosterior, PoissonField\n"
        "torch.set_num_threads(1)\n"
        "def rss():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "g = torch.Generator().manual_seed(0)\n"
        "field = PoissonField()\n"
        "x = torch.randn(128, 3072, generator=g) * 10\n"
        "ExactPosterior(field, torch.rand(300, 3072, generator=g))(x[:8], torch.full((8,), 5.0))\n"
        "base = rss()\n"
        "data = torch.rand(6000, 3072, generator=g).mul_(2).sub_(1)\n"
        "out = ExactPosterior(field, data)(x, torch.full((128,), 5.0))\n"
        "assert torch.isfinite(out).all()\n"
        "print(rss() - base, data.numel() * 4)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown, size = map(int, proc.stdout.split())
    assert grown <= 1.1 * size + 64 * 2**20, (grown / 2**20, size / 2**20)  # MB


def test_progress_bar_over_query_chunks(capsys):
    """``progress=True`` shows a bar over the query chunks of one call (on stderr)."""
    model = ExactPosterior(VEField(), torch.randn(50, 3), query_chunk=4, progress=True)
    model(torch.randn(10, 3), torch.full((10,), 0.5))
    assert "exact field" in capsys.readouterr().err


def test_streaming_softmax_with_a_scale_matches_one_shot():
    """``update(ell, scale=...)`` (logits ``scale · ell``, the product folded into the shift
    pass) equals the one-shot softmax, for a negative number and a per-row tensor."""
    g = torch.Generator().manual_seed(5)
    ell = torch.rand(6, 200, generator=g, dtype=torch.float64) * 40
    values = torch.randn(200, 2, generator=g, dtype=torch.float64)
    for scale in (-1.5, -torch.rand(6, 1, generator=g, dtype=torch.float64) - 0.1):
        acc = StreamingSoftmax(6, 2, dtype=torch.float64)
        for j in range(0, 200, 48):
            acc.update(ell[:, j:j + 48].clone(), values[j:j + 48], scale=scale)
        logits = scale * ell
        torch.testing.assert_close(acc.mean(), torch.softmax(logits, dim=1) @ values)
        torch.testing.assert_close(acc.log_normaliser(), torch.logsumexp(logits, dim=1))


@pytest.mark.parametrize("name", ["poisson", "pfgmpp", "ve"])
def test_scaled_log_prob_is_the_log_density_up_to_a_row_constant(name):
    """``NoiseLaw.scaled_log_prob_`` returns ``(ell, scale)`` whose ``scale · ell`` differs from
    ``log_prob_sqnorm`` at the scaled squared norm by a constant along each row (both the
    ``log`` and the ``log1p`` branch of the Student-t law: D = 128 in 2 and in 200 dims)."""
    field = FIELDS[name]()
    g = torch.Generator().manual_seed(6)
    for dim in (2, 200):
        sq = torch.rand(5, 64, generator=g, dtype=torch.float64) * 9
        inv_var = torch.rand(5, 1, generator=g, dtype=torch.float64) * 100 + 0.5
        ref = field.noise.log_prob_sqnorm(sq * inv_var, dim)
        ell, scale = field.noise.scaled_log_prob_(sq.clone(), inv_var, dim)
        got = ell if scale is None else scale * ell
        gap = ref - got
        torch.testing.assert_close(gap, gap[:, :1].expand_as(gap), rtol=0, atol=1e-9)


def test_threads_split_query_chunks_with_the_same_result():
    """``threads=2`` computes query chunks concurrently (torch single-threaded meanwhile, its
    thread count restored after) and gives bit-for-bit the field of ``threads=1``; with
    fewer queries than two chunks, the chunks shrink (each thread gets one), same field."""
    data = toy_samples("checkerboard", 3000, 0)
    x = torch.randn(70, 2, generator=torch.Generator().manual_seed(7)) * 2
    t = torch.full((70,), 0.3)
    for field in (PoissonField(), VPField()):
        one = ExactPosterior(field, data, query_chunk=16, threads=1)(x, t)
        before = torch.get_num_threads()
        two = ExactPosterior(field, data, query_chunk=16, threads=2)(x, t)
        assert torch.get_num_threads() == before
        assert torch.equal(one, two)
        # fewer queries than threads x query_chunk: smaller chunks, the same field
        few = ExactPosterior(field, data, threads=2)(x[:5], t[:5])
        torch.testing.assert_close(few, one[:5], rtol=1e-6, atol=0)
    # the matrix-product path (40 dims), the attention path and the non-affine velocity average
    g = torch.Generator().manual_seed(8)
    for field, pts in ((PoissonField(), torch.rand(500, 40, generator=g)),
                       (VEField(), torch.rand(500, 40, generator=g)),
                       (RadialGeneralField(), data[:300])):
        xs = torch.randn(40, pts.shape[1], generator=g)
        one = ExactPosterior(field, pts, query_chunk=8, threads=1).posterior_velocity(xs, t[:40])
        two = ExactPosterior(field, pts, query_chunk=8, threads=2).posterior_velocity(xs, t[:40])
        assert torch.equal(one, two)
    with pytest.raises(ValueError, match="network.threads"):
        ExactPosterior(VEField(), data, threads=0)


@pytest.mark.parametrize("name", ["poisson", "pfgmpp", "ve", "exppower"])
def test_scaled_log_prob_shift_is_the_log_density_ratio_up_to_a_row_constant(name):
    """``NoiseLaw.scaled_log_prob_shift_`` (given ``offset + k·delta``, ``k`` from
    ``shift_row_factor``) returns ``(ell, scale)`` whose ``scale · ell`` differs from ``log
    q(base + delta) − log q(base)`` by a constant along each row: the ``log`` branch (the
    offset 1, 64 dims) and the ``log1p`` branch (offset 0, 3,072 dims, float32) of the
    Student-t law, the Gaussian's identity and the default of other laws."""
    from unified_ode.physics.exppower import ExpPowerField

    noise = (ExpPowerField(beta=1.5) if name == "exppower" else FIELDS[name]()).noise
    g = torch.Generator().manual_seed(9)
    for dim, dtype in ((64, torch.float64), (3072, torch.float32)):
        base = torch.rand(5, 1, generator=g, dtype=torch.float64) * 50 + 0.1
        sq = torch.rand(5, 40, generator=g, dtype=torch.float64) * 80  # base + delta
        ref = noise.log_prob_sqnorm(sq, dim) - noise.log_prob_sqnorm(base, dim)
        k = noise.shift_row_factor(base[:, 0])
        k = torch.ones(5, dtype=torch.float64) if k is None else k
        offset = noise.shift_offset(dim, dtype)
        z = (offset + k[:, None] * (sq - base)).to(dtype)
        ell, scale = noise.scaled_log_prob_shift_(z, base.to(dtype), dim)
        got = (ell if scale is None else scale * ell).double()
        gap = ref - got
        tol = 1e-9 if dtype == torch.float64 else 2e-3  # float32 logits of ~1e3 nats
        torch.testing.assert_close(gap, gap[:, :1].expand_as(gap), rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["poisson", "pfgmpp", "ve"])
def test_augmented_rows_give_the_logits_of_plain_rows(name):
    """``IsotropicLogits`` on augmented rows ``[y | 1 | ||y||²]`` (the rank-one update and the
    law's offset inside the product) gives the logits of plain rows, and those are
    ``Field.pairwise_posterior_logits`` up to a row constant (float64, 64 dims)."""
    from unified_ode.physics.posterior import IsotropicLogits

    field = FIELDS[name]()
    g = torch.Generator().manual_seed(10)
    y = torch.rand(300, 64, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(6, 64, generator=g, dtype=torch.float64) * 2
    t = torch.full((6,), 0.7, dtype=torch.float64)
    logits_of = field.posterior_logit_chunks(x, t)
    assert isinstance(logits_of, IsotropicLogits) and logits_of.worth_augmenting() is False
    ysq = (y * y).sum(1)
    ell, scale = logits_of(y, ysq)
    rows = IsotropicLogits.augment(y, ysq, torch.empty(300, 66, dtype=torch.float64))
    ell_aug, scale_aug = logits_of(rows)
    assert scale_aug == scale
    torch.testing.assert_close(ell_aug, ell, rtol=1e-12, atol=1e-12)
    logits = ell if scale is None else scale * ell
    ref = field.pairwise_kernel_log_prob(x, y, t)
    gap = ref - logits
    torch.testing.assert_close(gap, gap[:, :1].expand_as(gap), rtol=0, atol=1e-8)


def test_attention_path_is_the_streaming_loop():
    """Gaussian kernels up to ``ATTENTION_MAX_DIM`` dimensions on the CPU take the fused
    attention call, with the drift of the streaming loop (``attention=False``) to 1e-5 at
    t_min, 1 and t_max on digits; it is declined for a Student-t law, for queries at
    different times and above the dimension limit."""
    from unified_ode.physics.posterior import ATTENTION_MAX_DIM

    data = _data("digits", 1797).float()
    g = torch.Generator().manual_seed(11)
    for name in ("ve", "vp", "linear"):
        field = FIELDS[name]()
        for tv in (field.t_min, 1.0 if field.t_max > 1 else 0.5, field.t_max):
            t = torch.full((20,), tv)
            x = field.sample_kernel(data[torch.randint(0, 1797, (20,), generator=g)], t,
                                    generator=g)
            logits_of = field.posterior_logit_chunks(x, t)
            assert logits_of.attention_mean(data, (data * data).sum(1)) is not None
            fused = ExactPosterior(field, data, query_chunk=8).posterior_velocity(x, t)
            loop = ExactPosterior(field, data, query_chunk=8,
                                  attention=False).posterior_velocity(x, t)
            err = ((fused - loop).norm(dim=1) / loop.norm(dim=1)).max().item()
            assert err <= 1e-5, (name, tv, err)
    x = torch.randn(4, 64)
    ysq = (data * data).sum(1)
    assert PoissonField().posterior_logit_chunks(x, torch.full((4,), 1.0)).attention_mean(
        data, ysq) is None
    assert VEField().posterior_logit_chunks(x, torch.tensor([1.0, 1.0, 2.0, 1.0])) \
        .attention_mean(data, ysq) is None
    wide = torch.randn(10, ATTENTION_MAX_DIM + 1)
    assert VEField().posterior_logit_chunks(wide[:2], torch.full((2,), 1.0)).attention_mean(
        wide, (wide * wide).sum(1)) is None


def test_auto_data_chunk_and_the_result_does_not_depend_on_it():
    """``data_chunk=None`` picks rows from d and the L2 cache within the bounds (fewer rows
    for wider data), and the field is the same as with small explicit chunks."""
    from unified_ode.physics.exact import MAX_DATA_CHUNK, MIN_DATA_CHUNK, auto_data_chunk

    sizes = [auto_data_chunk(d, 4) for d in (16, 64, 256, 3072)]
    assert all(MIN_DATA_CHUNK <= s <= MAX_DATA_CHUNK for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    g = torch.Generator().manual_seed(12)
    data = torch.rand(5000, 64, generator=g)
    x = torch.randn(300, 64, generator=g) * 2
    t = torch.full((300,), 0.8)
    model = ExactPosterior(PoissonField(), data)
    assert model.data_chunk == auto_data_chunk(64, 4)
    small = ExactPosterior(PoissonField(), data, data_chunk=700, query_chunk=64)(x, t)
    torch.testing.assert_close(model(x, t), small, rtol=2e-5, atol=1e-6)


def test_smoothed_field_is_the_exact_field_of_the_kde():
    """``smoothing=h``: the posterior mean is that of the data convolved with ``N(0, h² I)``.
    One point under VE: the Gaussian ``N(y0, h²)``'s denoiser ``y0 + h²/(h² + σ²)(x − y0)``;
    many points under VP (a != 1) in 2 dims (direct path) and 64 (attention and loop): a
    float64 brute force over the mixture (weights at ``s² + a²h²``, per-point means
    ``y_j + c(x − a y_j)``). Non-Gaussian kernels are refused with a clear error."""
    g = torch.Generator().manual_seed(13)
    h = 0.3
    y0 = torch.randn(1, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    for sigma in (0.01, 0.5, 4.0):
        t = torch.full((7,), sigma, dtype=torch.float64)
        got = ExactPosterior(VEField(), y0, smoothing=h).posterior_mean(x, t)
        want = y0 + h**2 / (h**2 + sigma**2) * (x - y0)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    field = VPField()
    for dim, options in ((2, {}), (64, {}), (64, {"attention": False})):
        data = torch.rand(400, dim, generator=g, dtype=torch.float64) * 2 - 1
        for tv in (0.05, 0.5):
            t = torch.full((9,), tv, dtype=torch.float64)
            x = field.sample_kernel(data[:9], t, generator=g)
            a, s = field.a(t)[:, None], field.s(t)[:, None]
            s2 = s**2 + (a * h) ** 2
            logits = -((x[:, None, :] - a[:, :, None] * data[None]) ** 2).sum(-1) / (2 * s2)
            w = torch.softmax(logits, dim=1)
            c = a * h**2 / s2
            want = w @ data + c * (x - a * (w @ data))
            got = ExactPosterior(field, data.float(), smoothing=h, **options).posterior_mean(
                x.float(), t.float())
            err = ((got.double() - want).norm(dim=1) / want.norm(dim=1)).max().item()
            assert err <= 1e-5, (dim, options, tv, err)
    assert ExactPosterior(field, data, smoothing=h).describe()["smoothing"] == h
    with pytest.raises(ValueError, match="Gaussian noise kernel.*poisson"):
        ExactPosterior(PoissonField(), data, smoothing=0.1)
    with pytest.raises(ValueError, match="bandwidth >= 0"):
        ExactPosterior(VEField(), data, smoothing=-1.0)
