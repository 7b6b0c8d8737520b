"""The host loop around the one program: groups, chunks, checkpoints, progress and steering.

``sweep`` (the one driver; every other entry point is a view of it) validates its arguments,
describes the run as a :class:`Plan` and calls :func:`run`. Placement lives in
:mod:`~optaxlr.engine._layout`, recording in :mod:`~optaxlr.engine._record`, steering in
:mod:`~optaxlr.engine._steer` and host-fed data in :mod:`~optaxlr.engine._feed`. The loop:

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
from optaxlr.engine._checkpoint import CheckpointStore
from optaxlr.engine._feed import Feed
from optaxlr.engine._layout import Layout, device_memory_bytes
from optaxlr.engine._record import ChunkRecord, Recorder, flatten_state, unflatten_state
from optaxlr.engine._steer import ChunkEvent, Control, apply_control, make_event

PyTree = Any

__all__ = ["Plan", "Output", "ChunkEvent", "Control", "run", "device_memory_bytes"]


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
  # "exact": the smallest multiple of the unit that holds the live runs (successive halving's
  # few, known sizes); "pow2": a power-of-two number of units, so that a strategy whose live
  # count takes every value (a pruner) compiles at most log2(configs) + 1 programs.
  compact_sizes: str = "exact"
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
  host_state: Any = None  # a steering strategy's state_dict/load_state_dict, checkpointed
  resume_unverified_code: bool = False  # resume although part of the code could not be hashed
  noise_scale: bool = False  # record the two-batch noise statistics before each evaluation
  keep_at: tuple[int, ...] = ()  # steps of this sweep at which to snapshot the kept state


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
  noise: np.ndarray | None = None  # (S, C, E, 2) (spread, |G_big|^2) per evaluation
  snapshots: dict = dataclasses.field(default_factory=dict)  # step -> (params, opt, model, stopped_at, reason)


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


def run(plan: Plan) -> Output:
  """Trains every group of ``plan``: init or resume -> chunks -> record -> steer -> commit."""
  t_start = time.perf_counter()
  lay = Layout(plan)
  spec, steps, base = lay.spec, plan.steps, plan.start_step
  chunk_steps, n_chunks = spec.chunk_steps, math.ceil(plan.steps / spec.chunk_steps)
  group, n_groups, need, compile_s = lay.size_groups(base, base + steps)
  rec = Recorder(plan, lay.n_s, lay.n_cfg, chunk_steps, spec.blocks, lay.fdtype)
  ckpt, (start_group, start_chunk), resume = _open_checkpoint(plan, group, rec)
  clock = {"compile_s": compile_s, "run_s": 0.0}
  slot_steps = steps_run = 0
  stop_all = ckpt is not None and ckpt.finished
  treedef, feed, prog = None, None, None
  bar = _Progress(n_groups * steps, plan.progress and jax.process_index() == 0,
                  desc=f"{plan.fn} {lay.n_cfg}x{lay.n_s}")
  try:
    bar.update(min(start_group * steps + start_chunk * chunk_steps, n_groups * steps))
    for g in range(start_group, n_groups):
      if stop_all:
        break
      state = resume if g == start_group else None
      first = start_chunk if state is not None else 0
      prog, carry, slots, hp_np, segs = _start_group(lay, rec, g, group, state, clock)
      data_g = lay.data_for(segs)
      # Continuing a kept sweep (start_from), each stream goes on after the batches it fed
      # then: its positions are counted from the first sweep's first step.
      feed = (Feed(plan, lay.n_s, chunk_steps, base + steps, base + first * chunk_steps, lay.repl)
              if lay.host_fed else None)
      hp_g = lay.put_hp(hp_np)
      for c in range(first, n_chunks):
        start, done = c * chunk_steps, min((c + 1) * chunk_steps, steps)
        t0 = time.perf_counter()
        args = (hp_g, lay.ramp, lay.keys, jnp.int32(base + start), jnp.int32(base + steps),
                data_g if feed is None else {**data_g, "batches": feed.next()}, lay.rule_args)
        exe, dt = prog.compiled_chunk(carry, *args)
        clock["compile_s"] += dt
        carry, out = exe(carry, *args)
        if feed is not None:
          feed.prefetch()  # the next chunk's batches are read while this one runs
        chunk = ChunkRecord.from_program(out, carry, slots, hp_np)
        clock["run_s"] += time.perf_counter() - t0 - dt
        slot_steps += len(slots) * (done - start)
        steps_run = max(steps_run, done)
        alive = _core.to_host(carry.alive)
        rec.record(g, c, chunk)
        # Steering: the callback sees this chunk's numbers and may return a Control.
        ctrl = None
        if plan.callback is not None:
          e_now = min(c * spec.blocks + spec.blocks, rec.n_evals)
          ctrl = plan.callback(make_event(g, c, base + done, slots, alive, rec, e_now))
        if ctrl is not None and ctrl is not False:
          carry, hp_np, alive, stop_all = _steer(plan, lay, prog, ctrl, carry, hp_np, chunk, rec,
                                                 g, c, done)
          hp_g = lay.put_hp(hp_np)
        if done in plan.keep_at:
          _snapshot(carry, slots, chunk, rec, g, done)
        live = np.flatnonzero((slots >= 0) & alive.any(axis=0))
        all_stopped = plan.end_when_all_stopped and live.size == 0
        group_ends = c + 1 == n_chunks or all_stopped or stop_all
        if not group_ends and plan.compact:
          prog, carry, slots, hp_np = _compact(lay, prog, segs, carry, slots, hp_np, live, done,
                                               plan.compact_sizes)
          hp_g = lay.put_hp(hp_np)
        if group_ends and plan.keep_params:
          treedef = _keep(carry, slots, chunk, rec, g)
        if ckpt is not None:
          if plan.host_state is not None:
            chunk.host_state = plan.host_state.state_dict()
          last = stop_all or (group_ends and g + 1 == n_groups)
          ckpt.commit(g, c, chunk.to_arrays(),
                      None if group_ends else flatten_state(carry, hp_np, slots),
                      (g + 1, 0) if group_ends else (g, c + 1), finished=last)
        if lay.multi:
          from jax.experimental import multihost_utils

          multihost_utils.sync_global_devices(f"optaxlr chunk {g} {c}")
        bar.update(done - start, stopped=int((rec.reason > 0).sum()))
        if group_ends:
          if all_stopped and c + 1 < n_chunks:
            bar.update((n_chunks - c - 1) * chunk_steps)
          break
      if feed is not None:
        feed.close()
        feed = None
  finally:
    if ckpt is not None:
      ckpt.close()
    if feed is not None:
      feed.close()
  bar.close()
  if plan.keep_params and treedef is None and rec.kept:
    treedef = _kept_treedef(lay, prog or lay.program(None, lay.unit))
  params, opt_state, model_state = rec.finish(stop_all, n_groups, treedef)
  return Output(
      loss=rec.loss, metrics=rec.metrics, step_records=rec.step_records,
      eval_records=rec.eval_records, update_ratio=rec.ratio, stopped_at=rec.stopped_at,
      reason=rec.reason, eval_steps=rec.eval_steps, hparams=rec.hp_now, params=params,
      steering=rec.steering, opt_state=opt_state, model_state=model_state, noise=rec.noise,
      snapshots=rec.finish_snapshots(),
      info={
          "steps": steps, "steps_run": steps_run, "group_size": group, "groups": n_groups,
          "devices": lay.n_dev, "processes": jax.process_count(),
          "compile_s": clock["compile_s"], "run_s": clock["run_s"],
          "total_s": time.perf_counter() - t_start,
          "program_bytes": need, "memory_bytes": lay.memory_bytes,
          "slot_steps": slot_steps,  # steps computed, summed over the program's slots (compute)
      },
  )


# ----------------------------------------------------------------------------------------
# The loop's steps.


def _open_checkpoint(plan: Plan, group: int, rec: Recorder):
  """``(store, (group, chunk) to start at, the live state to resume or None)``; every
  committed chunk is recorded into ``rec``."""
  if plan.checkpoint_dir is None:
    return None, (0, 0), None
  ckpt = CheckpointStore(plan.checkpoint_dir, {**plan.fingerprint, "group_size": group},
                         writer=jax.process_index() == 0,
                         resume_unverified_code=plan.resume_unverified_code)
  if jax.process_count() > 1:
    _check_shared_folder(ckpt)
  try:
    ckpt.open()
    host_state = None
    for entry in sorted(ckpt.chunks, key=lambda e: (e["group"], e["chunk"])):
      chunk = ChunkRecord.from_arrays(ckpt.read(entry))
      rec.record(entry["group"], entry["chunk"], chunk)
      host_state = chunk.host_state if chunk.host_state is not None else host_state
    if plan.host_state is not None and host_state is not None:
      plan.host_state.load_state_dict(host_state)  # the strategy's decisions so far
    state = ckpt.read(ckpt.state) if ckpt.state is not None else None
    return ckpt, ckpt.position, state
  except Exception:
    ckpt.close()
    raise


def _check_shared_folder(ckpt: CheckpointStore) -> None:
  """With several processes, process 0 writes the checkpoint and every process resumes from
  it: the folder must be one folder for all of them (a shared file system), not a local folder
  of each. Process 0 writes a random token into it; every process must read it back, or all
  raise (together, so none waits for the others in a collective)."""
  from jax.experimental import multihost_utils

  from optaxlr.engine._checkpoint import CheckpointError

  me = jax.process_index()
  token = np.frombuffer(os.urandom(8), np.int64) if me == 0 else np.zeros(1, np.int64)
  token = int(np.asarray(multihost_utils.broadcast_one_to_all(token)).reshape(-1)[0])
  probe = ckpt.folder / f".shared-{token & (2**64 - 1):016x}"
  ok = 1
  if me == 0:
    try:
      ckpt.folder.mkdir(parents=True, exist_ok=True)
      probe.write_text(str(token))
    except OSError:
      ok = 0
  multihost_utils.sync_global_devices("optaxlr checkpoint folder shared")
  if me != 0:
    try:
      ok = int(probe.read_text() == str(token))
    except OSError:
      ok = 0
  seen = np.asarray(multihost_utils.process_allgather(np.array([ok], np.int32))).reshape(-1)
  if me == 0:
    probe.unlink(missing_ok=True)
  # the probe is gone before any process opens the folder (a stray file there is refused)
  multihost_utils.sync_global_devices("optaxlr checkpoint folder probe removed")
  if not seen.all():
    bad = np.flatnonzero(seen == 0).tolist()
    raise CheckpointError(
        f"sweep: checkpoint_dir={str(ckpt.folder)!r}: is not one folder for all "
        f"{jax.process_count()} processes: process(es) {bad} do not see the file process 0 "
        "wrote there; process 0 writes the checkpoint and every process resumes from it, so "
        "put it on a file system every process mounts at that path")


def _start_group(lay: Layout, rec: Recorder, g: int, group: int, state, clock: dict):
  """``(program, carry, slots, hparams per slot, segments)`` of group ``g``: fresh (or
  continuing kept runs), or resumed from a checkpoint's ``state``."""
  plan = lay.plan
  lo, hi = g * group, min((g + 1) * group, lay.n_cfg)
  slots, sel, segs = lay.arrange(lo, hi, group)
  hp_np = {k: v[sel] for k, v in rec.hp_now.items()}
  if state is not None:
    slots = state["slots"].astype(np.int64)
    hp_np = {k: state[f"hp:{k}"] for k in rec.hp_now}
    if plan.segment_of is not None:
      segs = lay.segments_of(np.where(slots >= 0, slots, slots[slots >= 0][-1]))
  prog = lay.program(segs, len(slots))
  init_args = lay.init_args(hp_np, len(slots))
  init_exe, dt = prog.compiled_init(*init_args)
  clock["compile_s"] += dt
  t0 = time.perf_counter()
  carry = init_exe(*init_args)
  if plan.init_from is not None and state is None:
    # Continue kept runs: their parameters, optimizer and model states replace the fresh
    # ones (padding slots take their copy's).
    src = jax.tree.map(lambda x: np.asarray(x)[:, sel], plan.init_from)
    carry = carry._replace(params=src[0], opt_state=src[1], model_state=src[2])
  if state is not None:
    carry = lay.place_carry(unflatten_state(
        state, carry, f"{plan.fn}: checkpoint_dir={str(plan.checkpoint_dir)!r}"))
  else:
    carry = lay.place(carry)
  clock["run_s"] += time.perf_counter() - t0
  return prog, carry, slots, hp_np, segs


