"""Matplotlib figures: schedules, heatmaps over two hyperparameters, loss curves.

Every function returns the ``matplotlib.figure.Figure`` (and draws into ``ax`` when given one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["schedules", "heatmap", "heatmaps", "curves", "atlas", "atlases"]


def _plt():
  import matplotlib

  if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    try:
      import matplotlib.pyplot as plt  # noqa: F401
    except ImportError:  # pragma: no cover
      matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _fig_ax(ax, figsize):
  plt = _plt()
  if ax is None:
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax
  return ax.figure, ax


def schedules(
    scheds: Mapping[str, Any], steps: int, *, ax=None, log: bool = False, figsize=(7, 4)
):
  """Draws several schedules on one axis.

  Args:
    scheds: label -> ``step -> value`` schedule (or an array of values).
    steps: draws steps ``0..steps``.
    log: a logarithmic y axis.

  Examples:
    >>> from optaxlr import schedules as s, plot
    >>> fig = plot.schedules({"cosine": s.cosine(0.1, 100)}, 100)
  """
  import jax.numpy as jnp

  fig, ax = _fig_ax(ax, figsize)
  t = np.arange(steps + 1)
  for label, s in scheds.items():
    vals = np.asarray(s(jnp.asarray(t)) if callable(s) else s)
    ax.plot(t[: len(vals)], vals, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  if log:
    ax.set_yscale("log")
  if len(scheds) > 1:
    ax.legend(fontsize=8)
  return fig


def _is_log(values: np.ndarray) -> bool:
  v = np.asarray(values, float)
  return bool(np.all(v > 0) and v.max() / v.min() >= 20)


def _fmt_value(v: float, digits: int, sci: bool) -> str:
  """``v`` with ``digits`` significant digits; ``1e-3``-style exponents (no zero padding)."""
  text = f"{v:.{digits - 1}e}" if sci else f"{v:.{digits}g}"
  if "e" in text:
    mantissa, exp = text.split("e")
    if "." in mantissa:
      mantissa = mantissa.rstrip("0").rstrip(".")
    text = f"{mantissa}e{int(exp)}"
  return text


def _tick_labels(values: Sequence[float], rel: float = 5e-3) -> list[str]:
  """Labels that tell a grid's values apart: each value with the fewest significant digits
  that put it within ``rel`` of its true value (``4.64e-3``, not ``5e-03``), more digits for
  all while two labels would read the same. A logarithmic range gets exponent notation."""
  v = np.asarray(values, float)
  sci = _is_log(v)

  def fits(x, d):
    return x == 0 or abs(float(_fmt_value(x, d, sci)) - x) <= rel * abs(x)

  digits = [next((d for d in range(1, 16) if fits(x, d)), 16) for x in v]
  for extra in range(16):
    labels = [_fmt_value(x, d + extra, sci) for x, d in zip(v, digits)]
    if len(set(labels)) == len(labels):
      return labels
  return [repr(float(x)) for x in v]


def _cells(fn: str, hp: Mapping[str, np.ndarray], x: str, y: str,
           where: Mapping[str, Any] | None):
  """The (x, y) grid of configs: values along each axis, the configs in every cell, and the
  other hyperparameters that vary inside a cell (name -> most values in one cell)."""
  for name in (x, y, *(where or {})):
    if name not in hp:
      raise ValueError(f"{fn}: no hyperparameter {name!r}; available: {sorted(hp)}")
  n = len(next(iter(hp.values())))
  keep = np.ones(n, bool)
  for name, value in (where or {}).items():
    keep &= np.isclose(hp[name], value)
  if not keep.any():
    raise ValueError(f"{fn}: no config has where={dict(where or {})}")
  xs, ys = np.unique(hp[x][keep]), np.unique(hp[y][keep])
  cells = {}
  for i, yv in enumerate(ys):
    for j, xv in enumerate(xs):
      sel = np.flatnonzero(keep & (hp[x] == xv) & (hp[y] == yv))
      if sel.size:
        cells[i, j] = sel
  averaged = {}
  for name, col in hp.items():
    if name in (x, y) or np.ndim(col) != 1:
      continue
    most = max(len(np.unique(col[sel])) for sel in cells.values())
    if most > 1:
      averaged[name] = most
  return xs, ys, cells, averaged


def _over(n_seeds: int, averaged: Mapping[str, int], where: Mapping[str, Any] | None) -> str:
  """'5 seeds and momentum (3 values); wd=0.1' — what a cell's number pools."""
  parts = [f"{n_seeds} seed{'s' * (n_seeds != 1)}"]
  parts += [f"{k} ({m} values)" for k, m in averaged.items()]
  text = " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]
  if where:
    text += "; " + ", ".join(f"{k}={v:g}" for k, v in where.items())
  return text


