"""Cyclical schedules: SGDR warm restarts, CLR and the one-cycle policy, with their momenta."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr.schedules._common import (
    as_float,
    capped_pow,
    cos_factor,
    floor_divmod,
    interpolate,
    safe_div,
    two_prod,
)

__all__ = [
    "cosine_restarts",
    "cyclic",
    "cyclic_momentum",
    "one_cycle",
    "one_cycle_momentum",
]


def _restart_index(count: ArrayLike, t_0: ArrayLike, t_mult: ArrayLike):
  """Cycle index ``n``, position ``t_cur`` in it, steps left ``t_left`` and length ``t_i``.

  Cycle ``n`` starts at ``start(n) = t_0 * (t_mult**n - 1) / (t_mult - 1)`` (at ``n * t_0``
  when ``t_mult == 1``). ``t_mult`` may be traced: both branches are computed and selected.

  * ``t_mult == 1``: an exact integer ``divmod`` when the step and ``t_0`` are integers.
  * ``t_mult > 1``: ``n`` from a logarithm, then one correction in each direction. ``start(n)``
    takes ``t_mult**n - 1`` from ``expm1(n * log1p(t_mult - 1))`` while it is small and from
    ``pow`` after (a few ulps for any ``t_mult``), and is rounded to an integer when ``t_0``
    and ``t_mult`` are whole numbers, so integer settings put every restart on its exact step,
    as PyTorch's step-by-step bookkeeping does.
    For fractional settings a step within ``16`` ulps of a restart counts as the restart
    (float32 cannot tell them apart; the rounding of ``start`` is of that size).

  ``t_cur = t - start(n)`` and ``t_left = start(n + 1) - t`` are each taken from their own
  difference, exact for integer settings below ``2**24`` steps.
  """
  t = as_float(count)
  t0 = as_float(t_0)
  tm = as_float(t_mult)
  one = tm == 1.0
  tm_s = jnp.where(one, 2.0, tm)  # a safe stand-in where t_mult == 1
  log_tm = jnp.log1p(tm_s - 1.0)
  whole = (t0 == jnp.round(t0)) & (tm_s == jnp.round(tm_s))

  def start(n):
    # t_mult**n - 1: expm1 while it is below 1 (no cancellation), the accurate pow above.
    nl = n * log_tm
    grow = jnp.where(nl < 0.5, jnp.expm1(nl), tm_s**n - 1.0)
    s = t0 * grow / (tm_s - 1.0)
    return jnp.where(whole, jnp.round(s), s)

  def tol(s):
    return jnp.where(whole, 0.0, 16 * jnp.finfo(s.dtype).eps * s)

  n = jnp.floor(jnp.log1p(t / t0 * (tm_s - 1.0)) / log_tm)
  n = jnp.maximum(n, 0.0)
  n = jnp.where(start(n + 1.0) - tol(start(n + 1.0)) <= t, n + 1.0, n)
  n = jnp.where((start(n) - tol(start(n)) > t) & (n > 0), n - 1.0, n)
  lo, hi = start(n), start(n + 1.0)
  len_geo = t0 * tm_s**n
  len_geo = jnp.where(whole, jnp.round(len_geo), len_geo)
  cur_geo = jnp.maximum(t - lo, 0.0)
  left_geo = jnp.maximum(hi - t, 0.0)

  n1, r1 = floor_divmod(count, t_0)
  left1 = jnp.asarray(t_0) - r1
  n1, r1, left1 = as_float(n1), as_float(r1), as_float(left1)
  return (
      jnp.where(one, n1, n),
      jnp.where(one, r1, cur_geo),
      jnp.where(one, left1, left_geo),
      jnp.where(one, t0, len_geo),
  )


def cosine_restarts(
    lr: ArrayLike,
    t_0: ArrayLike,
    t_mult: ArrayLike = 1,
    *,
    eta_min: ArrayLike = 0.0,
    m_mul: ArrayLike = 1.0,
) -> optax.Schedule:
  """Cosine annealing with warm restarts, SGDR (PyTorch ``CosineAnnealingWarmRestarts``).

  Cycle ``i`` lasts ``t_0 * t_mult**i`` steps; inside it, at position ``t_cur``::

    eta_min + (lr - eta_min) * m_mul**i * (1 + cos(pi * t_cur / t_i)) / 2

  In closed form (no Python loop over restarts), so ``t_0``, ``t_mult`` and ``m_mul`` may all be
  traced; ``t_mult`` may be any float ``>= 1`` (PyTorch only takes integers). ``m_mul`` shrinks
  the peak of each new cycle as in Keras' ``CosineDecayRestarts`` (there, ``alpha`` is
  ``eta_min / lr``); ``m_mul=1`` is PyTorch. ``eta_min`` and ``m_mul`` are keyword-only
  (Keras' fourth positional argument is ``m_mul``, PyTorch's is ``eta_min``).

  Precision: restarts fall on their exact step for whole-number ``t_0`` and ``t_mult`` (integer
  arithmetic in float32, exact below ``2**24`` steps, and for ``t_mult == 1`` at any int32
  step), and the cosine factor is taken from the nearer end of the cycle, so the rate just
  before a restart keeps full float32 relative precision even with ``eta_min = 0``. With a
  fractional ``t_mult`` a cycle ends between steps, at a position float32 holds to about an ulp
  of the step; a step within 16 ulps (``2e-6`` relative) of the end counts as the restart.

  Args:
    lr: the peak learning rate of the first cycle, ``>= 0``.
    t_0: length of the first cycle, ``>= 1``.
    t_mult: growth factor of the cycle length, ``>= 1``.
    eta_min: the minimum learning rate, ``>= 0``.
    m_mul: factor on the amplitude at each restart, in ``(0, 1]`` (a later cycle never peaks
      above an earlier one).

  Returns:
    ``schedule(step) -> rate``.

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(cosine_restarts(1.0, t_0=2, t_mult=2)(jnp.arange(7)))
    [1.       0.5      1.       0.853553 0.5      0.146447 1.      ]
  """
  fn = "cosine_restarts"
  v.nonnegative(fn, "lr", lr)
  v.at_least(fn, "t_0", t_0, 1)
  v.at_least(fn, "t_mult", t_mult, 1)
  v.nonnegative(fn, "eta_min", eta_min)
  v.in_range(fn, "m_mul", m_mul, 0.0, 1.0, closed="right")

  def schedule(count):
    n, t_cur, t_left, t_i = _restart_index(count, t_0, t_mult)
    lo = as_float(eta_min)
    amp = (as_float(lr) - lo) * capped_pow(as_float(m_mul), n)
    return lo + amp * cos_factor(t_cur / t_i, t_left / t_i)

  return schedule


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _cyclic_height(count, step_size_up, step_size_down, mode, gamma):
  """The CLR waveform ``h`` in [0, 1] times its mode's scale, as PyTorch ``CyclicLR.get_lr``,
  and ``1 - h``, each computed without cancellation.

  The position in the cycle ``r`` is an exact integer ``divmod`` for integer steps and step
  sizes; rising, ``f = r / up`` and ``1 - f = (up - r) / up``; falling, ``f = (up + down - r) /
  down`` and ``1 - f = (r - up) / down``. With the scale ``s``, ``h = f s`` and ``1 - h = (1 -
  f) + f (1 - s)``, a sum of non-negative terms (``1 - s = -expm1(t log gamma)`` for
  "exp_range").
  """
  down = step_size_up if step_size_down is None else step_size_down
  up = jnp.asarray(step_size_up)
  total = up + jnp.asarray(down)
  q, r = floor_divmod(count, total)
  cycle = as_float(q) + 1.0
  upf, downf = as_float(up), as_float(down)
  rising = r <= up
  f = jnp.where(rising, safe_div(as_float(r), upf), safe_div(as_float(total - r), downf))
  g = jnp.where(rising, safe_div(as_float(up - r), upf), safe_div(as_float(r - up), downf))
  if mode == "triangular":
    return f, g
  if mode == "triangular2":
    scale = 2.0 ** (1.0 - cycle)
    rest = 1.0 - scale  # exact: 1 - 2**-k
  else:  # exp_range scales by iterations, not cycles, as in PyTorch
    t, gam = as_float(count), as_float(gamma)
    scale, rest = gam**t, -jnp.expm1(jnp.log(gam) * t)
  return f * scale, g + f * rest


def _check_cyclic(fn, lo_name, lo, hi_name, hi, step_size_up, step_size_down, mode, gamma):
  v.nonnegative(fn, lo_name, lo)
  v.nonnegative(fn, hi_name, hi)
  lo_c, hi_c = v.concrete(lo), v.concrete(hi)
  if lo_c is not None and hi_c is not None and (lo_c > hi_c).any():
    raise ValueError(
        f"{fn}: {lo_name} must be <= {hi_name}, got {lo_name}={lo_c.tolist()},"
        f" {hi_name}={hi_c.tolist()}"
    )
  v.positive(fn, "step_size_up", step_size_up)
  if step_size_down is not None:
    v.positive(fn, "step_size_down", step_size_down)
  v.one_of(fn, "mode", mode, _CYCLIC_MODES)
  v.in_range(fn, "gamma", gamma, 0.0, 1.0, closed="right")


def cyclic(
    base_lr: ArrayLike,
    max_lr: ArrayLike,
    step_size_up: ArrayLike = 2000,
    step_size_down: ArrayLike | None = None,
    mode: str = "triangular",
    gamma: ArrayLike = 1.0,
) -> optax.Schedule:
  """Cyclical learning rate, CLR (PyTorch ``CyclicLR``).

  The rate rises linearly from ``base_lr`` to ``max_lr`` in ``step_size_up`` steps and falls
  back in ``step_size_down`` steps. The amplitude is scaled by 1 ("triangular"), by
  ``1 / 2**(cycle - 1)`` ("triangular2") or by ``gamma**t`` ("exp_range", per step as in
  PyTorch). Step 0 is ``base_lr``, as after PyTorch's constructor. Smith's range test gives
  ``max_lr`` and ``base_lr ~ max_lr / 3``; a half cycle of 2-10 epochs is his advice.

  Args:
    base_lr: the lower bound, ``>= 0``.
    max_lr: the upper bound, ``>= base_lr``.
    step_size_up: steps in the rising half, ``> 0``.
    step_size_down: steps in the falling half, ``> 0``; ``None`` means ``step_size_up``.
    mode: "triangular", "triangular2" or "exp_range" (static).
    gamma: the per-step amplitude factor of "exp_range", in ``(0, 1]`` (PyTorch does not
      check; a ``gamma > 1`` would take the rate above ``max_lr``).


  Returns:
    ``schedule(step) -> rate``.
  References:
    Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, WACV 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(cyclic(0.1, 0.5, step_size_up=2)(jnp.arange(5)))
    [0.1 0.3 0.5 0.3 0.1]
  """
  _check_cyclic(
      "cyclic", "base_lr", base_lr, "max_lr", max_lr, step_size_up, step_size_down, mode, gamma
  )

  def schedule(count):
    h, _ = _cyclic_height(count, step_size_up, step_size_down, mode, gamma)
    lo = as_float(base_lr)
    return lo + (as_float(max_lr) - lo) * h

  return schedule


def cyclic_momentum(
    base_momentum: ArrayLike = 0.8,
    max_momentum: ArrayLike = 0.9,
    step_size_up: ArrayLike = 2000,
    step_size_down: ArrayLike | None = None,
    mode: str = "triangular",
    gamma: ArrayLike = 1.0,
) -> optax.Schedule:
  """The momentum PyTorch's ``CyclicLR(cycle_momentum=True)`` cycles, inversely to the rate.

  ``max_momentum - (max_momentum - base_momentum) * h(t)`` with the same waveform ``h`` as
  :func:`cyclic` given the same ``step_size_up``, ``step_size_down``, ``mode`` and ``gamma``.
  Feed it to ``optax.inject_hyperparams(optax.sgd)(momentum=...)`` or to Adam's ``b1``.

  Args:
    base_momentum: the lower bound, reached at the peak of the rate, in ``[0, 1]``.
    max_momentum: the upper bound, ``>= base_momentum``, in ``[0, 1]``.
    step_size_up, step_size_down, mode, gamma: as in :func:`cyclic`.


  Returns:
    ``schedule(step) -> momentum``.
  Examples:
    >>> import jax.numpy as jnp
    >>> print(cyclic_momentum(0.8, 0.9, step_size_up=2)(jnp.arange(3)))
    [0.9  0.85 0.8 ]
  """
  fn = "cyclic_momentum"
  _check_cyclic(
      fn, "base_momentum", base_momentum, "max_momentum", max_momentum,
      step_size_up, step_size_down, mode, gamma,
  )
  v.in_range(fn, "max_momentum", max_momentum, 0.0, 1.0)

  def schedule(count):
    _, rest = _cyclic_height(count, step_size_up, step_size_down, mode, gamma)
    lo = as_float(base_momentum)
    return lo + (as_float(max_momentum) - lo) * rest  # == max - (max - base) * h

  return schedule


_ANNEALS = ("cos", "linear")


def _one_cycle_shape(count, total_steps, pct_start, anneal, three_phase, values):
  """Piecewise annealing between ``values`` at PyTorch ``OneCycleLR``'s phase ends.

  Phase ends: ``pct * T - 1`` and ``T - 1`` (two phases) or ``pct * T - 1``,
  ``2 * pct * T - 2`` and ``T - 1`` (three). A phase of zero length counts as finished. Inside
  a phase from ``s`` to ``e`` the value is interpolated from its nearer end with ``p = (t - s)
  / (e - s)`` and ``q = (e - t) / (e - s)``. The distances ``e - t`` are exact, or nearly:
  ``T - 1 - t`` in integers, ``k * pct * T - k - t`` with ``pct * T`` carried as an exact
  two-float product, so steps next to any phase end keep full float32 relative precision (the
  final rate is ``1e-4`` of the peak or less; a zero base momentum is reached at the peak).
  From ``T - 1`` on the final value is held.
  """
  t = as_float(count)
  big_t = as_float(total_steps)
  x, err = two_prod(as_float(pct_start), big_t)

  def to_end(k):  # (k * pct * T - k) - t; k = 0 means the last end, T - 1
    if k == 0:
      return big_t - (t + 1.0)
    return (k * x - (t + k)) + k * err

  ks = [1, 2, 0] if three_phase else [1, 0]
  shape = "cos" if anneal == "cos" else "linear"
  from_start = t  # t - s for the first phase, s = 0
  pieces = []
  for i, k in enumerate(ks):
    left = to_end(k)  # e - t
    n = from_start + left  # e - s
    val = interpolate(values[i], values[i + 1], safe_div(from_start, n), safe_div(left, n, 0.0),
                      shape)
    pieces.append((left, val))
    from_start = -left  # t - e: the next phase starts where this one ends
  out = pieces[-1][1]
  for left, val in reversed(pieces[:-1]):
    out = jnp.where(left >= 0, val, out)
  return jnp.where(t >= big_t - 1.0, values[-1], out)


def _check_one_cycle(fn, total_steps, pct_start, anneal):
  v.at_least(fn, "total_steps", total_steps, 1)
  v.in_range(fn, "pct_start", pct_start, 0.0, 1.0, closed="neither")
  v.one_of(fn, "anneal", anneal, _ANNEALS)


def one_cycle(
    max_lr: ArrayLike,
    total_steps: ArrayLike,
    *,
    pct_start: ArrayLike = 0.3,
    anneal: str = "cos",
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
    three_phase: bool = False,
) -> optax.Schedule:
  """The 1cycle policy (PyTorch ``OneCycleLR``), with PyTorch's phase boundaries.

  From ``max_lr / div_factor`` up to ``max_lr`` by step ``pct_start * T - 1``, then down to
  ``max_lr / div_factor / final_div_factor`` at step ``T - 1``. With ``three_phase`` it comes
  back to the initial rate by ``2 * pct_start * T - 2`` and only then falls to the minimum (the
  fastai variant). Annealing is by cosine ("cos") or linear ("linear").

  Differences: optax's ``cosine_onecycle_schedule(transition_steps, peak_value, ...)`` takes
  the length first and puts the peak at ``pct_start * T`` and the end at ``T``; this follows
  PyTorch (``- 1`` on each boundary), and every argument after ``total_steps`` is keyword-only
  (PyTorch's third positional argument is ``epochs``). The final rate ``max_lr / div_factor /
  final_div_factor`` is reached at step ``T - 1`` and held at every later step; steps ``0..T -
  1`` equal PyTorch's. (PyTorch also accepts step ``T``, where its anneal overshoots past the
  end of the last phase, e.g. 7.4e-5 instead of 4.9e-6 for ``one_cycle(1.23, 300)``, and
  raises after it; a jitted schedule cannot raise.) ``pct_start`` and ``total_steps`` may be
  traced.

  Precision: each phase is interpolated from its nearer end (``cos(pi x / 2) ** 2`` forms for
  "cos"), so the steps just before ``T - 1`` keep full float32 relative precision although the
  final rate is ``1e-4`` or less of the peak.

  Args:
    max_lr: the peak learning rate, ``>= 0``.
    total_steps: the length of the cycle, ``>= 1``.
    pct_start: fraction of the cycle spent rising, in ``(0, 1)``.
    anneal: "cos" or "linear" (static).
    div_factor: ``initial_lr = max_lr / div_factor``, ``> 0``.
    final_div_factor: ``min_lr = initial_lr / final_div_factor``, ``> 0``.
    three_phase: the three-phase variant (static).

  Returns:
    ``schedule(step) -> rate``.

  References:
    Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks Using Large
    Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> s = one_cycle(1.0, 10, pct_start=0.2, anneal="linear", div_factor=10.0)
    >>> print(s(jnp.array([0, 1, 9, 10, 1000])))  # the final rate is held from step T - 1 on
    [1.e-01 1.e+00 1.e-05 1.e-05 1.e-05]
  """
  fn = "one_cycle"
  v.nonnegative(fn, "max_lr", max_lr)
  _check_one_cycle(fn, total_steps, pct_start, anneal)
  v.positive(fn, "div_factor", div_factor)
  v.positive(fn, "final_div_factor", final_div_factor)

  def schedule(count):
    peak = as_float(max_lr)
    initial = peak / as_float(div_factor)
    low = initial / as_float(final_div_factor)
    values = [initial, peak, initial, low] if three_phase else [initial, peak, low]
    return _one_cycle_shape(count, total_steps, pct_start, anneal, three_phase, values)

  return schedule


def one_cycle_momentum(
    total_steps: ArrayLike,
    *,
    pct_start: ArrayLike = 0.3,
    anneal: str = "cos",
    base_momentum: ArrayLike = 0.85,
    max_momentum: ArrayLike = 0.95,
    three_phase: bool = False,
) -> optax.Schedule:
  """The momentum PyTorch's ``OneCycleLR(cycle_momentum=True)`` cycles, inversely to the rate.

  ``max_momentum`` down to ``base_momentum`` while the rate rises, back up while it falls (and
  held at ``max_momentum`` in the third phase). Use the same ``total_steps``, ``pct_start``,
  ``anneal`` and ``three_phase`` as the :func:`one_cycle` it accompanies. From step
  ``total_steps - 1`` on it holds ``max_momentum``. Arguments after ``total_steps`` are
  keyword-only.

  Args:
    total_steps, pct_start, anneal, three_phase: as in :func:`one_cycle`.
    base_momentum: the lowest momentum, at the peak rate, in ``[0, 1]``.
    max_momentum: the highest momentum, ``>= base_momentum``, in ``[0, 1]``.

  Returns:
    ``schedule(step) -> momentum``.

  Examples:
    >>> import jax.numpy as jnp
    >>> print(one_cycle_momentum(10, pct_start=0.2, anneal="linear")(jnp.array([0, 1, 9])))
    [0.95 0.85 0.95]
  """
  fn = "one_cycle_momentum"
  _check_one_cycle(fn, total_steps, pct_start, anneal)
  v.in_range(fn, "base_momentum", base_momentum, 0.0, 1.0)
  v.in_range(fn, "max_momentum", max_momentum, 0.0, 1.0)
  lo_c, hi_c = v.concrete(base_momentum), v.concrete(max_momentum)
  if lo_c is not None and hi_c is not None and (lo_c > hi_c).any():
    raise ValueError(
        f"{fn}: base_momentum must be <= max_momentum, got base_momentum={lo_c.tolist()},"
        f" max_momentum={hi_c.tolist()}"
    )

  def schedule(count):
    hi, lo = as_float(max_momentum), as_float(base_momentum)
    values = [hi, lo, hi, hi] if three_phase else [hi, lo, hi]
    return _one_cycle_shape(count, total_steps, pct_start, anneal, three_phase, values)

  return schedule

