"""Matplotlib figures: schedules, heatmaps over two hyperparameters, loss curves, adaptive search
(successive halving rungs, PBT lineages).

Every function returns the ``matplotlib.figure.Figure`` (and draws into ``ax`` when given one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optaxlr import _validate

__all__ = ["schedules", "heatmap", "heatmaps", "curves", "rungs", "lineage", "atlas", "atlases"]


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


def _is_categorical(values: Any) -> bool:
  """A string (categorical) axis."""
  return np.asarray(values).dtype.kind in "US"


def _fmt_hparam(v: Any) -> str:
  """A hyperparameter value for a legend or a title: ``0.001``, ``"sgd"`` as ``sgd``."""
  if isinstance(v, (str, np.str_)):
    return str(v)
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  return f"{v:.3g}"


def _axis_values(col: np.ndarray) -> np.ndarray:
  """The distinct values of a column in axis order: numbers sorted, strings in order of first
  appearance (the space's ``categories`` order)."""
  if _is_categorical(col):
    _, first = np.unique(col, return_index=True)
    return col[np.sort(first)]
  return np.unique(col)


def _fmt_value(v: float, digits: int, sci: bool) -> str:
  """``v`` with ``digits`` significant digits; ``1e-3``-style exponents (no zero padding)."""
  text = f"{v:.{digits - 1}e}" if sci else f"{v:.{digits}g}"
  if "e" in text:
    mantissa, exp = text.split("e")
    if "." in mantissa:
      mantissa = mantissa.rstrip("0").rstrip(".")
    text = f"{mantissa}e{int(exp)}"
  return text


def _tick_labels(values: Sequence[Any], rel: float = 5e-3) -> list[str]:
  """Labels that tell a grid's values apart: each value with the fewest significant digits
  that put it within ``rel`` of its true value (``4.64e-3``, not ``5e-03``), more digits for
  all while two labels would read the same. A logarithmic range gets exponent notation; the
  values of a categorical (string) axis are their own labels."""
  if _is_categorical(values):
    return [str(x) for x in values]
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
    col = np.asarray(hp[name])
    if _is_categorical(col) or isinstance(value, str):  # strings match exactly, never numbers
      keep &= np.asarray(col == value) if _is_categorical(col) and isinstance(value, str) else False
    else:
      keep &= np.isclose(col, value)
  if not keep.any():
    raise ValueError(f"{fn}: no config has where={dict(where or {})}")
  xs, ys = _axis_values(hp[x][keep]), _axis_values(hp[y][keep])
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
    text += "; " + ", ".join(f"{k}={v if isinstance(v, str) else format(v, 'g')}"
                           for k, v in where.items())
  return text


def _grid_axes(ax, xs, ys, x, y):
  ax.set_xticks(range(len(xs)), _tick_labels(xs), rotation=45, ha="right",
                rotation_mode="anchor", fontsize=8)
  ax.set_yticks(range(len(ys)), _tick_labels(ys), fontsize=8)
  ax.set_xlabel(x)
  ax.set_ylabel(y)


def _heat_grid(result, x, y, metric, at, mode, where):
  """The heatmap's cells: the mean over seeds and the cell's configs (NaN where a run
  diverged), which cells have a diverged run, and each cell's per-seed value (the mean over
  its configs, ``(S, ny, nx)``)."""
  xs, ys, cells, averaged = _cells("heatmap", result.hparams, x, y, where)
  vals = result.summary(metric, at=at, mode=mode)  # (S, C)
  grid = np.full((len(ys), len(xs)), np.nan)
  per_seed = np.full((vals.shape[0], len(ys), len(xs)), np.nan)
  div = np.zeros((len(ys), len(xs)), bool)
  for (i, j), sel in cells.items():
    div[i, j] = bool(result.diverged[:, sel].any())
    grid[i, j] = np.nan if div[i, j] else float(np.mean(vals[:, sel]))
    if not div[i, j]:
      per_seed[:, i, j] = np.mean(vals[:, sel], axis=1)
  return xs, ys, grid, div, averaged, per_seed


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
    indistinguishable: bool = True,
    confidence: float = 0.95,
):
  """A heatmap of ``metric`` over hyperparameters ``x`` and ``y``: each cell the mean over
  the seeds and over the configs that share its ``(x, y)`` (other hyperparameters not fixed
  by ``where``); the title says what was averaged.

  Ticks label every grid value with enough digits to tell them apart. The best cell is
  outlined, cells where any run diverged are hatched and marked "div". With 2 or more seeds,
  a white dot marks the cells statistically indistinguishable from the best: the t-interval
  of their paired difference with the best cell over seeds (each seed's value being the mean
  over the cell's configs) does not show them worse (:func:`optaxlr.stats.indistinguishable`);
  the title says so.
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
    indistinguishable: mark the cells indistinguishable from the best (needs 2 seeds).
    confidence: the level of those intervals.

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search, plot
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], weight_decay=h["wd"]),
    ...                     search.grid(lr=[1e-3, 1e-2], wd=[0.0, 0.1]), steps=4,
    ...                     batch_size=8, execution=optaxlr.Execution(progress=False))
    >>> fig = plot.heatmap(res, "lr", "wd", "val/loss")
    >>> fig.axes[0].get_title()
    'val/loss (final), mean over 1 seed'
  """
  if mode is None:
    mode = _validate.default_mode(metric)
  xs, ys, grid, div, averaged, per_seed = _heat_grid(result, x, y, metric, at, mode, where)
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
  if indistinguishable and per_seed.shape[0] >= 2 and np.isfinite(grid).any():
    from optaxlr import stats

    flat_seed = per_seed.reshape(per_seed.shape[0], -1)
    same = stats.indistinguishable(flat_seed, int(flat), mode=mode, confidence=confidence)
    same = same.reshape(grid.shape)
    same[bi, bj] = False  # the best cell has its outline
    ii, jj = np.nonzero(same)
    ax.scatter(jj - 0.33, ii + 0.3, s=22, c="white", edgecolors="black", linewidths=0.8,
               zorder=3, label="indistinguishable")
    default += (f"; red: best; dots: indistinguishable from it ({confidence:.0%} paired t,"
                f" {int(same.sum())} cells)")
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
    mode = kwargs.get("mode") or _validate.default_mode(metric)
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
    ...                     steps=8, batch_size=8, seeds=2, eval_every=4,
    ...                     execution=optaxlr.Execution(progress=False))
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
    mode = _validate.default_mode(metric)
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
    label = ", ".join(f"{k}={_fmt_hparam(cfg[k])}" for k in names if np.ndim(cfg[k]) == 0)
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


