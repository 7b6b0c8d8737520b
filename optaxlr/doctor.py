"""The training doctor: reads loss curves, names what went wrong in every run, says what to do.

:func:`diagnose` takes a :class:`optaxlr.SweepResult` (or raw arrays of curves) and labels
every ``(seed, config)`` run with one of :data:`LABELS`, vectorised in NumPy over the runs, so
a sweep of a thousand configs gets a map of diagnoses. Each label comes with the numbers
that led to it (``Diagnosis.evidence``) and advice. Every threshold is a named field of
:class:`DoctorThresholds`.

The rules read the training minibatch loss of every step and, when present, the validation
loss and accuracy at the evaluation steps, a lower-is-better score to compare the runs of a
sweep with its best (``val/error``, else the validation loss), and the update/weight norm
ratio ``||update|| / ||params||`` recorded by the sweep (``train/update_ratio``):

* levels are means over a window of ``window`` x (the run's length) steps: ``L0`` at the start,
  ``L_end`` at the end, ``L_mid`` ending ``recent_fraction`` of the run before the end,
  ``L_min`` the lowest of them all;
* ``improvement = (L0 - L_end) / L0``, ``recent_improvement = (L_mid - L_end) / L_mid``,
  ``remaining = L_end / L0``;
* ``peak_ratio``: the largest windowed mean over ``L0``;
* ``end_over_min = L_end / max(L_min, explode_floor * L0)``: how far the loss ends above its
  running minimum (a spike that recovers, as when a one-cycle or cyclic schedule raises the
  rate on purpose, ends near its minimum);
* ``noise_ratio``: over the second half of the run, ``sqrt(mean(diff(loss)^2) / 2)``
  divided by the mean loss (the per-step fluctuation relative to the level; a slowly moving
  trend contributes little to the differences);
* ``val_rise = (val_last - val_best) / val_best``, ``val_acc_change`` = accuracy at the last
  evaluation minus accuracy at the evaluation of the best validation loss,
  ``train_fall_after_val_best``: relative fall of the training loss from that evaluation to
  the end;
* ``score``: the comparison score at the run's last usable evaluation; ``best_score``: the
  lowest mean over seeds of any config at that same evaluation (the same budget; a config
  with a diverged seed has no mean); ``behind_ratio = score / best_score``;
* ``eval_gap``: the loss of a *training subset evaluated in evaluation mode* (the sweep metric
  ``train_eval/loss``, see :func:`with_train_eval`) at the run's last usable evaluation over
  the training loss (training mode, a window before that evaluation). Near 1 (below 1 with
  Dropout) for a model that behaves the same in both modes; far above 1 when BatchNorm's
  running statistics (or another train/eval difference) do not match what the model learned:
  the model fails on its *own training examples* once in evaluation mode, so a high
  validation loss is not overfitting;
* ``best_recent_improvement``: the relative improvement of the best config's score (mean over
  seeds) over the last ``recent_fraction`` of the steps (from the last evaluation at or before
  that point to the last one): a sweep whose best run is still improving fast was stopped too
  early everywhere;
* ``update_ratio``: the largest recorded ``||update|| / ||params||`` (global L2 norms, the
  last step before each evaluation) over the run's usable evaluations. The rule of thumb
  (CS231n; the seed guides) wants it near ``1e-3``: far below, learning is slow; far above,
  unstable. The largest value is used because a decaying schedule drives the ratio towards 0
  at the end of every run; the rule is about the rate at its height.

Losses are assumed positive (cross-entropy, squared error...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from optaxlr import _validate

__all__ = [
    "with_train_eval",
    "LABELS",
    "ADVICE",
    "DoctorThresholds",
    "Diagnosis",
    "diagnose",
    "format_table",
]

LABELS: tuple[str, ...] = (
    "data_error",
    "diverged",
    "exploding",
    "not_learning",
    "oscillating",
    "train_eval_gap",
    "overconfident",
    "overfitting",
    "too_slow",
    "underfitting",
    "plateaued",
    "behind_best",
    "undertrained",
    "healthy",
)
"""Every label, in priority order: a run gets the first whose rule holds."""

ADVICE: dict[str, str] = {
    "data_error": (
        "The loss is NaN/inf before any update (or at the first step of every run): no "
        "learning rate is to blame. Check the data and the model: labels outside "
        "[0, num_classes) (negative or >= the number of outputs; Task.validate checks them "
        "when info['num_classes'] is set), NaN/inf inputs (optaxlr.assert_clean_data), a "
        "log/sqrt/division without an eps in the model or loss."
    ),
    "diverged": (
        "The loss turned NaN/inf. Likely a learning rate too high (3-10x lower, add warmup, "
        "clip gradients), NaN/inf in the data (optaxlr.assert_clean_data), or a log/sqrt/"
        "division without an eps."
    ),
    "exploding": (
        "The loss grew by orders of magnitude and did not come back: the learning rate is too "
        "high for this model and batch size (with a schedule that raises it on purpose, "
        "one_cycle or cyclic, its peak is too high). Lower it 3-10x, add warmup or gradient "
        "clipping."
    ),
    "not_learning": (
        "The loss is flat from the start: learning rate too low (run optaxlr.lr_find), dead "
        "ReLUs (optaxlr.dead_relu_fraction), zero or symmetric initialisation, or too strong "
        "regularisation (weight decay, a flooding level above the loss)."
    ),
    "oscillating": (
        "The minibatch loss jumps around its level (or ends above where it started, or its "
        "updates are far above 1e-3 of the weights while it trails the sweep's best): the "
        "learning rate is too high for the batch size. Lower the rate or raise the batch size "
        "(linear-scaling rule: rate proportional to batch size), or decay the rate."
    ),
    "train_eval_gap": (
        "In evaluation mode the model does much worse on its own TRAINING examples than the "
        "training loss says: the gap is between training and evaluation mode, not between "
        "training and validation data, so it is not overfitting (more weight decay would not "
        "help). Usually BatchNorm: running statistics that lag the weights (momentum too high "
        "for the number of steps, e.g. 0.99 over a few hundred steps: use 0.9), tiny or "
        "unrepresentative batches, unnormalised inputs. Train longer, lower the BatchNorm "
        "momentum, use larger batches, recompute the statistics on training data before "
        "evaluating, or use GroupNorm/LayerNorm."
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
    "too_slow": (
        "Too slow: far behind the sweep's best at the same number of steps and still "
        "improving (or its updates are far below 1e-3 of the weights). Raise the learning "
        "rate (towards the best config's) or train longer."
    ),
    "underfitting": (
        "The loss still falls but much of it remains: train longer, raise the learning rate, "
        "add capacity or lower the regularisation."
    ),
    "plateaued": (
        "The loss stopped improving well above zero: reduce the learning rate (a decay "
        "schedule, optaxlr.reduce_on_plateau); if it never got going, raise it instead."
    ),
    "behind_best": (
        "Far behind the sweep's best at the same number of steps although its own curves "
        "look fine: its settings are worse than the best config's. Compare them "
        "(SweepResult.best, Diagnosis.to_pandas): regularisation (weight decay, flooding), "
        "the rate, the schedule."
    ),
    "undertrained": (
        "Fine on its own, but the whole sweep stopped too early: its best config was still "
        "improving fast at the end. Train longer or raise the learning rate (a one-cycle "
        "schedule), then compare the configs again."
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
    explode_ratio: "exploding" when the loss ends more than ``explode_ratio`` times above its
      running minimum (``end_over_min``), ``> 1``. Default 10 (an order of magnitude). A
      spike that recovers (a schedule raising the rate on purpose) is not an explosion.
    explode_floor: levels below ``explode_floor`` x ``L0`` count as that much in
      ``end_over_min`` (near zero, a relative jump is noise, not an explosion), in ``(0, 1]``.
      Default 0.05.
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
    behind_ratio: a run is *far behind the best* when its ``score`` exceeds ``behind_ratio``
      times the ``best_score`` at the same evaluation, ``> 1``. Default 1.5: half as much
      error again as the best config (20% against 2.7% is 7.5 times; 5.7% against 3% is 1.9
      times; 3.6% against 2.7% is 1.33 times, not far behind).
    behind_margin: ...and by more than ``behind_margin`` in the score's units (for an error
      rate, 0.01 is one percentage point), ``>= 0``, so that two tiny scores (0.2% against
      0.05%) are not "far apart". Default 0.01.
    update_ratio_low: the update/weight norm ratio is "far below" the ``~1e-3`` rule of
      thumb under this, ``> 0``. Default 1e-4 (an order of magnitude, as
      :func:`optaxlr.update_ratio_report`).
    update_ratio_high: ...and "far above" it over this, ``> update_ratio_low``. Default 1e-2.
      Adam's best rate on a small MLP can reach 2e-2 at its peak; the rule only turns a run
      "oscillating" when it also trails the sweep's best.
    eval_gap_ratio: "train_eval_gap" when ``eval_gap`` (a training subset's loss in
      evaluation mode over the training loss) exceeds this, ``> 1``. Default 2.0: the same
      examples cost twice as much once the model is put in evaluation mode.
    eval_gap_margin: ...and the two losses differ by more than this (in loss units), ``>= 0``,
      so that two tiny losses are not a gap. Default 0.1.
    undertrained_improvement: the sweep is *under-trained* when its best config's score
      improved by at least this (relative) over the last ``recent_fraction`` of the steps,
      ``> 0``. Default 0.05 (the issue's case: 7-19% over the last quarter).
    undertrained_margin: ...and by more than this in the score's units, ``>= 0``. Default
      0.005 (half a percentage point of error).
  """

  window: float = 0.1
  explode_ratio: float = 10.0
  explode_floor: float = 0.05
  oscillation_noise: float = 1.0
  not_learning_improvement: float = 0.05
  recent_fraction: float = 0.25
  plateau_improvement: float = 0.01
  underfit_remaining: float = 0.5
  converged_remaining: float = 0.05
  val_rise: float = 0.1
  acc_rise: float = 0.0
  train_fall: float = 0.0
  behind_ratio: float = 1.5
  behind_margin: float = 0.01
  update_ratio_low: float = 1e-4
  update_ratio_high: float = 1e-2
  eval_gap_ratio: float = 2.0
  eval_gap_margin: float = 0.1
  undertrained_improvement: float = 0.05
  undertrained_margin: float = 0.005

  def __post_init__(self):
    fn = "DoctorThresholds"
    _validate.in_range(fn, "window", self.window, 0.0, 0.5, closed="right")
    _validate.check(fn, "explode_ratio", self.explode_ratio, lambda v: v > 1, "> 1")
    _validate.in_range(fn, "explode_floor", self.explode_floor, 0.0, 1.0, closed="right")
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
    _validate.check(fn, "behind_ratio", self.behind_ratio, lambda v: v > 1, "> 1")
    _validate.nonnegative(fn, "behind_margin", self.behind_margin)
    _validate.positive(fn, "update_ratio_low", self.update_ratio_low)
    _validate.check(fn, "update_ratio_high", self.update_ratio_high,
                    lambda v: v > self.update_ratio_low,
                    f"> update_ratio_low={self.update_ratio_low}")
    _validate.check(fn, "eval_gap_ratio", self.eval_gap_ratio, lambda v: v > 1, "> 1")
    _validate.nonnegative(fn, "eval_gap_margin", self.eval_gap_margin)
    _validate.positive(fn, "undertrained_improvement", self.undertrained_improvement)
    _validate.nonnegative(fn, "undertrained_margin", self.undertrained_margin)


