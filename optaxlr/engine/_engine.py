"""``sweep``: every config x seed of a search space trained as one compiled program.

A thin driver of the training core (:mod:`optaxlr.engine._core`, :mod:`optaxlr.engine._driver`):
it validates its arguments on the host, before anything is traced, describes the run as a
:class:`~optaxlr.engine._driver.Plan`, runs it and labels the numbers as a
:class:`SweepResult`. :func:`optaxlr.lr_find` and :func:`optaxlr.lr_find_grid` drive the same
program.
"""

from __future__ import annotations

import inspect
import math
import warnings
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from optaxlr import _validate
from optaxlr.engine import _core
from optaxlr.engine import _driver
from optaxlr.engine import _fingerprint
from optaxlr.engine import _rules
from optaxlr.engine._data import as_key, batch_indices, fold_split, key_data, model_key, run_keys
from optaxlr.engine._driver import ChunkEvent, Control
from optaxlr.engine._execution import Execution, as_execution
from optaxlr.engine._noise import noise_metrics
from optaxlr.engine._result import SweepResult
from optaxlr.engine._rules import EarlyStop

PyTree = Any
Hyperparams = Mapping[str, jax.Array]

__all__ = ["sweep", "batch_indices", "run_keys", "model_key", "fold_split", "EarlyStop",
           "ChunkEvent", "Control"]

# Axis names that a user may expect the core to read but that it does not read.
_NOT_SUPPORTED_AXES = {
    "steps": "the number of steps is the sweep's steps=, not an axis",
}
# The step counter (the program's and optax's ``count``) is int32: the last step a run may
# number, padding of the last chunk included.
MAX_STEP = 2**31 - 1
# Axes the core itself reads: the minibatch size and the cross-validation fold of a config.
CORE_AXES = ("batch_size", "fold")


# ----------------------------------------------------------------------------------------
# Host-side validation shared by every driver (sweep, lr_find, lr_find_grid).


check_int = _validate.check_int
seed_list = _validate.seed_list


def check_hparams(fn: str, space_arrays: Mapping[str, np.ndarray], n: int) -> None:
  for name, arr in space_arrays.items():
    if arr.shape[:1] != (n,):
      raise ValueError(f"{fn}: hyperparameter {name!r} has shape {arr.shape}, expected ({n}, ...)")
    if arr.dtype == bool:
      raise ValueError(f"{fn}: hyperparameter {name!r} holds booleans; use 0/1 numbers")
    if arr.dtype.kind == "U":
      raise ValueError(f"{fn}: hyperparameter {name!r} holds strings (a categorical axis), which "
                       f"{fn} does not take yet; optaxlr.sweep does (search.switch)")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"{fn}: hyperparameter {name!r} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      bad = int(np.flatnonzero(~np.isfinite(arr))[0])
      raise ValueError(f"{fn}: hyperparameter {name!r} is not finite in config {bad}: {arr[bad]}")
    if (np.issubdtype(arr.dtype, np.floating) and not jax.config.jax_enable_x64
        and np.any(np.abs(arr) > np.finfo(np.float32).max)):
      bad = int(np.flatnonzero(np.abs(arr) > np.finfo(np.float32).max)[0])
      raise ValueError(f"{fn}: hyperparameter {name!r} of config {bad} is {arr[bad]!r}, beyond "
                       "float32 (the sweep computes in float32; enable jax_enable_x64 for it)")
    lname = name.lower()
    if lname in ("lr", "learning_rate", "peak_lr", "max_lr", "base_lr") or lname.endswith("_lr"):
      if np.any(arr <= 0):
        bad = int(np.flatnonzero(arr <= 0)[0])
        raise ValueError(f"{fn}: {name} must be > 0, config {bad} has {name}={arr[bad].item()!r}")


def check_distinct(fn: str, hp_np: Mapping[str, np.ndarray], n: int) -> None:
  """Refuses two configs that differ in the space but are equal in the dtype the sweep
  computes in (float32 without x64: ``lr=1e-3`` and ``1e-3 + 1e-12``): they would train
  identically under two labels. Configs equal in the space itself are the user's own repeats."""
  if n < 2 or not hp_np or jax.config.jax_enable_x64:
    return
  floats = [k for k, v in hp_np.items() if np.issubdtype(v.dtype, np.floating)]
  if not floats:
    return
  def rows(cast):
    cols = [np.asarray(hp_np[k], np.float32 if (cast and k in floats) else hp_np[k].dtype)
            .reshape(n, -1).view(np.uint8).reshape(n, -1) for k in sorted(hp_np)]
    return np.concatenate(cols, axis=1)
  cast = rows(True)
  _, first, inverse = np.unique(cast, axis=0, return_index=True, return_inverse=True)
  inverse = np.asarray(inverse).reshape(-1)
  orig = rows(False)
  for i in range(n):
    j = int(first[inverse[i]])
    if j != i and not np.array_equal(orig[i], orig[j]):
      diff = [k for k in floats if not np.array_equal(hp_np[k][i], hp_np[k][j])]
      vals = ", ".join(f"{k}={hp_np[k][j].tolist()!r} vs {hp_np[k][i].tolist()!r}" for k in diff)
      raise ValueError(f"{fn}: configs {j} and {i} differ ({vals}) but are equal in float32, the "
                       "dtype the sweep computes in: they would train identically. Remove one, "
                       "space the values further apart, or enable jax_enable_x64")


