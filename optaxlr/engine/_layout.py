"""Where a sweep's numbers live: the mesh over devices and its shardings, the data and keys
placed once, the arrangement of configs into the program's slots (sorted by batch-size/fold
segment, padded to the devices), and groups of configs sized from the compiled program's memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxlr.engine import _core
from optaxlr.engine._data import model_base_key, run_keys

__all__ = ["Layout", "device_memory_bytes"]


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


class Layout:
  """The placement of one plan's program, data, keys and configs (see the module docstring)."""

  def __init__(self, plan):
    self.plan = plan
    task = plan.task
    self.fdtype = np.dtype(jnp.result_type(float))
    self.n_cfg = len(next(iter(plan.hparams.values()))) if plan.hparams else 1
    self.n_s = len(plan.seeds)
    self.n_dev = len(plan.devices)
    self.multi = jax.process_count() > 1
    self.host_fed = plan.batches is not None
    self.key_impl = None
    if jnp.issubdtype(plan.key.dtype, jax.dtypes.prng_key):
      self.key_impl = str(jax.random.key_impl(plan.key))
    self.spec = self.spec_for(None, 1)
    rules = self.spec.step_rules + self.spec.eval_rules
    rule_args = tuple(
        jax.tree.map(lambda v: np.asarray(np.minimum(np.float64(v), np.finfo(self.fdtype).max),
                                          self.fdtype), r.args())
        for r in rules)
    # The carry is donated to each chunk (on every platform): its buffers are updated in
    # place instead of copied at the start of every chunk's loop.
    self.donate = True
    mesh = jax.sharding.Mesh(np.array(plan.devices), ("config",))
    P = jax.sharding.PartitionSpec
    self.run_sh = jax.sharding.NamedSharding(mesh, P(None, "config"))
    self.cfg_sh = jax.sharding.NamedSharding(mesh, P("config"))
    self.repl = jax.sharding.NamedSharding(mesh, P())
    put = lambda x: _core.put(np.asarray(x), self.repl)  # noqa: E731
    train = {} if self.host_fed else {k: put(v) for k, v in task.train.items()}
    evals = {s: {k: put(v) for k, v in task.eval[s].items()} for s in plan.eval_splits}
    self.data_base = {"train": train, "evals": evals, "fold_train": (), "fold_eval": ()}
    self.fold_train, self.fold_eval = {}, {}
    self._stacks: dict = {}
    self._fold_host: dict = {}  # ("train" | "eval", fold) -> host arrays, for stacked folds
    if plan.segment_defs and any(f >= 0 for _, f, _ in plan.segment_defs):
      tr_np = {k: np.asarray(v) for k, v in task.train.items()}
      for fold, (tr_idx, held_idx) in plan.fold_splits.items():
        self._fold_host["train", fold] = np.asarray(tr_idx, np.int32)
        self._fold_host["eval", fold] = {k: v[held_idx] for k, v in tr_np.items()}
        self.fold_train[fold] = put(self._fold_host["train", fold])
        self.fold_eval[fold] = {k: put(v) for k, v in self._fold_host["eval", fold].items()}
    self.ramp = {k: put(np.asarray(v, self.fdtype)) for k, v in plan.ramp.items()}
    raw = (lambda k: k) if self.key_impl is None else jax.random.key_data
    keys = [run_keys(plan.key, s) for s in plan.seeds]
    self.init_keys = put(np.stack([np.asarray(raw(k[0])) for k in keys]))
    self.keys = {"data": put(np.stack([np.asarray(raw(k[1])) for k in keys])),
                 "model": put(np.stack([np.asarray(raw(model_base_key(plan.key, s)))
                                        for s in plan.seeds]))}
    self.rule_args = jax.tree.map(put, rule_args)
    self.unit = self.n_dev * (plan.vectorize or 1)
    self.data_bytes = sum(np.asarray(v).nbytes for v in (() if self.host_fed else task.train.values())) \
        + sum(np.asarray(v).nbytes for s in plan.eval_splits for v in task.eval[s].values())

  # -- the program of a group ----------------------------------------------------------

  def spec_for(self, segments, serial: int) -> _core.Spec:
    plan = self.plan
    return _core.Spec(
        batch_size=plan.batch_size, eval_every=plan.eval_every,
        blocks=plan.sync_every // plan.eval_every, log_every=plan.log_every,
        eval_splits=plan.eval_splits, monitor=plan.monitor, plateau=plan.plateau,
        step_rules=tuple(plan.step_rules), eval_rules=tuple(plan.eval_rules),
        update_ratio=plan.update_ratio, key_impl=self.key_impl,
        stateful=bool(getattr(plan.task, "stateful", False)),
        serial=serial, devices=self.n_dev, eval_batch=plan.eval_batch,
        compute_dtype=plan.compute_dtype, segments=segments, host_fed=self.host_fed,
        noise_scale=plan.noise_scale, ragged=plan.steps % plan.eval_every != 0,
    )

  def program(self, segments, g: int):
    vec = self.plan.vectorize
    serial = 1 if vec is None else max(1, g // (self.n_dev * vec))
    if segments:  # which folds is data (data_for): groups of other folds share the program
      segments = tuple(sg._replace(fold=0) if sg.fold >= 0 else sg for sg in segments)
    return _core.get_program(self.plan.task, self.plan.optimizer, self.plan.objective,
                             self.spec_for(segments, serial), donate=self.donate)

  # -- placement ------------------------------------------------------------------------

  def put_hp(self, hp_np: Mapping[str, np.ndarray]) -> dict:
    return {k: _core.put(v, self.cfg_sh) for k, v in hp_np.items()}

  def sharding_of(self, x) -> Any:
    return self.run_sh if np.ndim(x) >= 2 else self.repl

  def place_carry(self, carry_np):
    """Host arrays (a checkpoint's, or gathered across processes) placed as the program's."""
    return jax.tree.map(lambda x: _core.put(x, self.sharding_of(x)), carry_np)

  def place(self, carry):
    """A carry placed with the program's shardings (explicitly across processes)."""
    if self.multi:
      return self.place_carry(jax.tree.map(_core.to_host, carry))
    return jax.device_put(carry, jax.tree.map(self.sharding_of, carry))

  def init_args(self, hp_np: Mapping[str, np.ndarray], n_slots: int) -> tuple:
    return (self.put_hp(hp_np), self.ramp, self.init_keys, jnp.arange(n_slots), self.rule_args)

  # -- configs in slots -----------------------------------------------------------------

  def arrange(self, lo: int, hi: int, g: int):
    """``(slots, sel, segments)`` of the group of configs ``lo..hi`` padded to ``g`` slots:
    configs sorted by segment (batch size, fold) when the space has such axes."""
    plan = self.plan
    ids = np.arange(lo, hi)
    if plan.segment_of is not None:
      ids = ids[np.argsort(plan.segment_of[ids], kind="stable")]
    pad = g - len(ids)
    slots = np.concatenate([ids, np.full(pad, -1)]).astype(np.int64)
    sel = np.concatenate([ids, np.full(pad, ids[-1] if plan.segment_of is not None else lo)])
    return slots, sel.astype(np.int64), self.segments_of(sel)

  def segments_of(self, sel):
    plan = self.plan
    if plan.segment_of is None:
      return None
    out = []
    for i in plan.segment_of[sel]:
      b, fold, folds = plan.segment_defs[int(i)]
      if out and out[-1][4] == int(i):  # the same segment as the config before: one more
        out[-1][0] += 1
      else:
        out.append([1, b, fold, folds, int(i)])
    return self._stack_folds(tuple(_core.Segment(n, b, f, k) for n, b, f, k, _ in out))

  def _stack_folds(self, segs):
    """Runs of consecutive folds with equal sizes (configs, batch, training and held-out
    examples) as one segment of stacked folds (:class:`optaxlr.engine._core.Segment`): the
    program holds one step for them all, whatever the number of folds."""
    sizes = {f: (len(tr), len(held)) for f, (tr, held) in self.plan.fold_splits.items()}
    out: list = []
    for sg in segs:
      last = out[-1] if out else None
      if (last is not None and sg.fold >= 0 and last.fold >= 0
          and sg.fold == last.fold + last.stack and sg.folds == last.folds
          and sg.batch_size == last.batch_size and sg.size == last.size // last.stack
          and sizes[sg.fold] == sizes[last.fold]):
        out[-1] = last._replace(size=last.size + sg.size, stack=last.stack + 1)
      else:
        out.append(sg)
    return tuple(out)

  def data_for(self, segs, batches=None) -> dict:
    data = self.data_base
    if segs and any(sg.fold >= 0 for sg in segs):
      dummy_t = jnp.zeros((1,), jnp.int32)
      data = {**data,
              "fold_train": tuple(self._fold_data("train", sg) if sg.fold >= 0 else dummy_t
                                  for sg in segs),
              "fold_eval": tuple(self._fold_data("eval", sg) if sg.fold >= 0 else None
                                 for sg in segs)}
    return data if batches is None else {**data, "batches": batches}

  def _fold_data(self, part: str, sg):
    """Fold ``sg.fold``'s arrays (``part``: "train" indices or "eval" data), or those of its
    ``sg.stack`` folds stacked on a leading axis (placed once)."""
    if sg.stack == 1:
      return (self.fold_train if part == "train" else self.fold_eval)[sg.fold]
    key = (part, sg.fold, sg.stack)
    if key not in self._stacks:
      parts = [self._fold_host[part, f] for f in range(sg.fold, sg.fold + sg.stack)]
      self._stacks[key] = jax.tree.map(lambda *xs: _core.put(np.stack(xs), self.repl), *parts)
    return self._stacks[key]

  def batches_like(self):
    if not self.host_fed:
      return None
    return {k: jax.ShapeDtypeStruct((self.n_s, self.spec.chunk_steps, self.plan.batch_size, *shape),
                                    dt, sharding=self.repl)
            for k, (shape, dt) in self.plan.batch_spec.items()}

  # -- groups sized from the compiled program ------------------------------------------------

  def _compile_for(self, g: int, start: int, total: int):
    _, sel, segs = self.arrange(0, min(g, self.n_cfg), g)
    prog = self.program(segs, g)
    args = self.init_args({k: v[sel] for k, v in self.plan.hparams.items()}, g)
    hp_g = args[0]
    carry_shape = jax.eval_shape(prog.init, *args)
    carry = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.sharding_of(s)),
                         carry_shape)
    exe, dt = prog.compiled_chunk(carry, hp_g, self.ramp, self.keys, jnp.int32(start),
                                  jnp.int32(total), self.data_for(segs, self.batches_like()),
                                  self.rule_args)
    return prog, exe, dt

  def size_groups(self, start: int, total: int) -> tuple[int, int, int | None, float]:
    """``(group size, number of groups, program bytes, compile seconds)``: start with every
    config (a multiple of the devices and of the configs vectorised at once) and shrink to what
    the compiled program says fits in half of the device memory."""
    plan, n_dev = self.plan, self.n_dev
    group = self.n_cfg if plan.max_group_size is None else min(self.n_cfg, plan.max_group_size)
    group = max(self.unit, math.ceil(group / self.unit) * self.unit)
    mem = device_memory_bytes(plan.devices[0])
    prog, exe, compile_s = self._compile_for(group, start, total)
    need = prog.memory(exe)
    budget = None if mem is None else mem // 2
    tries = 0
    while need is not None and budget is not None and need > budget:
      # A part that does not depend on the configs (the data) and one that grows with the
      # configs per device; memory is not exactly linear in the group, so check the new
      # program and shrink again if it still does not fit.
      per_dev = max(1, group // n_dev)
      per_cfg = max(1, (need - self.data_bytes) // per_dev)
      fit = min(per_dev - 1, (budget - self.data_bytes) // per_cfg)
      if plan.vectorize is not None:
        fit = fit // plan.vectorize * plan.vectorize
      if fit < 1 or tries >= 6:
        raise ValueError(
            f"{plan.fn}: one config needs about {per_cfg / 2**20:.1f} MiB per device for "
            f"{self.n_s} seeds (the compiled program's parameters, optimizer state, activations"
            f" and evaluation; data {self.data_bytes / 2**20:.1f} MiB), more than half of the "
            f"device memory ({mem / 2**20:.0f} MiB); use fewer seeds, a smaller batch or a "
            "smaller model")
      group = int(fit) * n_dev
      prog, exe, dt = self._compile_for(group, start, total)
      compile_s += dt
      need = prog.memory(exe)
      tries += 1
    n_groups = math.ceil(self.n_cfg / group)
    if plan.one_group and n_groups > 1:
      raise ValueError(f"{plan.fn}: adaptive search compares every config at once, but they are "
                       f"split into {n_groups} groups of {group} (max_group_size or memory); use "
                       "fewer configs or seeds, or a larger max_group_size")
    self.memory_bytes = mem
    return group, n_groups, need, compile_s