def _grid_axes(ax, xs, ys, x, y):
  ax.set_xticks(range(len(xs)), _tick_labels(xs), rotation=45, ha="right",
                rotation_mode="anchor", fontsize=8)
  ax.set_yticks(range(len(ys)), _tick_labels(ys), fontsize=8)
  ax.set_xlabel(x)
  ax.set_ylabel(y)


def _heat_grid(result, x, y, metric, at, mode, where):
  """The heatmap's cells: the mean over seeds and the cell's configs (NaN where a run
  diverged), and which cells have a diverged run."""
  xs, ys, cells, averaged = _cells("heatmap", result.hparams, x, y, where)
  vals = result.summary(metric, at=at, mode=mode)  # (S, C)
  grid = np.full((len(ys), len(xs)), np.nan)
  div = np.zeros((len(ys), len(xs)), bool)
  for (i, j), sel in cells.items():
    div[i, j] = bool(result.diverged[:, sel].any())
    grid[i, j] = np.nan if div[i, j] else float(np.mean(vals[:, sel]))
  return xs, ys, grid, div, averaged


def heatmap(
    result,
    x: str,
    y: str,
    metric: str,
    *,
    at: str = "final",
    mode: str | None = None,
    where: Mapping[str, Any] | None = None,
    ax=None,
    figsize=(6, 4.5),
    cmap: str = "viridis_r",
    annotate: bool = True,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
):
  """A heatmap of ``metric`` over hyperparameters ``x`` and ``y``: each cell the mean over
  the seeds and over the configs that share its ``(x, y)`` (other hyperparameters not fixed
  by ``where``); the title says what was averaged.

  Ticks label every grid value with enough digits to tell them apart. The best cell is
  outlined, cells where any run diverged are hatched and marked "div".
  :func:`atlas` pools the same runs per cell, so the two figures describe the same thing.

  Args:
    result: a :class:`optaxlr.SweepResult`.
    x, y: hyperparameter names.
    metric: e.g. ``"val/error"``.
    at: "final" or "best" (over the evaluations).
    mode: "min" or "max" (default: "max" for accuracies).
    where: fix other hyperparameters to these values.
    title: a first title line (an optimizer's name, say); the title always ends with the
      metric and what each cell averages.
    vmin, vmax: the colour range (give the same to heatmaps that should be compared).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search, plot
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], weight_decay=h["wd"]),
    ...                     search.grid(lr=[1e-3, 1e-2], wd=[0.0, 0.1]), steps=4,
    ...                     batch_size=8, progress=False)
    >>> fig = plot.heatmap(res, "lr", "wd", "val/loss")
    >>> fig.axes[0].get_title()
    'val/loss (final), mean over 1 seed'
  """
  if mode is None:
    mode = "max" if "acc" in metric.split("/")[-1] else "min"
  xs, ys, grid, div, averaged = _heat_grid(result, x, y, metric, at, mode, where)
  over = _over(len(result.seeds), averaged, where)
  fig, ax = _fig_ax(ax, figsize)
  im = ax.imshow(grid, origin="lower", cmap=cmap if mode == "min" else cmap.removesuffix("_r"),
                 aspect="auto", vmin=vmin, vmax=vmax)
  fig.colorbar(im, ax=ax, label=metric)
  _grid_axes(ax, xs, ys, x, y)
  for i in range(len(ys)):
    for j in range(len(xs)):
      if div[i, j]:
        ax.add_patch(_plt().Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx",
                                      edgecolor="0.5", lw=0))
        ax.text(j, i, "div", ha="center", va="center", fontsize=7, color="0.3")
      elif annotate and np.isfinite(grid[i, j]) and grid.size <= 150:
        shade = im.cmap(im.norm(grid[i, j]))
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
        ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7,
                color="w" if dark else "k")
  if np.isfinite(grid).any():
    flat = np.nanargmin(grid) if mode == "min" else np.nanargmax(grid)
    bi, bj = np.unravel_index(flat, grid.shape)
    ax.add_patch(_plt().Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
  default = f"{metric} ({at}), mean over {over}"
  ax.set_title(default if title is None else f"{title}\n{default}", fontsize=9, wrap=True)
  return fig


def _panels(items: Mapping[str, Any], panel_size, suptitle: str | None):
  plt = _plt()
  n = len(items)
  if n == 0:
    raise ValueError("plot: nothing to draw, got an empty mapping")
  fig, axs = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]),
                          constrained_layout=True, squeeze=False)
  if suptitle is not None:
    fig.suptitle(suptitle, fontsize=10, wrap=True)  # wrapped to the figure's width
  return fig, axs[0]