def with_train_eval(task: Any, n: int = 512, *, seed: int = 0,
                    split: str = "train_eval") -> Any:
  """The task with one more evaluation split: ``n`` training examples, evaluated like the
  validation data (in evaluation mode: BatchNorm's running statistics, no Dropout).

  A sweep of it records ``f"{split}/loss"`` (and the task's other metrics) on examples the
  model trained on; :func:`diagnose` compares that loss with the training loss to tell a
  train/eval-mode gap (BatchNorm statistics that do not match the weights) from overfitting.

  Args:
    task: an :class:`optaxlr.Task` whose training data is in memory (for a stream, add an
      evaluation split of training examples yourself).
    n: how many training examples, drawn without replacement (all of them if fewer).
    seed: the draw's seed (NumPy).
    split: the new split's name; must not be one of the task's splits.

  Returns:
    A new :class:`optaxlr.Task`.

  Examples:
    >>> from optaxlr import tasks
    >>> task = with_train_eval(tasks.teacher_student(n_train=64, n_val=16, n_test=16), n=32)
    >>> sorted(task.eval), task.eval["train_eval"]["x"].shape[0]
    (['test', 'train_eval', 'val'], 32)
  """
  from optaxlr.tasks import Task

  fn = "with_train_eval"
  if not isinstance(task, Task):
    raise TypeError(f"{fn}: task must be an optaxlr.Task, got {type(task).__name__}")
  _validate.check_int(fn, "n", n, 1)
  _validate.check_int(fn, "seed", seed, 0)
  if not isinstance(split, str) or not split or "/" in split or split in task.eval \
      or split == "train":
    raise ValueError(f"{fn}: split must be a new split name without '/', not 'train' or one of "
                     f"the task's {sorted(task.eval)}, got split={split!r}")
  if task.host_fed:
    raise ValueError(f"{fn}: the task's training data is a stream ({task.name!r}); add an "
                     "evaluation split of training examples yourself (Task(eval={...}))")
  n_train = task.n_train
  idx = np.sort(np.random.default_rng(seed).permutation(n_train)[:min(n, n_train)])
  subset = {k: np.asarray(v)[idx] for k, v in task.train.items()}
  return dataclasses.replace(task, eval={**task.eval, split: subset})


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

