"""Host-side checks of hyperparameters that may be Python numbers, arrays or tracers.

A concrete value (a Python number, a NumPy scalar or array, a concrete ``jax.Array``) is
checked at construction time and a bad one raises ``ValueError`` naming the function, the
argument, the value and what is allowed. NaN never passes; ``bool`` (``True``, ``np.bool_``, a
boolean array) is refused wherever a number is expected, even when traced (its dtype is
static); the range helpers (:func:`positive`, :func:`nonnegative`, :func:`at_least`,
:func:`in_range`) also refuse ``inf``. A traced *value* cannot be checked while tracing; the
sweep engine checks the whole grid on the host before it traces anything.
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


def _is_bool(value: Any) -> bool:
  """``True`` for a Python or NumPy bool and for any array (traced included) of dtype bool."""
  if isinstance(value, (bool, np.bool_)):
    return True
  dtype = getattr(value, "dtype", None)
  try:
    return dtype is not None and np.dtype(dtype) == np.bool_
  except TypeError:  # e.g. a PRNG key dtype
    return False


def check(
    fn: str,
    name: str,
    value: Any,
    ok: Callable[[np.ndarray], np.ndarray | bool],
    allowed: str,
    *,
    finite: bool = False,
) -> None:
  """Raises ``ValueError`` if the concrete ``value`` fails ``ok`` (elementwise, NaN fails).

  A ``bool`` is refused even when traced: ``True`` is not a learning rate. Python numbers,
  NumPy scalars (``np.float32(0.1)``, ``np.int64(5)``) and arrays of any numeric dtype pass on
  to ``ok``.

  Args:
    fn: the public function being called, used in the message.
    name: the argument's name.
    value: the argument; its value is skipped when traced.
    ok: elementwise predicate on the NumPy value.
    allowed: human description of the allowed values, e.g. ``"> 0"``.
    finite: also refuse ``+-inf``.
  """
  arr = concrete(value)
  if _is_bool(value) or (arr is not None and arr.dtype == np.bool_):
    shown = _fmt(value) if arr is not None else "a traced bool"
    raise ValueError(f"{fn}: {name} must be a number ({allowed}), not a bool, got {name}={shown}")
  if arr is None:
    return
  if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f"{fn}: {name} must be a number or a numeric array, got {name}={value!r}")
  with np.errstate(invalid="ignore"):
    bad_nan = np.any(np.isnan(arr.astype(float)))
    bad_inf = finite and np.any(np.isinf(arr.astype(float)))
    good = not bad_nan and not bad_inf and np.all(ok(arr))
  if not good:
    what = f"finite and {allowed}" if bad_inf else allowed
    raise ValueError(f"{fn}: {name} must be {what}, got {name}={_fmt(value)}")


def positive(fn: str, name: str, value: Any) -> None:
  """Checks ``0 < value < inf``."""
  check(fn, name, value, lambda v: v > 0, "> 0", finite=True)


def nonnegative(fn: str, name: str, value: Any) -> None:
  """Checks ``0 <= value < inf``."""
  check(fn, name, value, lambda v: v >= 0, ">= 0", finite=True)


def at_least(fn: str, name: str, value: Any, low: float) -> None:
  """Checks ``low <= value < inf``."""
  check(fn, name, value, lambda v: v >= low, f">= {low}", finite=True)


def in_range(
    fn: str, name: str, value: Any, low: float, high: float, *, closed: str = "both"
) -> None:
  """Checks ``low <= value <= high``; ``closed`` is "both", "left", "right" or "neither"."""
  lo_ok = (lambda v: v >= low) if closed in ("both", "left") else (lambda v: v > low)
  hi_ok = (lambda v: v <= high) if closed in ("both", "right") else (lambda v: v < high)
  lb = "[" if closed in ("both", "left") else "("
  rb = "]" if closed in ("both", "right") else ")"
  check(fn, name, value, lambda v: lo_ok(v) & hi_ok(v), f"in {lb}{low}, {high}{rb}", finite=True)


def one_of(fn: str, name: str, value: Any, allowed: Sequence[Any]) -> None:
  """Checks a structural (static) choice such as a mode string."""
  if value not in allowed:
    choices = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"{fn}: {name} must be one of {choices}, got {name}={value!r}")


# ----------------------------------------------------------------------------------------
# Structural arguments shared by every entry point (one home for each rule).


def check_int(fn: str, name: str, value: Any, low: int, high: int | None = None) -> int:
  """An int (Python or NumPy, not bool) in ``[low, high]`` (``high=None``: no upper bound).

  Returns it as a Python int; otherwise a ``ValueError`` naming the function, the argument and
  the allowed range (a ``batch_size`` bounded by the training set says so).

  Examples:
    >>> check_int("sweep", "steps", 10, 1)
    10
    >>> check_int("sweep", "steps", 2.5, 1)
    Traceback (most recent call last):
    ValueError: sweep: steps must be an int >= 1, got steps=2.5
  """
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
  if not ok or value < low or (high is not None and value > high):
    rng = f">= {low}" if high is None else f"in [{low}, {high}]"
    extra = " (the training set size)" if name == "batch_size" else ""
    raise ValueError(f"{fn}: {name} must be an int {rng}{extra}, got {name}={value!r}")
  return int(value)


def check_flag(fn: str, name: str, value: Any) -> bool:
  """``True`` or ``False`` (Python or NumPy), else a ValueError naming it."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{fn}: {name} must be True or False, got {name}={value!r}")
  return bool(value)