def read_axes(fn: str, probe: Probe, optimizer, objective, configs: list[dict], names: Sequence[str],
              extra: Mapping[str, Any] | None = None, batch: Mapping[str, Any] | None = None) -> dict:
  """Builds every config's transform on the host with concrete values (the transforms' own
  eager validation rejects bad settings before anything is traced), checks that every axis is
  read by the optimizer or the objective, and returns the optimizer state's shape."""
  seen: set[str] = set()
  extra = dict(extra or {})
  for i, config in enumerate(configs):
    try:
      tx = optimizer(_core.ReadRecorder({**config, **extra}, seen))
    except (ValueError, TypeError, KeyError) as e:
      what = f"KeyError: no hyperparameter {e}" if isinstance(e, KeyError) else str(e)
      if isinstance(e, TypeError):
        what += (" (if optimizer is an optax factory such as optax.sgd, pass a function"
                 " hparams -> optax.GradientTransformation instead, e.g. lambda h: optax.sgd(h['lr']))")
      raise ValueError(f"{fn}: config {i} {config} is invalid: {what}") from e
    if not isinstance(tx, (optax.GradientTransformation, optax.GradientTransformationExtraArgs)) \
        and not (hasattr(tx, "init") and hasattr(tx, "update")):
      raise TypeError(f"{fn}: optimizer must be a function hparams -> optax.GradientTransformation"
                      f" (e.g. lambda h: optax.sgd(h['lr'])), it returned {type(tx).__name__}")
  task, params_shape = probe.task, probe.params
  # Canonical dtypes (float64 -> float32 under x64-off), as the program sees them; JAX >= 0.11
  # warns on a float64 ShapeDtypeStruct it cannot honour.
  hp_one = {k: jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype))
            for k, v in {**configs[0], **extra}.items()}
  try:
    opt_shape = jax.eval_shape(lambda p, h: optimizer(h).init(p), params_shape, hp_one)
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(f"{fn}: optimizer(hparams).init(params) fails with traced hyperparameters "
                     f"(the optimizer must be hparams -> optax.GradientTransformation, e.g. "
                     f"lambda h: optax.sgd(h['lr'])): {type(e).__name__}: {e}") from e
  if objective is not None:
    def obj(h):
      return objective(jax.numpy.zeros(()), _core.ReadRecorder(h, seen))
    try:
      jax.eval_shape(obj, hp_one)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{fn}: objective(loss, hparams) fails: {type(e).__name__}: {e}") from e
  if getattr(task, "stateful", False) and batch is not None:
    # The model may read hyperparameters too (a dropout rate, label smoothing).
    state_shape = probe.state

    def model_reads(p, s, b, h):
      h = _core.ReadRecorder(h, seen)
      loss, _ = task.step_loss(p, s, b, jax.random.PRNGKey(0), h)
      return loss, task.evaluate(p, s, b, h)
    try:
      jax.eval_shape(model_reads, params_shape, state_shape, batch, hp_one)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{fn}: the task's model fails with traced hyperparameters: "
                       f"{type(e).__name__}: {e}") from e
  unused = [n for n in names if n not in seen and n not in CORE_AXES]
  if unused:
    why = "; ".join(_NOT_SUPPORTED_AXES[n] for n in unused if n in _NOT_SUPPORTED_AXES)
    raise ValueError(
        f"{fn}: the space's axis {unused[0]!r} is read by neither the optimizer, the objective "
        "nor the model"
        + (f" (also unused: {unused[1:]})" if len(unused) > 1 else "")
        + f"; it would only repeat identical runs. Read it as hparams[{unused[0]!r}] or remove it"
        + (f" ({why})" if why else "")
    )
  return {"params": params_shape, "opt_state": opt_shape}


def check_task(fn: str, task, batch_size: Any) -> int:
  from optaxlr.tasks import Task

  if not isinstance(task, Task):
    raise TypeError(f"{fn}: task must be an optaxlr.Task, got {type(task).__name__}")
  n_train = task.n_train
  if batch_size is None:
    batch_size = min(128, n_train)
  return check_int(fn, "batch_size", batch_size, 1, n_train)


def base_fingerprint(fn: str, task, optimizer, objective, shapes, *, hp, seeds, key, **settings) -> dict:
  """Every input that changes a sweep's numbers, for checkpoints (see CheckpointStore)."""
  return {
      "driver": fn,
      "dtype": "float64" if jax.config.jax_enable_x64 else "float32",
      "task": getattr(task, "name", ""),
      "task_functions": _fingerprint.function_id(
          (task.init, task.loss, task.metrics, getattr(task, "init_state", None),
           getattr(task, "train_loss", None), getattr(task, "eval_metrics", None))),
      "data": (_fingerprint.data_id({"train": task.train, "eval": task.eval})
               if not getattr(task, "host_fed", False) else
               # a stream: its factory's code and its first batch (the rest cannot be read
               # without consuming it)
               _fingerprint.data_id({"first_batch": task.first_batch(int(seeds[0])),
                                     "eval": task.eval})
               + ":" + _fingerprint.function_id(task.train)),
      "params": _fingerprint.structure_id(shapes["params"]),
      "opt_state": _fingerprint.structure_id(shapes["opt_state"]),
      "optimizer": _fingerprint.function_id(optimizer),
      "objective": _fingerprint.function_id(objective),
      "hparams": _fingerprint.data_id({k: np.asarray(v) for k, v in hp.items()}),
      "hparam_names": sorted(hp),
      "seeds": list(seeds),
      "key": key_data(key),
      "jax": jax.__version__,
      **{k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
         for k, v in settings.items()},
  }


def split_seeds(fn: str, space, seeds, folds_ok: bool = False) -> tuple[Any, list[int]]:
  """The space without its "seed" axis, and the seed values (from the space or ``seeds``)."""
  from optaxlr import search  # a sibling layer below the engine

  if isinstance(space, Mapping):
    space = search.zip(**space)
  if not isinstance(space, search.Space):
    raise TypeError(
        f"{fn}: space must be an optaxlr.search.Space or a dict of 1-D arrays, got {type(space)!r}"
    )
  if search.FOLD in space.dims and not folds_ok:
    raise ValueError(
        f"{fn}: does not take a 'fold' axis (optaxlr.sweep does); split the data into folds in"
        " the task"
    )
  if search.SEED in space.dims:
    if seeds is not None:
      raise ValueError(f"{fn}: the space has a 'seed' axis; do not also pass seeds=")
    seed_axis = next(a for a in space.axes if a.dim == search.SEED)
    if seed_axis.names != (search.SEED,):
      raise ValueError(f"{fn}: the 'seed' axis must hold only seeds, got {seed_axis.names}")
    rest = [a for a in space.axes if a.dim != search.SEED]
    if not rest:
      raise ValueError(f"{fn}: the space holds only seeds; add at least one hyperparameter axis")
    return search.Space(rest, space.fixed), seed_list(fn, seed_axis.values[search.SEED].tolist())
  return space, seed_list(fn, 1 if seeds is None else seeds)


def check_step_range(fn: str, steps: int, start_step: int = 0, sync_every: int = 1) -> None:
  """Refuses a sweep whose steps (numbered from ``start_step``, the last chunk padded to
  ``sync_every``) pass the int32 step counter of the program and of optax's schedules: they
  would wrap around to negative steps."""
  last = start_step + math.ceil(steps / sync_every) * sync_every
  if last > MAX_STEP:
    raise ValueError(f"{fn}: steps={steps} (from step {start_step}, the last chunk padded to "
                     f"sync_every={sync_every}) reach step {last}, past {MAX_STEP} = 2**31 - 1, "
                     "the limit of the int32 step counter (the program's and optax's schedules' "
                     "count)")


def intervals(fn: str, steps: int, eval_every: Any, sync_every: Any, log_every: Any) -> tuple[int, int, int]:
  """``eval_every`` (default: about a tenth of ``steps``), ``sync_every`` (a multiple of it,
  default equal), ``log_every`` (divides it, default 1), checked."""
  if eval_every is None:
    eval_every = math.ceil(steps / min(10, steps))
  eval_every = check_int(fn, "eval_every", eval_every, 1)
  if eval_every > steps:
    raise ValueError(f"{fn}: eval_every must be <= steps={steps}, got eval_every={eval_every}")
  sync_every = eval_every if sync_every is None else check_int(fn, "sync_every", sync_every, 1)
  if sync_every % eval_every:
    raise ValueError(f"{fn}: sync_every must be a multiple of eval_every={eval_every}, "
                     f"got sync_every={sync_every}")
  log_every = check_int(fn, "log_every", log_every, 1)
  if eval_every % log_every:
    raise ValueError(f"{fn}: log_every must divide eval_every={eval_every}, got log_every={log_every}")
  return eval_every, sync_every, log_every


