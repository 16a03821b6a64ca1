"""The measurements behind the exact field's kernel choices (docs/exact.md), one section each.

    python bench/exact_passes.py passes      # CPU-ns per pair of single torch passes, 256 x 1,024
    python bench/exact_passes.py chunks      # data chunk rows vs speed (Poisson, d = 64 and 3,072)
    python bench/exact_passes.py attention   # fused attention vs the streaming loop (VE) by d
    python bench/exact_passes.py augment     # augmented data rows on/off, alternating (d = 64)
    python bench/exact_passes.py widths      # the two products at widths 64, 65, 66
    python bench/exact_passes.py compile     # torch.compile of the chunk update (gcc; slow;
                                             # TORCHINDUCTOR_CACHE_DIR=<new dir> for a cold cache)

Everything single-threaded, timed as CPU time of this process (``time.process_time``), best
of a few repeats: robust to other processes' load, not to the caches they share. Figures are
CPU nanoseconds per query-point pair, or query·point·dim per CPU second (qpd/s).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.physics import (  # noqa: E402
    ExactPosterior,
    PoissonField,
    VEField,
    posterior,  # noqa: E402
)
from unified_ode.physics.posterior import IsotropicLogits, exp_floor  # noqa: E402


def best_cpu(fn, repeats: int = 3, inner: int = 1) -> float:
    """Smallest CPU time of ``inner`` calls of ``fn`` over ``repeats`` tries, per call (s)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.process_time() - start) / inner)
    return best


def passes() -> None:
    """One pass each over a ``256 × 1,024`` float32 block (1 MB, in L2), its cost minus that
    of restoring the input (a copy) where the pass changes the values it reads."""
    n, m = 256, 1024
    g = torch.Generator().manual_seed(0)
    src = torch.rand(n, m, generator=g) * 30 + 1  # log arguments in [1, 31]
    neg = -2 * src                                  # exp arguments in [-62, -2]
    very = -4 * src                                 # down to -124: below float32's -87.3
    col = torch.rand(n, 1, generator=g) + 0.5
    row = torch.rand(m, generator=g)
    buf = torch.empty(n, m)

    def ns(fn):
        return best_cpu(fn, repeats=5, inner=100) * 1e9 / (n * m)

    copy = ns(lambda: buf.copy_(src))
    plain = {  # passes that keep the values in range without a restore
        "mul_(scalar)": lambda: buf.mul_(1.0),
        "clamp_min_(scalar)": lambda: buf.clamp_min_(1.0),
        "clamp_(min=column)": lambda: buf.clamp_(min=col),
        "add_(row vector)": lambda: buf.add_(row),
        "add_(column)": lambda: buf.add_(col),
        "mul_(column)": lambda: buf.mul_(col),
        "torch.add(column, x, alpha)": lambda: torch.add(col, buf, alpha=1.0, out=buf),
        "addcmul(column, x, column)": lambda: torch.addcmul(col, buf, col, out=buf),
        "amin(dim=1)": lambda: buf.amin(dim=1),
        "sum(dim=1)": lambda: buf.sum(dim=1),
    }
    restored = {
        "div_(column)": (src, lambda: buf.div_(col)),
        "log_": (src, lambda: buf.log_()),
        "log1p_": (src, lambda: buf.log1p_()),
        "exp_ on [-62, -2]": (neg, lambda: buf.exp_()),
        "exp_ on [-124, -4]": (very, lambda: buf.exp_()),
        "pow_(-32.5)": (src, lambda: buf.pow_(-32.5)),
    }
    print(f"single passes over {n} x {m} float32, CPU-ns per element (copy: {copy:.3f})")
    buf.copy_(src)
    for name, fn in plain.items():
        buf.copy_(src)
        print(f"  {name:32s} {ns(fn):7.3f}", flush=True)
    for name, (start, fn) in restored.items():
        cost = ns(lambda start=start, fn=fn: (buf.copy_(start), fn())) - copy
        print(f"  {name:32s} {cost:7.3f}", flush=True)


