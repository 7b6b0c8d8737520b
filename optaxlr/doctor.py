"""The training doctor: reads loss curves, names what went wrong in every run, says what to do.

:func:`diagnose` takes a :class:`optaxlr.SweepResult` (or raw arrays of curves) and labels
every ``(seed, config)`` run with one of :data:`LABELS`, vectorised in NumPy over the runs, so
a sweep of a thousand configs gets a map of diagnoses. Each label comes with the numbers
that led to it (``Diagnosis.evidence``) and advice. Every threshold is a named field of
:class:`DoctorThresholds`.

The rules read the training minibatch loss of every step and, when present, the validation
loss and accuracy at the evaluation steps:

* levels are means over a window of ``window`` x (the run's length) steps: ``L0`` at the start,
  ``L_end`` at the end, ``L_mid`` ending ``recent_fraction`` of the run before the end;
* ``improvement = (L0 - L_end) / L0``, ``recent_improvement = (L_mid - L_end) / L_mid``,
  ``remaining = L_end / L0``;
* ``peak_ratio``: the largest windowed mean over ``L0``;
* ``noise_ratio``: over the second half of the run, ``sqrt(mean(diff(loss)^2) / 2)``
  divided by the mean loss (the per-step fluctuation relative to the level; a slowly moving
  trend contributes little to the differences);
* ``val_rise = (val_last - val_best) / val_best``, ``val_acc_change`` = accuracy at the last
  evaluation minus accuracy at the evaluation of the best validation loss,
  ``train_fall_after_val_best``: relative fall of the training loss from that evaluation to
  the end.

Losses are assumed positive (cross-entropy, squared error...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from optaxlr import _validate

__all__ = [
    "LABELS",
    "ADVICE",
    "DoctorThresholds",
    "Diagnosis",
    "diagnose",
    "format_table",
]

LABELS: tuple[str, ...] = (
    "diverged",
    "exploding",
    "not_learning",
    "oscillating",
    "overconfident",
    "overfitting",
    "underfitting",
    "plateaued",
    "healthy",
)
"""Every label, in priority order: a run gets the first whose rule holds."""

ADVICE: dict[str, str] = {
    "diverged": (
        "The loss turned NaN/inf. Likely a learning rate too high (3-10x lower, add warmup, "
        "clip gradients), NaN/inf in the data (optaxlr.assert_clean_data), or a log/sqrt/"
        "division without an eps."
    ),
    "exploding": (
        "The loss grew by orders of magnitude: the learning rate is too high for this model "
        "and batch size. Lower it 3-10x, add warmup or gradient clipping."
    ),
    "not_learning": (
        "The loss is flat from the start: learning rate too low (run optaxlr.lr_find), dead "
        "ReLUs (optaxlr.dead_relu_fraction), zero or symmetric initialisation, or too strong "
        "regularisation (weight decay, a flooding level above the loss)."
    ),
    "oscillating": (
        "The minibatch loss jumps around its level (or ends above where it started): the "
        "learning rate is too high for the batch size. Lower the rate or raise the batch size "
        "(linear-scaling rule: rate proportional to batch size), or decay the rate."
    ),
    "overconfident": (
        "Validation loss and validation accuracy rise together: the model grows overconfident "
        "on the examples it gets wrong. Flooding (optaxlr.flood), label smoothing, or early "
        "stopping on the validation loss."
    ),
    "overfitting": (
        "Validation loss rises while the training loss keeps falling: more weight decay, "
        "flooding, early stopping, data augmentation or a smaller model."
    ),
    "underfitting": (
        "The loss still falls but much of it remains: train longer, raise the learning rate, "
        "add capacity or lower the regularisation."
    ),
    "plateaued": (
        "The loss stopped improving well above zero: reduce the learning rate (a decay "
        "schedule, optaxlr.reduce_on_plateau); if it never got going, raise it instead."
    ),
    "healthy": "No problem found.",
}
"""The advice printed for each label."""


@dataclasses.dataclass(frozen=True)
class DoctorThresholds:
  """The thresholds of :func:`diagnose`, with their defaults.

  Attributes:
    window: fraction of a run's steps averaged for a level (``L0``, ``L_end``...), in
      ``(0, 0.5]``; at least one step. Default 0.1.
    explode_ratio: "exploding" when a windowed mean of the loss exceeds ``explode_ratio``
      times ``L0``, ``> 1``. Default 10 (an order of magnitude).
    oscillation_noise: "oscillating" when ``noise_ratio`` exceeds this (and the run has not
      converged), ``> 0``. Default 1.0: the loss moves by about its own level from step to
      step. Minibatch sampling alone gives about ``sqrt(2 / batch_size)`` for a squared error
      at fixed parameters (0.7 for a batch of 4), which stays below it.
    not_learning_improvement: "not_learning" when ``|improvement|`` is below this (flat);
      a run whose loss ended higher by more than this is "oscillating". Default 0.05.
    recent_fraction: the last part of a run over which ``recent_improvement`` is measured,
      in ``(0, 1)``. Default 0.25.
    plateau_improvement: "still improving" means ``recent_improvement >=`` this; below it a
      run has plateaued. Default 0.01.
    underfit_remaining: "underfitting" when the run is still improving and ``remaining``
      exceeds this. Default 0.5.
    converged_remaining: a flat run with ``remaining`` at or below this has converged
      (healthy), above it has plateaued. Default 0.05.
    val_rise: the validation loss "rises" when ``val_rise`` exceeds this. Default 0.1.
    acc_rise: "overconfident" when the validation accuracy rose by more than this while the
      validation loss rose. Default 0.0.
    train_fall: "overfitting" needs the training loss to have fallen by more than this
      (relative) since the best validation loss. Default 0.0.
  """

  window: float = 0.1
  explode_ratio: float = 10.0
  oscillation_noise: float = 1.0
  not_learning_improvement: float = 0.05
  recent_fraction: float = 0.25
  plateau_improvement: float = 0.01
  underfit_remaining: float = 0.5
  converged_remaining: float = 0.05
  val_rise: float = 0.1
  acc_rise: float = 0.0
  train_fall: float = 0.0

  def __post_init__(self):
    fn = "DoctorThresholds"
    _validate.in_range(fn, "window", self.window, 0.0, 0.5, closed="right")
    _validate.check(fn, "explode_ratio", self.explode_ratio, lambda v: v > 1, "> 1")
    _validate.positive(fn, "oscillation_noise", self.oscillation_noise)
    _validate.in_range(fn, "recent_fraction", self.recent_fraction, 0.0, 1.0, closed="neither")
    _validate.check(fn, "not_learning_improvement", self.not_learning_improvement,
                    np.isfinite, "finite")
    _validate.check(fn, "plateau_improvement", self.plateau_improvement, np.isfinite, "finite")
    _validate.positive(fn, "underfit_remaining", self.underfit_remaining)
    _validate.nonnegative(fn, "converged_remaining", self.converged_remaining)
    _validate.nonnegative(fn, "val_rise", self.val_rise)
    _validate.check(fn, "acc_rise", self.acc_rise, np.isfinite, "finite")
    _validate.check(fn, "train_fall", self.train_fall, np.isfinite, "finite")


# ----------------------------------------------------------------------------------------
# Vectorised pieces: every function takes (R, T) arrays and per-run integer bounds.


def _prefix_sums(x: np.ndarray) -> np.ndarray:
  """``cs[:, t] = sum(x[:, :t])`` with non-finite values counted as 0."""
  z = np.where(np.isfinite(x), x, 0.0)
  return np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(z, axis=1)], axis=1)


def _span_mean(cs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Mean of ``x[r, a_r:b_r]`` (NaN where ``b <= a``)."""
  rows = np.arange(cs.shape[0])
  a = np.clip(a, 0, cs.shape[1] - 1)
  b = np.clip(b, 0, cs.shape[1] - 1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(b > a, (cs[rows, b] - cs[rows, a]) / np.maximum(b - a, 1), np.nan)


def _rel(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):
    return num / np.abs(den)


def _first_bad(x: np.ndarray) -> np.ndarray:
  """Index of the first non-finite value along the last axis, or its length."""
  bad = ~np.isfinite(x)
  return np.where(bad.any(-1), bad.argmax(-1), x.shape[-1])


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  n = mask.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, np.where(mask, x, 0.0).sum(-1) / np.maximum(n, 1), np.nan)


