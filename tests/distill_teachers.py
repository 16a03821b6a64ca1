"""Teachers and data shared by the distillation tests: exact teachers of tiny data sets (no
training), the old-layout PFGM fixture run (tests/fixtures/runs_v0/pfgm: 4 steps of a width-16
MLP) as a trained teacher, the part of a data module a method reads, and the overrides of the
end-to-end student runs."""

from __future__ import annotations

from pathlib import Path

import torch

from unified_ode.distill import Teacher
from unified_ode.parametrisation import ProbabilityFlow

F64 = torch.float64
FIXTURE = Path(__file__).parent / "fixtures" / "runs_v0" / "pfgm"
#: the fixture teacher's network (the student's, for init_from_teacher)
SMALL_NET = ["network.width=16", "network.depth=1", "network.time_embed_dim=8"]

# end-to-end students (train.py -> sample.py)
TINY = ["trainer.max_steps=30", "dataset.n_train=1024", "dataset.batch_size=128",
        "callbacks.metrics.n_samples=256", "trainer.val_check_interval=30",
        "callbacks.checkpoint.every_n_train_steps=30", *SMALL_NET]


class TrainData:
    """The part of a data module that a distillation method reads."""

    def __init__(self, data):
        self.data_shape = tuple(data.shape[1:])
        self._data = data

    def train_tensor(self):
        return self._data


def exact_teacher(field, data) -> Teacher:
    return Teacher(ProbabilityFlow.exact(field, data), key="exact-test", source="exact",
                   weights="exact")


def tiny_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64)
