"""Combinators: warmup, sequential joins at (traced) milestones, products, epochs; linear scaling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr.schedules._common import as_float, floor_divmod, half_sin2, safe_div

__all__ = [
    "warmup",
    "sequential",
    "chained",
    "epochs",
    "linear_scaling",
]

_WARMUP_MODES = ("linear", "constant", "cosine", "exponential")


def _check_schedule(fn: str, name: str, s) -> None:
  if not callable(s):
    raise TypeError(f"{fn}: {name} must be a schedule (a callable step -> value), got {s!r}")


def warmup(
    schedule: optax.Schedule,
    warmup_steps: ArrayLike,
    start_factor: ArrayLike = 0.0,
    mode: str = "linear",
) -> optax.Schedule:
  """Gradual warmup in front of any schedule (Goyal et al. 2017).

  For ``t < W`` the wrapped schedule's value is multiplied by a factor that goes from
  ``start_factor`` at ``t = 0`` towards 1 at ``t = W``; from ``W`` on, the schedule is unchanged.
  The wrapped schedule keeps counting from step 0 (its milestones stay where they were, as in
  Goyal et al.'s ResNet recipe and PyTorch's ``ChainedScheduler([LinearLR, ...])``); to start it
  after the warmup instead, use ``sequential([linear(...), schedule], [W])``. Factor by mode::

    "linear"       start + (1 - start) * t / W     (PyTorch LinearLR(start, 1, W); Goyal et al.)
    "constant"     start                            (Goyal et al.'s constant warmup)
    "cosine"       start + (1 - start) * (1 - cos(pi t / W)) / 2
    "exponential"  start ** (1 - t / W)             (geometric; start must be > 0)

  Args:
    schedule: any ``step -> lr`` schedule.
    warmup_steps: ``W``, ``>= 0``; 0 disables the warmup.
    start_factor: the factor at step 0, in ``[0, 1]`` (``(0, 1]`` for "exponential").
    mode: the shape of the ramp (static).


  Returns:
    The wrapped schedule, ``step -> factor(step) * schedule(step)``.
  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`_, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxlr.schedules import constant
    >>> print(warmup(constant(1.0), 4)(jnp.arange(6)))
    [0.   0.25 0.5  0.75 1.   1.  ]
  """
  fn = "warmup"
  _check_schedule(fn, "schedule", schedule)
  v.nonnegative(fn, "warmup_steps", warmup_steps)
  v.one_of(fn, "mode", mode, _WARMUP_MODES)
  if mode == "exponential":
    v.in_range(fn, "start_factor", start_factor, 0.0, 1.0, closed="right")
  else:
    v.in_range(fn, "start_factor", start_factor, 0.0, 1.0)

  def wrapped(count):
    t = as_float(count)
    w = as_float(warmup_steps)
    s = as_float(start_factor)
    p = jnp.clip(safe_div(t, w), 0.0, 1.0)
    if mode == "linear":
      f = s + (1.0 - s) * p
    elif mode == "constant":
      f = s * jnp.ones_like(p)
    elif mode == "cosine":
      f = s + (1.0 - s) * half_sin2(p)  # (1 - cos(pi p)) / 2 without cancellation at small p
    else:
      f = s ** jnp.clip(safe_div(w - t, w, 0.0), 0.0, 1.0)  # s ** (1 - p), exact exponent
    return jnp.where(t < w, f, 1.0) * schedule(count)

  return wrapped


def sequential(
    schedules: Sequence[optax.Schedule], milestones: ArrayLike
) -> optax.Schedule:
  """Run schedules one after another (PyTorch ``SequentialLR``, optax ``join_schedules``).

  Schedule ``i`` is used from ``milestones[i - 1]`` on and sees the local step
  ``t - milestones[i - 1]``: each later schedule restarts at its own step 0. ``milestones`` has
  ``len(schedules) - 1`` strictly increasing entries; their values may be traced (a swept
  warmup length), their number is static. Every schedule is evaluated and the right one
  selected, so this is branch-free.

  Args:
    schedules: the schedules, in order.
    milestones: the steps at which to switch, strictly increasing, ``>= 0``.


  Returns:
    The joined schedule ``step -> rate``.
  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxlr.schedules import linear, cosine
    >>> s = sequential([linear(1.0, 0.5, 1.0, 2), cosine(1.0, 2)], [2])
    >>> print(s(jnp.arange(5)))
    [0.5  0.75 1.   0.5  0.  ]
  """
  fn = "sequential"
  schedules = list(schedules)
  if not schedules:
    raise ValueError(f"{fn}: schedules must hold at least one schedule, got schedules=[]")
  for i, s in enumerate(schedules):
    _check_schedule(fn, f"schedules[{i}]", s)
  if np.ndim(milestones) != 1 or np.shape(milestones)[0] != len(schedules) - 1:
    raise ValueError(
        f"{fn}: milestones must be a 1-D sequence of len(schedules) - 1 ="
        f" {len(schedules) - 1} steps, got shape {np.shape(milestones)}"
    )
  v.nonnegative(fn, "milestones", milestones)
  ms = v.concrete(milestones)
  if ms is not None and np.any(np.diff(ms) <= 0):
    raise ValueError(f"{fn}: milestones must be strictly increasing, got milestones={ms.tolist()}")

  def schedule(count):
    count = jnp.asarray(count)
    m = jnp.asarray(milestones)
    out = schedules[0](count)
    for i, s in enumerate(schedules[1:]):
      local = jnp.maximum(count - m[i], 0)
      out = jnp.where(count >= m[i], s(local), out)
    return out

  return schedule


def chained(*schedules: optax.Schedule) -> optax.Schedule:
  """The product of the schedules' values (PyTorch ``ChainedScheduler``).

  PyTorch's ``ChainedScheduler`` applies each scheduler's multiplicative step to the same rate,
  so the factors multiply. Here the schedules are plain functions, so build one of them with the
  base rate and the others with ``lr=1.0`` (pure factors)::

    chained(step(0.1, 30, 0.1), exponential(1.0, 0.99))
    == ChainedScheduler([StepLR(opt(lr=0.1), 30, 0.1), ExponentialLR(opt, 0.99)])

  Args:
    *schedules: one or more schedules.

  Returns:
    ``step -> prod(s(step) for s in schedules)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxlr.schedules import step, exponential
    >>> print(chained(step(1.0, 2, 0.5), exponential(1.0, 0.5))(jnp.arange(3)))
    [1.    0.5   0.125]
  """
  if not schedules:
    raise ValueError("chained: needs at least one schedule, got none")
  for i, s in enumerate(schedules):
    _check_schedule("chained", f"schedules[{i}]", s)

  def schedule(count):
    out = schedules[0](count)
    for s in schedules[1:]:
      out = out * s(count)
    return out

  return schedule


def epochs(schedule: optax.Schedule, steps_per_epoch: ArrayLike) -> optax.Schedule:
  """A schedule written in epochs, evaluated per optimizer step.

  Returns ``schedule(floor(step / steps_per_epoch))``: the rate changes only at epoch
  boundaries, as with a PyTorch scheduler stepped once per epoch. The seeds' per-epoch decay
  ``lr * 0.98 ** epoch`` is ``epochs(exponential(lr, 0.98), steps_per_epoch)``.

  Args:
    schedule: a schedule whose argument is the epoch.
    steps_per_epoch: optimizer steps per epoch, ``>= 1`` (may be traced).


  Returns:
    ``step -> schedule(floor(step / steps_per_epoch))``.
  Examples:
    >>> import jax.numpy as jnp
    >>> from optaxlr.schedules import exponential
    >>> print(epochs(exponential(1.0, 0.5), 2)(jnp.arange(5)))
    [1.   1.   0.5  0.5  0.25]
  """
  _check_schedule("epochs", "schedule", schedule)
  v.at_least("epochs", "steps_per_epoch", steps_per_epoch, 1)

  def wrapped(count):
    return schedule(floor_divmod(count, steps_per_epoch)[0])

  return wrapped


_SCALING_RULES = ("linear", "sqrt")


def linear_scaling(
    lr: ArrayLike,
    batch_size: ArrayLike,
    base_batch_size: ArrayLike = 256,
    rule: str = "linear",
) -> jax.Array:
  """The learning rate for ``batch_size`` given one tuned at ``base_batch_size``.

  "linear": ``lr * batch_size / base_batch_size`` (Goyal et al.: "when the minibatch size is
  multiplied by k, multiply the learning rate by k"; pair it with :func:`warmup`).
  "sqrt": ``lr * sqrt(batch_size / base_batch_size)`` (Krizhevsky 2014; Hoffer et al. 2017),
  often better for adaptive optimizers. Returns a value (an array), not a schedule: pass it as
  the ``lr`` of any schedule. ``batch_size`` may be an array (a sweep axis).

  Args:
    lr: the rate tuned at ``base_batch_size``, ``>= 0``.
    batch_size: the batch size to scale to, ``> 0``.
    base_batch_size: the reference batch size, ``> 0`` (256 in Goyal et al.).
    rule: "linear" or "sqrt" (static).


  Returns:
    The scaled learning rate, an array (not a schedule).
  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`_, 2017.

  Examples:
    >>> print(linear_scaling(0.1, 1024))
    0.4
    >>> print(linear_scaling(0.1, 1024, rule="sqrt"))
    0.2
  """
  fn = "linear_scaling"
  v.nonnegative(fn, "lr", lr)
  v.positive(fn, "batch_size", batch_size)
  v.positive(fn, "base_batch_size", base_batch_size)
  v.one_of(fn, "rule", rule, _SCALING_RULES)
  ratio = jnp.asarray(batch_size) / jnp.asarray(base_batch_size)
  return jnp.asarray(lr) * (ratio if rule == "linear" else jnp.sqrt(ratio))
