"""The learning-rate range test (Smith, 2017) for many seeds and configs in one program.

:func:`lr_find` trains with a learning rate that grows every step from ``min_lr`` to
``max_lr`` and records the loss, as fastai's ``Learner.lr_find`` and pytorch-lr-finder's
``LRFinder.range_test`` do, but for every seed and every config of a search space (weight
decays, optimizers' other settings) at once: ``vmap`` over seeds x configs, ``lax.scan`` over
steps, compiled once. The rate of step ``t`` reaches the optimizer as a traced scalar, so the
transform is the same ``hparams -> optax.GradientTransformation`` function that
:func:`optaxlr.sweep` takes. :func:`lr_find_grid` is the slower, more robust variant: short runs
at a few constant rates through :func:`optaxlr.sweep`.

References:
  Smith, `Cyclical Learning Rates for Training Neural Networks
  <https://arxiv.org/abs/1506.01186>`_, WACV 2017 (section 3.3, the "LR range test").
  Howard, Gugger et al., fastai ``Learner.lr_find`` and its suggestion functions
  (``minimum``, ``steep``, ``valley``), https://docs.fast.ai/callback.schedule.html, 2020-2024.
  Tavares (davidtvs), pytorch-lr-finder, https://github.com/davidtvs/pytorch-lr-finder, 2019-2024.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxlr import _validate
from optaxlr.engine import Execution
from optaxlr.engine import RangeTest
from optaxlr.engine import SweepResult
from optaxlr.engine import as_key
from optaxlr.engine import key_data
from optaxlr.engine import run_keys
from optaxlr.engine import sweep

__all__ = ["lr_find", "lr_find_grid", "LRFindResult", "LRGridResult", "range_test_lrs"]

PyTree = Any
Optimizer = Callable[..., optax.GradientTransformation]

_FACTORY_FIRST_ARGS = ("learning_rate", "lr")


# ----------------------------------------------------------------------------------------
# Pieces shared by both modes.


def range_test_lrs(
    min_lr: float, max_lr: float, steps: int, mode: Literal["exp", "linear"] = "exp"
) -> np.ndarray:
  """The learning rate of every step of a range test, as pytorch-lr-finder schedules it.

  ``mode="exp"``: ``lr_t = min_lr * (max_lr / min_lr) ** (t / (steps - 1))``;
  ``mode="linear"``: ``lr_t = min_lr + t / (steps - 1) * (max_lr - min_lr)``, for
  ``t = 0 .. steps - 1``: the first step uses ``min_lr`` and the last ``max_lr``, as
  pytorch-lr-finder's ``ExponentialLR`` / ``LinearLR``. fastai's ``SchedExp`` uses
  ``t / steps`` instead and never reaches ``max_lr``.

  Examples:
    >>> range_test_lrs(1e-3, 1e-1, 3).tolist()
    [0.001, 0.01, 0.1]
    >>> range_test_lrs(0.0, 1.0, 5, mode="linear").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
  """
  return _range_lrs("range_test_lrs", min_lr, max_lr, steps, mode)


def _range_lrs(fn: str, min_lr, max_lr, steps, mode) -> np.ndarray:
  _validate.one_of(fn, "mode", mode, ("exp", "linear"))
  _validate.check_int(fn, "steps", steps, 2)
  if mode == "exp":
    _validate.positive(fn, "min_lr", min_lr)
  else:
    _validate.nonnegative(fn, "min_lr", min_lr)
  _validate.check(fn, "max_lr", max_lr, np.isfinite, "finite")
  _validate.check(fn, "max_lr", max_lr, lambda v: v > np.asarray(min_lr), f"> min_lr={min_lr}")
  lo, hi = float(min_lr), float(max_lr)
  r = np.arange(steps, dtype=np.float64) / (steps - 1)
  out = lo * (hi / lo) ** r if mode == "exp" else lo + r * (hi - lo)
  out[0], out[-1] = lo, hi
  return out


def _check_space(fn: str, space: Any) -> Any:
  """The space of the other hyperparameters (``None``: one config), without ``"lr"``."""
  from optaxlr import search

  if isinstance(space, dict):
    space = search.zip(**space)
  if space is not None and "lr" in getattr(space, "names", ()):
    raise ValueError(f"{fn}: space must not hold 'lr' (the range test sets it), got "
                     f"space names {list(space.names)}")
  return space


def _holds_injected_lr(state: Any) -> bool:
  kinds = tuple(
      k for k in (getattr(optax, "InjectStatefulHyperparamsState", None),
                  getattr(optax, "InjectHyperparamsState", None)) if k is not None
  )
  found = []

  def visit(x):
    if isinstance(x, kinds) and any(k in x.hyperparams for k in ("learning_rate", "lr")):
      found.append(x)
    return x

  jax.tree.map(visit, state, is_leaf=lambda x: isinstance(x, kinds))
  return bool(found)


def _tracked(fn: str, task, metric: Any) -> str | None:
  """``"train/loss"`` -> None: the minibatch loss of every step; ``"split/name"`` -> that
  metric, evaluated every ``eval_every`` steps (the sweep checks that it exists)."""
  if metric == "train/loss":
    return None
  if not isinstance(metric, str) or "/" not in metric:
    raise ValueError(f"{fn}: metric must be 'train/loss' or an evaluated metric 'split/name' "
                     f"(e.g. 'val/loss'), got metric={metric!r}")
  split = metric.split("/", 1)[0]
  if split not in task.eval:
    raise ValueError(f"{fn}: metric={metric!r} names split {split!r}; the task's evaluation "
                     f"splits are {sorted(task.eval)} (or use 'train/loss')")
  return metric


# ----------------------------------------------------------------------------------------
# Suggestions (host side, NumPy), restated from fastai's ``callback/schedule.py``.


def _valid_prefix(curves: np.ndarray) -> np.ndarray:
  """Length of the leading run of finite values along the last axis."""
  bad = ~np.isfinite(curves)
  return np.where(bad.any(-1), bad.argmax(-1), curves.shape[-1])


def _trim(curves: np.ndarray, skip_start: int, skip_end: int) -> np.ndarray:
  """fastai's ``losses[num_it // 10 : -5]`` after cutting at the first non-finite value;
  points outside the kept window become NaN."""
  n = _valid_prefix(curves)
  pos = np.arange(curves.shape[-1])
  keep = (pos >= skip_start) & (pos < (n - skip_end)[..., None])
  return np.where(keep, curves, np.nan)


def _lr_at(lrs: np.ndarray, idx: np.ndarray, ok: np.ndarray) -> np.ndarray:
  return np.where(ok, lrs[np.clip(idx, 0, len(lrs) - 1)], np.nan)


def _suggest_minimum(lrs: np.ndarray, curves: np.ndarray) -> np.ndarray:
  """The lr at the lowest loss (fastai's ``minimum`` returns it divided by 10)."""
  ok = np.isfinite(curves).any(-1)
  idx = np.argmin(np.where(np.isfinite(curves), curves, np.inf), axis=-1)
  return _lr_at(lrs, idx, ok)


def _suggest_steep(lrs: np.ndarray, curves: np.ndarray) -> np.ndarray:
  """fastai's ``steep``: the left end of the steepest descent of loss vs log(lr)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    grads = np.diff(curves, axis=-1) / np.diff(np.log(lrs))
  finite = np.isfinite(grads)
  ok = finite.any(-1)
  idx = np.argmin(np.where(finite, grads, np.inf), axis=-1)
  return _lr_at(lrs, idx, ok)


def _suggest_valley(lrs: np.ndarray, curves: np.ndarray) -> np.ndarray:
  """fastai's ``valley`` (longest decreasing subsequence, a point 2/3 into it), per curve.

  ``lds[i]`` is the length of the longest strictly decreasing subsequence ending at ``i``;
  the valley ends at the first ``i`` of maximal ``lds`` and starts ``lds`` points before it;
  the suggestion is ``start + int(len / 3) + int(len / 6)`` (``len = end - start``), as
  fastai. One departure: a curve without any decrease (every ``lds == 1``) gives fastai
  ``start = -1`` and so the *last* (largest) learning rate; here it gives the first point.
  """
  shape = curves.shape
  c = curves.reshape(-1, shape[-1])
  finite = np.isfinite(c)
  lds = np.where(finite, 1, 0)
  for i in range(1, c.shape[-1]):
    with np.errstate(invalid="ignore"):
      lower = (c[:, i:i + 1] < c[:, :i]) & finite[:, :i] & finite[:, i:i + 1]
    cand = np.where(lower, lds[:, :i] + 1, 0).max(-1)
    lds[:, i] = np.maximum(lds[:, i], cand)
  ok = finite.any(-1)
  end = np.argmax(lds, axis=-1)  # first occurrence of the longest
  length = lds[np.arange(len(c)), end]
  first = np.where(finite.any(-1), finite.argmax(-1), 0)
  start = end - length
  sections = (end - start) / 3
  idx = start + np.floor(sections).astype(int) + np.floor(sections / 2).astype(int)
  idx = np.maximum(idx, first)
  return _lr_at(lrs, idx, ok).reshape(shape[:-1])


# ----------------------------------------------------------------------------------------
# Result of the range test.


def _fig_ax(ax, figsize):
  from optaxlr.plot import _fig_ax as fig_ax

  return fig_ax(ax, figsize)


@dataclasses.dataclass
class LRFindResult:
  """The curves of a range test, with leading axes ``(seed, config)``, and its suggestions.

  The range test records one *point* per step (or per ``val_every`` steps with ``val``):
  the tracked loss (the training minibatch loss before that step's update, or the validation
  loss after it) and its smoothed value. Suggestions are computed per config on the *mean over
  seeds* of the smoothed curves, cut where the first seed stopped, and trimmed as fastai
  does (``skip_start`` points at the start, ``skip_end`` before the end). One departure:
  ``skip_end`` counts back from the last finite point; fastai counts back from the last
  recorded point, which for a run that turned NaN (fastai records NaN to the end) lies past
  the NaNs, so there the last finite points are kept.

  Attributes:
    lrs: the learning rate of each point, ``(P,)``.
    steps: the training step of each point, ``(P,)``.
    loss: the tracked loss at each point, ``(S, C, P)``; NaN after a run stopped.
    smoothed: its smoothed value (pytorch-lr-finder's rule), ``(S, C, P)``.
    schedule: the learning rate of every step, ``(T,)``.
    batch_loss: the training minibatch loss of every step, ``(S, C, T)``.
    stopped_at: the number of updates a run had received when it stopped, -1 if it ran to
      the end: with ``monitor="train/loss"`` the index of the step whose point stopped it
      (that step's update is discarded), with an evaluated metric the step after which the
      stopping evaluation was taken (one meaning in every driver: see
      :mod:`optaxlr.engine._rules`).
    nonfinite: ``(S, C)`` bool: the run stopped because a loss or a parameter was not finite.
    stop_reason: ``(S, C)``: ``"completed"``, ``"range_test"`` (the smoothed loss exceeded
      ``diverge`` times its best) or ``"diverged"`` (a non-finite value).
    seeds: the seed values, ``(S,)``.
    space: the :class:`optaxlr.search.Space` of the configs, or ``None`` (one config).
    tracked: ``"train"`` or ``"val"``: which loss the points hold.
    settings: the arguments of the test (``min_lr``, ``max_lr``, ``mode``, ``smooth``...).
    info: ``steps_run``, ``compile_s``, ``run_s``.
    sweep: the :func:`optaxlr.sweep` result the test is a view of (its evaluations, update
      ratios, kept parameters...).
  """

  lrs: np.ndarray
  steps: np.ndarray
  loss: np.ndarray
  smoothed: np.ndarray
  schedule: np.ndarray
  batch_loss: np.ndarray
  stopped_at: np.ndarray
  nonfinite: np.ndarray
  seeds: np.ndarray
  space: Any = None
  tracked: str = "train"
  settings: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)
  stop_reason: Any = None
  sweep: SweepResult | None = None

  def __post_init__(self):
    if self.stop_reason is None:
      self.stop_reason = np.where(np.asarray(self.nonfinite), "diverged",
                                  np.where(np.asarray(self.stopped_at) >= 0, "range_test", "completed"))

  @property
  def num_configs(self) -> int:
    return int(self.stopped_at.shape[1])

  @property
  def hparams(self) -> dict[str, np.ndarray]:
    """Hyperparameter name -> its value in each config, ``(C,)`` (empty without a space)."""
    if self.space is None:
      return {}
    return {k: np.asarray(v) for k, v in self.space.columns.items()}

  def config(self, i: int) -> dict[str, Any]:
    """The hyperparameters of config ``i`` (without ``lr``)."""
    return {k: v[i].item() for k, v in self.hparams.items()}

  @property
  def stopped(self) -> np.ndarray:
    """``(S, C)`` bool: the run stopped before the last step (it diverged)."""
    return self.stopped_at >= 0

  @property
  def stop_lr(self) -> np.ndarray:
    """``(S, C)``: the learning rate of the point at which a run stopped, NaN if it did not:
    the rate of the step whose loss stopped it (``"train"``), or of the last step before the
    stopping evaluation (an evaluated metric)."""
    last = self.stopped_at if self.tracked == "train" else self.stopped_at - 1
    idx = np.clip(last, 0, len(self.schedule) - 1)
    return np.where(self.stopped, self.schedule[idx], np.nan)

  def mean_curve(self) -> np.ndarray:
    """``(C, P)``: the mean over seeds of the smoothed losses, NaN from the first point at
    which any seed stopped with a non-finite value or had stopped before."""
    n = _valid_prefix(self.smoothed).min(axis=0)  # (C,)
    mean = self.smoothed.mean(axis=0)
    pos = np.arange(self.smoothed.shape[-1])
    return np.where(pos < n[:, None], mean, np.nan)

  def _curves(self, skip_start: int | None, skip_end: int) -> np.ndarray:
    if skip_start is None:
      skip_start = len(self.lrs) // 10
    _validate.check_int("LRFindResult", "skip_start", skip_start, 0)
    _validate.check_int("LRFindResult", "skip_end", skip_end, 0)
    return _trim(self.mean_curve(), skip_start, skip_end)

  def minimum(self, *, skip_start: int | None = None, skip_end: int = 5) -> np.ndarray:
    """fastai's ``minimum``: a tenth of the learning rate at the lowest smoothed loss, ``(C,)``."""
    return _suggest_minimum(self.lrs, self._curves(skip_start, skip_end)) / 10

  def steep(self, *, skip_start: int | None = None, skip_end: int = 5) -> np.ndarray:
    """fastai's ``steep``: where the smoothed loss falls fastest against ``log(lr)``, ``(C,)``."""
    return _suggest_steep(self.lrs, self._curves(skip_start, skip_end))

  def valley(self, *, skip_start: int | None = None, skip_end: int = 5) -> np.ndarray:
    """fastai's ``valley``: 2/3 into the longest descending stretch of the curve, ``(C,)``."""
    return _suggest_valley(self.lrs, self._curves(skip_start, skip_end))

  def cyclic_bounds(
      self, config: int | None = None, *, divisor: float = 4.0,
      skip_start: int | None = None, skip_end: int = 5,
  ) -> tuple[Any, Any]:
    """Smith's bounds for a cyclical schedule: ``(base_lr, max_lr)``.

    ``max_lr`` is the learning rate at which the smoothed loss stops improving (its minimum
    over the trimmed curve) and ``base_lr = max_lr / divisor``; Smith (2017, section 3.3)
    suggests a divisor of 3 or 4. Feed them to :func:`optaxlr.schedules.cyclic`
    (``cyclic(*bounds, step_size_up=...)``). As the peak of
    :func:`optaxlr.schedules.one_cycle`, ``max_lr`` is too high: it trained about one point of
    validation error worse than :meth:`suggest`'s ``"recommended"`` rate (measured there).

    Args:
      config: return floats for this config; default: arrays over the configs ``(C,)``.
      divisor: ``max_lr / base_lr``, ``> 1``.

    Returns:
      ``(base_lr, max_lr)``, NaN where the curve was too short.
    """
    _validate.check("LRFindResult.cyclic_bounds", "divisor", divisor, lambda v: v > 1, "> 1")
    max_lr = _suggest_minimum(self.lrs, self._curves(skip_start, skip_end))
    base_lr = max_lr / divisor
    if config is None:
      return base_lr, max_lr
    return float(base_lr[config]), float(max_lr[config])

  def suggest(
      self, config: int | None = None, *, skip_start: int | None = None, skip_end: int = 5,
      divisor: float = 4.0,
  ) -> dict[str, Any]:
    """The rate to use, ``recommended``, beside every suggestion: ``minimum``, ``steep``,
    ``valley``, ``base_lr``, ``max_lr``.

    ``recommended`` is ``steep`` (fastai's: where the smoothed loss falls fastest against
    ``log(lr)``), the suggestion that trained best as the peak of
    :func:`optaxlr.schedules.one_cycle` in ``benchmarks/recipes_lr_find.py``: the built-in
    digits (:func:`optaxlr.tasks.digits`, an MLP), :func:`lr_find` with its defaults and 3
    seeds, repeated with 5 keys; then ``one_cycle(peak, 500)``, batch 64, 8 training seeds per
    range test (40 runs per suggestion); final validation error, mean ± standard deviation:

    ==========  ===============  ================
    suggestion  AdamW (wd 1e-2)  SGD momentum 0.9
    ==========  ===============  ================
    steep       3.19 ± 0.35 %    3.41 ± 0.59 %
    minimum     3.28 ± 0.54 %    3.39 ± 0.39 %
    base_lr     4.19 ± 0.86 %    3.24 ± 0.39 %
    max_lr      3.99 ± 0.82 %    4.59 ± 0.91 %
    valley      3.96 ± 0.70 %    5.25 ± 1.48 %
    ==========  ===============  ================

    (The best peak of a grid in hindsight: 3.23 % and 3.30 %.) Over both optimizers,
    ``minimum`` ties with ``steep`` (paired difference +0.03 ± 0.06 points), ``max_lr`` is
    0.99 ± 0.09 points worse (too high a peak) and fastai's ``valley`` 1.30 ± 0.14 (too low).
    One task and two optimizers: where it matters, sweep the peak around the recommendation.

    Args:
      config: give floats for this config; default: arrays over the configs ``(C,)``.
      skip_start: points skipped at the start (default: a tenth of the points, as fastai).
      skip_end: points skipped before the end (default 5, as fastai).
      divisor: ``max_lr / base_lr`` of the cyclical bounds.

    Returns:
      ``{"recommended", "minimum", "steep", "valley", "base_lr", "max_lr"}``: arrays ``(C,)``,
      or floats for ``config``; NaN where the curve was too short.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from optaxlr.tasks import Task
      >>> task = Task.from_functions(
      ...     "quadratic", init=lambda key: {"w": jnp.ones(2)},
      ...     apply=lambda p, x: 0.5 * (p["w"] ** 2).sum() + 0.0 * x.sum(),
      ...     loss=lambda out, y: out, train={"x": jnp.zeros((1, 1)), "y": jnp.zeros(1)})
      >>> res = lr_find(task, lambda h: optax.sgd(h["lr"]), min_lr=1e-3, max_lr=100.0, steps=40)
      >>> s = res.suggest(0)
      >>> list(s), s["recommended"] == s["steep"]
      (['recommended', 'minimum', 'steep', 'valley', 'base_lr', 'max_lr'], True)
      >>> bool(s["recommended"] < 2.0 < res.stop_lr[0, 0])   # below SGD's limit 2 / curvature
      True
    """
    kw = {"skip_start": skip_start, "skip_end": skip_end}
    base_lr, max_lr = self.cyclic_bounds(divisor=divisor, **kw)
    steep = self.steep(**kw)
    out = {
        "recommended": steep.copy(),  # measured: see the docstring
        "minimum": self.minimum(**kw), "steep": steep, "valley": self.valley(**kw),
        "base_lr": base_lr, "max_lr": max_lr,
    }
    if config is None:
      return out
    return {k: float(v[config]) for k, v in out.items()}

  def plot(
      self,
      configs: Sequence[int] | None = None,
      *,
      ax=None,
      raw: bool = True,
      suggestions: Sequence[str] = ("valley", "steep", "minimum"),
      recommend: str | None = "steep",
      figsize=(7, 4),
  ):
    """Loss against learning rate (log axis); returns the ``Figure``.

    Per config: the smoothed mean over seeds (bold, its label says the recommended rate), a
    min-max band over seeds, the raw mean loss (faint, cut where it leaves the smoothed
    curves' range), each suggestion as a marker and the recommended rate as a dashed
    vertical line. The legend names every config and every kind of mark.

    Args:
      configs: config indices to draw (default: up to 8 spread over the configs).
      raw: also draw the raw (unsmoothed) mean loss, faint.
      suggestions: which suggestions to mark (any of ``suggest()``'s keys).
      recommend: the suggestion drawn as the recommended rate: ``"steep"``, the one
        :meth:`suggest` returns as ``"recommended"`` (measured there; fastai's default is
        ``"valley"``, which trained worse), or ``None``.
    """
    from matplotlib.lines import Line2D

    fig, ax = _fig_ax(ax, figsize)
    if configs is None:
      configs = np.unique(np.linspace(0, self.num_configs - 1,
                                      min(8, self.num_configs)).astype(int))
    configs = [int(c) for c in configs]
    keys = ("minimum", "steep", "valley", "base_lr", "max_lr")
    for name in (*suggestions, *([recommend] if recommend is not None else [])):
      if name not in keys:
        raise ValueError(f"LRFindResult.plot: suggestions and recommend must be among {keys}, "
                         f"got {name!r}")
    mean = self.mean_curve()
    sugg = self.suggest() if (suggestions or recommend) else {}
    markers = dict(zip(("valley", "steep", "minimum", "max_lr", "base_lr"), "o^svD"))
    n_s = self.smoothed.shape[0]
    shown = mean[configs]
    finite = shown[np.isfinite(shown)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
    raw_means = {}
    if raw:
      for c in configs:
        live = np.isfinite(mean[c])  # where every seed is still running
        r = np.where(live, self.loss[:, c].mean(0), np.nan)
        r = np.where(r <= hi, r, np.nan)  # above the smoothed curves' top: cut, not clipped
        raw_means[c] = r
        if np.isfinite(r).any():
          lo = min(lo, float(np.nanmin(r)))
    for c in configs:
      cfg = self.config(c)
      label = ", ".join(f"{k}={v:.3g}" for k, v in cfg.items()) or f"{self.tracked} loss"
      rec = sugg[recommend][c] if recommend is not None else np.nan
      if np.isfinite(rec):
        label += f": {recommend} {rec:.3g}"
      line, = ax.plot(self.lrs, mean[c], label=label, lw=2)
      color = line.get_color()
      live = np.isfinite(mean[c])
      if c in raw_means:
        ax.plot(self.lrs, raw_means[c], color=color, alpha=0.3, lw=1)
      if n_s > 1 and live.any():
        band = self.smoothed[:, c, live]
        ax.fill_between(self.lrs[live], band.min(0), band.max(0), color=color, alpha=0.15,
                        lw=0)
      for name in suggestions:
        lr = sugg[name][c]
        if np.isfinite(lr) and live.any():
          y = np.interp(np.log(lr), np.log(self.lrs[live]), mean[c][live])
          ax.plot([lr], [y], markers.get(name, "x"), color=color, ms=7)
      if np.isfinite(rec):  # a vertical line over the axes' height
        ax.vlines(rec, 0, 1, transform=ax.get_xaxis_transform(), color=color, ls="--", lw=1)
    if self.settings.get("mode", "exp") == "exp":
      ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{self.tracked} loss")
    if np.isfinite(lo) and np.isfinite(hi):
      pad = 0.05 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-12
      ax.set_ylim(lo - pad, hi + pad)
    # The legend: every config's line, then one entry per kind of mark.
    handles, _ = ax.get_legend_handles_labels()
    seeds = f"mean over {n_s} seed{'s' * (n_s != 1)}"
    kinds = [Line2D([], [], color="k", lw=2, label=f"smoothed loss, {seeds}")]
    if n_s > 1:
      kinds.append(Line2D([], [], color="k", alpha=0.15, lw=6, label="min-max over seeds"))
    if raw_means:
      kinds.append(Line2D([], [], color="k", alpha=0.3, lw=1, label="raw loss (faint)"))
    for name in suggestions:
      kinds.append(Line2D([], [], color="k", ls="", marker=markers.get(name, "x"), label=name))
    if recommend is not None:
      kinds.append(Line2D([], [], color="k", ls="--", lw=1, label=f"recommended: {recommend}"))
    ax.legend(handles=handles + kinds, fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    stopped = int(self.stopped.sum())
    ax.set_title(f"LR range test, {self.settings.get('mode', 'exp')} rates: {self.tracked} loss"
                 f" ({stopped} of {self.stopped.size} runs stopped early)", fontsize=9,
                 wrap=True)
    return fig

def lr_find(
    task,
    optimizer: Optimizer,
    space: Any = None,
    *,
    steps: int = 100,
    batch_size: int | None = None,
    seeds: int | Sequence[int] | None = None,
    eval_every: int | None = None,
    sync_every: int | None = None,
    metric: str = "train/loss",
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    mode: Literal["exp", "linear"] = "exp",
    smooth: float = 0.05,
    diverge: float = 4.0,
    key: int | jax.Array = 0,
    callback: Callable | None = None,
    execution: Execution | None = None,
) -> LRFindResult:
  """The learning-rate range test for every seed x config in one compiled program.

  A view of one :func:`optaxlr.sweep`: the rate of step ``t``, ``lr_t`` of
  :func:`range_test_lrs` (``min_lr`` at the first step, ``max_lr`` at the last), is the sweep's
  ``ramp={"lr": ...}``, and the range test's stop is one of its ``rules``
  (:class:`optaxlr.engine.RangeTest`). So everything a sweep takes works here: a
  ``batch_size`` axis (each config at its own size), categorical and fold axes, model
  hyperparameters (a swept dropout), host-fed data, checkpoints (``Execution(checkpoint_dir=)``,
  resumable after a kill), callbacks. After each point the tracked loss ``l`` (the training
  minibatch loss before the update with ``metric="train/loss"``; an evaluated metric such as
  ``"val/loss"`` after every ``eval_every`` steps otherwise) is smoothed exactly as
  pytorch-lr-finder's ``range_test`` does::

      s_0 = l_0;   s_t = smooth * l_t + (1 - smooth) * s_{t-1}   (smooth = 0: s_t = l_t)
      best_t = min(s_0 .. s_t);   stop when s_t > diverge * best_t

  i.e. an exponential moving average that *starts at the first loss* (no bias correction;
  fastai instead starts at 0 and divides by ``1 - beta ** (t + 1)`` with ``beta = 0.98``).
  A run also stops when its loss, its smoothed loss or its parameters turn non-finite
  (pytorch-lr-finder would carry NaN on). A stopped run is frozen and its later points are
  NaN; the point that triggered the stop is kept (as in both libraries' histories). The
  host syncs every ``sync_every`` steps and ends as soon as every run has stopped.

  Every config of a seed sees the same minibatches and the same initial parameters (the
  keys of :func:`optaxlr.run_keys`, the order of :func:`optaxlr.batch_indices`), so one
  row equals a range test of that config and seed alone. The core keeps the compiled program:
  a second call that changes only numbers (``min_lr``, ``max_lr``, ``mode``, ``smooth``,
  ``diverge``, ``key``, the values of the space) does not recompile. The task's evaluation
  splits are evaluated at every host sync (``res.sweep.metrics``).

  Departures: pytorch-lr-finder's default ``diverge_th`` is 5; this default is fastai's 4.
  The losses are assumed positive (the stopping rule compares with a multiple of the best).

  Args:
    task: an :class:`optaxlr.Task`.
    optimizer: ``hparams -> optax.GradientTransformation``, the same function
      :func:`optaxlr.sweep` takes: ``hparams["lr"]`` is the traced rate of the current step and
      the other entries come from ``space`` (e.g. ``lambda h: optax.sgd(h["lr"])``). The
      transform is rebuilt each step with the new rate, so it must read the rate when built;
      one that keeps it in an ``optax.inject_hyperparams`` state is refused.
    space: other hyperparameters (an :mod:`optaxlr.search` space or a dict of equal-length
      1-D arrays, e.g. ``search.grid(wd=[0, 1e-4])``, possibly with a seed axis); must not
      contain ``"lr"``; every axis must be read by the optimizer.
    steps: number of steps, ``>= 2``.
    batch_size: minibatch size; default ``min(128, number of training examples)``.
    seeds: number of seeds (0..n-1) or the list of seed values; default 1 (or the space's
      seed axis).
    eval_every: steps between evaluations of a ``metric`` other than ``"train/loss"`` (one
      point each; the last point is after the last step); default 1.
    sync_every: steps between host syncs (early end when every run stopped; progress,
      checkpoints, callbacks); a multiple of ``eval_every``; default about a tenth of ``steps``.
    metric: ``"train/loss"`` (every step's minibatch loss, the default) or an evaluated
      metric (``"val/loss"``), as pytorch-lr-finder's ``val_loader``.
    min_lr: the first rate, ``> 0`` (``>= 0`` for ``mode="linear"``).
    max_lr: the last rate, ``> min_lr``.
    mode: ``"exp"`` (geometric, the default) or ``"linear"`` growth.
    smooth: the weight of the new loss in the moving average, in ``[0, 1)`` (0: none).
    diverge: stop when the smoothed loss exceeds ``diverge`` times its best, ``> 1``
      (``np.inf``: only non-finite values stop a run).
    key: the base PRNG key (an int, or a raw or typed key), as :func:`optaxlr.sweep`.
    callback: called after every chunk, as :func:`optaxlr.sweep`'s.
    execution: how to run (:class:`optaxlr.Execution`); default ``Execution(progress=False)``.

  Returns:
    An :class:`LRFindResult` with ``suggest()``, ``cyclic_bounds()`` and ``plot()``.

  Examples:
    >>> import jax.numpy as jnp, optax, optaxlr
    >>> from optaxlr.tasks import Task
    >>> task = Task.from_functions(
    ...     "quadratic", init=lambda key: {"w": jnp.ones(2)},
    ...     apply=lambda p, x: 0.5 * (p["w"] ** 2).sum() + 0.0 * x.sum(),
    ...     loss=lambda out, y: out, train={"x": jnp.zeros((1, 1)), "y": jnp.zeros(1)})
    >>> res = lr_find(task, lambda h: optax.sgd(h["lr"]), min_lr=1e-3, max_lr=100.0, steps=40)
    >>> res.loss.shape, bool(res.stopped[0, 0])   # curvature 1: SGD diverges past lr = 2
    ((1, 1, 40), True)
    >>> 2.0 < float(res.stop_lr[0, 0]) < 20.0
    True

  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.
    pytorch-lr-finder, ``LRFinder.range_test``,
    https://github.com/davidtvs/pytorch-lr-finder.
  """
  fn = "lr_find"
  steps = _validate.check_int(fn, "steps", steps, 2)
  lrs_np = _range_lrs(fn, min_lr, max_lr, steps, mode)
  _validate.in_range(fn, "smooth", smooth, 0.0, 1.0, closed="left")
  _validate.check(fn, "diverge", diverge, lambda v: v > 1, "> 1")
  space = _check_space(fn, space)
  tracked = _tracked(fn, task, metric)
  if tracked is None and eval_every is not None:
    raise ValueError(f"{fn}: eval_every={eval_every!r} is read only when metric is an "
                     "evaluated metric (e.g. 'val/loss'); with 'train/loss' every step is a point")
  if tracked is not None:
    eval_every = 1 if eval_every is None else _validate.check_int(fn, "eval_every", eval_every, 1, steps)
  if sync_every is None:
    base = 1 if eval_every is None else eval_every
    sync_every = base * max(1, math.ceil(steps / base / 10))
  sync_every = _validate.check_int(fn, "sync_every", sync_every, 1)
  if tracked is None:
    eval_every = sync_every  # the task's splits are evaluated at every host sync
  if not callable(optimizer):
    raise TypeError(f"{fn}: optimizer must be a function hparams -> optax.GradientTransformation")
  _refuse_injected_lr(fn, task, optimizer, space, float(lrs_np[0]))
  with _validate.renamed("sweep", fn):
    res = sweep(task, optimizer, space, steps=steps, batch_size=batch_size, seeds=seeds,
                eval_every=eval_every, sync_every=sync_every, ramp={"lr": lrs_np},
                rules=(RangeTest(smooth=float(smooth), diverge=float(diverge), metric=tracked),),
                key=key, callback=callback,
                execution=Execution(progress=False) if execution is None else execution)
  where = "step" if tracked is None else "eval"
  loss, smoothed = res.records[f"{where}/0/raw"], res.records[f"{where}/0/smoothed"]
  point_steps = np.arange(steps) if tracked is None else res.eval_steps - 1
  sizes = res.hparams.get("batch_size")
  return LRFindResult(
      lrs=lrs_np[point_steps], steps=point_steps, loss=loss, smoothed=smoothed,
      schedule=lrs_np, batch_loss=res.batch_loss, stopped_at=res.stopped_at,
      nonfinite=res.stop_reason == "diverged", seeds=np.asarray(res.seeds), space=space,
      tracked="train" if tracked is None else tracked.split("/", 1)[0],
      settings={"min_lr": float(lrs_np[0]), "max_lr": float(lrs_np[-1]), "steps": steps,
                "mode": mode, "smooth": float(smooth), "diverge": float(diverge),
                "batch_size": (res.settings.batch_size if sizes is None
                               else [int(b) for b in sizes]),
                "eval_every": eval_every, "metric": metric,
                "key": key_data(as_key(fn, key))},
      info=res.info,
      stop_reason=res.stop_reason,
      sweep=res,
  )


def _refuse_injected_lr(fn: str, task, optimizer, space, lr0: float) -> None:
  """An optimizer that keeps its rate in an ``optax.inject_hyperparams`` state ignores the rate
  passed at each step: refused."""
  config = {} if space is None else {k: np.asarray(v)[0] for k, v in space.columns.items()
                                     if np.asarray(v).dtype.kind in "iuf"}
  try:
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    state = jax.eval_shape(lambda p: optimizer({**config, "lr": lr0}).init(p), params)
  except Exception:  # noqa: BLE001 -- the sweep's own checks report it with context
    return
  if _holds_injected_lr(state):
    raise ValueError(
        f"{fn}: the optimizer keeps its learning rate in an optax.inject_hyperparams state, "
        "which ignores the rate passed at each step; pass the plain transform instead, "
        "e.g. lambda h: optax.adam(h['lr'])"
    )


# ----------------------------------------------------------------------------------------
# The grid variant: short runs at constant rates, through the sweep engine.


@dataclasses.dataclass
class LRGridResult:
  """Short constant-rate runs at ``N`` learning rates (x ``C`` configs x ``S`` seeds).

  A rate's loss *fell* when no seed diverged and the mean over seeds of its final loss is
  below ``(1 - fall_threshold)`` times the mean initial loss.

  Attributes:
    lrs: the learning rates, ``(N,)``, increasing.
    initial: the loss at initialisation, ``(S, C)`` (the same for every rate: the runs of a
      seed share their initial parameters).
    final: the loss at the end of each run, ``(S, N, C)``; ``inf`` where the run diverged.
    diverged: ``(S, N, C)`` bool.
    fell: ``(N, C)`` bool.
    fall_threshold: the relative decrease that counts as falling.
    metric: ``"train"`` or ``"val"``: which loss ``initial`` and ``final`` hold.
    space: the other hyperparameters (a :class:`optaxlr.search.Space`) or ``None``.
    sweep: the underlying :class:`optaxlr.SweepResult` (configs ordered rate-major).
  """

  lrs: np.ndarray
  initial: np.ndarray
  final: np.ndarray
  diverged: np.ndarray
  fell: np.ndarray
  fall_threshold: float
  metric: str
  space: Any
  sweep: SweepResult

  @property
  def num_configs(self) -> int:
    return int(self.fell.shape[1])

  def config(self, i: int) -> dict[str, Any]:
    """The hyperparameters of config ``i`` (without ``lr``)."""
    if self.space is None:
      return {}
    return {k: np.asarray(v)[i].item() for k, v in self.space.columns.items()}

  def mean_final(self) -> np.ndarray:
    """``(N, C)``: the mean over seeds of the final loss (``inf`` if a seed diverged)."""
    return self.final.mean(axis=0)

  def largest_falling(self) -> np.ndarray:
    """``(C,)``: the largest rate whose loss still fell, NaN if none did."""
    idx = np.where(self.fell, np.arange(len(self.lrs))[:, None], -1).max(axis=0)
    return np.where(idx >= 0, self.lrs[np.maximum(idx, 0)], np.nan)

  def best(self) -> np.ndarray:
    """``(C,)``: the rate of the lowest mean final loss, NaN if every rate diverged."""
    mean = self.mean_final()
    ok = np.isfinite(mean).any(axis=0)
    idx = np.argmin(np.where(np.isfinite(mean), mean, np.inf), axis=0)
    return np.where(ok, self.lrs[idx], np.nan)

  def suggest(self, config: int | None = None) -> dict[str, Any]:
    """``{"largest_falling": ..., "best": ...}``: arrays ``(C,)``, or floats for ``config``."""
    out = {"largest_falling": self.largest_falling(), "best": self.best()}
    if config is None:
      return out
    return {k: float(v[config]) for k, v in out.items()}

  def plot(self, configs: Sequence[int] | None = None, *, ax=None, recommend: str | None = "best",
           figsize=(7, 4)):
    """Final loss against the rate (log axes); returns the ``Figure``.

    Per config: the mean over seeds of the final loss (its label says the recommended rate),
    the falling threshold ``(1 - fall_threshold)`` x the initial loss dashed, diverged rates
    as crosses at the top, both suggestions as markers and the recommended rate as a dotted
    vertical line. The legend names every config and every kind of mark.

    Args:
      configs: config indices to draw (default: the first 8).
      recommend: the suggestion drawn as the recommended rate, ``"best"`` or
        ``"largest_falling"``, or ``None``.
    """
    from matplotlib.lines import Line2D

    if recommend not in (None, "best", "largest_falling"):
      raise ValueError(f"LRGridResult.plot: recommend must be 'best', 'largest_falling' or "
                       f"None, got {recommend!r}")
    fig, ax = _fig_ax(ax, figsize)
    if configs is None:
      configs = range(min(8, self.num_configs))
    mean = self.mean_final()
    init = self.initial.mean(axis=0)
    sugg = self.suggest()
    marks = {"largest_falling": "^", "best": "*"}
    finite = mean[np.isfinite(mean)]
    top = float(finite.max()) if finite.size else float(np.max(init))
    any_div = False
    for c in configs:
      c = int(c)
      cfg = self.config(c)
      label = ", ".join(f"{k}={v:.3g}" for k, v in cfg.items()) or f"{self.metric} loss"
      rec = sugg[recommend][c] if recommend is not None else np.nan
      if np.isfinite(rec):
        label += f": {recommend} {rec:.3g}"
      y = np.where(np.isfinite(mean[:, c]), mean[:, c], np.nan)
      line, = ax.plot(self.lrs, y, "o-", label=label)
      color = line.get_color()
      ax.axhline((1 - self.fall_threshold) * init[c], color=color, ls="--", lw=1, alpha=0.6)
      div = self.diverged[:, :, c].any(0)
      any_div |= bool(div.any())
      ax.plot(self.lrs[div], np.full(int(div.sum()), top), "x", color=color, ms=8)
      for name, marker in marks.items():
        lr = sugg[name][c]
        if np.isfinite(lr):
          i = int(np.argmin(np.abs(self.lrs - lr)))
          ax.plot([lr], [y[i]], marker, color=color, ms=10)
      if np.isfinite(rec):  # a vertical line over the axes' height
        ax.vlines(rec, 0, 1, transform=ax.get_xaxis_transform(), color=color, ls=":", lw=1.5)
    ax.set_xscale("log")
    if finite.size and np.all(finite > 0):
      ax.set_yscale("log")
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel(f"final {self.metric} loss")
    handles, _ = ax.get_legend_handles_labels()
    n_s = self.final.shape[0]
    kinds = [
        Line2D([], [], color="k", marker="o", label=f"mean over {n_s} seed{'s' * (n_s != 1)}"),
        Line2D([], [], color="k", ls="--", lw=1, alpha=0.6,
               label=f"falling: below {1 - self.fall_threshold:.3g} x initial loss"),
    ]
    if any_div:
      kinds.append(Line2D([], [], color="k", ls="", marker="x", label="diverged"))
    kinds += [Line2D([], [], color="k", ls="", marker=m, ms=8, label=n) for n, m in marks.items()]
    if recommend is not None:
      kinds.append(Line2D([], [], color="k", ls=":", lw=1.5, label=f"recommended: {recommend}"))
    ax.legend(handles=handles + kinds, fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"constant-rate runs: final {self.metric} loss", fontsize=9)
    return fig

def _initial_loss(task, data: Any, init_keys: jax.Array, hparams: dict[str, np.ndarray]
                  ) -> np.ndarray:
  """``(seeds, configs)`` (``hparams``: one non-empty column per axis, ``configs`` long): the loss of each seed's initial parameters on ``data``, in evaluation
  mode. A model with state or swept model hyperparameters (BatchNorm, a swept Dropout) is
  evaluated as the sweep evaluates it (its initial model state, the config's hyperparameters);
  a plain task by ``task.loss``."""
  if not task.stateful:
    initial = np.asarray(jax.jit(jax.vmap(lambda k: task.loss(task.init(k), data)))(init_keys))
    n_cfg = len(next(iter(hparams.values())))
    return np.broadcast_to(initial[:, None], (len(initial), n_cfg)).astype(np.float64)

  def one(k, h):
    return task.evaluate(task.init(k), task.initial_state(k), data, h)["loss"]
  hp = {name: jnp.asarray(v) for name, v in hparams.items()
        if np.asarray(v).dtype.kind in "fiub"}
  return np.asarray(jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(init_keys, hp),
                    dtype=np.float64)


def lr_find_grid(
    task,
    optimizer: Optimizer,
    space: Any = None,
    *,
    lrs: Any = None,
    steps: int = 100,
    batch_size: int | None = None,
    seeds: int | Sequence[int] | None = None,
    eval_every: int | None = None,
    sync_every: int | None = None,
    metric: str = "train/loss",
    window: int | None = None,
    fall_threshold: float = 0.05,
    key: int | jax.Array = 0,
    callback: Callable | None = None,
    execution: Execution | None = None,
) -> LRGridResult:
  """Short runs at constant learning rates, all in one :func:`optaxlr.sweep`.

  The robust alternative to the range test: rather than one run whose rate grows while it
  trains (its loss at rate ``r`` still reflects the smaller rates before it), every rate
  gets its own run from the same initial parameters and minibatch order. Search from small
  to large and keep the largest rate at which the loss still falls.

  The initial loss is the loss of the initial parameters on the whole training set (or
  the ``val`` split); the final loss is the mean minibatch loss over the last ``window``
  steps (or the validation loss after the last step). A rate's loss *fell* when no seed
  diverged and ``mean_seeds(final) < (1 - fall_threshold) * mean_seeds(initial)``.

  Args:
    task: an :class:`optaxlr.Task`.
    optimizer: ``hparams -> transform`` reading ``hparams["lr"]``, as :func:`optaxlr.sweep`.
    lrs: the rates to try (keyword, required), a 1-D array of positive values (e.g.
      ``search.logspace(1e-4, 1, 9)``); sorted increasingly in the result.
    steps: steps per run.
    batch_size: minibatch size; default ``min(128, number of training examples)``.
    seeds: number of seeds or their values.
    space: other hyperparameters (crossed with every rate), without ``"lr"``.
    eval_every: steps between evaluations (as :func:`optaxlr.sweep`).
    sync_every: steps between host syncs, as :func:`optaxlr.sweep`.
    metric: ``"train/loss"`` (the mean minibatch loss of the last ``window`` steps) or
      ``"val/loss"`` (the validation loss after the last step).
    window: steps averaged for the final training loss; default ``max(1, steps // 10)``.
    fall_threshold: the relative decrease that counts as falling, in ``[0, 1)``.
    key: the base PRNG key.
    callback: called after every chunk, as :func:`optaxlr.sweep`'s.
    execution: how to run (:class:`optaxlr.Execution`); default ``Execution(progress=False)``.

  Returns:
    An :class:`LRGridResult` with ``largest_falling()``, ``best()``, ``suggest()``, ``plot()``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from optaxlr.tasks import Task
    >>> task = Task.from_functions(
    ...     "quadratic", init=lambda key: {"w": jnp.ones(2)},
    ...     apply=lambda p, x: 0.5 * (p["w"] ** 2).sum() + 0.0 * x.sum(),
    ...     loss=lambda out, y: out, train={"x": jnp.zeros((1, 1)), "y": jnp.zeros(1)})
    >>> res = lr_find_grid(task, lambda h: optax.sgd(h["lr"]), lrs=[0.5, 1.5, 2.5], steps=20)
    >>> res.fell[:, 0].tolist(), res.suggest(0)["largest_falling"]   # stable below lr = 2
    ([True, True, False], 1.5)
  """
  fn = "lr_find_grid"
  from optaxlr import search

  if space is not None and not isinstance(space, (dict, search.Space)):
    raise TypeError(f"{fn}: space (the third argument, as in sweep and lr_find) must be an "
                    f"optaxlr.search space or a dict, got {type(space).__name__}; the rates to "
                    "try are the keyword lrs=[...]")
  if lrs is None:
    raise TypeError(f"{fn}: lrs=[...] (the learning rates to try) is required")
  lrs_np = np.asarray(lrs, dtype=np.float64) if not isinstance(lrs, (str, bytes)) else np.asarray([])
  if lrs_np.ndim != 1 or lrs_np.size == 0:
    raise ValueError(f"{fn}: lrs must be a non-empty 1-D sequence, got shape {lrs_np.shape}")
  _validate.positive(fn, "lrs", lrs_np)
  _validate.check(fn, "lrs", lrs_np, np.isfinite, "finite")
  if len(np.unique(lrs_np)) != lrs_np.size:
    raise ValueError(f"{fn}: lrs must be distinct, got lrs={lrs_np.tolist()}")
  lrs_np = np.sort(lrs_np)
  steps = _validate.check_int(fn, "steps", steps, 1)
  _validate.one_of(fn, "metric", metric, ("train/loss", "val/loss"))
  _validate.in_range(fn, "fall_threshold", fall_threshold, 0.0, 1.0, closed="left")
  if window is not None and metric != "train/loss":
    raise ValueError(f"{fn}: window={window!r} is read only with metric='train/loss'")
  if window is None:
    window = max(1, steps // 10)
  window = _validate.check_int(fn, "window", window, 1)
  if window > steps:
    raise ValueError(f"{fn}: window must be <= steps={steps}, got window={window}")
  if metric == "val/loss" and "val" not in task.eval:
    raise ValueError(f"{fn}: metric='val/loss' needs a 'val' split, the task has {sorted(task.eval)}")
  if metric == "train/loss" and getattr(task, "host_fed", False):
    raise ValueError(f"{fn}: metric='train/loss' compares with the initial loss on the whole "
                     f"training set, which a host-fed task does not hold (task {task.name!r} "
                     "reads train(seed) batches); pass metric='val/loss' to compare the 'val' "
                     "split's loss before and after the runs")
  extra = _check_space(fn, space)
  grid = search.grid(lr=lrs_np)
  full = grid * extra if extra is not None else grid
  with _validate.renamed("sweep", fn):
    res = sweep(task, optimizer, full, steps=steps, batch_size=batch_size, seeds=seeds,
                eval_every=eval_every, sync_every=sync_every, key=key, callback=callback,
                execution=Execution(progress=False) if execution is None else execution)
  n_cfg = res.num_configs // len(lrs_np)
  if extra is not None:  # without the seed axis the space may have held
    rest = [a for a in extra.axes if a.dim != search.SEED]
    extra = search.Space(rest, extra.fixed) if rest else None
  n_s, n_lr = len(res.seeds), len(lrs_np)
  diverged = res.diverged.reshape(n_s, n_lr, n_cfg)
  if metric == "train/loss":
    per = res.settings.log_every
    tail = res.batch_loss[..., -max(1, window // per):]
    ok = np.isfinite(tail)
    # The mean of the finite values (a diverged run's tail has none: inf below).
    final = np.where(ok, tail, 0).sum(-1) / np.maximum(ok.sum(-1), 1)
    final = np.where(ok.any(-1), final, np.inf)
  else:
    final = res.metrics["val/loss"][..., -1]
  final = final.reshape(n_s, n_lr, n_cfg)
  final = np.where(diverged | ~np.isfinite(final), np.inf, final)
  initial = _initial_loss(task, task.train if metric == "train/loss" else task.eval["val"],
                          jnp.stack([run_keys(key, int(s))[0] for s in res.seeds]),
                          {k: v[:n_cfg] for k, v in res.hparams.items()})
  mean_final = final.mean(axis=0)
  fell = ~diverged.any(axis=0) & (mean_final < (1 - fall_threshold) * initial.mean(axis=0))
  return LRGridResult(lrs=lrs_np, initial=initial, final=final, diverged=diverged, fell=fell,
                      fall_threshold=float(fall_threshold), metric=metric.split("/")[0],
                      space=extra, sweep=res)
