"""The training core: ONE compiled program that every driver (sweep, lr_find, lr_find_grid,
adaptive search) runs.

Layout of the carried state: every per-run leaf has two leading axes ``(seed, config)``. The
config axis is an inner ``vmap`` whose minibatch is broadcast (read once for all configs of a
seed); the seed axis is an outer ``vmap`` whose minibatch differs per seed. One call of the
compiled ``chunk`` runs ``blocks`` blocks of ``eval_every`` steps under ``lax.scan``, with an
evaluation (and the evaluation rules) after each block; between chunks the host records,
checkpoints, reports and may steer (stop runs, replace a slot's hyperparameters, copy one
slot's state into another) without recompiling.

What a driver chooses is data or a small static :class:`Spec`:

* hyperparameters per config (``hparams``, leading config axis) and per step (``ramp``, one
  value per step shared by every config: the range test's growing rate);
* rules (:mod:`optaxlr.engine._rules`) for steps and evaluations; the non-finite check is
  always on;
* ``plateau``: feed the monitored metric of the latest evaluation to the optimizer
  (``value=``, ``evaluate=True`` on the first step after each evaluation).

Steps past ``total`` (the end of a run that is not a multiple of the chunk) are masked: a run
receives exactly ``total`` updates.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxlr.engine import _rules
from optaxlr.engine._data import epoch_permutation
from optaxlr.engine._noise import micro_batch_stats, noise_parts

PyTree = Any

__all__ = ["Spec", "Segment", "Carry", "Program", "get_program", "all_finite"]


def all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _sq_norm(tree: PyTree) -> jax.Array:
  leaves = [jnp.sum(jnp.square(x.astype(jnp.result_type(float)))) for x in jax.tree.leaves(tree)]
  return sum(leaves) if leaves else jnp.zeros(())


def _where(cond: jax.Array, a: PyTree, b: PyTree) -> PyTree:
  """Leafwise ``where(cond, a, b)`` for a scalar ``cond`` (inside the vmaps)."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y).astype(y.dtype), a, b)


class Segment(NamedTuple):
  """Configs of a program that share a minibatch stream: a batch size and a training subset.

  ``size`` configs (of the program's config axis, in order); ``fold`` -1 trains on the whole
  training split, else on fold ``fold``'s training part (:func:`optaxlr.engine.fold_split`
  with ``folds`` folds) and evaluates its held-out part as the split ``"fold"``. ``stack`` > 1:
  the folds ``fold .. fold + stack - 1`` (training parts of one size, held-out parts of one
  size), ``size // stack`` configs each, run as one segment vmapped over the folds, so the
  traced program holds one step whatever the number of folds (XLA's compile time still grows
  with k, measured: about 2x from 2 to 8 folds, against 3x before)."""

  size: int
  batch_size: int
  fold: int = -1
  folds: int = 0
  stack: int = 1


@dataclasses.dataclass(frozen=True)
class Spec:
  """The static structure of a program: two calls with equal specs (and equal input shapes)
  share one compilation."""

  batch_size: int
  eval_every: int  # steps per block; an evaluation follows each block
  blocks: int  # blocks per chunk (a host sync after each chunk)
  log_every: int  # the loss is recorded as means over this many steps (divides eval_every)
  eval_splits: tuple[str, ...]  # evaluated splits ("val", ...); () evaluates nothing
  monitor: str | None  # the metric fed to the optimizer when ``plateau``
  plateau: bool
  step_rules: tuple[_rules.Rule, ...]
  eval_rules: tuple[_rules.Rule, ...]
  update_ratio: bool  # record ||update|| / ||params|| of the last step before each evaluation
  key_impl: str | None  # None: raw uint32 keys; else the impl name of typed keys
  stateful: bool = False  # the task carries model state / randomness (task.step_loss)
  serial: int = 1  # config blocks per device run one after another (lax.map); 1: all vmapped
  devices: int = 1  # devices the config axis is sharded over (blocks stay within a device)
  eval_batch: int | None = None  # evaluate splits in pieces of this many examples
  compute_dtype: str | None = None  # forward/backward in this dtype (float32 master weights)
  segments: tuple[Segment, ...] | None = None  # None: one segment (batch_size, whole split)
  host_fed: bool = False  # minibatches come from the host per chunk instead of the train split
  noise_scale: bool = False  # two-batch noise statistics at each evaluation (outside the steps)
  # the run's last step may fall inside a block (steps not a multiple of eval_every): the
  # update ratio is then computed under a per-step condition instead of on a peeled last step
  ragged: bool = False

  @property
  def chunk_steps(self) -> int:
    return self.eval_every * self.blocks


