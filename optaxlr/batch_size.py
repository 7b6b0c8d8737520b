"""The critical batch size over training, by branching from snapshots of one run.

:func:`critical_batch_size` forks ``K`` batch sizes from each snapshot of a trunk run (a sweep
with ``Execution(keep_params_at=...)`` or ``keep_params=True``), each child with its learning
rate scaled from the trunk's by the linear or the square-root rule, trains every child for
the same number of examples (``examples / B`` steps), and reports per snapshot the largest
batch size whose loss stays within a tolerance of the smallest batch size's: the critical
batch size, beside the gradient noise scale ``B_simple`` measured at the same parameters
(McCandlish et al. 2018 predict that the two move together), and a batch-size schedule
(batch-size warmup) derived from the curve.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from optaxlr.engine import Execution
from optaxlr.engine import SweepResult
from optaxlr.engine import sweep
from optaxlr.noise import noise_scale as _noise_scale
from optaxlr.tasks import Task

__all__ = ["CriticalBatchSize", "critical_batch_size"]

_SCALINGS = ("linear", "sqrt")


@dataclasses.dataclass(frozen=True)
class CriticalBatchSize:
  """The result of :func:`critical_batch_size` (``P`` snapshots, ``K`` batch sizes).

  Attributes:
    steps: ``(P,)`` the trunk's steps the children were forked at.
    batch_sizes: ``(K,)`` the batch sizes tried, increasing.
    lrs: ``(K,)`` each batch size's learning rate (the rule applied to the trunk's).
    loss: ``(P, K)`` ``metric`` after ``examples`` training examples, the mean over seeds
      (NaN for a child that diverged).
    critical: ``(P,)`` the largest batch size whose loss is at most ``(1 + tolerance)`` times
      the smallest batch size's.
    noise_scale: ``(P,)`` ``B_simple`` at the snapshot's parameters (first seed), measured by
      :func:`optaxlr.noise_scale` (exact per-example gradients over the training set; the
      two-batch estimator for a model with state).
    schedule: ``((step, batch_size), ...)`` a batch-size warmup: from each snapshot's step
      on, its critical batch size, made non-decreasing (the running maximum) and starting at
      step 0 with the first snapshot's.
    examples: training examples per child.
    tolerance, metric, scaling: the settings used.
    results: the children's sweep per snapshot (``{step: SweepResult}``).
  """

  steps: np.ndarray
  batch_sizes: np.ndarray
  lrs: np.ndarray
  loss: np.ndarray
  critical: np.ndarray
  noise_scale: np.ndarray
  schedule: tuple[tuple[int, int], ...]
  examples: int
  tolerance: float
  metric: str
  scaling: str
  results: dict = dataclasses.field(repr=False, default_factory=dict)

  def plot(self, title: str = ""):
    """Two panels: the loss after equal examples against the batch size (one line per
    snapshot, the critical batch size marked), and the critical batch size beside the noise
    scale over training with the derived batch-size schedule. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(self.steps)))
    for i, (step, c) in enumerate(zip(self.steps, colors)):
      ax0.plot(self.batch_sizes, self.loss[i], "o-", color=c, label=f"from step {int(step)}")
      j = int(np.flatnonzero(self.batch_sizes == self.critical[i])[0]) if self.critical[i] else None
      if j is not None:
        ax0.plot(self.batch_sizes[j], self.loss[i, j], "*", color=c, markersize=16,
                 markeredgecolor="k")
    ax0.set_xscale("log", base=2)
    ax0.set_xlabel("batch size B (learning rate by the %s rule)" % self.scaling)
    ax0.set_ylabel(f"{self.metric} after {self.examples} examples")
    ax0.set_title(f"equal examples; * = critical B (within {self.tolerance:.0%} of the smallest B)",
                  fontsize=9)
    ax0.legend(fontsize=8)
    ax1.plot(self.steps, self.critical, "s-", label="critical batch size (branched)")
    ax1.plot(self.steps, self.noise_scale, "o--", label="noise scale B_simple")
    sched_x = [s for s, _ in self.schedule] + [int(self.steps[-1])]
    sched_y = [b for _, b in self.schedule] + [self.schedule[-1][1]] if self.schedule else []
    if self.schedule:
      ax1.step(sched_x, sched_y, where="post", color="gray", alpha=0.7,
               label="batch-size schedule (warmup)")
    ax1.set_yscale("log", base=2)
    ax1.set_xlabel("trunk step (snapshot)")
    ax1.set_ylabel("batch size (examples)")
    ax1.set_title("critical batch size and noise scale over training", fontsize=9)
    ax1.legend(fontsize=8)
    if title:
      fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

  def table(self) -> str:
    """A plain-text table: one row per snapshot."""
    head = ["step"] + [f"B={b}" for b in self.batch_sizes] + ["B_crit", "B_simple"]
    rows = [[str(int(s))] + [f"{v:.4g}" for v in self.loss[i]]
            + [str(int(self.critical[i])), f"{self.noise_scale[i]:.3g}"]
            for i, s in enumerate(self.steps)]
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows])


