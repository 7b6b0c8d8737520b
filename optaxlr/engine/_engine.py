"""The sweep engine: every config x seed of a search space trained as one compiled program.

Layout of the carried state: every leaf has two leading axes, ``(seed, config)``. The config
axis is an inner ``vmap`` whose minibatch is broadcast (read once for all configs of a seed);
the seed axis is an outer ``vmap`` whose minibatch differs per seed. Steps run under
``lax.scan`` in chunks of ``eval_every`` steps; between chunks the host evaluates, reports
progress, checkpoints and stops early, always calling the same compiled chunk function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxlr.engine._result import SweepResult

PyTree = Any
Hyperparams = Mapping[str, jax.Array]

__all__ = ["sweep", "batch_indices", "run_keys"]


# ----------------------------------------------------------------------------------------
# Data order and keys (public: a standalone run reproduces a row of a sweep with these).


def run_keys(key: jax.Array | int, seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
  """The ``(init_key, data_key)`` of one seed of a sweep.

  ``init_key = fold_in(fold_in(key, seed), 0)`` initialises the parameters, ``data_key =
  fold_in(fold_in(key, seed), 1)`` orders the minibatches. Every config of a seed shares both
  (common random numbers), so differences between configs are due to the hyperparameters.

  Examples:
    >>> init_key, data_key = run_keys(0, seed=3)
    >>> init_key.shape, data_key.shape
    ((2,), (2,))
  """
  if isinstance(key, int):
    key = jax.random.PRNGKey(key)
  k = jax.random.fold_in(key, seed)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def batch_indices(
    data_key: jax.Array, step: jax.Array | int, num_examples: int, batch_size: int
) -> jax.Array:
  """Indices of the minibatch used at ``step``: epochs of shuffling without replacement.

  Epoch ``e = step // (num_examples // batch_size)`` is a permutation drawn from
  ``fold_in(data_key, e)``; the step takes the next ``batch_size`` indices of it (the
  remainder of each epoch is dropped, as ``drop_last=True``).

  Examples:
    >>> import jax
    >>> idx = batch_indices(jax.random.PRNGKey(0), 0, num_examples=10, batch_size=4)
    >>> idx.shape
    (4,)
  """
  per_epoch = num_examples // batch_size
  step = jnp.asarray(step)
  epoch, pos = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


# ----------------------------------------------------------------------------------------
# The carried state.


class _Carry(NamedTuple):
  params: PyTree  # leaves (S, C, ...)
  opt_state: PyTree  # leaves (S, C, ...)
  alive: jax.Array  # bool (S, C): neither diverged nor stopped
  diverged_at: jax.Array  # int32 (S, C), -1 while finite
  stopped_at: jax.Array  # int32 (S, C), -1 unless early-stopped
  best: jax.Array  # (S, C) best monitored value so far (early stopping)
  best_step: jax.Array  # int32 (S, C)
  wait: jax.Array  # int32 (S, C) evaluations without improvement
  last_value: jax.Array  # (S, C) the monitored metric at the latest evaluation
  fresh: jax.Array  # bool (): the next step is the first after an evaluation


def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@dataclasses.dataclass(frozen=True)
class EarlyStop:
  """Per-config early stopping on an evaluated metric (Keras ``EarlyStopping`` rules).

  A config whose ``metric`` has not improved by more than ``min_delta`` for ``patience``
  evaluations is frozen (its parameters stop changing, its later evaluations repeat its last
  state) and marked stopped at that step. ``mode="max"`` for accuracies.

  Examples:
    >>> stop = EarlyStop(metric="val/accuracy", patience=3, mode="max")
    >>> stop.patience
    3
  """

  metric: str = "val/loss"
  patience: int = 5
  min_delta: float = 0.0
  mode: str = "min"


# ----------------------------------------------------------------------------------------
# The program.


def _build_chunk_fn(
    task,
    optimizer: Callable[[Hyperparams], optax.GradientTransformation],
    objective: Callable[[jax.Array, Hyperparams], jax.Array] | None,
    *,
    batch_size: int,
    chunk_steps: int,
    eval_splits: Mapping[str, Mapping[str, jax.Array]],
    monitor: str | None,
    monitor_sign: float,
    plateau_value: bool,
    early_stop: EarlyStop | None,
):
  """Returns ``chunk(carry, hparams, data_keys, start) -> (carry, batch_losses, metrics)``."""
  train = task.train
  num_examples = int(jax.tree.leaves(train)[0].shape[0])

  def loss_fn(params, batch, hp):
    loss = task.loss(params, batch)
    return loss if objective is None else objective(loss, hp)

  def config_step(params, opt_state, alive, div_at, hp, batch, t, value, fresh):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, hp)
    tx = optax.with_extra_args_support(optimizer(hp))
    extra = {"value": value, "evaluate": fresh} if plateau_value else {}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    ok = jnp.isfinite(loss) & _all_finite(updates)
    keep = alive & ok
    # Freeze by masking the update (fused into the parameter add) rather than selecting whole
    # parameter and optimizer-state trees: a frozen run's optimizer state may still move, its
    # parameters never do. Non-finite updates are caught here; an update that is finite but
    # overflows the parameters shows up as a non-finite loss at the next step.
    params = jax.tree.map(
        lambda p, u: (p + jnp.where(keep, u, jnp.zeros_like(u))).astype(p.dtype), params, updates
    )
    div_at = jnp.where(alive & ~ok, t, div_at)
    return params, opt_state, keep, div_at, jnp.where(alive, loss, jnp.nan)

  configs_step = jax.vmap(config_step, in_axes=(0, 0, 0, 0, 0, None, None, 0, None))
  seeds_step = jax.vmap(configs_step, in_axes=(0, 0, 0, 0, None, 0, None, 0, None))

  def evaluate(params):
    out = {}
    for split, data in eval_splits.items():
      per_cfg = jax.vmap(jax.vmap(lambda p: task.metrics(p, data)))(params)
      for name, val in per_cfg.items():
        out[f"{split}/{name}"] = val
    return out

  def chunk(carry: _Carry, hparams, data_keys, start):
    def body(c: _Carry, t):
      idx = jax.vmap(lambda k: batch_indices(k, t, num_examples, batch_size))(data_keys)
      batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), train)  # (S, B, ...)
      value = jnp.where(c.fresh, c.last_value, jnp.nan)
      params, opt_state, alive, div_at, loss = seeds_step(
          c.params, c.opt_state, c.alive, c.diverged_at, hparams, batch, t, value, c.fresh
      )
      c = c._replace(
          params=params, opt_state=opt_state, alive=alive, diverged_at=div_at,
          fresh=jnp.array(False),
      )
      return c, loss

    steps = start + jnp.arange(chunk_steps, dtype=jnp.int32)
    carry, losses = jax.lax.scan(body, carry, steps)
    metrics = evaluate(carry.params)
    end = start + chunk_steps
    if monitor is not None:
      value = metrics[monitor]
      carry = carry._replace(last_value=value, fresh=jnp.array(True))
      if early_stop is not None:
        signed = monitor_sign * value
        improved = signed < carry.best - early_stop.min_delta
        best = jnp.where(improved, signed, carry.best)
        best_step = jnp.where(improved, end, carry.best_step)
        wait = jnp.where(improved, 0, carry.wait + 1)
        stop = carry.alive & (wait >= early_stop.patience)
        carry = carry._replace(
            best=best, best_step=best_step, wait=wait,
            alive=carry.alive & ~stop,
            stopped_at=jnp.where(stop, end, carry.stopped_at),
        )
    return carry, jnp.moveaxis(losses, 0, -1), metrics

  return chunk


# ----------------------------------------------------------------------------------------
# Host side: validation, memory, groups, checkpoints.


def _check_hparams(space_arrays: Mapping[str, np.ndarray], n: int) -> None:
  for name, arr in space_arrays.items():
    if arr.shape[:1] != (n,):
      raise ValueError(f"sweep: hyperparameter {name!r} has shape {arr.shape}, expected ({n}, ...)")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      bad = int(np.flatnonzero(~np.isfinite(arr))[0])
      raise ValueError(f"sweep: hyperparameter {name!r} is not finite in config {bad}: {arr[bad]}")
    lname = name.lower()
    if lname in ("lr", "learning_rate", "peak_lr", "max_lr", "base_lr") or lname.endswith("_lr"):
      if np.any(arr <= 0):
        bad = int(np.flatnonzero(arr <= 0)[0])
        raise ValueError(
            f"sweep: {name} must be > 0, config {bad} has {name}={arr[bad].item()!r}"
        )


def _device_memory_bytes() -> int | None:
  dev = jax.devices()[0]
  try:
    stats = dev.memory_stats()
  except Exception:  # noqa: BLE001 -- backends without memory stats
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return None


def _tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _fingerprint(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
  leaves = jax.tree.leaves(tree)
  return {f"{prefix}{i}": np.asarray(x) for i, x in enumerate(leaves)}


def _unflatten(prefix: str, like, data) -> PyTree:
  treedef = jax.tree.structure(like)
  return jax.tree.unflatten(treedef, [jnp.asarray(data[f"{prefix}{i}"]) for i in range(treedef.num_leaves)])


class _Progress:
  def __init__(self, total: int, enabled: bool, desc: str):
    self._bar = None
    if enabled:
      try:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="step", leave=True)
      except ImportError:  # pragma: no cover
        self._bar = None

  def update(self, n: int, **post):
    if self._bar is not None:
      self._bar.update(n)
      if post:
        self._bar.set_postfix(post, refresh=False)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _split_seeds(space, seeds) -> tuple[Any, list[int]]:
  """The space without its "seed" axis, and the seed values (from the space or ``seeds``)."""
  from optaxlr import search  # a sibling layer below the engine

  if isinstance(space, Mapping):
    space = search.zip(**space)
  if not isinstance(space, search.Space):
    raise TypeError(
        f"sweep: space must be an optaxlr.search.Space or a dict of 1-D arrays, got {type(space)!r}"
    )
  if search.FOLD in space.dims:
    raise ValueError(
        "sweep: a 'fold' axis is not supported yet; split the data into folds in the task and"
        " sweep each fold's task"
    )
  if search.SEED in space.dims:
    if seeds is not None:
      raise ValueError("sweep: the space has a 'seed' axis; do not also pass seeds=")
    seed_axis = next(a for a in space.axes if a.dim == search.SEED)
    rest = [a for a in space.axes if a.dim != search.SEED]
    if not rest:
      raise ValueError("sweep: the space holds only seeds; add at least one hyperparameter axis")
    return search.Space(rest, space.fixed), [int(v) for v in seed_axis.values[search.SEED]]
  if seeds is None:
    seeds = 1
  if isinstance(seeds, int):
    if seeds < 1:
      raise ValueError(f"sweep: seeds must be >= 1 or a non-empty list, got seeds={seeds!r}")
    return space, list(range(seeds))
  seed_list = [int(v) for v in seeds]
  if not seed_list or len(set(seed_list)) != len(seed_list):
    raise ValueError(f"sweep: seeds must be a non-empty list of distinct ints, got seeds={seeds!r}")
  return space, seed_list


def sweep(
    task,
    optimizer: Callable[[Hyperparams], optax.GradientTransformation],
    space,
    *,
    steps: int,
    batch_size: int,
    seeds: int | Sequence[int] | None = None,
    eval_every: int | None = None,
    objective: Callable[[jax.Array, Hyperparams], jax.Array] | None = None,
    monitor: str | None = None,
    monitor_mode: str = "min",
    plateau: bool = False,
    early_stopping: EarlyStop | None = None,
    key: int | jax.Array = 0,
    max_group_size: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    keep_params: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
) -> SweepResult:
  """Trains every config of ``space`` (x ``seeds``) on ``task`` in one compiled program.

  ``optimizer(hparams)`` builds the optax transformation of one config from a dict of scalar
  (traced) hyperparameters; it is called inside ``jit`` and ``vmap``, once per compilation.
  Hyperparameters may also reach the loss through ``objective(loss, hparams)`` (e.g.
  ``lambda loss, h: optaxlr.flood(loss, h["flood"])``).

  Row ``i`` of the result equals a standalone run of config ``i`` with the keys of
  :func:`run_keys` and the minibatch order of :func:`batch_indices`: in float64 on the CPU to a
  few ulps (most steps bitwise; XLA's batched matmuls and reductions may sum in another order
  than a single run's), within rounding in float32. A config whose loss (or parameters) turn non-finite is frozen
  and marked diverged at that step; it never changes another config's numbers.

  Args:
    task: an :class:`optaxlr.Task` (init, loss, metrics, train and eval data).
    optimizer: ``hparams -> optax.GradientTransformation``.
    space: an :mod:`optaxlr.search` space (or a dict of equal-length 1-D arrays).
    steps: optimizer steps per run (rounded up to a multiple of ``eval_every``).
    batch_size: minibatch size (<= number of training examples).
    seeds: number of seeds (0..n-1) or the list of seed values; default 1, or the values of
      the space's "seed" axis (``space * search.seeds(3)``).
    eval_every: evaluate every this many steps; also the length of one compiled chunk.
      Default: ``steps`` (one evaluation at the end) split into at most 10 chunks.
    objective: optional ``(loss, hparams) -> loss`` (flooding, penalties).
    monitor: the metric (``"val/loss"``...) fed to ``value=`` of the optimizer (when
      ``plateau``) and watched by ``early_stopping``. Default: ``early_stopping.metric`` or
      ``"val/loss"`` when ``plateau``.
    monitor_mode: "min" or "max" for ``early_stopping``.
    plateau: pass ``value=<monitor at the last evaluation>, evaluate=True`` to the optimizer on
      the first step after each evaluation and ``evaluate=False`` (``value`` NaN) on the others:
      the convention of :func:`optaxlr.reduce_on_plateau`, which then counts one "epoch" per
      evaluation as PyTorch's ``ReduceLROnPlateau`` stepped after each validation.
    early_stopping: per-config early stopping (an :class:`EarlyStop`).
    key: the base PRNG key (int or key).
    max_group_size: train at most this many configs at once; more are split into groups that
      reuse the same compiled program. Default: as many as fit in half of the device memory.
    checkpoint_dir: save the state after every chunk there and resume from it.
    progress: show a progress bar (tqdm) with the ETA.
    devices: shard the config axis over these devices (default: all local devices).
    keep_params: return the final parameters (leaves with leading (seed, config) axes).
    callback: called on the host after every chunk (after its checkpoint is written) with
      ``{"group", "chunk", "step", "configs", "metrics", "diverged_at", "stopped_at"}`` for
      the configs of the current group; returning ``True`` stops the sweep there (the result
      then holds NaN for what was not run). An exception raised in it propagates, and a sweep
      with a ``checkpoint_dir`` resumes after the last finished chunk.

  Returns:
    A :class:`SweepResult` labelled by hyperparameter values.

  Examples:
    >>> import optaxlr
    >>> from optaxlr import search
    >>> task = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
    >>> space = search.grid(lr=[1e-3, 1e-2], wd=[0.0, 1e-3]) * search.seeds(2)
    >>> res = optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], h["wd"]), space,
    ...                     steps=20, batch_size=16, eval_every=10, progress=False)
    >>> res.metrics["val/loss"].shape  # (seeds, configs, evaluations)
    (2, 4, 2)
    >>> sorted(res.best("val/loss")["hparams"])
    ['lr', 'wd']
    >>> import tempfile, os
    >>> path = res.save(os.path.join(tempfile.mkdtemp(), "r.npz"))
    >>> optaxlr.load(path).to_xarray()["val/loss"].dims
    ('seed', 'lr', 'wd', 'eval_step')
  """
  t_start = time.perf_counter()
  space, seed_list = _split_seeds(space, seeds)
  hp_np = {k: np.asarray(v) for k, v in space.columns.items()}
  n_cfg = len(space)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"sweep: steps must be an int >= 1, got steps={steps!r}")
  n_train = int(jax.tree.leaves(task.train)[0].shape[0])
  if not isinstance(batch_size, int) or not 1 <= batch_size <= n_train:
    raise ValueError(
        f"sweep: batch_size must be an int in [1, {n_train}] (the training set size),"
        f" got batch_size={batch_size!r}"
    )
  if eval_every is None:
    eval_every = math.ceil(steps / min(10, steps))
  if not isinstance(eval_every, int) or eval_every < 1:
    raise ValueError(f"sweep: eval_every must be an int >= 1, got eval_every={eval_every!r}")
  if monitor_mode not in ("min", "max"):
    raise ValueError(f"sweep: monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
  if early_stopping is not None:
    monitor = monitor or early_stopping.metric
    monitor_mode = early_stopping.mode
    if early_stopping.mode not in ("min", "max"):
      raise ValueError(f"sweep: early_stopping.mode must be 'min' or 'max', got {early_stopping.mode!r}")
    if early_stopping.patience < 1:
      raise ValueError(f"sweep: early_stopping.patience must be >= 1, got {early_stopping.patience}")
  if plateau and monitor is None:
    monitor = "val/loss"
  n_chunks = math.ceil(steps / eval_every)
  steps = n_chunks * eval_every

  _check_hparams(hp_np, n_cfg)
  task.validate()
  eval_splits = dict(task.eval)
  metric_shapes = {}
  params_shape = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  for split, data in eval_splits.items():
    ms = jax.eval_shape(task.metrics, params_shape, data)
    for name, s in ms.items():
      if s.shape != ():
        raise ValueError(f"sweep: task.metrics must return scalars, {split}/{name} has shape {s.shape}")
      metric_shapes[f"{split}/{name}"] = s
  if monitor is not None and monitor not in metric_shapes:
    raise ValueError(
        f"sweep: monitor={monitor!r} is not an evaluated metric; available: {sorted(metric_shapes)}"
    )
  # Build every config's optimizer once on the host with concrete values: the transforms'
  # own eager validation then rejects bad settings before anything is traced.
  for i, config in enumerate(space):
    try:
      optimizer(config)
    except (ValueError, TypeError) as e:
      raise ValueError(f"sweep: config {i} {config} is invalid: {e}") from e
  hp_one = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in hp_np.items()}
  opt_shape = jax.eval_shape(lambda p, h: optimizer(h).init(p), params_shape, hp_one)
  batch_shape = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), task.train
  )
  try:
    loss_shape = jax.eval_shape(task.loss, params_shape, batch_shape)
  except Exception as e:  # noqa: BLE001 -- re-raised with context
    raise ValueError(f"sweep: task.loss fails on a batch of {batch_size} training examples: {e}") from e
  if loss_shape.shape != ():
    raise ValueError(f"sweep: task.loss must return a scalar, got shape {loss_shape.shape}")

  # Memory: parameters, gradients, updates and optimizer state per config.
  per_cfg = 3 * _tree_bytes(params_shape) + _tree_bytes(opt_shape)
  per_cfg_total = per_cfg * len(seed_list)
  mem = _device_memory_bytes()
  if mem is not None and per_cfg_total > mem // 2:
    raise ValueError(
        f"sweep: one config needs about {per_cfg_total / 2**20:.1f} MiB for {len(seed_list)} seeds"
        f" (parameters, gradients, updates, optimizer state), more than half of the device memory"
        f" ({mem / 2**20:.0f} MiB); use fewer seeds or a smaller model"
    )
  devices = list(devices) if devices is not None else jax.local_devices()
  n_dev = len(devices)
  if max_group_size is None:
    fit = n_cfg if mem is None else max(1, (mem // 2) // max(per_cfg_total, 1))
    max_group_size = min(n_cfg, fit)
  group = min(n_cfg, max_group_size)
  group = max(n_dev, math.ceil(group / n_dev) * n_dev)  # a multiple of the device count
  n_groups = math.ceil(n_cfg / group)

  monitor_sign = -1.0 if monitor_mode == "max" else 1.0
  chunk = _build_chunk_fn(
      task, optimizer, objective, batch_size=batch_size, chunk_steps=eval_every,
      eval_splits=eval_splits, monitor=monitor, monitor_sign=monitor_sign,
      plateau_value=plateau, early_stop=early_stopping,
  )
  mesh = jax.sharding.Mesh(np.array(devices), ("config",))
  cfg_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "config"))
  hp_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("config"))
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  donate = (0,) if devices[0].platform != "cpu" else ()  # the CPU backend cannot donate
  chunk_jit = jax.jit(chunk, donate_argnums=donate)

  def shard_carry(carry):
    return jax.tree.map(
        lambda x: jax.device_put(x, cfg_sharding if x.ndim >= 2 else repl), carry
    )

  def init_carry(hparams, keys):
    def one(k, h):
      params = task.init(k)
      return params, optimizer(h).init(params)

    params, opt_state = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(keys, hparams)
    shape = (len(seed_list), group)
    dtype = jnp.result_type(float)
    return _Carry(
        params=params, opt_state=opt_state,
        alive=jnp.ones(shape, bool),
        diverged_at=jnp.full(shape, -1, jnp.int32),
        stopped_at=jnp.full(shape, -1, jnp.int32),
        best=jnp.full(shape, jnp.inf, dtype),
        best_step=jnp.full(shape, -1, jnp.int32),
        wait=jnp.zeros(shape, jnp.int32),
        last_value=jnp.full(shape, jnp.nan, dtype),
        fresh=jnp.array(False),
    )

  init_jit = jax.jit(init_carry)
  keys = jnp.stack([run_keys(key, s)[0] for s in seed_list])
  data_keys = jnp.stack([run_keys(key, s)[1] for s in seed_list])
  data_keys = jax.device_put(data_keys, repl)

  # Results buffers (host).
  n_s = len(seed_list)
  out_dtype = np.dtype(jnp.result_type(float))  # float32, or float64 under jax_enable_x64
  batch_loss = np.full((n_s, n_cfg, steps), np.nan, out_dtype)
  metrics = {m: np.full((n_s, n_cfg, n_chunks), np.nan, out_dtype) for m in metric_shapes}
  diverged_at = np.full((n_s, n_cfg), -1, np.int64)
  stopped_at = np.full((n_s, n_cfg), -1, np.int64)
  final_params = []

  ckpt = pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else None
  fp = _fingerprint({
      "hp": {k: v.tolist() for k, v in hp_np.items()}, "seeds": seed_list, "steps": steps,
      "batch_size": batch_size, "eval_every": eval_every, "task": getattr(task, "name", ""),
      "group": group, "key": key if isinstance(key, int) else np.asarray(key).tolist(),
      "objective": objective is not None, "plateau": plateau, "monitor": monitor,
      "early_stopping": dataclasses.asdict(early_stopping) if early_stopping else None,
  })
  done_groups, resume_state, resume_chunk = 0, None, 0
  if ckpt is not None:
    ckpt.mkdir(parents=True, exist_ok=True)
    meta_path = ckpt / "meta.json"
    if meta_path.exists():
      meta = json.loads(meta_path.read_text())
      if meta.get("fingerprint") != fp:
        raise ValueError(
            f"sweep: checkpoint_dir={str(ckpt)!r} holds a different sweep (its settings differ);"
            " use another folder or delete it"
        )
      with np.load(ckpt / "results.npz") as data:
        batch_loss[...] = data["batch_loss"]
        for m in metrics:
          metrics[m][...] = data[f"metric:{m}"]
        diverged_at[...] = data["diverged_at"]
        stopped_at[...] = data["stopped_at"]
      done_groups, resume_chunk = meta["group"], meta["chunk"]
      if resume_chunk > 0:
        resume_state = np.load(ckpt / "state.npz")

  compile_s = 0.0
  run_s = 0.0
  bar = _Progress(n_groups * steps, progress, desc=f"sweep {n_cfg}x{n_s}")
  bar.update(done_groups * steps + resume_chunk * eval_every)
  stop_all = False
  for g in range(done_groups, n_groups):
    if stop_all:
      break
    lo, hi = g * group, min((g + 1) * group, n_cfg)
    sel = np.concatenate([np.arange(lo, hi), np.full(group - (hi - lo), lo)])  # pad with a copy
    hp_g = jax.device_put({k: jnp.asarray(v[sel]) for k, v in hp_np.items()}, hp_sharding)
    carry = init_jit(hp_g, keys)
    first_chunk = 0
    if resume_state is not None and g == done_groups:
      carry = _unflatten("s", carry, resume_state)
      first_chunk = resume_chunk
    carry = shard_carry(carry)
    for c in range(first_chunk, n_chunks):
      start = jnp.int32(c * eval_every)
      t0 = time.perf_counter()
      if compile_s == 0.0:
        lowered = chunk_jit.lower(carry, hp_g, data_keys, start)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
      carry, losses, mets = compiled(carry, hp_g, data_keys, start)
      losses = np.asarray(losses)
      mets = {k: np.asarray(v) for k, v in mets.items()}
      run_s += time.perf_counter() - t0
      n_real = hi - lo
      batch_loss[:, lo:hi, c * eval_every:(c + 1) * eval_every] = losses[:, :n_real]
      for k, v in mets.items():
        metrics[k][:, lo:hi, c] = v[:, :n_real]
      diverged_at[:, lo:hi] = np.asarray(carry.diverged_at)[:, :n_real]
      for k in metrics:  # a diverged run has no metrics from its divergence on
        gone = diverged_at[:, lo:hi] >= 0
        metrics[k][:, lo:hi, c][gone] = np.nan
      stopped_at[:, lo:hi] = np.asarray(carry.stopped_at)[:, :n_real]
      alive = np.asarray(carry.alive)[:, :n_real]
      bar.update(eval_every, diverged=int((diverged_at >= 0).sum()))
      if ckpt is not None:
        last = c + 1 == n_chunks
        if not last:
          _save_npz(ckpt / "state.npz", _flatten("s", carry))
        _save_npz(ckpt / "results.npz", {
            "batch_loss": batch_loss, "diverged_at": diverged_at, "stopped_at": stopped_at,
            **{f"metric:{m}": v for m, v in metrics.items()},
        })
        nxt_g, nxt_c = (g + 1, 0) if last else (g, c + 1)
        (ckpt / "meta.json").write_text(json.dumps({"fingerprint": fp, "group": nxt_g, "chunk": nxt_c}))
      if callback is not None and callback({
          "group": g, "chunk": c, "step": (c + 1) * eval_every, "configs": (lo, hi),
          "metrics": {k: v[:, lo:hi, c] for k, v in metrics.items()},
          "diverged_at": diverged_at[:, lo:hi], "stopped_at": stopped_at[:, lo:hi],
      }) is True:
        stop_all = True
        break
      if not alive.any() and c + 1 < n_chunks:
        # Every config diverged or stopped: the rest of this group would only repeat them.
        for k in metrics:
          metrics[k][:, lo:hi, c + 1:] = metrics[k][:, lo:hi, c:c + 1]
        break
    if keep_params:
      final_params.append(jax.tree.map(lambda x: np.asarray(x)[:, : hi - lo], carry.params))
  bar.close()

  params_out = None
  if keep_params and final_params:
    params_out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *final_params)
  eval_steps = (np.arange(n_chunks) + 1) * eval_every
  return SweepResult(
      space=space,
      seeds=np.asarray(seed_list),
      batch_loss=batch_loss,
      metrics=metrics,
      eval_steps=eval_steps,
      diverged_at=diverged_at,
      stopped_at=stopped_at,
      params=params_out,
      info={
          "task": getattr(task, "name", ""),
          "steps": steps,
          "batch_size": batch_size,
          "eval_every": eval_every,
          "group_size": group,
          "groups": n_groups,
          "devices": n_dev,
          "compile_s": compile_s,
          "run_s": run_s,
          "total_s": time.perf_counter() - t_start,
      },
  )
