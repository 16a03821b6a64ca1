"""Throughput, memory and truncation of the exact field (issue 18), beside torch.mm.

    python bench/exact.py --threads 1                     # the table of docs/exact.md (~5 min)
    python bench/exact.py --threads 1 --dims 64 --points 10000 --topk-points 0
    python bench/exact.py --demo                          # the README demo's time and sw
    python bench/exact.py --smoothing 0 0.02 0.05 0.1 0.2  # the smoothed closed-form field

**Throughput.** For each ``d`` in ``--dims`` and ``M`` in ``--points`` a fresh process builds
``M`` float32 points (uniform in ``[-1, 1]^d``), runs one warm-up call and then ``--repeats``
calls of the default exact field (``network=exact``: dtype auto, default chunks) of each of
``--fields`` (Poisson; VE, whose Gaussian kernel takes the fused attention path up to 128 dims)
on ``--queries`` states at ``t = 1``, and times ``torch.mm`` over the same chunks
(``(query_chunk × d) @ (d × data_chunk)`` for every pair of chunks: one pass of ``N·M·d``
multiply-adds) in the same process. Rates are query·point·dim per CPU second (best of the
repeats). The exact field needs two such passes for ``d`` above the direct-path limit (the
distances and the weighted sum), so 50 % of the matmul rate is the ideal there; at ``d = 2``
the direct path does not multiply matrices at all. Peak memory: the process's peak resident
size minus its size just before the data were made, against the data's own size (one copy) and
the working set of one query chunk (the logits buffer, and the differences on the direct path,
or the query-sized arrays and augmented data rows on the matrix-product path).

**Truncation.** ``--topk-points`` float32 points in 3,072 dims near a 16-dimensional manifold
(close neighbours, as real images have), ``--queries`` states from the kernel around data
points at three times, for the Poisson (PFGM) and VE fields; for each ``top_k`` the time per
call, the largest relative drift error against the untruncated field, and the reported bound
on the neglected mass. (The first call of each time also warms the untruncated path.)

**Demo.** ``--demo [override ...]`` runs the README's exact-field demo,
``python sample.py physics=poisson dataset=toy2d network=exact solver=lms`` (plus any
overrides, e.g. ``--demo solver=heun``), into a temporary directory with torch's default
threads, and prints the command's wall and CPU time, the sampling time ``sample.py``
reports, and the sliced Wasserstein distance (sw) of the samples to the held-out points
beside that of as many training points (what a perfect sampler of the exact field gives).

**Smoothing.** ``--smoothing H [H ...]`` runs ``python sample.py physics=ve network=exact
solver=lms dataset=<--smoothing-data> network.smoothing=H`` for each ``H`` (the smoothed
closed-form field, :mod:`unified_ode.physics.smoothed`; toy2d or digits, whose images count as
64-d points) and prints sw to the held-out points and the median distance of a sample to its
nearest training point, beside the held-out points' own (the exact field of the points
reproduces them: distance near 0).

Timings depend on the machine's load: run it on a quiet machine (``--threads 1`` pins torch
to one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.physics import ExactPosterior, PoissonField, VEField  # noqa: E402
from unified_ode.physics.posterior import ATTENTION_MAX_DIM  # noqa: E402


def _rss() -> int:
    """Peak resident size of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


FIELDS = {"poisson": PoissonField, "ve": VEField}


def one(dim: int, points: int, queries: int, repeats: int, field_name: str = "poisson") -> dict:
    """Measure one (d, M) in this process; returns a JSON-able row."""
    field = FIELDS[field_name]()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(queries, dim, generator=g) * 2.0
    t = torch.full((queries,), 1.0)
    ExactPosterior(field, torch.rand(64, dim, generator=g))(x[:4], t[:4])  # warm the code
    base = _current_rss()
    data = torch.rand(points, dim, generator=g).mul_(2).sub_(1)  # in place: one copy
    model = ExactPosterior(field, data)
    model(x, t)
    best = math.inf
    for _ in range(repeats):  # CPU time of this process: robust to other processes' load
        start = time.process_time()
        model(x, t)
        best = min(best, time.process_time() - start)
    peak = _rss() - base
    # torch.mm over the same chunks, the same process
    qc, dc = model.query_chunk, model.data_chunk
    mm_best = math.inf
    for _ in range(repeats + 2):  # cheap, and the reference of every ratio: a steadier best
        start = time.process_time()
        for i in range(0, queries, qc):
            for j in range(0, points, dc):
                torch.mm(x[i:i + qc], data[j:j + dc].T)
        mm_best = min(mm_best, time.process_time() - start)
    work = queries * points * dim
    # one query chunk's working set: the logits buffer (reused by every data chunk) plus, on
    # the direct path, the differences (qc x d x dc); on the matrix-product path the (qc x d)
    # queries, their scaled copy, the accumulator and the output, and for d + 2 <= qc the
    # augmented data rows (dc x (d + 2)); the attention path: the query-sized arrays only
    elt = model.data.element_size()
    qn, cap = min(qc, queries), min(dc, points)
    path = "direct" if model.direct else "matmul"
    if not model.direct and model.attention and field.noise.delta_slope is not None \
            and dim <= ATTENTION_MAX_DIM:
        path = "attention"
    if path == "direct":
        working_set = qn * cap * elt * (1 + dim)
    elif path == "attention":
        working_set = 4 * qn * dim * elt
    else:
        working_set = (qn * cap + 4 * qn * dim + (cap * (dim + 2) if dim + 2 <= qn else 0)) * elt
    return {"field": field_name, "d": dim, "M": points, "N": queries,
            "dtype": str(model.dtype).split(".")[-1], "path": path, "seconds": best,
            "rate": work / best, "mm_rate": work / mm_best, "peak_bytes": peak,
            "data_bytes": data.numel() * data.element_size(), "chunk_bytes": working_set}