class Probe:
  """One shape probe of a task, threaded to every pre-compile check: the parameters' and
  model state's shapes (``task.init`` traced once) and the training loss's jaxpr per batch
  shape (traced once, then read for the loss's shape and for convolutions)."""

  def __init__(self, task, hp: Mapping[str, Any]):
    self.task = task
    self.hp = {k: np.asarray(v) for k, v in hp.items()}
    key = jax.random.PRNGKey(0)
    self.params = jax.eval_shape(task.init, key)
    self.state = jax.eval_shape(task.initial_state, key)
    self._jaxprs: dict = {}

  def loss(self, p, s, b):
    return self.task.step_loss(p, s, b, jax.random.PRNGKey(0), self.hp)[0]

  def metrics(self, p, s, b):
    return self.task.evaluate(p, s, b, self.hp)

  def loss_jaxpr(self, batch_shape):
    """``(closed jaxpr, output shape)`` of the loss on batches shaped like ``batch_shape``."""
    key = jax.tree.structure(batch_shape), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch_shape))
    if key not in self._jaxprs:
      self._jaxprs[key] = jax.make_jaxpr(self.loss, return_shape=True)(self.params, self.state,
                                                                      batch_shape)
    return self._jaxprs[key]


def metric_names(fn: str, probe: Probe, splits: Sequence[str],
                 extra: Mapping[str, Any] | None = None) -> tuple[str, ...]:
  """``"split/metric"`` of every evaluated split (``extra``: more splits, e.g. ``"fold"``)."""
  task, metrics, params_shape, state_shape = probe.task, probe.metrics, probe.params, probe.state
  names = []
  all_splits = {**{s: task.eval[s] for s in splits}, **dict(extra or {})}
  for split, data in all_splits.items():
    try:
      ms = jax.eval_shape(metrics, params_shape, state_shape, data)
    except Exception as e:  # noqa: BLE001 -- re-raised with context
      raise ValueError(f"{fn}: task.metrics fails on split {split!r}: {type(e).__name__}: {e}") from e
    for name, sh in ms.items():
      if sh.shape != ():
        raise ValueError(f"{fn}: task.metrics must return scalars, {split}/{name} has shape {sh.shape}")
      names.append(f"{split}/{name}")
  return tuple(names)


def check_loss(fn: str, probe: Probe, batch_size: int,
               train_like: Mapping[str, Any] | None = None) -> dict:
  """Checks the loss on a batch of ``batch_size`` and returns that batch's shapes."""
  like = probe.task.train if train_like is None else train_like
  batch_shape = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), jax.dtypes.canonicalize_dtype(a.dtype)),
      dict(like)
  )
  try:
    _, loss_shape = probe.loss_jaxpr(batch_shape)
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(f"{fn}: task.loss fails on a batch of {batch_size} training examples: {e}") from e
  if loss_shape.shape != ():
    raise ValueError(f"{fn}: task.loss must return a scalar, got shape {loss_shape.shape}")
  return batch_shape


def _check_start_from(fn: str, prev, n_cfg: int, seeds: list[int], shapes: dict, probe: Probe):
  """``(start_step, (params, opt_state, model_state))`` of a kept result, checked."""
  if not isinstance(prev, SweepResult):
    raise TypeError(f"{fn}: start_from must be a SweepResult, got {type(prev).__name__}")
  if prev.params is None:
    raise ValueError(f"{fn}: start_from holds no kept state; run the first sweep with "
                     "Execution(keep_params=True) (or load it with optaxlr.load(path, task=, optimizer=))")
  if prev.num_configs != n_cfg:
    raise ValueError(f"{fn}: start_from has {prev.num_configs} configs, this space {n_cfg}; "
                     "config i continues run i, so the counts must match")
  if np.asarray(prev.seeds).tolist() != list(seeds):
    raise ValueError(f"{fn}: start_from has seeds {np.asarray(prev.seeds).tolist()}, this sweep "
                     f"{list(seeds)}; they must match")
  state_like = probe.state
  for name, got, like in (("params", prev.params, shapes["params"]),
                          ("opt_state", prev.opt_state, shapes["opt_state"]),
                          ("model_state", prev.model_state, state_like)):
    a, b = jax.tree.leaves(got), jax.tree.leaves(like)
    if jax.tree.structure(got) != jax.tree.structure(like) or any(
        tuple(np.shape(x)[2:]) != tuple(y.shape) for x, y in zip(a, b)):
      raise ValueError(f"{fn}: start_from's {name} do not fit this task and optimizer (another "
                       "structure or shapes)")
    if any(np.asarray(x).dtype != y.dtype for x, y in zip(a, b)):
      raise ValueError(f"{fn}: start_from's {name} dtypes differ from this sweep's (float32 vs "
                       "float64?)")
  steps_before = int(prev.info.get("start_step", 0)) + int(prev.info.get("steps", 0))
  if (prev.stop_reason != "completed").any():
    bad = np.argwhere(prev.stop_reason != "completed")[0]
    raise ValueError(f"{fn}: start_from's run (seed index {bad[0]}, config {bad[1]}) ended "
                     f"{prev.stop_reason[tuple(bad)]!r}; only completed runs continue")
  return steps_before, (prev.params, prev.opt_state, prev.model_state)


def _check_snapshots(fn: str, execution: Execution, steps: int, sync_every: int) -> None:
  """``Execution.keep_params_at`` against this sweep: inside the run and on chunk ends."""
  at = execution.keep_params_at
  if not at:
    return
  bad = [s for s in at if s >= steps]
  if bad:
    raise ValueError(f"{fn}: Execution(keep_params_at=) steps must be in [1, steps={steps}) (the "
                     f"final state is keep_params=True), got {bad[0]} in keep_params_at={at!r}")
  off = [s for s in at if s % sync_every]
  if off:
    raise ValueError(f"{fn}: Execution(keep_params_at=) steps must be multiples of "
                     f"sync_every={sync_every} (a snapshot is taken where a chunk ends), got "
                     f"{off[0]} in keep_params_at={at!r}; pass eval_every= and sync_every= that "
                     f"divide every snapshot step (their greatest common divisor: {math.gcd(*at)})")
  if execution.checkpoint_dir is not None:
    raise ValueError(f"{fn}: Execution(keep_params_at=) does not combine with checkpoint_dir= "
                     "(snapshots are held in memory and would be lost across a resume)")


def _has_conv(probe: Probe, batch_shape) -> bool:
  """Whether the task's training step contains a convolution (jaxpr inspection)."""
  try:
    jaxpr, _ = probe.loss_jaxpr(batch_shape)
  except Exception:  # noqa: BLE001 -- the checks above already traced it; be conservative
    return False

  def walk(j) -> bool:
    for eqn in j.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        return True
      for v in eqn.params.values():
        subs = v if isinstance(v, (list, tuple)) else [v]
        for sub in subs:
          inner = getattr(sub, "jaxpr", None)
          if inner is not None and walk(getattr(inner, "jaxpr", inner)):
            return True
    return False
  return walk(jaxpr.jaxpr)


