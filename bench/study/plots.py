"""The report's figures, readable at a glance.

* ``<stem>_overview.png`` — one panel per data set: the best solver's metric vs NFE for every
  field (★: the adaptive solver).
* ``<stem>_solvers.png`` — one panel per data set: the metric vs NFE of each solver on the
  data set's best field (one trained model, the solvers compared).
* ``<stem>_<data set>_nfe.png`` — per data set, one panel per solver (and the best solver).
* ``<stem>_<data set>_probes.png`` — the two robustness probes.
* ``<stem>_<data set>_trajectories.png`` / ``_samples.png`` — each field's samples.

Every field has one style in every figure: a hue per field family (PFGM/PFGM++ blue,
diffusion orange, rectified flow green, radial purple), a shade and a marker per member. A
field whose values diverge (its median over ``CLIP`` × the panel's typical value) does not
stretch the axis: its points above the others are drawn on the top edge as ▲ and the panel's
title names it with its largest value.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from .plan import Study, budgets, figure_file, first_seed, grid_key
from .probes import euler_key, noise_key, probed
from .results import best_cell, findings, primary_of, summary
from .util import fmt

CLIP = 5.0  # a series diverges when its median exceeds CLIP × the median of the medians
#: physics option -> family; each family one colour map, its fields shades of it
FAMILIES = {"poisson": "pfgm", "pfgmpp": "pfgm", "ve": "diffusion", "vp": "diffusion",
            "gaussian": "diffusion", "linear": "flow", "radial": "radial",
            "radial_general": "radial"}
FAMILY_MAPS = {"pfgm": "Blues", "diffusion": "Oranges", "flow": "Greens", "radial": "Purples"}
SPARE_MAPS = ["Reds", "Greys", "YlOrBr", "RdPu"]
MARKERS = ["o", "s", "D", "v", "P", "X", "h", "<"]


def figure_names(ds_name: str, kind: str | None) -> dict[str, str]:
    """The per-data-set figure files, relative to the report's stem (``<stem>_<name>``)."""
    what = "samples" if kind == "images" else "trajectories"
    return {"nfe": f"{ds_name}_nfe.png", "probes": f"{ds_name}_probes.png",
            "fields": f"{ds_name}_{what}.png"}


def field_styles(fields: dict[str, list[str]]) -> dict[str, dict]:
    """One style (``color``, ``marker``) per field (``fields``: name -> train.py overrides):
    the hue of its physics family, a shade and a marker per member."""
    from matplotlib import colormaps

    members: dict[str, list[str]] = {}
    for name, over in fields.items():
        physics = [o.split("=", 1)[1] for o in over if o.startswith("physics=")]
        family = FAMILIES.get(physics[-1] if physics else name, physics[-1] if physics else name)
        members.setdefault(family, []).append(name)
    spare = iter(SPARE_MAPS * len(members))
    out = {}
    for family, names in members.items():
        cmap = colormaps[FAMILY_MAPS.get(family) or next(spare)]
        shades = np.linspace(0.9, 0.5, len(names)) if len(names) > 1 else [0.75]
        out.update({n: {"color": cmap(float(s)), "marker": MARKERS[i % len(MARKERS)]}
                    for i, (n, s) in enumerate(zip(names, shades))})
    return out


def cap_of(series: dict[str, tuple[list, list, list]]) -> float | None:
    """The y-axis cap of a panel, or None. A series diverges when its median value exceeds
    ``CLIP`` × the median of all series' medians; the cap is then 1.2 × the largest value of
    the others (never clipped), and None when no value exceeds it."""
    levels = {k: float(np.median(v[1])) for k, v in series.items() if v[1]}
    if len(levels) < 3:
        return None
    typical = float(np.median(list(levels.values())))
    normal = [y for k, v in series.items() if levels.get(k, math.inf) <= CLIP * typical
              for y in v[1] if math.isfinite(y)]
    if not normal:
        return None
    cap = 1.2 * max(normal)
    return cap if any(y > cap for v in series.values() for y in v[1]) else None


def draw(ax, series: dict[str, tuple[list, list, list]], styles: dict, cap: float | None,
         log_x: bool = True) -> dict[str, float]:
    """Lines with error bars, ``series[field] = (xs, means, stds)``; values above ``cap``
    on the top edge as ▲. Returns the off-scale fields' largest values."""
    off = {}
    for name, (xs, ys, es) in series.items():
        ys, es = np.asarray(ys, float), np.asarray(es, float)
        shown = ys if cap is None else np.minimum(ys, cap)
        style = {"marker": "o", **styles.get(name, {})}
        ax.errorbar(xs, shown, yerr=np.where(shown < ys, 0.0, es), ms=4, lw=1.2, capsize=2,
                    label=name, **style)
        if cap is not None and (ys > cap).any():
            hi = ys > cap
            ax.plot(np.asarray(xs)[hi], np.full(hi.sum(), cap), ls="none", marker="^", ms=8,
                    color=style.get("color"), markeredgecolor="k", markeredgewidth=0.5)
            off[name] = float(ys.max())
    if log_x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    plain_ticks(ax, log_x)
    if cap is not None:
        ax.set_ylim(top=cap * 1.25)
    return off


