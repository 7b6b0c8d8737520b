"""Honest winners: intervals, paired comparisons and re-scoring for the configs of a sweep.

Every config of one seed shares its initial parameters and its minibatch order (common random
numbers), so the values of two configs are *paired* over seeds: the difference
``v[s, a] - v[s, b]`` cancels what the seed did to both, and its spread is far smaller than
either config's own spread over seeds. Everything here works on per-seed values of shape
``(seeds, configs)`` (``SweepResult.summary(metric)``), NaN for a run that diverged.

The statistics, and their assumptions:

- **Intervals** (:func:`mean_interval`, :func:`paired_interval`) are Student-t intervals of a
  mean over seeds: ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` (``sd`` with ``ddof=1``).
  They assume the per-seed values (or differences) are independent draws from a distribution
  close enough to normal for a mean of ``n`` of them; with 3-10 seeds this is what makes a
  t-interval the usual choice over a bootstrap (a percentile bootstrap of 5 values is too
  narrow). The seeds are the only source of randomness they see: a validation split shared by
  every seed is a fixed set of examples, so its sampling noise (one image of 360 is 0.28
  points) is NOT in these intervals. With one seed every interval is NaN.
- **p_best** (:func:`p_best`) is the posterior probability that a config has the best true
  mean under the empirical-Bayes normal-means model (Efron & Morris 1975) fitted to the
  seed-centred contrasts ``v[s, c] - mean_c' v[s, c']``: each config's true contrast is drawn
  from ``N(mu, tau^2)`` (``tau^2`` estimated from the spread of the configs' means minus their
  noise, floored at 0) and observed with noise ``sd_c^2 / n``; the probability is a Monte
  Carlo average over draws of the posterior. It shrinks the apparent winner of near-tied
  configs towards the others; a plain bootstrap over seeds (resample seeds, count how often
  the winner's mean stays best) does not: with 5 seeds and 6 truly equal configs, the plain
  bootstrap calls the apparent winner best with probability 0.57 on average, this posterior
  0.34, the truth being 1/6 (``tests/test_stats.py`` measures both). Where the configs differ
  by a few noise levels it is calibrated: on synthetic sweeps of 7 configs with normal true
  means, its mean 0.853 against 0.853 truly best, Brier score 0.098.
- **The winner** is the config with the best mean over seeds (a config with a diverged seed is
  never chosen), **the runner-up** the second best; **the gap** is the paired difference
  winner - runner-up with its t-interval; a config is **indistinguishable** from the winner
  when the t-interval of its paired difference with the winner does not exclude 0 (each pair
  on its own, no correction for the number of configs: a screen, not a test of them all).
- A winner's own value is optimistic (it won partly by luck: the winner's curse);
  :func:`rescore` trains the top configs again on fresh seeds in one sweep and reports those
  numbers, which are not.

References:
  Efron, B. & Morris, C. (1975). *Data analysis using Stein's estimator and its
  generalizations.* JASA 70(350). https://doi.org/10.1080/01621459.1975.10479864
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from optaxlr import _validate

__all__ = [
    "Estimate",
    "Difference",
    "Winner",
    "Rescored",
    "default_mode",
    "mean_interval",
    "paired_interval",
    "p_best",
    "indistinguishable",
    "select",
    "winner",
    "compare",
    "rescore",
    "edges",
]


# ----------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over seeds with its t-interval.

  Attributes:
    metric: what was measured (``"test/error"``).
    value: the mean over seeds.
    interval: ``(low, high)``, the Student-t interval at ``confidence`` (NaN with one seed).
    seeds: the number of seeds.
    confidence: the interval's level.
  """

  metric: str
  value: float
  interval: tuple[float, float]
  seeds: int
  confidence: float

  def __str__(self) -> str:
    return f"{self.metric} {_fmt(self.value)} [{_fmt(self.interval[0])}, {_fmt(self.interval[1])}]"


@dataclasses.dataclass(frozen=True)
class Difference:
  """The paired difference ``a - b`` of one metric over the seeds both share.

  Attributes:
    metric: the metric compared.
    a, b: the two configs' hyperparameters.
    value: the mean over seeds of ``v[s, a] - v[s, b]`` (NaN when a run of either diverged).
    interval: its Student-t interval at ``confidence`` (paired: the seed's effect cancels).
    p_value: the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``) of "no
      difference"; NaN with one seed.
    seeds: the number of seeds paired.
    confidence: the interval's level.
    distinguishable: the interval excludes 0.
  """

  metric: str
  a: dict[str, Any]
  b: dict[str, Any]
  value: float
  interval: tuple[float, float]
  p_value: float
  seeds: int
  confidence: float

  @property
  def distinguishable(self) -> bool:
    lo, hi = self.interval
    return bool(lo > 0 or hi < 0)


