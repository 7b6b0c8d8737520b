"""Every training horizon from one trunk: warmup-stable-decay cooldowns forked off one run.

A warmup-stable-decay (WSD) schedule is constant at its peak until its cooldown starts, and the
plateau does not depend on the horizon ``H``. So the runs of every horizon share their first
``H (1 - f)`` steps (``f``: the cooldown fraction) with one constant-rate *trunk*: train the
trunk once, keep its state at each fork point (``Execution(keep_params_at=)``) and train only
the cooldowns, each a child of the trunk (:meth:`optaxlr.SweepResult.fork`) continuing its
step numbering (schedule, minibatch order, model keys). Each cooldown branch then *is* the
separately trained WSD run of its horizon, not an approximation of it: the trunk's rate, data
and keys up to the fork point are those of the separate run, and the branch continues from
the identical state (bitwise on the CPU in float32; ``tests/test_branch.py`` shows it).

The views (:func:`horizons`) are thin drivers of :func:`optaxlr.sweep`: one trunk sweep (the
peak rates x seeds), then one sweep per fork (horizon, fraction) training every cooldown shape
of every peak rate x seeds in one compiled program (the same chunk program for every fork, so
it compiles once).

References:
  Hägele et al., `Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations
  <https://arxiv.org/abs/2405.18392>`_, 2024 (cooldowns from a constant-rate trunk; 1-sqrt).
  Bergsma et al., `Straight to Zero: Why Linearly Decaying the Learning Rate to Zero Works
  Best for LLMs <https://arxiv.org/abs/2502.15938>`_, 2025 (linear to zero vs cosine to 10%).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from optaxlr import search
from optaxlr import stats
from optaxlr.engine import Execution
from optaxlr.engine import SweepResult
from optaxlr.engine import sweep
from optaxlr.schedules import warmup_stable_decay

__all__ = ["SHAPES", "Horizons", "horizons", "wsd_schedule"]

SHAPES = ("linear", "cosine", "1-sqrt")
_DECAY = {"linear": "linear", "cosine": "cosine", "1-sqrt": "sqrt"}


def wsd_schedule(lr: Any, horizon: Any, cooldown: Any, shape: str, *, warmup_steps: Any = 0,
                 cosine_floor: float = 0.1) -> optax.Schedule:
  """The WSD schedule of one branch of :func:`horizons`, by shape name.

  ``"linear"`` and ``"1-sqrt"`` decay to zero; ``"cosine"`` decays to ``cosine_floor * lr``
  (default 10% of the peak, the cosine that Bergsma et al. 2025 compare linear-to-zero with;
  ``cosine_floor=0`` for cosine to zero). It is
  ``optaxlr.schedules.warmup_stable_decay(lr, horizon, warmup_steps, decay_steps=cooldown,
  decay=..., end_lr=...)`` with ``"1-sqrt"`` named ``"sqrt"`` there.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(wsd_schedule(1.0, 10, 4, "cosine")(jnp.array([0, 6, 8, 10])))
    [1.   1.   0.55 0.1 ]
  """
  if shape not in SHAPES:
    raise ValueError(f"wsd_schedule: shape must be one of {SHAPES}, got shape={shape!r}")
  end = cosine_floor * lr if shape == "cosine" else 0.0
  return warmup_stable_decay(lr, horizon, warmup_steps, decay_steps=cooldown,
                             decay=_DECAY[shape], end_lr=end)


def _coded_schedule(h: Any, warmup_steps: int, cosine_floor: float) -> optax.Schedule:
  """The WSD schedule of a config whose shape is the int code ``h["shape"]`` (an index into
  :data:`SHAPES`), so that configs of every shape share one program. Every branch computes
  all three shapes and selects one: the selected value is the shape's own, bit for bit."""
  lr, total, cool, code = h["lr"], h["horizon"], h["cooldown"], h["shape"]
  pieces = [wsd_schedule(lr, total, cool, s, warmup_steps=warmup_steps, cosine_floor=cosine_floor)
            for s in SHAPES]

  def schedule(count):
    return jnp.select([code == 0, code == 1], [pieces[0](count), pieces[1](count)],
                      pieces[2](count))
  return schedule