def plain_ticks(ax, x: bool) -> None:
    """Log axes labelled 0.05, 0.1, 0.2 rather than 5×10⁻²: y at 1, 2, 3, 5 × 10^k (every
    tick on a short range); x (NFE or steps) at the values :func:`panel` sets."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def label(v, _):
        lo, hi = ax.get_ylim()
        if v <= 0 or hi < 4 * lo:  # less than a decade or so: every tick labelled
            return f"{v:g}" if v > 0 else ""
        mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if round(mantissa, 6) in (1, 2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))
    if x:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def grid_series(study: Study, ds_name: str, seeds: dict, solver: str | None):
    """``(xs: measured NFE, means, stds)`` of one field over the budgets, for ``solver`` (None:
    the best solver at each budget)."""
    pts = []
    for n in budgets(study, ds_name):
        if solver is None:
            bc = best_cell(study, ds_name, seeds, n)
            got = (bc.mean, bc.std, bc.nfe) if bc else None
        else:
            got = summary(seeds, grid_key(solver, n))
        if got:
            pts.append((got[2], got[0], got[1] or 0.0))
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def panel(ax, series: dict, styles: dict, title: str, log_x: bool = True,
          xticks=None) -> None:
    """One panel: the series drawn with a shared cap, x ticks at ``xticks`` (the budgets);
    the title names off-scale fields."""
    series = {k: v for k, v in series.items() if v[0]}
    off = draw(ax, series, styles, cap_of(series), log_x)
    if xticks:
        ax.set_xticks(list(xticks))
    if off:
        title += "\n" + "\n".join(textwrap.wrap("▲ off scale: " + ", ".join(
            f"{n} (≤ {fmt(v, 3)})" for n, v in off.items()), 55))
    ax.set_title(title, fontsize=9)


def legend(fig, styles: dict, names) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ms=5, lw=1.2, label=n, **{"marker": "o", **styles.get(n, {})})
               for n in names]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)


def subplots(n: int, cols: int | None = None, size=(4.4, 3.8)):
    """``n`` axes on a grid (``cols`` columns; default: a square-ish grid)."""
    import matplotlib.pyplot as plt

    cols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def overview(study: Study, results: dict, styles: dict, path) -> None:
    """One panel per data set: every field's best-solver metric vs NFE, ★ adaptive."""
    names = [d for d in results if primary_of(results[d])[0]]
    if not names:
        return
    fig, axes = subplots(len(names))
    for ax, ds_name in zip(axes, names):
        ds_results = results[ds_name]
        series = {f: grid_series(study, ds_name, seeds, None) for f, seeds in ds_results.items()}
        panel(ax, series, styles, f"{ds_name} (best solver; ★ adaptive)",
              xticks=budgets(study, ds_name))
        top = ax.get_ylim()[1]
        for f, seeds in ds_results.items():
            bc = best_cell(study, ds_name, seeds, None)
            if bc:
                ax.plot([bc.nfe], [min(bc.mean, top)], marker="*", ms=10, ls="none",
                        color=styles.get(f, {}).get("color"), markeredgecolor="k",
                        markeredgewidth=0.4)
        ax.set(xlabel="NFE", ylabel=primary_of(ds_results)[0])
    legend(fig, styles, [f for f in styles if any(f in results[d] for d in names)])
    fig.suptitle("Sample quality vs NFE, every field (mean ± std over seeds; lower is better)")
    save(fig, path)


def solvers_figure(study: Study, results: dict, path) -> None:
    """One panel per data set: each solver's metric vs NFE on the data set's best field."""
    from matplotlib import colormaps

    found = findings(study, results)
    names = [d for d in results if (found.get(d) or {}).get("best_quality")]
    if not names:
        return
    solvers = list(dict.fromkeys(s for d in names for s in study.cfg["datasets"][d]["solvers"]))
    tab = colormaps["tab10"]
    styles = {s: {"color": tab(i % 10), "marker": MARKERS[i % len(MARKERS)]}
              for i, s in enumerate(solvers)}
    fig, axes = subplots(len(names))
    for ax, ds_name in zip(axes, names):
        best = found[ds_name]["best_quality"][0]["field"]
        seeds = results[ds_name][best]
        series = {s: grid_series(study, ds_name, seeds, s)
                  for s in study.cfg["datasets"][ds_name]["solvers"]}
        panel(ax, series, styles, f"{ds_name}: field {best}", xticks=budgets(study, ds_name))
        ax.set(xlabel="NFE", ylabel=primary_of(results[ds_name])[0])
    legend(fig, styles, solvers)
    fig.suptitle("Sample quality vs NFE per solver, on each data set's best field")
    save(fig, path)