@dataclasses.dataclass(frozen=True)
class Winner:
  """The best config of a sweep, and how sure the seeds make it.

  Attributes:
    config: the winner's hyperparameters.
    index: its config index in the result.
    metric: the metric it was selected on (``"val/error"``), at its last evaluation.
    mode: ``"min"`` or ``"max"``: what "best" means for ``metric``.
    value: the winner's mean over seeds of ``metric`` (optimistic: it was selected on it).
    interval: the t-interval of that mean.
    runner_up: the second-best config's hyperparameters (None with one usable config).
    runner_up_index: its index.
    gap: the paired difference winner - runner-up of ``metric``, mean over seeds (negative
      for a minimised metric: the winner is lower).
    gap_interval: its paired t-interval.
    p_best: the probability that the winner has the best true mean (empirical-Bayes
      posterior, see the module docstring).
    report: the winner's ``report`` metric (``"test/error"``: selected on val, reported on
      test) as an :class:`Estimate`, None when the result has no such metric.
    on_edge: grid axis -> ``"min"`` / ``"max"`` when the winner's value is the smallest or
      largest tried on that axis (axes with at least 3 values; a smallest value of 0 is not an
      edge: nothing lies below it), else None.
    sensitivity: grid axis -> how much ``metric`` worsens per factor of 2 in that
      hyperparameter around the winner (the mean over the winner's neighbours on that axis,
      other hyperparameters fixed, of the worsening divided by ``|log2(ratio)|``; NaN when no
      neighbour has a positive value and a finite metric).
    indistinguishable: the configs (hyperparameters) whose paired difference with the winner
      has an interval containing 0, the winner first, then by mean.
    indistinguishable_index: their indices.
    seeds: the number of seeds.
    confidence: the level of every interval.
  """

  config: dict[str, Any]
  index: int
  metric: str
  mode: str
  value: float
  interval: tuple[float, float]
  runner_up: dict[str, Any] | None
  runner_up_index: int | None
  gap: float
  gap_interval: tuple[float, float]
  p_best: float
  report: Estimate | None
  on_edge: dict[str, str | None]
  sensitivity: dict[str, float]
  indistinguishable: tuple[dict[str, Any], ...]
  indistinguishable_index: tuple[int, ...]
  seeds: int
  confidence: float

  def summary(self) -> str:
    """One line: the winner, its interval, the gap to the runner-up and p_best."""
    cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in self.config.items())
    line = (f"{cfg}: {self.metric} {_fmt(self.value)} [{_fmt(self.interval[0])},"
            f" {_fmt(self.interval[1])}]")
    if self.report is not None:
      line += f", {self.report}"
    if self.runner_up is not None:
      line += (f"; gap to runner-up {_fmt(self.gap)} [{_fmt(self.gap_interval[0])},"
               f" {_fmt(self.gap_interval[1])}]")
    line += (f"; p_best {self.p_best:.2f}; {len(self.indistinguishable)} config(s)"
             f" indistinguishable ({self.seeds} seeds, {self.confidence:.0%} t-intervals)")
    return line


@dataclasses.dataclass(frozen=True)
class Rescored:
  """The top configs of a sweep trained again on fresh seeds (see :func:`rescore`).

  Attributes:
    metric: the metric of the selection.
    configs: the top configs' hyperparameters, best first on the original seeds.
    indices: their indices in the original result.
    selected: their means over the original seeds (what selected them: optimistic for the
      winner).
    fresh: their means over the fresh seeds (the unbiased estimate for the original winner,
      ``fresh[0]``), ``(k,)``.
    fresh_intervals: the t-intervals of ``fresh``.
    value: ``fresh[0]``: the selected winner's value on fresh seeds.
    interval: its t-interval.
    winner: :class:`Winner` of the fresh sweep among the top configs (choosing among the fresh
      numbers selects again: its ``value`` is mildly optimistic once more).
    seeds: the fresh seed values.
    result: the fresh sweep's :class:`optaxlr.SweepResult` (configs in ``configs`` order).
  """

  metric: str
  configs: tuple[dict[str, Any], ...]
  indices: tuple[int, ...]
  selected: np.ndarray
  fresh: np.ndarray
  fresh_intervals: np.ndarray
  value: float
  interval: tuple[float, float]
  winner: Winner
  seeds: tuple[int, ...]
  result: Any


