"""Optuna's ask-and-tell, vectorised: a batch of trials trained as one :func:`optaxlr.sweep`.

:func:`optimize` asks an Optuna study for ``trials_per_sweep`` trials, trains them together as
one compiled program (a :func:`optaxlr.search.zip` space, one config per trial), and tells each
trial its value; then asks for the next batch, which the sampler (TPE, CMA-ES, random, ...)
draws knowing every result told so far. The same structure with other values reuses the
compiled program, so every batch after the first costs no compilation.

Optuna is an optional dependency (``pip install optuna`` or ``pip install 'optaxlr[optuna]'``);
it is imported when :func:`optimize` is called, not when this module is.

Examples:
  >>> import optuna, optaxlr
  >>> from optaxlr.integrations import optuna as ox_optuna
  >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
  >>> study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
  >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
  >>> batches = ox_optuna.optimize(
  ...     study, task, lambda h: optaxlr.sgd(h["lr"]),
  ...     {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)},
  ...     n_trials=4, trials_per_sweep=2, steps=8, batch_size=8)
  >>> len(study.trials), [b.trials for b in batches]
  (4, [(0, 1), (2, 3)])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from optaxlr import _validate
from optaxlr import adapt as adapt_mod
from optaxlr import search
from optaxlr.engine import Control
from optaxlr.engine import Execution
from optaxlr.engine import SweepResult
from optaxlr.engine import sweep

__all__ = ["Batch", "optimize", "to_optuna"]

_FN = "optimize"
_OWN = ("task", "optimizer", "space", "steps", "seeds")  # sweep arguments optimize sets itself


class Batch(NamedTuple):
  """One sweep of trials.

  Attributes:
    result: the :class:`optaxlr.SweepResult`; config ``i`` is trial ``trials[i]``.
    trials: the trials' numbers (``trial.number``), in config order.
    values: ``(C,)`` float64, the value told to each trial; NaN where the trial was told
      ``TrialState.FAIL`` or ``TrialState.PRUNED``.
    pruned: the numbers of the trials the study's pruner stopped, in config order.
  """

  result: SweepResult
  trials: tuple[int, ...]
  values: np.ndarray
  pruned: tuple[int, ...] = ()


class _Pruning(adapt_mod.Adapt):
  """The study's pruner as an adaptive strategy of one sweep of trials.

  After every chunk it reports each live trial's new evaluations (the mean over seeds of
  ``metric``, skipped where not finite) with ``trial.report(value, step)``, asks
  ``trial.should_prune()`` and stops the trials to prune. As a strategy of ``sweep(adapt=)``,
  the sweep moves the live trials into a smaller program when some stop, so a pruned trial
  costs nothing afterwards.
  """

  name = "optuna_pruner"
  # Any number of trials may be pruned at a chunk: power-of-two program sizes bound the
  # compilations at log2(trials_per_sweep) + 1 per study (reused by later rounds).
  compact_sizes = "pow2"

  def __init__(self, trials: Sequence[Any], metric: str, mode: str):
    self.trials = list(trials)
    self.metric, self.mode = metric, mode
    self.reported: list[set[int]] = [set() for _ in self.trials]
    self.pruned: dict[int, int] = {}  # config -> step at which it was pruned

  def start(self, *, n_configs, steps, eval_every, sync_every, hparams, categories=None):
    del steps, eval_every, sync_every, hparams, categories
    if n_configs != len(self.trials):  # pragma: no cover - optimize builds both
      raise ValueError(f"{_FN}: the sweep has {n_configs} configs for {len(self.trials)} trials")

  def report_values(self, c: int, curve: np.ndarray, steps: np.ndarray) -> None:
    """Reports ``curve`` (mean over seeds per evaluation) at ``steps``, once per step."""
    trial = self.trials[c]
    for step, v in zip(steps.tolist(), curve.tolist()):
      if step not in self.reported[c] and math.isfinite(v):
        trial.report(float(v), int(step))
        self.reported[c].add(int(step))

  def __call__(self, event):
    if self.metric not in event.history:
      raise ValueError(f"{_FN}: metric={self.metric!r} is not evaluated; available: "
                       f"{sorted(event.history)}")
    hist = np.asarray(event.history[self.metric], np.float64)  # (S, n, E)
    alive = np.asarray(event.alive).any(axis=0)
    stop = []
    for j, c in enumerate(event.configs):
      if not alive[j]:
        continue
      with np.errstate(invalid="ignore"):
        self.report_values(c, hist[:, j].mean(axis=0), np.asarray(event.eval_steps))
      if self.trials[c].should_prune():
        self.pruned[c] = int(event.step)
        stop.append(c)
    return Control(stop=stop) if stop else None

  def report(self) -> dict:
    return {"strategy": self.name, "metric": self.metric,
            "pruned": {int(c): s for c, s in self.pruned.items()}}


def _import_optuna():
  try:
    import optuna
  except ImportError as e:
    raise ImportError(
        "optaxlr.integrations.optuna needs Optuna, which is not installed: "
        "pip install optuna (or pip install 'optaxlr[optuna]')") from e
  return optuna


def to_optuna(dist: Any):
  """An Optuna distribution for an :mod:`optaxlr.search` distribution (Optuna's pass through).

  ``log_uniform(lo, hi)`` -> ``FloatDistribution(lo, hi, log=True)``, ``uniform`` ->
  ``FloatDistribution(lo, hi)``, ``int_uniform`` -> ``IntDistribution(lo, hi)``, ``choice`` ->
  ``CategoricalDistribution(values)``. ``one_minus_log_uniform`` has no Optuna counterpart: it is a
  ``ValueError`` (search over ``1 - m`` with a log ``FloatDistribution`` instead).

  Examples:
    >>> from optaxlr import search
    >>> to_optuna(search.log_uniform(1e-4, 1e-1))
    FloatDistribution(high=0.1, log=True, low=0.0001, step=None)
  """
  optuna = _import_optuna()
  d = optuna.distributions
  if isinstance(dist, (d.FloatDistribution, d.IntDistribution, d.CategoricalDistribution)):
    return dist
  if isinstance(dist, search._LogUniform):  # noqa: SLF001 -- the sibling module's classes
    return d.FloatDistribution(dist.lo, dist.hi, log=True)
  if isinstance(dist, search._Uniform):  # noqa: SLF001
    return d.FloatDistribution(dist.lo, dist.hi)
  if isinstance(dist, search._IntUniform):  # noqa: SLF001
    return d.IntDistribution(dist.lo, dist.hi)
  if isinstance(dist, search._Choice):  # noqa: SLF001
    return d.CategoricalDistribution(dist.values)
  if isinstance(dist, search._OneMinusLogUniform):  # noqa: SLF001
    raise ValueError(
        f"to_optuna: one_minus_log_uniform({dist.lo}, {dist.hi}) has no Optuna distribution; "
        f"search over 1 - m with FloatDistribution({1 - dist.hi:g}, {1 - dist.lo:g}, log=True) "
        "and read 1 - h[name] in the optimizer")
  raise TypeError(
      "to_optuna: expected an optuna.distributions.FloatDistribution, IntDistribution or "
      f"CategoricalDistribution, or an optaxlr.search distribution, got {dist!r}")


def _column_kind(name: str, dist: Any) -> str:
  """How a parameter's values become a column: "float", "int", "bool" or "str"."""
  import optuna

  if isinstance(dist, optuna.distributions.FloatDistribution):
    return "float"
  if isinstance(dist, optuna.distributions.IntDistribution):
    return "int"
  choices = dist.choices
  if all(isinstance(c, str) for c in choices):
    return "str"
  if all(isinstance(c, (bool, np.bool_)) for c in choices):
    return "bool"
  numbers = [isinstance(c, (int, float, np.integer, np.floating))
             and not isinstance(c, (bool, np.bool_)) for c in choices]
  if all(numbers):
    if any(isinstance(c, float) and not math.isfinite(c) for c in choices):
      raise ValueError(f"{_FN}: distributions[{name!r}] has a non-finite choice, got "
                       f"choices={choices!r}")
    return "int" if all(isinstance(c, (int, np.integer)) for c in choices) else "float"
  raise ValueError(
      f"{_FN}: distributions[{name!r}] must choose among strings only or numbers only (a "
      f"string axis is categorical), got choices={choices!r}")


def _check_distributions(distributions: Any) -> dict[str, Any]:
  if not isinstance(distributions, Mapping) or not distributions:
    raise ValueError(f"{_FN}: distributions must be a non-empty dict name -> distribution, got "
                     f"distributions={distributions!r}")
  out = {}
  for name, dist in distributions.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"{_FN}: distribution names must be non-empty strings, got {name!r}")
    if name in (search.SEED, search.FOLD):
      raise ValueError(f"{_FN}: {name!r} is a reserved axis name of a sweep (seeds are set with "
                       f"seeds=); rename distributions[{name!r}]")
    try:
      out[name] = to_optuna(dist)
    except (TypeError, ValueError) as e:
      raise type(e)(f"{_FN}: distributions[{name!r}]: {e}") from None
  return out


