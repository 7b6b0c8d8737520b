"""Matplotlib figures: schedules, heatmaps over two hyperparameters, loss curves.

Every function returns the ``matplotlib.figure.Figure`` (and draws into ``ax`` when given one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["schedules", "heatmap", "curves", "atlas"]


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


def _tick_labels(values: np.ndarray) -> list[str]:
  return [f"{v:.0e}" if _is_log(values) else f"{v:g}" for v in values]


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
  """A heatmap of ``metric`` (mean over seeds) over hyperparameters ``x`` and ``y``.

  Cells are labelled by value; a logarithmic range of values gets evenly spaced log labels.
  The best cell is outlined, cells where any seed diverged are hatched and marked "div".
  Configs not on a full (x, y) grid can be fixed with ``where={"other": value}``; remaining
  duplicates are averaged.

  Args:
    result: a :class:`optaxlr.SweepResult`.
    x, y: hyperparameter names.
    metric: e.g. ``"val/error"``.
    at: "final" or "best" (over the evaluations).
    mode: "min" or "max" (default: "max" for accuracies).
    where: fix other hyperparameters to these values.
    vmin, vmax: the colour range (give the same to heatmaps that should be compared).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search, plot
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], h["wd"]),
    ...                     search.grid(lr=[1e-3, 1e-2], wd=[0.0, 0.1]), steps=4,
    ...                     batch_size=8, progress=False)
    >>> fig = plot.heatmap(res, "lr", "wd", "val/loss")
  """
  if mode is None:
    mode = "max" if "acc" in metric.split("/")[-1] else "min"
  hp = result.hparams
  for name in (x, y, *(where or {})):
    if name not in hp:
      raise ValueError(f"heatmap: no hyperparameter {name!r}; available: {sorted(hp)}")
  vals = result.summary(metric, at=at, mode=mode)  # (S, C)
  keep = np.ones(result.num_configs, bool)
  for name, value in (where or {}).items():
    keep &= np.isclose(hp[name], value)
  xs, ys = np.unique(hp[x][keep]), np.unique(hp[y][keep])
  grid = np.full((len(ys), len(xs)), np.nan)
  div = np.zeros((len(ys), len(xs)), bool)
  for i, yv in enumerate(ys):
    for j, xv in enumerate(xs):
      sel = keep & (hp[x] == xv) & (hp[y] == yv)
      if sel.any():
        cell = vals[:, sel]
        div[i, j] = bool(result.diverged[:, sel].any())
        grid[i, j] = np.nan if div[i, j] else float(np.mean(cell))
  fig, ax = _fig_ax(ax, figsize)
  im = ax.imshow(grid, origin="lower", cmap=cmap if mode == "min" else cmap.removesuffix("_r"),
                 aspect="auto", vmin=vmin, vmax=vmax)
  fig.colorbar(im, ax=ax, label=metric)
  ax.set_xticks(range(len(xs)), _tick_labels(xs), rotation=45, fontsize=8)
  ax.set_yticks(range(len(ys)), _tick_labels(ys), fontsize=8)
  ax.set_xlabel(x)
  ax.set_ylabel(y)
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
  ax.set_title(title if title is not None else f"{metric} ({at}, mean of {vals.shape[0]} seeds)",
               fontsize=9)
  return fig


def curves(
    result,
    metric: str = "val/loss",
    configs: Sequence[int] | None = None,
    *,
    ax=None,
    log: bool = False,
    figsize=(7, 4),
    label_by: Sequence[str] | None = None,
):
  """Metric curves of chosen configs: the mean over seeds with a min-max band.

  Args:
    result: a :class:`optaxlr.SweepResult`.
    metric: an evaluated metric or ``"batch_loss"`` (every step).
    configs: config indices (default: up to 8 spread over the space).
    label_by: hyperparameters to put in the legend (default: all).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search, plot
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), search.grid(lr=[1e-3, 1e-2]),
    ...                     steps=8, batch_size=8, seeds=2, eval_every=4, progress=False)
    >>> fig = plot.curves(res, "val/loss")
    >>> fig2 = plot.atlas(optaxlr.diagnose(res), "lr", "lr")
  """
  fig, ax = _fig_ax(ax, figsize)
  vals = result._metric(metric)  # (S, C, T)
  steps = np.arange(vals.shape[-1]) if metric == "batch_loss" else result.eval_steps
  if configs is None:
    configs = np.unique(np.linspace(0, result.num_configs - 1, min(8, result.num_configs)).astype(int))
  names = list(label_by) if label_by is not None else list(result.hparams)
  for c in configs:
    v = vals[:, c]
    with np.errstate(all="ignore"):
      mean = np.nanmean(v, axis=0) if np.isfinite(v).any() else np.full(v.shape[-1], np.nan)
    cfg = result.config(int(c))
    label = ", ".join(f"{k}={cfg[k]:.3g}" for k in names if np.ndim(cfg[k]) == 0)
    (line,) = ax.plot(steps, mean, label=label)
    if v.shape[0] > 1:
      ax.fill_between(steps, np.nanmin(v, axis=0), np.nanmax(v, axis=0), alpha=0.2,
                      color=line.get_color())
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  if log:
    ax.set_yscale("log")
  ax.legend(fontsize=7)
  return fig


_LABEL_COLORS = {
    "diverged": "#d62728", "exploding": "#ff7f0e", "not_learning": "#7f7f7f",
    "oscillating": "#e377c2", "overconfident": "#9467bd", "overfitting": "#8c564b",
    "underfitting": "#bcbd22", "plateaued": "#17becf", "healthy": "#2ca02c",
}


def atlas(diagnosis, x: str, y: str, *, ax=None, figsize=(7, 4.5), title: str | None = None):
  """A "sweep atlas": the doctor's diagnosis of every config over two hyperparameters.

  Each cell shows the most frequent label over seeds (ties: the more serious one) in its
  colour, with the number of seeds that agree.

  Args:
    diagnosis: an :class:`optaxlr.Diagnosis` of a sweep (it carries the hyperparameters).
    x, y: hyperparameter names.
  """
  from matplotlib.patches import Patch

  hp = diagnosis.hparams
  for name in (x, y):
    if name not in hp:
      raise ValueError(f"atlas: no hyperparameter {name!r}; available: {sorted(hp)}")
  labels, agree = diagnosis.by_config()
  xs, ys = np.unique(hp[x]), np.unique(hp[y])
  fig, ax = _fig_ax(ax, figsize)
  seen = []
  for i, yv in enumerate(ys):
    for j, xv in enumerate(xs):
      sel = np.flatnonzero((hp[x] == xv) & (hp[y] == yv))
      if not sel.size:
        continue
      c = sel[0]
      label = str(labels[c])
      seen.append(label)
      ax.add_patch(_plt().Rectangle((j - 0.5, i - 0.5), 1, 1, color=_LABEL_COLORS.get(label, "w")))
      ax.text(j, i, f"{agree[c]}/{diagnosis.labels.shape[0]}", ha="center", va="center",
              fontsize=7, color="w")
  ax.set_xlim(-0.5, len(xs) - 0.5)
  ax.set_ylim(-0.5, len(ys) - 0.5)
  ax.set_xticks(range(len(xs)), _tick_labels(xs), rotation=45, fontsize=8)
  ax.set_yticks(range(len(ys)), _tick_labels(ys), fontsize=8)
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  handles = [Patch(color=_LABEL_COLORS[k], label=k) for k in _LABEL_COLORS if k in seen]
  ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_title(title if title is not None else "diagnosis per config (seeds agreeing)", fontsize=9)
  return fig