_CONDITIONS = ("far_behind", "slow_updates", "large_updates")


@dataclasses.dataclass
class Diagnosis:
  """The doctor's verdict on every run, with leading axes ``(seed, config)``.

  Attributes:
    labels: ``(S, C)`` array of label strings (see :data:`LABELS`).
    flags: name -> ``(S, C)`` bool: every label's rule that holds (a run may show several
      issues; its label is the first in priority order), and the conditions behind them:
      ``far_behind`` (behind the sweep's best, see ``behind_ratio``), ``slow_updates`` /
      ``large_updates`` (update ratio far below / above the ``1e-3`` rule of thumb).
    evidence: name -> ``(S, C)`` float, the numbers behind the rules (module docstring):
      ``diverged_at`` (-1 if never), ``initial_loss``, ``improvement``,
      ``recent_improvement``, ``remaining``, ``peak_ratio``, ``end_over_min``,
      ``noise_ratio``, ``val_rise``, ``val_acc_change``, ``train_fall_after_val_best``,
      ``val_best_step``, ``score``, ``best_score``, ``behind_ratio``, ``eval_gap``,
      ``best_recent_improvement`` (the same for every run), ``update_ratio``; NaN where not
      measurable.
    thresholds: the :class:`DoctorThresholds` used.
    hparams: hyperparameter name -> value per config, ``(C,)`` (from a sweep's space).
    seeds: the seed values, ``(S,)``.
    notes: what the doctor could not judge and why (a rule skipped for want of data), and
      verdicts about the whole sweep.
  """

  labels: np.ndarray
  flags: dict[str, np.ndarray]
  evidence: dict[str, np.ndarray]
  thresholds: DoctorThresholds
  hparams: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  seeds: np.ndarray | None = None
  notes: tuple[str, ...] = ()

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
    """A paragraph on one run (by seed *index* and config index): label, evidence, advice,
    and the notes on what could not be judged."""
    label = str(self.labels[seed, config])
    ev = {k: float(v[seed, config]) for k, v in self.evidence.items()}
    lines = [f"run (seed index {seed}, config {config}): {label}"]
    others = [k for k, v in self.flags.items() if v[seed, config] and k != label]
    if others:
      lines.append("also: " + ", ".join(others))
    lines.append("evidence: " + _evidence_text(ev))
    lines.append("advice: " + ADVICE[label])
    lines += [f"note: {n}" for n in self.notes]
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
  if "initial_loss" in ev and not np.isfinite(ev["initial_loss"]):
    parts.append(f"initial loss {ev['initial_loss']}")
  fmt = {
      "improvement": "improvement {}", "recent_improvement": "recent {}",
      "remaining": "remaining {}", "peak_ratio": "peak x{:.3g}",
      "end_over_min": "end x{:.3g} its minimum", "noise_ratio": "noise {:.2f}",
      "val_rise": "val rise {}", "val_acc_change": "val acc {:+.1%}",
      "update_ratio": "update ratio {:.1e} (rule of thumb ~1e-3)",
  }
  for k, f in fmt.items():
    v = ev.get(k, np.nan)
    if np.isfinite(v) and not (k == "end_over_min" and v < 2):  # shown when it matters
      parts.append(f.format(f"{100 * v:.3g}%") if "{}" in f else f.format(v))
  score, best = ev.get("score", np.nan), ev.get("best_score", np.nan)
  if np.isfinite(score) and np.isfinite(best):
    parts.append(f"score {score:.4g} vs best {best:.4g} (x{ev.get('behind_ratio', np.nan):.3g})")
  return ", ".join(parts) if parts else "-"