def seed_list(fn: str, seeds: Any) -> list[int]:
  """``seeds`` as a list of distinct ints: an int ``n >= 1`` means ``[0, ..., n - 1]``.

  Examples:
    >>> seed_list("sweep", 3), seed_list("sweep", [7, 1])
    ([0, 1, 2], [7, 1])
  """
  if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
    if seeds < 1:
      raise ValueError(f"{fn}: seeds must be >= 1 or a non-empty list of distinct ints, got "
                       f"seeds={seeds!r}")
    return list(range(int(seeds)))
  try:
    out = list(seeds)
  except TypeError:
    raise ValueError(f"{fn}: seeds must be an int >= 1 or a non-empty list of distinct ints, "
                     f"got seeds={seeds!r}") from None
  bad = [s for s in out if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer))]
  if bad or not out or len(set(int(s) for s in out)) != len(out):
    raise ValueError(f"{fn}: seeds must be a non-empty list of distinct ints, got seeds={seeds!r}")
  return [int(s) for s in out]


def natural_mode(metric: str) -> str | None:
  """``"max"`` for a metric named like an accuracy, ``"min"`` for a loss or an error, else
  ``None`` (no natural direction)."""
  last = metric.split("/")[-1].lower()
  if "acc" in last:
    return "max"
  if "loss" in last or "error" in last or last in ("mse", "mae", "rmse", "nll", "perplexity"):
    return "min"
  return None


def default_mode(metric: str) -> str:
  """The direction in which ``metric`` improves when none is given: ``"max"`` for accuracies,
  ``"min"`` otherwise (the one home of that rule)."""
  return natural_mode(metric) or "min"


class renamed:
  """A context in which a validation error raised by ``inner`` (its message starts with
  ``"inner: "``) is re-raised naming ``outer``, the entry point the user called: the views of
  :func:`optaxlr.sweep` (``lr_find``...) report their own name. The exception keeps its type."""

  def __init__(self, inner: str, outer: str):
    self.inner, self.outer = f"{inner}: ", f"{outer}: "

  def __enter__(self):
    return self

  def __exit__(self, typ, exc, tb):
    if isinstance(exc, (ValueError, TypeError)) and exc.args and isinstance(exc.args[0], str) \
        and exc.args[0].startswith(self.inner):
      exc.args = (self.outer + exc.args[0][len(self.inner):], *exc.args[1:])
    return False



def canonical_array(where: str, key: str, value: Any) -> np.ndarray:
  """``value`` as a NumPy array of the dtype JAX gives it (``jnp.asarray``'s canonicalisation:
  with 64-bit mode off, ``int64`` becomes ``int32`` and ``float64`` becomes ``float32``).

  NumPy's, torch's and grain's default ``int64`` labels are thus accepted. Integers that do not
  fit the narrower type are an error (``jnp.asarray`` would wrap them silently); floats are
  rounded, as everywhere in JAX.

  Raises:
    ValueError: an integer value outside the canonical type's range, naming ``where`` and
      ``key``.

  Examples:
    >>> import numpy as np
    >>> canonical_array("f", "y", np.arange(3, dtype=np.int64)).dtype  # x64 off
    dtype('int32')
  """
  v = np.asarray(value)
  dt = np.dtype(jax.dtypes.canonicalize_dtype(v.dtype))
  if dt == v.dtype:
    return v
  if v.dtype.kind in "iu" and dt.kind in "iu" and v.size:
    info = np.iinfo(dt)
    lo, hi = v.min(), v.max()
    if lo < info.min or hi > info.max:
      raise ValueError(f"{where}, key {key!r}: {v.dtype} values in [{lo}, {hi}] do not fit "
                       f"{dt} (JAX's dtype for {v.dtype} without jax_enable_x64); enable x64 "
                       "or map the values into range")
  return v.astype(dt)
