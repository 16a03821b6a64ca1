"""The sample figures of the toy data sets: per field, the teacher at NFE 35 and 2 and the
students at NFE 1 (``docs/distillation_<data set>.png``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import FIELDS, TOY


def figures(results, out: Path, docs: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for dataset in TOY:
        found = {p.name: p for p in out.rglob("samples/*.pt")}
        fields = [f for f in FIELDS if f"{dataset}_{f}_teacher_35.pt" in found]
        if not fields:
            continue
        cols = [("teacher_35", "teacher NFE 35"), ("teacher_2", "teacher NFE 2"),
                ("reflow_1", "reflow NFE 1"), ("consistency_1", "consistency NFE 1")]
        fig, axes = plt.subplots(len(fields), len(cols), figsize=(3 * len(cols), 3 * len(fields)),
                                 squeeze=False)
        for i, f in enumerate(fields):
            for j, (tag, title) in enumerate(cols):
                ax = axes[i, j]
                p = found.get(f"{dataset}_{f}_{tag}.pt")
                if p is not None:
                    x = torch.load(p, weights_only=True)
                    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
                    ev = results["evals"].get(f"{dataset}/{f}/{tag.replace('_', '/')}")
                    if ev:
                        title = f"{title}\nsw={ev['score']:.3f}"
                ax.set_title(f"{f}: {title}", fontsize=8)
                ax.set_xlim(-3, 3)
                ax.set_ylim(-3, 3)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        paths[dataset] = docs / f"distillation_{dataset}.png"
        fig.savefig(paths[dataset], dpi=80)
        plt.close(fig)
    return paths