def _mode(study: Any, metric: str, mode: str | None) -> str:
  """The study's direction as ``"min"`` / ``"max"``, checked against ``mode`` and ``metric``."""
  import optuna

  directions = study.directions
  if len(directions) != 1:
    raise ValueError(f"{_FN}: the study has {len(directions)} objectives; one metric is told per "
                     "trial, so create the study with one direction")
  study_mode = "max" if directions[0] == optuna.study.StudyDirection.MAXIMIZE else "min"
  word = {"min": "minimize", "max": "maximize"}
  done = {"min": "minimized", "max": "maximized"}
  if mode is not None:
    if mode not in ("min", "max"):
      raise ValueError(f"{_FN}: mode must be 'min', 'max' or None (the study's direction), got "
                       f"mode={mode!r}")
    if mode != study_mode:
      raise ValueError(f"{_FN}: mode={mode!r} conflicts with the study's direction "
                       f"{word[study_mode]!r}; create the study with "
                       f"direction={word[mode]!r} or drop mode")
    return mode
  natural = _validate.natural_mode(metric)
  if natural is not None and natural != study_mode:
    raise ValueError(
        f"{_FN}: the study's direction is {word[study_mode]!r} but metric={metric!r} is to be "
        f"{done[natural]}; create the study with "
        f"direction={word[natural]!r}, or pass mode={study_mode!r} to {word[study_mode]} it anyway")
  return study_mode