def heatmaps(
    results: Mapping[str, Any],
    x: str,
    y: str,
    metric: str,
    *,
    suptitle: str | None = None,
    panel_size=(5.2, 4.3),
    share_colors: bool = True,
    **kwargs: Any,
):
  """Heatmaps of several sweeps side by side (one per optimizer, say), on one colour range.

  The figure title (``suptitle``) is wrapped to the figure's width, so a long one is not
  clipped however few panels there are.

  Args:
    results: panel title -> :class:`optaxlr.SweepResult`.
    x, y, metric: as :func:`heatmap`.
    suptitle: the figure's title.
    panel_size: ``(width, height)`` of one panel in inches.
    share_colors: one colour range for all panels (from the lowest to the highest cell).
    **kwargs: passed to :func:`heatmap` (``at``, ``mode``, ``where``...).
  """
  fig, axs = _panels(results, panel_size, suptitle)
  if share_colors and "vmin" not in kwargs and "vmax" not in kwargs:
    mode = kwargs.get("mode") or ("max" if "acc" in metric.split("/")[-1] else "min")
    grids = [_heat_grid(r, x, y, metric, kwargs.get("at", "final"), mode,
                        kwargs.get("where"))[2] for r in results.values()]
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    if finite.size:
      kwargs.update(vmin=float(finite.min()), vmax=float(finite.max()))
  for ax, (name, res) in zip(axs, results.items()):
    heatmap(res, x, y, metric, ax=ax, title=name, **kwargs)
  return fig