def _steer(plan, lay, prog, ctrl, carry, hp_np, chunk: ChunkRecord, rec: Recorder, g, c, done):
  """Applies a callback's answer; returns ``(carry, hparams, alive, stop the sweep)``."""
  if ctrl is True:
    ctrl = Control(stop_sweep=True)
  if not isinstance(ctrl, Control):
    raise TypeError(f"{plan.fn}: callback must return None, True or an optaxlr.Control, got "
                    f"{type(ctrl).__name__}")
  carry, hp_np, log = apply_control(plan.fn, prog, ctrl, carry, hp_np, chunk.slots, done)
  if log:
    log["group"], log["chunk"] = g, c
    carry = lay.place(carry)  # the steered carry keeps the program's shardings
    chunk.steering.append(log)
    rec.steering.append(log)
    chunk.hparams = {k: np.asarray(v) for k, v in hp_np.items()}
    chunk.stopped_at = _core.to_host(carry.stopped_at).astype(np.int64)
    chunk.reason = _core.to_host(carry.reason).astype(np.int64)
    rec.record_status(chunk)
  return carry, hp_np, _core.to_host(carry.alive), bool(ctrl.stop_sweep)


def _compact(lay: Layout, prog, segs, carry, slots, hp_np, live, done, sizes: str = "exact"):
  """Stopped runs would keep computing (masked) in a vmapped program: moves the live runs
  into a smaller program (a multiple of the devices x the configs vectorised at once, its
  blocks recounted), so that freed slots cost nothing. ``sizes="pow2"`` rounds the number of
  units up to a power of two (at most half the slots compute masked; far fewer programs)."""
  units = max(1, math.ceil(live.size / lay.unit))
  if sizes == "pow2":
    units = 1 << (units - 1).bit_length()
  size = units * lay.unit
  if size >= len(slots):
    return prog, carry, slots, hp_np
  src = np.concatenate([live, np.full(size - live.size, live[0])])
  pad = np.arange(size) >= live.size
  carry = prog.steer(carry, jnp.asarray(src), jnp.asarray(pad), jnp.int32(done))
  hp_np = {k: v[src] for k, v in hp_np.items()}
  return lay.program(segs, size), lay.place(carry), np.where(pad, -1, slots[src]), hp_np