def _fmt(v: Any) -> str:
  if isinstance(v, (str, np.str_)):
    return str(v)
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  try:
    return f"{float(v):.4g}"
  except (TypeError, ValueError):
    return str(v)


# ----------------------------------------------------------------------------------------
# Array statistics (leading batch axes allowed: (..., seeds, configs))


def default_mode(metric: str) -> str:
  """``"max"`` for a metric named like an accuracy (``"val/accuracy"``), else ``"min"``: the
  rule of :meth:`optaxlr.SweepResult.best` and :mod:`optaxlr.plot`.

  >>> default_mode("val/error"), default_mode("test/acc")
  ('min', 'max')
  """
  return _validate.default_mode(metric)


def _check_confidence(fn: str, confidence: float) -> float:
  number = (int, float, np.floating)
  if isinstance(confidence, (bool, np.bool_)) or not isinstance(confidence, number):
    raise TypeError(f"{fn}: confidence must be a number in (0, 1), got {type(confidence).__name__}")
  if not 0 < confidence < 1:
    raise ValueError(f"{fn}: confidence must be in (0, 1), got confidence={confidence!r}")
  return float(confidence)


def _check_mode(fn: str, mode: str) -> str:
  if mode not in ("min", "max"):
    raise ValueError(f"{fn}: mode must be 'min' or 'max', got mode={mode!r}")
  return mode


def _values(fn: str, values: Any, ndim: int = 2) -> np.ndarray:
  v = np.asarray(values, dtype=float)
  if v.ndim < ndim:
    raise ValueError(f"{fn}: values must have shape (..., seeds, configs), got shape {v.shape}")
  if v.shape[-2] < 1 or v.shape[-1] < 1:
    raise ValueError(f"{fn}: values need at least one seed and one config, got shape {v.shape}")
  return v


def mean_interval(values: Any, confidence: float = 0.95, *, axis: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The mean over ``axis`` (seeds) and its Student-t interval.

  ``mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n)``, ``sd`` with ``ddof=1``; NaN bounds when
  ``n < 2``; NaN wherever a value is NaN.

  Returns:
    ``(mean, low, high)``, arrays with ``axis`` removed.

  Examples:
    >>> from optaxlr import stats
    >>> m, lo, hi = stats.mean_interval([1.0, 2.0, 3.0])
    >>> float(m), round(float(lo), 3), round(float(hi), 3)  # 2 ± 4.303 / sqrt(3)
    (2.0, -0.484, 4.484)
  """
  _check_confidence("mean_interval", confidence)
  x = np.asarray(values, dtype=float)
  n = x.shape[axis]
  mean = x.mean(axis=axis)
  if n < 2:
    nan = np.full_like(mean, np.nan)
    return mean, nan, nan.copy()
  half = _st.t.ppf((1 + confidence) / 2, n - 1) * x.std(axis=axis, ddof=1) / math.sqrt(n)
  return mean, mean - half, mean + half


def paired_interval(a: Any, b: Any, confidence: float = 0.95, *, axis: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The mean paired difference ``a - b`` over ``axis`` (seeds) and its Student-t interval.

  Examples:
    >>> from optaxlr import stats
    >>> m, lo, hi = stats.paired_interval([1.0, 2.0, 3.0], [0.8, 1.8, 2.85])
    >>> round(float(m), 3), bool(lo > 0)  # the seeds' spread cancels: a is surely larger
    (0.183, True)
  """
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  if a.shape != b.shape:
    raise ValueError(f"paired_interval: a and b must have the same shape, got {a.shape} and"
                     f" {b.shape}")
  return mean_interval(a - b, confidence, axis=axis)