class Carry(NamedTuple):
  """The state of every run, leaves ``(S, C, ...)`` except ``fresh``."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree  # BatchNorm statistics...; () for a stateless task
  alive: jax.Array  # bool: neither stopped nor diverged
  stopped_at: jax.Array  # int32: updates received when it stopped, -1 while running
  reason: jax.Array  # int32: code in STOP_REASONS, 0 while running
  rule_states: tuple  # one state per rule (step rules, then evaluation rules)
  last_value: jax.Array  # the monitored metric at the latest evaluation (plateau feedback)
  ratio: jax.Array  # ||update|| / ||params|| of the latest update
  fresh: jax.Array  # bool (): the next step is the first after an evaluation


class Out(NamedTuple):
  loss: jax.Array  # (S, C, chunk_steps // log_every)
  metrics: dict  # name -> (S, C, blocks)
  step_records: dict  # "rule_i/name" -> (S, C, chunk_steps)
  eval_records: dict  # "rule_i/name" -> (S, C, blocks)
  ratio: jax.Array  # (S, C, blocks)
  noise: Any = ()  # (S, C, blocks, 2) the two-batch statistics, or () when not recorded


class Program(NamedTuple):
  init: Callable  # (hparams, ramp, init_keys, n_configs_like, rule_args) -> Carry
  chunk: Callable  # (carry, hparams, ramp, keys, start, total, data, rule_args) -> (carry, Out)
  steer: Callable  # (carry, src, stop, step) -> carry


def _wrap(keys: jax.Array, impl: str | None) -> jax.Array:
  return keys if impl is None else jax.random.wrap_key_data(keys, impl=impl)


def _cast(tree: PyTree, dtype) -> PyTree:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _weighted_eval(metric_fn, arrays: dict, piece: int | None) -> dict:
  """Metrics of a split, in pieces of ``piece`` examples combined by example-weighted means
  (metrics must be means over examples: loss, accuracy, error)."""
  n = int(jax.tree.leaves(arrays)[0].shape[0])
  if piece is None or piece >= n:
    return metric_fn(arrays)
  full, rest = divmod(n, piece)
  head = jax.tree.map(lambda a: a[: full * piece].reshape(full, piece, *a.shape[1:]), arrays)
  per = jax.lax.map(metric_fn, head)  # name -> (full, ...)
  out = {k: v.sum(0) * piece for k, v in per.items()}
  if rest:
    tail = metric_fn(jax.tree.map(lambda a: a[full * piece:], arrays))
    out = {k: out[k] + tail[k] * rest for k in out}
  return {k: v / n for k, v in out.items()}


class RunState(NamedTuple):
  """One run's carried state inside a step (the per-run leaves of :class:`Carry`)."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  alive: jax.Array
  stopped_at: jax.Array
  reason: jax.Array
  rule_states: tuple
  ratio: jax.Array


class StepShared(NamedTuple):
  """What every run of a step shares: the ramp's values, the step, whether it runs, the
  plateau's fresh flag, the rules' numbers and whether an evaluation follows."""

  ramp_t: dict
  t: jax.Array
  go: jax.Array
  fresh: jax.Array
  rule_args: tuple
  last: jax.Array


def _run_state(c: Carry) -> RunState:
  return RunState(c.params, c.opt_state, c.model_state, c.alive, c.stopped_at, c.reason,
                  c.rule_states, c.ratio)


