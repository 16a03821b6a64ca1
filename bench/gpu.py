"""GPU readiness: training and sampling throughput of the CIFAR-10 EDM setup, in one short run.

    python bench/gpu.py                 # on a GPU: ≤ ~8 minutes, prints a table (and --out)
    python bench/gpu.py --dry-run       # a tiny network, a few steps, on the CPU (tests)

Measured (synthetic data of CIFAR-10's shape ``(3, 32, 32)``, so no data set is needed):

1. **training throughput** (images/s) of the project's own training step —
   ``GenerativeODE.training_step`` on ``experiment=cifar10_edm``'s model (DDPM++, EDM
   preconditioning and loss) with Adam — against a **bare EDM-style loop** on the same network
   object (σ ~ lognormal, ``D = c_skip x + c_out F(c_in x, c_noise)``, weight ``1/c_out²``,
   written here in a dozen lines). Both under bf16 autocast (CUDA) and ``channels_last``; the
   ratio shows what the framework's layers cost;
2. **sampling throughput** (images/s) at NFE 10 (``ipndm``) and NFE 35 (``heun``, 18 steps).

Timings exclude ``--warmup`` iterations. No GPU was lent while this was written: the table in
docs/solver_benchmark.md comes from ``--dry-run`` only until someone runs it on a GPU.
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

from unified_ode.app.build import build_field, build_objective, build_solver  # noqa: E402
from unified_ode.lit.module import GenerativeODE  # noqa: E402
from unified_ode.networks.precond import Preconditioned  # noqa: E402
from unified_ode.solvers import IPNDM, Heun  # noqa: E402

SHAPE = (3, 32, 32)


def compose(dry_run: bool):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = ["experiment=cifar10_edm"]
    if dry_run:
        overrides += ["network.model_channels=16", "network.num_blocks=1",
                      "network.channel_mult=[1,2]", "network.attn_resolutions=[16]"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def build(cfg, device):
    from hydra.utils import instantiate

    field = build_field(cfg)
    objective, param = build_objective(cfg, field)
    net = instantiate(cfg.network, data_shape=list(SHAPE))
    model = Preconditioned(net, param, sigma_data=0.5)
    module = GenerativeODE(field, model, objective, build_solver(cfg), data_shape=SHAPE)
    return module.to(device=device, memory_format=torch.channels_last), net


def timed(fn, iters: int, warmup: int, device) -> float:
    """Seconds per iteration of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def autocast(device):
    dtype = torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_ours(module, batch: int, device):
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    y = torch.randn(batch, *SHAPE, device=device).contiguous(memory_format=torch.channels_last)

    def step():
        with autocast(device):
            loss = module.objective(module.model, module.field, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_bare(net, batch: int, device, p_mean=-1.2, p_std=1.2, sd=0.5):
    """EDM's loss on the bare network, no framework layers."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    y = torch.randn(batch, *SHAPE, device=device).contiguous(memory_format=torch.channels_last)

    def step():
        sigma = torch.exp(p_mean + p_std * torch.randn(batch, device=device))
        s = sigma.view(-1, 1, 1, 1)
        x = y + s * torch.randn_like(y)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        with autocast(device):
            f = net(c_in * x, torch.log(sigma) / 4)
        d = c_skip * x + c_out * f.float()
        loss = ((d - y) ** 2 / c_out**2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def sample_step(module, solver, batch: int, device):
    x = module.field.sample_prior(batch, SHAPE, device=device)

    def run():
        with torch.no_grad(), autocast(device):
            solver.solve(module.flow(), x, solver.time_grid(module.field))

    return run


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny network, batch 4, 1 timed iteration (CPU is fine)")
    parser.add_argument("--batch", type=int, default=128, help="training batch")
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the table to this .md file")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        args.batch, args.sample_batch, args.iters, args.warmup = 4, 4, 1, 1
    elif device.type != "cuda":
        print("no GPU: run with --dry-run on a CPU (the full sizes would take hours)")
        return []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = compose(args.dry_run)
    module, net = build(cfg, device)
    params = sum(p.numel() for p in net.parameters())
    rows = []
    for name, step in (("train: ours (GenerativeODE objective)", train_ours(module, args.batch,
                                                                              device)),
                       ("train: bare EDM loop", train_bare(net, args.batch, device))):
        sec = timed(step, args.iters, args.warmup, device)
        rows.append((name, args.batch, args.batch / sec, sec))
    for name, solver in (("sample: ipndm NFE 10", IPNDM(steps=10)),
                         ("sample: heun NFE 35", Heun(steps=18))):
        sec = timed(sample_step(module, solver, args.sample_batch, device),
                    max(1, args.iters // 10), 1, device)
        rows.append((name, args.sample_batch, args.sample_batch / sec, sec))
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [f"GPU readiness ({dev}, {params:,} parameters"
             f"{', dry run' if args.dry_run else ''}; bf16 autocast, channels_last)", "",
             "| what | batch | images/s | s/iteration |", "|---|---|---|---|"]
    lines += [f"| {n} | {b} | {ips:.1f} | {sec:.4f} |" for n, b, ips, sec in rows]
    ratio = rows[0][2] / rows[1][2]
    lines += ["", f"ours / bare training throughput: {ratio:.2f}"]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    assert all(math.isfinite(r[2]) and r[2] > 0 for r in rows)
    return rows


if __name__ == "__main__":
    main()