# ----------------------------------------------------------------------------------------
# The one driver.


def _check_ramp(fn: str, ramp: Any, steps: int, axes: Sequence[str]) -> dict[str, np.ndarray]:
  """``ramp``: name -> ``(steps,)`` finite values, shared by every config."""
  if ramp is None:
    return {}
  if not isinstance(ramp, Mapping):
    raise TypeError(f"{fn}: ramp must be a dict name -> (steps,) values, got {type(ramp).__name__}")
  out = {}
  for name, values in ramp.items():
    if not isinstance(name, str):
      raise ValueError(f"{fn}: ramp names must be strings, got {name!r}")
    if name in axes:
      raise ValueError(f"{fn}: {name!r} is both an axis of the space and a ramp; keep one")
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf" or arr.shape != (steps,):
      raise ValueError(f"{fn}: ramp[{name!r}] must hold {steps} numbers (one per step), got "
                       f"shape {arr.shape} and dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{fn}: ramp[{name!r}] is not finite at step {int(np.flatnonzero(~np.isfinite(arr))[0])}")
    big = np.abs(arr) > np.finfo(np.float32).max
    if not jax.config.jax_enable_x64 and big.any():
      i = int(np.flatnonzero(big)[0])
      raise ValueError(f"{fn}: ramp[{name!r}] is {arr[i].item()!r} at step {i}, beyond float32 (the "
                       "sweep computes in float32; enable jax_enable_x64 for it)")
    out[name] = arr.astype(np.float64)
  return out


def _check_rules(fn: str, rules: Any, early_stopping: Any, plateau: Any, names: Sequence[str],
                 opt_shape: Any) -> tuple[tuple, tuple]:
  """The step rules and the evaluation rules of a sweep, checked against its metrics."""
  if isinstance(rules, _rules.Rule):
    rules = (rules,)
  try:
    rules = tuple(rules)
  except TypeError:
    raise TypeError(f"{fn}: rules must be a sequence of optaxlr.engine.Rule, got {rules!r}") from None
  if early_stopping is not None:
    if not isinstance(early_stopping, EarlyStop):
      raise TypeError(f"{fn}: early_stopping must be an optaxlr.EarlyStop, got "
                      f"{type(early_stopping).__name__}")
    rules = (early_stopping, *rules)
  for r in rules:
    if not isinstance(r, _rules.Rule):
      raise TypeError(f"{fn}: rules must hold optaxlr.engine.Rule objects, got {type(r).__name__}")
    r.validate(tuple(names))
  if plateau and not _rules.has_plateau(opt_shape):
    raise ValueError(f"{fn}: plateau={plateau!r} feeds a reduce_on_plateau, but the optimizer holds "
                     "none (chain optaxlr.reduce_on_plateau(...) into it)")
  if plateau is True:
    rules = (*rules, _rules.PlateauDone())
  return (tuple(r for r in rules if r.level == "step"), tuple(r for r in rules if r.level == "eval"))


def _layout(fn: str, task, space, hp_np, batch_size, seeds_l, n_cfg) -> dict:
  """Batch size, host-fed batch spec and the segments (batch-size / fold axes) of a sweep."""
  bs_axis = "batch_size" in hp_np
  fold_axis = "fold" in hp_np
  if bs_axis and batch_size is not None:
    raise ValueError(f"{fn}: the space has a 'batch_size' axis; do not also pass batch_size="
                     f"{batch_size!r}")
  out = {"batch_spec": None, "train_like": None, "segment_of": None, "segment_defs": (),
         "fold_splits": {}}
  if task.host_fed:
    if bs_axis or fold_axis:
      raise ValueError(f"{fn}: a host-fed task (train is a batch factory) cannot take a "
                       f"{'batch_size' if bs_axis else 'fold'!r} axis: the stream fixes its batches")
    first = task.first_batch(seeds_l[0])
    b0 = int(next(iter(first.values())).shape[0])
    if batch_size is not None and check_int(fn, "batch_size", batch_size, 1) != b0:
      raise ValueError(f"{fn}: batch_size={batch_size} differs from the batches of the task's "
                       f"stream ({b0} examples)")
    out.update(batch_size=b0, train_like=first,
               batch_spec={k: (tuple(v.shape[1:]), np.dtype(v.dtype)) for k, v in first.items()})
    return out
  if not (bs_axis or fold_axis):
    out["batch_size"] = check_task(fn, task, batch_size)
    return out
  n_train = task.n_train
  bsz = np.asarray(hp_np["batch_size"]) if bs_axis else np.full(n_cfg, -1)
  folds = np.asarray(hp_np["fold"]) if fold_axis else np.full(n_cfg, -1)
  if bs_axis and ((bsz.dtype.kind not in "iu" and not np.all(bsz == np.round(bsz))) or np.any(bsz < 1)):
    raise ValueError(f"{fn}: the 'batch_size' axis must hold ints >= 1, got {bsz[:5].tolist()}")
  k = 0
  if fold_axis:
    k = int(len(np.unique(folds)))
    if set(np.unique(folds).tolist()) != set(range(k)) or k < 2:
      raise ValueError(f"{fn}: the 'fold' axis must hold the folds 0..k-1 (search.folds(k)), "
                       f"got {sorted(set(np.unique(folds).tolist()))}")
    out["fold_splits"] = {i: fold_split(n_train, k, i) for i in range(k)}
  keys_ = sorted(set(zip(bsz.astype(np.int64).tolist(), folds.astype(np.int64).tolist())))
  defs = []
  for b, f in keys_:
    n_avail = len(out["fold_splits"][f][0]) if f >= 0 else n_train
    b = b if b >= 0 else (min(128, n_avail) if batch_size is None else batch_size)
    defs.append((check_int(fn, "batch_size", b, 1, n_avail), int(f), k if f >= 0 else 0))
  index = {kk: i for i, kk in enumerate(keys_)}
  out["segment_of"] = np.array([index[(int(b), int(f))] for b, f in zip(bsz, folds)], np.int64)
  out["segment_defs"] = tuple(defs)
  out["batch_size"] = max(d[0] for d in defs) if batch_size is None else batch_size
  return out