def _scores(v: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
  """``(score, ok)``: values signed so that lower is better, and configs without NaN."""
  score = v if mode == "min" else -v
  ok = np.all(np.isfinite(score), axis=-2)  # (..., C)
  return score, ok


def p_best(values: Any, *, mode: str = "min", draws: int = 4000, rng: int | np.random.Generator = 0
           ) -> np.ndarray:
  """The probability that each config has the best true mean: empirical-Bayes posterior.

  Per-seed values ``(..., S, C)`` are centred per seed (``v[s, c] - mean_c v[s, c]``, which
  removes what a seed did to every config), then fitted with the normal-means model of Efron
  & Morris (1975): the configs' true contrasts ``theta_c ~ N(mu, tau^2)``, observed as their
  mean over seeds with variance ``sd_c^2 / S``; ``mu`` and ``tau^2`` by moments (``tau^2 =
  max(0, var_c(mean) - mean_c(sd_c^2 / S))``). The posterior of each ``theta_c`` is normal with
  mean ``mu + B_c (x_c - mu)`` and variance ``B_c sd_c^2 / S``, ``B_c = tau^2 / (tau^2 + sd_c^2
  / S)``; the probability is the share of ``draws`` posterior draws where the config is best.
  Configs with a NaN (a diverged seed) get 0 and are left out of the fit. NaN with one seed
  (nothing to estimate a spread from); 1 for a single usable config.

  Args:
    values: ``(..., seeds, configs)``.
    mode: ``"min"``: lower is better; ``"max"``: higher.
    draws: Monte Carlo draws of the posterior (the error of a probability p is about
      ``sqrt(p(1-p)/draws)``).
    rng: a seed or a ``numpy.random.Generator`` (the default 0 makes it deterministic).

  Returns:
    ``(..., configs)``, summing to 1 over the usable configs.

  Examples:
    >>> import numpy as np
    >>> from optaxlr import stats
    >>> v = np.array([[1.0, 3.0, 5.0], [1.1, 3.2, 5.1], [0.9, 2.9, 4.8]])  # 3 seeds
    >>> stats.p_best(v).round(2).tolist()
    [1.0, 0.0, 0.0]
  """
  fn = "p_best"
  _check_mode(fn, mode)
  if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
    raise ValueError(f"{fn}: draws must be an int >= 1, got draws={draws!r}")
  v = _values(fn, values)
  gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  score, ok = _scores(v, mode)
  S = v.shape[-2]
  batch = v.shape[:-2]
  okf = ok[..., None, :]  # (..., 1, C)
  n_ok = ok.sum(-1, keepdims=True)  # (..., 1)
  safe = np.where(okf, score, 0.0)
  centred = safe - (safe.sum(-1, keepdims=True) / np.maximum(n_ok[..., None], 1))
  x = centred.mean(-2)  # (..., C)
  if S < 2:
    out = np.where(ok, np.nan, 0.0)
    return np.where(n_ok == 1, ok.astype(float), out)
  s2 = centred.var(-2, ddof=1) / S  # (..., C)
  cnt = np.maximum(n_ok, 1)
  mu = np.where(ok, x, 0).sum(-1, keepdims=True) / cnt
  var_x = np.where(ok, (x - mu) ** 2, 0).sum(-1, keepdims=True) / np.maximum(n_ok - 1, 1)
  tau2 = np.maximum(0.0, var_x - np.where(ok, s2, 0).sum(-1, keepdims=True) / cnt)
  with np.errstate(invalid="ignore", divide="ignore"):
    shrink = np.where(tau2 + s2 > 0, tau2 / (tau2 + s2), 1.0)
  post_mean = np.where(ok, mu + shrink * (x - mu), np.inf)
  post_sd = np.sqrt(np.where(ok, shrink * s2, 0.0))
  wins = np.zeros(batch + (v.shape[-1],))
  done = 0
  per = max(1, int(2_000_000 // max(1, math.prod(batch) * v.shape[-1])))
  while done < draws:
    n = min(per, draws - done)
    z = gen.standard_normal(batch + (n, v.shape[-1]))
    theta = post_mean[..., None, :] + post_sd[..., None, :] * z  # (..., n, C)
    best = theta.min(-1, keepdims=True)
    tie = theta <= best  # exact ties (zero posterior spread) share the win
    wins += (tie / tie.sum(-1, keepdims=True)).sum(-2)
    done += n
  return np.where(ok, wins / draws, 0.0)


def indistinguishable(values: Any, best: Any, *, mode: str = "min", confidence: float = 0.95
                      ) -> np.ndarray:
  """``(..., C)`` bool: configs whose paired difference with config ``best`` has a t-interval
  that does not show them worse (for ``mode="min"``: its lower bound is not above 0). The
  best config itself is True; configs with a NaN are False; with one seed every usable config
  is True (nothing can be told apart).

  Args:
    values: ``(..., seeds, configs)``.
    best: the reference config's index, ``(...)``.

  Examples:
    >>> import numpy as np
    >>> from optaxlr import stats
    >>> v = np.array([[1.0, 1.1, 3.0], [2.0, 1.9, 4.0], [1.5, 1.6, 3.4]])
    >>> stats.indistinguishable(v, 0).tolist()
    [True, True, False]
  """
  fn = "indistinguishable"
  _check_mode(fn, mode)
  _check_confidence(fn, confidence)
  v = _values(fn, values)
  score, ok = _scores(v, mode)
  best = np.asarray(best)
  ref = np.take_along_axis(score, best[..., None, None] * np.ones(v.shape[:-1] + (1,), int), -1)
  _, lo, _ = mean_interval(score - ref, confidence, axis=-2)
  with np.errstate(invalid="ignore"):
    worse = lo > 0
  return ok & ~worse


def select(values: Any, *, mode: str = "min", confidence: float = 0.95, draws: int = 4000,
           rng: int | np.random.Generator = 0) -> dict[str, np.ndarray]:
  """The winner of per-seed values and its statistics, vectorised over leading axes.

  The core of :func:`winner`, on arrays (``(..., seeds, configs)``) so that many synthetic
  sweeps are scored at once.

  Returns:
    A dict of arrays over the leading axes: ``winner``, ``runner_up`` (-1 with one usable
    config), ``value``, ``low``, ``high`` (the winner's mean and t-interval), ``gap``,
    ``gap_low``, ``gap_high`` (winner - runner-up, paired; NaN without a runner-up),
    ``p_best`` (the winner's), ``p_all`` (every config's), ``indistinguishable``
    (``(..., C)`` bool), ``means`` (``(..., C)``, NaN for configs with a diverged seed).

  Raises:
    ValueError: every config has a NaN (diverged) in some draw.

  Examples:
    >>> import numpy as np
    >>> from optaxlr import stats
    >>> v = np.array([[1.0, 2.0, 5.0], [1.2, 2.1, 5.5], [0.8, 2.3, 4.7]])
    >>> out = stats.select(v)
    >>> int(out["winner"]), int(out["runner_up"]), round(float(out["gap"]), 2)
    (0, 1, -1.13)
  """
  fn = "select"
  _check_mode(fn, mode)
  _check_confidence(fn, confidence)
  v = _values(fn, values)
  score, ok = _scores(v, mode)
  if not np.all(ok.any(-1)):
    raise ValueError(f"{fn}: every config has a NaN (a diverged seed); nothing to select")
  means = np.where(ok, v.mean(-2), np.nan)
  key = np.where(ok, score.mean(-2), np.inf)
  order = np.argsort(key, axis=-1, kind="stable")
  w = order[..., 0]
  has_r = ok.sum(-1) >= 2
  r = np.where(has_r, order[..., 1] if v.shape[-1] > 1 else 0, 0)

  def col(i):
    return np.take_along_axis(v, i[..., None, None] * np.ones(v.shape[:-1] + (1,), int), -1)[..., 0]

  vw, vr = col(w), col(r)  # (..., S)
  value, low, high = mean_interval(vw, confidence, axis=-1)
  gap, g_lo, g_hi = mean_interval(vw - vr, confidence, axis=-1)
  nan = np.nan
  p_all = p_best(v, mode=mode, draws=draws, rng=rng)
  return {
      "winner": w, "runner_up": np.where(has_r, r, -1),
      "value": value, "low": low, "high": high,
      "gap": np.where(has_r, gap, nan), "gap_low": np.where(has_r, g_lo, nan),
      "gap_high": np.where(has_r, g_hi, nan),
      "p_best": np.take_along_axis(p_all, w[..., None], -1)[..., 0], "p_all": p_all,
      "indistinguishable": indistinguishable(v, w, mode=mode, confidence=confidence),
      "means": means,
  }


# ----------------------------------------------------------------------------------------
# On a SweepResult


def _grid_axes(result) -> dict[str, np.ndarray]:
  """Grid axes of one numeric hyperparameter: name -> its sorted distinct values."""
  out = {}
  for axis in result.space.axes:
    if axis.names != (axis.dim,):
      continue
    vals = np.asarray(axis.values[axis.dim])
    if vals.dtype.kind in "iuf" and axis.dim not in ("seed", "fold"):
      out[axis.dim] = np.unique(vals)
  return out


def edges(result, config: Mapping[str, Any]) -> dict[str, str | None]:
  """Grid axis -> ``"max"`` / ``"min"`` where ``config`` sits on that axis's edge, else None.

  Flagged: an axis with at least 3 values whose config value is the largest tried
  (``"max"``) or the smallest (``"min"``), unless that smallest is 0 (the floor of a weight
  decay or momentum: nothing lies below it). With 2 values every value is an edge, so such
  axes are never flagged.
  """
  out = {}
  for name, vals in _grid_axes(result).items():
    if name not in config:
      continue
    v = config[name]
    out[name] = None
    if vals.size < 3:
      continue
    if v == vals.max():
      out[name] = "max"
    elif v == vals.min() and vals.min() != 0:
      out[name] = "min"
  return out


def _sensitivity(result, means: np.ndarray, w: int, mode: str) -> dict[str, float]:
  """Per grid axis: the worsening of the mean per factor of 2, from the winner's neighbours."""
  hp = result.hparams
  out = {}
  for name, vals in _grid_axes(result).items():
    others = np.ones(len(means), bool)
    for k, col in hp.items():
      if k != name and np.ndim(col) == 1:
        others &= np.asarray(col == col[w]) if col.dtype.kind in "OUSb" else np.isclose(
            col.astype(float), float(col[w]), rtol=1e-9, atol=0)
    x_w = float(hp[name][w])
    pos = int(np.flatnonzero(np.isclose(vals, x_w, rtol=1e-9, atol=0))[0])
    slopes = []
    for p in (pos - 1, pos + 1):
      if not 0 <= p < vals.size:
        continue
      x = float(vals[p])
      j = np.flatnonzero(others & np.isclose(hp[name].astype(float), x, rtol=1e-9, atol=0))
      if j.size != 1 or x <= 0 or x_w <= 0 or not np.isfinite(means[j[0]]):
        continue
      worse = means[j[0]] - means[w] if mode == "min" else means[w] - means[j[0]]
      slopes.append(worse / abs(math.log2(x / x_w)))
    out[name] = float(np.mean(slopes)) if slopes else float("nan")
  return out


def winner(result, metric: str = "val/error", *, confidence: float = 0.95,
           report: str | None = "test", mode: str | None = None, at: str = "final",
           draws: int = 4000, rng: int = 0) -> Winner:
  """The winner of ``result`` on ``metric`` with its intervals, its gap to the runner-up,
  p_best and its value on the ``report`` split (see the module docstring for the statistics).

  Args:
    result: a :class:`optaxlr.SweepResult`.
    metric: the selection metric, read at the last evaluation per seed (``at="best"``: its
      best evaluation).
    confidence: the level of every interval.
    report: the split the winner is reported on (``"test"``: ``metric`` with its split
      replaced, ``val/error`` -> ``test/error``), or a full metric name, or None. A split the
      result does not have gives ``report=None`` only when ``report`` was left at its default;
      a named one that is missing is an error.
    mode: ``"min"`` or ``"max"``; default ``"max"`` for metrics named like accuracy.
    draws, rng: Monte Carlo draws and seed of :func:`p_best`.

  Returns:
    A :class:`Winner`.

  Raises:
    KeyError: no such metric (or no such explicitly named report metric).
    ValueError: every config diverged.

  Examples:
    >>> import numpy as np
    >>> import optaxlr
    >>> from optaxlr import search, stats
    >>> val = np.array([[.050, .031, .036, .090], [.047, .033, .035, .080],  # 4 seeds x 4 lr
    ...                 [.052, .030, .037, .085], [.049, .032, .036, .095]])
    >>> res = optaxlr.SweepResult(
    ...     space=search.grid(lr=[1e-3, 3e-3, 1e-2, 3e-2]), seeds=np.arange(4),
    ...     batch_loss=np.zeros((4, 4, 1)), metrics={"val/error": val[..., None]},
    ...     eval_steps=np.array([100]), diverged_at=np.full((4, 4), -1),
    ...     stopped_at=np.full((4, 4), -1))
    >>> w = stats.winner(res, "val/error")
    >>> w.config, round(w.value, 4), w.runner_up
    ({'lr': 0.003}, 0.0315, {'lr': 0.01})
    >>> [round(x, 4) for x in w.gap_interval]  # winner - runner-up, paired over the 4 seeds
    [-0.0078, -0.0012]
    >>> w.on_edge, len(w.indistinguishable), w.report is None  # no test split in this result
    ({'lr': None}, 1, True)
    >>> round(w.p_best, 2), round(w.sensitivity["lr"], 4)  # error points lost per factor 2 of lr
    (1.0, 0.007)
  """
  fn = "winner"
  mode = _check_mode(fn, default_mode(metric) if mode is None else mode)
  _check_confidence(fn, confidence)
  vals = result.summary(metric, at=at, mode=mode)
  if np.all(~np.all(np.isfinite(vals), axis=0)):
    raise ValueError(f"{fn}: every config diverged or has no finite {metric!r}")
  out = select(vals, mode=mode, confidence=confidence, draws=draws, rng=rng)
  w, r = int(out["winner"]), int(out["runner_up"])
  rep = None
  if report is not None:
    explicit = report != "test"
    rep_metric = report if "/" in report else f"{report}/{metric.split('/', 1)[-1]}"
    if rep_metric in result.metrics:
      rv = result.summary(rep_metric, at="final", mode=mode)[:, w]
      m, lo, hi = mean_interval(rv, confidence)
      rep = Estimate(rep_metric, float(m), (float(lo), float(hi)), int(rv.size), confidence)
    elif explicit:
      raise KeyError(f"{fn}: report metric {rep_metric!r} is not in the result; available:"
                     f" {sorted(result.metrics)}")
  ind = np.flatnonzero(out["indistinguishable"])
  ind = sorted(ind.tolist(), key=lambda i: (i != w, out["means"][i] * (1 if mode == "min" else -1)))
  return Winner(
      config=result.config(w), index=w, metric=metric, mode=mode,
      value=float(out["value"]), interval=(float(out["low"]), float(out["high"])),
      runner_up=None if r < 0 else result.config(r), runner_up_index=None if r < 0 else r,
      gap=float(out["gap"]), gap_interval=(float(out["gap_low"]), float(out["gap_high"])),
      p_best=float(out["p_best"]), report=rep,
      on_edge=edges(result, result.config(w)),
      sensitivity=_sensitivity(result, out["means"], w, mode),
      indistinguishable=tuple(result.config(i) for i in ind),
      indistinguishable_index=tuple(int(i) for i in ind),
      seeds=int(vals.shape[0]), confidence=confidence,
  )


def compare(result, a: int | Mapping[str, Any], b: int | Mapping[str, Any],
            metric: str = "val/error", *, other=None, confidence: float = 0.95,
            at: str = "final", mode: str | None = None) -> Difference:
  """The paired difference ``a - b`` of ``metric`` over seeds, with its t-interval.

  Args:
    result: a :class:`optaxlr.SweepResult`; ``a`` is one of its configs (an index or a dict
      of hyperparameter values).
    b: a config of ``other`` (default ``result`` itself).
    other: another result of the SAME seed values (and the same task, data and key, so that
      its seeds share initial parameters and minibatch order with ``result``'s); checked on
      the seed values, which must be equal and in the same order.
    mode: only for ``at="best"``; default by the metric's name.

  Returns:
    A :class:`Difference`; NaN value and interval when a run of either config diverged.
  """
  fn = "compare"
  _check_confidence(fn, confidence)
  other = result if other is None else other
  sa, sb = np.asarray(result.seeds), np.asarray(other.seeds)
  if sa.shape != sb.shape or not np.array_equal(sa, sb):
    raise ValueError(f"{fn}: the two results must have the same seed values in the same order"
                     f" (paired over seeds), got {sa.tolist()} and {sb.tolist()}")
  mode = _check_mode(fn, default_mode(metric) if mode is None else mode)
  ia, ib = result.index_of(a), other.index_of(b)
  va = result.summary(metric, at=at, mode=mode)[:, ia]
  vb = other.summary(metric, at=at, mode=mode)[:, ib]
  m, lo, hi = paired_interval(va, vb, confidence)
  p = float("nan")
  if va.size >= 2 and np.all(np.isfinite(va - vb)):
    d = va - vb
    p = 1.0 if np.all(d == d[0]) and d[0] == 0 else (
        0.0 if np.all(d == d[0]) else float(_st.ttest_rel(va, vb).pvalue))
  return Difference(metric, result.config(ia), other.config(ib), float(m), (float(lo), float(hi)),
                    p, int(va.size), confidence)


# What rescore carries over from the original sweep's info (the rest is given by the caller).
_CARRIED = ("steps", "batch_size", "eval_every", "log_every")


def rescore(result, task, optimizer, *, metric: str = "val/error", top: int = 3,
            seeds: int | Sequence[int] | None = None, confidence: float = 0.95,
            mode: str | None = None, **sweep_kwargs: Any) -> Rescored:
  """Trains the ``top`` configs of ``result`` again on fresh seeds, in one ``optaxlr.sweep``,
  and reports their values there: the selected winner's value on fresh seeds is free of the
  winner's curse (it was not selected on these seeds).

  The sweep gets the configs (their hyperparameters, a :func:`optaxlr.search.zip` axis) and the
  training settings ``result.info`` holds (``steps``, ``batch_size``, ``eval_every``,
  ``log_every``); anything else the original sweep was given (``objective``, ``plateau``,
  ``early_stopping``, ``key``, how it ran: ``execution=optaxlr.Execution(...)``) is not carried
  and must be passed again in ``sweep_kwargs`` (which may also override the carried settings).
  A result trained in ``compute_dtype="bfloat16"`` warns when nothing of the sort is passed.

  Args:
    result: the original :class:`optaxlr.SweepResult`.
    task, optimizer: the original sweep's task and optimizer.
    metric: the selection metric (at the last evaluation).
    top: how many of the best configs (by mean on the original seeds) to retrain.
    seeds: the fresh seeds: a count (default: as many as the original), taken as the integers
      after the largest original seed, or explicit values, none of them an original seed.

  Returns:
    A :class:`Rescored`.

  Raises:
    ValueError: a bad ``top``, a seed already used, a result continued from another
      (``start_from``), or fewer than ``top`` configs without a diverged seed.
  """
  import optaxlr
  from optaxlr import search

  fn = "rescore"
  mode = _check_mode(fn, default_mode(metric) if mode is None else mode)
  _check_confidence(fn, confidence)
  if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
    raise ValueError(f"{fn}: top must be an int >= 1, got top={top!r}")
  if result.info.get("start_step"):
    raise ValueError(f"{fn}: the result continues another sweep (start_from, start_step="
                     f"{result.info['start_step']}); rescore its first sweep's configs instead")
  old = [int(s) for s in np.asarray(result.seeds)]
  if seeds is None:
    seeds = len(old)
  if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
    if seeds < 1:
      raise ValueError(f"{fn}: seeds must be >= 1 or a list of fresh seed values, got"
                       f" seeds={seeds}")
    fresh = list(range(max(old) + 1, max(old) + 1 + int(seeds)))
  else:
    fresh = [int(s) for s in seeds]
    used = sorted(set(fresh) & set(old))
    if used:
      raise ValueError(f"{fn}: seeds must be fresh (not used by the result, {old}), got"
                       f" {used} again")
    if not fresh:
      raise ValueError(f"{fn}: seeds must not be empty")
  vals = result.summary(metric, at="final", mode=mode)
  ok = np.all(np.isfinite(vals), axis=0)
  key = np.where(ok, vals.mean(0) * (1 if mode == "min" else -1), np.inf)
  order = np.argsort(key, kind="stable")[: int(ok.sum())]
  if order.size < top:
    raise ValueError(f"{fn}: top={top} but only {order.size} configs have no diverged seed")
  idx = order[:top]
  hp = result.hparams
  fixed = result.space.fixed
  cols = {k: np.asarray(v)[idx] for k, v in hp.items() if k not in fixed}
  space = search.zip(**cols)
  if fixed:
    space = space.with_fixed(**fixed)
  kwargs = {k: result.info[k] for k in _CARRIED if result.info.get(k) is not None}
  if "batch_size" in hp:
    kwargs.pop("batch_size", None)
  kwargs.update(sweep_kwargs)
  dtype = result.info.get("compute_dtype")
  if dtype is not None and not {"compute_dtype", "execution"} & set(sweep_kwargs):
    warnings.warn(f"{fn}: the result was trained with compute_dtype={dtype!r}; the fresh sweep"
                  " runs at the default precision unless you pass it again", stacklevel=2)
  new = optaxlr.sweep(task, optimizer, space, seeds=fresh, **kwargs)
  new_vals = new.summary(metric, at="final", mode=mode)
  m, lo, hi = mean_interval(new_vals, confidence)
  return Rescored(
      metric=metric, configs=tuple(result.config(int(i)) for i in idx),
      indices=tuple(int(i) for i in idx), selected=vals.mean(0)[idx], fresh=m,
      fresh_intervals=np.stack([lo, hi], -1), value=float(m[0]),
      interval=(float(lo[0]), float(hi[0])),
      winner=winner(new, metric, confidence=confidence, mode=mode, report=None),
      seeds=tuple(fresh), result=new,
  )