def _fail(message: str) -> None:
  raise ValueError(f"critical_batch_size: {message}")


def _int(name: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"critical_batch_size: {name} must be an int, got {name}={value!r}")
  return int(value)


def critical_batch_size(
    task: Task,
    optimizer: Any,
    trunk: SweepResult,
    *,
    batch_sizes: Sequence[int],
    examples: int,
    at: Sequence[int] | None = None,
    scaling: Literal["linear", "sqrt"] = "sqrt",
    lr: str = "lr",
    config: int = 0,
    tolerance: float = 0.1,
    metric: str = "val/loss",
    evals: int = 1,
    key: Any = 0,
    execution: Execution | None = None,
) -> CriticalBatchSize:
  """The critical batch size at snapshots of ``trunk``, by branching ``K`` batch sizes.

  From each snapshot (a step of ``at``), config ``config`` of ``trunk`` is forked
  (:meth:`SweepResult.fork`) into one child per batch size ``B`` of ``batch_sizes``, its
  learning rate (the hyperparameter ``lr``) scaled from the trunk's, ``lr * (B / B0)``
  (``scaling="linear"``, Goyal et al. 2017) or ``lr * sqrt(B / B0)`` (``"sqrt"``, Krizhevsky
  2014; the rule for Adam-like optimizers), ``B0`` the trunk's batch size; every other
  hyperparameter is the parent's. The children of one snapshot train in ONE sweep (one
  program; a ``batch_size`` axis, every seed of the trunk), child ``B`` for ``examples / B``
  steps: ``metric`` is read at its evaluation after that step (the sweep runs
  ``examples / min(B)`` steps and evaluates every ``gcd`` of the children's steps; children
  with larger batches compute on past their budget, masked by nothing: the vmapped program
  costs ``examples / min(B) * sum(B)`` example gradients per seed, about ``2 max(B) /
  min(B)`` times what the children need, the price of one program). The snapshots reuse the
  compiled program (the same shapes).

  The critical batch size of a snapshot is the largest ``B`` whose loss is at most
  ``(1 + tolerance)`` times the smallest ``B``'s (children that diverged are excluded): up to
  it, a larger batch costs few more examples for the same loss (perfect scaling in steps);
  beyond it, the examples are wasted (McCandlish et al. 2018, section 2.3: the critical
  batch size ``B_crit ~ B_noise``). Beside it, ``B_simple`` at the same parameters
  (:func:`optaxlr.noise_scale`), which should move the same way over training. The batch
  sizes must be sorted multiples: ``examples`` a multiple of each.

  Args:
    task: the trunk's task (training split in memory).
    optimizer: the trunk's ``hparams -> optax.GradientTransformation``.
    trunk: a :class:`SweepResult` with kept state: ``Execution(keep_params_at=(...))``
      snapshots and/or ``keep_params=True`` (its final step).
    batch_sizes: at least 2 distinct ints in ``[1, N]`` (``N`` the training set's size).
    examples: training examples per child, a multiple of every batch size.
    at: trunk steps to fork at, each a snapshot step of ``trunk`` (or its final step when it
      kept its final state); default every one of them.
    scaling: ``"linear"`` or ``"sqrt"``: the learning-rate rule.
    lr: the name of the learning-rate hyperparameter the rule scales (a hyperparameter of
      ``trunk``).
    config: the trunk's config to fork (index).
    tolerance: relative loss tolerance, ``> 0``.
    metric: the evaluated metric compared (``"val/loss"``; any ``split/name`` of the task
      where lower is better).
    evals: the number of the child's evaluations, ending at its budget, whose ``metric`` is
      averaged (``1``: the value after ``examples`` examples; more smooths a noisy metric;
      at most the largest batch's evaluations: ``examples / max(B)`` steps every ``gcd``).
    key: the children's PRNG key (minibatch order, model randomness).
    execution: how to run the children's sweeps (default ``Execution(progress=False)``;
      ``keep_params`` is set).

  Returns:
    A :class:`CriticalBatchSize`.

  Raises:
    ValueError: before any compute: a trunk without kept state, steps of ``at`` that are not
      snapshots of the trunk (outside the run or not kept), a batch size above the training
      set or below 1, fewer than two batch sizes, ``examples`` not a multiple of every batch
      size, an unknown ``scaling``, ``lr`` not a hyperparameter of the trunk, a bad
      ``config``, ``tolerance``, ``metric`` or ``evals``.
    TypeError: a task that is not an :class:`optaxlr.Task`, a trunk that is not a result.

  Examples:
    >>> import optax, optaxlr
    >>> from optaxlr import search
    >>> task = optaxlr.tasks.teacher_student(n_train=128, n_val=32, n_test=16, hidden=(8,))
    >>> opt = lambda h: optax.sgd(h["lr"])
    >>> trunk = optaxlr.sweep(task, opt, search.grid(lr=[0.05]), steps=10, batch_size=8,
    ...                       eval_every=5, execution=optaxlr.Execution(
    ...                           progress=False, keep_params_at=(5,), keep_params=True))
    >>> cbs = optaxlr.critical_batch_size(task, opt, trunk, batch_sizes=[8, 32], examples=64)
    >>> cbs.steps.tolist(), cbs.loss.shape, cbs.schedule[0][0]
    ([5, 10], (2, 2), 0)

  References:
    McCandlish, Kaplan, Amodei and the OpenAI Dota Team, `An Empirical Model of Large-Batch
    Training <https://arxiv.org/abs/1812.06162>`_, 2018. Goyal et al., `Accurate, Large
    Minibatch SGD <https://arxiv.org/abs/1706.02677>`_, 2017. Krizhevsky, `One weird trick
    for parallelizing convolutional neural networks <https://arxiv.org/abs/1404.5997>`_, 2014.
  """
  if not isinstance(task, Task):
    raise TypeError(f"critical_batch_size: task must be an optaxlr.Task, got "
                    f"{type(task).__name__}")
  if task.host_fed:
    _fail(f"task {task.name!r} is host-fed; the children draw batches of several sizes from "
          "the training set, which must be in memory")
  if not isinstance(trunk, SweepResult):
    raise TypeError(f"critical_batch_size: trunk must be a SweepResult (a sweep with "
                    f"Execution(keep_params_at=...)), got {type(trunk).__name__}")
  snaps = dict(trunk.snapshots or {})
  final = int(trunk.info.get("start_step", 0)) + int(trunk.info.get("steps", 0))
  if trunk.params is not None:
    snaps.setdefault(final, trunk)
  if not snaps:
    _fail("trunk holds no kept state to fork from; run it with Execution(keep_params_at=(...))"
          " (snapshots along the run) and/or Execution(keep_params=True) (its final state)")
  # snapshot keys count steps from the trunk's start; fork steps are the trunk's own steps
  start = int(trunk.info.get("start_step", 0))
  by_step = {(k if v is trunk else start + k): v for k, v in snaps.items()}
  if at is None:
    at_l = sorted(by_step)
  else:
    if isinstance(at, (str, bytes)) or not isinstance(at, Sequence) or not at:
      _fail(f"at must be a non-empty sequence of trunk steps, got at={at!r}")
    at_l = [_int("at[i]", s) for s in at]
    bad = [s for s in at_l if s not in by_step]
    if bad:
      _fail(f"at={at_l} holds step {bad[0]}, which is not a kept snapshot of the trunk (its "
            f"run covers steps {start}..{final}; kept: {sorted(by_step)}); keep it with "
            "Execution(keep_params_at=(...))")
    if sorted(set(at_l)) != at_l:
      _fail(f"at must be strictly increasing, got at={at_l}")
  if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
    _fail(f"batch_sizes must be a sequence of ints, got batch_sizes={batch_sizes!r}")
  bs = [_int("batch_sizes[i]", b) for b in batch_sizes]
  n_train = task.n_train
  for b in bs:
    if not 1 <= b <= n_train:
      _fail(f"batch_sizes holds {b}, outside [1, {n_train}] (task {task.name!r} has {n_train} "
            "training examples)")
  if len(set(bs)) < 2 or sorted(set(bs)) != bs:
    _fail(f"batch_sizes must hold at least 2 distinct sizes in increasing order, got "
          f"batch_sizes={bs}")
  examples = _int("examples", examples)
  off = [b for b in bs if examples < b or examples % b]
  if off:
    _fail(f"examples must be a positive multiple of every batch size (each child trains "
          f"examples / B steps), got examples={examples} with batch size {off[0]}")
  if scaling not in _SCALINGS:
    _fail(f"scaling must be one of {_SCALINGS}, got scaling={scaling!r}")
  hp = trunk.hparams
  if lr not in hp:
    _fail(f"lr={lr!r} is not a hyperparameter of the trunk (it has {sorted(hp)}); name the "
          "learning rate the rule scales")
  config = _int("config", config)
  if not 0 <= config < trunk.num_configs:
    _fail(f"config must be in [0, {trunk.num_configs}), got config={config}")
  if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
      math.isfinite(tolerance) and tolerance > 0):
    _fail(f"tolerance must be a finite number > 0, got tolerance={tolerance!r}")
  names = {f"{s}/{m}" for s in task.eval for m in ("loss", "accuracy", "error")}
  if not isinstance(metric, str) or metric.split("/")[0] not in task.eval:
    _fail(f"metric must be 'split/name' of an evaluated split ({sorted(task.eval)}), got "
          f"metric={metric!r} (e.g. {sorted(names)[:3]})")
  evals = _int("evals", evals)
  b0 = int(trunk.info.get("batch_size", 0))
  if b0 < 1:
    _fail("trunk.info holds no batch_size (a trunk with a 'batch_size' axis is not supported:"
          " fork one batch size)")
  ex = Execution(progress=False) if execution is None else execution
  ex = dataclasses.replace(ex, keep_params=False, keep_params_at=())
  steps_b = [examples // b for b in bs]
  eval_every = math.gcd(*steps_b)
  if evals < 1 or evals > min(steps_b) // eval_every:
    _fail(f"evals must be in [1, {min(steps_b) // eval_every}] (evaluations of the largest "
          f"batch's {min(steps_b)} steps, every {eval_every}), got evals={evals}")
  base = float(hp[lr][config])
  ratio = np.asarray(bs, np.float64) / b0
  lrs = base * (ratio if scaling == "linear" else np.sqrt(ratio))
  others = {k: np.full(len(bs), v[config]) for k, v in hp.items() if k != lr}

  from optaxlr import search

  space = search.zip(batch_size=np.asarray(bs), **{lr: lrs}, **others)
  loss = np.full((len(at_l), len(bs)), np.nan)
  b_simple = np.full(len(at_l), np.nan)
  results = {}
  for i, step in enumerate(at_l):
    parent = by_step[step]
    res = sweep(task, optimizer, space, steps=max(steps_b), eval_every=eval_every, key=key,
                seeds=np.asarray(parent.seeds).tolist(),
                start_from=parent.fork([config] * len(bs)), execution=ex)
    results[step] = res
    if metric not in res.metrics:
      _fail(f"metric={metric!r} is not an evaluated metric; available: {sorted(res.metrics)}")
    m = res.metrics[metric]  # (S, K, E)
    for j, s in enumerate(steps_b):
      e = s // eval_every  # evaluations 1..e cover the child's budget
      loss[i, j] = np.mean(m[:, j, e - evals:e])
    stateless = not any(np.size(x) for x in _leaves(parent.model_state))
    ns = _noise_scale(task, parent.params_of(config),
                      model_state=None if stateless else parent.model_state_of(config),
                      estimator="per_example" if stateless else "two_batch",
                      hparams={k: v[config] for k, v in hp.items()})
    b_simple[i] = ns.b_simple
  critical = np.array([_critical(row, bs, tolerance) for row in loss])
  return CriticalBatchSize(
      steps=np.asarray(at_l), batch_sizes=np.asarray(bs), lrs=lrs, loss=loss,
      critical=critical, noise_scale=b_simple, schedule=_schedule(at_l, critical),
      examples=examples, tolerance=float(tolerance), metric=metric, scaling=scaling,
      results=results)


def _leaves(tree: Any) -> list:
  import jax

  return jax.tree.leaves(tree)


def _critical(row: np.ndarray, bs: Sequence[int], tolerance: float) -> int:
  """The largest batch size whose loss is within ``(1 + tolerance)`` of the smallest's (the
  smallest batch size that did not diverge is the reference; 0 when every child diverged)."""
  ok = np.flatnonzero(np.isfinite(row))
  if ok.size == 0:
    return 0
  ref = row[ok[0]]
  within = [j for j in ok if row[j] <= ref + tolerance * abs(ref)]
  return int(bs[max(within)])


def _schedule(steps: Sequence[int], critical: np.ndarray) -> tuple[tuple[int, int], ...]:
  """Piecewise-constant batch-size warmup: non-decreasing, from step 0."""
  out: list[tuple[int, int]] = []
  best = 0
  for i, (s, c) in enumerate(zip(steps, critical.tolist())):
    best = max(best, int(c))
    if best and (not out or best != out[-1][1]):
      out.append((0 if not out else int(s), best))
  return tuple(out)