def _check_adapt(fn: str, adapt: Any, names, execution: Execution, layout: dict, start_from) -> None:
  """A strategy of :mod:`optaxlr.adapt` (by its protocol: ``metric``, ``start``, a call per
  chunk returning a Control, ``report``), and the settings it does not combine with."""
  if not (callable(adapt) and callable(getattr(adapt, "start", None))
          and callable(getattr(adapt, "report", None)) and isinstance(getattr(adapt, "metric", None), str)):
    raise TypeError(f"{fn}: adapt must be a strategy of optaxlr.adapt (successive_halving, "
                    f"hyperband, pbt), got {type(adapt).__name__}")
  if execution.checkpoint_dir is not None and not (
      callable(getattr(adapt, "state_dict", None)) and callable(getattr(adapt, "load_state_dict", None))):
    raise ValueError(f"{fn}: adapt={type(adapt).__name__} cannot be checkpointed: it has no "
                     "state_dict()/load_state_dict() to commit its decisions with the chunks")
  if layout["segment_of"] is not None:
    raise ValueError(f"{fn}: adapt= does not take a 'batch_size' or 'fold' axis yet")
  if start_from is not None:
    raise ValueError(f"{fn}: start_from= does not combine with adapt=")
  if getattr(adapt, "compact_sizes", "exact") not in ("exact", "pow2"):
    raise ValueError(f"{fn}: adapt.compact_sizes must be 'exact' or 'pow2', got "
                     f"{getattr(adapt, 'compact_sizes')!r}")
  if adapt.metric not in names:
    raise ValueError(f"{fn}: adapt metric {adapt.metric!r} is not an evaluated metric; "
                     f"available: {sorted(names)}")


def _adapt_identity(adapt: Any) -> str:
  """A strategy's settings (not its decisions so far), for a checkpoint's fingerprint."""
  import dataclasses

  if dataclasses.is_dataclass(adapt):
    fields = {f.name: getattr(adapt, f.name) for f in dataclasses.fields(adapt)
              if f.name not in ("rungs", "events")}
    return f"{type(adapt).__name__}({fields!r})"
  return type(adapt).__name__


def _with_adapt(fn: str, adapt: Any, callback: Callable | None) -> Callable:
  """The strategy's decision after every chunk, then the user's observer."""
  def steer(event):
    ctrl = adapt(event)
    if callback is not None:
      extra = callback(event)
      if isinstance(extra, Control):
        raise ValueError(f"{fn}: a callback may not return a Control together with adapt=")
      if extra is True:
        ctrl = Control(stop=ctrl.stop if ctrl else (), copy=ctrl.copy if ctrl else {},
                       set_hparams=ctrl.set_hparams if ctrl else {}, stop_sweep=True)
    return ctrl
  return steer


def _vectorize(fn: str, vectorize, devices, probe, train_shapes, layout) -> int | None:
  """``Execution.vectorize`` resolved: ``"auto"`` is one config at a time for a conv model on the
  CPU; configs in blocks do not combine with batch-size/fold segments, so "auto" falls back to
  all at once there (with a warning) and an explicit int is an error."""
  if vectorize == "auto":
    vectorize = 1 if (devices[0].platform == "cpu" and _has_conv(probe, train_shapes)) else None
    if vectorize is not None and layout["segment_of"] is not None:
      warnings.warn(f"{fn}: vectorize='auto' would run this conv model one config at a time on the "
                    "CPU, which does not combine with a 'batch_size' or 'fold' axis yet; every config"
                    " runs vmapped at once instead (slower convolutions on XLA:CPU)", stacklevel=3)
      vectorize = None
  if vectorize is not None and layout["segment_of"] is not None:
    raise ValueError(f"{fn}: vectorize={vectorize} (configs in blocks) does not combine with a "
                     "'batch_size' or 'fold' axis yet; pass Execution(vectorize=None)")
  return vectorize


def _metric_for(fn: str, metric, plateau, early_stopping, names) -> str | None:
  """The metric fed to a reduce_on_plateau (``plateau``), checked."""
  if plateau not in (False, True, "feed"):
    raise ValueError(f"{fn}: plateau must be False, True (feed the plateau and stop a config once "
                     f"it can reduce no further) or 'feed' (feed it only), got plateau={plateau!r}")
  if metric is not None and not plateau:
    raise ValueError(f"{fn}: metric={metric!r} is the metric fed to reduce_on_plateau and is read "
                     "only with plateau=True or 'feed' (early stopping watches EarlyStop.metric)")
  if not plateau:
    return None
  if metric is None:
    metric = early_stopping.metric if early_stopping is not None else "val/loss"
  if metric not in names:
    raise ValueError(f"{fn}: metric={metric!r} is not an evaluated metric; available: {sorted(names)}")
  return metric