def curves(
    result,
    metric: str = "val/loss",
    configs: Sequence[int] | None = None,
    *,
    best: int = 6,
    mode: str | None = None,
    ax=None,
    log: bool = False,
    figsize=(7, 4),
    label_by: Sequence[str] | None = None,
):
  """Metric curves of chosen configs: the mean over seeds with a min-max band.

  By default the ``best`` configs by the metric: its final value (``batch_loss``: its mean
  over the last tenth of the steps), averaged over seeds, best first; configs with a
  diverged seed come last. The title says which were drawn.

  Args:
    result: a :class:`optaxlr.SweepResult`.
    metric: an evaluated metric or ``"batch_loss"`` (every step).
    configs: config indices (default: the ``best`` best).
    best: how many configs to draw when ``configs`` is not given.
    mode: "min" or "max", what "best" means (default: "max" for accuracies).
    label_by: hyperparameters to put in the legend (default: all).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search, plot
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), search.grid(lr=[1e-3, 1e-2]),
    ...                     steps=8, batch_size=8, seeds=2, eval_every=4, progress=False)
    >>> fig = plot.curves(res, "val/loss")
    >>> fig.axes[0].get_title()
    'val/loss: best 2 of 2 configs by final value (mean over 2 seeds, band: min-max)'
    >>> fig2 = plot.atlas(optaxlr.diagnose(res), "lr", "lr")
  """
  fig, ax = _fig_ax(ax, figsize)
  vals = result._metric(metric)  # (S, C, T)
  steps = np.arange(vals.shape[-1]) if metric == "batch_loss" else result.eval_steps
  if metric == "batch_loss":
    steps = steps * int(getattr(result, "info", {}).get("log_every", 1))
  if mode is None:
    mode = "max" if "acc" in metric.split("/")[-1] else "min"
  if configs is None:
    tail = max(1, vals.shape[-1] // 10) if metric == "batch_loss" else 1
    with np.errstate(all="ignore"):
      score = vals[..., -tail:].mean(axis=-1).mean(axis=0)  # (C,): NaN if a seed diverged
    score = np.where(result.diverged.any(axis=0), np.nan, score)
    key = np.where(np.isfinite(score), score if mode == "min" else -score, np.inf)
    configs = np.argsort(key, kind="stable")[:best]
    what = "final value" if metric != "batch_loss" else "mean of the last tenth"
    title = (f"{metric}: best {len(configs)} of {result.num_configs} configs by {what} "
             f"(mean over {vals.shape[0]} seed{'s' * (vals.shape[0] != 1)}"
             f"{', band: min-max' if vals.shape[0] > 1 else ''})")
  else:
    title = (f"{metric}: mean over {vals.shape[0]} seed{'s' * (vals.shape[0] != 1)}"
             f"{', band: min-max' if vals.shape[0] > 1 else ''}")
  names = list(label_by) if label_by is not None else list(result.hparams)
  for c in configs:
    v = vals[:, c]
    with np.errstate(all="ignore"):
      mean = np.nanmean(v, axis=0) if np.isfinite(v).any() else np.full(v.shape[-1], np.nan)
    cfg = result.config(int(c))
    label = ", ".join(f"{k}={cfg[k]:.3g}" for k in names if np.ndim(cfg[k]) == 0)
    (line,) = ax.plot(steps, mean, label=label or f"config {int(c)}")
    if v.shape[0] > 1:
      with np.errstate(all="ignore"):
        ax.fill_between(steps, np.nanmin(v, axis=0), np.nanmax(v, axis=0), alpha=0.2,
                        color=line.get_color())
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  if log:
    ax.set_yscale("log")
  ax.set_title(title, fontsize=9, wrap=True)
  ax.legend(fontsize=7)
  return fig


_LABEL_COLORS = {
    "data_error": "#000000", "diverged": "#d62728", "exploding": "#ff7f0e",
    "not_learning": "#7f7f7f", "oscillating": "#e377c2", "overconfident": "#9467bd",
    "overfitting": "#8c564b", "too_slow": "#1f77b4", "underfitting": "#bcbd22",
    "plateaued": "#17becf", "behind_best": "#aec7e8", "healthy": "#2ca02c",
}


def atlas(diagnosis, x: str, y: str, *, where: Mapping[str, Any] | None = None, ax=None,
          figsize=(7, 4.5), title: str | None = None):
  """A "sweep atlas": the doctor's diagnosis over two hyperparameters.

  Each cell pools the same runs as :func:`heatmap`'s cell: every seed of every config that
  shares its ``(x, y)`` (other hyperparameters not fixed by ``where``). It shows their most
  frequent label (ties: the more serious one) in its colour, with how many runs have it
  (``"4/5"``); the title says what was pooled.

  Args:
    diagnosis: an :class:`optaxlr.Diagnosis` of a sweep (it carries the hyperparameters).
    x, y: hyperparameter names.
    where: fix other hyperparameters to these values.
    title: the axes title (default: what each cell pools).
  """
  from matplotlib.patches import Patch

  from optaxlr.doctor import LABELS

  xs, ys, cells, averaged = _cells("atlas", diagnosis.hparams, x, y, where)
  fig, ax = _fig_ax(ax, figsize)
  seen = set()
  for (i, j), sel in cells.items():
    runs = diagnosis.labels[:, sel].ravel()
    counts = [int((runs == k).sum()) for k in LABELS]
    label = LABELS[int(np.argmax(counts))]  # first maximum: the more serious label
    seen.add(label)
    ax.add_patch(_plt().Rectangle((j - 0.5, i - 0.5), 1, 1, color=_LABEL_COLORS.get(label, "w")))
    ax.text(j, i, f"{max(counts)}/{runs.size}", ha="center", va="center", fontsize=7,
            color="k" if label in ("behind_best", "underfitting") else "w")
  ax.set_xlim(-0.5, len(xs) - 0.5)
  ax.set_ylim(-0.5, len(ys) - 0.5)
  _grid_axes(ax, xs, ys, x, y)
  handles = [Patch(color=_LABEL_COLORS[k], label=k) for k in _LABEL_COLORS if k in seen]
  ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  over = _over(diagnosis.labels.shape[0], averaged, where)
  default = f"most frequent diagnosis over {over} (runs agreeing)"
  ax.set_title(default if title is None else f"{title}\n{default}", fontsize=9, wrap=True)
  return fig


def atlases(
    diagnoses: Mapping[str, Any],
    x: str,
    y: str,
    *,
    suptitle: str | None = None,
    panel_size=(6.2, 4.3),
    **kwargs: Any,
):
  """Atlases of several sweeps side by side; the figure title is wrapped to fit.

  Args:
    diagnoses: panel title -> :class:`optaxlr.Diagnosis`.
    x, y: hyperparameter names.
    suptitle: the figure's title.
    panel_size: ``(width, height)`` of one panel in inches.
    **kwargs: passed to :func:`atlas` (``where``).
  """
  fig, axs = _panels(diagnoses, panel_size, suptitle)
  for ax, (name, d) in zip(axs, diagnoses.items()):
    atlas(d, x, y, ax=ax, title=name, **kwargs)
  return fig