@dataclasses.dataclass(frozen=True)
class Horizons:
  """What :func:`horizons` measured: the final numbers of every cooldown branch.

  Attributes:
    lrs: the peak learning rates, ``(L,)``.
    horizons: the training lengths ``H`` in steps, ``(N,)``.
    fractions: the cooldown fractions ``f`` (cooldown ``H f`` steps), ``(F,)``.
    shapes: the cooldown shapes, ``(K,)`` (of :data:`SHAPES`).
    cosine_floor: the cosine shape's final rate as a fraction of the peak.
    warmup_steps: the trunk's linear warmup.
    seeds: the seed values, ``(S,)``.
    values: ``"split/name" -> (S, L, N, F, K)``: each branch's metric after its last step.
    steps_spent: optimizer steps trained per seed, trunk and branches (every peak rate).
    separate_steps: the same for separately trained runs of every (rate, H, f, shape).
    trunk: the trunk's :class:`optaxlr.SweepResult` (every peak rate).
    branches: ``(H, f) -> SweepResult`` of that fork's cooldowns, configs ordered
      (rate, shape) as :attr:`lrs` x :attr:`shapes`.
  """

  lrs: np.ndarray
  horizons: np.ndarray
  fractions: np.ndarray
  shapes: tuple[str, ...]
  cosine_floor: float
  warmup_steps: int
  seeds: np.ndarray
  values: dict[str, np.ndarray]
  steps_spent: int
  separate_steps: int
  trunk: SweepResult
  branches: dict[tuple[int, float], SweepResult]

  @property
  def cost_fraction(self) -> float:
    """``steps_spent / separate_steps``: what the whole curve cost against separate runs."""
    return self.steps_spent / self.separate_steps

  def _check_metric(self, fn: str, metric: str) -> np.ndarray:
    if metric not in self.values:
      raise ValueError(f"Horizons.{fn}: metric must be one of {sorted(self.values)}, got "
                       f"metric={metric!r}")
    return self.values[metric]

  def to_pandas(self):
    """The loss-versus-budget table: one row per (seed, lr, horizon, fraction, shape), one
    column per metric."""
    import pandas as pd

    idx = np.indices(next(iter(self.values.values())).shape).reshape(5, -1)
    df = pd.DataFrame({
        "seed": self.seeds[idx[0]], "lr": self.lrs[idx[1]], "horizon": self.horizons[idx[2]],
        "fraction": self.fractions[idx[3]], "shape": np.asarray(self.shapes)[idx[4]]})
    for k, v in self.values.items():
      df[k] = v.reshape(-1)
    return df

  def best_fractions(self, metric: str = "val/loss", *, report: str | None = None,
                     mode: str | None = None, confidence: float = 0.95) -> list[dict[str, Any]]:
    """The best cooldown fraction per (lr, horizon, shape), selected on ``metric``.

    Each row: ``lr, horizon, shape, fraction`` (the best by mean over seeds), ``value``, and the
    paired difference best - runner-up fraction over seeds with its Student-t interval
    (:func:`optaxlr.stats.paired_interval`; ``gap_interval`` containing 0 means the seeds
    cannot tell the two fractions apart); with ``report`` (``"test/loss"``) the best
    fraction's mean of that metric too (selected on one split, reported on another).
    """
    v = self._check_metric("best_fractions", metric)
    if report is not None:
      rep = self._check_metric("best_fractions", report)
    mode = stats.default_mode(metric) if mode is None else mode
    sign = 1.0 if mode == "min" else -1.0
    rows = []
    for li, lr in enumerate(self.lrs):
      for hi, hz in enumerate(self.horizons):
        for ki, shape in enumerate(self.shapes):
          x = v[:, li, hi, :, ki]  # (S, F)
          order = np.argsort(sign * x.mean(axis=0), kind="stable")
          b = int(order[0])
          row = {"lr": float(lr), "horizon": int(hz), "shape": shape,
                 "fraction": float(self.fractions[b]), "value": float(x[:, b].mean())}
          if len(order) > 1:
            gap, lo, hi_ = stats.paired_interval(x[:, b], x[:, int(order[1])], confidence)
            row.update(runner_up=float(self.fractions[int(order[1])]), gap=float(gap),
                       gap_interval=(float(lo), float(hi_)))
          if report is not None:
            row[report] = float(rep[:, li, hi, b, ki].mean())
          rows.append(row)
    return rows

  def curve(self, metric: str = "val/loss", *, select: str | None = None,
            mode: str | None = None) -> dict[str, np.ndarray]:
    """Loss versus budget: per (lr, shape), ``metric`` at each horizon with the cooldown
    fraction chosen by the mean of ``select`` (default ``metric``) over seeds.

    Returns:
      ``{"mean": (L, N, K), "per_seed": (S, L, N, K), "fraction": (L, N, K)}``.
    """
    v = self._check_metric("curve", metric)
    sel = v if select is None else self._check_metric("curve", select)
    mode = stats.default_mode(select or metric) if mode is None else mode
    m = sel.mean(axis=0)  # (L, N, F, K)
    b = np.argmin(m if mode == "min" else -m, axis=2)  # (L, N, K)
    per_seed = np.take_along_axis(v, b[None, :, :, None, :], axis=3)[:, :, :, 0, :]
    return {"mean": per_seed.mean(axis=0), "per_seed": per_seed, "fraction": self.fractions[b]}

  def compare_shapes(self, a: str, b: str, metric: str = "test/loss", *,
                     select: str = "val/loss", confidence: float = 0.95) -> list[dict[str, Any]]:
    """The paired difference ``a - b`` of ``metric`` per (lr, horizon), each shape at the
    cooldown fraction it does best with on ``select`` (mean over seeds): selected on one split,
    reported on another. A negative ``diff`` with an interval below 0 means ``a`` is better.
    """
    for s in (a, b):
      if s not in self.shapes:
        raise ValueError(f"Horizons.compare_shapes: shapes must be of {self.shapes}, got {s!r}")
    cur = self.curve(metric, select=select)
    ka, kb = self.shapes.index(a), self.shapes.index(b)
    rows = []
    for li, lr in enumerate(self.lrs):
      for hi, hz in enumerate(self.horizons):
        xa, xb = cur["per_seed"][:, li, hi, ka], cur["per_seed"][:, li, hi, kb]
        d, lo, up = stats.paired_interval(xa, xb, confidence)
        rows.append({"lr": float(lr), "horizon": int(hz), "diff": float(d),
                     "interval": (float(lo), float(up)), a: float(xa.mean()), b: float(xb.mean()),
                     f"{a}_fraction": float(cur["fraction"][li, hi, ka]),
                     f"{b}_fraction": float(cur["fraction"][li, hi, kb])})
    return rows


