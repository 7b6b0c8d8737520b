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
