"""Shared arithmetic for the schedules: float steps, exact integer division, validation names."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def fdtype() -> Any:
  """The default float dtype (float32, or float64 under ``jax_enable_x64``)."""
  return jnp.result_type(float)


def as_float(x: ArrayLike) -> jax.Array:
  """A hyperparameter or step count as an array of the default float dtype."""
  return jnp.asarray(x).astype(fdtype())


def _is_int(x: jax.Array) -> bool:
  return jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.bool_)


def floor_divmod(count: ArrayLike, d: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """``(floor(count / d), count - floor(count / d) * d)``, exact when both are integers.

  With integer ``count`` and ``d`` (the common case: int32 step counts and integer step
  sizes) the division is done in integers, so step counts near ``2**31`` give exact quotients
  instead of float32 rounding. Otherwise the float quotient is computed and corrected by one
  unit where rounding put it on the wrong side of an integer. The branch is on dtypes, which
  are static, never on values. Both results are returned in the input's integer dtype or in the
  default float dtype.
  """
  count = jnp.asarray(count)
  d = jnp.asarray(d)
  if _is_int(count) and _is_int(d):
    q = jnp.floor_divide(count, d)
    return q, count - q * d
  t = as_float(count)
  df = as_float(d)
  q = jnp.floor(t / df)
  q = jnp.where((q + 1) * df <= t, q + 1, q)
  q = jnp.where(q * df > t, q - 1, q)
  return q, t - q * df


def safe_div(num: jax.Array, den: jax.Array, fallback: ArrayLike = 1.0) -> jax.Array:
  """``num / den`` where ``den != 0``, else ``fallback`` (no NaN in either branch of a where)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), fallback)


def half_sin2(x: jax.Array) -> jax.Array:
  """``sin(pi x / 2) ** 2 == (1 - cos(pi x)) / 2``, without the cancellation of ``1 - cos`` at
  small ``x`` (relative error a few ulps for every ``x`` in ``[0, 1]``)."""
  return jnp.sin((jnp.pi / 2) * x) ** 2


def cos_factor(p: jax.Array, q: jax.Array) -> jax.Array:
  """The cosine annealing factor ``(1 + cos(pi p)) / 2`` with ``q == 1 - p`` passed too.

  Written ``cos(pi p / 2) ** 2`` while ``p <= q`` and ``sin(pi q / 2) ** 2`` after: both
  arguments stay in ``[0, pi / 4]``, so the factor keeps full relative precision next to 0
  (``1 + cos(pi p)`` cancels there: at ``p = 1 - 1e-4`` float32 loses half its digits).
  """
  return jnp.where(p <= q, jnp.cos((jnp.pi / 2) * p) ** 2, half_sin2(q))


def interpolate(a: ArrayLike, b: ArrayLike, p: jax.Array, q: jax.Array, shape: str) -> jax.Array:
  """The value a fraction ``p`` of the way from ``a`` to ``b``; ``q == 1 - p`` is passed too.

  ``shape`` is "linear" (``a + (b - a) * p``) or "cos" (``a + (b - a) * (1 - cos(pi p)) / 2``,
  a half cosine). It is evaluated from the nearer end: ``a + (b - a) * w(p)`` while
  ``p <= q`` and ``b + (a - b) * w(q)`` after, with ``w(x) = x`` or ``sin(pi x / 2) ** 2``.
  The caller computes ``p`` and ``q`` each from its own difference of steps (``(t - start) /
  n`` and ``(end - t) / n``), which are exact for integer steps, so a value next to either end
  keeps full relative precision: no ``1 - p`` cancellation, no ``(end - start) + start``
  round trip that loses a small ``end``.
  """
  w = (lambda x: x) if shape == "linear" else half_sin2
  a, b = jnp.asarray(a), jnp.asarray(b)
  return jnp.where(p <= q, a + (b - a) * w(p), b + (a - b) * w(q))


def capped_pow(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x ** y`` capped at the largest finite float, so that ``0 * capped_pow(...)`` is 0, not
  NaN, when a factor > 1 overflows at a huge step."""
  return jnp.minimum(x**y, jnp.finfo(x.dtype).max)


def two_prod(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(x, e)`` with ``x = fl(a * b)`` and ``x + e == a * b`` exactly (Dekker's TwoProduct).

  Used where a product of float hyperparameters is a boundary that integer steps are then
  measured from (``pct_start * total_steps``): ``(x - t) + e`` keeps its relative precision
  when ``t`` is next to the boundary, which ``fl(a * b) - t`` does not. Veltkamp splitting,
  valid while ``|a * b|`` is far from overflow; XLA does not reassociate floats, so it is exact
  under ``jit`` too.
  """
  dtype = jnp.result_type(a, b)
  factor = 2.0 ** ((jnp.finfo(dtype).nmant + 2) // 2) + 1.0

  def split(v):
    c = factor * v
    hi = c - (c - v)
    return hi, v - hi

  x = a * b
  ah, al = split(a)
  bh, bl = split(b)
  return x, ((ah * bh - x) + ah * bl + al * bh) + al * bl