def _int_list(fn: str, name: str, values: Any, low: int) -> list[int]:
  if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
    values = [values]
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ValueError(f"{fn}: {name} must be a non-empty sequence of ints, got {name}={values!r}")
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
      raise ValueError(f"{fn}: {name} must hold ints >= {low}, got {v!r} in {name}={values!r}")
    out.append(int(v))
  if any(b <= a for a, b in zip(out, out[1:])):
    raise ValueError(f"{fn}: {name} must be strictly increasing, got {name}={tuple(out)!r}")
  return out


def _check(fn, task, lrs, horizons_, fractions, shapes, warmup_steps, cosine_floor, batch_size,
           execution):
  """Everything :func:`horizons` can check before training: ``(lrs, H, f, shapes, forks)``."""
  lrs = [lrs] if np.ndim(lrs) == 0 else list(np.asarray(lrs, dtype=float).reshape(-1))
  if not lrs or not all(np.isfinite(x) and x > 0 for x in lrs):
    raise ValueError(f"{fn}: peak_lr must be a positive number or a sequence of them, got "
                     f"peak_lr={lrs!r}")
  if len(set(lrs)) != len(lrs):
    raise ValueError(f"{fn}: peak_lr values must be distinct, got peak_lr={lrs!r}")
  hs = _int_list(fn, "horizons", horizons_, 2)
  if isinstance(fractions, (int, float)):
    fractions = [fractions]
  fs = [float(f) for f in fractions]
  if not fs or any(not 0.0 < f < 1.0 for f in fs) or any(b <= a for a, b in zip(fs, fs[1:])):
    raise ValueError(f"{fn}: fractions must be strictly increasing cooldown fractions in (0, 1) "
                     f"(a cooldown of f * horizon steps, shorter than the horizon), got "
                     f"fractions={tuple(fractions)!r}")
  if isinstance(shapes, str):
    shapes = (shapes,)
  shapes = tuple(shapes)
  if not shapes or any(s not in SHAPES for s in shapes) or len(set(shapes)) != len(shapes):
    raise ValueError(f"{fn}: shapes must be distinct names of {SHAPES}, got shapes={shapes!r}")
  warmup_steps = int(warmup_steps) if isinstance(warmup_steps, (int, np.integer)) and \
      not isinstance(warmup_steps, bool) else warmup_steps
  if not isinstance(warmup_steps, int) or warmup_steps < 0:
    raise ValueError(f"{fn}: warmup_steps must be an int >= 0, got warmup_steps={warmup_steps!r}")
  if not (isinstance(cosine_floor, (int, float)) and 0.0 <= cosine_floor < 1.0):
    raise ValueError(f"{fn}: cosine_floor must be a number in [0, 1) (the cosine's final rate "
                     f"as a fraction of the peak), got cosine_floor={cosine_floor!r}")
  if "cosine" not in shapes and cosine_floor != 0.1:
    raise ValueError(f"{fn}: cosine_floor={cosine_floor!r} is given but shapes={shapes!r} has no "
                     "'cosine'; it would not be used")
  forks = {}
  for h in hs:
    for f in fs:
      cool = h * f
      if abs(cool - round(cool)) > 1e-9 * h:
        raise ValueError(f"{fn}: the cooldown fraction {f} of horizon {h} is {cool} steps, not a "
                         "whole number; choose horizons and fractions whose products are ints")
      cool = int(round(cool))
      if cool < 1 or h - cool < max(1, warmup_steps):
        raise ValueError(f"{fn}: the cooldown of {cool} steps (fraction {f}) is longer than "
                         f"horizon {h} allows after warmup_steps={warmup_steps}: it must start "
                         f"at a step >= {max(1, warmup_steps)}")
      forks[(h, f)] = (h - cool, cool)
  if not getattr(task, "host_fed", False):
    n_train = int(np.shape(next(iter(task.train.values())))[0])
    if batch_size is not None and not (isinstance(batch_size, (int, np.integer))
                                       and 1 <= batch_size <= n_train):
      raise ValueError(f"{fn}: batch_size must be an int in [1, {n_train}] (the training set's "
                       f"size), got batch_size={batch_size!r}")
  if execution is not None:
    if not isinstance(execution, Execution):
      raise TypeError(f"{fn}: execution must be an optaxlr.Execution, got "
                      f"{type(execution).__name__}")
    if execution.keep_params_at:
      raise ValueError(f"{fn}: Execution(keep_params_at={execution.keep_params_at!r}) is set by "
                       "horizons itself (the fork points); leave it unset")
    if execution.checkpoint_dir is not None:
      raise ValueError(f"{fn}: Execution(checkpoint_dir=) does not combine with horizons (the "
                       "trunk's snapshots are held in memory); leave it unset")
  return lrs, hs, fs, shapes, forks


