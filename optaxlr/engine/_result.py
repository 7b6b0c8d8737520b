"""``SweepResult``: a sweep's numbers, labelled by hyperparameter values."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from optaxlr import _validate

__all__ = ["SweepResult", "load", "GridEdgeWarning", "grid_edges"]


class GridEdgeWarning(UserWarning):
  """:meth:`SweepResult.best` found the best config on the edge of the grid."""


def grid_edges(space: Any, hparams: Mapping[str, Any]) -> list[str]:
  """Where ``hparams`` (a best config) sits on the edge of ``space``'s grid:
  ``["lr=max", "wd=min", ...]``.

  Flagged: a numeric grid axis with at least 3 values whose best value is the largest value
  tried (``"=max"``) or the smallest (``"=min"``), unless that smallest value is 0 (the floor
  of a weight decay or a momentum: there is nothing below it to try). With 2 values every
  value is an edge, so such axes are not flagged; zipped, random and categorical axes neither.
  The one rule of :meth:`SweepResult.best` and the ``optaxlr sweep`` command.

  Examples:
    >>> from optaxlr import search
    >>> space = search.grid(lr=[1e-3, 1e-2, 1e-1], wd=[0.0, 1e-3, 1e-2])
    >>> grid_edges(space, {"lr": 0.1, "wd": 0.0}), grid_edges(space, {"lr": 1e-3, "wd": 1e-3})
    (['lr=max'], ['lr=min'])
  """
  out = []
  for axis in space.axes:
    for name, values in axis.values.items():
      vals = np.unique(np.asarray(values))
      if (axis.dim != name or vals.size < 3 or name not in hparams
          or vals.dtype.kind not in "iuf"):
        continue
      if hparams[name] == vals.max():
        out.append(f"{name}=max")
      elif hparams[name] == vals.min() and vals.min() != 0:
        out.append(f"{name}=min")
  return out


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The settings a sweep ran with (what other modules read from ``info``), typed."""

  task: str
  steps: int
  batch_size: int | None
  eval_every: int | None
  sync_every: int | None
  log_every: int
  start_step: int
  vectorize: int | None
  eval_batch_size: int | None
  compute_dtype: str | None
  host_fed: bool
  devices: int | None
  group_size: int | None

  @classmethod
  def from_info(cls, info: Mapping[str, Any]) -> "RunSettings":
    def opt_int(name):
      v = info.get(name)
      return None if v is None else int(v)
    return cls(task=str(info.get("task", "")), steps=int(info.get("steps", 0)),
               batch_size=opt_int("batch_size"), eval_every=opt_int("eval_every"),
               sync_every=opt_int("sync_every"), log_every=int(info.get("log_every", 1)),
               start_step=int(info.get("start_step", 0)), vectorize=opt_int("vectorize"),
               eval_batch_size=opt_int("eval_batch_size"), compute_dtype=info.get("compute_dtype"),
               host_fed=bool(info.get("host_fed", False)), devices=opt_int("devices"),
               group_size=opt_int("group_size"))


@dataclasses.dataclass(frozen=True)
class Timings:
  """Seconds spent compiling (initialisation and chunks, 0.0 on a cache hit) and running."""

  compile_s: float
  run_s: float
  total_s: float