def _keep(carry, slots, chunk: ChunkRecord, rec: Recorder, g: int):
  """Keeps the group's final (params, opt_state, model_state); returns their structure."""
  kept = (carry.params, carry.opt_state, carry.model_state)
  valid = np.flatnonzero(slots >= 0)
  chunk.kept = (slots[valid], [_core.to_host(x)[:, valid] for x in jax.tree.leaves(kept)])
  rec.kept[g] = chunk.kept
  return jax.tree.structure(kept)


def _snapshot(carry, slots, chunk: ChunkRecord, rec: Recorder, g: int, step: int) -> None:
  """Keeps the group's (params, opt_state, model_state) and status after ``step`` steps
  (``Execution(keep_params_at=)``), as :func:`_keep` keeps the final ones."""
  kept = (carry.params, carry.opt_state, carry.model_state)
  valid = np.flatnonzero(slots >= 0)
  rec.snapshot(step, g, jax.tree.structure(kept), chunk, valid,
               [_core.to_host(x)[:, valid] for x in jax.tree.leaves(kept)])


def _kept_treedef(lay: Layout, prog):
  """The structure of kept state when every group came from a checkpoint."""
  kept = jax.eval_shape(prog.init, *lay.init_args({k: v[:1] for k, v in lay.plan.hparams.items()}, 1))
  return jax.tree.structure((kept.params, kept.opt_state, kept.model_state))