def format_table(diagnosis: Diagnosis, max_rows: int = 20) -> str:
  """The text the CLI prints for ``optaxlr diagnose RESULT``: counts, advice, worst configs,
  then the notes (rules skipped for want of data).

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
      elif k == "initial_loss":
        ev[k] = float(col[~np.isfinite(col)][0]) if (~np.isfinite(col)).any() else float(col[0])
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
  if d.notes:
    lines += ["", *(f"note: {n}" for n in d.notes)]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Inputs.


def _as_runs(fn: str, name: str, x: Any) -> np.ndarray:
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


@dataclasses.dataclass
class _Inputs:
  train: np.ndarray  # (S, C, T)
  per_eval: dict[str, np.ndarray | None]  # val_loss, val_accuracy, score, update_ratio, train_eval
  eval_steps: Any
  diverged_at: Any
  stopped_at: Any
  hparams: dict[str, np.ndarray]
  seeds: np.ndarray | None
  notes: list[str]
  log_every: int = 1  # steps per recorded training loss (a sweep's info["log_every"])


def _gather(fn: str, result: Any, *, val_loss, val_accuracy, score, update_ratio, eval_steps,
            diverged_at, stopped_at, val_metric, accuracy_metric, score_metric,
            update_ratio_metric, train_eval_loss=None, train_eval_metric="train_eval/loss"
            ) -> _Inputs:
  """Reads a SweepResult (or takes the arrays), says in ``notes`` which data is missing."""
  notes: list[str] = []
  if hasattr(result, "batch_loss") and hasattr(result, "diverged_at"):
    metrics = result.metrics
    train = np.asarray(result.batch_loss, np.float64)
    if val_loss is None and val_metric in metrics:
      val_loss = metrics[val_metric]
    if val_accuracy is None and accuracy_metric in metrics:
      val_accuracy = metrics[accuracy_metric]
    if train_eval_loss is None and train_eval_metric in metrics:
      train_eval_loss = metrics[train_eval_metric]
    if score is None:
      if score_metric is None:
        score_metric = next((m for m in ("val/error", val_metric) if m in metrics), None)
      elif score_metric not in metrics:
        raise ValueError(f"{fn}: score_metric {score_metric!r} is not in the result; available: "
                         f"{sorted(metrics)}")
      if score_metric is not None:
        score = metrics[score_metric]
      else:
        notes.append(f"comparison with the sweep's best skipped: the result has neither "
                     f"'val/error' nor {val_metric!r}")
    if update_ratio is None:
      if update_ratio_metric in metrics:
        update_ratio = metrics[update_ratio_metric]
      else:
        notes.append(f"update/weight ratio rule (~1e-3) skipped: the result has no "
                     f"{update_ratio_metric!r} metric (sweeps made before it was recorded)")
    eval_steps = result.eval_steps if eval_steps is None else eval_steps
    diverged_at = result.diverged_at if diverged_at is None else diverged_at
    stopped_at = result.stopped_at if stopped_at is None else stopped_at
    hparams, seeds = dict(result.hparams), np.asarray(result.seeds)
    log_every = int(getattr(result, "info", {}).get("log_every", 1))
  else:
    train = _as_runs(fn, "train loss", result)
    if score is None:
      score = val_loss
      if score is None:
        notes.append("comparison with the sweep's best skipped: no score or val_loss given")
    if update_ratio is None:
      notes.append("update/weight ratio rule (~1e-3) skipped: no update_ratio given")
    hparams, seeds, log_every = {}, None, 1
  n_s, n_c, _ = train.shape
  per_eval = {}
  n_e = None
  for name, v in (("val_loss", val_loss), ("val_accuracy", val_accuracy), ("score", score),
                  ("update_ratio", update_ratio), ("train_eval_loss", train_eval_loss)):
    if v is None:
      per_eval[name] = None
      continue
    a = _as_runs(fn, name, v)
    if a.shape[:2] != (n_s, n_c):
      raise ValueError(f"{fn}: {name} must have leading shape {(n_s, n_c)}, got {a.shape}")
    if n_e is not None and a.shape[-1] != n_e:
      raise ValueError(f"{fn}: {name} must have {n_e} evaluations like the other per-evaluation "
                       f"curves, got shape {a.shape}")
    n_e = a.shape[-1]
    per_eval[name] = a
  if score is not None and n_c == 1:
    notes.append("comparison with the sweep's best: one config only, nothing to compare with")
  return _Inputs(train, per_eval, eval_steps, diverged_at, stopped_at, hparams, seeds, notes,
                 log_every)


# ----------------------------------------------------------------------------------------
# Evidence: (R, T) or (R, E) arrays and per-run integer bounds in, (R,) arrays out.


def _train_evidence(x: np.ndarray, n: np.ndarray, thr: DoctorThresholds) -> dict[str, Any]:
  """Levels, improvement, peak, end over minimum and noise of the valid prefix ``x[:, :n]``."""
  R, n_t = x.shape
  cs = _prefix_sums(x)
  w = np.maximum(1, np.floor(thr.window * n).astype(np.int64))
  l0 = _span_mean(cs, np.zeros(R, np.int64), np.minimum(w, n))
  l_end = _span_mean(cs, n - w, n)
  m = np.minimum(n, np.maximum(w, np.round((1 - thr.recent_fraction) * n).astype(np.int64)))
  l_mid = _span_mean(cs, m - w, m)

  # Every windowed mean inside the valid prefix: the peak and the running minimum.
  t_idx = np.arange(n_t + 1)[None, :]
  lo = t_idx - w[:, None]
  inside = (lo >= 0) & (t_idx <= n[:, None])
  rolled = (cs - np.take_along_axis(cs, np.clip(lo, 0, n_t), axis=1)) / w[:, None]
  peak = np.where(inside, rolled, -np.inf).max(axis=1)
  low = np.where(inside, rolled, np.inf).min(axis=1)
  ok = np.isfinite(peak) & (n > 0)
  peak_ratio = np.where(ok, _rel(peak, l0), np.nan)
  end_over_min = np.where(ok, _rel(l_end, np.maximum(low, thr.explode_floor * l0)), np.nan)

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
  return {
      "cs": cs, "w": w, "l_end": l_end,
      "improvement": _rel(l0 - l_end, l0), "recent_improvement": _rel(l_mid - l_end, l_mid),
      "remaining": _rel(l_end, l0), "peak_ratio": peak_ratio, "end_over_min": end_over_min,
      "noise_ratio": noise_ratio,
  }


def _usable_evals(v: np.ndarray, steps_e: np.ndarray, n: np.ndarray) -> np.ndarray:
  """How many leading evaluations of each run are finite and within its usable steps."""
  ok = np.isfinite(v) & (steps_e[None, :] <= n[:, None])
  return np.where((~ok).any(1), (~ok).argmax(1), v.shape[1])


def _val_evidence(v, acc, steps_e, n, tr) -> dict[str, np.ndarray]:
  """Rise of the validation loss after its best, accuracy change, training fall since."""
  R, n_e = v.shape
  e_n = _usable_evals(v, steps_e, n)
  e_in = np.arange(n_e)[None, :] < e_n[:, None]
  has = e_n >= 2
  j = np.argmin(np.where(e_in, v, np.inf), axis=1)
  rows = np.arange(R)
  last = np.maximum(e_n - 1, 0)
  v_best = v[rows, j]
  s_best = np.minimum(steps_e[j], n)
  t_at = _span_mean(tr["cs"], np.maximum(s_best - tr["w"], 0), s_best)
  out = {
      "val_rise": np.where(has, _rel(v[rows, last] - v_best, v_best), np.nan),
      "val_acc_change": np.full(R, np.nan),
      "train_fall_after_val_best": np.where(has, _rel(t_at - tr["l_end"], t_at), np.nan),
      "val_best_step": np.where(has, steps_e[j], np.nan),
  }
  if acc is not None:
    out["val_acc_change"] = np.where(has, acc[rows, last] - acc[rows, j], np.nan)
  return out


def _score_evidence(score: np.ndarray, steps_e: np.ndarray, n: np.ndarray) -> dict[str, Any]:
  """Each run's score at its last usable evaluation against the best config's mean over
  seeds at that same evaluation. ``score`` is ``(S, C, E)``, ``n`` is ``(S, C)``."""
  n_s, n_c, n_e = score.shape
  flat = score.reshape(n_s * n_c, n_e)
  e_n = _usable_evals(flat, steps_e, n.reshape(-1))
  last = np.maximum(e_n - 1, 0)
  own = np.where(e_n > 0, flat[np.arange(flat.shape[0]), last], np.nan)
  with np.errstate(all="ignore"):
    mean = score.mean(axis=0)  # (C, E); NaN where a seed diverged
    finite = np.isfinite(mean).any(axis=0)
    best_e = np.where(finite, np.min(np.where(np.isfinite(mean), mean, np.inf), axis=0), np.nan)
  best = np.where(e_n > 0, best_e[last], np.nan)
  return {"score": own, "best_score": best, "behind_ratio": _rel(own, best)}


def _peak_update_ratio(u: np.ndarray, steps_e: np.ndarray, n: np.ndarray) -> np.ndarray:
  """The largest finite update ratio over the evaluations within the run's usable steps."""
  ok = np.isfinite(u) & (steps_e[None, :] <= n[:, None])
  return np.where(ok.any(1), np.where(ok, u, -np.inf).max(1), np.nan)


