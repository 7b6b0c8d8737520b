"""The host loop around the one program: groups, chunks, checkpoints, progress and steering.

Every driver (``sweep``, ``lr_find``, ``lr_find_grid``) validates its own arguments, then
describes the run as a :class:`Plan` and calls :func:`run`. The loop:

1. sizes groups of configs from what the compiled program needs (``memory_analysis`` of the
   compiled chunk: arguments, outputs and temporaries, activations and evaluation included)
   against the device's memory;
2. runs the chunks of each group, always the same compiled executable (cached across calls);
3. after each chunk, records the numbers, hands a :class:`ChunkEvent` to the callback, applies
   the :class:`Control` it returns (stop runs, set a slot's hyperparameters, copy a slot's
   state into another) and commits the checkpoint (one atomic commit);
4. with several processes (``jax.distributed``) the config axis is sharded over the global
   mesh; every process gets the full result and process 0 writes the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxlr.engine import _core
from optaxlr.engine import _rules
from optaxlr.engine._checkpoint import CheckpointStore
from optaxlr.engine._data import key_data, model_base_key, run_keys

PyTree = Any

__all__ = ["Plan", "Output", "ChunkEvent", "Control", "run"]


@dataclasses.dataclass(frozen=True)
class ChunkEvent:
  """What the host loop tells a callback after each chunk (for the configs of one group).

  Indices in ``configs`` are global config indices; arrays have axes ``(seed, config)`` over
  ``configs``. Dict-style access (``event["step"]``) works as well.

  Attributes:
    group: the group of configs being trained.
    chunk: the chunk just finished within the group.
    step: updates received so far by a run that never stopped.
    configs: the global indices of the configs in the program's slots, a tuple (in slot
      order; after adaptive search compacted the program, only the live ones).
    hparams: name -> ``(n,)`` the hyperparameters each slot trains with now (after steering).
    metrics: name -> ``(S, n)`` at the latest evaluation (NaN for diverged runs).
    history: name -> ``(S, n, E)`` every evaluation so far; ``eval_steps`` their steps.
    eval_steps: ``(E,)``.
    alive: ``(S, n)`` bool; ``stopped_at``, ``diverged_at``: ``(S, n)`` (-1: not stopped);
    stop_reason: ``(S, n)`` strings from :data:`optaxlr.engine.STOP_REASONS`.
  """

  group: int
  chunk: int
  step: int
  configs: tuple
  hparams: dict
  metrics: dict
  history: dict
  eval_steps: np.ndarray
  alive: np.ndarray
  stopped_at: np.ndarray
  diverged_at: np.ndarray
  stop_reason: np.ndarray

  def __getitem__(self, name: str) -> Any:
    return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class Control:
  """What a callback may return to steer the sweep between chunks, without recompiling.

  Applied in this order: ``copy``, then ``set_hparams``, then ``stop``, then ``stop_sweep``.
  Config indices are global and must lie in the event's group.

  Attributes:
    stop: configs to stop now (every seed), reason ``"host"``.
    set_hparams: ``{config: {name: value}}``: the slot trains with these values from now on.
    copy: ``{dst: src}``: slot ``dst`` takes ``src``'s parameters, optimizer state, rule
      states and status (every seed), e.g. population-based training's exploit step.
    stop_sweep: end the whole sweep after this chunk (what was not run stays NaN).
  """

  stop: Sequence[int] = ()
  set_hparams: Mapping[int, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  copy: Mapping[int, int] = dataclasses.field(default_factory=dict)
  stop_sweep: bool = False


@dataclasses.dataclass
class Plan:
  """Everything :func:`run` needs; drivers fill it after validating their arguments."""

  fn: str
  task: Any
  optimizer: Callable
  objective: Callable | None
  hparams: dict[str, np.ndarray]  # (C,) per name
  ramp: dict[str, np.ndarray]  # (T,) per name: per-step values shared by every config
  seeds: list[int]
  key: jax.Array
  steps: int
  batch_size: int
  eval_every: int
  sync_every: int  # a multiple of eval_every
  log_every: int
  eval_splits: tuple[str, ...]
  monitor: str | None
  plateau: bool
  step_rules: tuple
  eval_rules: tuple
  update_ratio: bool
  devices: list
  max_group_size: int | None
  checkpoint_dir: Any = None
  fingerprint: dict = dataclasses.field(default_factory=dict)
  progress: bool = False
  callback: Callable | None = None
  keep_params: bool = False
  end_when_all_stopped: bool = True
  compact: bool = False  # move live runs into a smaller program when runs stop (adaptive search)
  one_group: bool = False  # every config must fit in one program (adaptive search compares them)
  vectorize: int | None = None  # configs vmapped at once per device (blocks under lax.map)
  eval_batch: int | None = None  # evaluate in pieces of this many examples
  compute_dtype: str | None = None  # mixed precision: forward/backward dtype
  segment_of: np.ndarray | None = None  # (C,) segment id per config (batch size / fold axes)
  segment_defs: tuple = ()  # per id: (batch_size, fold, folds)
  fold_splits: dict = dataclasses.field(default_factory=dict)  # fold -> (train_idx, held_idx)
  batches: Callable | None = None  # host-fed data: seed -> iterator of batches
  batch_spec: dict | None = None  # host-fed: key -> (per-example shape, dtype)
  start_step: int = 0  # steps already trained (continuing a kept sweep): numbering starts there
  init_from: Any = None  # (params, opt_state, model_state) leaves (S, C, ...) to start from


@dataclasses.dataclass
class Output:
  loss: np.ndarray  # (S, C, ceil(steps / log_every))
  metrics: dict  # (S, C, E)
  step_records: dict  # (S, C, steps)
  eval_records: dict  # (S, C, E)
  update_ratio: np.ndarray | None  # (S, C, E)
  stopped_at: np.ndarray  # (S, C) int64
  reason: np.ndarray  # (S, C) int64 codes
  eval_steps: np.ndarray  # (E,)
  hparams: dict  # (C,) the values each config trained with at the end (after steering)
  params: Any
  steering: list
  info: dict
  opt_state: Any = None
  model_state: Any = None


def device_memory_bytes(device) -> int | None:
  """The memory the program may use on ``device``: its limit, or the host's RAM on a CPU."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 -- backends without memory stats
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):  # pragma: no cover
    return None