def sweep(
    task,
    optimizer: Callable[[Hyperparams], optax.GradientTransformation],
    space,
    *,
    steps: int,
    batch_size: int | None = None,
    seeds: int | Sequence[int] | None = None,
    eval_every: int | None = None,
    sync_every: int | None = None,
    log_every: int = 1,
    objective: Callable[[jax.Array, Hyperparams], jax.Array] | None = None,
    metric: str | None = None,
    plateau: bool | str = False,
    early_stopping: EarlyStop | None = None,
    rules: Sequence[_rules.Rule] = (),
    ramp: Mapping[str, Any] | None = None,
    key: int | jax.Array = 0,
    callback: Callable[[ChunkEvent], Control | bool | None] | None = None,
    adapt: Any = None,
    start_from: SweepResult | None = None,
    noise_scale: bool = False,
    execution: Execution | None = None,
) -> SweepResult:
  """Trains every config of ``space`` (x ``seeds``) on ``task`` in one compiled program.

  ``optimizer(hparams)`` builds the optax transformation of one config from a dict of scalar
  (traced) hyperparameters; it is called inside ``jit`` and ``vmap``, once per compilation.
  Hyperparameters may also reach the loss through ``objective(loss, hparams)`` (e.g.
  ``lambda loss, h: optaxlr.flood(loss, h["flood"])``). Every axis of the space must be read by
  one of them: an axis nothing reads (a typo, ``batch_size``) is an error before compiling.

  Row ``i`` of the result equals a standalone run of config ``i`` with the keys of
  :func:`run_keys` and the minibatch order of :func:`batch_indices`: in float64 on the CPU to a
  few ulps (most steps bitwise; XLA's batched matmuls and reductions may sum in another order
  than a single run's), within rounding in float32. Each run receives exactly ``steps``
  updates. A config whose loss turns non-finite is frozen with the parameters that produced it
  and marked diverged at that step (parameters found non-finite at an evaluation, from a
  non-finite gradient of a finite loss, stop it there); it never changes another config's
  numbers. Why and when each run ended is in
  ``stop_reason`` / ``stopped_at`` (one meaning in every driver).

  The program runs ``sync_every`` steps per call (a chunk), evaluating every ``eval_every``
  steps inside it; between chunks the host records, checkpoints and calls ``callback``. The
  same structure with other values (other hyperparameter values, seeds, key, a rule's numbers)
  reuses the compiled program: ``info["compile_s"]`` is 0.0 on such a call. Compilation (of the
  initialisation and of the chunks) is counted in ``info["compile_s"]``, never in
  ``info["run_s"]``.

  Args:
    task: an :class:`optaxlr.Task` (init, loss, metrics, train and eval data).
    optimizer: ``hparams -> optax.GradientTransformation``.
    space: an :mod:`optaxlr.search` space (or a dict of equal-length 1-D arrays; ``None``: one
      config without hyperparameter axes, e.g. with a ``ramp``). A string
      axis (``search.grid(opt=["adamw", "sgd"])``) is categorical: ``optimizer`` and
      ``objective`` read ``hparams["opt"]`` as a :class:`optaxlr.search.Categorical` (a traced
      int32 index into ``space.categories["opt"]``, the values in order of first appearance;
      the same index, concrete, in the host-side check) and build the chosen piece with
      :func:`optaxlr.search.switch`; results are labelled by the strings.
    steps: optimizer steps per run, exactly.
    batch_size: minibatch size, in ``[1, number of training examples]``; default
      ``min(128, number of training examples)``.
    seeds: number of seeds (0..n-1) or the list of seed values; default 1, or the values of
      the space's "seed" axis (``space * search.seeds(3)``).
    eval_every: evaluate every this many steps (and after the last step). Default: about a
      tenth of ``steps``.
    sync_every: steps per compiled chunk (host syncs: progress, checkpoint, callback); a
      multiple of ``eval_every``, default ``eval_every``. The last chunk may run masked steps.
    log_every: record the training loss as the mean over windows of this many steps (it must
      divide ``eval_every``); default 1 (every step). Long sweeps keep host memory bounded.
    objective: optional ``(loss, hparams) -> loss`` (flooding, penalties).
    metric: the evaluated metric (``"val/loss"``...) fed to ``value=`` of the optimizer when
      ``plateau``; default ``early_stopping.metric`` or ``"val/loss"``.
    plateau: ``True``: pass ``value=<metric at the last evaluation>, evaluate=True`` to the
      optimizer on the first step after each evaluation and ``evaluate=False`` (``value`` NaN)
      on the others (the convention of :func:`optaxlr.reduce_on_plateau`, which then counts one
      "epoch" per evaluation as PyTorch's ``ReduceLROnPlateau`` stepped after each validation),
      and stop a config once its plateau is ``done`` (reason ``"plateau_done"``, as
      ``scheduler.step(val); if done: break``); ``"feed"``: the same feed without the stop.
    early_stopping: per-config early stopping (an :class:`EarlyStop`, the rules of
      :func:`optaxlr.transforms.early_stopping`).
    rules: more stop rules (:class:`optaxlr.engine.Rule`: :class:`optaxlr.engine.RangeTest`, a
      user's own), run per config inside the program; their numbers are data (changing them
      does not compile again) and their per-point records are in ``result.records``.
    ramp: per-step hyperparameters shared by every config, ``{name: (steps,) values}``: the
      optimizer reads ``hparams[name]`` as the value of the current step (the range test's
      growing learning rate). Not combined with ``start_from``.
    key: the base PRNG key: an int, a raw key (``jax.random.PRNGKey``) or a typed key
      (``jax.random.key``).
    callback: called on the host after every chunk with a :class:`ChunkEvent` (dict access
      such as ``event["step"]`` works too); it may return a :class:`Control` to stop configs,
      set a slot's hyperparameters or copy one slot's state into another, without recompiling,
      or ``True`` to end the sweep there (what was not run is NaN, ``stop_reason="not_run"``).
      The control is applied before the chunk's checkpoint is committed; an exception raised
      in the callback propagates, and a sweep with a ``checkpoint_dir`` resumes after the last
      committed chunk.
    adapt: an adaptive strategy of :mod:`optaxlr.adapt` (successive halving, Hyperband, PBT),
      applied after every chunk; what it did is in ``info["adapt"]``. Its decisions are
      committed with every checkpointed chunk (``Execution(checkpoint_dir=)``), so an adaptive
      sweep resumes after a kill with the same decisions. Not combined with a ``callback`` that
      returns a Control.
    start_from: a result of a sweep with ``Execution(keep_params=True)`` and the same configs
      (count and order) and seeds: every run continues from its kept parameters, optimizer state
      and model state, its steps numbered on from the previous sweep's (schedules, the minibatch
      order and the model keys continue; rules such as early stopping start afresh). The
      hyperparameters, the batch size (an axis or not) and the optimizer's settings may
      change; the optimizer state's structure may not. Growing the batch instead of decaying
      the rate (Smith et al. 2018) is one sweep per phase.
    noise_scale: record the gradient noise scale ``B_simple = tr(Sigma) / |G|^2``
      (McCandlish, Kaplan, Amodei et al., `An Empirical Model of Large-Batch Training
      <https://arxiv.org/abs/1812.06162>`_, 2018) of every run at every evaluation, as the
      metric ``"train/noise_scale"`` (with ``"train/noise_tr_sigma"``, ``"train/noise_g2"``
      and the raw statistics ``"train/noise_spread"``, ``"train/noise_big_norm2"``, all
      ``(seeds, configs, evaluations)``). Estimator: the paper's unbiased two-batch-size one
      (Appendix A), inside the compiled program, once per evaluation, at the evaluated
      parameters and outside the steps (the training steps are the same program as without
      it): the minibatch of the last step before the evaluation (``B`` examples) is split
      into ``k`` parts of ``B_small`` (:func:`optaxlr.engine.noise_parts`:
      ``k <= 4``, e.g. 4 x 32 for ``B = 128``) whose gradients are taken under ``vmap``; the
      spread of the parts' gradients around their mean estimates ``tr(Sigma)`` and the mean's
      squared norm ``|G|^2 + tr(Sigma) c(B_big)``, with the finite-population ``c(B) = (N - B) /
      ((N - 1) B)`` (``1 / B`` for a model with random streams or a host-fed stream). Both
      are smoothed along the evaluations with a bias-corrected moving average (decay 0.9,
      the variance of about 19 evaluations averaged; the paper smooths the same two
      quantities) and solved for ``B_simple``: at fixed parameters, after 60 evaluations,
      within 10% of the exact value on digits' softmax regression and a small MLP (B = 128;
      tests/test_noise_sweep.py), while the smoothing lags a curve that moves by more than
      a few percent per ten evaluations. Why not per-example gradients: they cost ``B``
      gradient copies per run and are undefined for BatchNorm; the parts cost about 1.4 training steps per
      evaluation on the CPU (``1.4 / eval_every`` of the run) and ``k`` gradient copies.
      Unbiased for ``tr(Sigma)`` and ``|G|^2`` at fixed parameters; ``B_simple`` is their
      ratio, biased where ``|G|^2`` is not resolved (``B_simple >> B``: the estimate of
      ``|G|^2`` is then noisy, may be ``<= 0``, and ``B_simple`` is ``inf``). Its spread
      shrinks with the averaging: use more evaluations or larger batches for a sharper
      curve, or re-smooth the raw statistics (:func:`optaxlr.engine.noise_metrics`). The
      gradient is the task's loss's (not ``objective``'s); a BatchNorm model normalises each
      part with its own batch statistics (as each device of data-parallel training does).
      Every batch size must be ``>= 2``. Default ``False``: nothing is computed and the
      program is the same as before.
    execution: how to run (an :class:`optaxlr.Execution`: devices, max_group_size, vectorize,
      eval_batch_size, compute_dtype, checkpoint_dir, progress, keep_params, update_ratio);
      default ``Execution()``.

  Axes the core reads itself: ``batch_size`` (each config trains with its own minibatch size,
  inside the same program; a row equals a sweep at that fixed size) and ``fold``
  (``search.folds(k)``: config of fold ``i`` trains on :func:`fold_split` ``(N, k, i)``'s
  training part and is evaluated on its held-out part, the split ``"fold"``; a row equals a
  sweep of the task on that split). The optimizer and objective may read them too (the
  linear scaling rule: ``h["lr"] * h["batch_size"] / 256``).

  A task whose ``train`` is a factory ``seed -> iterator of batches`` is fed from the host:
  each seed's stream feeds every config of the seed, ``batch_size`` batches checked (keys,
  shapes, dtypes, finite, labels in range) and stacked per chunk, read ahead while the device
  computes. With several processes (``jax.distributed``) each process reads its own streams:
  a digest of every chunk's batches is compared across processes and batches that differ are
  refused, naming the chunk (every config trains on the same global batch; the configs, not
  the data, are sharded over the processes). A ``checkpoint_dir`` must then be one folder for
  every process (a shared file system; checked when the sweep opens it).

  Hyperparameter values are checked before anything is compiled: finite, within float32
  (without x64), and no two configs that differ only below float32's resolution (they would
  train identically). ``steps`` (from ``start_from``'s step on) may not pass ``2**31 - 1``, the
  int32 step counter of the program and of optax.

  Returns:
    A :class:`SweepResult` labelled by hyperparameter values.

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search
    >>> task = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
    >>> space = search.grid(lr=[1e-3, 1e-2], wd=[0.0, 1e-3]) * search.seeds(2)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], weight_decay=h["wd"]),
    ...                     space, steps=20, batch_size=16, eval_every=10,
    ...                     execution=optaxlr.Execution(progress=False))
    >>> res.metrics["val/loss"].shape  # (seeds, configs, evaluations)
    (2, 4, 2)
    >>> sorted(res.best("val/loss")["hparams"])
    ['lr', 'wd']
    >>> str(res.stop_reason[0, 0])
    'completed'
    >>> import tempfile, os
    >>> path = res.save(os.path.join(tempfile.mkdtemp(), "r.npz"))
    >>> optaxlr.load(path).to_xarray()["val/loss"].dims
    ('seed', 'lr', 'wd', 'eval_step')
  """
  fn = "sweep"
  if space is None:  # one config, no hyperparameter axes (e.g. a ramp only)
    seeds_l = seed_list(fn, 1 if seeds is None else seeds)
  else:
    space, seeds_l = split_seeds(fn, space, seeds, folds_ok=True)
  axes = () if space is None else space.names
  steps = check_int(fn, "steps", steps, 1)
  check_step_range(fn, steps)
  from optaxlr.tasks import Task

  if not isinstance(task, Task):
    raise TypeError(f"{fn}: task must be an optaxlr.Task, got {type(task).__name__}")
  execution = as_execution(fn, execution)
  devices = execution.device_list()
  eval_every, sync_every, log_every = intervals(fn, steps, eval_every, sync_every, log_every)
  _check_snapshots(fn, execution, steps, sync_every)
  if callback is not None and not callable(callback):
    raise TypeError(f"{fn}: callback must be callable, got {type(callback).__name__}")
  if not callable(optimizer):
    raise TypeError(f"{fn}: optimizer must be a function hparams -> optax.GradientTransformation")
  if objective is not None and not callable(objective):
    raise TypeError(f"{fn}: objective must be a function (loss, hparams) -> loss")
  key = as_key(fn, key)
  if not isinstance(noise_scale, bool):
    raise TypeError(f"{fn}: noise_scale must be a bool (True records 'train/noise_scale' at every "
                    f"evaluation), got noise_scale={noise_scale!r}")
  ramp_np = _check_ramp(fn, ramp, steps, axes)
  if ramp_np and start_from is not None:
    raise ValueError(f"{fn}: ramp= does not combine with start_from= (a ramp is indexed by the "
                     "steps of this sweep)")

  from optaxlr import search as _search  # a sibling layer below the engine
  # A string (categorical) axis runs as an int32 index into space.categories[name]; the
  # optimizer and the objective read it as a search.Categorical (see search.switch).
  categories = {} if space is None else space.categories
  columns = {} if space is None else space.columns
  hp_np = _search.encode({k: np.asarray(v) for k, v in columns.items()}, categories)
  optimizer = _search.with_categories(optimizer, categories)
  objective = _search.with_categories(objective, categories)
  n_cfg = 1 if space is None else len(space)
  check_hparams(fn, hp_np, n_cfg)
  check_distinct(fn, hp_np, n_cfg)
  hp0 = {**{k: v[0] for k, v in hp_np.items()}, **{k: v[0] for k, v in ramp_np.items()}}
  task.validate(hparams=hp0)
  layout = _layout(fn, task, space, hp_np, batch_size, seeds_l, n_cfg)
  batch_size = layout["batch_size"]
  noise_sizes = _noise_sizes(fn, task, layout, n_cfg) if noise_scale else None
  probe = Probe(task, hp0)
  train_shapes = check_loss(fn, probe, batch_size, train_like=layout["train_like"])
  splits = tuple(task.eval)
  extra_splits = {"fold": {k: v[:2] for k, v in task.train.items()}} if layout["fold_splits"] else {}
  names = metric_names(fn, probe, splits, extra_splits)
  metric = _metric_for(fn, metric, plateau, early_stopping, names)
  shapes = read_axes(fn, probe, optimizer, objective, [{}] if space is None else list(space),
                     (*axes, *ramp_np),
                     extra={k: v[0] for k, v in ramp_np.items()}, batch=train_shapes)
  step_rules, eval_rules = _check_rules(fn, rules, early_stopping, plateau, names, shapes["opt_state"])
  vectorize = _vectorize(fn, execution.vectorize, devices, probe, train_shapes, layout)
  if adapt is not None:
    _check_adapt(fn, adapt, names, execution, layout, start_from)
    # ``categories`` (the names of categorical axes) is newer than the protocol: a user's own
    # strategy whose start() does not take it is called without it.
    params = inspect.signature(adapt.start).parameters
    takes = "categories" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    adapt.start(n_configs=n_cfg, steps=steps, eval_every=eval_every, sync_every=sync_every,
                hparams=hp_np, **({"categories": categories} if takes else {}))
    callback = _with_adapt(fn, adapt, callback)
  start_step, init_from = 0, None
  if start_from is not None:
    start_step, init_from = _check_start_from(fn, start_from, n_cfg, seeds_l, shapes, probe)
  check_step_range(fn, steps, start_step, sync_every)
  plan = _driver.Plan(
      fn=fn, task=task, optimizer=optimizer, objective=objective, hparams=hp_np, ramp=ramp_np,
      seeds=seeds_l, key=key, steps=steps, batch_size=batch_size, eval_every=eval_every,
      sync_every=sync_every, log_every=log_every, eval_splits=splits, monitor=metric,
      plateau=bool(plateau), step_rules=step_rules, eval_rules=eval_rules,
      update_ratio=execution.update_ratio, devices=devices,
      max_group_size=execution.max_group_size, checkpoint_dir=execution.checkpoint_dir,
      progress=execution.progress, callback=callback, keep_params=execution.keep_params,
      compact=adapt is not None and not hasattr(adapt, "interval"), one_group=adapt is not None,
      compact_sizes=getattr(adapt, "compact_sizes", "exact"),
      vectorize=vectorize, eval_batch=execution.eval_batch_size,
      compute_dtype=execution.compute_dtype, segment_of=layout["segment_of"],
      segment_defs=layout["segment_defs"], fold_splits=layout["fold_splits"],
      batches=task.train if task.host_fed else None, batch_spec=layout["batch_spec"],
      start_step=start_step, init_from=init_from, host_state=adapt,
      resume_unverified_code=execution.resume_unverified_code, noise_scale=noise_scale,
      keep_at=tuple(execution.keep_params_at),
  )
  if execution.checkpoint_dir is not None:
    plan.fingerprint = base_fingerprint(
        fn, task, optimizer, objective, shapes, hp=hp_np, seeds=seeds_l, key=key, steps=steps,
        batch_size=batch_size, eval_every=eval_every, sync_every=sync_every, log_every=log_every,
        monitor=metric, plateau=bool(plateau), plateau_stop=plateau is True,
        update_ratio=execution.update_ratio,
        early_stopping=repr(early_stopping), keep_params=execution.keep_params,
        devices=len(devices), processes=jax.process_count(), vectorize=vectorize,
        eval_batch_size=execution.eval_batch_size, compute_dtype=execution.compute_dtype,
        start_step=start_step, **({"noise_scale": True} if noise_scale else {}),
        start_from=None if init_from is None else _fingerprint.data_id(
            {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(init_from))}),
        **({"rules": repr(rules), "ramp": _fingerprint.data_id(ramp_np)} if (rules or ramp_np) else {}),
        **({"adapt": _adapt_identity(adapt)} if adapt is not None else {}),
    )
  out = _driver.run(plan)
  return _result(space, seeds_l, out, adapt, n_cfg, steps, noise_sizes, {
      "task": getattr(task, "name", ""), "batch_size": batch_size, "eval_every": eval_every,
      "start_step": start_step, "vectorize": vectorize,
      "eval_batch_size": execution.eval_batch_size, "compute_dtype": execution.compute_dtype,
      "host_fed": task.host_fed, "sync_every": sync_every, "log_every": log_every})