def _poisson_call(dim: int, points: int, queries: int = 256, **options) -> float:
    """CPU-ns per pair of one default Poisson call at t = 1 (uniform data, as bench/exact.py)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(queries, dim, generator=g) * 2.0
    t = torch.full((queries,), 1.0)
    data = torch.rand(points, dim, generator=g).mul_(2).sub_(1)
    model = ExactPosterior(PoissonField(), data, threads=1, **options)
    return best_cpu(lambda: model(x, t)) * 1e9 / (queries * points)


def chunks() -> None:
    """Data chunk rows against speed, 256 queries, Poisson."""
    for dim, points, sizes in ((64, 50000, (512, 1024, 2048, 4096, 8192, 16384)),
                               (3072, 10000, (1024, 2048, 4096, 8192))):
        for rows in sizes:
            print(f"d = {dim}, data_chunk = {rows}: "
                  f"{_poisson_call(dim, points, data_chunk=rows):.2f} CPU-ns per pair",
                  flush=True)
    print(f"d = 64, query_chunk = 512 (512 queries), data_chunk = 4096: "
          f"{_poisson_call(64, 50000, 512, query_chunk=512, data_chunk=4096):.2f}")


def attention() -> None:
    """VE, 256 queries at t = 1: the fused attention call against the streaming loop
    (``attention=False``) at every d; the measurement that set ``ATTENTION_MAX_DIM``, so that
    limit is lifted here."""
    limit = posterior.ATTENTION_MAX_DIM
    posterior.ATTENTION_MAX_DIM = 1 << 30
    try:
        _attention()
    finally:
        posterior.ATTENTION_MAX_DIM = limit


def _attention() -> None:
    for dim, points in ((64, 50000), (256, 20000), (1024, 10000), (3072, 5000)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, dim, generator=g) * 2
        y = torch.rand(points, dim, generator=g) * 2 - 1
        t = torch.full((256,), 1.0)
        fused_model = ExactPosterior(VEField(), y, threads=1)
        loop_model = ExactPosterior(VEField(), y, threads=1, attention=False)
        fused = best_cpu(lambda m=fused_model, x=x, t=t: m(x, t))
        loop = best_cpu(lambda m=loop_model, x=x, t=t: m(x, t))
        work = 256 * points * dim
        print(f"d = {dim}, M = {points}: attention {work / fused:.2e} qpd/s, "
              f"loop {work / loop:.2e} qpd/s", flush=True)


def augment() -> None:
    """Augmented data rows on and off, alternating calls (d = 64, Poisson, 256 x 50,000)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g) * 2.0
    t = torch.full((256,), 1.0)
    model = ExactPosterior(PoissonField(), torch.rand(50000, 64, generator=g) * 2 - 1,
                           threads=1)
    original = IsotropicLogits.worth_augmenting
    times = {True: [], False: []}
    try:
        for _ in range(6):
            for on in (True, False):
                IsotropicLogits.worth_augmenting = lambda self, on=on: on
                times[on].append(best_cpu(lambda: model(x, t), repeats=2) * 1e9 / (256 * 50000))
    finally:
        IsotropicLogits.worth_augmenting = original
    for on, values in times.items():
        print(f"augmented rows {'on ' if on else 'off'}: "
              + " ".join(f"{v:.2f}" for v in sorted(values)) + " CPU-ns per pair")


def widths() -> None:
    """The weighted sum's product ``acc += w @ y`` (256 × 8,192 weights) for values of width
    64 and 65 (a normaliser column of ones would add the 65th), and the distances' product
    for inner size 64 and 66 (the augmented rows)."""
    n, m = 256, 8192
    g = torch.Generator().manual_seed(0)
    w = torch.rand(n, m, generator=g)
    out = torch.empty(n, m)
    for width in (64, 65, 66):
        y = torch.rand(m, width, generator=g)
        x = torch.randn(n, width, generator=g)
        acc = torch.zeros(n, width)
        ws = best_cpu(lambda acc=acc, y=y: acc.addmm_(w, y), repeats=5, inner=10)
        mm = best_cpu(lambda x=x, y=y: torch.mm(x, y.T, out=out), repeats=5, inner=10)
        print(f"width {width}: weighted sum {ws * 1e9 / (n * m):.3f}, distances "
              f"{mm * 1e9 / (n * m):.3f} CPU-ns per pair", flush=True)


def compile_() -> None:
    """The Student-t chunk update (distances to weighted sum) eager and under torch.compile
    (d = 64, 256 x 50,000, data chunks of 2,048), and the compile time (wall and this
    process's CPU; the compiler's child processes are not in the CPU figure)."""
    n, points, dim, rows = 256, 50000, 64, 2048
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g) * 2
    data = torch.rand(points, dim, generator=g) * 2 - 1
    ysq = (data * data).sum(1)
    nu, p, floor = 1.0, 0.5 * (1.0 + dim), exp_floor(torch.float32)
    base = (x * x).sum(1, keepdim=True)
    k = 1 / (base[:, 0] + nu)
    left, ycoef, lowest = x * (-2 * k)[:, None], k, base / (base + nu)

    def step(left, ycoef, lowest, y, ys, run_max, denom, acc):
        z = torch.mm(left, y.T) + ycoef[:, None] * ys[None, :]
        ell = torch.log(torch.maximum(z, -lowest) + 1.0)
        new = torch.maximum(run_max, ell.amin(1) * (-p))
        rescale = torch.exp(run_max - new)
        w = torch.exp(torch.clamp(-p * ell - new[:, None], min=floor))
        return new, denom * rescale + w.sum(1), acc * rescale[:, None] + w @ y

    def run(fn):
        state = (torch.full((n,), -math.inf), torch.zeros(n), torch.zeros(n, dim))
        for j in range(0, points, rows):
            state = fn(left, ycoef, lowest, data[j:j + rows], ysq[j:j + rows], *state)
        return state[2] / state[1][:, None]

    eager = best_cpu(lambda: run(step)) * 1e9 / (n * points)
    print(f"this function eager: {eager:.2f} CPU-ns per pair; the exact field's loop "
          f"(ExactPosterior, default chunks): {_poisson_call(dim, points):.2f}", flush=True)
    for dynamic in (False, True):
        torch.compiler.reset()
        start, wall = time.process_time(), time.perf_counter()
        compiled = torch.compile(step, dynamic=dynamic)
        run(compiled)
        print(f"compile (dynamic={dynamic}): {time.perf_counter() - wall:.1f} s wall, "
              f"{time.process_time() - start:.1f} CPU-s; then "
              f"{best_cpu(lambda c=compiled: run(c)) * 1e9 / (n * points):.2f} CPU-ns per pair",
              flush=True)


SECTIONS = {"passes": passes, "chunks": chunks, "attention": attention, "augment": augment,
            "widths": widths, "compile": compile_}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sections", nargs="+", choices=sorted(SECTIONS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.sections:
        print(f"== {name}", flush=True)
        SECTIONS[name]()


if __name__ == "__main__":
    main()