def _check_sweep_kwargs(task: Any, metric: str, sweep_kwargs: Mapping[str, Any]) -> None:
  params = inspect.signature(sweep).parameters
  for name in sweep_kwargs:
    if name in _OWN:
      raise TypeError(f"{_FN}: {name} is set by optimize itself, not passed to the sweep")
    if name not in params:
      raise TypeError(f"{_FN}: unknown sweep argument {name!r}; optaxlr.sweep takes "
                      f"{sorted(set(params) - set(_OWN))}")
  if getattr(sweep_kwargs.get("execution"), "checkpoint_dir", None) is not None:
    raise ValueError(f"{_FN}: checkpoint_dir is not supported (each batch of trials is a new "
                     "sweep); keep the study in an Optuna storage (create_study(storage=...)) to "
                     "resume it")
  from optaxlr.tasks import Task

  if not isinstance(task, Task):
    raise TypeError(f"{_FN}: task must be an optaxlr.Task, got {type(task).__name__}")
  batch_size = sweep_kwargs.get("batch_size")
  if batch_size is not None:  # a host-fed task's loader sets it (the sweep checks it agrees)
    _validate.check_int(_FN, "batch_size", batch_size, 1, None if task.host_fed else task.n_train)
  split = metric.split("/")[0] if isinstance(metric, str) else None
  if split is None or "/" not in metric or split not in (*task.eval, "train"):
    raise ValueError(f"{_FN}: metric must be 'split/name' with split one of the task's "
                     f"evaluation splits {sorted(task.eval)}, got metric={metric!r}")