@dataclasses.dataclass
class SweepResult:
  """The numbers of a sweep, with leading axes ``(seed, config)``.

  Attributes:
    space: the :class:`optaxlr.search.Space` of the configs (without its seed axis).
    seeds: the seed values, shape ``(S,)``.
    batch_loss: the training minibatch loss at every step, ``(S, C, steps)``; NaN after a run
      diverged or stopped.
    metrics: ``"split/name" -> (S, C, E)`` evaluations at ``eval_steps``; NaN from a run's
      divergence on.
    eval_steps: the step after which each evaluation was taken, ``(E,)``.
    diverged_at: the step at which a run's loss turned non-finite (or, found at an
      evaluation, its parameters), -1 if never (``stopped_at`` of the runs whose
      ``stop_reason`` is ``"diverged"``).
    stopped_at: the number of updates a run had received when it stopped, for any reason
      (divergence, early stopping, a plateau that can reduce no further, the host), -1 if it
      ran every step.
    params: the final parameters (leaves ``(S, C, ...)``) when the sweep kept them
      (``keep_params=True``); ``opt_state`` and ``model_state`` (BatchNorm statistics) the
      same. :meth:`params_of` and :meth:`state_of` take one run out.
    info: settings and timings (``compile_s``, ``run_s``...); :attr:`settings` and
      :attr:`timings` are its typed views.
    records: the per-point values of the sweep's rules (``sweep(rules=...)``), name ->
      ``(S, C, points)``: ``"step/<rule index>/<name>"`` at every step,
      ``"eval/<rule index>/<name>"`` at every evaluation; ``None`` without such rules.
    stop_reason: ``(S, C)`` why each run ended, one of
      :data:`optaxlr.engine.STOP_REASONS`: ``"completed"``, ``"diverged"``,
      ``"early_stopping"``, ``"range_test"``, ``"plateau_done"``, ``"host"``, ``"not_run"``.

    snapshots: with ``Execution(keep_params_at=(k1, k2, ...))``, ``{k: SweepResult}``: the
      first ``k`` steps of every run with the state kept after them (what a sweep of ``k``
      steps with ``keep_params=True`` returns), to :meth:`fork` children from; else ``None``.
      Held in memory only: :meth:`save` does not write them.

  ``batch_loss`` holds one value per step, or with ``sweep(log_every=k)`` the mean over each
  window of ``k`` steps (``info["log_every"]``).
  """

  space: Any
  seeds: np.ndarray
  batch_loss: np.ndarray
  metrics: dict[str, np.ndarray]
  eval_steps: np.ndarray
  diverged_at: np.ndarray
  stopped_at: np.ndarray
  params: Any = None
  info: dict = dataclasses.field(default_factory=dict)
  stop_reason: Any = None
  opt_state: Any = None
  model_state: Any = None
  records: dict | None = None
  snapshots: dict | None = None

  def __post_init__(self):
    if self.stop_reason is None:  # results of old files: what the two step arrays say
      d = np.asarray(self.diverged_at)
      st = np.asarray(self.stopped_at)
      self.stop_reason = np.where(d >= 0, "diverged", np.where(st >= 0, "early_stopping", "completed"))
    self.stop_reason = np.asarray(self.stop_reason).astype(str)

  # -- shape -------------------------------------------------------------------------------

  @property
  def hparams(self) -> dict[str, np.ndarray]:
    """Hyperparameter name -> its value in each config, shape ``(C,)``."""
    if self.space is None:  # a sweep of one config without axes (sweep(space=None))
      return {}
    return {k: np.asarray(v) for k, v in self.space.columns.items()}

  @property
  def num_configs(self) -> int:
    return int(self.diverged_at.shape[1])

  @property
  def diverged(self) -> np.ndarray:
    """``(S, C)`` bool: the run diverged."""
    return self.diverged_at >= 0

  @property
  def settings(self) -> "RunSettings":
    """How the sweep ran (a typed view of :attr:`info`)."""
    return RunSettings.from_info(self.info)

  @property
  def timings(self) -> "Timings":
    """Compile time apart from run time (a typed view of :attr:`info`)."""
    i = self.info
    return Timings(compile_s=float(i.get("compile_s", float("nan"))),
                   run_s=float(i.get("run_s", float("nan"))),
                   total_s=float(i.get("total_s", float("nan"))))

  def config(self, i: int) -> dict[str, Any]:
    """The hyperparameters of config ``i`` as Python values."""
    return {k: v[i].item() if np.ndim(v[i]) == 0 else v[i] for k, v in self.hparams.items()}

  def index_of(self, config: int | Mapping[str, Any]) -> int:
    """The index of ``config``: an int, or a dict of hyperparameter values that matches
    exactly one config (``{"lr": 0.01, "wd": 1e-4}``)."""
    n = self.num_configs
    if isinstance(config, (int, np.integer)) and not isinstance(config, (bool, np.bool_)):
      if not 0 <= int(config) < n:
        raise ValueError(f"SweepResult: config must be in [0, {n}), got config={config!r}")
      return int(config)
    if not isinstance(config, Mapping):
      raise TypeError(f"SweepResult: config must be an index or a dict of hyperparameter values,"
                      f" got {type(config).__name__}")
    hp = self.hparams
    unknown = sorted(set(config) - set(hp))
    if unknown:
      raise ValueError(f"SweepResult: no hyperparameter {unknown[0]!r}; have {sorted(hp)}")
    match = np.ones(n, bool)
    for k, v in config.items():
      col = hp[k]
      match &= (col == v) if col.dtype.kind in "OUSb" else np.isclose(col.astype(float), float(v),
                                                                      rtol=1e-6, atol=0)
    hits = np.flatnonzero(match)
    if hits.size != 1:
      raise ValueError(f"SweepResult: {dict(config)} matches {hits.size} configs "
                       f"({hits[:5].tolist()}); give more hyperparameters or an index")
    return int(hits[0])

  def _seed_index(self, seed: int) -> int:
    seeds = np.asarray(self.seeds).tolist()
    if seed not in seeds:
      raise ValueError(f"SweepResult: seed must be one of {seeds}, got seed={seed!r}")
    return seeds.index(seed)

  def _take(self, tree: Any, what: str, config, seed) -> Any:
    if self.params is None:
      if self.info.get("state_file"):
        raise ValueError(f"SweepResult.{what}: the file's runs' state was not read; load it with "
                         "optaxlr.load(path, task=task, optimizer=optimizer)")
      raise ValueError(f"SweepResult.{what}: the sweep kept no state; run it with "
                       "Execution(keep_params=True)")
    import jax

    i, s = self.index_of(config), self._seed_index(seed)
    return jax.tree.map(lambda x: np.asarray(x)[s, i], tree)

  def params_of(self, config: int | Mapping[str, Any], seed: int | None = None) -> Any:
    """The final parameters of one run (``config``: index or hyperparameter values; ``seed``:
    a seed value, default the first), with the task's structure (an ``nnx.State`` for a flax
    task): ``task.to_model(res.params_of(...), res.model_state_of(...))`` rebuilds the model."""
    seed = int(np.asarray(self.seeds)[0]) if seed is None else seed
    return self._take(self.params, "params_of", config, seed)

  def opt_state_of(self, config: int | Mapping[str, Any], seed: int | None = None) -> Any:
    """The final optimizer state of one run (the optax state of ``optimizer(hparams)``), to
    continue it with the same transformation (``nnx.Optimizer`` or an optax loop)."""
    seed = int(np.asarray(self.seeds)[0]) if seed is None else seed
    return self._take(self.opt_state, "opt_state_of", config, seed)

  def model_state_of(self, config: int | Mapping[str, Any], seed: int | None = None) -> Any:
    """The final model state of one run (BatchNorm statistics; ``()`` for a stateless task)."""
    seed = int(np.asarray(self.seeds)[0]) if seed is None else seed
    return self._take(self.model_state, "model_state_of", config, seed)

  def fork(self, parents: Any) -> "SweepResult":
    """Children of this result's runs, to continue with ``sweep(start_from=...)``.

    Config ``j`` of the returned result holds the kept state (parameters, optimizer and model
    state, every seed) of this result's config ``parents[j]``; a parent may appear any number
    of times. ``optaxlr.sweep(task, optimizer, child_space, steps=n,
    start_from=result.fork(parents))`` then trains every child in one compiled program, each
    with its own settings (its ``child_space`` row: another schedule tail, batch size,
    weight decay...), its steps numbered on from the parent's (schedules, minibatch order and
    model keys continue). Children of one parent start from the same state exactly, and a
    child equals the run trained without the fork (bitwise in float32 on the CPU for a run
    that keeps its shapes, measured with another number of configs vmapped too; within
    rounding where the compiled step differs: another batch size, or chunks of one step
    against longer ones, whose scan XLA may fuse differently by an ulp). Fork from a snapshot (``Execution(keep_params_at=)``,
    :attr:`snapshots`) to branch in the middle of a run.

    Args:
      parents: a sequence of config indices of this result (ints in ``[0, num_configs)``).

    Returns:
      A :class:`SweepResult` of ``len(parents)`` configs (its hyperparameters those of the
      parents, ``info["forked_from"]`` the indices) holding the parents' state.

    Raises:
      ValueError: this result kept no state, or an index is out of range or not an int.
    """
    fn = "SweepResult.fork"
    if self.params is None:
      raise ValueError(f"{fn}: this result holds no kept state; run the parent sweep with "
                       "Execution(keep_params=True) or fork one of its snapshots "
                       "(Execution(keep_params_at=...), result.snapshots[step])")
    if isinstance(parents, (str, bytes, Mapping)) or not hasattr(parents, "__len__"):
      raise ValueError(f"{fn}: parents must be a sequence of config indices, got parents={parents!r}")
    n = self.num_configs
    idx = []
    for j, p in enumerate(parents):
      if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)) or not 0 <= p < n:
        raise ValueError(f"{fn}: parents must hold config indices in [0, {n}), got "
                         f"parents[{j}]={p!r}")
      idx.append(int(p))
    if not idx:
      raise ValueError(f"{fn}: parents must name at least one config, got parents={parents!r}")
    import jax

    from optaxlr import search

    sel = np.asarray(idx)
    take = lambda tree: jax.tree.map(lambda x: np.asarray(x)[:, sel], tree)  # noqa: E731
    hp = self.hparams
    space = search.zip(**{k: v[sel] for k, v in hp.items()}) if hp else None
    return SweepResult(
        space=space, seeds=np.asarray(self.seeds), batch_loss=self.batch_loss[:, sel],
        metrics={k: v[:, sel] for k, v in self.metrics.items()}, eval_steps=self.eval_steps,
        diverged_at=self.diverged_at[:, sel], stopped_at=self.stopped_at[:, sel],
        stop_reason=self.stop_reason[:, sel], params=take(self.params),
        opt_state=take(self.opt_state), model_state=take(self.model_state),
        records=None if self.records is None else {k: v[:, sel] for k, v in self.records.items()},
        info={**self.info, "forked_from": idx})

  def fold_summary(self, metric: str, *, at: str = "final", mode: str = "min") -> dict[str, Any]:
    """Mean and spread over the folds of a k-fold sweep (``search.folds(k)``).

    Each run's value (final, or best with ``at="best"``) is averaged over seeds, then its mean
    and standard deviation (``ddof=0``) taken over the folds of each config of the other axes.

    Returns:
      ``{"hparams": {name: (C',)}, "mean": (C',), "std": (C',), "per_fold": (C', k)}`` over the
      ``C'`` configs without the fold axis, in the order of first appearance.
    """
    hp = self.hparams
    if "fold" not in hp:
      raise ValueError("SweepResult.fold_summary: the sweep has no 'fold' axis (search.folds(k))")
    vals = self.summary(metric, at=at, mode=mode).mean(axis=0)  # (C,)
    others = [k for k in hp if k != "fold"]
    keys = [tuple(hp[k][i].item() for k in others) for i in range(self.num_configs)]
    order = list(dict.fromkeys(keys))
    folds = sorted(set(hp["fold"].tolist()))
    per = np.full((len(order), len(folds)), np.nan)
    for i, key in enumerate(keys):
      per[order.index(key), folds.index(int(hp["fold"][i]))] = vals[i]
    return {
        "hparams": {k: np.asarray([key[j] for key in order]) for j, k in enumerate(others)},
        "mean": per.mean(axis=1), "std": per.std(axis=1), "per_fold": per,
    }

  def _metric(self, metric: str) -> np.ndarray:
    if metric == "batch_loss":
      return self.batch_loss
    if metric not in self.metrics:
      raise KeyError(f"SweepResult: no metric {metric!r}; available: {sorted(self.metrics)}")
    return self.metrics[metric]

  def final(self, metric: str) -> np.ndarray:
    """``(S, C)``: the metric at the last evaluation (NaN for diverged runs)."""
    return self._metric(metric)[..., -1]

  def summary(self, metric: str, *, at: str = "final", mode: str = "min") -> np.ndarray:
    """``(S, C)``: the metric at the last evaluation (``at="final"``) or its best over the
    evaluations (``at="best"``, min or max by ``mode``)."""
    if at not in ("final", "best"):
      raise ValueError(f"SweepResult.summary: at must be 'final' or 'best', got {at!r}")
    if mode not in ("min", "max"):
      raise ValueError(f"SweepResult.summary: mode must be 'min' or 'max', got {mode!r}")
    vals = self._metric(metric)
    if at == "final":
      return vals[..., -1]
    with np.errstate(all="ignore"):
      red = np.fmin.reduce if mode == "min" else np.fmax.reduce
      out = red(vals, axis=-1)
    return np.where(self.diverged, np.nan, out)

  def best(self, metric: str, *, mode: str | None = None, at: str = "final",
           warn: bool = True) -> dict[str, Any]:
    """The config with the best mean (over seeds) of ``metric``.

    ``mode`` defaults to "max" for metrics named like accuracy, "min" otherwise. A config with a
    diverged seed is never chosen. When the best value of a grid axis (3 values or more) is
    the largest or the smallest one tried (not 0), the optimum may lie beyond the grid: a
    :class:`GridEdgeWarning` says which (:func:`grid_edges`, the rule ``optaxlr sweep``
    prints), unless ``warn=False``.

    Returns:
      ``{"index": i, "hparams": {...}, metric: mean, metric + "_std": std over seeds}``.
    """
    if mode is None:
      mode = _validate.default_mode(metric)
    vals = self.summary(metric, at=at, mode=mode)
    mean = vals.mean(axis=0)  # NaN if any seed diverged
    if np.all(np.isnan(mean)):
      raise ValueError(f"SweepResult.best: every config diverged or has no {metric!r}")
    i = int(np.nanargmin(mean) if mode == "min" else np.nanargmax(mean))
    edges = grid_edges(self.space, self.config(i))
    if warn and edges:
      shown = ", ".join(edges)
      warnings.warn(f"SweepResult.best: the best config by {metric!r} is on the edge of the grid "
                    f"({shown}: the best value is the largest or smallest tried); the optimum "
                    "may lie beyond it: extend the grid that way (warn=False to silence)",
                    GridEdgeWarning, stacklevel=2)
    return {
        "index": i,
        "hparams": self.config(i),
        metric: float(mean[i]),
        f"{metric}_std": float(vals[:, i].std()),
    }

  # -- honest winners (optaxlr.stats) ------------------------------------------------------

  def winner(self, metric: str = "val/error", *, confidence: float = 0.95,
             report: str | None = "test", mode: str | None = None, at: str = "final"):
    """The best config on ``metric`` (mean over seeds at the last evaluation) with how sure the
    seeds make it: its t-interval, the paired gap to the runner-up, ``p_best``, its value on
    the ``report`` split, grid-edge flags, sensitivity and the configs indistinguishable from
    it. See :func:`optaxlr.stats.winner` (the statistics and their assumptions).

    Returns:
      An :class:`optaxlr.stats.Winner`.
    """
    from optaxlr import stats

    return stats.winner(self, metric, confidence=confidence, report=report, mode=mode, at=at)

  def compare(self, a: int | Mapping[str, Any], b: int | Mapping[str, Any],
              metric: str = "val/error", *, other: SweepResult | None = None,
              confidence: float = 0.95, at: str = "final"):
    """The paired difference ``a - b`` of ``metric`` over seeds with its t-interval: two
    configs of this result (indices or hyperparameter dicts), or ``b`` a config of ``other``,
    a result of the same seeds. See :func:`optaxlr.stats.compare`.

    Returns:
      An :class:`optaxlr.stats.Difference`.
    """
    from optaxlr import stats

    return stats.compare(self, a, b, metric, other=other, confidence=confidence, at=at)

  def rescore(self, task: Any, optimizer: Any, *, metric: str = "val/error", top: int = 3,
              seeds: int | list[int] | None = None, confidence: float = 0.95, **sweep_kwargs):
    """Trains the ``top`` configs again on fresh seeds in one sweep: the selected winner's
    value there is free of the winner's curse. See :func:`optaxlr.stats.rescore` (which
    settings carry over from ``info`` and which must be passed again).

    Returns:
      An :class:`optaxlr.stats.Rescored`.
    """
    from optaxlr import stats

    return stats.rescore(self, task, optimizer, metric=metric, top=top, seeds=seeds,
                         confidence=confidence, **sweep_kwargs)

  # -- conversions -------------------------------------------------------------------------

  def to_pandas(self, *, at: str = "final"):
    """A long table: one row per (config, seed) with the hyperparameters, the final (or best)
    value of every metric, the divergence and stopping steps."""
    import pandas as pd

    rows = []
    hp = self.hparams
    summaries = {
        m: self.summary(m, at=at, mode=_validate.default_mode(m))
        for m in self.metrics
    }
    for c in range(self.num_configs):
      for s_i, seed in enumerate(self.seeds):
        row = {"config": c, "seed": int(seed)}
        row.update({k: (v[c].item() if np.ndim(v[c]) == 0 else v[c]) for k, v in hp.items()})
        row.update({m: float(v[s_i, c]) for m, v in summaries.items()})
        row["diverged_at"] = int(self.diverged_at[s_i, c])
        row["stopped_at"] = int(self.stopped_at[s_i, c])
        row["stop_reason"] = str(self.stop_reason[s_i, c])
        rows.append(row)
    return pd.DataFrame(rows)

  def to_xarray(self):
    """An ``xarray.Dataset`` with dims ``(seed, *space.dims, eval_step)``.

    The config axis is unfolded into the space's axes, labelled by hyperparameter values, so a
    grid gives ``ds["val/loss"].sel(lr=1e-3)``; a zipped or random axis keeps one dimension
    with its hyperparameters as coordinates along it.
    """
    import xarray as xr

    dims, shape = tuple(self.space.dims), tuple(self.space.shape)

    def unfold(a, tail):
      return (("seed", *dims, *tail), a.reshape(a.shape[:1] + shape + a.shape[2:]))

    data_vars = {m: unfold(v, ("eval_step",)) for m, v in self.metrics.items()}
    data_vars["batch_loss"] = unfold(self.batch_loss, ("step",))
    data_vars["diverged_at"] = unfold(self.diverged_at, ())
    data_vars["stopped_at"] = unfold(self.stopped_at, ())
    data_vars["stop_reason"] = unfold(self.stop_reason, ())
    coords = {
        "seed": self.seeds,
        "eval_step": self.eval_steps,
        "step": np.arange(self.batch_loss.shape[-1]) * int(self.info.get("log_every", 1)),
    }
    for name, (dim, values) in self.space.coords.items():
      coords[name] = (dim, np.asarray(values)) if dim != () else np.asarray(values)
    return xr.Dataset(data_vars, coords=coords, attrs={k: str(v) for k, v in self.info.items()})

  # -- persistence -------------------------------------------------------------------------

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes the result to ``path`` (a ``.npz`` file with a JSON header); see :func:`load`.

    A result that kept its runs' state (``keep_params=True``) also writes the parameters,
    optimizer states and model states with orbax-checkpoint into the folder ``<path>.state``.

    The save is one atomic unit, also over an existing result: the state goes to a new
    sub-folder of ``<path>.state`` under a name no file refers to yet, then the ``.npz`` is
    written to a temporary file and renamed over ``path`` (the one commit point), and only then
    are the previous state and leftovers removed. A process killed at any instant leaves a
    ``path`` that loads the old result or the new one, never the numbers of one with the state
    of the other. The numbers' fingerprint (a SHA-256 of every array) is written into the header
    and into the state, and :func:`load` checks both, so a state folder copied from another
    result is refused.

    Args:
      path: the file to write; ``.npz`` is appended when it has another suffix.

    Returns:
      The path written.

    Raises:
      ValueError: ``path`` is an existing folder, or cannot be written (the ``OSError`` is
        chained); nothing is left behind.

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> import optaxlr
      >>> from optaxlr import search
      >>> res = optaxlr.SweepResult(
      ...     space=search.grid(lr=[0.1, 0.01]), seeds=np.array([0]),
      ...     batch_loss=np.ones((1, 2, 3)), metrics={}, eval_steps=np.array([], np.int64),
      ...     diverged_at=np.full((1, 2), -1), stopped_at=np.full((1, 2), -1))
      >>> folder = tempfile.mkdtemp()
      >>> res.save(os.path.join(folder, "r")).name
      'r.npz'
      >>> res.save(folder)
      Traceback (most recent call last):
      ...
      ValueError: save: path='...' is an existing folder; give a file name such as '.../result.npz'
    """
    if self.snapshots:
      warnings.warn("SweepResult.save: the result's snapshots (Execution(keep_params_at=)) are "
                    "held in memory only and are not written; save each one "
                    "(result.snapshots[step].save(...)) to keep it", UserWarning, stacklevel=2)
    path = pathlib.Path(path)
    if path.is_dir():
      raise ValueError(f"save: path={str(path)!r} is an existing folder; give a file name such as"
                       f" {str(path / 'result.npz')!r}")
    if path.suffix != ".npz":
      path = path.with_suffix(".npz")
    if path.is_dir():
      raise ValueError(f"save: path={str(path)!r} is an existing folder; give a file name such as"
                       f" {str(path.parent / 'result.npz')!r}")
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"no write permission in {str(path.parent)!r}")
    except OSError as e:
      raise ValueError(f"save: path={str(path)!r} cannot be written ({type(e).__name__}: {e})") from e
    arrays = {
        "seeds": self.seeds,
        "batch_loss": self.batch_loss,
        "eval_steps": self.eval_steps,
        "diverged_at": self.diverged_at,
        "stopped_at": self.stopped_at,
        "stop_reason": np.asarray(self.stop_reason).astype("U16"),
    }
    for i, axis in enumerate(self.space.axes):
      arrays.update({f"axis{i}:{k}": np.asarray(v) for k, v in axis.values.items()})
    arrays.update({f"metric:{k}": v for k, v in self.metrics.items()})
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    fingerprint = _numbers_id(arrays)
    state_info = None
    try:
      if self.params is not None:
        state_info = _save_state(path, (self.params, self.opt_state, self.model_state), fingerprint)
      header = {
          "format": _FORMAT,
          "axes": [
              {"dim": a.dim, "names": list(a.names)} for a in self.space.axes
          ],
          "fixed": self.space.fixed,
          "metrics": list(self.metrics),
          # state_file is what load() found next to the file it read, not part of the result
          "info": {k: v for k, v in self.info.items() if k != "state_file"},
          "fingerprint": fingerprint,
          **({"state": state_info} if state_info else {}),
      }
      arrays["header"] = np.frombuffer(json.dumps(header, default=str).encode(), np.uint8)
      buf = io.BytesIO()
      np.savez_compressed(buf, **arrays)
      _write_file(path, buf.getvalue())  # the commit point
    except OSError as e:
      if state_info is not None:
        _remove(_state_dir(path) / state_info["id"])
      raise ValueError(f"save: path={str(path)!r} cannot be written ({type(e).__name__}: {e})") from e
    _clean_state_dir(path, keep=state_info["id"] if state_info else None)
    return path

  # -- plots -------------------------------------------------------------------------------

  def plot_heatmap(self, x: str, y: str, metric: str, **kwargs):
    """A heatmap of ``metric`` (mean over seeds) over two hyperparameters; see
    :func:`optaxlr.plot.heatmap`."""
    from optaxlr.plot import heatmap

    return heatmap(self, x, y, metric, **kwargs)


_FORMAT = "optaxlr.SweepResult/1"


def _short_repr(v: Any) -> str:
  r = repr(v)
  return r if len(r) <= 60 else r[:57] + "..."


def _bad_file(path: pathlib.Path, what: str) -> ValueError:
  return ValueError(f"load: {str(path)!r} {what}")


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of the ``.npz`` file at ``path``, read and checked (zip CRCs included).

  Any failure to decode the bytes is reported as a ``ValueError`` naming the file and saying
  what is wrong; the low-level exception (``BadZipFile``, ``zlib.error``...) is chained.
  """
  import io
  import zipfile

  if path.is_dir():
    raise _bad_file(path, "is a directory, not a saved sweep result (.npz file)")
  if not path.exists():
    raise FileNotFoundError(f"load: {str(path)!r} does not exist")
  with open(path, "rb") as f:
    magic = f.read(4)
  if not magic:
    raise _bad_file(path, "is empty (0 bytes), not a saved sweep result")
  if magic != b"PK\x03\x04":
    kind = "a single .npy array" if magic == b"\x93NUM" else "not a .npz file (no zip signature)"
    raise _bad_file(path, f"is {kind}, not a saved sweep result")
  try:
    zf = zipfile.ZipFile(path)
  except Exception as e:  # noqa: BLE001 -- any failure to parse untrusted bytes
    raise _bad_file(path, "is truncated or damaged: its zip directory cannot be read") from e
  arrays = {}
  with zf:
    for info in zf.infolist():
      key = info.filename.removesuffix(".npy")
      try:
        raw = zf.read(info)
      except Exception as e:  # noqa: BLE001 -- bad CRC, bad compressed data, bad local header
        raise _bad_file(
            path, f"is truncated or damaged: its array {key[:40]!a} cannot be read back intact"
        ) from e
      try:
        arrays[key] = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
      except Exception as e:  # noqa: BLE001 -- bad .npy header, object data, short data
        raise _bad_file(
            path, f"is damaged: its member {info.filename[:40]!a} is not a valid .npy array"
        ) from e
  return arrays