def _adapt_report(fn: str, result, strategies: tuple[str, ...], call: str) -> Mapping[str, Any]:
  """``result.info["adapt"]`` of one of ``strategies``, else a ValueError saying what to run."""
  rep = getattr(result, "info", {}).get("adapt")
  got = rep.get("strategy") if isinstance(rep, Mapping) else None
  if got not in strategies:
    raise ValueError(f"{fn}: result must come from optaxlr.sweep(..., adapt={call}), got a "
                     f"result whose info['adapt'] strategy is {got!r}")
  return rep


def _metric_curve(result, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, (C, T) mean over seeds)`` of an evaluated metric or of ``"batch_loss"``."""
  vals = result._metric(metric)  # (S, C, T)
  if metric == "batch_loss":
    steps = np.arange(vals.shape[-1]) * result.settings.log_every
  else:
    steps = np.asarray(result.eval_steps)
  with np.errstate(all="ignore"):
    return steps, vals.mean(axis=0)


def rungs(
    result,
    metric: str | None = None,
    *,
    ax=None,
    log: bool = False,
    figsize=(8.5, 4.5),
    label_by: Sequence[str] | None = None,
):
  """Successive halving or Hyperband as it ran: ``metric`` (mean over seeds) against the step
  for every config, each line ending where its config was stopped.

  Stopped configs are thin lines coloured by the rung that stopped them, ending in a cross at
  that rung; the configs trained to the end are bold and labelled by their hyperparameters.
  Every rung is a dotted vertical line; the top axis says how many of the configs that reached
  it were kept. The title gives the compute used: the steps the configs trained, summed, as a
  share of training them all to the end. On a linear axis the y range reaches from the lowest
  value to as far again above the worst value a rung kept; configs far worse (a rate that blew
  up) leave the top of the axes, and a note says how many and how high.

  Args:
    result: a :class:`optaxlr.SweepResult` of ``sweep(..., adapt=successive_halving(...))`` or
      ``hyperband(...)``.
    metric: an evaluated metric or ``"batch_loss"`` (default: the metric the rungs ranked by).
    log: a logarithmic y axis (showing every value).
    label_by: hyperparameters in the survivors' labels (default: all).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import adapt, plot, search
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), search.zip(lr=[1e-3, 1e-2, 0.1]),
    ...                     steps=8, batch_size=8, eval_every=4,
    ...                     execution=optaxlr.Execution(progress=False),
    ...                     adapt=adapt.successive_halving("val/loss", eta=3, min_steps=4))
    >>> fig = plot.rungs(res)
    >>> len([l for l in fig.axes[0].lines if l.get_gid() == "config"])
    3
  """
  rep = _adapt_report("rungs", result, ("successive_halving", "hyperband"),
                      "optaxlr.adapt.successive_halving(...) or hyperband(...)")
  metric = rep["metric"] if metric is None else metric
  steps, mean = _metric_curve(result, metric)
  n_cfg = result.num_configs
  stop_step = {}
  kept_at: dict[int, list[int]] = {}  # rung step -> [kept, reached]
  for r in rep["rungs"]:
    for c in r["stopped"]:
      stop_step[int(c)] = int(r["step"])
    k = kept_at.setdefault(int(r["step"]), [0, 0])
    k[0] += len(r["kept"])
    k[1] += len(r["kept"]) + len(r["stopped"])
  rung_steps = sorted({int(s) for b in rep["brackets"] for s in b["rungs"]})
  plt = _plt()
  cmap = plt.get_cmap("viridis")
  fig, ax = _fig_ax(ax, figsize)
  names = list(label_by) if label_by is not None else list(result.hparams)
  survivors = [c for c in range(n_cfg) if c not in stop_step]
  by_step: dict[int, Any] = {}  # stop step -> the first line stopped there (its legend entry)
  shown = []  # the survivors' legend entries: at most 8, then one for the rest
  for c in range(n_cfg):
    if c in stop_step:
      s = stop_step[c]
      keep = steps <= s
      (line,) = ax.plot(steps[keep], mean[c][keep], lw=0.9, alpha=0.75, marker="x",
                        markevery=[int(keep.sum()) - 1], ms=5,
                        color=cmap(0.85 * rung_steps.index(s) / max(1, len(rung_steps) - 1)))
      if s not in by_step:
        by_step[s] = line
        n_here = sum(v == s for v in stop_step.values())
        line.set_label(f"stopped at step {s} ({n_here} config{'s' * (n_here != 1)})")
    else:
      rank = survivors.index(c)
      cfg = result.config(c)
      text = ", ".join(f"{k}={_fmt_hparam(cfg[k])}" for k in names if np.ndim(cfg[k]) == 0)
      (line,) = ax.plot(steps, mean[c], lw=2.2, color=f"C{rank % 10}", zorder=3)
      if rank < 8:
        line.set_label(f"{text or f'config {c}'} (to the end)")
        shown.append(line)
      elif rank == 8:
        line.set_label(f"{len(survivors) - 8} more trained to the end")
        shown.append(line)
    line.set_gid("config")
  if log:
    ax.set_yscale("log")
  else:  # the reference: the values that won at the rungs (of the configs each rung kept)
    won = [mean[int(c), max(0, int(np.searchsorted(steps, r["step"], side="right")) - 1)]
           for r in rep["rungs"] for c in r["kept"]]
    _clip_outliers(ax, mean, np.asarray(won, float))
  for s in rung_steps:
    ax.axvline(s, color="0.45", ls=":", lw=1, gid="rung", zorder=1)
  top = ax.secondary_xaxis("top")
  top.set_xticks([s for s in rung_steps if s in kept_at],
                 [f"kept {kept_at[s][0]}/{kept_at[s][1]}" for s in rung_steps if s in kept_at],
                 fontsize=7, color="0.3")
  top.tick_params(length=0)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  n_s = len(result.seeds)
  share = ""
  if rep.get("full_config_steps"):
    share = (f"; {rep['config_steps'] / rep['full_config_steps']:.0%} of the steps of training "
             "all to the end")
  title = (f"{rep['strategy']} on {rep['metric']} (eta={rep['eta']}): {n_cfg} configs, "
           f"{len(survivors)} trained to the end\n{metric}, mean over {n_s} "
           f"seed{'s' * (n_s != 1)}{share}")
  ax.set_title(title, fontsize=9)
  ax.legend(handles=[by_step[s] for s in sorted(by_step)] + shown, fontsize=7, loc="center left",
            bbox_to_anchor=(1.01, 0.5))
  return fig


def _clip_outliers(ax, values: np.ndarray, reference: np.ndarray) -> None:
  """A y range from the lowest value to as far again above the highest ``reference`` value;
  lines that go above it leave the axes, and a note in the corner says how many and how high."""
  finite = values[np.isfinite(values)]
  reference = reference[np.isfinite(reference)]
  if not reference.size or not finite.size:
    return
  lo, hi = float(finite.min()), float(reference.max())
  top = hi + max(hi - lo, 1e-12 * max(abs(hi), 1.0))
  over = np.where(np.isfinite(values), values, -np.inf).max(axis=-1) > top
  if not over.any():
    return
  n = int(over.sum())
  ax.set_ylim(lo - 0.05 * (top - lo), top)
  ax.text(0.01, 0.98, f"{n} config{'s' * (n != 1)} above the axis "
          f"(up to {float(finite.max()):.3g})", transform=ax.transAxes, ha="left", va="top",
          fontsize=7, color="0.3", gid="off_scale")


def _trajectory_points(traj: Any) -> list[tuple[int, Mapping[str, float]]]:
  """A PBT lineage as ``[(step, hparams)]`` (a saved result holds lists, not tuples)."""
  return [(int(s), h) for s, h in traj]


def lineage(
    result,
    hparam: str,
    *,
    ax=None,
    log: bool | None = None,
    figsize=(8.5, 4.5),
):
  """Population-based training as it ran: each slot's value of ``hparam`` over the steps, and
  every exploit as an arrow from the source slot's value to the value its copy explores.

  A slot's line is the value it trained with at each step (constant between exploits). At an
  exploit step the destination slot takes the source's weights and optimizer state and a new
  value (perturbed or resampled; the source's own if ``hparam`` is neither): a circle marks the
  new value, in the destination's colour, and an arrow comes from the source's value. The
  dashed black line is the lineage of the best slot at the end (by the PBT metric, mean over
  seeds): the values its weights trained with, inherited through its copies, as
  :meth:`optaxlr.adapt.PBT.schedule` replays them.

  Args:
    result: a :class:`optaxlr.SweepResult` of ``sweep(..., adapt=optaxlr.adapt.pbt(...))``.
    hparam: a hyperparameter of the space.
    log: a logarithmic y axis (default: when the values are positive and span 20x or more).

  Examples:
    >>> import optaxlr
    >>> from optaxlr import adapt, plot, search
    >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]),
    ...                     search.zip(lr=[1e-3, 1e-2, 3e-2, 1e-1]), steps=8, batch_size=8,
    ...                     eval_every=2, execution=optaxlr.Execution(progress=False),
    ...                     adapt=adapt.pbt("val/loss", 4, perturb={"lr": (0.5, 2.0)}))
    >>> fig = plot.lineage(res, "lr")
    >>> len([l for l in fig.axes[0].lines if l.get_gid() == "slot"])
    4
  """
  rep = _adapt_report("lineage", result, ("pbt",), "optaxlr.adapt.pbt(...)")
  hp = result.hparams
  if hparam not in hp:
    raise ValueError(f"lineage: no hyperparameter {hparam!r}; available: {sorted(hp)}")
  col = np.asarray(hp[hparam])
  categories = None
  if _is_categorical(col):  # the program (and PBT's record) holds the index of the value
    categories = result.space.categories[hparam]
    col = np.asarray([categories.index(v) for v in col.tolist()])
  cur = col.astype(float)
  n_cfg = len(cur)
  steps_total = result.settings.steps or result.batch_loss.shape[-1]
  hist = {c: [(0, cur[c])] for c in range(n_cfg)}
  exploits = sorted(rep["exploits"], key=lambda e: int(e["step"]))
  arrows = []
  i = 0
  while i < len(exploits):  # one exploit step at a time: sources read the values before it
    step = int(exploits[i]["step"])
    before = cur.copy()
    while i < len(exploits) and int(exploits[i]["step"]) == step:
      e = exploits[i]
      src, dst = int(e["src"]), int(e["dst"])
      new = float(e["hparams"].get(hparam, before[src]))
      cur[dst] = new
      hist[dst].append((step, new))
      arrows.append((step, before[src], new, src, dst))
      i += 1
  plt = _plt()
  fig, ax = _fig_ax(ax, figsize)
  cmap = plt.get_cmap("tab10" if n_cfg <= 10 else "tab20")
  colors = [cmap(c % cmap.N) for c in range(n_cfg)]
  for c in range(n_cfg):
    xs = [s for s, _ in hist[c]] + [steps_total]
    ys = [v for _, v in hist[c]] + [hist[c][-1][1]]
    ax.step(xs, ys, where="post", color=colors[c], lw=1.4, alpha=0.85,
            label=f"slot {c}" if n_cfg <= 10 else "_nolegend_", gid="slot")
  lead = 0.03 * steps_total  # arrows start on the source's line just before the step
  for step, y0, y1, src, dst in arrows:
    ax.annotate("", xy=(step, y1), xytext=(step - lead, y0),
                arrowprops=dict(arrowstyle="->", color=colors[dst], lw=1.0, shrinkA=0, shrinkB=4))
  if arrows:
    ax.scatter([a[0] for a in arrows], [a[2] for a in arrows], s=30, facecolors="none",
               edgecolors=[colors[a[4]] for a in arrows], linewidths=1.3, zorder=4, gid="exploit",
               label=f"exploits ({len(arrows)}): circle = new value, arrow from the source")
  metric = rep["metric"]
  best = None
  if metric in result.metrics:
    with np.errstate(all="ignore"):
      final = result.final(metric).mean(axis=0)
    final = np.where(result.diverged.any(axis=0), np.nan, final)
    if np.isfinite(final).any():
      best = int(np.nanargmax(final) if _validate.default_mode(metric) == "max" else np.nanargmin(final))
  trajectory = rep.get("trajectory", {})
  traj = trajectory.get(best, trajectory.get(str(best))) if best is not None else None
  if traj:
    pts = _trajectory_points(traj)
    ys = [float(h[hparam]) for _, h in pts]
    ax.step([s for s, _ in pts] + [steps_total], ys + ys[-1:], where="post", color="k",
            ls="--", lw=2.2, alpha=0.55, zorder=5, gid="best_lineage",
            label=f"lineage of the best slot ({best})")
  ax.set_xlim(0, steps_total)
  ax.set_xlabel("step")
  ax.set_ylabel(hparam)
  values = np.concatenate([[v for _, v in h] for h in hist.values()])
  if categories is not None:
    ax.set_yticks(range(len(categories)), categories)
  elif log or (log is None and _is_log(values)):
    ax.set_yscale("log")
  ax.set_title(f"PBT on {metric}: {hparam} of each of {n_cfg} slots, exploits every "
               f"{rep['interval']} steps (quantile {rep['quantile']:g})", fontsize=9, wrap=True)
  if n_cfg <= 10:  # a legend entry per slot, beside the axes
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  else:
    ax.legend(fontsize=7, loc="best")
  return fig


_LABEL_COLORS = {
    "data_error": "#000000", "diverged": "#d62728", "exploding": "#ff7f0e",
    "not_learning": "#7f7f7f", "oscillating": "#e377c2", "overconfident": "#9467bd",
    "overfitting": "#8c564b", "too_slow": "#1f77b4", "underfitting": "#bcbd22",
    "plateaued": "#17becf", "behind_best": "#aec7e8", "healthy": "#2ca02c",
    "train_eval_gap": "#ff9896", "undertrained": "#98df8a",
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
            color="k" if label in ("behind_best", "underfitting", "train_eval_gap",
                                   "undertrained") else "w")
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