class _Builder:
  """The pure functions of one spec; :func:`build_program` returns them as a :class:`Program`."""

  def __init__(self, task, optimizer, objective, spec: Spec):
    self.task, self.optimizer, self.objective, self.spec = task, optimizer, objective, spec
    self.dtype = jnp.result_type(float)
    self.rules = spec.step_rules + spec.eval_rules
    self.n_step_rules = len(spec.step_rules)
    self.cdtype = None if spec.compute_dtype is None else jnp.dtype(spec.compute_dtype)
    # runs vmapped over configs (hyperparameters per config), then over seeds (batches and
    # model keys per seed)
    self.seeds_step = {
        mode: jax.vmap(jax.vmap(functools.partial(self.config_step, ratio_mode=mode),
                                in_axes=(0, 0, 0, None, None)), in_axes=(0, None, 0, 0, None))
        for mode in ("off", "last", "cond")}
    self.seeds_noise = jax.vmap(jax.vmap(self.noise_stats, in_axes=(0, 0, None, None, 0)),
                                in_axes=(0, 0, 0, 0, None))
    self.seeds_eval = jax.vmap(jax.vmap(self.config_eval, in_axes=(0,) * 7 + (None, None, None)),
                               in_axes=(0,) * 7 + (None, None, None))

  # -- one config ---------------------------------------------------------------------------

  def apply_rules(self, rule_list, offset, rstates, ctx, rule_args, run, code):
    """Updates rules ``offset..`` of one run (states kept where it does not run); the first
    non-zero stop code wins (``code`` may already hold the non-finite check's)."""
    new_rs, records = list(rstates), {}
    for j, rule in enumerate(rule_list):
      i = offset + j
      st, c, rec = rule.update(rstates[i], ctx, rule_args[i])
      new_rs[i] = _where(run, st, rstates[i])
      code = jnp.where(code == 0, c, code)
      for k, v in rec.items():
        records[f"{i}/{k}"] = jnp.where(run, v, jnp.nan).astype(self.dtype)
    return tuple(new_rs), code, records

  def loss_fn(self, params, mstate, batch, key, hp, use_objective: bool = True):
    if self.cdtype is not None:
      # Mixed precision: the forward and backward pass in ``cdtype``; the gradient arrives
      # in the master weights' dtype through the cast.
      # The model state (BatchNorm's running statistics) stays in its dtype: rounding it to
      # bfloat16 every step would lose the slow running averages.
      params, batch = _cast(params, self.cdtype), _cast(batch, self.cdtype)
    if self.spec.stateful:
      loss, new_state = self.task.step_loss(params, mstate, batch, key, hp)
    else:
      loss, new_state = self.task.loss(params, batch), mstate
    loss = loss.astype(self.dtype)
    loss = loss if (self.objective is None or not use_objective) else self.objective(loss, hp)
    return loss, new_state

  def noise_stats(self, params, mstate, batch, key, hp) -> jax.Array:
    """``(spread, |G_big|^2)`` of one run's minibatch split into ``k`` equal parts
    (:func:`noise_parts`): the gradient of each part (``vmap``, ``k`` gradients held at once),
    then :func:`micro_batch_stats`. The task's loss without the objective (the noise of the
    task's gradient, as :func:`optaxlr.noise_scale` measures it); a stateful model normalises
    each part with its own batch statistics (as each device of data-parallel training does),
    its state updates are dropped, and each part draws its own random streams."""
    b = int(jax.tree.leaves(batch)[0].shape[0])
    k, small = noise_parts(b)
    parts = jax.tree.map(lambda a: a[: k * small].reshape(k, small, *a.shape[1:]), batch)

    def part_grad(part, i):
      pkey = jax.random.fold_in(key, i) if self.spec.stateful else key
      return jax.grad(lambda p: self.loss_fn(p, mstate, part, pkey, hp, use_objective=False)[0])(
          params)

    grads = jax.vmap(part_grad)(parts, jnp.arange(k))
    return jnp.stack(micro_batch_stats(grads)).astype(self.dtype)

  def config_step(self, r: RunState, hp, value, seed_in, sh: StepShared, ratio_mode: str = "cond"):
    """One step of one run: ``seed_in`` is its seed's ``(batch, model key)``. ``ratio_mode``
    (with ``spec.update_ratio``): "last", this step is the last before an evaluation (record
    its update ratio); "off", it is not; "cond", either (``sh.last`` says)."""
    spec = self.spec
    batch, key = seed_in
    hp = {**hp, **sh.ramp_t}
    params, mstate = r.params, r.model_state
    (loss, new_mstate), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
        params, mstate, batch, key, hp)
    if self.cdtype is not None:
      new_mstate = jax.tree.map(lambda new, old: new.astype(old.dtype), new_mstate, mstate)
    # The per-step non-finite check reads the step's loss (and a stateful model's new state),
    # which exist before the update: a run whose loss is not finite keeps the state that
    # produced it, and the freeze below fuses into the optimizer's update (no pass of its own
    # over the parameters, which are updated in place). A check of the new parameters (or of
    # the gradient) would be a reduction over them that must finish before the freeze: a
    # transposed copy, a reduction, a select and a copy of the parameters per step: about 6%
    # of an MLP step at 64 configs on the CPU for the parameters' check, more for the
    # gradient's (BENCHMARKS.md). Non-finite parameters from a finite loss (a NaN
    # gradient) give a non-finite loss at the next step, and every evaluation checks the
    # parameters themselves (:meth:`config_eval`).
    ok = jnp.isfinite(loss)
    if spec.stateful:
      ok = ok & all_finite(new_mstate)
    tx = optax.with_extra_args_support(self.optimizer(hp))
    extra = {"value": value, "evaluate": sh.fresh} if spec.plateau else {}
    updates, new_opt = tx.update(grads, r.opt_state, params, **extra)
    new_params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    run = r.alive & sh.go
    code = jnp.where(ok, 0, _rules.reason_code("diverged"))
    ctx = _rules.StepContext(step=sh.t, loss=loss, params=new_params, opt_state=new_opt)
    new_rs, code, records = self.apply_rules(spec.step_rules, 0, r.rule_states, ctx,
                                             sh.rule_args, run, code)
    stop = run & (code != 0)
    keep = run & ~stop
    # A stopped run's parameters (and model state) are frozen (selected, fused into the add);
    # its optimizer state is not selected (one pass less over it per step: ~10% of a step at 16
    # configs of an MLP on the CPU) and may move on, which changes none of its numbers.
    params = _where(keep, new_params, params)
    mstate = _where(keep, new_mstate, mstate) if spec.stateful else mstate
    ratio = r.ratio
    if spec.update_ratio and ratio_mode != "off":
      # Only the last step before an evaluation is recorded: the blocks' last steps are
      # peeled off their scan (:meth:`_ChunkRun.block_body`), so no other step holds the
      # update and the old parameters for the norms (which would cost a copy of the
      # parameters per step). "cond": ``last`` is the same for every run, so the conditional
      # stays one under vmap.
      def norms():
        return jnp.where(keep, jnp.sqrt(_sq_norm(updates) / _sq_norm(params)), r.ratio)
      ratio = norms() if ratio_mode == "last" else jax.lax.cond(sh.last, norms, lambda: r.ratio)
    out = RunState(params, new_opt, mstate, r.alive & ~stop, jnp.where(stop, sh.t, r.stopped_at),
                   jnp.where(stop, code, r.reason), tuple(new_rs), ratio)
    return out, (jnp.where(run, loss, 0).astype(self.dtype), run, records)

  def evaluate(self, params, mstate, hparams, evals):
    spec, task, out = self.spec, self.task, {}
    for split, data in evals.items():
      def one(p, m, h, data=data):
        def metric_fn(piece):
          return task.evaluate(p, m, piece, h) if spec.stateful else task.metrics(p, piece)
        return _weighted_eval(metric_fn, data, spec.eval_batch)
      per = jax.vmap(jax.vmap(one, in_axes=(0, 0, 0)), in_axes=(0, 0, None))(params, mstate, hparams)
      out.update({f"{split}/{k}": v.astype(self.dtype) for k, v in per.items()})
    return out

  def config_eval(self, rstates, alive, stopped_at, reason, params, opt_state, metrics, end, go,
                  rule_args):
    ctx = _rules.EvalContext(step=end, metrics=metrics, params=params, opt_state=opt_state)
    run = alive & go
    # Parameters that are not finite although every loss was (a NaN gradient whose run has
    # not taken its next step yet, a parameter the loss does not read) stop the run here.
    code = jnp.where(all_finite(params), 0, _rules.reason_code("diverged"))
    new_rs, code, records = self.apply_rules(self.spec.eval_rules, self.n_step_rules, rstates,
                                             ctx, rule_args, run, code)
    stop = run & (code != 0)
    return (new_rs, alive & ~stop, jnp.where(stop, end, stopped_at),
            jnp.where(stop, code, reason), records)

  def segments_of(self, n_cfg: int) -> tuple[Segment, ...]:
    if self.spec.segments is None:
      return (Segment(n_cfg, self.spec.batch_size),)
    assert sum(s.size for s in self.spec.segments) == n_cfg, (self.spec.segments, n_cfg)
    return self.spec.segments

  # -- the program's functions -----------------------------------------------------------------

  def chunk_vmapped(self, carry: Carry, hparams, ramp, keys, start, total, data, rule_args):
    """One chunk of every config in ``carry`` at once (the config axis vmapped)."""
    return _ChunkRun(self, carry, hparams, ramp, keys, total, data, rule_args).run(carry, start)

  def chunk(self, carry: Carry, hparams, ramp, keys, start, total, data, rule_args):
    spec = self.spec
    if spec.serial == 1:
      return self.chunk_vmapped(carry, hparams, ramp, keys, start, total, data, rule_args)
    # Config blocks one after another (lax.map), each block's configs vmapped: leaves
    # (S, D * serial * v, ...) -> (serial, S, D * v, ...), blocks within each device.
    d, m = spec.devices, spec.serial
    n_cfg = int(carry.alive.shape[1])
    v = n_cfg // (d * m)

    def split_run(x):  # (S, C, ...) -> (m, S, D * v, ...)
      x = x.reshape(x.shape[0], d, m, v, *x.shape[2:])
      return jnp.moveaxis(x, 2, 0).reshape(m, x.shape[0], d * v, *x.shape[4:])

    def join_run(x):  # (m, S, D * v, ...) -> (S, C, ...)
      x = x.reshape(m, x.shape[1], d, v, *x.shape[3:])
      return jnp.moveaxis(x, 0, 2).reshape(x.shape[1], d * m * v, *x.shape[4:])

    def split_cfg(x):  # (C, ...) -> (m, D * v, ...)
      x = x.reshape(d, m, v, *x.shape[1:])
      return jnp.moveaxis(x, 1, 0).reshape(m, d * v, *x.shape[3:])

    runs = jax.tree.map(split_run, carry._replace(fresh=None))
    hps = jax.tree.map(split_cfg, hparams)

    def one(args):
      c, h = args
      c = c._replace(fresh=carry.fresh)
      c, out = self.chunk_vmapped(c, h, ramp, keys, start, total, data, rule_args)
      return c._replace(fresh=None), (out, c.fresh)

    new, (out, fresh) = jax.lax.map(one, (runs, hps))
    new = jax.tree.map(join_run, new)._replace(fresh=fresh[0])
    return new, jax.tree.map(join_run, out)

  def init(self, hparams, ramp, init_keys, n_configs_like, rule_args):
    spec, task, dtype = self.spec, self.task, self.dtype
    init_keys = _wrap(init_keys, spec.key_impl)
    ramp0 = {k: v[0] for k, v in ramp.items()}

    def one(k, h, i):
      del i  # sizes the config axis when there are no hyperparameters
      params = task.init(k)
      mstate = task.initial_state(k) if spec.stateful else ()
      return params, self.optimizer({**h, **ramp0}).init(params), mstate

    params, opt_state, mstate = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, None, None))(
        init_keys, hparams, n_configs_like)
    shape = (init_keys.shape[0], n_configs_like.shape[0])

    def rule_state(rule, args):
      st = rule.init(args, dtype)
      return jax.tree.map(lambda x: jnp.broadcast_to(x, shape + jnp.shape(x)), st)

    return Carry(
        params=params, opt_state=opt_state, model_state=mstate,
        alive=jnp.ones(shape, bool),
        stopped_at=jnp.full(shape, -1, jnp.int32),
        reason=jnp.zeros(shape, jnp.int32),
        rule_states=tuple(rule_state(r, a) for r, a in zip(self.rules, rule_args)),
        last_value=jnp.full(shape, jnp.nan, dtype),
        ratio=jnp.full(shape, jnp.nan, dtype),
        fresh=jnp.array(False),
    )

  @staticmethod
  def steer(carry: Carry, src: jax.Array, stop: jax.Array, step: jax.Array) -> Carry:
    """Copies run ``src[j]`` into slot ``j`` (every seed), then stops the live runs in
    ``stop`` (``(C,)`` bool) with reason "host" after ``step`` updates."""
    rows = jax.tree.map(lambda x: jnp.take(x, src, axis=1), carry._replace(fresh=None))
    now = rows.alive & stop[None]
    return rows._replace(
        fresh=carry.fresh, alive=rows.alive & ~now,
        stopped_at=jnp.where(now, step, rows.stopped_at),
        reason=jnp.where(now, _rules.reason_code("host"), rows.reason),
    )