class _Space(search.Space):
  """A :func:`search.zip` space whose string axes list every choice of their distribution, in
  its order, whichever the batch drew: the optimizer's ``search.switch`` dict sees all of them,
  and every batch's program is the same one (the compiled program is reused)."""

  def __init__(self, columns: Mapping[str, np.ndarray], categories: Mapping[str, tuple[str, ...]]):
    base = search.zip(**columns)
    super().__init__(base.axes, base.fixed)
    self._declared = dict(categories)

  @property
  def categories(self) -> dict[str, tuple[str, ...]]:
    return dict(self._declared)


def _space(trials: Sequence[Any], dists: Mapping[str, Any], kinds: Mapping[str, str]) -> _Space:
  dtypes = {"float": np.float64, "int": np.int64, "bool": bool, "str": str}
  columns = {name: np.asarray([t.params[name] for t in trials], dtypes[kinds[name]])
             for name in dists}
  categories = {name: tuple(dists[name].choices) for name in dists if kinds[name] == "str"}
  return _Space(columns, categories)


def _tell_batch(study, trials, result: SweepResult, *, number: int, metric: str, mode: str,
                at: str, diverged_value: float | None, pruning: _Pruning) -> np.ndarray:
  """Tells each trial the mean over seeds of its config's value (``PRUNED`` for a trial the
  pruner stopped); returns the values told."""
  import optuna

  if metric not in result.metrics:
    raise ValueError(f"{_FN}: metric={metric!r} is not evaluated; available: "
                     f"{sorted(result.metrics)}")
  vals = np.asarray(result.summary(metric, at=at, mode=mode), np.float64)  # (S, C)
  curves = np.asarray(result.metrics[metric], np.float64)  # (S, C, E)
  ok = np.isfinite(vals).all(axis=0) & ~result.diverged.any(axis=0)
  told = np.full(len(trials), np.nan)
  for c, trial in enumerate(trials):
    trial.set_user_attr("optaxlr", {
        "sweep": number, "config": c,
        "seed_values": [float(v) if np.isfinite(v) else None for v in vals[:, c]],
        "stop_reason": [str(r) for r in result.stop_reason[:, c]],
    })
    if c in pruning.pruned:
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      continue
    with np.errstate(invalid="ignore"):
      pruning.report_values(c, curves[:, c].mean(axis=0), np.asarray(result.eval_steps))
    if ok[c]:
      told[c] = float(vals[:, c].mean())
      study.tell(trial, told[c])
    elif diverged_value is not None:
      told[c] = diverged_value
      study.tell(trial, diverged_value)
    else:
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
  return told