def _noise_sizes(fn: str, task, layout: dict, n_cfg: int) -> tuple[np.ndarray, np.ndarray]:
  """``(batch size, training-set size)`` per config for ``noise_scale=True``, checked: the
  size is ``inf`` (an infinite population) for a host-fed stream or a model with random
  streams (fresh Dropout masks make the per-example gradients random)."""
  if layout["segment_of"] is None:
    bsz = np.full(n_cfg, layout["batch_size"], np.int64)
    pop = np.full(n_cfg, math.inf if task.host_fed else float(task.n_train))
  else:
    defs = layout["segment_defs"]
    bsz = np.array([defs[i][0] for i in layout["segment_of"]], np.int64)
    pop = np.array([float(len(layout["fold_splits"][defs[i][1]][0])) if defs[i][1] >= 0
                    else float(task.n_train) for i in layout["segment_of"]])
  if task.info.get("rng_streams"):
    pop[:] = math.inf
  if np.any(bsz < 2):
    bad = int(np.flatnonzero(bsz < 2)[0])
    raise ValueError(f"{fn}: noise_scale=True splits each minibatch into at least 2 parts, so "
                     f"every batch size must be >= 2, got batch_size={int(bsz[bad])} (config {bad})")
  return bsz, pop


def _snapshot_result(space, seeds_l, out, metrics, k: int, snap, settings) -> SweepResult:
  """The first ``k`` steps of a sweep with the state kept after them, as a sweep of ``k``
  steps with ``keep_params=True`` returns it (``Execution(keep_params_at=)``)."""
  params, opt_state, model_state, stopped_at, reason = snap
  upto = out.eval_steps <= settings["start_step"] + k
  diverged = reason == _rules.reason_code("diverged")
  return SweepResult(
      space=space, seeds=np.asarray(seeds_l),
      batch_loss=out.loss[..., : k // settings["log_every"]].copy(),
      metrics={name: v[..., upto].copy() for name, v in metrics.items()},
      eval_steps=out.eval_steps[upto].copy(),
      diverged_at=np.where(diverged, stopped_at, -1), stopped_at=stopped_at,
      stop_reason=np.asarray(_rules.stop_reasons())[reason],
      params=params, opt_state=opt_state, model_state=model_state,
      info={**settings, "steps": k, "snapshot_of_steps": out.info["steps"]},
  )


def _result(space, seeds_l, out, adapt, n_cfg, steps, noise_sizes, settings) -> SweepResult:
  """The driver's output labelled as a :class:`SweepResult`."""
  metrics = dict(out.metrics)
  if out.update_ratio is not None:
    metrics["train/update_ratio"] = out.update_ratio
  if out.noise is not None:
    noise = noise_metrics(out.noise, *noise_sizes)
    metrics.update({k: v.astype(out.loss.dtype) for k, v in noise.items()})
  diverged = out.reason == _rules.reason_code("diverged")
  adapt_info = {}
  if adapt is not None:
    trained = np.where(out.stopped_at >= 0, out.stopped_at, steps)
    adapt_info = {"adapt": {**adapt.report(),
                            "config_steps": float(trained.mean(axis=0).sum()),
                            "full_config_steps": float(n_cfg * steps)}}
  records = {**{f"step/{k}": v for k, v in out.step_records.items()},
             **{f"eval/{k}": v for k, v in out.eval_records.items()}}
  snapshots = {k: _snapshot_result(space, seeds_l, out, metrics, k, snap, settings)
               for k, snap in out.snapshots.items()}
  return SweepResult(
      space=space,
      seeds=np.asarray(seeds_l),
      batch_loss=out.loss,
      metrics=metrics,
      eval_steps=out.eval_steps,
      diverged_at=np.where(diverged, out.stopped_at, -1),
      stopped_at=out.stopped_at,
      stop_reason=np.asarray(_rules.stop_reasons())[out.reason],
      params=out.params,
      opt_state=out.opt_state,
      model_state=out.model_state,
      records=records or None,
      snapshots=snapshots or None,
      info={
          **settings,
          **out.info,
          **adapt_info,
          **({"steering": out.steering, "hparams_final": {k: v.tolist() for k, v in out.hparams.items()}}
             if out.steering else {}),
      },
  )
