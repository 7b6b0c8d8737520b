"""Reduce-on-plateau (PyTorch ``ReduceLROnPlateau``) and early stopping (Keras ``EarlyStopping``).

Both are pure state machines over arrays: every numeric hyperparameter may be a Python number
or a JAX array (a tracer under ``jit``/``vmap`` included), so each config of a ``vmap``-ed grid
carries its own plateau and stopping state, and nothing branches in Python on a value.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v

__all__ = [
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "EarlyStoppingState",
    "EarlyStopping",
    "early_stopping",
    "keep_best",
]


def _fdtype() -> Any:
  return jnp.result_type(float)


def _integer(fn: str, name: str, value: Any) -> None:
  """Checks a concrete count: an integer value (any dtype) ``>= 0``."""
  v.check(fn, name, value, lambda x: (x >= 0) & (x == np.floor(x)), "an integer >= 0")


def _better(mode: str, a: jax.Array, ref: jax.Array) -> jax.Array:
  return a < ref if mode == "min" else a > ref


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  """Per-leaf ``where(pred, new, old)`` for two NamedTuples of scalars."""
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o).astype(o.dtype), new, old)


# ---------------------------------------------------------------------------------------------
# reduce_on_plateau
# ---------------------------------------------------------------------------------------------


class ReduceOnPlateauState(NamedTuple):
  """State of :func:`reduce_on_plateau`; every field is a scalar array (one per config under vmap).

  Attributes:
    scale: the current multiplier, PyTorch's ``lr / initial_lr`` (float).
    best: best metric seen so far, ``+inf`` (``-inf`` in ``"max"`` mode) before any (float).
    num_bad_epochs: evaluations since the last improvement, PyTorch's ``num_bad_epochs`` (int32).
    cooldown_counter: evaluations of cooldown left, PyTorch's ``cooldown_counter`` (int32).
    num_reductions: how many times the scale was actually lowered (int32).
    count: how many evaluations were seen, PyTorch's ``last_epoch`` (int32).
    done: the scale can fall no further: ``max_reductions`` reductions were made, the scale
      reached ``min_scale``, or a due reduction was smaller than ``eps`` (bool, sticky).
    last_value: the latest non-NaN ``value`` of a call that was not skipped with
      ``evaluate=False``, NaN before any (float); a call without ``evaluate`` counts as an
      evaluation only when its ``value`` differs from this one.
  """

  scale: jax.Array
  best: jax.Array
  num_bad_epochs: jax.Array
  cooldown_counter: jax.Array
  num_reductions: jax.Array
  count: jax.Array
  done: jax.Array
  last_value: jax.Array


def reduce_on_plateau(
    factor: ArrayLike = 0.1,
    patience: ArrayLike = 10,
    threshold: ArrayLike = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    mode: Literal["min", "max"] = "min",
    cooldown: ArrayLike = 0,
    min_scale: ArrayLike = 0.0,
    eps: ArrayLike = 1e-8,
    max_reductions: ArrayLike | None = None,
    base_lr: ArrayLike = 1.0,
) -> optax.GradientTransformationExtraArgs:
  """Scale updates down by ``factor`` when a metric stops improving (PyTorch ``ReduceLROnPlateau``).

  Place it after the learning rate (``optax.chain(optax.adam(lr), reduce_on_plateau(...))``)
  and pass the monitored metric to every update: ``tx.update(g, s, p, value=val_loss)``. A call
  that counts as an evaluation is one PyTorch ``scheduler.step(val_loss)``; which calls count:

  * ``evaluate`` not given (the default): a call counts when its ``value`` is **new**: not NaN
    and different from the last value received (``state.last_value``). So the usual loop,
    validating every ``k`` steps and passing the latest validation loss to every step
    (``value`` is required on every call), steps the plateau once per validation, as PyTorch's
    ``train(); val = validate(); scheduler.step(val)`` once per epoch; pass NaN before the
    first validation. A training loss passed every step is new at (almost) every step, so
    every step counts, as with ``optax.contrib.reduce_on_plateau``. Two consecutive
    validations with *exactly* the same value count once: for a metric that repeats exactly
    (an error rate on a small split) use ``evaluate=``.
  * ``evaluate=True``: every call counts, repeated values and NaN included (``scheduler.step``
    verbatim, for a loop that calls ``update`` once per evaluation).
  * ``evaluate=<bool array>`` (may be traced, e.g. ``jnp.asarray(step % k == 0)``): the calls
    where it is ``True`` count; where it is ``False`` the state is left exactly as it was
    (``value`` is ignored and may be anything) and the updates are multiplied by the current
    scale. :func:`optaxlr.sweep` with ``plateau=True`` feeds it this way. This is a
    ``jnp.where`` on the state, never a Python branch.

  Each counting call applies PyTorch's rules verbatim:

  * improvement: ``value < best * (1 - threshold)`` (``"min"``, ``"rel"``),
    ``value < best - threshold`` (``"min"``, ``"abs"``), ``value > best * (1 + threshold)``
    (``"max"``, ``"rel"``), ``value > best + threshold`` (``"max"``, ``"abs"``); an
    improvement sets ``best = value`` and ``num_bad_epochs = 0``, anything else (NaN included)
    adds one to ``num_bad_epochs``;
  * while ``cooldown_counter > 0`` it counts down and ``num_bad_epochs`` is held at 0;
  * when ``num_bad_epochs > patience`` a reduction is due: ``new = max(scale * factor,
    min_scale)`` is taken if ``base_lr * (scale - new) > eps``; either way
    ``cooldown_counter = cooldown`` and ``num_bad_epochs = 0``.

  After ``max_reductions`` reductions the scale stops falling. ``state.done`` says that the
  scale can fall no further (limit reached, ``scale <= min_scale``, or a due reduction was
  below ``eps``); a sweep reads it to stop a config. The seeds' rule "halve after 5
  evaluations without improvement, stop at 1/1024 of the start" is
  ``reduce_on_plateau(factor=0.5, patience=4, max_reductions=10)`` (or ``min_scale=1/1024``),
  stopping once ``state.done``.

  **Which scale an update uses.** The updates of a call are multiplied by the scale *after*
  that call's ``value`` was taken into account, as in ``optax.contrib.reduce_on_plateau`` and as
  in PyTorch's loop ``train(); val = validate(); scheduler.step(val)`` where the rate after
  ``step`` is the one the next training uses: pass the metric of the current parameters, and
  the update applied to them already uses the reduced rate. ``state.scale`` after ``n`` calls
  equals PyTorch's ``lr / initial_lr`` after ``n`` calls to ``step``.

  Departures from PyTorch: the scale is relative (``min_scale = min_lr / initial_lr``). PyTorch
  compares ``eps`` with the absolute change of the learning rate; here it is compared with
  ``base_lr * (change of scale)``, so ``base_lr=initial_lr`` reproduces PyTorch exactly and the
  default ``base_lr=1`` applies ``eps`` to the scale itself. ``max_reductions`` and ``done`` have
  no PyTorch counterpart; nor has the default skipping of a repeated ``value`` (PyTorch steps
  when it is called). Departures from ``optax.contrib.reduce_on_plateau``: it counts every call
  (averaging ``accumulation_size`` of them), reduces when the plateau count *equals*
  ``patience`` (PyTorch: exceeds it) and has no ``eps``; here PyTorch's rules hold.

  Args:
    factor: multiplier of each reduction, in ``(0, 1)``.
    patience: evaluations without improvement tolerated before a reduction, an integer ``>= 0``.
    threshold: minimal (relative or absolute) improvement that counts, ``>= 0``.
    threshold_mode: ``"rel"`` or ``"abs"`` (static).
    mode: ``"min"`` (lower is better) or ``"max"`` (static).
    cooldown: evaluations after a reduction during which bad evaluations are not counted,
      an integer ``>= 0``.
    min_scale: the floor of the scale, ``>= 0`` (PyTorch's ``min_lr / lr``).
    eps: a reduction with ``base_lr * (old_scale - new_scale) <= eps`` is skipped, ``>= 0``.
    max_reductions: ``None`` (no limit) or an integer ``>= 0``; after that many reductions the
      scale stays and ``state.done`` is ``True``.
    base_lr: the learning rate that ``scale == 1`` stands for, only used with ``eps``; ``> 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None,
    *, value, evaluate=None, **extra)`` returns ``(scale * updates, new_state)`` with a
    :class:`ReduceOnPlateauState`.

  Examples:
    Validation every 3 steps, its latest loss passed to every step: one count per validation.

    >>> import jax.numpy as jnp
    >>> tx = reduce_on_plateau(factor=0.5, patience=1)
    >>> state = tx.init(None)
    >>> for step in range(12):
    ...   val_loss = [1.0, 1.2, 1.1, 1.3][step // 3]   # measured at steps 0, 3, 6, 9
    ...   g, state = tx.update(jnp.ones(()), state, value=val_loss)
    ...   print(float(g), end=" ")
    1.0 1.0 1.0 1.0 1.0 1.0 0.5 0.5 0.5 0.5 0.5 0.5
    >>> print(int(state.count), int(state.num_reductions))
    4 1

    One call per validation, as PyTorch's ``scheduler.step(val_loss)``: ``evaluate=True``
    counts the repeated 1.0s too.

    >>> state = tx.init(None)
    >>> for val_loss in [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]:
    ...   g, state = tx.update(jnp.ones(()), state, value=val_loss, evaluate=True)
    ...   print(float(g), end=" ")
    1.0 1.0 0.5 0.5 0.5 0.25
    >>> print(int(state.num_reductions), bool(state.done))
    2 False

  References:
    PyTorch, `ReduceLROnPlateau
    <https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html>`_
    (the rules restated above), 2017.
  """
  fn = "reduce_on_plateau"
  v.one_of(fn, "mode", mode, ("min", "max"))
  v.one_of(fn, "threshold_mode", threshold_mode, ("rel", "abs"))
  v.in_range(fn, "factor", factor, 0.0, 1.0, closed="neither")
  _integer(fn, "patience", patience)
  v.nonnegative(fn, "threshold", threshold)
  _integer(fn, "cooldown", cooldown)
  v.nonnegative(fn, "min_scale", min_scale)
  v.nonnegative(fn, "eps", eps)
  if max_reductions is not None:
    _integer(fn, "max_reductions", max_reductions)
  v.positive(fn, "base_lr", base_lr)

  def limit_reached(num_reductions: jax.Array) -> jax.Array:
    if max_reductions is None:
      return jnp.zeros((), bool)
    return num_reductions >= max_reductions

  def init_fn(params: optax.Params) -> ReduceOnPlateauState:
    del params
    dt = _fdtype()
    scale = jnp.ones((), dt)
    zero = jnp.zeros((), jnp.int32)
    return ReduceOnPlateauState(
        scale=scale,
        best=jnp.asarray(np.inf if mode == "min" else -np.inf, dt),
        num_bad_epochs=zero,
        cooldown_counter=zero,
        num_reductions=zero,
        count=zero,
        done=jnp.asarray(limit_reached(zero) | (scale <= min_scale), bool),
        last_value=jnp.asarray(np.nan, dt),
    )

  def is_better(a: jax.Array, best: jax.Array) -> jax.Array:
    if threshold_mode == "rel":
      ref = best * (1.0 - threshold) if mode == "min" else best * (threshold + 1.0)
    else:
      ref = best - threshold if mode == "min" else best + threshold
    return _better(mode, a, ref)

  def step(state: ReduceOnPlateauState, value: jax.Array) -> ReduceOnPlateauState:
    improved = is_better(value, state.best)
    best = jnp.where(improved, value, state.best)
    bad = jnp.where(improved, 0, optax.safe_increment(state.num_bad_epochs))
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
    bad = jnp.where(in_cooldown, 0, bad)

    due = bad > patience
    allowed = due & ~limit_reached(state.num_reductions)
    candidate = jnp.maximum(state.scale * factor, min_scale).astype(state.scale.dtype)
    big_enough = (state.scale - candidate) * base_lr > eps
    reduce = allowed & big_enough
    scale = jnp.where(reduce, candidate, state.scale)
    num_reductions = jnp.where(
        reduce, optax.safe_increment(state.num_reductions), state.num_reductions
    )
    cooldown_counter = jnp.where(due, jnp.asarray(cooldown).astype(jnp.int32), cooldown_counter)
    bad = jnp.where(due, 0, bad)
    done = (
        state.done
        | (allowed & ~big_enough)
        | limit_reached(num_reductions)
        | (scale <= min_scale)
    )
    new = ReduceOnPlateauState(
        scale=scale,
        best=best,
        num_bad_epochs=bad,
        cooldown_counter=cooldown_counter,
        num_reductions=num_reductions,
        count=optax.safe_increment(state.count),
        done=done,
        last_value=jnp.where(jnp.isnan(value), state.last_value, value),
    )
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(o.dtype), new, state)

  def update_fn(
      updates: optax.Updates,
      state: ReduceOnPlateauState,
      params: optax.Params | None = None,
      *,
      value: ArrayLike,
      evaluate: ArrayLike | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ReduceOnPlateauState]:
    del params, extra_args
    value = jnp.asarray(value).astype(state.best.dtype)
    if evaluate is None:  # static: whether the caller says which calls count
      counts = ~jnp.isnan(value) & (value != state.last_value)
    else:
      counts = jnp.asarray(evaluate, bool)
    new_state = _select(counts, step(state, value), state)
    scale = new_state.scale
    updates = jax.tree.map(lambda g: (scale * g).astype(jnp.asarray(g).dtype), updates)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# early_stopping
# ---------------------------------------------------------------------------------------------


class EarlyStoppingState(NamedTuple):
  """State of :func:`early_stopping`; every field is a scalar array (one per config under vmap).

  Attributes:
    best: best monitored metric, ``+inf`` (``-inf`` in ``"max"`` mode) before any (float).
    best_step: index of the update call whose parameters are the best ones, Keras's
      ``best_epoch`` with ``restore_best_weights=True`` (int32).
    wait: Keras's ``wait`` counter (int32).
    step: how many (evaluated) update calls were made: the index of the next one (int32).
    improved: the latest call made the current parameters the best ones: an improvement, or
      the first monitored call (Keras's first ``best_weights``); feed it to :func:`keep_best`
      (bool).
    stop: training should stop (bool, sticky; the state is frozen from then on).
    stopped_step: index of the call that set ``stop``, 0 while running (Keras's
      ``stopped_epoch``) (int32).
  """

  best: jax.Array
  best_step: jax.Array
  wait: jax.Array
  step: jax.Array
  improved: jax.Array
  stop: jax.Array
  stopped_step: jax.Array


class _Init(Protocol):
  def __call__(self) -> EarlyStoppingState: ...


class _Update(Protocol):
  def __call__(
      self, state: EarlyStoppingState, metric: ArrayLike, *, evaluate: ArrayLike = True
  ) -> EarlyStoppingState: ...


class EarlyStopping(NamedTuple):
  """The pure functions of :func:`early_stopping`."""

  init: _Init
  update: _Update


def early_stopping(
    patience: ArrayLike,
    min_delta: ArrayLike = 0.0,
    mode: Literal["min", "max"] = "min",
    baseline: ArrayLike | None = None,
    start_from: ArrayLike = 0,
) -> EarlyStopping:
  """Stop when a metric has stopped improving (Keras ``EarlyStopping``) as a pure state machine.

  ``state = es.init()``; after each evaluation ``state = es.update(state, val_loss)``; stop when
  ``state.stop``. Call ``i`` (0-based, counting calls with ``evaluate=True``) is Keras's
  ``on_epoch_end(epoch=i)``, with Keras 3's rules verbatim:

  * calls with ``i < start_from`` are ignored (warm-up);
  * otherwise ``wait += 1``; an improvement is ``metric + min_delta < best`` (``"min"``) or
    ``metric - min_delta > best`` (``"max"``), ``best`` starting at ``+-inf``; it sets
    ``best = metric``, ``best_step = i`` and, only if the metric also improves on
    ``baseline`` in the same sense (or there is none), ``wait = 0``;
  * a call without improvement sets ``stop`` when ``wait >= patience`` and ``i > 0``.

  Once ``stop`` is set the state is frozen (only ``step`` still counts), as Keras would end
  training there. ``improved`` marks the calls whose parameters a sweep should keep: the
  improvements, and the first monitored call (where Keras with ``restore_best_weights=True``
  takes its first best weights); :func:`keep_best` does the per-leaf selection. Calls with
  ``evaluate=False`` (a bool array, may be traced) leave the state untouched except
  ``improved = False``, so the metric may be fed only on evaluation steps.

  Departures from Keras: ``min_delta`` must be ``>= 0`` (Keras silently takes its absolute
  value); ``mode="auto"`` does not exist (there is no metric name to infer it from);
  ``best_step`` follows ``restore_best_weights=True``.

  Args:
    patience: calls without improvement after which to stop, an integer ``>= 0``.
    min_delta: minimal change that counts as an improvement, ``>= 0``.
    mode: ``"min"`` (lower is better) or ``"max"`` (static).
    baseline: ``None`` (static) or a value the metric must beat for ``wait`` to reset;
      training stops after ``patience`` calls if it never does.
    start_from: calls to ignore before monitoring starts (Keras's ``start_from_epoch``),
      an integer ``>= 0``.

  Returns:
    :class:`EarlyStopping` with ``init() -> state`` and
    ``update(state, metric, *, evaluate=True) -> state``, both jit/vmap safe.

  Examples:
    >>> es = early_stopping(patience=2)
    >>> state = es.init()
    >>> for loss in [3.0, 2.0, 2.5, 2.2, 1.0]:
    ...   state = es.update(state, loss)
    >>> print(bool(state.stop), int(state.stopped_step), int(state.best_step), float(state.best))
    True 3 1 2.0

  References:
    Prechelt, `Early Stopping -- But When? <https://doi.org/10.1007/3-540-49430-8_3>`_,
    Neural Networks: Tricks of the Trade, 1998. Keras, `EarlyStopping
    <https://keras.io/api/callbacks/early_stopping/>`_ (the rules restated above).
  """
  fn = "early_stopping"
  v.one_of(fn, "mode", mode, ("min", "max"))
  _integer(fn, "patience", patience)
  v.nonnegative(fn, "min_delta", min_delta)
  if baseline is not None:
    v.check(fn, "baseline", baseline, lambda x: np.ones_like(x, bool), "a number")
  _integer(fn, "start_from", start_from)

  def init() -> EarlyStoppingState:
    zero = jnp.zeros((), jnp.int32)
    false = jnp.zeros((), bool)
    return EarlyStoppingState(
        best=jnp.asarray(np.inf if mode == "min" else -np.inf, _fdtype()),
        best_step=zero,
        wait=zero,
        step=zero,
        improved=false,
        stop=false,
        stopped_step=zero,
    )

  def is_improvement(current: jax.Array, ref: jax.Array) -> jax.Array:
    # Keras: monitor_op(current - min_delta, ref) with min_delta negated in "min" mode.
    delta = jnp.asarray(min_delta, current.dtype)
    return _better(mode, current - (-delta if mode == "min" else delta), ref)

  def update(
      state: EarlyStoppingState, metric: ArrayLike, *, evaluate: ArrayLike = True
  ) -> EarlyStoppingState:
    evaluate = jnp.asarray(evaluate, bool)
    epoch = state.step
    current = jnp.asarray(metric).astype(state.best.dtype)
    monitored = evaluate & ~state.stop & (epoch >= start_from)
    first = epoch == start_from
    better = is_improvement(current, state.best)
    if baseline is None:
      resets = better
    else:
      resets = better & is_improvement(current, jnp.asarray(baseline, current.dtype))
    wait = jnp.where(resets, 0, optax.safe_increment(state.wait))
    stop_now = ~better & (wait >= patience) & (epoch > 0)
    improved = better | first
    new = EarlyStoppingState(
        best=jnp.where(better, current, state.best),
        best_step=jnp.where(improved, epoch, state.best_step),
        wait=wait,
        step=state.step,
        improved=improved,
        stop=stop_now,
        stopped_step=jnp.where(stop_now, epoch, state.stopped_step),
    )
    kept = state._replace(improved=jnp.zeros((), bool))
    out = _select(monitored, new, kept)
    return out._replace(
        step=jnp.where(evaluate, optax.safe_increment(state.step), state.step)
    )

  return EarlyStopping(init=init, update=update)


def keep_best(state: EarlyStoppingState, best_params: Any, params: Any) -> Any:
  """``params`` where ``state.improved``, else ``best_params``, per leaf (``jnp.where``).

  Works inside ``vmap`` (scalar state per config) and outside it on a batched state whose
  ``improved`` has shape ``(n,)`` and parameters with a leading config axis of size ``n``.

  Args:
    state: the :class:`EarlyStoppingState` returned by the latest ``update``.
    best_params: the parameters kept so far (any pytree).
    params: the parameters the latest metric was computed on (same structure).

  Returns:
    The new best parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> es = early_stopping(patience=1)
    >>> state, best = es.init(), jnp.zeros(2)
    >>> for i, loss in enumerate([2.0, 1.0, 1.5]):
    ...   state = es.update(state, loss)
    ...   best = keep_best(state, best, jnp.full(2, float(i)))
    >>> print(best)
    [1. 1.]
  """
  pred = jnp.asarray(state.improved, bool)

  def pick(b: Any, p: Any) -> jax.Array:
    b, p = jnp.asarray(b), jnp.asarray(p)
    c = pred.reshape(pred.shape + (1,) * (p.ndim - pred.ndim))
    return jnp.where(c, p, b)

  return jax.tree.map(pick, best_params, params)