def horizons(
    task: Any,
    optimizer: Callable[[optax.Schedule], optax.GradientTransformation],
    *,
    peak_lr: float | Sequence[float],
    horizons: Sequence[int],
    fractions: Sequence[float] = (0.2,),
    shapes: Sequence[str] = SHAPES,
    warmup_steps: int = 0,
    cosine_floor: float = 0.1,
    batch_size: int | None = None,
    seeds: int | Sequence[int] | None = None,
    key: int = 0,
    metrics_every: int | None = None,
    execution: Execution | None = None,
) -> Horizons:
  """Trains the warmup-stable-decay runs of every horizon, fraction and shape from one trunk.

  The trunk (one run per peak rate and seed) warms up linearly for ``warmup_steps`` and then
  holds ``peak_lr``; at each fork point ``H (1 - f)`` its state is kept and the cooldown
  branches of horizon ``H`` and fraction ``f`` continue from it for ``H f`` steps, one branch
  per shape (:func:`wsd_schedule`: ``"linear"`` to zero, ``"cosine"`` to ``cosine_floor`` x
  the peak, ``"1-sqrt"`` to zero) and peak rate. Each branch's schedule is the WSD schedule of
  horizon ``H`` at every step, its minibatches and keys those of a run of ``H`` steps, so each
  branch equals a separately trained WSD run of horizon ``H`` (bitwise in float32 on the CPU).

  Cost per seed and peak rate: the trunk's ``max(H (1 - f))`` steps plus ``K H f`` per branch
  group, against ``K F sum(H)`` for separate runs (``cost_fraction``; about 0.3 for 5 doubling
  horizons, one fraction 0.2 and 3 shapes).

  Args:
    task: an :class:`optaxlr.Task`.
    optimizer: ``schedule -> optax.GradientTransformation`` (``lambda lr: optax.adam(lr)``);
      its other hyperparameters are fixed.
    peak_lr: the plateau learning rate, or several (each its own trunk, in one program).
    horizons: the training lengths ``H`` in steps, strictly increasing (``(1000, 2000, 4000)``).
    fractions: cooldown fractions ``f`` in (0, 1), strictly increasing; ``H f`` must be a
      whole number of steps and the cooldown must start after the warmup.
    shapes: cooldown shapes, of :data:`SHAPES`.
    warmup_steps: the linear warmup of every run, ``>= 0``.
    cosine_floor: the cosine shape's final rate as a fraction of the peak, in ``[0, 1)``:
      ``0.1`` (default) is the cosine to 10% that Bergsma et al. 2025 compare with linear to
      zero; ``0.0`` decays to zero like the other shapes.
    batch_size, seeds, key: as for :func:`optaxlr.sweep`.
    metrics_every: evaluate the trunk every this many steps; it must divide every fork point
      (default: their greatest common divisor). The branches are evaluated every ``gcd`` of
      the cooldown lengths and after their last step.
    execution: an :class:`optaxlr.Execution` (``keep_params_at`` and ``checkpoint_dir`` are
      horizons' own); ``keep_params=True`` keeps every branch's final state.

  Returns:
    A :class:`Horizons` (the table, the best fraction per horizon, the cost).

  Raises:
    ValueError: before any compute, for a bad horizon, fraction, shape, warmup, floor, batch
      size above the training set, or a cooldown longer than its horizon.

  Examples:
    >>> import optax, optaxlr
    >>> task = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
    >>> hz = optaxlr.horizons(task, lambda lr: optax.adam(lr), peak_lr=1e-2,
    ...                       horizons=[10, 20], fractions=[0.2, 0.4], batch_size=16, seeds=2,
    ...                       execution=optaxlr.Execution(progress=False))
    >>> hz.values["val/loss"].shape  # (seeds, lrs, horizons, fractions, shapes)
    (2, 1, 2, 2, 3)
    >>> hz.steps_spent, hz.separate_steps  # trunk 16 + cooldowns (2+4+4+8)*3, vs 2*3*(10+20)
    (70, 180)
  """
  fn = "horizons"
  lrs, hs, fs, shapes, forks = _check(fn, task, peak_lr, horizons, fractions, shapes,
                                      warmup_steps, cosine_floor, batch_size, execution)
  execution = (execution or Execution()).replace(keep_params_at=())
  points = sorted({k for k, _ in forks.values()})
  trunk_steps = points[-1]
  every = math.gcd(*points) if metrics_every is None else metrics_every
  if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1 or any(
      p % every for p in points):
    raise ValueError(f"{fn}: metrics_every must divide every fork point {points}, got "
                     f"metrics_every={metrics_every!r}")
  codes = [SHAPES.index(s) for s in shapes]

  def opt(h):
    return optimizer(_coded_schedule(h, warmup_steps, cosine_floor))

  # The trunk: the WSD schedule of horizon trunk_steps without a cooldown (a constant peak).
  trunk_space = search.zip(lr=lrs, horizon=[trunk_steps] * len(lrs), cooldown=[0] * len(lrs),
                           shape=[0] * len(lrs))
  trunk = sweep(task, opt, trunk_space, steps=trunk_steps, batch_size=batch_size, seeds=seeds,
                eval_every=every, key=key,
                execution=execution.replace(keep_params=True, keep_params_at=tuple(points[:-1])))
  cools = sorted({c for _, c in forks.values()})
  c_every = math.gcd(*cools)
  child_lr = np.repeat(np.asarray(lrs), len(shapes))
  child_shape = np.tile(np.asarray(codes), len(lrs))
  parents = np.repeat(np.arange(len(lrs)), len(shapes)).tolist()
  n_s = len(trunk.seeds)
  names = sorted(trunk.metrics)
  values = {k: np.full((n_s, len(lrs), len(hs), len(fs), len(shapes)), np.nan) for k in names}
  branches = {}
  for (h, f), (k, cool) in forks.items():
    start = trunk if k == trunk_steps else trunk.snapshots[k]
    space = search.zip(lr=child_lr, horizon=[h] * len(child_lr), cooldown=[cool] * len(child_lr),
                       shape=child_shape)
    res = sweep(task, opt, space, steps=cool, batch_size=batch_size, seeds=seeds,
                eval_every=c_every, key=key, start_from=start.fork(parents),
                execution=execution)
    branches[(h, f)] = res
    for name in names:
      v = res.metrics[name][..., -1].reshape(n_s, len(lrs), len(shapes))
      values[name][:, :, hs.index(h), fs.index(f), :] = v
  spent = trunk_steps * len(lrs) + sum(c for _, c in forks.values()) * len(lrs) * len(shapes)
  separate = sum(hs) * len(fs) * len(shapes) * len(lrs)
  return Horizons(lrs=np.asarray(lrs), horizons=np.asarray(hs), fractions=np.asarray(fs),
                  shapes=shapes, cosine_floor=float(cosine_floor), warmup_steps=warmup_steps,
                  seeds=np.asarray(trunk.seeds), values=values, steps_spent=spent,
                  separate_steps=separate, trunk=trunk, branches=branches)