class _Progress:
  def __init__(self, total: int, enabled: bool, desc: str):
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, desc=desc, unit="step", leave=True)

  def update(self, n: int, **post):
    if self._bar is not None:
      self._bar.update(n)
      if post:
        self._bar.set_postfix(post, refresh=False)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
  return {f"{prefix}{i}": _core.to_host(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _leaves_from(prefix: str, data: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
  return [data[f"{prefix}{i}"] for i in range(n)]


def run(plan: Plan) -> Output:
  t_start = time.perf_counter()
  task = plan.task
  fdtype = np.dtype(jnp.result_type(float))
  n_cfg = len(next(iter(plan.hparams.values()))) if plan.hparams else 1
  n_s = len(plan.seeds)
  devices = plan.devices
  n_dev = len(devices)
  multi = jax.process_count() > 1
  key_impl = None
  if jnp.issubdtype(plan.key.dtype, jax.dtypes.prng_key):
    key_impl = str(jax.random.key_impl(plan.key))
  keys = [run_keys(plan.key, s) for s in plan.seeds]
  raw = (lambda k: k) if key_impl is None else jax.random.key_data
  init_keys = np.stack([np.asarray(raw(k[0])) for k in keys])
  data_keys = np.stack([np.asarray(raw(k[1])) for k in keys])
  model_keys = np.stack([np.asarray(raw(model_base_key(plan.key, s))) for s in plan.seeds])
  stateful = bool(getattr(task, "stateful", False))
  vec = plan.vectorize

  def spec_for(segments, serial):
    return _core.Spec(
        batch_size=plan.batch_size, eval_every=plan.eval_every,
        blocks=plan.sync_every // plan.eval_every, log_every=plan.log_every,
        eval_splits=plan.eval_splits, monitor=plan.monitor, plateau=plan.plateau,
        step_rules=tuple(plan.step_rules), eval_rules=tuple(plan.eval_rules),
        update_ratio=plan.update_ratio, key_impl=key_impl, stateful=stateful,
        serial=serial, devices=n_dev, eval_batch=plan.eval_batch,
        compute_dtype=plan.compute_dtype, segments=segments, host_fed=plan.batches is not None,
    )

  spec = spec_for(None, 1)
  rules = spec.step_rules + spec.eval_rules
  rule_args = tuple(
      jax.tree.map(lambda v: np.asarray(np.minimum(np.float64(v), np.finfo(fdtype).max), fdtype), r.args())
      for r in rules
  )
  donate = devices[0].platform != "cpu"

  def prog_for(segments, g):
    serial = 1 if vec is None else max(1, g // (n_dev * vec))
    return _core.get_program(task, plan.optimizer, plan.objective, spec_for(segments, serial),
                             donate=donate)

  mesh = jax.sharding.Mesh(np.array(devices), ("config",))
  P = jax.sharding.PartitionSpec
  run_sh = jax.sharding.NamedSharding(mesh, P(None, "config"))
  cfg_sh = jax.sharding.NamedSharding(mesh, P("config"))
  repl = jax.sharding.NamedSharding(mesh, P())

  host_fed = plan.batches is not None
  train = {} if host_fed else {k: _core.put(np.asarray(v), repl) for k, v in task.train.items()}
  evals = {s: {k: _core.put(np.asarray(v), repl) for k, v in task.eval[s].items()}
           for s in plan.eval_splits}
  data_base = {"train": train, "evals": evals, "fold_train": (), "fold_eval": ()}
  if plan.segment_defs and any(f >= 0 for _, f, _ in plan.segment_defs):
    tr_np = {k: np.asarray(v) for k, v in task.train.items()}
    fold_train, fold_eval = {}, {}
    for fold, (tr_idx, held_idx) in plan.fold_splits.items():
      fold_train[fold] = _core.put(np.asarray(tr_idx, np.int32), repl)
      fold_eval[fold] = {k: _core.put(v[held_idx], repl) for k, v in tr_np.items()}
  ramp = {k: _core.put(np.asarray(v, fdtype), repl) for k, v in plan.ramp.items()}
  data_keys_d = _core.put(data_keys, repl)
  keys_d = {"data": data_keys_d, "model": _core.put(model_keys, repl)}
  init_keys_d = _core.put(init_keys, repl)
  rule_args_d = jax.tree.map(lambda a: _core.put(a, repl), rule_args)

  def put_hp(hp_np: Mapping[str, np.ndarray]):
    return {k: _core.put(v, cfg_sh) for k, v in hp_np.items()}

  def place_carry(carry_np):
    return jax.tree.map(lambda x: _core.put(x, run_sh if np.ndim(x) >= 2 else repl), carry_np)

  def replace_carry(carry):
    """A carry changed on the host side of the program (steered, compacted) put back with the
    program's shardings: the steering program returns it replicated, and the chunk program,
    compiled for sharded inputs, refuses that on more than one device."""
    if multi:
      return place_carry(jax.tree.map(_core.to_host, carry))
    if n_dev > 1:
      return jax.device_put(carry, jax.tree.map(lambda x: run_sh if x.ndim >= 2 else repl, carry))
    return carry

  # Groups: start with every config (a multiple of the device count, and of the configs
  # vectorised at once), shrink to what the compiled program says fits in half of the device
  # memory.
  unit = n_dev * (vec or 1)
  group = n_cfg if plan.max_group_size is None else min(n_cfg, plan.max_group_size)
  group = max(unit, math.ceil(group / unit) * unit)
  steps, chunk_steps = plan.steps, spec.chunk_steps
  n_chunks = math.ceil(steps / chunk_steps)
  n_evals = math.ceil(steps / plan.eval_every)
  base = plan.start_step
  eval_steps = base + np.minimum((np.arange(n_evals) + 1) * plan.eval_every, steps)
  n_log = math.ceil(steps / plan.log_every)
  mem = device_memory_bytes(devices[0])
  compile_s = 0.0

  def arrange(lo, hi, g):
    """``(slots, sel, segments)`` of the group of configs ``lo..hi`` padded to ``g`` slots:
    configs sorted by segment (batch size, fold) when the space has such axes."""
    ids = np.arange(lo, hi)
    if plan.segment_of is not None:
      ids = ids[np.argsort(plan.segment_of[ids], kind="stable")]
    pad = g - len(ids)
    slots = np.concatenate([ids, np.full(pad, -1)]).astype(np.int64)
    sel = np.concatenate([ids, np.full(pad, ids[-1] if plan.segment_of is not None else lo)])
    return slots, sel.astype(np.int64), segments_of(sel)

  def segments_of(sel):
    if plan.segment_of is None:
      return None
    seg_ids = plan.segment_of[sel]
    out = []
    for i in seg_ids:
      b, fold, folds = plan.segment_defs[int(i)]
      if out and out[-1][1:] == (b, fold, folds) and out[-1][4] == int(i):
        out[-1][0] += 1
      else:
        out.append([1, b, fold, folds, int(i)])
    return tuple(_core.Segment(n, b, f, k) for n, b, f, k, _ in out)

  def data_for(segs):
    if not segs or all(sg.fold < 0 for sg in segs):
      return data_base
    dummy_t, dummy_e = jnp.zeros((1,), jnp.int32), None
    ft = tuple(fold_train[sg.fold] if sg.fold >= 0 else dummy_t for sg in segs)
    fe = tuple(fold_eval[sg.fold] if sg.fold >= 0 else dummy_e for sg in segs)
    return {**data_base, "fold_train": ft, "fold_eval": fe}

  def batches_like():
    if not host_fed:
      return None
    return {k: jax.ShapeDtypeStruct((n_s, spec.chunk_steps, plan.batch_size, *shape), dt,
                                    sharding=repl)
            for k, (shape, dt) in plan.batch_spec.items()}

  def with_batches(data, batches):
    return data if batches is None else {**data, "batches": batches}

  def example_args(g):
    _, sel, segs = arrange(0, min(g, n_cfg), g)
    prog = prog_for(segs, g)
    hp_g = put_hp({k: v[sel] for k, v in plan.hparams.items()})
    carry_shape = jax.eval_shape(prog.init, hp_g, ramp, init_keys_d, jnp.arange(g), rule_args_d)
    carry = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=run_sh if len(s.shape) >= 2 else repl),
        carry_shape)
    return prog, hp_g, carry, segs

  def compile_for(g):
    prog, hp_g, carry, segs = example_args(g)
    exe, dt = prog.compiled_chunk(carry, hp_g, ramp, keys_d, jnp.int32(base), jnp.int32(base + steps),
                                  with_batches(data_for(segs), batches_like()), rule_args_d)
    return prog, exe, dt

  prog, exe, dt = compile_for(group)
  compile_s += dt
  need = prog.memory(exe)
  per_dev_budget = None if mem is None else mem // 2
  fixed = sum(np.asarray(v).nbytes for v in (() if host_fed else task.train.values())) + sum(
      np.asarray(v).nbytes for s in plan.eval_splits for v in task.eval[s].values())
  tries = 0
  while need is not None and per_dev_budget is not None and need > per_dev_budget:
    # A part that does not depend on the configs (the data) and one that grows with the
    # configs per device; memory is not exactly linear in the group, so check the new
    # program and shrink again if it still does not fit.
    per_dev = max(1, group // n_dev)
    per_cfg = max(1, (need - fixed) // per_dev)
    fit = min(per_dev - 1, (per_dev_budget - fixed) // per_cfg)
    if vec is not None:
      fit = fit // vec * vec
    if fit < 1 or tries >= 6:
      raise ValueError(
          f"{plan.fn}: one config needs about {per_cfg / 2**20:.1f} MiB per device for {n_s} seeds"
          f" (the compiled program's parameters, optimizer state, activations and evaluation; data"
          f" {fixed / 2**20:.1f} MiB), more than half of the device memory ({mem / 2**20:.0f} MiB);"
          " use fewer seeds, a smaller batch or a smaller model"
      )
    group = int(fit) * n_dev
    prog, exe, dt = compile_for(group)
    compile_s += dt
    need = prog.memory(exe)
    tries += 1
  n_groups = math.ceil(n_cfg / group)
  if plan.one_group and n_groups > 1:
    raise ValueError(f"{plan.fn}: adaptive search compares every config at once, but they are split "
                     f"into {n_groups} groups of {group} (max_group_size or memory); use fewer "
                     "configs or seeds, or a larger max_group_size")

  # Host buffers.
  loss = np.full((n_s, n_cfg, n_log), np.nan, fdtype)
  metrics: dict[str, np.ndarray] = {}
  step_records: dict[str, np.ndarray] = {}
  eval_records: dict[str, np.ndarray] = {}
  ratio = np.full((n_s, n_cfg, n_evals), np.nan, fdtype) if plan.update_ratio else None
  stopped_at = np.full((n_s, n_cfg), -1, np.int64)
  reason = np.zeros((n_s, n_cfg), np.int64)
  hp_now = {k: np.array(v, copy=True) for k, v in plan.hparams.items()}
  steering: list[dict] = []
  final_params: dict[int, Any] = {}
  params_treedef = None  # of (params, opt_state, model_state) when keep_params

  def buf(store, name, tail):
    if name not in store:
      store[name] = np.full((n_s, n_cfg, tail), np.nan, fdtype)
    return store[name]

  def record(c, slots, arrays):
    """Places one chunk's numbers (from the program or a checkpoint) in the host buffers;
    ``slots[j]`` is the config trained in slot ``j`` (-1: padding)."""
    valid = np.flatnonzero(slots >= 0)
    cfg = slots[valid]
    s0, e0, w0 = c * chunk_steps, c * spec.blocks, c * chunk_steps // plan.log_every
    s1, e1, w1 = min(s0 + chunk_steps, steps), min(e0 + spec.blocks, n_evals), min(
        w0 + chunk_steps // plan.log_every, n_log)
    loss[:, cfg, w0:w1] = arrays["loss"][:, valid, : w1 - w0]
    for k, v in arrays.items():
      if k.startswith("metric:"):
        buf(metrics, k[7:], n_evals)[:, cfg, e0:e1] = v[:, valid, : e1 - e0]
      elif k.startswith("erec:"):
        buf(eval_records, k[5:], n_evals)[:, cfg, e0:e1] = v[:, valid, : e1 - e0]
      elif k.startswith("srec:"):
        buf(step_records, k[5:], steps)[:, cfg, s0:s1] = v[:, valid, : s1 - s0]
    if ratio is not None:
      ratio[:, cfg, e0:e1] = arrays["ratio"][:, valid, : e1 - e0]
    record_status(slots, arrays)
    _mask_diverged(metrics, eval_records, ratio, stopped_at, reason, eval_steps, cfg)

  def record_status(slots, arrays):
    valid = np.flatnonzero(slots >= 0)
    cfg = slots[valid]
    stopped_at[:, cfg] = arrays["stopped_at"][:, valid]
    reason[:, cfg] = arrays["reason"][:, valid]
    for k in hp_now:
      hp_now[k][cfg] = arrays[f"hp:{k}"][valid]

  ckpt = None
  start_group, start_chunk, resume_state = 0, 0, None
  if plan.checkpoint_dir is not None:
    ckpt = CheckpointStore(plan.checkpoint_dir, {**plan.fingerprint, "group_size": group},
                           writer=jax.process_index() == 0)
    try:
      ckpt.open()
      for entry in sorted(ckpt.chunks, key=lambda e: (e["group"], e["chunk"])):
        g, c = entry["group"], entry["chunk"]
        arrays = ckpt.read(entry)
        record(c, arrays["slots"], arrays)
        steering.extend(_decode_steering(arrays))
        if "param:count" in arrays:
          final_params[g] = (arrays["param:slots"],
                             [arrays[f"param:{i}"] for i in range(int(arrays["param:count"]))])
      start_group, start_chunk = ckpt.position
      if ckpt.state is not None:
        resume_state = ckpt.read(ckpt.state)
    except Exception:
      ckpt.close()
      raise
  slot_steps = 0
  try:
    bar = _Progress(n_groups * steps, plan.progress and jax.process_index() == 0,
                    desc=f"{plan.fn} {n_cfg}x{n_s}")
    bar.update(min(start_group * steps + start_chunk * chunk_steps, n_groups * steps))
    run_s, steps_run, stop_all = 0.0, 0, False
    if ckpt is not None and ckpt.finished:
      stop_all = True
    for g in range(start_group, n_groups):
      if stop_all:
        break
      lo, hi = g * group, min((g + 1) * group, n_cfg)
      slots, sel, segs = arrange(lo, hi, group)
      hp_g_np = {k: v[sel] for k, v in hp_now.items()}
      resumed = resume_state is not None and g == start_group
      first = 0
      if resumed:
        slots = resume_state["slots"].astype(np.int64)
        hp_g_np = {k: resume_state[f"hp:{k}"] for k in hp_now}
        first = start_chunk
        if plan.segment_of is not None:
          segs = segments_of(np.where(slots >= 0, slots, slots[slots >= 0][-1]))
      prog = prog_for(segs, len(slots))
      data_g = data_for(segs)
      feed = _Feed(plan, n_s, chunk_steps, steps, first * chunk_steps, repl) if host_fed else None
      t0 = time.perf_counter()
      carry = prog.init(put_hp(hp_g_np), ramp, init_keys_d, jnp.arange(len(slots)), rule_args_d)
      if plan.init_from is not None and not resumed:
        # Continue kept runs: their parameters, optimizer and model states replace the fresh
        # ones (padding slots take their copy's).
        src = jax.tree.map(lambda x: np.asarray(x)[:, sel], plan.init_from)
        carry = carry._replace(params=src[0], opt_state=src[1], model_state=src[2])
      if resumed:
        leaves = _leaves_from("s", resume_state, len(jax.tree.leaves(carry)))
        for a, b in zip(leaves, jax.tree.leaves(carry)):
          if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{plan.fn}: checkpoint_dir={str(plan.checkpoint_dir)!r}: its state"
                             f" does not fit this sweep ({a.shape} {a.dtype} vs {b.shape} {b.dtype})")
        carry = jax.tree.unflatten(jax.tree.structure(carry), leaves)
      if multi or resumed:
        # Across processes (or from a checkpoint's host arrays) place every leaf explicitly.
        carry = place_carry(jax.tree.map(_core.to_host, carry))
      else:
        carry = jax.device_put(carry, jax.tree.map(
            lambda x: run_sh if x.ndim >= 2 else repl, carry))
      hp_g = put_hp(hp_g_np)
      run_s += time.perf_counter() - t0
      for c in range(first, n_chunks):
        start = c * chunk_steps
        t0 = time.perf_counter()
        data_c = with_batches(data_g, feed.next() if feed is not None else None)
        exe, dt = prog.compiled_chunk(carry, hp_g, ramp, keys_d, jnp.int32(base + start),
                                      jnp.int32(base + steps), data_c, rule_args_d)
        compile_s += dt
        t0 += dt
        carry, out = exe(carry, hp_g, ramp, keys_d, jnp.int32(base + start),
                         jnp.int32(base + steps), data_c, rule_args_d)
        if feed is not None:
          feed.prefetch()  # the next chunk's batches are read while this one runs
        arrays = {
            "loss": _core.to_host(out.loss),
            "stopped_at": _core.to_host(carry.stopped_at).astype(np.int64),
            "reason": _core.to_host(carry.reason).astype(np.int64),
            "slots": slots.copy(),
            **{f"metric:{k}": _core.to_host(v) for k, v in out.metrics.items()},
            **{f"srec:{k}": _core.to_host(v) for k, v in out.step_records.items()},
            **{f"erec:{k}": _core.to_host(v) for k, v in out.eval_records.items()},
            **{f"hp:{k}": v for k, v in hp_g_np.items()},
        }
        if ratio is not None:
          arrays["ratio"] = _core.to_host(out.ratio)
        run_s += time.perf_counter() - t0
        done = min(start + chunk_steps, steps)
        slot_steps += len(slots) * (done - start)
        steps_run = max(steps_run, done)
        alive = _core.to_host(carry.alive)
        record(c, slots, arrays)
        valid = np.flatnonzero(slots >= 0)
        ids = slots[valid]
        # Steering: the callback sees this chunk's numbers and may return a Control.
        ctrl = None
        if plan.callback is not None:
          e_now = min(c * spec.blocks + spec.blocks, n_evals)
          event = ChunkEvent(
              group=g, chunk=c, step=base + done, configs=tuple(int(i) for i in ids),
              hparams={k: v[ids].copy() for k, v in hp_now.items()},
              metrics={k: v[:, ids, e_now - 1].copy() for k, v in metrics.items()},
              history={k: v[:, ids, :e_now].copy() for k, v in metrics.items()},
              eval_steps=eval_steps[:e_now],
              alive=alive[:, valid].copy(), stopped_at=stopped_at[:, ids].copy(),
              diverged_at=np.where(reason[:, ids] == 1, stopped_at[:, ids], -1),
              stop_reason=np.asarray(_rules.STOP_REASONS, dtype=object)[reason[:, ids]],
          )
          ctrl = plan.callback(event)
        last = c + 1 == n_chunks
        if ctrl is not None and ctrl is not False:
          if ctrl is True:
            ctrl = Control(stop_sweep=True)
          if not isinstance(ctrl, Control):
            raise TypeError(f"{plan.fn}: callback must return None, True or an optaxlr.Control, got "
                            f"{type(ctrl).__name__}")
          carry, hp_g_np, log = _apply_control(plan.fn, prog, ctrl, carry, hp_g_np, slots, done)
          carry = replace_carry(carry)
          if log:
            log["group"], log["chunk"] = g, c
            steering.append(log)
            arrays["steering"] = np.frombuffer(repr([log]).encode(), np.uint8)
            arrays.update({f"hp:{k}": v for k, v in hp_g_np.items()})
            arrays["stopped_at"] = _core.to_host(carry.stopped_at).astype(np.int64)
            arrays["reason"] = _core.to_host(carry.reason).astype(np.int64)
            record_status(slots, arrays)
            alive = _core.to_host(carry.alive)
            hp_g = put_hp(hp_g_np)
          stop_all = ctrl.stop_sweep
        live = np.flatnonzero((slots >= 0) & alive.any(axis=0))
        all_stopped = plan.end_when_all_stopped and live.size == 0
        group_ends = last or all_stopped or stop_all
        if not group_ends and plan.compact:
          # Stopped runs would keep computing (masked) in a vmapped program: move the live runs
          # into a smaller program, so that freed slots cost nothing.
          size = max(n_dev, math.ceil(live.size / n_dev) * n_dev)
          if size < len(slots):
            src = np.concatenate([live, np.full(size - live.size, live[0])])
            pad = np.arange(size) >= live.size
            carry = prog.steer(carry, jnp.asarray(src), jnp.asarray(pad), jnp.int32(done))
            hp_g_np = {k: v[src] for k, v in hp_g_np.items()}
            slots = np.where(pad, -1, slots[src])
            carry = replace_carry(carry)
            hp_g = put_hp(hp_g_np)
        if group_ends and plan.keep_params:
          kept = (carry.params, carry.opt_state, carry.model_state)
          leaves = [_core.to_host(x)[:, valid] for x in jax.tree.leaves(kept)]
          params_treedef = jax.tree.structure(kept)
          final_params[g] = (ids, leaves)
          arrays.update({f"param:{i}": x for i, x in enumerate(leaves)})
          arrays["param:count"] = np.asarray(len(leaves))
          arrays["param:slots"] = ids
        if ckpt is not None:
          state = None
          if not group_ends:
            state = {**_flatten("s", carry), **{f"hp:{k}": v for k, v in hp_g_np.items()},
                     "slots": slots}
          nxt = (g + 1, 0) if group_ends else (g, c + 1)
          ckpt.commit(g, c, arrays, state, nxt, finished=stop_all or (group_ends and g + 1 == n_groups))
        if multi:
          from jax.experimental import multihost_utils

          multihost_utils.sync_global_devices(f"optaxlr chunk {g} {c}")
        bar.update(done - start, stopped=int((reason > 0).sum()))
        if group_ends:
          if all_stopped and not last:
            bar.update((n_chunks - c - 1) * chunk_steps)
          break
  finally:
    if ckpt is not None:
      ckpt.close()
    if "feed" in locals() and feed is not None:
      feed.close()
  bar.close()

  # Runs that never ran (the sweep was stopped before their group) are "not_run".
  never = np.isnan(loss).all(axis=-1) & (reason == 0) & (stopped_at < 0)
  reason[never] = _rules.reason_code("not_run")
  _fill_frozen(metrics, stopped_at, reason, eval_steps)
  params = opt_state = model_state = None
  if plan.keep_params:
    if len(final_params) < n_groups and not stop_all:
      raise ValueError(f"{plan.fn}: keep_params=True but the checkpoint holds no parameters of"
                       " some groups")
    if final_params:
      if params_treedef is None:
        kept = jax.eval_shape(prog.init, put_hp({k: v[:1] for k, v in plan.hparams.items()}),
                              ramp, init_keys_d, jnp.arange(1), rule_args_d)
        params_treedef = jax.tree.structure((kept.params, kept.opt_state, kept.model_state))
      n_leaves = len(next(iter(final_params.values()))[1])
      cat = []
      for i in range(n_leaves):
        like = next(iter(final_params.values()))[1][i]
        full = np.full((n_s, n_cfg, *like.shape[2:]), np.nan if like.dtype.kind == "f" else 0, like.dtype)
        for ids, leaves in final_params.values():
          full[:, np.asarray(ids)] = leaves[i]
        cat.append(full)
      params, opt_state, model_state = jax.tree.unflatten(params_treedef, cat)
  return Output(
      loss=loss, metrics=metrics, step_records=step_records, eval_records=eval_records,
      update_ratio=ratio, stopped_at=stopped_at, reason=reason, eval_steps=eval_steps,
      hparams=hp_now, params=params, steering=steering, opt_state=opt_state,
      model_state=model_state,
      info={
          "steps": steps, "steps_run": steps_run, "group_size": group, "groups": n_groups,
          "devices": n_dev, "processes": jax.process_count(), "compile_s": compile_s,
          "run_s": run_s, "total_s": time.perf_counter() - t_start,
          "program_bytes": need, "memory_bytes": mem,
          "slot_steps": slot_steps,  # steps computed, summed over the program's slots (compute)
      },
  )


class _Feed:
  """Host-fed minibatches: one iterator per seed (``plan.batches(seed)``), ``chunk_steps``
  batches per seed stacked per chunk, checked, and placed on the device; the next chunk's are
  read in a background thread while the current one runs."""

  def __init__(self, plan: Plan, n_s: int, chunk_steps: int, steps: int, skip: int, sharding):
    import concurrent.futures

    self.plan, self.n_s, self.chunk_steps, self.steps = plan, n_s, chunk_steps, steps
    self.sharding = sharding
    self.iters = []
    for s in plan.seeds:
      it = plan.batches(s)
      try:
        it = iter(it)
      except TypeError:
        raise TypeError(f"{plan.fn}: train(seed) must return an iterator of batches, got "
                        f"{type(it).__name__} for seed {s}") from None
      if any(it is other for other in self.iters):
        raise ValueError(f"{plan.fn}: train(seed) returned the same iterator for two seeds; "
                         "return a fresh iterator per call (each seed has its own stream)")
      self.iters.append(it)
    self.step = 0
    for _ in range(skip):  # resuming: the consumed batches are read again and dropped
      self._one_step()
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._next = None

  def _check(self, s_i: int, batch: Any) -> dict:
    fn, spec, b = self.plan.fn, self.plan.batch_spec, self.plan.batch_size
    seed, step = self.plan.seeds[s_i], self.step
    where = f"{fn}: the batch stream of seed {seed}, batch {step}"
    if not isinstance(batch, Mapping):
      raise ValueError(f"{where}: expected a dict of arrays, got {type(batch).__name__}")
    if set(batch) != set(spec):
      raise ValueError(f"{where}: keys {sorted(batch)} differ from the first batch's "
                       f"{sorted(spec)}")
    out = {}
    for k, (shape, dt) in spec.items():
      v = np.asarray(batch[k])
      if v.shape != (b, *shape):
        raise ValueError(f"{where}, key {k!r}: shape {v.shape}, expected {(b, *shape)} "
                         f"(batch_size={b})")
      if v.dtype != dt:
        raise ValueError(f"{where}, key {k!r}: dtype {v.dtype}, expected {dt}")
      if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{where}, key {k!r}: {int((~np.isfinite(v)).sum())} non-finite "
                         "value(s)")
      out[k] = v
    return out

  def _one_step(self) -> list[dict]:
    rows = []
    for i, it in enumerate(self.iters):
      try:
        batch = next(it)
      except StopIteration:
        raise ValueError(
            f"{self.plan.fn}: the batch stream of seed {self.plan.seeds[i]} ended after "
            f"{self.step} batches; the sweep needs {self.steps} (steps) per seed") from None
      rows.append(self._check(i, batch))
    self.step += 1
    return rows

  def _read(self):
    n = min(self.chunk_steps, self.steps - self.step)
    per_step = [self._one_step() for _ in range(n)]
    out = {}
    for k, (shape, dt) in self.plan.batch_spec.items():
      arr = np.zeros((self.n_s, self.chunk_steps, self.plan.batch_size, *shape), dt)
      for t, rows in enumerate(per_step):  # steps past ``steps`` stay zeros (masked)
        for s_i, row in enumerate(rows):
          arr[s_i, t] = row[k]
      out[k] = _core.put(arr, self.sharding)
    return out

  def next(self):
    if self._next is None:
      return self._read()
    fut, self._next = self._next, None
    return fut.result()

  def prefetch(self):
    if self.step < self.steps:
      self._next = self._pool.submit(self._read)

  def close(self):
    if self._next is not None:
      self._next.cancel()
    self._pool.shutdown(wait=True)


def _decode_steering(arrays) -> list:
  if "steering" not in arrays:
    return []
  import ast

  return ast.literal_eval(bytes(arrays["steering"]).decode())


def _mask_diverged(metrics, eval_records, ratio, stopped_at, reason, eval_steps, cfg):
  """A diverged run has no evaluations after the step it diverged at."""
  div = reason[:, cfg] == _rules.reason_code("diverged")
  gone = div[..., None] & (eval_steps[None, None, :] > stopped_at[:, cfg, None])
  for store in (metrics, eval_records):
    for v in store.values():
      sub = v[:, cfg]
      sub[gone] = np.nan
      v[:, cfg] = sub
  if ratio is not None:
    sub = ratio[:, cfg]
    sub[gone] = np.nan
    ratio[:, cfg] = sub


def _fill_frozen(metrics, stopped_at, reason, eval_steps):
  """A run stopped (not diverged) before the sweep's end was not evaluated again once its
  group ended early: its later evaluations repeat its frozen state's (the last one)."""
  frozen = (reason > 1) & (reason != _rules.reason_code("not_run"))
  for v in metrics.values():
    for s, c in zip(*np.nonzero(frozen)):
      row = v[s, c]
      ok = np.flatnonzero(np.isfinite(row))
      if ok.size and ok[-1] + 1 < row.size:
        row[ok[-1] + 1:] = row[ok[-1]]


def _apply_control(fn, prog, ctrl: Control, carry, hp_g_np, slots, step):
  where = {int(c): j for j, c in enumerate(slots) if c >= 0}
  n = len(where)

  def slot(i, what):
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or int(i) not in where:
      raise ValueError(f"{fn}: Control.{what} names config {i!r}, outside the current group "
                       f"(configs {sorted(where)[:8]}{'...' if n > 8 else ''})")
    return where[int(i)]

  size = len(slots)
  src = np.arange(size)
  for dst, s in dict(ctrl.copy).items():
    src[slot(dst, "copy")] = slot(s, "copy")
  stop = np.zeros(size, bool)
  stop_list = np.asarray(ctrl.stop)
  if stop_list.dtype == bool:
    if stop_list.shape != (n,):
      raise ValueError(f"{fn}: Control.stop as a mask must have shape ({n},) (the event's "
                       f"configs), got {stop_list.shape}")
    stop[np.flatnonzero(slots >= 0)[stop_list]] = True
  else:
    for i in stop_list.tolist():
      stop[slot(i, "stop")] = True
  hp = {k: v.copy() for k, v in hp_g_np.items()}
  for dst, s in dict(ctrl.copy).items():
    for k in hp:
      hp[k][slot(dst, "copy")] = hp_g_np[k][slot(s, "copy")]
  for i, values in dict(ctrl.set_hparams).items():
    j = slot(i, "set_hparams")
    for k, v in dict(values).items():
      if k not in hp:
        raise ValueError(f"{fn}: Control.set_hparams sets {k!r}, not a hyperparameter of the "
                         f"space; allowed: {sorted(hp)}")
      v = np.asarray(v)
      if v.dtype.kind not in "biuf" or v.dtype == bool or (v.dtype.kind == "f" and not np.isfinite(v).all()):
        raise ValueError(f"{fn}: Control.set_hparams sets {k}={v!r} for config {i}: not a finite"
                         " number (a categorical axis takes the index of its value)")
      # The space's own checks (a learning rate > 0, finite in the sweep's dtype...), on the
      # value as the sweep will hold it.
      from optaxlr.engine._engine import check_hparams

      check_hparams(f"{fn}: Control.set_hparams for config {i}",
                    {k: v.reshape(1).astype(np.result_type(v.dtype, hp[k].dtype))}, 1)
      hp[k][j] = v.astype(hp[k].dtype)
  changed = bool(ctrl.copy or ctrl.set_hparams or stop.any())
  if not changed:
    return carry, hp_g_np, None
  carry = prog.steer(carry, jnp.asarray(src), jnp.asarray(stop), jnp.int32(step))
  log = {"step": int(step), "copy": {int(k): int(v) for k, v in dict(ctrl.copy).items()},
         "set_hparams": {int(k): {kk: float(vv) for kk, vv in dict(v).items()}
                         for k, v in dict(ctrl.set_hparams).items()},
         "stop": [int(slots[j]) for j in np.flatnonzero(stop)]}
  return carry, hp, log
