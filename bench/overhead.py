"""Framework overhead: our LightningModule against a bare PyTorch loop, same work, one run.

    python bench/overhead.py                                   # toy2d MLP and digits U-Net
    python bench/overhead.py --setups toy2d --steps 300 --rounds 5
    python bench/overhead.py --setups loop --steps 300 --rounds 4   # the loop's fixed cost
    python bench/overhead.py --variants --setups loop toy2d --rounds 5   # Lightning's options

For each setup (a list of config overrides, composed exactly as ``train.py`` composes them):

* **training step** — the same network, objective, Adam settings, learning-rate warm-up,
  gradient clipping and the same pre-loaded batches, trained for ``--steps`` optimiser steps
  (a) by a Lightning ``Trainer`` fitting our ``GenerativeODE`` (no logger, no checkpoints, no
  progress bar, no callbacks: the framework's own cost, not that of the services one turns on),
  and (b) by a hand-written loop: ``loss = objective(model, field, y); backward; clip; step;
  scheduler.step``. The time per step is measured between the end of a warm-up step and the
  end of the last step, so start-up (process groups, data loader workers, the first
  allocations) is excluded from both.
* **sampling call** — ``GenerativeODE.sample`` (solver from the config: our ``Heun`` with its
  NFE bookkeeping, EMA switch, eval mode) against a bare Heun loop calling
  ``parametrisation.drift(x, t, model(x, t))`` on the same grid and prior states.

Times are CPU seconds of this process (``time.process_time``), with one torch thread by
default (``--threads``): on a shared machine, other processes' load changes wall-clock times
far more than CPU times. The two sides alternate for ``--rounds`` rounds (which one goes first
alternates too) and the table shows medians; the ratio is ours / bare (1.00 = no overhead),
next to the range of the rounds' paired ratios, which says how far the noise reaches, and a
95 % bootstrap interval of the training-step ratio (rounds resampled with replacement): CPU
time per step moves by up to ±10 % from one ``Trainer.fit`` to the next on this 2-core VM, so
a ratio within a few per cent of 1 needs many rounds (``--rounds 12`` or more).
Targets (issue 15): ≤ 1.02 for training steps, ≤ 1.05 for sampling.

``--variants``: the training step only, bare loop against four Lightning set-ups of the same
work: ours (as above), ours under ``Trainer(barebones=True)``, and the same loss, optimiser and
clipping under Lightning's manual optimisation (:func:`manual_module`), with and without
barebones — how much of Lightning's fixed cost per step its own options remove.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETUPS = {
    "toy2d": [],  # the default run: MLP on the checkerboard, batch 4096
    "digits": ["experiment=digits_poisson"],  # unet_small on 8x8 digits, batch 64
    # a near-empty step (width-8 MLP, batch 8): ours minus bare is the loop's fixed cost
    "loop": ["network.width=8", "network.depth=1", "network.time_embed_dim=8",
             "dataset.batch_size=8"],
}
TRAIN_TARGET, SAMPLE_TARGET = 1.02, 1.05
#: The clock of every measurement: CPU time of this process (all its threads).
clock = time.process_time


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides,
                             return_hydra_config=True)


def fixed_batches(datamodule, n: int) -> list[torch.Tensor]:
    """``n`` training batches, drawn once, so both loops see the same tensors."""
    datamodule.setup("fit")
    out: list[torch.Tensor] = []
    while len(out) < n:
        for batch in datamodule.train_dataloader():
            out.append((batch[0] if isinstance(batch, (list, tuple)) else batch).clone())
            if len(out) == n:
                break
    return out


class _StepClock:
    """Lightning callback: CPU time from the end of step ``warmup`` to the end of training."""

    def __init__(self, warmup: int):
        import lightning as L

        class Clock(L.Callback):
            def on_train_batch_end(cb, trainer, *args):  # noqa: N805
                if trainer.global_step == warmup:
                    self.start = clock()

            def on_train_end(cb, trainer, pl_module):  # noqa: N805
                self.stop = clock()

        self.callback = Clock()
        self.start = self.stop = None


#: Lightning set-ups of ``--variants`` (besides ours: our module, automatic optimisation):
#: how much of the loop's fixed cost per step Lightning's own options remove.
VARIANTS = ("ours", "barebones", "manual", "manual+barebones")


def lightning_steps(module, batches, warmup: int, clip, variant: str = "ours") -> float:
    """CPU seconds per optimiser step of a Lightning ``Trainer`` fitting ``module`` (or, for
    the ``manual`` variants, :func:`manual_module` around it); ``barebones``: the Trainer's
    ``barebones=True`` mode (no logging machinery at all: for measuring, not for runs)."""
    import lightning as L
    from torch.utils.data import DataLoader

    clock = _StepClock(warmup)
    manual = variant.startswith("manual")
    quiet = ({"barebones": True} if variant.endswith("barebones") else
             {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False, "num_sanity_val_steps": 0})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches),
                        callbacks=[clock.callback], **quiet,
                        **({} if manual else {"gradient_clip_val": clip,
                                              "gradient_clip_algorithm": "norm"}))
    if manual:
        module = manual_module(module, clip)
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return (clock.stop - clock.start) / (len(batches) - warmup)


def manual_module(module, clip):
    """A LightningModule that trains ``module``'s model with the same loss, optimiser,
    scheduler and clipping under Lightning's *manual* optimisation (no optimiser closure)."""
    import lightning as L

    class ManualStep(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.inner = module
            self.automatic_optimization = False

        def configure_optimizers(self):
            return module.configure_optimizers()

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = module.objective(module.model, module.field, batch)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if clip:
                self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt.step()
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()

    return ManualStep()


def bare_steps(module, batches, warmup: int, clip) -> float:
    """The hand-written loop, with the optimiser and scheduler our module configures."""
    model, field, objective = module.model, module.field, module.objective
    conf = module.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    sched = conf["lr_scheduler"]["scheduler"] if isinstance(conf, dict) else None
    model.train()
    start = None
    for i, y in enumerate(batches, start=1):
        loss = objective(model, field, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        if i == warmup:
            start = clock()
    return (clock() - start) / (len(batches) - warmup)


def bare_heun(model, field, x, times) -> torch.Tensor:
    drift = model.parametrisation.drift
    with torch.no_grad():
        for i in range(len(times) - 1):
            t0, t1 = times[i], times[i + 1]
            h = float(t1 - t0)
            t0b = t0.expand(x.shape[0])
            d = drift(x, t0b, model(x, t0b))
            x_next = x + h * d
            if float(t1) != 0:
                tb = t1.expand(x.shape[0])
                x_next = x + 0.5 * h * (d + drift(x_next, tb, model(x_next, tb)))
            x = x_next
    return x


class TrainingBench:
    """One setup's module and fixed batches, and the training step timed on any side: the
    bare loop (``"bare"``) or a Lightning variant (:data:`VARIANTS`), each from the same
    initial weights and seed."""

    def __init__(self, overrides: list[str], steps: int, warmup: int):
        from unified_ode.app.build import build_module

        cfg = compose(overrides + [f"trainer.max_steps={steps}"])
        self.module, dm = build_module(cfg)
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.batches = fixed_batches(dm, steps)
        self.warmup = warmup
        self.initial = copy.deepcopy(self.module.state_dict())

    def seconds_per_step(self, side: str) -> float:
        torch.manual_seed(0)
        self.module.load_state_dict(self.initial)
        self.module.train()  # sampling may have left it in eval mode
        if side == "bare":
            return bare_steps(self.module, self.batches, self.warmup, self.clip)
        return lightning_steps(self.module, self.batches, self.warmup, self.clip, side)


def measure(name: str, overrides: list[str], steps: int, warmup: int, rounds: int,
            n_samples: int, sample_repeats: int = 5) -> dict:
    bench = TrainingBench(overrides, steps, warmup)
    module, batches = bench.module, bench.batches
    x_T = module.sample_prior(n_samples, generator=torch.Generator().manual_seed(0))
    times = module.solver.time_grid(module.field).to(x_T.dtype)

    ours_t, bare_t, ours_s, bare_s = [], [], [], []
    for r in range(rounds):
        # the side that goes first alternates, so that neither gains from warm caches or
        # allocator state left by the other
        for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
            (ours_t if which == "ours" else bare_t).append(bench.seconds_per_step(which))
        module.eval()
        # a sampling call is short (~0.25 s for toy2d): each round times `sample_repeats`
        # alternating pairs of calls and keeps the median of each side
        per_call = {"ours": [], "bare": []}
        for k in range(sample_repeats):
            for which in (("ours", "bare") if (r + k) % 2 == 0 else ("bare", "ours")):
                start = clock()
                if which == "ours":
                    res = module.sample(x_T=x_T, ema=False)
                else:
                    x_bare = bare_heun(module.model, module.field, x_T, times)
                per_call[which].append(clock() - start)
        ours_s.append(statistics.median(per_call["ours"]))
        bare_s.append(statistics.median(per_call["bare"]))
        if not torch.allclose(res.x, x_bare, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{name}: the bare Heun loop does not reproduce sample(); the "
                               "comparison would not be like for like")
    med = statistics.median
    return {"setup": name, "overrides": " ".join(overrides) or "(defaults)",
            "batch": int(batches[0].shape[0]), "params": module.num_parameters(),
            "train_ours_ms": 1e3 * med(ours_t), "train_bare_ms": 1e3 * med(bare_t),
            "sample_ours_s": med(ours_s), "sample_bare_s": med(bare_s), "nfe": res.nfe,
            "train_ratios": [o / b for o, b in zip(ours_t, bare_t)],
            "train_ours_rounds": ours_t, "train_bare_rounds": bare_t,
            "sample_ratios": [o / b for o, b in zip(ours_s, bare_s)],
            "n_samples": n_samples}


def measure_variants(name: str, overrides: list[str], steps: int, warmup: int,
                     rounds: int) -> dict:
    """CPU ms per training step of the bare loop and of each Lightning variant
    (:data:`VARIANTS`), alternated over ``rounds`` rounds (the order rotates); medians."""
    bench = TrainingBench(overrides, steps, warmup)
    sides = ("bare", *VARIANTS)
    times: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(rounds):
        for which in sides[r % len(sides):] + sides[:r % len(sides)]:
            times[which].append(bench.seconds_per_step(which))
    return {"setup": name, "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()}}


def variants_table(rows: list[dict]) -> list[str]:
    lines = ["| setup | bare loop (CPU ms/step) | " + " | ".join(
        f"{v} (ms; − bare)" for v in VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    for r in rows:
        bare = r["ms"]["bare"]
        lines.append(f"| {r['setup']} | {bare:.2f} | " + " | ".join(
            f"{r['ms'][v]:.2f}; {r['ms'][v] - bare:+.2f} ({r['ms'][v] / bare:.3f}×)"
            for v in VARIANTS) + " |")
    return lines


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", nargs="*", default=["toy2d", "digits"], choices=list(SETUPS))
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per timing")
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded from timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating repetitions")
    parser.add_argument("--samples", type=int, default=1000, help="samples per sampling call")
    parser.add_argument("--sample-repeats", type=int, default=5,
                        help="alternating sampling calls per side and round (median kept)")
    parser.add_argument("--variants", action="store_true",
                        help="instead: the training step under Lightning's own options "
                             "(barebones Trainer, manual optimisation) against the bare loop")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")

    command = "python bench/overhead.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:]
                                            else "")
    if args.variants:
        rows = [measure_variants(s, SETUPS[s], args.steps, args.warmup, args.rounds)
                for s in args.setups]
        print(f"\n`{command}` — CPU time per training step, {torch.get_num_threads()} torch "
              f"thread(s), medians of {args.rounds} rounds\n")
        print("\n".join(variants_table(rows)))
        return rows
    rows = [measure(s, SETUPS[s], args.steps, args.warmup, args.rounds, args.samples,
                    args.sample_repeats)
            for s in args.setups]
    print(f"\n`{command}` — CPU time, {torch.get_num_threads()} torch thread(s), medians of "
          f"{args.rounds} alternating rounds, {args.steps - args.warmup} timed steps each\n")
    print("\n".join(table(rows)))
    return rows


def table(rows: list[dict]) -> list[str]:
    """The markdown table of :func:`measure`'s rows (also used by bench/case_study.py)."""
    lines = ["| setup | params | batch | train step: ours / bare (CPU ms) | ratio | "
             "per-round ratios | 95 % interval | sampling: ours / bare (CPU s) | ratio | "
             "per-round ratios |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = r["train_ours_ms"] / r["train_bare_ms"]
        sr = r["sample_ours_s"] / r["sample_bare_s"]
        lines.append(
            f"| {r['setup']} (`{r['overrides']}`) | {r['params']:,} | {r['batch']} | "
            f"{r['train_ours_ms']:.2f} / {r['train_bare_ms']:.2f} | {tr:.3f}"
            f"{'' if tr <= TRAIN_TARGET else f' (target ≤ {TRAIN_TARGET} missed)'} | "
            f"{spread(r['train_ratios'])} | {interval(r)} | "
            f"{r['sample_ours_s']:.3f} / {r['sample_bare_s']:.3f} "
            f"({r['n_samples']} samples, NFE {r['nfe']}) | {sr:.3f}"
            f"{'' if sr <= SAMPLE_TARGET else f' (target ≤ {SAMPLE_TARGET} missed)'} | "
            f"{spread(r['sample_ratios'])} |")
    return lines


def interval(row: dict, resamples: int = 2000, seed: int = 0) -> str:
    """A 95 % bootstrap interval of the training-step ratio (median of ours / median of bare):
    the rounds' paired times resampled with replacement; "–" without the per-round times."""
    ours, bare = row.get("train_ours_rounds"), row.get("train_bare_rounds")
    if not ours or len(ours) < 2:
        return "–"
    rng = random.Random(seed)
    med, n = statistics.median, len(ours)
    stats = sorted(med([ours[i] for i in pick]) / med([bare[i] for i in pick])
                   for pick in ([rng.randrange(n) for _ in range(n)] for _ in range(resamples)))
    return f"{stats[int(0.025 * resamples)]:.3f}–{stats[int(0.975 * resamples) - 1]:.3f}"


def spread(ratios: list[float]) -> str:
    """The paired ours/bare ratios of the rounds, lowest to highest."""
    return f"{min(ratios):.3f}–{max(ratios):.3f}"


if __name__ == "__main__":
    main()
