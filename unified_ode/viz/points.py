"""Figures: generated samples over the data, with their trajectories (field lines).

Uses matplotlib's non-interactive Agg backend; every function writes a PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _np(x):
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x)


def plot_points_with_trajectories(path, data, samples, trajectory=None, trajectory_times=None,
                                  title: str = "", n_lines: int = 64):
    """Write a two-panel PNG.

    Left: ``data`` ``(M, 2)`` (grey) and ``samples`` ``(N, 2)`` (blue), with the planar paths of
    ``n_lines`` samples from ``trajectory`` ``(K, N, 2)``. Right: the same paths as field lines
    in the ``(t, x_1)`` half-space, ``t`` on a log axis, from the prior (right) to the data
    (left). Axes are fixed to the data's range, so far-away prior points leave the frame.
    """
    data, samples = _np(data), _np(samples)
    lo, hi = data.min(0), data.max(0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    fig, axes = plt.subplots(1, 2 if trajectory is not None else 1,
                             figsize=(11 if trajectory is not None else 5.5, 5), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.6", alpha=0.5, label="data", rasterized=True)
    ax.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:blue", alpha=0.6, label="samples",
               rasterized=True)
    if trajectory is not None:
        traj = _np(trajectory)[:, :n_lines]
        for j in range(traj.shape[1]):
            ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.6, c="tab:orange", alpha=0.7)
        ax.plot([], [], c="tab:orange", label="trajectories")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    ax.set_title(title or "samples over data")
    if trajectory is not None:
        ax = axes[0, 1]
        traj = _np(trajectory)[:, :n_lines]
        times = _np(trajectory_times)
        keep = times > 0
        for j in range(traj.shape[1]):
            ax.plot(times[keep], traj[keep, j, 0], lw=0.6, c="tab:orange", alpha=0.7)
        t_end = times[keep].min() if keep.any() else 1e-3
        ax.scatter(np.full(min(len(data), 500), t_end), data[:500, 0], s=2, c="0.4",
                   label="data (x₁)")
        ax.set_xscale("log")
        ax.set_ylim(lo[0] - 2 * pad[0], hi[0] + 2 * pad[0])
        ax.set_xlabel("t (log scale)")
        ax.set_ylabel("x₁")
        ax.set_title("field lines in the (t, x₁) half-space")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
