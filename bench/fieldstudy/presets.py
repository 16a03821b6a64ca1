"""What is compared and how much each field gets: the fields with their search spaces, the
image leg (8×8 digits) and the presets (``smoke``, ``small``, ``medium``, ``full``).

A field's search space is a list of knobs ``(override key, kind, low, high)`` (``kind``:
``log`` / ``float`` for a range, ``cat`` for a list of choices in ``low``). Every field tunes
the same common knobs (learning rate, EMA half-life, the training-time law ``ln σ ~
N(p_mean, p_std²)``, ``t_max`` in its own range) plus its own field parameters. The fixed
overrides pin what is not tuned (PFGM++'s ``D = 128`` is the baseline issue 17 names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMMON = [
    ("optim.lr", "log", 5e-4, 8e-3),
    ("callbacks.ema.half_life_images", "log", 1e4, 1e6),
    ("physics.train_p_mean", "float", -2.0, 0.5),
    ("physics.train_p_std", "float", 0.8, 2.0),
]


@dataclass(frozen=True)
class FieldSpec:
    """A compared field: its fixed train.py overrides and its own knobs (after COMMON)."""
    name: str
    overrides: tuple[str, ...]
    knobs: tuple = ()
    #: True for fields built with the unified method (candidates for issue 17's target).
    new: bool = False

    def space(self) -> list:
        return [*COMMON, *self.knobs]


FIELDS = {
    "ve": FieldSpec("ve", ("physics=ve",), (("physics.t_max", "log", 5.0, 160.0),)),
    "pfgmpp_D128": FieldSpec("pfgmpp_D128", ("physics=pfgmpp", "physics.D=128"),
                             (("physics.t_max", "log", 5.0, 160.0),)),
    "poisson": FieldSpec("poisson", ("physics=poisson",),
                         (("physics.t_max", "log", 10.0, 400.0),)),
    "radial": FieldSpec("radial", ("physics=radial",),
                        (("physics.t_max", "log", 20.0, 400.0),
                         ("physics.profile", "cat", ("tanh", "exp"), None)), new=True),
    "exppower": FieldSpec("exppower", ("physics=exppower",),
                          (("physics.t_max", "log", 5.0, 160.0),
                           ("physics.beta", "log", 0.5, 8.0)), new=True),
}
#: the classics the target names: a new field must beat both
BASELINES = ("ve", "pfgmpp_D128")

TOY_NETWORK = ("network=mlp", "network.width=128", "network.depth=3")

#: the image data set of the study (scikit-learn's 8×8 digits, offline)
DIGITS = "digits"


@dataclass(frozen=True)
class ImageLeg:
    """Budgets and scoring of the digits leg (its own network and step counts; the tuning
    budget is still identical for every field). ``n``: generated images per sampling setting
    (FID/KID/precision/recall); the reference is one seeded half of all 1,797 digits and the
    floor is the other half against it (``ref_n``: fewer of each, for a pipeline check);
    ``extractor``: ``inception`` (the standard FID network) or ``random`` (untrained conv
    features, a seconds-long pipeline check only); ``n_val``: held-out images of the tuning
    objective (the rest of the held-out split is the test set of the final bits/dim)."""
    network: tuple[str, ...] = ("network=mlp", "network.width=256", "network.depth=3")
    extra: tuple[str, ...] = ("dataset.batch_size=128",)
    trial_steps: int = 400
    final_steps: int = 2000
    n: int = 1000
    ref_n: int | None = None
    extractor: str = "inception"
    n_val: int = 90
    kid_subset_size: int = 500


@dataclass
class Preset:
    """Budgets of one study. ``trials`` × ``trial_steps``: the tuning budget per field and
    data set (identical for every field); ``seeds`` × ``final_steps``: the retraining of
    each field's best setting; ``n``: generated samples scored per sampling setting (and the
    size of the reference and floor draws; sliced W2 uses all of them, MMD and precision/recall
    the first ``n_heavy``); ``nll_n`` / ``tune_nll_n``: held-out points of
    the bits/dim (final / tuning)."""
    name: str
    datasets: tuple[str, ...]
    fields: tuple[str, ...]
    trials: int
    trial_steps: int
    seeds: tuple[int, ...]
    final_steps: int
    n: int
    nll_n: int
    tune_nll_n: int
    network: tuple[str, ...] = TOY_NETWORK
    #: overrides of every toy run (the batch the committed page was trained with, pinned so
    #: that a change of the default run's batch does not change the study)
    extra: tuple[str, ...] = ("dataset.batch_size=512",)
    #: sampling settings: (label, solver, steps); NFE ≤ 10 and ≤ 35 budgets
    cells: tuple = (("nfe10", "dpmpp2m", 10), ("nfe35", "heun", 18))
    #: points of MMD and precision/recall (the first ``n_heavy`` of the ``n``; None: all):
    #: their cost grows like n², sw's like n log n
    n_heavy: int | None = None
    diag_n: int = 1000
    notes: str = ""
    tune_seed: int = 0
    #: the digits leg's budgets (used when ``"digits"`` is among the data sets)
    image: ImageLeg = field(default_factory=ImageLeg)
    #: tail indices of the exppower slice (bench/fieldstudy/sweep.py); empty: no slice
    beta_sweep: tuple[float, ...] = ()

    def steps(self, dataset: str) -> tuple[int, int]:
        """``(trial_steps, final_steps)`` on ``dataset``."""
        if dataset == DIGITS:
            return self.image.trial_steps, self.image.final_steps
        return self.trial_steps, self.final_steps


TOYS = ("checkerboard", "eight_gaussians", "moons")
ALL_DATA = (*TOYS, DIGITS)
#: the exppower slice of the medium and full presets (2 = VE)
BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)

PRESETS = {
    "smoke": Preset("smoke", ("checkerboard", DIGITS), ("ve", "exppower"), trials=1, trial_steps=10,
                    seeds=(0, 1), final_steps=10, n=400, n_heavy=300, nll_n=40,
                    tune_nll_n=40,
                    network=("network=mlp", "network.width=32", "network.depth=1"),
                    extra=("dataset.n_train=2048", "dataset.batch_size=128"), diag_n=100,
                    image=ImageLeg(network=("network=mlp", "network.width=32",
                                            "network.depth=1"),
                                   trial_steps=10, final_steps=10, n=48, ref_n=48,
                                   extractor="random", n_val=12, kid_subset_size=24),
                    beta_sweep=(1.0, 2.0),
                    notes="a pipeline check (seconds), not a measurement"),
    "small": Preset("small", TOYS, tuple(FIELDS), trials=3, trial_steps=120, seeds=(0, 1, 2),
                    final_steps=250, n=10_000, nll_n=500, tune_nll_n=200,
                    diag_n=500,
                    notes="the toy sets only, sized for ~4 CPU-minutes of one core per data "
                    "set"),
    "medium": Preset("medium", ALL_DATA, tuple(FIELDS), trials=6,
                     trial_steps=300, seeds=(0, 1, 2),
                     final_steps=1000, n=10_000, nll_n=1000, tune_nll_n=300,
                     diag_n=1000, beta_sweep=BETAS,
                     notes="6 tuning trials (5 random, then TPE) per field and data set; "
                     "measured from scratch in one invocation on the 2 cores, 2026-12-02: "
                     "`--jobs 2` took 83 min wall (10:25–11:47; the machine otherwise idle but "
                     "for one 20-second profile) and 163 CPU-minutes (126 user, 36 system)"),
    "full": Preset("full", ALL_DATA, tuple(FIELDS), trials=12, trial_steps=400, seeds=(0, 1, 2),
                   final_steps=1500, n=10_000, nll_n=2000, tune_nll_n=500, beta_sweep=BETAS,
                   notes="not run: twice the medium tuning trials, 1.5× its training steps and "
                   "twice its likelihood points; estimated from medium's measured 163 "
                   "CPU-minutes at about twice that (~5.5 CPU-hours, ~3 hours wall with "
                   "--jobs 2), too close to a 3-hour session on 2 cores to fit one"),
}
