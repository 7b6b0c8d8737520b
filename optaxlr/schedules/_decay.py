"""Monotone decay schedules: constant, step, multistep, exponential, 1/t, polynomial, cosine,
warmup-stable-decay and inverse square root."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr.schedules._common import (
    as_float,
    capped_pow,
    cos_factor,
    floor_divmod,
    half_sin2,
    interpolate,
    safe_div,
)

__all__ = [
    "constant",
    "constant_factor",
    "linear",
    "step",
    "multistep",
    "exponential",
    "exponential_decay",
    "inverse_time",
    "polynomial",
    "cosine",
    "warmup_stable_decay",
    "rsqrt",
]


def constant(lr: ArrayLike) -> optax.Schedule:
  """A constant learning rate.

  Args:
    lr: the learning rate, ``>= 0``.

  Returns:
    ``schedule(step) -> lr`` broadcast to the shape of ``step``.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(constant(0.1)(jnp.arange(3)))
    [0.1 0.1 0.1]
  """
  v.nonnegative("constant", "lr", lr)

  def schedule(count):
    return as_float(lr) * jnp.ones_like(as_float(count))

  return schedule


def constant_factor(
    lr: ArrayLike, factor: ArrayLike = 1.0 / 3, total_steps: ArrayLike = 5
) -> optax.Schedule:
  """``lr * factor`` for the first ``total_steps`` steps, then ``lr`` (PyTorch ``ConstantLR``).

  Args:
    lr: the base learning rate, ``>= 0``.
    factor: the multiplier while ``step < total_steps``, in ``(0, 1]`` (PyTorch accepts 0 but
      its recursive form then divides by zero at ``total_steps``).
    total_steps: how many steps use the reduced rate, ``>= 0``.


  Returns:
    ``schedule(step) -> rate``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(constant_factor(0.1, 0.5, 2)(jnp.arange(4)))
    [0.05 0.05 0.1  0.1 ]
  """
  v.nonnegative("constant_factor", "lr", lr)
  v.in_range("constant_factor", "factor", factor, 0.0, 1.0, closed="right")
  v.nonnegative("constant_factor", "total_steps", total_steps)

  def schedule(count):
    t = as_float(count)
    return as_float(lr) * jnp.where(t < total_steps, as_float(factor), 1.0)

  return schedule


def linear(
    lr: ArrayLike,
    start_factor: ArrayLike = 1.0 / 3,
    end_factor: ArrayLike = 1.0,
    total_steps: ArrayLike = 5,
) -> optax.Schedule:
  """Linear change of the multiplier from ``start_factor`` to ``end_factor`` (PyTorch ``LinearLR``).

  ``lr * (start + (end - start) * min(t, T) / T)``; held at ``lr * end_factor`` from ``T`` on.
  Computed from the nearer end of the ramp (``end + (start - end) * (T - t) / T`` in its second
  half), so a small ``end_factor`` (or 0) is reached with full float32 relative precision.

  Args:
    lr: the base learning rate, ``>= 0``.
    start_factor: multiplier at step 0, in ``(0, 1]`` (PyTorch's range).
    end_factor: multiplier from step ``total_steps`` on, in ``[0, 1]``.
    total_steps: length of the ramp, ``>= 1``.


  Returns:
    ``schedule(step) -> rate``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(linear(1.0, 0.5, 1.0, 2)(jnp.arange(4)))
    [0.5  0.75 1.   1.  ]
  """
  v.nonnegative("linear", "lr", lr)
  v.in_range("linear", "start_factor", start_factor, 0.0, 1.0, closed="right")
  v.in_range("linear", "end_factor", end_factor, 0.0, 1.0)
  v.at_least("linear", "total_steps", total_steps, 1)

  def schedule(count):
    big_t = as_float(total_steps)
    t = jnp.minimum(as_float(count), big_t)
    p, q = t / big_t, (big_t - t) / big_t
    return as_float(lr) * interpolate(as_float(start_factor), as_float(end_factor), p, q, "linear")

  return schedule


def step(lr: ArrayLike, step_size: ArrayLike, gamma: ArrayLike = 0.1) -> optax.Schedule:
  """Multiply the rate by ``gamma`` every ``step_size`` steps (PyTorch ``StepLR``).

  ``lr * gamma ** floor(t / step_size)``: the seeds' "halve every 5 epochs" is
  ``epochs(step(lr, 5, 0.5), steps_per_epoch)``, "x0.1 every 20" is ``step(lr, 20, 0.1)``.
  With integer steps and an integer ``step_size`` the floor is exact up to ``2**31``.

  Args:
    lr: the initial learning rate, ``>= 0``.
    step_size: period of the decay, ``>= 1``.
    gamma: multiplicative factor, ``> 0``.


  Returns:
    ``schedule(step) -> lr * gamma ** floor(step / step_size)``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(step(1.0, 2, 0.5)(jnp.arange(5)))
    [1.   1.   0.5  0.5  0.25]
  """
  v.nonnegative("step", "lr", lr)
  v.at_least("step", "step_size", step_size, 1)
  v.positive("step", "gamma", gamma)

  def schedule(count):
    n, _ = floor_divmod(count, step_size)
    return as_float(lr) * capped_pow(as_float(gamma), as_float(n))

  return schedule


def multistep(lr: ArrayLike, milestones: ArrayLike, gamma: ArrayLike = 0.1) -> optax.Schedule:
  """Multiply the rate by ``gamma`` at each milestone (PyTorch ``MultiStepLR``).

  ``lr * gamma ** #{i : milestones[i] <= t}``. A milestone listed twice counts twice, so the
  rate drops by ``gamma**2`` there, as in PyTorch (which counts repeats with a ``Counter``).

  Args:
    lr: the initial learning rate, ``>= 0``.
    milestones: 1-D, non-decreasing, ``>= 0``; its length is static, its values may be traced.
    gamma: multiplicative factor, ``> 0``.


  Returns:
    ``schedule(step) -> rate``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(multistep(1.0, [1, 3, 3], 0.5)(jnp.arange(5)))
    [1.    0.5   0.5   0.125 0.125]
  """
  v.nonnegative("multistep", "lr", lr)
  v.positive("multistep", "gamma", gamma)
  if np.ndim(milestones) != 1:
    raise ValueError(
        f"multistep: milestones must be a 1-D sequence, got shape {np.shape(milestones)}"
    )
  v.nonnegative("multistep", "milestones", milestones)
  ms = v.concrete(milestones)
  if ms is not None and np.any(np.diff(ms) < 0):
    raise ValueError(
        f"multistep: milestones must be non-decreasing, got milestones={ms.tolist()}"
    )

  def schedule(count):
    t = jnp.asarray(count)
    m = jnp.asarray(milestones).reshape((1,) * t.ndim + (-1,))
    n = jnp.sum(t[..., None] >= m, axis=-1)
    return as_float(lr) * capped_pow(as_float(gamma), as_float(n))

  return schedule


def exponential(lr: ArrayLike, gamma: ArrayLike) -> optax.Schedule:
  """``lr * gamma ** t`` (PyTorch ``ExponentialLR``, optax ``exponential_decay`` with
  ``transition_steps=1``).

  Per epoch, as the seeds' ``lr * 0.98 ** epoch``: ``epochs(exponential(lr, 0.98), spe)``.

  Precision: ``gamma ** t`` is XLA's ``pow``, accurate to about an ulp, so the float32 value is
  within ``2e-7`` of the exact power of the float32 ``gamma``. The rounding of ``gamma`` itself
  to float32 (``6e-8`` relative) moves ``gamma ** t`` by up to ``t * 6e-8`` (``6e-4`` at
  ``t = 10**4``); for very long decays with ``gamma`` near 1 pass a float32-exact ``gamma`` or
  enable ``jax_enable_x64``.

  Args:
    lr: the initial learning rate, ``>= 0``.
    gamma: the per-step factor, ``> 0``.


  Returns:
    ``schedule(step) -> lr * gamma ** step``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(exponential(1.0, 0.5)(jnp.arange(3)))
    [1.   0.5  0.25]
  """
  v.nonnegative("exponential", "lr", lr)
  v.positive("exponential", "gamma", gamma)

  def schedule(count):
    return as_float(lr) * capped_pow(as_float(gamma), as_float(count))

  return schedule


def exponential_decay(lr: ArrayLike, *, k: ArrayLike) -> optax.Schedule:
  """``lr * exp(-k t)``, the continuous exponential decay of the CS231n notes (seed 001).

  Equals ``exponential(lr, exp(-k))``; written with ``k`` because that is the form the
  literature gives. ``k`` is keyword-only because optax's function of the same name takes
  ``(init_value, transition_steps, decay_rate)``: ``optax.exponential_decay(lr, 1000, 0.5)``
  is ``exponential(lr, 0.5 ** (1 / 1000))`` here (or ``exponential_decay(lr,
  k=log(2) / 1000)``), not ``exponential_decay(lr, k=1000)``.

  Args:
    lr: the initial learning rate ``alpha_0``, ``>= 0``.
    k: the decay constant per step, ``>= 0``.

  Returns:
    ``schedule(step) -> lr * exp(-k * step)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(exponential_decay(1.0, k=0.5)(jnp.arange(3)))
    [1.       0.606531 0.367879]
  """
  v.nonnegative("exponential_decay", "lr", lr)
  v.nonnegative("exponential_decay", "k", k)

  def schedule(count):
    return as_float(lr) * jnp.exp(-as_float(k) * as_float(count))

  return schedule


def inverse_time(
    lr: ArrayLike, *, k: ArrayLike, decay_steps: ArrayLike = 1, staircase: bool = False
) -> optax.Schedule:
  """``lr / (1 + k * t / decay_steps)``: 1/t decay (Keras ``InverseTimeDecay``).

  All arguments after ``lr`` are keyword-only: Keras' positional order is
  ``(initial_learning_rate, decay_steps, decay_rate)``, the other way round.

  Args:
    lr: the initial learning rate ``alpha_0``, ``>= 0``.
    k: the decay rate, ``>= 0`` (Keras' ``decay_rate``).
    decay_steps: how many steps one unit of ``t`` lasts, ``> 0``.
    staircase: floor ``t / decay_steps`` (static, as in Keras).

  Returns:
    ``schedule(step) -> lr / (1 + k * step / decay_steps)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(inverse_time(1.0, k=1.0)(jnp.arange(4)))
    [1.       0.5      0.333333 0.25    ]
  """
  v.nonnegative("inverse_time", "lr", lr)
  v.nonnegative("inverse_time", "k", k)
  v.positive("inverse_time", "decay_steps", decay_steps)

  def schedule(count):
    if staircase:
      p = as_float(floor_divmod(count, decay_steps)[0])
    else:
      p = as_float(count) / as_float(decay_steps)
    return as_float(lr) / (1.0 + as_float(k) * p)

  return schedule


def polynomial(
    lr: ArrayLike, total_steps: ArrayLike, power: ArrayLike = 1.0, *, end_lr: ArrayLike = 0.0
) -> optax.Schedule:
  """Polynomial decay to ``end_lr`` over ``total_steps`` (PyTorch ``PolynomialLR``).

  ``(lr - end_lr) * (1 - min(t, T) / T) ** power + end_lr``, held at ``end_lr`` from ``T`` on.
  With ``end_lr=0`` this is PyTorch's ``PolynomialLR(total_iters=T, power=power)``; with
  ``end_lr`` it is optax's ``polynomial_schedule`` and Keras' ``PolynomialDecay`` (without
  ``cycle``). ``end_lr`` is keyword-only: optax's positional order is ``(init_value,
  end_value, power, transition_steps)``.

  The base is computed as ``(T - min(t, T)) / T``, never negative, so a fractional ``power``
  gives 0 at and after ``T`` (``1 - t / T`` can round to ``-1e-8`` under ``jit``, and a
  negative number to a fractional power is NaN).

  Args:
    lr: the initial learning rate, ``>= 0``.
    total_steps: steps to reach ``end_lr``, ``>= 1``.
    power: the exponent, ``>= 0``.
    end_lr: the final learning rate, ``>= 0``.

  Returns:
    ``schedule(step) -> rate``.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(polynomial(1.0, 4, power=2.0)(jnp.arange(6)))
    [1.     0.5625 0.25   0.0625 0.     0.    ]
  """
  v.nonnegative("polynomial", "lr", lr)
  v.at_least("polynomial", "total_steps", total_steps, 1)
  v.nonnegative("polynomial", "power", power)
  v.nonnegative("polynomial", "end_lr", end_lr)

  def schedule(count):
    big_t = as_float(total_steps)
    left = jnp.maximum(big_t - jnp.minimum(as_float(count), big_t), 0.0)
    frac = (left / big_t) ** as_float(power)
    return (as_float(lr) - as_float(end_lr)) * frac + as_float(end_lr)

  return schedule


def cosine(lr: ArrayLike, t_max: ArrayLike, *, eta_min: ArrayLike = 0.0) -> optax.Schedule:
  """Cosine annealing from ``lr`` to ``eta_min`` over ``t_max`` steps (PyTorch
  ``CosineAnnealingLR``).

  ``eta_min + (lr - eta_min) * (1 + cos(pi * t / t_max)) / 2``.

  Past ``t_max`` the formula is kept, so the rate climbs back to ``lr`` at ``2 * t_max`` and is
  periodic with period ``2 * t_max``, exactly as PyTorch's closed form. optax's
  ``cosine_decay_schedule`` instead holds ``eta_min`` after ``t_max``; for that, use
  ``sequential([cosine(...), constant(eta_min)], [t_max])`` or :func:`warmup_stable_decay`.
  ``eta_min`` is keyword-only because optax's third positional argument is ``alpha``, a
  *fraction* of the initial value (``eta_min = alpha * lr``).

  Precision: the phase is reduced modulo ``2 * t_max`` in integers when possible (exact at
  step counts near ``2**31``), and the factor is written ``cos(pi d / 2 t_max) ** 2`` near the
  top and ``sin(pi (t_max - d) / 2 t_max) ** 2`` near the bottom, ``d`` the exact distance to
  the nearest top, so values next to ``eta_min = 0`` keep full float32 relative precision
  (``(1 + cos)/2`` loses it there).

  Args:
    lr: the initial (maximum) learning rate, ``>= 0``.
    t_max: half period, ``>= 1``.
    eta_min: the minimum learning rate, ``>= 0``.

  Returns:
    ``schedule(step) -> rate``.

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(cosine(1.0, 2)(jnp.arange(5)))
    [1.  0.5 0.  0.5 1. ]
  """
  v.nonnegative("cosine", "lr", lr)
  v.at_least("cosine", "t_max", t_max, 1)
  v.nonnegative("cosine", "eta_min", eta_min)

  def schedule(count):
    period = 2 * jnp.asarray(t_max)
    _, r = floor_divmod(count, period)
    d = jnp.minimum(r, period - r)  # distance to the nearest top, in [0, t_max]
    tm = as_float(t_max)
    p, q = as_float(d) / tm, as_float(jnp.asarray(t_max) - d) / tm
    lo = as_float(eta_min)
    return lo + (as_float(lr) - lo) * cos_factor(p, q)

  return schedule


_WSD_DECAYS = ("linear", "cosine", "sqrt")


def warmup_stable_decay(
    lr: ArrayLike,
    total_steps: ArrayLike,
    warmup_steps: ArrayLike = 0,
    *,
    decay_steps: ArrayLike | None = None,
    decay: str = "linear",
    end_lr: ArrayLike = 0.0,
) -> optax.Schedule:
  """Warmup-stable-decay ("trapezoidal"): linear warmup, a constant plateau, a short cooldown.

  With ``W = warmup_steps``, ``D = decay_steps`` and ``T = total_steps``::

    t < W              lr * t / W
    W <= t < T - D     lr
    T - D <= t         end_lr + (lr - end_lr) * shape(min((t - (T - D)) / D, 1))

  where ``shape(p)`` is ``1 - p`` ("linear"), ``(1 + cos(pi p)) / 2`` ("cosine") or
  ``1 - sqrt(p)`` ("sqrt", the cooldown Hägele et al. found best). Because the plateau does not
  depend on ``T``, one run can be branched into cooldowns at several lengths. ``end_lr`` is
  held from ``T`` on. Arguments after ``warmup_steps`` are keyword-only.

  Precision: the remaining fraction ``q = (T - t) / D`` is computed from the exact step
  difference and the shapes are written in it (``q``, ``sin(pi q / 2) ** 2`` and
  ``q / (1 + sqrt(1 - q))``), so the last steps before ``end_lr = 0`` keep full float32
  relative precision.

  Args:
    lr: the plateau learning rate, ``>= 0``.
    total_steps: the step at which ``end_lr`` is reached, ``>= 1``.
    warmup_steps: length of the linear warmup from 0, ``>= 0``.
    decay_steps: length of the cooldown, ``>= 0``; ``None`` means 20% of ``total_steps``.
      ``warmup_steps + decay_steps`` must not exceed ``total_steps``.
    decay: the cooldown shape (static): "linear", "cosine" or "sqrt".
    end_lr: the final learning rate, ``>= 0``.

  Returns:
    ``schedule(step) -> rate``.

  References:
    Hu et al., `MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
    Strategies <https://arxiv.org/abs/2404.06395>`_, 2024.
    Hägele et al., `Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations
    <https://arxiv.org/abs/2405.18392>`_, 2024.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(warmup_stable_decay(1.0, 10, warmup_steps=2, decay_steps=4)(jnp.arange(0, 11, 2)))
    [0.  1.  1.  1.  0.5 0. ]
  """
  fn = "warmup_stable_decay"
  v.nonnegative(fn, "lr", lr)
  v.at_least(fn, "total_steps", total_steps, 1)
  v.nonnegative(fn, "warmup_steps", warmup_steps)
  v.one_of(fn, "decay", decay, _WSD_DECAYS)
  v.nonnegative(fn, "end_lr", end_lr)
  if decay_steps is None:
    decay_steps = 0.2 * as_float(total_steps)
  v.nonnegative(fn, "decay_steps", decay_steps)
  w, d, tt = (v.concrete(x) for x in (warmup_steps, decay_steps, total_steps))
  if w is not None and d is not None and tt is not None and np.any(w + d > tt):
    raise ValueError(
        f"{fn}: warmup_steps + decay_steps must be <= total_steps, got warmup_steps={w.tolist()},"
        f" decay_steps={d.tolist()}, total_steps={tt.tolist()}"
    )

  def schedule(count):
    t = as_float(count)
    peak, low = as_float(lr), as_float(end_lr)
    wf, df, tf = as_float(warmup_steps), as_float(decay_steps), as_float(total_steps)
    warm = peak * safe_div(t, wf)
    q = jnp.clip(safe_div(tf - t, df, 0.0), 0.0, 1.0)  # fraction of the cooldown left
    p = jnp.clip(safe_div(t - (tf - df), df), 0.0, 1.0)  # == 1 - q, from its own difference
    if decay == "linear":
      shape = q
    elif decay == "cosine":
      shape = half_sin2(q)  # (1 + cos(pi p)) / 2
    else:
      shape = q / (1.0 + jnp.sqrt(p))  # 1 - sqrt(p)
    cool = low + (peak - low) * shape
    return jnp.where(t < wf, warm, jnp.where(t < tf - df, peak, cool))

  return schedule


def rsqrt(
    lr: ArrayLike, warmup_steps: ArrayLike = 0, timescale: ArrayLike | None = None
) -> optax.Schedule:
  """Inverse square root decay after a linear warmup (Transformer "Noam", fairseq ``inverse_sqrt``).

  ``lr * t / W`` for ``t < W``, then ``lr / sqrt(1 + (t - W) / tau)`` with ``tau = timescale``
  (default ``W``). With the default this is ``lr * sqrt(W / t)``: fairseq's ``inverse_sqrt`` and,
  up to the choice of peak, Vaswani et al.'s ``d**-0.5 * min(t**-0.5, t * W**-1.5)``. The
  rate is continuous at ``W`` for any ``tau``.

  Args:
    lr: the peak learning rate, reached at ``t = W``, ``>= 0``.
    warmup_steps: ``W``, ``>= 0``.
    timescale: ``tau > 0``; required when ``warmup_steps`` is 0.


  Returns:
    ``schedule(step) -> rate``.
  References:
    Vaswani et al., `Attention Is All You Need <https://arxiv.org/abs/1706.03762>`_, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(rsqrt(1.0, warmup_steps=4)(jnp.array([0, 2, 4, 16])))
    [0.  0.5 1.  0.5]
  """
  v.nonnegative("rsqrt", "lr", lr)
  v.nonnegative("rsqrt", "warmup_steps", warmup_steps)
  if timescale is None:
    w = v.concrete(warmup_steps)
    if w is not None and np.any(w <= 0):
      raise ValueError(
          "rsqrt: timescale must be given (> 0) when warmup_steps is 0, got timescale=None,"
          f" warmup_steps={w.tolist()}"
      )
    timescale = warmup_steps
  v.positive("rsqrt", "timescale", timescale)

  def schedule(count):
    t = as_float(count)
    w, tau, peak = as_float(warmup_steps), as_float(timescale), as_float(lr)
    after = peak * jax.lax.rsqrt(1.0 + jnp.maximum(t - w, 0.0) / tau)
    return jnp.where(t < w, peak * safe_div(t, w), after)

  return schedule

