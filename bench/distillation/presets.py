"""What the distillation benchmark runs: the toy data sets, the fields and their overrides, the
low NFEs, the teacher's low-NFE solvers, and the training overrides per data kind.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TOY = ("checkerboard", "moons", "eight_gaussians")
FIELDS = {"poisson": ["physics=poisson"], "pfgmpp": ["physics=pfgmpp", "physics.D=128"],
          "ve": ["physics=ve"], "linear": ["physics=linear"]}
LOW_NFE = (1, 2, 4)
TEACHER_SOLVERS = ("euler", "dpmpp2m")
QUIET = ["~callbacks.metrics", "~callbacks.best", "~callbacks.figures", "~callbacks.progress",
         "logger=csv", "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false"]


def presets(args) -> dict:
    """Overrides per data kind: ``teacher``, ``student`` (both methods), ``reflow``,
    ``consistency``."""
    toy = {
        "teacher": ["dataset.n_train=20000", "network.width=128", "network.depth=3",
                    "dataset.batch_size=256", "optim.lr=3e-3",
                    f"trainer.max_steps={args.teacher_steps}",
                    "callbacks.checkpoint.every_n_train_steps=500"],
        "student": [f"trainer.max_steps={args.student_steps}", "optim.lr=1e-3",
                    "lr_warmup_steps=50"],
        "reflow": [f"distill.pairs={args.pairs}", "distill.chunk=2000"],
        "consistency": ["distill.intervals=18"],
    }
    digits = {
        "teacher": ["experiment=digits_" + "{field}", f"trainer.max_steps={args.teacher_steps}",
                    "callbacks.checkpoint.every_n_train_steps=500"],
        "student": [f"trainer.max_steps={args.student_steps}", "optim.lr=1e-3",
                    "lr_warmup_steps=50"],
        "reflow": [f"distill.pairs={args.pairs}", "distill.chunk=500"],
        "consistency": ["distill.intervals=18"],
    }
    return {"toy": toy, "digits": digits}