def _read_header(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """The JSON header of a saved result, its structure checked."""
  if "header" not in arrays:
    raise _bad_file(path, f"is a .npz file but not an optaxlr sweep result (no header; it holds"
                          f" {sorted(arrays)[:6]})")
  raw = arrays["header"]
  try:
    if raw.dtype != np.uint8 or raw.ndim != 1:
      raise TypeError(f"header array of dtype {raw.dtype}, shape {raw.shape}")
    header = json.loads(raw.tobytes().decode("utf-8"))
  except (TypeError, ValueError) as e:  # json.JSONDecodeError, UnicodeDecodeError are ValueErrors
    raise _bad_file(path, "is damaged: its header is not valid JSON text") from e
  if not isinstance(header, dict):
    raise _bad_file(path, f"is damaged: its header is a JSON {type(header).__name__}, not an"
                          " object")
  if header.get("format") != _FORMAT:
    raise _bad_file(path, f"has format {header.get('format')!r}; this version of optaxlr reads"
                          f" {_FORMAT!r}")

  def is_str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)

  axes = header.get("axes")
  if not (isinstance(axes, list) and axes and all(
      isinstance(a, dict) and isinstance(a.get("dim"), str) and is_str_list(a.get("names"))
      and a["names"] for a in axes)):
    raise _bad_file(path, "is damaged: its header's 'axes' is not a non-empty list of"
                          " {'dim': str, 'names': [str, ...]}")
  if not is_str_list(header.get("metrics")):
    raise _bad_file(path, "is damaged: its header's 'metrics' is not a list of names")
  fixed, info = header.get("fixed") or {}, header.get("info", {})
  if not isinstance(fixed, dict) or not isinstance(info, dict):
    raise _bad_file(path, "is damaged: its header's 'fixed' or 'info' is not a JSON object")
  return header