# ----------------------------------------------------------------------------------------
# The result.


@dataclasses.dataclass
class Diagnosis:
  """The doctor's verdict on every run, with leading axes ``(seed, config)``.

  Attributes:
    labels: ``(S, C)`` array of label strings (see :data:`LABELS`).
    flags: label -> ``(S, C)`` bool, every rule that holds (a run may show several issues;
      its label is the first in priority order).
    evidence: name -> ``(S, C)`` float, the numbers behind the rules (module docstring):
      ``diverged_at`` (-1 if never), ``improvement``, ``recent_improvement``, ``remaining``,
      ``peak_ratio``, ``noise_ratio``, ``val_rise``, ``val_acc_change``,
      ``train_fall_after_val_best``, ``val_best_step``; NaN where not measurable.
    thresholds: the :class:`DoctorThresholds` used.
    hparams: hyperparameter name -> value per config, ``(C,)`` (from a sweep's space).
    seeds: the seed values, ``(S,)``.
  """

  labels: np.ndarray
  flags: dict[str, np.ndarray]
  evidence: dict[str, np.ndarray]
  thresholds: DoctorThresholds
  hparams: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  seeds: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.labels.shape)

  @property
  def advice(self) -> np.ndarray:
    """``(S, C)`` object array: the advice of each run's label."""
    out = np.empty(self.labels.shape, dtype=object)
    for label in LABELS:
      out[self.labels == label] = ADVICE[label]
    return out

  def counts(self) -> dict[str, int]:
    """Label -> number of runs, for every label in priority order."""
    return {label: int((self.labels == label).sum()) for label in LABELS}

  def by_config(self) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent label of each config over seeds (ties: the higher priority) and
    how many seeds have it: ``(labels (C,), seeds (C,))``."""
    counts = np.stack([(self.labels == label).sum(0) for label in LABELS])  # (K, C)
    idx = counts.argmax(0)  # first maximum = highest priority among ties
    return np.asarray(LABELS)[idx], counts[idx, np.arange(counts.shape[1])]

  def explain(self, seed: int, config: int) -> str:
    """A paragraph on one run (by seed *index* and config index): label, evidence, advice."""
    label = str(self.labels[seed, config])
    ev = {k: float(v[seed, config]) for k, v in self.evidence.items()}
    lines = [f"run (seed index {seed}, config {config}): {label}"]
    others = [k for k, v in self.flags.items() if v[seed, config] and k != label]
    if others:
      lines.append("also: " + ", ".join(others))
    lines.append("evidence: " + _evidence_text(ev))
    lines.append("advice: " + ADVICE[label])
    return "\n".join(lines)

  def to_pandas(self):
    """A long table: one row per (config, seed) with hyperparameters, label, flags,
    evidence and advice."""
    import pandas as pd

    n_s, n_c = self.labels.shape
    seeds = self.seeds if self.seeds is not None else np.arange(n_s)
    data: dict[str, Any] = {
        "config": np.repeat(np.arange(n_c), n_s),
        "seed": np.tile(np.asarray(seeds), n_c),
    }
    for k, v in self.hparams.items():
      data[k] = np.repeat(np.asarray(v), n_s)
    data["label"] = self.labels.T.reshape(-1)
    for k, v in self.evidence.items():
      data[k] = v.T.reshape(-1)
    for k, v in self.flags.items():
      data[f"is_{k}"] = v.T.reshape(-1)
    data["advice"] = self.advice.T.reshape(-1)
    return pd.DataFrame(data)

  def summary_table(self, max_rows: int = 20) -> str:
    """Plain text: label counts with advice, then the configs (majority over seeds), problem
    configs first, at most ``max_rows`` of them."""
    return format_table(self, max_rows=max_rows)


def _evidence_text(ev: Mapping[str, float]) -> str:
  parts = []
  if ev.get("diverged_at", -1) >= 0:
    parts.append(f"diverged at step {int(ev['diverged_at'])}")
  fmt = {
      "improvement": "improvement {}", "recent_improvement": "recent {}",
      "remaining": "remaining {}", "peak_ratio": "peak x{:.3g}",
      "noise_ratio": "noise {:.2f}", "val_rise": "val rise {}",
      "val_acc_change": "val acc {:+.1%}",
  }
  for k, f in fmt.items():
    v = ev.get(k, np.nan)
    if np.isfinite(v):
      parts.append(f.format(f"{100 * v:.3g}%") if "{}" in f else f.format(v))
  return ", ".join(parts) if parts else "-"


def format_table(diagnosis: Diagnosis, max_rows: int = 20) -> str:
  """The text the CLI prints for ``optaxlr diagnose RESULT``: counts, advice, worst configs.

  Examples:
    >>> import numpy as np
    >>> t = np.arange(50.0)
    >>> curves = np.stack([np.exp(-t / 10) + 0.01, np.full(50, 2.0), np.r_[t[:10], [np.nan] * 40]])
    >>> print(format_table(diagnose(curves)).splitlines()[0])
    3 runs (1 seed x 3 configs): 1 diverged, 1 not_learning, 1 healthy
  """
  d = diagnosis
  n_s, n_c = d.labels.shape
  counts = {k: v for k, v in d.counts().items() if v}
  head = ", ".join(f"{v} {k}" for k, v in counts.items())
  lines = [f"{n_s * n_c} runs ({n_s} seed{'s' * (n_s != 1)} x {n_c} config"
           f"{'s' * (n_c != 1)}): {head}", ""]
  width = max(len(k) for k in LABELS)
  lines.append(f"{'label':<{width}}  {'runs':>6}  {'share':>6}  advice")
  for k, v in counts.items():
    lines.append(f"{k:<{width}}  {v:>6}  {v / (n_s * n_c):>6.1%}  {ADVICE[k]}")
  labels, agree = d.by_config()
  order = sorted(range(n_c), key=lambda c: (LABELS.index(labels[c]), c))
  shown = order[:max_rows]
  lines += ["", "configs (label of most seeds; problems first):"]
  names = list(d.hparams)
  head = ["config", *names, "label", "seeds", "evidence (mean over seeds)"]
  rows = []
  for c in shown:
    hp = [f"{np.asarray(d.hparams[k])[c].item():.4g}" for k in names]
    ev = {}
    for k, v in d.evidence.items():
      col = v[:, c]
      if k == "diverged_at":
        hit = col[col >= 0]
        ev[k] = float(hit.min()) if hit.size else -1.0
      else:
        with np.errstate(all="ignore"):
          ev[k] = float(np.nanmean(col)) if np.isfinite(col).any() else np.nan
    rows.append([str(c), *hp, str(labels[c]), f"{agree[c]}/{n_s}", _evidence_text(ev)])
  widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(head)]
  fmt_row = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
  lines.append(fmt_row(head))
  lines += [fmt_row(r) for r in rows]
  if n_c > len(shown):
    lines.append(f"... {n_c - len(shown)} more configs (Diagnosis.to_pandas() has them all)")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# The rules.


def _as_runs(fn: str, name: str, x: Any, ndim_tail: int = 1) -> np.ndarray:
  """Curves ``(T,)``, ``(R, T)`` or ``(S, C, T)`` -> ``(S, C, T)`` float64."""
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim == 1:
    arr = arr[None, None]
  elif arr.ndim == 2:
    arr = arr[None]
  elif arr.ndim != 3:
    raise ValueError(f"{fn}: {name} must have shape (T,), (runs, T) or (seeds, configs, T), "
                     f"got shape {arr.shape}")
  return arr


def diagnose(
    result: Any,
    *,
    val_loss: Any = None,
    val_accuracy: Any = None,
    eval_steps: Any = None,
    diverged_at: Any = None,
    stopped_at: Any = None,
    thresholds: DoctorThresholds | None = None,
    val_metric: str = "val/loss",
    accuracy_metric: str = "val/accuracy",
    **overrides: float,
) -> Diagnosis:
  """Labels every run of a sweep (or every given curve) with what went wrong and why.

  Rules, in priority order (the first that holds is the label; ``flags`` keeps them all):

  1. ``diverged``: the loss or the parameters turned non-finite (``diverged_at``).
  2. ``exploding``: ``peak_ratio > explode_ratio``.
  3. ``not_learning``: ``|improvement| < not_learning_improvement`` (flat).
  4. ``oscillating``: ``noise_ratio > oscillation_noise`` and ``remaining >
     converged_remaining``; or ``improvement <= -not_learning_improvement`` (the loss ended
     higher than it started).
  5. ``overconfident``: ``val_rise > val_rise`` and ``val_acc_change > acc_rise``.
  6. ``overfitting``: ``val_rise > val_rise`` and ``train_fall_after_val_best > train_fall``.
  7. ``underfitting``: ``recent_improvement >= plateau_improvement`` and
     ``remaining > underfit_remaining``.
  8. ``plateaued``: ``recent_improvement < plateau_improvement`` and
     ``remaining > converged_remaining``.
  9. ``healthy``: none of the above.

  Args:
    result: an :class:`optaxlr.SweepResult` (its ``batch_loss``, ``diverged_at``,
      ``stopped_at``, ``eval_steps`` and the ``val_metric`` / ``accuracy_metric`` curves), or
      the training loss of every step as an array ``(T,)``, ``(runs, T)`` or
      ``(seeds, configs, T)`` (a 1-D or 2-D input is one seed).
    val_loss: validation loss at the evaluation steps, ``(..., E)`` shaped like ``result``.
    val_accuracy: validation accuracy at the evaluation steps, like ``val_loss``.
    eval_steps: the number of training steps done at each evaluation, ``(E,)``; default
      ``T * (e + 1) / E``.
    diverged_at: ``(S, C)`` step of divergence, -1 for none; default for arrays: the first
      non-finite training loss (NaN or inf) that is not after ``stopped_at``.
    stopped_at: ``(S, C)`` step at which early stopping froze a run (-1 for none): later
      steps are ignored and are not a divergence.
    thresholds: a :class:`DoctorThresholds`; ``**overrides`` replace some of its fields
      (``diagnose(res, val_rise=0.2)``).
    val_metric: the validation loss metric of a sweep.
    accuracy_metric: the validation accuracy metric of a sweep (ignored when absent).

  Returns:
    A :class:`Diagnosis`.

  Examples:
    >>> import numpy as np
    >>> t = np.arange(100.0)
    >>> d = diagnose(np.stack([np.exp(-t / 20) + 0.01, np.full(100, 2.3)]))
    >>> d.labels.tolist()
    [['healthy', 'not_learning']]
  """
  fn = "diagnose"
  thr = thresholds if thresholds is not None else DoctorThresholds()
  if not isinstance(thr, DoctorThresholds):
    raise TypeError(f"{fn}: thresholds must be a DoctorThresholds, got {type(thr).__name__}")
  if overrides:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DoctorThresholds)})
    if unknown:
      raise ValueError(f"{fn}: unknown threshold(s) {unknown}; the fields of DoctorThresholds "
                       f"are {[f.name for f in dataclasses.fields(DoctorThresholds)]}")
    thr = dataclasses.replace(thr, **overrides)

  hparams: dict[str, np.ndarray] = {}
  seeds = None
  if hasattr(result, "batch_loss") and hasattr(result, "diverged_at"):
    train = np.asarray(result.batch_loss, np.float64)
    if val_loss is None and val_metric in result.metrics:
      val_loss = result.metrics[val_metric]
    if val_accuracy is None and accuracy_metric in result.metrics:
      val_accuracy = result.metrics[accuracy_metric]
    if eval_steps is None:
      eval_steps = result.eval_steps
    if diverged_at is None:
      diverged_at = result.diverged_at
    if stopped_at is None:
      stopped_at = result.stopped_at
    hparams = dict(result.hparams)
    seeds = np.asarray(result.seeds)
  else:
    train = _as_runs(fn, "train loss", result)
  n_s, n_c, n_t = train.shape
  if n_t < 4:
    raise ValueError(f"{fn}: the training curves need at least 4 steps, got {n_t}")

  def per_run(name, x, default):
    if x is None:
      return np.full((n_s, n_c), default, np.int64)
    a = np.asarray(x)
    a = a.reshape((1, 1) if a.ndim == 0 else (1,) * (2 - a.ndim) + a.shape)
    if a.shape != (n_s, n_c):
      raise ValueError(f"{fn}: {name} must have shape {(n_s, n_c)}, got {np.shape(x)}")
    return a.astype(np.int64)

  stop = per_run("stopped_at", stopped_at, -1)
  end = np.where(stop >= 0, np.minimum(stop, n_t), n_t)  # steps that count
  if diverged_at is None:
    first_bad = _first_bad(train)
    div = np.where(first_bad < end, first_bad, -1)
  else:
    div = per_run("diverged_at", diverged_at, -1)
  n_valid = np.minimum(end, np.where(div >= 0, div, n_t))
  n_valid = np.minimum(n_valid, _first_bad(train))  # a NaN ends the usable prefix anyway

  R = n_s * n_c
  x = train.reshape(R, n_t)
  n = n_valid.reshape(R)
  cs = _prefix_sums(x)
  w = np.maximum(1, np.floor(thr.window * n).astype(np.int64))
  l0 = _span_mean(cs, np.zeros(R, np.int64), np.minimum(w, n))
  l_end = _span_mean(cs, n - w, n)
  m = np.minimum(n, np.maximum(w, np.round((1 - thr.recent_fraction) * n).astype(np.int64)))
  l_mid = _span_mean(cs, m - w, m)
  improvement = _rel(l0 - l_end, l0)
  recent = _rel(l_mid - l_end, l_mid)
  remaining = _rel(l_end, l0)

  # Peak of the windowed mean, over every window inside the valid prefix.
  t_idx = np.arange(n_t + 1)[None, :]
  lo = t_idx - w[:, None]
  inside = (lo >= 0) & (t_idx <= n[:, None])
  rolled = (cs - np.take_along_axis(cs, np.clip(lo, 0, n_t), axis=1)) / w[:, None]
  peak = np.where(inside, rolled, -np.inf).max(axis=1)
  peak_ratio = np.where(np.isfinite(peak) & (n > 0), _rel(peak, l0), np.nan)

  # Step-to-step fluctuation over the second half.
  pos = np.arange(n_t - 1)[None, :]
  half = (n // 2)[:, None]
  d_mask = (pos >= half) & (pos + 1 < n[:, None])
  with np.errstate(invalid="ignore"):
    diffs = np.diff(x, axis=1)
  msq = _masked_mean(np.where(d_mask, diffs, 0.0) ** 2, d_mask)
  steps_t = np.arange(n_t)[None, :]
  level = _masked_mean(x, (steps_t >= half) & (steps_t < n[:, None]))
  noise_ratio = np.where(d_mask.sum(1) >= 2, _rel(np.sqrt(msq / 2), level), np.nan)

  # Validation evidence.
  val_rise = np.full(R, np.nan)
  acc_change = np.full(R, np.nan)
  train_fall = np.full(R, np.nan)
  best_step = np.full(R, np.nan)
  if val_loss is not None:
    v = _as_runs(fn, "val_loss", val_loss)
    if v.shape[:2] != (n_s, n_c):
      raise ValueError(f"{fn}: val_loss must have leading shape {(n_s, n_c)}, got {v.shape}")
    n_e = v.shape[-1]
    steps_e = (np.asarray(eval_steps, np.int64) if eval_steps is not None
               else np.round(n_t * (np.arange(n_e) + 1) / n_e).astype(np.int64))
    if steps_e.shape != (n_e,):
      raise ValueError(f"{fn}: eval_steps must have shape ({n_e},), got {steps_e.shape}")
    v = v.reshape(R, n_e)
    # Evaluations after the run's usable end do not count.
    e_ok = np.isfinite(v) & (steps_e[None, :] <= n[:, None])
    e_n = np.where((~e_ok).any(1), (~e_ok).argmax(1), n_e)
    e_pos = np.arange(n_e)[None, :]
    e_in = e_pos < e_n[:, None]
    has = e_n >= 2
    j = np.argmin(np.where(e_in, v, np.inf), axis=1)
    rows = np.arange(R)
    v_best = v[rows, j]
    v_last = v[rows, np.maximum(e_n - 1, 0)]
    val_rise = np.where(has, _rel(v_last - v_best, v_best), np.nan)
    s_best = np.minimum(steps_e[j], n)
    t_at = _span_mean(cs, np.maximum(s_best - w, 0), s_best)
    train_fall = np.where(has, _rel(t_at - l_end, t_at), np.nan)
    best_step = np.where(has, steps_e[j], np.nan)
    if val_accuracy is not None:
      a = _as_runs(fn, "val_accuracy", val_accuracy)
      if a.shape != (n_s, n_c, n_e):
        raise ValueError(f"{fn}: val_accuracy must have shape {(n_s, n_c, n_e)}, got {a.shape}")
      a = a.reshape(R, n_e)
      acc_change = np.where(has, a[rows, np.maximum(e_n - 1, 0)] - a[rows, j], np.nan)

  diverged = div.reshape(R) >= 0
  with np.errstate(invalid="ignore"):
    flags = {
        "diverged": diverged,
        "exploding": peak_ratio > thr.explode_ratio,
        "not_learning": np.abs(improvement) < thr.not_learning_improvement,
        "oscillating": ((noise_ratio > thr.oscillation_noise)
                        & (remaining > thr.converged_remaining))
                       | (improvement <= -thr.not_learning_improvement),
        "overconfident": (val_rise > thr.val_rise) & (acc_change > thr.acc_rise),
        "overfitting": (val_rise > thr.val_rise) & (train_fall > thr.train_fall),
        "underfitting": (recent >= thr.plateau_improvement) & (remaining > thr.underfit_remaining),
        "plateaued": (recent < thr.plateau_improvement) & (remaining > thr.converged_remaining),
    }
  # A run too short to measure (diverged at once) has NaN evidence: every comparison is False.
  label_idx = np.full(R, len(LABELS) - 1)
  for i in reversed(range(len(LABELS) - 1)):
    label_idx = np.where(flags[LABELS[i]], i, label_idx)
  labels = np.asarray(LABELS)[label_idx]
  flags["healthy"] = label_idx == len(LABELS) - 1

  shape = (n_s, n_c)
  evidence = {
      "diverged_at": div.astype(np.float64),
      "improvement": improvement, "recent_improvement": recent, "remaining": remaining,
      "peak_ratio": peak_ratio, "noise_ratio": noise_ratio, "val_rise": val_rise,
      "val_acc_change": acc_change, "train_fall_after_val_best": train_fall,
      "val_best_step": best_step,
  }
  return Diagnosis(
      labels=labels.reshape(shape),
      flags={k: np.asarray(v).reshape(shape) for k, v in flags.items()},
      evidence={k: np.asarray(v, np.float64).reshape(shape) for k, v in evidence.items()},
      thresholds=thr, hparams=hparams, seeds=seeds,
  )