def truncation(points: int, queries: int, ks: list[int]) -> list[dict]:
    """Error and speed of top_k on 3,072-d data near a 16-d manifold."""
    g = torch.Generator().manual_seed(1)
    data = torch.empty(points, 3072)
    a = torch.randn(16, 3072, generator=g) / 4
    for j in range(0, points, 4096):  # no float64 copy of the data
        z = torch.randn(min(4096, points - j), 16, generator=g)
        data[j:j + z.shape[0]] = torch.tanh(z @ a)
    rows = []
    for field, t_val in [(f, t) for f in (PoissonField(), VEField()) for t in (0.05, 0.5, 5.0)]:
        t = torch.full((queries,), t_val)
        idx = torch.randint(0, points, (queries,), generator=g)
        x = field.sample_kernel(data[idx], t, generator=g)
        full_model = ExactPosterior(field, data)
        start = time.process_time()
        full = full_model.posterior_velocity(x, t).double()
        full_s = time.process_time() - start
        rows.append({"field": field.name, "t": t_val, "top_k": None, "seconds": full_s,
                     "error": 0.0, "bound": 0.0})
        for k in ks:
            model = ExactPosterior(field, data, top_k=k)
            start = time.process_time()
            out = model.posterior_velocity(x, t).double()
            seconds = time.process_time() - start
            err = float(((out - full).norm(dim=1) / full.norm(dim=1)).max())
            rows.append({"field": field.name, "t": t_val, "top_k": k, "seconds": seconds,
                         "error": err, "bound": model.neglected_mass_bound()})
    return rows


#: The README's exact-field demo (sample.py arguments).
DEMO = ["physics=poisson", "dataset=toy2d", "network=exact", "solver=lms"]


#: The smoothed closed-form field's comparison (``--smoothing``): VE, else the demo's
#: settings, on ``dataset=<--smoothing-data>``.
SMOOTH_DEMO = ["physics=ve", "network=exact", "solver=lms"]