def optimize(
    study: Any,
    task: Any,
    optimizer: Callable[[Any], Any],
    distributions: Mapping[str, Any],
    *,
    n_trials: int,
    steps: int,
    trials_per_sweep: int = 16,
    metric: str = "val/loss",
    mode: Literal["min", "max"] | None = None,
    at: Literal["final", "best"] = "final",
    seeds: int | Sequence[int] = 1,
    diverged_value: float | None = None,
    prune: bool = True,
    **sweep_kwargs: Any,
) -> list[Batch]:
  """Runs ``n_trials`` trials of an Optuna study, ``trials_per_sweep`` at a time as one sweep.

  Each round asks the study for ``trials_per_sweep`` trials
  (``study.ask(distributions)``; the last round asks for what is left), trains them as one
  :func:`optaxlr.sweep` of a :func:`optaxlr.search.zip` space (config ``i`` = the ``i``-th
  trial's parameters) with ``seeds`` seeds, and tells each trial
  ``mean over seeds of result.summary(metric, at=at)``. The sampler proposes the next round
  knowing every value told so far; the trials of one round are drawn without each other's
  results (as with Optuna's own parallel workers). Rounds of the same size reuse the compiled
  program: make ``n_trials`` a multiple of ``trials_per_sweep`` to compile once.

  A trial whose run diverged on any seed (or has no finite value) is told
  ``TrialState.FAIL``, which Optuna's samplers leave out of their model; with
  ``diverged_value`` it is told that value instead (a finite, bad value: the sampler then learns
  to avoid the region). NaN is never told. Each trial also gets the user attribute
  ``"optaxlr"`` (``sweep``: the round, ``config``: its index in the sweep, ``seed_values``,
  ``stop_reason`` per seed) and the mean over seeds of ``metric`` at every evaluation as its
  intermediate values (``trial.report``). If the sweep raises, the round's trials are told
  ``FAIL`` before the exception propagates, so no trial is left running.

  **Pruning** (``prune=True``, unless the study's pruner is a ``NopPruner``): between chunks
  (every ``sync_every`` steps, by default every evaluation) each live trial reports its new
  intermediate values and asks ``trial.should_prune()``, as in Optuna's own training loop; a
  trial to prune is stopped (``Control(stop=...)``, stop reason ``"host"``) and told
  ``TrialState.PRUNED``, and the sweep moves the live trials into a smaller program so that it
  costs nothing afterwards (the pruner runs as the sweep's ``adapt=`` strategy, so ``adapt=``
  cannot be passed as well, a ``callback=`` of yours may observe but not steer, and every trial
  of a round must fit one program). The smaller programs hold a power of two of trials (8
  trials: 8, 4, 2, 1; a pruned trial's slot may compute masked until the live count halves),
  so a study compiles at most log2(trials_per_sweep) + 1 programs, cached for the next rounds;
  on a CPU and a short study that can still cost more than the pruned steps save
  (BENCHMARKS.md); ``prune=False`` trains every trial to the end. Optuna's pruners
  compare a trial with the trials already *finished*, so the first round (and, with
  ``MedianPruner(n_startup_trials=k)``, every round until ``k`` trials are complete) is never
  pruned. A trial the pruner stops at its last evaluation is pruned, as in Optuna's loop.

  Args:
    study: an ``optuna.Study`` with one objective. Its direction decides what is better.
    task: an :class:`optaxlr.Task`.
    optimizer: ``hparams -> optax.GradientTransformation`` (as for :func:`optaxlr.sweep`); a
      categorical parameter with string choices reaches it as an
      :class:`optaxlr.search.Categorical` over all the choices, in the distribution's order,
      for :func:`optaxlr.search.switch`.
    distributions: name -> ``optuna.distributions.FloatDistribution`` (``log=True`` for
      rates), ``IntDistribution`` or ``CategoricalDistribution`` (all strings: a categorical
      axis; all numbers: a numeric one), or an :mod:`optaxlr.search` distribution
      (``log_uniform``, ``uniform``, ``int_uniform``, ``choice``; see :func:`to_optuna`).
    n_trials: how many trials to run, an int ``>= 1``.
    steps: optimizer steps per run.
    trials_per_sweep: trials per sweep (per compiled program), an int ``>= 1``.
    metric: the evaluated metric told to the study, ``"split/name"``.
    mode: ``"min"`` or ``"max"``; default the study's direction. A ``mode`` that differs from
      the direction is a ``ValueError``, and so is a study minimizing an accuracy or maximizing
      a ``loss`` / ``error`` with no ``mode`` (Optuna's default direction is minimize): pass the
      study's own mode to confirm it.
    at: ``"final"`` (the metric at the last evaluation) or ``"best"`` (its best over the
      evaluations, by ``mode``).
    seeds: seeds per trial (an int or a list of ints); the value told is their mean.
    diverged_value: the value told for a diverged trial instead of ``FAIL`` (finite).
    prune: apply the study's pruner between chunks (above); ``False`` trains every trial to
      the end and only reports its intermediate values.
    **sweep_kwargs: passed to :func:`optaxlr.sweep` (``batch_size``, ``eval_every``,
      ``key``, ``early_stopping``, ``adapt``...); ``execution`` defaults to
      ``Execution(progress=False)``. Not ``Execution(checkpoint_dir=)``: keep the study in an Optuna storage to resume it.

  Returns:
    One :class:`Batch` per sweep: the :class:`optaxlr.SweepResult`, the trial numbers and the
    values told.

  Raises:
    ImportError: Optuna is not installed.
    TypeError, ValueError: a bad argument, before any trial is asked for.
  """
  optuna = _import_optuna()
  if not isinstance(study, optuna.Study):
    raise TypeError(f"{_FN}: study must be an optuna.Study (optuna.create_study()), got "
                    f"{type(study).__name__}")
  if not callable(optimizer):
    raise TypeError(f"{_FN}: optimizer must be a function hparams -> optax.GradientTransformation")
  n_trials = _validate.check_int(_FN, "n_trials", n_trials, 1)
  trials_per_sweep = _validate.check_int(_FN, "trials_per_sweep", trials_per_sweep, 1)
  _validate.check_int(_FN, "steps", steps, 1)
  seeds = _validate.seed_list(_FN, seeds)
  if not isinstance(prune, (bool, np.bool_)):
    raise TypeError(f"{_FN}: prune must be True or False, got prune={prune!r}")
  if prune and sweep_kwargs.get("adapt") is not None:
    raise ValueError(f"{_FN}: prune=True runs the study's pruner as the sweep's adapt= strategy; "
                     "pass prune=False to use adapt= instead")
  if at not in ("final", "best"):
    raise ValueError(f"{_FN}: at must be 'final' or 'best', got at={at!r}")
  if diverged_value is not None:
    ok = isinstance(diverged_value, (int, float, np.integer, np.floating)) and not isinstance(
        diverged_value, (bool, np.bool_)) and math.isfinite(diverged_value)
    if not ok:
      raise ValueError(f"{_FN}: diverged_value must be a finite number or None (tell FAIL), got "
                       f"diverged_value={diverged_value!r}")
    diverged_value = float(diverged_value)
  _check_sweep_kwargs(task, metric, sweep_kwargs)
  mode = _mode(study, metric, mode)
  dists = _check_distributions(distributions)
  kinds = {name: _column_kind(name, d) for name, d in dists.items()}
  sweep_kwargs = {**sweep_kwargs,
                  "execution": sweep_kwargs.get("execution") or Execution(progress=False)}
  prune = bool(prune) and not isinstance(study.pruner, optuna.pruners.NopPruner)

  batches = []
  done = 0
  while done < n_trials:
    n = min(trials_per_sweep, n_trials - done)
    trials = [study.ask(dists) for _ in range(n)]
    told = False
    pruning = _Pruning(trials, metric, mode)
    try:
      space = _space(trials, dists, kinds)
      kw = {**sweep_kwargs, "adapt": pruning} if prune else sweep_kwargs
      result = sweep(task, optimizer, space, steps=steps, seeds=seeds, **kw)
      values = _tell_batch(study, trials, result, number=len(batches), metric=metric, mode=mode,
                           at=at, diverged_value=diverged_value, pruning=pruning)
      told = True
    finally:
      if not told:  # the sweep (or telling) raised: no trial is left running
        for trial in trials:
          study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    batches.append(Batch(result, tuple(t.number for t in trials), values,
                         tuple(trials[c].number for c in sorted(pruning.pruned))))
    done += n
  return batches