def _gap_evidence(te: np.ndarray, steps_e: np.ndarray, n: np.ndarray, tr) -> dict[str, Any]:
  """A training subset's loss in evaluation mode at the last usable evaluation, over (and
  minus) the training loss of a window before it."""
  R = te.shape[0]
  e_n = _usable_evals(te, steps_e, n)
  last = np.maximum(e_n - 1, 0)
  at = np.minimum(steps_e[last], n)
  level = _span_mean(tr["cs"], np.maximum(at - tr["w"], 0), at)
  v = np.where(e_n > 0, te[np.arange(R), last], np.nan)
  return {"eval_gap": _rel(v, level), "gap_diff": v - level}


def _best_recent_improvement(score: np.ndarray, steps_e: np.ndarray, n: np.ndarray,
                             thr: DoctorThresholds) -> tuple[float, float, int]:
  """``(relative improvement, absolute improvement, config)`` of the best config's score (mean
  over seeds, at its last usable evaluation) from the last evaluation at or before
  ``1 - recent_fraction`` of that step; NaN where not measurable."""
  with np.errstate(all="ignore"):
    mean = score.mean(axis=0)  # (C, E); NaN where a seed diverged
  n_c = mean.shape[0]
  e_n = _usable_evals(mean, steps_e, n.min(axis=0))
  last = np.maximum(e_n - 1, 0)
  final = np.where(e_n > 0, mean[np.arange(n_c), last], np.nan)
  if not np.isfinite(final).any():
    return np.nan, np.nan, -1
  c = int(np.nanargmin(final))
  e_last = int(last[c])
  ref = np.flatnonzero(steps_e[:e_last + 1] <= (1 - thr.recent_fraction) * steps_e[e_last])
  if ref.size == 0:
    return np.nan, np.nan, c
  s_ref, s_end = mean[c, ref[-1]], mean[c, e_last]
  return float(_rel(s_ref - s_end, s_ref)), float(s_ref - s_end), c