def nearest_distances(a: torch.Tensor, b: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """Distance of each row of ``a`` ``(n, d)`` to its nearest row of ``b`` ``(m, d)``
    ``(n,)``, float64, ``rows`` rows of ``a`` at a time (memory ``rows × m``)."""
    b = b.double()
    return torch.cat([torch.cdist(a[i:i + rows].double(), b).min(dim=1).values
                      for i in range(0, a.shape[0], rows)])


def data_module(name: str):
    """The data module of ``dataset=<name>`` at its defaults (toy2d or digits)."""
    if name == "toy2d":
        from unified_ode.data.toy2d import Toy2DDataModule

        return Toy2DDataModule()
    if name == "digits":
        from unified_ode.data.images import DigitsDataModule

        return DigitsDataModule()
    raise ValueError(f"--smoothing-data {name!r}: choose toy2d or digits")


def demo(overrides: list[str], base: list[str] = DEMO, data: str = "toy2d") -> dict:
    """Run ``sample.py`` with ``base`` (:data:`DEMO`) and ``overrides`` in a fresh process
    (its progress bar on this stderr); returns times and sample quality: sw to the held-out
    points, and the median distance of a sample to its nearest training point (``nn``; 0 for
    a sampler that reproduces training points) beside that of the held-out points.
    ``data``: the data set the runs use (``base`` must name the same ``dataset=``)."""
    import numpy as np

    from unified_ode.metrics.points import sliced_wasserstein

    with tempfile.TemporaryDirectory(prefix="exact_demo_") as tmp:
        cmd = [sys.executable, "sample.py", *base, *overrides, f"out_dir={tmp}/out"]
        print("$ " + " ".join(["python", *cmd[1:-1]]), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"the demo failed (exit {proc.returncode}):\n{proc.stdout}")
        info = json.loads(Path(tmp, "out", "sample_info.json").read_text())
        samples = torch.from_numpy(np.load(Path(tmp, "out", "samples.npz"))["samples"])
    dm = data_module(data)  # the demo's data set (dataset.* overrides: sw is not theirs)
    held = dm.heldout().flatten(1)
    if samples.dtype == torch.uint8:  # images: sample.py stores uint8 (N, H, W, C)
        samples = samples.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    samples = samples.flatten(1)
    everything = dm.train_tensor().flatten(1)
    train = everything[: samples.shape[0]]
    return {"nn": float(nearest_distances(samples, everything).median()),
            "nn_heldout": float(nearest_distances(held[: samples.shape[0]], everything).median()),
            "wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime), "sampling_s": info["wall_seconds"],
            "nfe": info["nfe_per_batch"][0], "n": samples.shape[0],
            "sw": sliced_wasserstein(samples, held), "sw_train": sliced_wasserstein(train, held),
            "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64, 3072])
    p.add_argument("--fields", nargs="+", default=["poisson", "ve"], choices=sorted(FIELDS),
                   help="kernels of the throughput table (ve: Gaussian, the attention path)")
    p.add_argument("--points", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--topk-points", type=int, default=50000,
                   help="points of the truncation study (0: skip it)")
    p.add_argument("--topk", type=int, nargs="+", default=[1000, 100, 10])
    p.add_argument("--one", nargs=3, metavar=("FIELD", "D", "M"), help=argparse.SUPPRESS)
    p.add_argument("--demo", nargs="*", metavar="OVERRIDE",
                   help="run the README demo (sample.py overrides may follow) and print its "
                        "time and sw; torch's default threads")
    p.add_argument("--smoothing", type=float, nargs="+", metavar="H",
                   help="the smoothed closed-form field (network.smoothing=H), VE: sw and "
                        "nearest-training-point distance for each H")
    p.add_argument("--smoothing-data", default="toy2d", choices=["toy2d", "digits"])
    args = p.parse_args(argv)
    if args.smoothing:
        for h in args.smoothing:
            r = demo([f"dataset={args.smoothing_data}", f"network.smoothing={h}"],
                     base=SMOOTH_DEMO, data=args.smoothing_data)
            print(f"smoothing {h:g}: sw to held-out {r['sw']:.4f} (training points: "
                  f"{r['sw_train']:.4f}); median distance to the nearest training point "
                  f"{r['nn']:.2e} (held-out points: {r['nn_heldout']:.2e}); "
                  f"{r['cpu_s']:.1f} CPU-s", flush=True)
        return
    if args.demo is not None:
        r = demo(args.demo)
        print(f"demo: {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} CPU-s) for the command, "
              f"{r['sampling_s']:.1f} s sampling, NFE {r['nfe']}, n = {r['n']}, "
              f"{r['threads']} thread(s); sw to held-out {r['sw']:.4f} (training points: "
              f"{r['sw_train']:.4f})")
        return
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(int(args.one[1]), int(args.one[2]), args.queries, args.repeats,
                             args.one[0])))
        return
    print(f"exact field throughput, torch {torch.__version__}, {args.threads} thread(s), "
          f"N = {args.queries} queries, t = 1")
    print(f"{'field':>8} {'d':>5} {'M':>6} {'path':>9} {'dtype':>8} {'CPU-s/call':>10} "
          f"{'qpd/s':>9} {'mm qpd/s':>9} {'vs mm':>6} {'peak MB':>8} {'data MB':>8} "
          f"{'chunk MB':>8}")
    for name, dim, points in [(f, d, m) for f in args.fields for d in args.dims
                              for m in args.points]:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, str(dim), str(points), "--threads",
                 str(args.threads), "--queries", str(args.queries), "--repeats",
                 str(args.repeats)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name:>8} {dim:>5} {points:>6} failed: {proc.stderr.strip()[-300:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mb = 2**20
            print(f"{r['field']:>8} {r['d']:>5} {r['M']:>6} {r['path']:>9} {r['dtype']:>8} "
                  f"{r['seconds']:>10.3f} {r['rate']:>9.2e} {r['mm_rate']:>9.2e} "
                  f"{r['rate'] / r['mm_rate']:>6.0%} {r['peak_bytes'] / mb:>8.1f} "
                  f"{r['data_bytes'] / mb:>8.1f} {r['chunk_bytes'] / mb:>8.1f}", flush=True)
    if args.topk_points:
        print(f"\ntop_k on {args.topk_points} x 3072 (16-d manifold), {args.queries} queries")
        print(f"{'field':>8} {'t':>5} {'top_k':>6} {'CPU-s/call':>10} {'max rel err':>12} "
              f"{'mass bound':>11}")
        for r in truncation(args.topk_points, args.queries, args.topk):
            k = "all" if r["top_k"] is None else r["top_k"]
            print(f"{r['field']:>8} {r['t']:>5g} {k:>6} {r['seconds']:>10.3f} {r['error']:>12.1e} "
                  f"{r['bound']:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