def _numbers_id(arrays: Mapping[str, np.ndarray]) -> str:
  """The numbers' fingerprint: a SHA-256 of every array's name, dtype, shape and bytes."""
  m = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    m.update(repr((k, a.dtype.str, a.shape)).encode())
    m.update(a.tobytes())
  return m.hexdigest()[:32]


def _state_dir(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(path.name + ".state")


# The file-system steps of a save, as functions of their own so that the fault-injection test
# can kill a process at any of them (tests/test_save.py).
def _write_file(path: pathlib.Path, data: bytes) -> None:
  from optaxlr.engine import _checkpoint

  _checkpoint._fsync_write(path, data)  # temporary file, fsync, rename, fsync of the folder


def _remove(path: pathlib.Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists() or path.is_symlink():
    path.unlink(missing_ok=True)


def _write_state(folder: pathlib.Path, tree: dict) -> None:
  import orbax.checkpoint as ocp

  # A synchronous checkpointer, closed here: orbax's default asynchronous one creates the folder
  # in a thread, and when that fails the main thread waits 300 s for a signal that never comes
  # (the "hang at exit" of a failed save).
  ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  try:
    ckptr.save(folder.absolute(), args=ocp.args.StandardSave(tree))
  finally:
    ckptr.close()


def _save_state(path: pathlib.Path, trees, fingerprint: str) -> dict:
  """Writes the runs' state to a new sub-folder of ``<path>.state`` that no file refers to yet."""
  import jax

  container = _state_dir(path)
  if container.exists() and (not container.is_dir() or (container / "_CHECKPOINT_METADATA").exists()):
    # A file, or the state of a result saved before sub-folders (which its .npz names directly):
    # moved aside; the old .npz has no state until the new one is committed (a kill in between
    # leaves a clear "state folder is missing" error, never a mix).
    os.replace(container, container.with_name(f"{container.name}.old-{uuid.uuid4().hex[:8]}"))
  container.mkdir(exist_ok=True)
  sid = f"s-{uuid.uuid4().hex[:12]}"
  leaves = [[np.asarray(x) for x in jax.tree.leaves(t)] for t in trees]
  tree = {"params": leaves[0], "opt_state": leaves[1], "model_state": leaves[2],
          "fingerprint": np.frombuffer(fingerprint.encode(), np.uint8).copy()}
  _write_state(container / sid, tree)
  return {"dir": container.name, "id": sid, "fingerprint": fingerprint,
          "leaves": [len(x) for x in leaves], "shapes": [[list(a.shape) for a in x] for x in leaves],
          "digest": _state_id(leaves)}


def _state_id(leaves: Sequence[Sequence[np.ndarray]]) -> str:
  """The runs' state's fingerprint (params, opt_state, model_state leaves in order): a state
  folder damaged in place (a truncated orbax chunk may still restore) is refused."""
  return _numbers_id({f"{t}/{i:06d}": np.asarray(a) for t, x in enumerate(leaves)
                      for i, a in enumerate(x)})


def _clean_state_dir(path: pathlib.Path, keep: str | None) -> None:
  """After a commit: removes the previous state, leftovers of killed saves, and the folder
  ``<path>.state`` itself when the result has no state."""
  container = _state_dir(path)
  for old in path.parent.glob(f"{container.name}.old-*"):
    _remove(old)
  _remove(path.with_name(path.name + ".tmp"))
  if container.is_dir():
    for p in sorted(container.iterdir()):
      if p.name != keep:
        _remove(p)
    if keep is None:
      _remove(container)


def _load_state(path: pathlib.Path, header: dict, space, task, optimizer) -> tuple:
  import jax
  import orbax.checkpoint as ocp

  from optaxlr import search

  info = header["state"]
  folder = path.with_name(info["dir"])
  if "id" in info:  # since states are written to sub-folders; before, the folder itself
    folder = folder / info["id"]
  if not folder.is_dir():
    raise _bad_file(path, f"is incomplete: its runs' state folder {str(folder.relative_to(path.parent))!r}"
                          " is missing")
  ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  try:
    raw = ckptr.restore(folder.absolute())
  except Exception as e:  # noqa: BLE001 -- a damaged orbax folder
    raise _bad_file(path, f"has a damaged state folder {folder.name!r} ({type(e).__name__})") from e
  finally:
    ckptr.close()
  if "fingerprint" in info:
    theirs = raw.get("fingerprint") if isinstance(raw, Mapping) else None
    theirs = bytes(np.asarray(theirs, np.uint8)).decode(errors="replace") if theirs is not None else None
    if theirs != info["fingerprint"] or info["fingerprint"] != header.get("fingerprint"):
      raise _bad_file(path, f"has a state folder {str(folder.relative_to(path.parent))!r} that belongs"
                            f" to another result (its numbers' fingerprint is {theirs!r}, this file's"
                            f" is {info['fingerprint']!r}); save the result again")
  names = ("params", "opt_state", "model_state")
  if "digest" in info:
    got = [list(raw[name]) if n else [] for name, n in zip(names, info["leaves"])]
    if _state_id(got) != info["digest"]:
      raise _bad_file(path, f"has a damaged state folder {str(folder.relative_to(path.parent))!r}: "
                            "its arrays do not match the digest in the file's header")
  hp = search.encode({k: np.asarray(v)[:1] for k, v in space.columns.items()}, space.categories)
  hp = {k: v[0] for k, v in hp.items()}
  opt = search.with_categories(optimizer, space.categories)
  try:
    params_like = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    state_like = jax.eval_shape(task.initial_state, jax.random.PRNGKey(0))
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(f"load: {str(path)!r}: task.init fails, so the saved state cannot be matched "
                     f"to it (is task= the sweep's task?): {type(e).__name__}: {e}") from e
  try:
    opt_like = jax.eval_shape(lambda p: opt(hp).init(p), params_like)
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(f"load: {str(path)!r}: optimizer(hparams).init(params) fails on the saved "
                     f"hyperparameters {sorted(hp)} (is optimizer= the sweep's?): "
                     f"{type(e).__name__}: {e}") from e
  shapes = (params_like, opt_like, state_like)
  out = []
  for name, like, n_leaves in zip(("params", "opt_state", "model_state"), shapes, info["leaves"]):
    leaves = list(raw[name]) if n_leaves else []
    like_leaves = jax.tree.leaves(like)
    if len(leaves) != len(like_leaves) or any(
        tuple(a.shape[2:]) != tuple(b.shape) for a, b in zip(leaves, like_leaves)):
      raise ValueError(f"load: {str(path)!r}: the saved {name} do not fit this task and optimizer "
                       f"({len(leaves)} arrays vs {len(like_leaves)} expected, or other shapes)")
    out.append(jax.tree.unflatten(jax.tree.structure(like), [np.asarray(a) for a in leaves]))
  return tuple(out)


def load(path: str | os.PathLike, *, task: Any = None, optimizer: Any = None) -> SweepResult:
  """Reads a :class:`SweepResult` written by :meth:`SweepResult.save`.

  With ``task`` and ``optimizer`` (the sweep's), the runs' parameters, optimizer states and
  model states saved next to it (``<path>.state``, orbax) are read back in their structure
  (``res.params_of(...)``, :meth:`SweepResult.opt_state_of` work as after the sweep);
  without them only the numbers are read and ``info["state_file"]`` names the folder.

  The whole file is read and checked: zip checksums, the header, and that every array has the
  shape its header implies (``seeds (S,)``, ``diverged_at (S, C)``, ``batch_loss (S, C, T)``,
  ``metric (S, C, E)`` with ``E = len(eval_steps)``, ``C`` the product of the axis lengths).

  Raises:
    FileNotFoundError: there is no file at ``path`` (other ``OSError``: it cannot be opened).
    ValueError: the file is not a saved sweep result, or is truncated, damaged or
      inconsistent; the message names the file and says what is wrong.

  Examples:
    >>> import os, tempfile
    >>> import optaxlr
    >>> bad = os.path.join(tempfile.mkdtemp(), "r.npz")
    >>> with open(bad, "wb") as f:
    ...   _ = f.write(b"PK\x03\x04 and then nothing")
    >>> optaxlr.load(bad)
    Traceback (most recent call last):
    ...
    ValueError: load: '...r.npz' is truncated or damaged: its zip directory cannot be read
  """
  from optaxlr import search

  if task is not None and not (callable(getattr(task, "init", None))
                               and callable(getattr(task, "initial_state", None))):
    raise TypeError(f"load: task must be the sweep's optaxlr Task (with init and initial_state),"
                    f" got {type(task).__name__} {_short_repr(task)}")
  if optimizer is not None and not callable(optimizer):
    raise TypeError(f"load: optimizer must be the sweep's function hyperparameters ->"
                    f" optax.GradientTransformation, got {type(optimizer).__name__}"
                    f" {_short_repr(optimizer)}")
  path = pathlib.Path(path)
  arrays = _read_npz(path)
  header = _read_header(path, arrays)

  def need(key: str, ndim: int, kinds: str) -> np.ndarray:
    if key not in arrays:
      raise _bad_file(path, f"is incomplete: its array {key!r} is missing")
    a = arrays[key]
    if a.ndim != ndim or a.dtype.kind not in kinds:
      raise _bad_file(path, f"is inconsistent: {key!r} is a {a.ndim}-D {a.dtype} array,"
                            f" expected {ndim}-D of kind {kinds!r}")
    return a

  def shaped(key: str, a: np.ndarray, expected: tuple[int, ...], meaning: str) -> np.ndarray:
    if a.shape != expected:
      raise _bad_file(path, f"is inconsistent: {key!r} has shape {a.shape}, expected {expected}"
                            f" ({meaning})")
    return a

  axes = []
  for i, a in enumerate(header["axes"]):
    values = {k: need(f"axis{i}:{k}", 1, "biufU") for k in a["names"]}  # U: a categorical axis
    axes.append(search.Axis(a["dim"], tuple(a["names"]), values))
  try:
    space = search.Space(axes, header.get("fixed") or {})
  except (TypeError, ValueError) as e:
    raise _bad_file(path, f"is inconsistent: its axes do not form a search space ({e})") from e
  seeds = need("seeds", 1, "iu")
  n_s, n_c = len(seeds), len(space)
  eval_steps = need("eval_steps", 1, "iu")
  batch_loss = need("batch_loss", 3, "f")
  sc = "seeds x configs"
  stop_reason = None  # files written before stop reasons were saved: derived by SweepResult
  if "stop_reason" in arrays:
    stop_reason = shaped("stop_reason", need("stop_reason", 2, "U"), (n_s, n_c), sc)
  params = opt_state = model_state = None
  info = dict(header.get("info", {}))
  if header.get("state"):
    info["state_file"] = header["state"]["dir"]
    if (task is None) != (optimizer is None):
      raise ValueError("load: pass both task= and optimizer= to read the runs' state")
    if task is not None:
      params, opt_state, model_state = _load_state(path, header, space, task, optimizer)
  elif task is not None or optimizer is not None:
    raise ValueError(f"load: {str(path)!r} holds no runs' state (the sweep ran without "
                     "Execution(keep_params=True)); drop task= and optimizer=")
  result = SweepResult(
      space=space,
      seeds=seeds,
      batch_loss=shaped("batch_loss", batch_loss, (n_s, n_c, batch_loss.shape[-1]),
                        sc + " x logged steps"),
      metrics={m: shaped(f"metric:{m}", need(f"metric:{m}", 3, "f"), (n_s, n_c, len(eval_steps)),
                         sc + " x evaluations")
               for m in header["metrics"]},
      eval_steps=eval_steps,
      diverged_at=shaped("diverged_at", need("diverged_at", 2, "iu"), (n_s, n_c), sc),
      stopped_at=shaped("stopped_at", need("stopped_at", 2, "iu"), (n_s, n_c), sc),
      info=info,
      stop_reason=stop_reason,
      params=params, opt_state=opt_state, model_state=model_state,
  )
  # After the structural checks (which name what is wrong): numbers changed in place.
  if "fingerprint" in header:
    numbers = _numbers_id({k: v for k, v in arrays.items() if k != "header"})
    if numbers != header["fingerprint"]:
      raise _bad_file(path, "is damaged: its arrays do not match the fingerprint in its header")
  return result

