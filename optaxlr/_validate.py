"""Host-side checks of hyperparameters that may be Python numbers, arrays or tracers.

A concrete value (a Python number, a NumPy array, a concrete ``jax.Array``) is checked at
construction time and a bad one raises ``ValueError`` naming the function, the argument, the
value and what is allowed. A traced value cannot be checked while tracing; the sweep engine
checks the whole grid on the host before it traces anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def concrete(value: Any) -> np.ndarray | None:
  """Returns ``value`` as a NumPy array, or ``None`` when it is traced (not checkable)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _fmt(value: Any) -> str:
  arr = concrete(value)
  if arr is not None and arr.ndim == 0:
    return repr(arr.item())
  if arr is not None and arr.size <= 8:
    return repr(arr.tolist())
  return repr(value) if arr is None else f"array of shape {arr.shape}"


def check(
    fn: str,
    name: str,
    value: Any,
    ok: Callable[[np.ndarray], np.ndarray | bool],
    allowed: str,
) -> None:
  """Raises ``ValueError`` if the concrete ``value`` fails ``ok`` (elementwise, NaN fails).

  Args:
    fn: the public function being called, used in the message.
    name: the argument's name.
    value: the argument; skipped when traced.
    ok: elementwise predicate on the NumPy value.
    allowed: human description of the allowed values, e.g. ``"> 0"``.
  """
  arr = concrete(value)
  if arr is None:
    return
  if arr.dtype == object or not (
      np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
  ):
    raise TypeError(f"{fn}: {name} must be a number or a numeric array, got {name}={value!r}")
  with np.errstate(invalid="ignore"):
    good = np.all(ok(arr)) and not np.any(np.isnan(arr.astype(float)))
  if not good:
    raise ValueError(f"{fn}: {name} must be {allowed}, got {name}={_fmt(value)}")


def positive(fn: str, name: str, value: Any) -> None:
  check(fn, name, value, lambda v: v > 0, "> 0")


def nonnegative(fn: str, name: str, value: Any) -> None:
  check(fn, name, value, lambda v: v >= 0, ">= 0")


def at_least(fn: str, name: str, value: Any, low: float) -> None:
  check(fn, name, value, lambda v: v >= low, f">= {low}")


def in_range(
    fn: str, name: str, value: Any, low: float, high: float, *, closed: str = "both"
) -> None:
  """Checks ``low <= value <= high``; ``closed`` is "both", "left", "right" or "neither"."""
  lo_ok = (lambda v: v >= low) if closed in ("both", "left") else (lambda v: v > low)
  hi_ok = (lambda v: v <= high) if closed in ("both", "right") else (lambda v: v < high)
  lb = "[" if closed in ("both", "left") else "("
  rb = "]" if closed in ("both", "right") else ")"
  check(fn, name, value, lambda v: lo_ok(v) & hi_ok(v), f"in {lb}{low}, {high}{rb}")


def one_of(fn: str, name: str, value: Any, allowed: Sequence[Any]) -> None:
  """Checks a structural (static) choice such as a mode string."""
  if value not in allowed:
    choices = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"{fn}: {name} must be one of {choices}, got {name}={value!r}")