# ----------------------------------------------------------------------------------------
# The rules.


def diagnose(
    result: Any,
    *,
    val_loss: Any = None,
    val_accuracy: Any = None,
    score: Any = None,
    update_ratio: Any = None,
    train_eval_loss: Any = None,
    eval_steps: Any = None,
    diverged_at: Any = None,
    stopped_at: Any = None,
    thresholds: DoctorThresholds | None = None,
    val_metric: str = "val/loss",
    accuracy_metric: str = "val/accuracy",
    score_metric: str | None = None,
    update_ratio_metric: str = "train/update_ratio",
    train_eval_metric: str = "train_eval/loss",
    **overrides: float,
) -> Diagnosis:
  """Labels every run of a sweep (or every given curve) with what went wrong and why.

  A run is judged on its own curves and against the sweep's best at the same number of
  steps. Rules, in priority order (the first that holds is the label; ``flags`` keeps them
  all); "far behind" means ``score > behind_ratio * best_score`` and ``score - best_score >
  behind_margin``, "still improving" ``recent_improvement >= plateau_improvement``, "slow" /
  "large updates" ``update_ratio`` below ``update_ratio_low`` / above ``update_ratio_high``:

  1. ``data_error``: the first loss (before any update, so no learning rate can cause it) is
     NaN/inf, or every run of a sweep of several configs diverged at step 0: the data or the
     model, not the rate (an out-of-range label makes the cross-entropy NaN).
  2. ``diverged``: the loss or the parameters turned non-finite (``diverged_at``).
  3. ``exploding``: ``end_over_min > explode_ratio`` (the loss ends an order of magnitude
     above its running minimum: a spike that recovers is not an explosion).
  4. ``not_learning``: ``|improvement| < not_learning_improvement`` (flat).
  5. ``oscillating``: ``noise_ratio > oscillation_noise`` and ``remaining >
     converged_remaining``; or ``improvement <= -not_learning_improvement`` (the loss ended
     higher than it started); or large updates while far behind.
  6. ``train_eval_gap``: ``eval_gap > eval_gap_ratio`` and the training subset's loss in
     evaluation mode exceeds the training loss by more than ``eval_gap_margin`` (needs
     ``train_eval_metric``: evaluate a training subset, :func:`with_train_eval`). Ranked above
     overfitting: a model that fails on its own training examples in evaluation mode does not
     overfit, and its cure is not regularisation.
  7. ``overconfident``: ``val_rise > val_rise`` and ``val_acc_change > acc_rise``.
  8. ``overfitting``: ``val_rise > val_rise`` and ``train_fall_after_val_best > train_fall``.
  9. ``too_slow``: no large updates, and either far behind while still improving or with
     slow updates, or slow updates while still improving and ``remaining >
     converged_remaining``.
  10. ``underfitting``: still improving and ``remaining > underfit_remaining``.
  11. ``plateaued``: ``recent_improvement < plateau_improvement`` and
      ``remaining > converged_remaining``.
  12. ``behind_best``: far behind, for none of the reasons above.
  13. ``undertrained``: the sweep is under-trained (its best config's score still improved by
      ``best_recent_improvement >= undertrained_improvement`` and more than
      ``undertrained_margin`` over the last ``recent_fraction`` of the steps) and the run is
      still improving: "train longer / raise the rate" in place of "healthy".
  14. ``healthy``: none of the above.

  A rule whose data is missing (no score, no update ratio) is skipped and
  ``Diagnosis.notes`` says so; without a training subset evaluated in evaluation mode, a run
  labelled overfitting or overconfident gets a note that it may be a train/eval-mode gap.

  Args:
    result: an :class:`optaxlr.SweepResult` (its ``batch_loss``, ``diverged_at``,
      ``stopped_at``, ``eval_steps`` and the metric curves named below), or the training
      loss of every step as an array ``(T,)``, ``(runs, T)`` or ``(seeds, configs, T)`` (a
      1-D or 2-D input is one seed). The first step's loss is taken before any update.
    val_loss: validation loss at the evaluation steps, ``(..., E)`` shaped like ``result``.
    val_accuracy: validation accuracy at the evaluation steps, like ``val_loss``.
    score: a lower-is-better score at the evaluation steps, like ``val_loss``, to compare the
      runs with the best (default: a sweep's ``score_metric``; for arrays, ``val_loss``).
    update_ratio: ``||update|| / ||params||`` at the evaluation steps, like ``val_loss``
      (default: a sweep's ``update_ratio_metric``).
    train_eval_loss: the loss of a subset of the training examples evaluated in evaluation
      mode, like ``val_loss`` (default: a sweep's ``train_eval_metric``).
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
    score_metric: the sweep metric runs are compared on (lower is better); default
      ``"val/error"`` when present, else ``val_metric``.
    update_ratio_metric: the sweep metric holding the update/weight norm ratio.
    train_eval_metric: the sweep metric holding a training subset's loss in evaluation mode
      (an evaluation split made with :func:`with_train_eval`).

  Returns:
    A :class:`Diagnosis`.

  Examples:
    >>> import numpy as np
    >>> t = np.arange(100.0)
    >>> d = diagnose(np.stack([np.exp(-t / 20) + 0.01, np.full(100, 2.3)]))
    >>> d.labels.tolist()
    [['healthy', 'not_learning']]

    Judged against the best: the second run learns, but ends at twenty times the best
    validation loss while still improving.

    >>> curves = np.stack([np.exp(-t / 10) + 0.01, np.exp(-t / 60) + 0.01])
    >>> d = diagnose(curves, val_loss=curves[:, 9::10])
    >>> d.labels.tolist(), np.round(d.evidence["behind_ratio"], 1).tolist()
    ([['healthy', 'too_slow']], [[1.0, 20.1]])
  """
  fn = "diagnose"
  thr = thresholds if thresholds is not None else DoctorThresholds()
  if not isinstance(thr, DoctorThresholds):
    raise TypeError(f"{fn}: thresholds must be a DoctorThresholds, got {type(thr).__name__}")
  if overrides:
    names = [f.name for f in dataclasses.fields(DoctorThresholds)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
      raise ValueError(f"{fn}: unknown threshold(s) {unknown}; the fields of DoctorThresholds "
                       f"are {names}")
    thr = dataclasses.replace(thr, **overrides)

  inp = _gather(fn, result, val_loss=val_loss, val_accuracy=val_accuracy, score=score,
                update_ratio=update_ratio, eval_steps=eval_steps, diverged_at=diverged_at,
                stopped_at=stopped_at, val_metric=val_metric, accuracy_metric=accuracy_metric,
                score_metric=score_metric, update_ratio_metric=update_ratio_metric,
                train_eval_loss=train_eval_loss, train_eval_metric=train_eval_metric)
  train = inp.train
  n_s, n_c, n_t = train.shape
  if n_t < 4:
    raise ValueError(f"{fn}: the training curves need at least 4 steps, got {n_t}")

  k = inp.log_every  # steps are counted in recorded losses (one per k steps)

  def per_run(name, x, default):
    if x is None:
      return np.full((n_s, n_c), default, np.int64)
    a = np.asarray(x)
    a = a.reshape((1, 1) if a.ndim == 0 else (1,) * (2 - a.ndim) + a.shape)
    if a.shape != (n_s, n_c):
      raise ValueError(f"{fn}: {name} must have shape {(n_s, n_c)}, got {np.shape(x)}")
    return a.astype(np.int64)

  stop = per_run("stopped_at", inp.stopped_at, -1)
  stop = np.where(stop >= 0, stop // k, -1)
  end = np.where(stop >= 0, np.minimum(stop, n_t), n_t)  # recorded losses that count
  if inp.diverged_at is None:
    first_bad = _first_bad(train)
    div = np.where(first_bad < end, first_bad, -1)
    div_step = div
  else:
    div_step = per_run("diverged_at", inp.diverged_at, -1)
    div = np.where(div_step >= 0, div_step // k, -1)
  n_valid = np.minimum(end, np.where(div >= 0, div, n_t))
  n_valid = np.minimum(n_valid, _first_bad(train))  # a NaN ends the usable prefix anyway

  R = n_s * n_c
  x = train.reshape(R, n_t)
  n = n_valid.reshape(R)
  tr = _train_evidence(x, n, thr)

  per_eval = inp.per_eval
  n_e = next((a.shape[-1] for a in per_eval.values() if a is not None), None)
  steps_e = None
  if n_e is not None:
    steps_e = (np.asarray(inp.eval_steps, np.int64) if inp.eval_steps is not None
               else np.round(n_t * (np.arange(n_e) + 1) / n_e).astype(np.int64))
    if steps_e.shape != (n_e,):
      raise ValueError(f"{fn}: eval_steps must have shape ({n_e},), got {steps_e.shape}")
    at_e = steps_e // k  # recorded losses before each evaluation

  nan = np.full(R, np.nan)
  val = {"val_rise": nan, "val_acc_change": nan, "train_fall_after_val_best": nan,
         "val_best_step": nan}
  if per_eval["val_loss"] is not None:
    acc = per_eval["val_accuracy"]
    val = _val_evidence(per_eval["val_loss"].reshape(R, n_e), None if acc is None
                        else acc.reshape(R, n_e), at_e, n, tr)
    val["val_best_step"] = val["val_best_step"] * k
  cmp = {"score": nan, "best_score": nan, "behind_ratio": nan}
  if per_eval["score"] is not None and n_c > 1:
    cmp = _score_evidence(per_eval["score"], at_e, n_valid)
  ratio = nan
  if per_eval["update_ratio"] is not None:
    ratio = _peak_update_ratio(per_eval["update_ratio"].reshape(R, n_e), at_e, n)
  gap = {"eval_gap": nan, "gap_diff": nan}
  if per_eval["train_eval_loss"] is not None:
    gap = _gap_evidence(per_eval["train_eval_loss"].reshape(R, n_e), at_e, n, tr)
  best_recent, best_drop, best_cfg = np.nan, np.nan, -1
  if per_eval["score"] is not None:
    best_recent, best_drop, best_cfg = _best_recent_improvement(per_eval["score"], at_e,
                                                                n_valid, thr)

  notes = list(inp.notes)
  initial = x[:, 0]
  data_error = ~np.isfinite(initial) & (div_step.reshape(R) == 0)
  if data_error.any():
    notes.append(f"{int(data_error.sum())} run(s) had a non-finite loss before any update: a "
                 "data or model problem, not the learning rate")
  if n_c > 1 and (div_step == 0).all() and not data_error.all():
    data_error = np.ones(R, bool)
    notes.append("every run diverged at step 0, whatever its learning rate: a data or model "
                 "problem")

  sweep_undertrained = bool(np.isfinite(best_recent)
                            and best_recent >= thr.undertrained_improvement
                            and best_drop > thr.undertrained_margin)
  if sweep_undertrained:
    notes.append(f"the sweep is under-trained: its best config ({best_cfg}) still improved its "
                 f"score by {100 * best_recent:.3g}% over the last "
                 f"{100 * thr.recent_fraction:.3g}% of the steps; train longer or raise the "
                 "learning rate before comparing the configs")
  with np.errstate(invalid="ignore"):
    improving = tr["recent_improvement"] >= thr.plateau_improvement
    unconverged = tr["remaining"] > thr.converged_remaining
    far_behind = ((cmp["score"] > thr.behind_ratio * cmp["best_score"])
                  & (cmp["score"] - cmp["best_score"] > thr.behind_margin))
    slow_updates = ratio < thr.update_ratio_low
    large_updates = ratio > thr.update_ratio_high
    val_up = val["val_rise"] > thr.val_rise
    flags = {
        "data_error": data_error,
        "diverged": div.reshape(R) >= 0,
        "exploding": tr["end_over_min"] > thr.explode_ratio,
        "not_learning": np.abs(tr["improvement"]) < thr.not_learning_improvement,
        "oscillating": ((tr["noise_ratio"] > thr.oscillation_noise) & unconverged)
                       | (tr["improvement"] <= -thr.not_learning_improvement)
                       | (large_updates & far_behind),
        "train_eval_gap": ((gap["eval_gap"] > thr.eval_gap_ratio)
                           & (gap["gap_diff"] > thr.eval_gap_margin)),
        "overconfident": val_up & (val["val_acc_change"] > thr.acc_rise),
        "overfitting": val_up & (val["train_fall_after_val_best"] > thr.train_fall),
        "too_slow": ~large_updates & ((far_behind & (improving | slow_updates))
                                      | (slow_updates & improving & unconverged)),
        "underfitting": improving & (tr["remaining"] > thr.underfit_remaining),
        "plateaued": ~improving & unconverged & np.isfinite(tr["recent_improvement"]),
        "behind_best": far_behind,
        "undertrained": sweep_undertrained & improving,
    }
  # A run too short to measure (diverged at once) has NaN evidence: every comparison is False.
  label_idx = np.full(R, len(LABELS) - 1)
  for i in reversed(range(len(LABELS) - 1)):
    label_idx = np.where(flags[LABELS[i]], i, label_idx)
  labels = np.asarray(LABELS)[label_idx]
  flags["healthy"] = label_idx == len(LABELS) - 1
  flags.update(far_behind=far_behind, slow_updates=slow_updates, large_updates=large_updates)
  if per_eval["train_eval_loss"] is None and np.isin(labels, ("overfitting",
                                                              "overconfident")).any():
    notes.append(f"overfitting and overconfidence may be a train/eval-mode gap (BatchNorm "
                 f"statistics) instead: the result has no {train_eval_metric!r} (a training "
                 "subset evaluated in evaluation mode, doctor.with_train_eval(task)) to tell "
                 "them apart")

  shape = (n_s, n_c)
  evidence = {
      "diverged_at": div_step.astype(np.float64), "initial_loss": initial,
      **{k: tr[k] for k in ("improvement", "recent_improvement", "remaining", "peak_ratio",
                            "end_over_min", "noise_ratio")},
      **val, **cmp, "eval_gap": gap["eval_gap"],
      "best_recent_improvement": np.full(R, best_recent), "update_ratio": ratio,
  }
  return Diagnosis(
      labels=labels.reshape(shape),
      flags={k: np.asarray(v).reshape(shape) for k, v in flags.items()},
      evidence={k: np.asarray(v, np.float64).reshape(shape) for k, v in evidence.items()},
      thresholds=thr, hparams=inp.hparams, seeds=inp.seeds, notes=tuple(notes),
  )