# Minibatch positions of a block computed ahead of its steps up to this many int32 entries
# (eval_every x seeds x batch size, summed over segments: 64 MiB); longer blocks draw them per
# step (:meth:`_ChunkRun.batch`).
_INDEX_AHEAD_MAX = 2**24


class _ChunkRun:
  """One chunk of every config at once: blocks of ``eval_every`` steps (a scan), each followed
  by an evaluation; per batch-size/fold segment its own minibatches."""

  def __init__(self, b: _Builder, carry: Carry, hparams, ramp, keys, total, data, rule_args):
    self.b, self.spec = b, b.spec
    self.hparams, self.ramp, self.total, self.data, self.rule_args = hparams, ramp, total, data, rule_args
    self.data_keys = _wrap(keys["data"], self.spec.key_impl)
    self.model_keys = _wrap(keys["model"], self.spec.key_impl)
    self.train = data["train"]
    self.segs = b.segments_of(int(carry.alive.shape[1]))
    self.offs = np.concatenate([[0], np.cumsum([s.size for s in self.segs])]).tolist()
    self.multi = len(self.segs) > 1

  def seg_slice(self, tree, k):
    if not self.multi:
      return tree
    offs = self.offs
    return jax.tree.map(lambda x: jax.lax.slice_in_dim(x, offs[k], offs[k + 1], axis=1), tree)

  def seg_hp(self, k):
    if not self.multi:
      return self.hparams
    return jax.tree.map(lambda x: x[self.offs[k]:self.offs[k + 1]], self.hparams)

  def n_examples(self, k):
    return (int(self.data["fold_train"][k].shape[-1]) if self.segs[k].fold >= 0
            else int(jax.tree.leaves(self.train)[0].shape[0]))

  def stacked(self, k, fn, *args):
    """``fn(*args)`` of segment ``k``: as is, or for a segment of ``stack`` folds vmapped over
    them (``args``' leaves: run state ``(S, C, ...)``, hyperparameters ``(C, ...)``, fold data
    ``(stack, ...)``, marked by position: 'r', 'h', 'f'), its outputs ``(S, C, ...)``."""
    st = self.segs[k].stack
    if st == 1:
      return fn(*(a for _, a in args))
    split = {"r": lambda x: jnp.moveaxis(x.reshape(x.shape[0], st, -1, *x.shape[2:]), 1, 0),
             "h": lambda x: x.reshape(st, -1, *x.shape[1:]), "f": lambda x: x}
    ins = [jax.tree.map(split[kind], a) for kind, a in args]
    out = jax.vmap(fn)(*ins)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:]), out)

  def per_epoch(self, k) -> int:
    return self.n_examples(k) // self.segs[k].batch_size

  def perms(self, k, t):
    """Segment ``k``'s permutations ``(S, N)`` of the epoch of step ``t``."""
    return self.epoch_perms(k, t // self.per_epoch(k))

  def epoch_perms(self, k, epoch):
    n = self.n_examples(k)
    return jax.vmap(lambda key: epoch_permutation(key, epoch, n))(self.data_keys)

  def take(self, k, idx):
    """Segment ``k``'s minibatch at positions ``idx`` ``(S, B)`` of its training examples."""
    if self.segs[k].fold >= 0:  # (S, B), or (stack, S, B) for a segment of stacked folds
      idx = jnp.take(self.data["fold_train"][k], idx, axis=-1)
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), self.train)

  def batch(self, k, t, perm_k):
    """Segment ``k``'s minibatch of step ``t`` and its epoch's permutation ``(perm, epoch)``
    (drawn when ``t`` starts an epoch): the per-step path, for blocks too long to index ahead."""
    b, per_epoch = self.segs[k].batch_size, self.per_epoch(k)
    pos = t % per_epoch
    pk = jax.lax.cond(pos == 0, lambda: (self.perms(k, t), t // per_epoch), lambda: perm_k)
    return self.take(k, jax.lax.dynamic_slice_in_dim(pk[0], pos * b, b, axis=1)), pk

  def indexed_ahead(self) -> bool:
    """Whether each block's minibatch positions are computed before its steps run
    (:meth:`block_indices`): when they take at most ``_INDEX_AHEAD_MAX`` int32 entries."""
    s = int(self.data_keys.shape[0])
    return sum(self.spec.eval_every * s * seg.batch_size for seg in self.segs) <= _INDEX_AHEAD_MAX

  def block_indices(self, k, b0, perm_k):
    """The permutation ``(perm, epoch)`` of the last step of the block of steps from ``b0``
    and segment ``k``'s minibatch positions ``(eval_every, S, B)`` in it.

    Each epoch the block touches is drawn once (a loop over epochs, the carried one reused),
    so no step holds a conditional: on the CPU the per-step conditional copied the whole
    permutation at every step (0.14 ms of a 2.5 ms step at 4 configs of the benchmark MLP),
    and on a GPU its predicate is read by the host. The positions equal :meth:`batch`'s."""
    b, pe, w = self.segs[k].batch_size, self.per_epoch(k), self.spec.eval_every
    t = b0 + jnp.arange(w, dtype=jnp.int32)
    cols = (t % pe)[:, None] * b + jnp.arange(b, dtype=jnp.int32)[None]  # (W, B)
    s = int(self.data_keys.shape[0])

    def epoch(e, state):
      (perm, ep), idx = state
      perm, ep = jax.lax.cond(e == ep, lambda: (perm, ep), lambda: (self.epoch_perms(k, e), e))
      rows = jnp.moveaxis(jnp.take(perm, cols, axis=1), 1, 0)  # (W, S, B)
      return (perm, ep), jnp.where((t // pe == e)[:, None, None], rows, idx)

    idx0 = jnp.zeros((w, s, b), perm_k[0].dtype)
    return jax.lax.fori_loop(b0 // pe, (b0 + w - 1) // pe + 1, epoch, (perm_k, idx0))

  def step_body(self, state, xs, ratio_mode: str = "cond"):
    c, perm = state
    t, last = xs["t"], xs["last"]
    spec, offs = self.spec, self.offs
    ramp_t = {k: v[jnp.minimum(t, v.shape[0] - 1)] for k, v in self.ramp.items()}
    value = jnp.where(c.fresh, c.last_value, jnp.nan)
    # per-step model keys (Dropout...), only for a model that takes them
    mkeys = (jax.vmap(lambda key: jax.random.fold_in(key, t))(self.model_keys) if spec.stateful
             else self.model_keys)
    shared = StepShared(ramp_t, t, t < self.total, c.fresh, self.rule_args, last)
    new_perm, outs = [], []
    for k in range(len(self.segs)):
      if spec.host_fed:
        batch = xs["batch"]
        new_perm.append(perm[k])
      elif "idx" in xs:
        batch = self.take(k, xs["idx"][k])
        new_perm.append(perm[k])
      else:
        batch, pk = self.batch(k, t, perm[k])
        new_perm.append(pk)
      sc = self.seg_slice(_run_state(c), k)
      outs.append(self.stacked(
          k, lambda sc, hp, v, batch: self.b.seeds_step[ratio_mode](sc, hp, v, (batch, mkeys), shared),
          ("r", sc), ("h", self.seg_hp(k)),
          ("r", value[:, offs[k]:offs[k + 1]] if self.multi else value),
          ("f" if self.segs[k].stack > 1 else "r", batch)))
    if self.multi:
      (new, (loss, ran, recs)) = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *outs)
    else:
      (new, (loss, ran, recs)) = outs[0]
    c = c._replace(params=new.params, opt_state=new.opt_state, model_state=new.model_state,
                   alive=new.alive, stopped_at=new.stopped_at, reason=new.reason,
                   rule_states=new.rule_states, ratio=new.ratio, fresh=jnp.array(False))
    return (c, tuple(new_perm)), (loss, ran, recs)

  def evaluate_all(self, c):
    segs, data = self.segs, self.data
    if not self.multi and (not segs or segs[0].fold < 0):
      return self.b.evaluate(c.params, c.model_state, self.hparams, data["evals"])
    parts = []
    for k, seg in enumerate(segs):
      sc = self.seg_slice(c._replace(fresh=None), k)

      def ev(p, m, h, fold, seg=seg):
        return self.b.evaluate(p, m, h, {**data["evals"], **({"fold": fold} if seg.fold >= 0 else {})})
      parts.append(self.stacked(k, ev, ("r", sc.params), ("r", sc.model_state),
                                ("h", self.seg_hp(k)),
                                ("f", data["fold_eval"][k] if seg.fold >= 0 else None)))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)

  def noise_all(self, c: Carry, end, go, xs) -> jax.Array:
    """``(S, C, 2)`` two-batch statistics at the evaluated parameters, once per evaluation
    and outside the steps' scan (nothing is added to the step; about one gradient of a
    minibatch per evaluation): each run's minibatch of the block's last step ``end - 1``,
    split into parts (:meth:`_Builder.noise_stats`). NaN for a run that did not run."""
    spec = self.spec
    t = end - 1
    mkeys = (jax.vmap(lambda key: jax.random.fold_in(key, t))(self.model_keys) if spec.stateful
             else self.model_keys)
    parts = []
    for k in range(len(self.segs)):
      if spec.host_fed:
        batch = jax.tree.map(lambda a: a[-1], xs["batch"])
      else:
        b = self.segs[k].batch_size
        pos = t % self.per_epoch(k)
        batch = self.take(k, jax.lax.dynamic_slice_in_dim(self.perms(k, t), pos * b, b, axis=1))
      sc = self.seg_slice(c._replace(fresh=None), k)
      hp = self.seg_hp(k)
      n_k = self.segs[k].size
      hp = {**hp, **{name: jnp.broadcast_to(v[jnp.minimum(t, v.shape[0] - 1)], (n_k,))
                     for name, v in self.ramp.items()}}
      st = self.b.seeds_noise(sc.params, sc.model_state, batch, mkeys, hp)
      parts.append(jnp.where((sc.alive & go)[..., None], st, jnp.nan))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)

  def block_body(self, state, xs):
    spec, total = self.spec, self.total
    b0 = xs["b0"]
    steps = b0 + jnp.arange(spec.eval_every, dtype=jnp.int32)
    # the last step before the block's evaluation (blocks start at ``start``, any step)
    inner = {"t": steps, "last": (steps == b0 + spec.eval_every - 1) | (steps + 1 == total)}
    if spec.host_fed:
      inner["batch"] = xs["batch"]  # leaves (eval_every, S, B, ...)
    elif self.indexed_ahead():
      c, perm = state
      perm, idx = zip(*(self.block_indices(k, b0, perm[k]) for k in range(len(self.segs))))
      state, inner["idx"] = (c, tuple(perm)), tuple(idx)
    if spec.update_ratio and not spec.ragged and spec.eval_every > 1:
      # The block's last step (the one whose update ratio is recorded) apart from the others:
      # measured at 64 configs of the MLP on the CPU, 1.03x a hand-written program against
      # 1.08-1.12x with the per-step conditional; the step is compiled twice (+10-60% compile).
      head = jax.tree.map(lambda a: a[:-1], inner)
      tail = jax.tree.map(lambda a: a[-1], inner)
      state, outs = jax.lax.scan(functools.partial(self.step_body, ratio_mode="off"), state, head)
      (c, perm), out_t = self.step_body(state, tail, ratio_mode="last")
      loss, ran, recs = jax.tree.map(lambda h, t: jnp.concatenate([h, t[None]]), outs, out_t)
    else:
      mode = ("cond" if spec.ragged else "last") if spec.update_ratio else "off"
      (c, perm), (loss, ran, recs) = jax.lax.scan(
          functools.partial(self.step_body, ratio_mode=mode), state, inner)
    end = jnp.minimum(b0 + spec.eval_every, total)
    go = b0 < total
    metrics = self.evaluate_all(c)
    noise = self.noise_all(c, end, go, xs) if spec.noise_scale else ()
    # the evaluation rules, and the parameters' non-finite check (:meth:`config_eval`)
    rstates, alive, stopped_at, reason, erecs = self.b.seeds_eval(
        c.rule_states, c.alive, c.stopped_at, c.reason, c.params, c.opt_state,
        metrics, end, go, self.rule_args)
    c = c._replace(rule_states=rstates, alive=alive, stopped_at=stopped_at, reason=reason)
    if spec.monitor is not None:
      c = c._replace(last_value=metrics[spec.monitor], fresh=jnp.array(True))
    k = spec.log_every
    loss = loss.reshape(spec.eval_every // k, k, *loss.shape[1:])
    ran = ran.reshape(loss.shape)
    cnt = ran.sum(1)
    # The mean over the steps a run ran in the window (NaN for none; a non-finite loss of
    # the step that stopped a diverged run makes its window's mean non-finite).
    mean = jnp.where(cnt > 0, jnp.where(ran, loss, 0).sum(1) / jnp.maximum(cnt, 1), jnp.nan)
    return (c, perm), (mean, metrics, recs, erecs, c.ratio, noise)

  def run(self, carry: Carry, start):
    spec = self.spec
    if spec.host_fed:
      perm0 = tuple((jnp.zeros((1,), jnp.int32), jnp.int32(0)) for _ in self.segs)
    else:
      perm0 = tuple((self.perms(k, start), start // self.per_epoch(k))
                    for k in range(len(self.segs)))
    b0s = start + spec.eval_every * jnp.arange(spec.blocks, dtype=jnp.int32)
    xs = {"b0": b0s}
    if spec.host_fed:
      # (S, chunk_steps, B, ...) -> (blocks, eval_every, S, B, ...)
      xs["batch"] = jax.tree.map(
          lambda a: jnp.moveaxis(a, 0, 1).reshape(spec.blocks, spec.eval_every, *a.shape[:1],
                                                  *a.shape[2:]), self.data["batches"])
    (carry, _), (loss, metrics, recs, erecs, ratio, noise) = jax.lax.scan(
        self.block_body, (carry, perm0), xs)
    # (blocks, W, S, C) -> (S, C, blocks * W); (blocks, S, C) -> (S, C, blocks)
    last = lambda x: jnp.moveaxis(x, 0, -1)  # noqa: E731
    flat = lambda x: jnp.moveaxis(x.reshape(-1, *x.shape[2:]), 0, -1)  # noqa: E731
    out = Out(
        loss=flat(loss),
        metrics={k: last(v) for k, v in metrics.items()},
        step_records={k: flat(v) for k, v in recs.items()},
        eval_records={k: last(v) for k, v in erecs.items()},
        ratio=last(ratio),
        noise=jax.tree.map(lambda x: jnp.moveaxis(x, 0, 2), noise),  # (S, C, blocks, 2)
    )
    return carry, out


def build_program(task, optimizer, objective, spec: Spec) -> Program:
  """The pure functions of one spec (see the module docstring), to be jitted."""
  b = _Builder(task, optimizer, objective, spec)
  return Program(init=b.init, chunk=b.chunk, steer=b.steer)


# ----------------------------------------------------------------------------------------
# The compile cache: the same structure with other values does not compile again.


class _Compiled:
  """Jitted functions of a program and their compiled executables per input signature."""

  def memory(self, exe) -> int | None:
    """Peak bytes per device of a compiled chunk (cached per executable)."""
    key = id(exe)
    if key not in self._bytes:
      try:
        m = exe.memory_analysis()
        self._bytes[key] = None if m is None else int(
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
      except Exception:  # noqa: BLE001 -- not every backend reports it
        self._bytes[key] = None
    return self._bytes[key]

  def __init__(self, program: Program, donate: bool):
    self._bytes: dict = {}
    self.init = jax.jit(program.init)
    self.chunk = jax.jit(program.chunk, donate_argnums=(0,) if donate else ())
    self.steer = jax.jit(program.steer)
    self.executables: dict = {}
    self.init_executables: dict = {}

  def compiled_init(self, *args) -> tuple[Any, float]:
    """The initialisation's executable for these arguments and the seconds spent compiling it
    now (0.0 when it was compiled before): compilation never counts as run time."""
    return self._compiled(self.init, self.init_executables, args, with_sharding=True)

  def compiled_chunk(self, *args) -> tuple[Any, float]:
    """The executable for these arguments' shapes and shardings, and the seconds spent
    compiling it now (0.0 when it was compiled before)."""
    return self._compiled(self.chunk, self.executables, args)

  @staticmethod
  def _compiled(fun, store: dict, args, with_sharding: bool = False) -> tuple[Any, float]:
    leaves, treedef = jax.tree.flatten(args)
    sig = (treedef, tuple(
        (jnp.shape(x), str(jnp.result_type(x))) + ((getattr(x, "sharding", None),) if with_sharding else ())
        for x in leaves
    ))
    try:
      hash(sig)
    except TypeError:  # pragma: no cover -- an unhashable sharding
      sig = None
    if sig is not None and sig in store:
      return store[sig], 0.0
    t0 = time.perf_counter()
    exe = fun.lower(*args).compile()
    dt = time.perf_counter() - t0
    if sig is not None:
      store[sig] = exe
      while len(store) > 4:
        store.pop(next(iter(store)))
    return exe, dt


_CACHE: collections.OrderedDict = collections.OrderedDict()
CACHE_SIZE = 8


def get_program(task, optimizer, objective, spec: Spec, *, donate: bool) -> _Compiled:
  """The cached program of ``(task, optimizer, objective, spec)``.

  Functions are keyed by object and by their code's identity (:func:`_fingerprint.code_id`:
  bytecode, the names they call, the globals, closures, partial arguments, dicts and class
  attributes they read), so a changed global compiles again. At most :data:`CACHE_SIZE`
  programs are kept (least recently used dropped first)."""
  from optaxlr.engine import _fingerprint

  key = (task, optimizer, objective, spec, donate, bool(jax.config.jax_enable_x64),
         _fingerprint.code_id(task, optimizer, objective, local=True))
  try:
    hash(key)
  except TypeError:
    return _Compiled(build_program(task, optimizer, objective, spec), donate)
  if key in _CACHE:
    _CACHE.move_to_end(key)
    return _CACHE[key]
  prog = _Compiled(build_program(task, optimizer, objective, spec), donate)
  _CACHE[key] = prog
  while len(_CACHE) > CACHE_SIZE:
    _CACHE.popitem(last=False)
  return prog


def clear_cache() -> None:
  """Drops every cached program (frees their executables)."""
  _CACHE.clear()


# ----------------------------------------------------------------------------------------
# Host-side helpers shared by the drivers.


class ReadRecorder(Mapping):
  """A read-only dict that records which keys were read (to reject unused axes)."""

  def __init__(self, data: Mapping[str, Any], seen: set[str]):
    self._data = dict(data)
    self._seen = seen

  def __getitem__(self, k):
    self._seen.add(k)
    return self._data[k]

  def __iter__(self):
    self._seen.update(self._data)
    return iter(self._data)

  def __len__(self):
    return len(self._data)

  def __contains__(self, k):
    return k in self._data

  def __repr__(self):
    return repr(self._data)


def to_host(x) -> np.ndarray:
  """A (possibly multi-process, sharded) array as a NumPy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def put(x: np.ndarray, sharding) -> jax.Array:
  """A host array placed with ``sharding`` (works across processes: no equality check)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