def nfe_figure(study: Study, ds_name: str, ds_results: dict, styles: dict, path) -> None:
    """One panel per solver (first: the best solver at each budget) for one data set."""
    primary, _ = primary_of(ds_results)
    solvers = study.cfg["datasets"][ds_name]["solvers"]
    fig, axes = subplots(1 + len(solvers), 4)
    for ax, solver in zip(axes, [None, *solvers]):
        series = {f: grid_series(study, ds_name, seeds, solver)
                  for f, seeds in ds_results.items()}
        panel(ax, series, styles, solver or "best solver", xticks=budgets(study, ds_name))
        ax.set(xlabel="NFE", ylabel=primary)
    legend(fig, styles, list(ds_results))
    fig.suptitle(f"{ds_name}: {primary} vs NFE (mean ± std over seeds)")
    save(fig, path)


def probes_figure(study: Study, ds_name: str, ds_results: dict, styles: dict, path) -> None:
    primary, _ = primary_of(ds_results)
    pr = study.cfg["probes"]
    noise = pr.get("noise") or {}
    euler, noisy = {}, {}
    for f, seeds in ds_results.items():
        for target, keys, xs in (
                (euler, [euler_key(k) for k in pr.get("euler_steps") or []],
                 [int(k) for k in pr.get("euler_steps") or []]),
                (noisy, [noise_key(study, float(e)) for e in noise.get("eps") or []],
                 [float(e) for e in noise.get("eps") or []])):
            pts = [(x, summary(seeds, k)) for x, k in zip(xs, keys)]
            pts = [(x, g) for x, g in pts if g]
            target[f] = ([p[0] for p in pts], [p[1][0] for p in pts],
                         [p[1][1] or 0.0 for p in pts])
    fig, (a, b) = subplots(2, 2)
    panel(a, euler, styles, "step-size robustness", xticks=pr.get("euler_steps"))
    a.set(xlabel="Euler steps", ylabel=primary)
    panel(b, noisy, styles, "noise robustness", log_x=False)
    b.set(xlabel="relative noise ε on the prediction", ylabel=primary)
    legend(fig, styles, list(ds_results))
    save(fig, path)


def fields_figure(study: Study, ds_name: str, kind: str, styles: dict, path) -> None:
    """Each field's samples (first seed): points over held-out data (grey) with some
    trajectories, or a grid of images. Skipped when no run's samples are on disk."""
    figs = {}
    for run in study.runs:
        if run.dataset == ds_name and first_seed(study, run):
            file = figure_file(study, run)
            if file.is_file():
                figs[run.field] = dict(np.load(file))
    if not figs:
        return
    fig, axes = subplots(len(figs), 4, size=(3.6, 3.6))
    for ax, (f_name, arr) in zip(axes, figs.items()):
        if kind == "images":
            from unified_ode.viz.images import grid_array

            grid = grid_array(arr["samples"], scale=1)
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            data, samples, traj = arr["data"], arr["samples"], arr["trajectory"]
            lo, hi = data.min(0), data.max(0)
            pad = 0.15 * (hi - lo)
            ax.scatter(data[:, 0], data[:, 1], s=1, c="0.75", rasterized=True)
            for j in range(traj.shape[1]):
                ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.5, c="0.2", alpha=0.5)
            ax.scatter(samples[:, 0], samples[:, 1], s=1.5, color=styles[f_name]["color"],
                       alpha=0.8, rasterized=True)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_aspect("equal")
        ax.set_title(f"{f_name} (NFE {int(arr['nfe'])})", fontsize=9,
                     color=styles[f_name]["color"] if kind != "images" else None)
    save(fig, path)


def plots(study: Study, results: dict, out) -> None:
    """Writes every figure beside the report ``out`` (``<stem>_*.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    stem = out.with_suffix("")
    styles = field_styles(study.cfg["fields"])
    overview(study, results, styles, f"{stem}_overview.png")
    solvers_figure(study, results, f"{stem}_solvers.png")
    for ds_name, ds_results in results.items():
        primary, kind = primary_of(ds_results)
        if primary is None:
            continue
        names = figure_names(ds_name, kind)
        nfe_figure(study, ds_name, ds_results, styles, f"{stem}_{names['nfe']}")
        if probed(study, ds_name):
            probes_figure(study, ds_name, ds_results, styles, f"{stem}_{names['probes']}")
        fields_figure(study, ds_name, kind, styles, f"{stem}_{names['fields']}")

