"""Search spaces: hyperparameter settings as columns of arrays with a leading config axis.

A :class:`Space` is an ordered mapping ``name -> 1-D NumPy array``; every column has the same
length ``n``, the number of configurations. Row ``i`` of all columns is configuration ``i``.
``space.to_pytree()`` turns the columns into ``jax.Array`` s ready for ``jax.vmap``, so a
whole grid trains as one compiled program.

A space remembers how it was built (``space.axes``): a cartesian product of axes in C order
(the last axis varies fastest), so results with a leading ``n`` axis can be reshaped to
``space.shape`` and labelled with ``space.dims`` / ``space.coords`` (e.g. as an
``xarray.DataArray``). Seeds and k-fold folds are ordinary integer axes named ``"seed"`` and
``"fold"`` (:data:`SEED`, :data:`FOLD`); the sweep engine finds them by name.

Everything here runs on the host (NumPy, float64) before anything is traced; values such as
``3e-4`` stay exact decimals until ``to_pytree`` casts them to JAX's default float dtype.

A column of strings is a *categorical* axis (``grid(opt=["adamw", "sgd"])``): results are
labelled by the strings, and inside a sweep the optimizer reads it as a :class:`Categorical`,
a traced int index that knows its values, from which :func:`switch` builds the chosen
schedule, transformation or value.

Examples:
  >>> from optaxlr import search
  >>> space = search.grid(lr=[0.1, 0.01], wd=[0.0, 1e-4]) * search.seeds(2)
  >>> len(space), space.dims, space.shape
  (8, ('lr', 'wd', 'seed'), (2, 2, 2))
  >>> space[1]
  {'lr': 0.1, 'wd': 0.0, 'seed': 1}
  >>> search.one_three(1e-4, 1e-2).tolist()
  [0.0001, 0.0003, 0.001, 0.003, 0.01]
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxlr import _validate

__all__ = [
    "SEED",
    "FOLD",
    "Axis",
    "Space",
    "Categorical",
    "SwitchState",
    "switch",
    "encode",
    "with_categories",
    "Distribution",
    "grid",
    "zip",
    "random",
    "seeds",
    "folds",
    "log_uniform",
    "uniform",
    "one_minus_log_uniform",
    "choice",
    "int_uniform",
    "logspace",
    "one_three",
    "validate_space",
]

_zip = builtins.zip  # the module defines its own `zip` (a space builder)

SEED = "seed"
"""Name of the integer axis of random seeds (see :func:`seeds`)."""
FOLD = "fold"
"""Name of the integer axis of cross-validation folds (see :func:`folds`)."""


class Axis(NamedTuple):
  """One axis of a space's grid structure.

  Attributes:
    dim: the axis name (an ``xarray`` dimension): the hyperparameter's name for a
      :func:`grid` axis, the names joined by ``"+"`` for a :func:`zip` axis, ``"sample"``
      for :func:`random`, ``"config"`` for a concatenation.
    names: the hyperparameters that vary along this axis.
    values: ``name -> 1-D array`` of this axis's values in order (for a grid axis: the
      unique values as given; for the others: one value per position).
  """

  dim: str
  names: tuple[str, ...]
  values: Mapping[str, np.ndarray]

  @property
  def size(self) -> int:
    """Number of positions along the axis."""
    return len(next(iter(self.values.values())))


def _fmt(values: np.ndarray) -> str:
  if values.size <= 8:
    return repr(values.tolist())
  return f"array of length {values.size}"


def _frozen(arr: np.ndarray) -> np.ndarray:
  arr = np.array(arr, copy=True)
  arr.flags.writeable = False
  return arr


def _column(fn: str, name: str, values: Any, *, unique: bool = False) -> np.ndarray:
  """Validates one axis of values: 1-D, non-empty, numbers without NaN or all strings; returns
  float64/int64/bool, or a unicode array (a categorical axis)."""
  if isinstance(values, Distribution):
    raise TypeError(f"{fn}: {name} is a distribution ({values!r}); use search.random for it")
  if isinstance(values, jax.core.Tracer):
    raise TypeError(f"{fn}: {name} must be concrete (search spaces are built on the host)")
  if isinstance(values, (list, tuple)):
    strings = [isinstance(v, str) for v in values]
    if any(strings) and not all(strings):  # NumPy would silently turn the numbers into strings
      raise TypeError(f"{fn}: {name} mixes strings and numbers; a categorical axis holds only "
                      f"strings, got {name}={values!r}")
  try:
    arr = np.asarray(values)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{fn}: {name} must be a number, a string or a 1-D sequence of them, "
                    f"got {name}={values!r}") from e
  if arr.ndim == 0:
    arr = arr.reshape(1)
  if arr.ndim != 1:
    raise ValueError(f"{fn}: {name} must be a scalar or 1-D, got {name} with shape {arr.shape}")
  if arr.dtype.kind == "b":
    arr = arr.astype(bool)
  elif arr.dtype.kind in "iu":
    arr = arr.astype(np.int64)
  elif arr.dtype.kind == "f":
    arr = arr.astype(np.float64)
  elif arr.dtype.kind != "U":
    raise TypeError(f"{fn}: {name} must be numeric (float, int or bool) or strings, "
                    f"got {name}={values!r}")
  if arr.size == 0:
    raise ValueError(f"{fn}: {name} must be non-empty, got {name}=[]")
  if arr.dtype.kind == "f" and np.any(np.isnan(arr)):
    raise ValueError(f"{fn}: {name} must not contain NaN, got {name}={_fmt(arr)}")
  if unique and np.unique(arr).size != arr.size:
    raise ValueError(f"{fn}: {name} must not repeat a value, got {name}={_fmt(arr)}")
  return arr


def _check_names(fn: str, names: Sequence[str]) -> None:
  if not names:
    raise ValueError(f"{fn}: at least one hyperparameter is required, got none")


def _unique_dim(dim: str, taken: set[str]) -> str:
  if dim not in taken:
    return dim
  i = 1
  while f"{dim}_{i}" in taken:
    i += 1
  return f"{dim}_{i}"


class Space:
  """Hyperparameter settings: ordered ``name -> 1-D array`` columns of a common length ``n``.

  Build one with :func:`grid`, :func:`zip`, :func:`random`, :func:`seeds`, :func:`folds`;
  combine with ``*`` (cartesian product, the left space's configs outermost) and ``+``
  (concatenation of spaces with the same names); add constants with :meth:`with_fixed`.
  Spaces are immutable: every operation returns a new one.

  Attributes:
    axes: the grid structure, a tuple of :class:`Axis`; the product of their lengths is ``n``
      and config ``i`` sits at ``np.unravel_index(i, space.shape)`` (C order).
    fixed: ``name -> value`` of the constants added with :meth:`with_fixed` or given as a
      scalar to :func:`random`; they belong to no axis.
  """

  def __init__(self, axes: Sequence[Axis], fixed: Mapping[str, Any] | None = None):
    """Low-level constructor; prefer :func:`grid`, :func:`zip` and :func:`random`."""
    axes = tuple(axes)
    fixed = dict(fixed or {})
    if not axes:
      raise ValueError("Space: at least one axis is required, got an empty space")
    names: list[str] = []
    dims: set[str] = set()
    clean_axes = []
    for axis in axes:
      if axis.dim in dims:
        raise ValueError(f"Space: axis names must be unique, got {axis.dim!r} twice")
      dims.add(axis.dim)
      lengths = {len(np.asarray(v)) for v in axis.values.values()}
      if len(lengths) != 1 or tuple(axis.values) != tuple(axis.names):
        raise ValueError(f"Space: axis {axis.dim!r} must hold equal-length values for "
                         f"exactly its names {axis.names}")
      clean_axes.append(Axis(axis.dim, tuple(axis.names),
                             {k: _frozen(v) for k, v in axis.values.items()}))
      names.extend(axis.names)
    for name in fixed:
      names.append(name)
    if len(set(names)) != len(names):
      dup = sorted({k for k in names if names.count(k) > 1})
      raise ValueError(f"Space: hyperparameter names must be unique, got {dup} more than once")
    self._axes = tuple(clean_axes)
    self._fixed = {k: _column("Space.with_fixed", k, v)[0].item() for k, v in fixed.items()}
    self._n = math.prod(a.size for a in self._axes)
    self._columns = self._build_columns()

  # ---------------------------------------------------------------- structure
  def _build_columns(self) -> dict[str, np.ndarray]:
    shape = self.shape
    cols: dict[str, np.ndarray] = {}
    for k, axis in enumerate(self._axes):
      inner = math.prod(shape[k + 1:])
      outer = math.prod(shape[:k])
      for name, vals in axis.values.items():
        cols[name] = _frozen(np.tile(np.repeat(vals, inner), outer))
    for name, value in self._fixed.items():
      cols[name] = _frozen(np.full(self._n, value))
    return cols

  @property
  def axes(self) -> tuple[Axis, ...]:
    return self._axes

  @property
  def fixed(self) -> dict[str, Any]:
    return dict(self._fixed)

  @property
  def names(self) -> tuple[str, ...]:
    """All hyperparameter names: the axes' names in order, then the fixed ones."""
    return tuple(self._columns)

  @property
  def columns(self) -> dict[str, np.ndarray]:
    """``name -> read-only 1-D array`` of length ``n`` (a new dict; arrays shared)."""
    return dict(self._columns)

  @property
  def dims(self) -> tuple[str, ...]:
    """The axis names in order, e.g. ``("lr", "wd", "seed")``."""
    return tuple(a.dim for a in self._axes)

  @property
  def shape(self) -> tuple[int, ...]:
    """The grid shape; ``math.prod(space.shape) == len(space)``."""
    return tuple(a.size for a in self._axes)

  @property
  def coords(self) -> dict[str, tuple[Any, Any]]:
    """``name -> (dims, values)`` for labelling a reshaped result (e.g. with xarray).

    A hyperparameter varying along axis ``d`` maps to ``(d, values along d)``; a fixed one
    to ``((), value)``.
    """
    out: dict[str, tuple[Any, Any]] = {}
    for axis in self._axes:
      for name, vals in axis.values.items():
        out[name] = (axis.dim, vals)
    for name, value in self._fixed.items():
      out[name] = ((), value)
    return out

  @property
  def categories(self) -> dict[str, tuple[str, ...]]:
    """``name -> values`` of every categorical (string) hyperparameter.

    The values are in order of first appearance in the space: for a :func:`grid` axis, the
    order given. Inside a sweep, config ``i`` sees the position of its value in this tuple
    (:func:`encode`), as a :class:`Categorical` that carries the tuple.

    Examples:
      >>> from optaxlr import search
      >>> search.grid(lr=[0.1, 0.01], opt=["sgd", "adamw"]).categories
      {'opt': ('sgd', 'adamw')}
    """
    out = {}
    for name, col in self._columns.items():
      if col.dtype.kind == "U":
        _, first = np.unique(col, return_index=True)
        out[name] = tuple(col[np.sort(first)].tolist())
    return out

  def index(self, i: int) -> tuple[int, ...]:
    """Grid position of config ``i`` (C order)."""
    return tuple(int(j) for j in np.unravel_index(self._normalize(i), self.shape))

  def reshape(self, values: Any) -> Any:
    """Reshapes the leading ``n`` axis of an array (or every leaf of a pytree) to ``shape``."""
    def one(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if x.ndim == 0 or x.shape[0] != self._n:
        raise ValueError(f"Space.reshape: leading axis must have length {self._n}, "
                         f"got shape {x.shape}")
      return x.reshape(self.shape + x.shape[1:])
    return jax.tree.map(one, values)

  # ---------------------------------------------------------------- access
  def __len__(self) -> int:
    return self._n

  def _normalize(self, i: int) -> int:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
      raise TypeError(f"Space: index must be an integer, got {i!r}")
    j = int(i) + self._n if i < 0 else int(i)
    if not 0 <= j < self._n:
      raise IndexError(f"Space: index {i} out of range for a space of {self._n} configs")
    return j

  def __getitem__(self, i: int) -> dict[str, Any]:
    """Config ``i`` as a dict of Python scalars (float, int, bool or str)."""
    j = self._normalize(i)
    return {k: v[j].item() for k, v in self._columns.items()}

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for i in range(self._n):
      yield self[i]

  def to_pytree(self, dtype: Any = None) -> dict[str, jax.Array]:
    """The columns as ``jax.Array`` s with leading axis ``n``, ready for ``jax.vmap``.

    Args:
      dtype: dtype of the float columns; default JAX's default float (float32, or float64
        with ``jax_enable_x64``). Integer columns become JAX's default int, bool stays bool,
        a string column becomes its int32 index into :attr:`categories` (:func:`encode`).
    """
    float_dtype = jax.dtypes.canonicalize_dtype(np.float64 if dtype is None else dtype)
    int_dtype = jax.dtypes.canonicalize_dtype(np.int64)
    out = {}
    categories = self.categories
    for k, v in encode(self._columns, categories).items():
      kind = v.dtype.kind
      target = (np.int32 if k in categories else float_dtype if kind == "f"
                else int_dtype if kind in "iu" else np.bool_)
      out[k] = jnp.asarray(v.astype(target))
    return out

  # ---------------------------------------------------------------- composition
  def with_fixed(self, **values: Any) -> Space:
    """Adds constants (broadcast to every config); a name may not already be present."""
    for name, value in values.items():
      if name in self._columns:
        raise ValueError(f"Space.with_fixed: {name} is already in the space")
      if not isinstance(value, str) and np.ndim(value) != 0:
        raise ValueError(f"Space.with_fixed: {name} must be a scalar, got {name}={value!r}")
      _column("Space.with_fixed", name, value)
    return Space(self._axes, {**self._fixed, **values})

  def __mul__(self, other: Space) -> Space:
    if not isinstance(other, Space):
      return NotImplemented
    overlap = sorted(set(self.names) & set(other.names))
    if overlap:
      raise ValueError(f"Space.__mul__: the spaces share hyperparameters {overlap}; a product "
                       "needs disjoint names")
    taken = set(self.dims)
    axes = list(self._axes)
    for axis in other.axes:
      dim = _unique_dim(axis.dim, taken)
      taken.add(dim)
      axes.append(axis._replace(dim=dim))
    return Space(axes, {**self._fixed, **other.fixed})

  def __add__(self, other: Space) -> Space:
    if not isinstance(other, Space):
      return NotImplemented
    if set(self.names) != set(other.names):
      raise ValueError(f"Space.__add__: concatenated spaces need the same names, got "
                       f"{sorted(self.names)} and {sorted(other.names)}")
    cols, other_cols = self.columns, other.columns
    mixed = [k for k in self.names if (cols[k].dtype.kind == "U") != (other_cols[k].dtype.kind == "U")]
    if mixed:
      raise ValueError(f"Space.__add__: {mixed[0]} holds strings in one space and numbers in the "
                       "other; a categorical axis holds only strings")
    fixed = {k: v for k, v in self._fixed.items()
             if k in other.fixed and other.fixed[k] == v}
    varying = [k for k in self.names if k not in fixed]
    if not varying:  # both spaces are one fixed config each
      varying = [self.names[0]]
      del fixed[self.names[0]]
    values = {}
    for k in varying:
      values[k] = np.concatenate([self._columns[k], other.columns[k]])
    return Space([Axis("config", tuple(varying), values)], fixed)

  def repeat(self, seeds: int | Sequence[int] | None = None,
             folds: int | Sequence[int] | None = None) -> Space:
    """``space * seeds(seeds) * folds(folds)``: every config once per seed (and fold)."""
    out = self
    if seeds is not None:
      out = out * _seeds(seeds)
    if folds is not None:
      out = out * _folds(folds)
    return out

  def validate(self, fn: str = "sweep", **rules: Any) -> None:
    """Shortcut for :func:`validate_space` ``(self, fn=fn, **rules)``."""
    validate_space(self, fn=fn, **rules)

  def __repr__(self) -> str:
    parts = []
    for axis in self._axes:
      parts.append(f"{axis.dim}[{axis.size}]")
    fixed = "".join(f", {k}={v!r}" for k, v in self._fixed.items())
    return f"Space(n={self._n}, {' x '.join(parts)}{fixed})"


# -------------------------------------------------------------------- builders
def grid(**axes: Any) -> Space:
  """Cartesian product of value lists, C order (the last keyword varies fastest).

  Args:
    **axes: ``name=values``; values is a 1-D sequence (or a scalar: one value) of numbers,
      without NaN or repeats, or of strings (a categorical axis, see :func:`switch`).

  Returns:
    A :class:`Space` with one axis per keyword.

  Examples:
    >>> from optaxlr import search
    >>> [tuple(c.values()) for c in search.grid(a=[1, 2], b=[10, 20, 30])][:4]
    [(1, 10), (1, 20), (1, 30), (2, 10)]
  """
  _check_names("grid", list(axes))
  return Space([Axis(name, (name,), {name: _column("grid", name, v, unique=True)})
                for name, v in axes.items()])


def zip(**axes: Any) -> Space:  # noqa: A001  (mirrors the builtin on purpose)
  """Aligned values (like Python's ``zip``): config ``i`` takes the ``i``-th of each.

  All value lists must have the same length. The space has one axis named by the
  hyperparameters joined with ``"+"``.

  Examples:
    >>> from optaxlr import search
    >>> list(search.zip(lr=[0.1, 0.2], wd=[0.0, 0.5]))
    [{'lr': 0.1, 'wd': 0.0}, {'lr': 0.2, 'wd': 0.5}]
  """
  _check_names("zip", list(axes))
  cols = {name: _column("zip", name, v) for name, v in axes.items()}
  lengths = {name: len(c) for name, c in cols.items()}
  if len(set(lengths.values())) != 1:
    desc = ", ".join(f"{k} of length {n}" for k, n in lengths.items())
    raise ValueError(f"zip: all axes must have the same length, got {desc}")
  return Space([Axis("+".join(cols), tuple(cols), cols)])


def seeds(n: int | Sequence[int]) -> Space:
  """An integer axis named ``"seed"``: ``0 .. n-1``, or the given seeds.

  Examples:
    >>> from optaxlr import search
    >>> (search.grid(lr=[0.1, 0.01]) * search.seeds(2)).shape
    (2, 2)
  """
  values = np.arange(n) if isinstance(n, (int, np.integer)) else n
  if isinstance(n, (int, np.integer)):
    _validate.positive("seeds", "n", n)
  col = _column("seeds", "n", values, unique=True)
  if col.dtype.kind not in "iu":
    raise TypeError(f"seeds: seeds must be integers, got {_fmt(col)}")
  return Space([Axis(SEED, (SEED,), {SEED: col})])


def folds(k: int) -> Space:
  """An integer axis named ``"fold"`` with values ``0 .. k-1`` (k-fold cross-validation).

  Examples:
    >>> from optaxlr import search
    >>> search.folds(3).columns["fold"].tolist()
    [0, 1, 2]
  """
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"folds: k must be an int, got k={k!r}")
  _validate.at_least("folds", "k", k, 2)
  return Space([Axis(FOLD, (FOLD,), {FOLD: np.arange(k, dtype=np.int64)})])


# -------------------------------------------------------------------- distributions
def _key(fn: str, key: Any) -> jax.Array:
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,) and key.dtype == np.uint32:
    return jax.random.wrap_key_data(jnp.asarray(key))
  raise TypeError(f"{fn}: key must be a JAX PRNG key or an int seed, got key={key!r}")


def _u01(key: jax.Array, n: int) -> np.ndarray:
  # float32 draws are identical with and without x64; the transforms run in float64.
  return np.asarray(jax.random.uniform(key, (n,), dtype=jnp.float32), dtype=np.float64)


def _check_lo_hi(fn: str, lo: Any, hi: Any) -> tuple[float, float]:
  for name, v in (("lo", lo), ("hi", hi)):
    _validate.check(fn, name, v, np.isfinite, "a finite number")
    if np.ndim(v) != 0:
      raise ValueError(f"{fn}: {name} must be a scalar, got {name}={v!r}")
  if not lo < hi:
    raise ValueError(f"{fn}: lo must be < hi, got lo={lo!r}, hi={hi!r}")
  return float(lo), float(hi)


class Distribution:
  """Base class of the distributions :func:`random` samples from (host-side, NumPy)."""

  def sample(self, key: jax.Array, n: int) -> np.ndarray:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _LogUniform(Distribution):
  lo: float
  hi: float

  def sample(self, key, n):
    a, b = math.log(self.lo), math.log(self.hi)
    return np.clip(np.exp(a + (b - a) * _u01(key, n)), self.lo, self.hi)


@dataclasses.dataclass(frozen=True)
class _Uniform(Distribution):
  lo: float
  hi: float

  def sample(self, key, n):
    return self.lo + (self.hi - self.lo) * _u01(key, n)


@dataclasses.dataclass(frozen=True)
class _OneMinusLogUniform(Distribution):
  lo: float
  hi: float

  def sample(self, key, n):
    a, b = math.log(1.0 - self.hi), math.log(1.0 - self.lo)
    return np.clip(1.0 - np.exp(a + (b - a) * _u01(key, n)), self.lo, self.hi)


@dataclasses.dataclass(frozen=True)
class _Choice(Distribution):
  values: tuple

  def sample(self, key, n):
    idx = np.asarray(jax.random.randint(key, (n,), 0, len(self.values)))
    return np.asarray(self.values)[idx]


@dataclasses.dataclass(frozen=True)
class _IntUniform(Distribution):
  lo: int
  hi: int

  def sample(self, key, n):
    return np.asarray(jax.random.randint(key, (n,), self.lo, self.hi + 1)).astype(np.int64)


def log_uniform(lo: float, hi: float) -> Distribution:
  """``exp(U(log lo, log hi))``: uniform in log space, e.g. learning rates, weight decay.

  Examples:
    >>> from optaxlr import search
    >>> lr = search.random(0, 4, lr=search.log_uniform(1e-5, 1e-1)).columns["lr"]
    >>> bool(((lr >= 1e-5) & (lr <= 1e-1)).all())
    True
  """
  lo, hi = _check_lo_hi("log_uniform", lo, hi)
  _validate.positive("log_uniform", "lo", lo)
  return _LogUniform(lo, hi)


def uniform(lo: float, hi: float) -> Distribution:
  """``U(lo, hi)``.

  Examples:
    >>> from optaxlr import search
    >>> x = search.random(0, 100, dropout=search.uniform(0.0, 0.5)).columns["dropout"]
    >>> bool((x >= 0).all() and (x <= 0.5).all())
    True
  """
  return _Uniform(*_check_lo_hi("uniform", lo, hi))


def one_minus_log_uniform(lo: float, hi: float) -> Distribution:
  """``m`` with ``1 - m`` log-uniform in ``[1 - hi, 1 - lo]``: momenta, EMA decays.

  ``one_minus_log_uniform(0.9, 0.999)`` is the classic ``1 - 10 ** U(-3, -1)``.
  Requires ``lo < hi < 1``.

  Examples:
    >>> from optaxlr import search
    >>> m = search.random(0, 100, momentum=search.one_minus_log_uniform(0.9, 0.999)).columns["momentum"]
    >>> bool((m >= 0.9).all() and (m <= 0.999).all())
    True
  """
  lo, hi = _check_lo_hi("one_minus_log_uniform", lo, hi)
  _validate.check("one_minus_log_uniform", "hi", hi, lambda v: v < 1, "< 1")
  return _OneMinusLogUniform(lo, hi)


def choice(values: Sequence[Any]) -> Distribution:
  """Uniform choice among the given numeric (or bool) values, or strings (a categorical axis).

  Examples:
    >>> from optaxlr import search
    >>> set(search.random(0, 50, bs=search.choice([32, 64])).columns["bs"].tolist()) <= {32, 64}
    True
  """
  col = _column("choice", "values", values)
  return _Choice(tuple(col.tolist()))


def int_uniform(lo: int, hi: int) -> Distribution:
  """Uniform integers in ``[lo, hi]``, both ends included (like Python's ``random.randint``).

  Examples:
    >>> from optaxlr import search
    >>> w = search.random(0, 200, warmup=search.int_uniform(0, 3)).columns["warmup"]
    >>> sorted(set(w.tolist()))
    [0, 1, 2, 3]
  """
  for name, v in (("lo", lo), ("hi", hi)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"int_uniform: {name} must be an int, got {name}={v!r}")
  _check_lo_hi("int_uniform", lo, hi)
  return _IntUniform(int(lo), int(hi))


def random(key: Any, n: int, **dists: Any) -> Space:
  """``n`` random configurations, reproducible from ``key``.

  Each hyperparameter draws from its own stream ``fold_in(key, crc32(name))``, so adding or
  reordering hyperparameters does not change the others' samples.

  Args:
    key: a JAX PRNG key (typed or raw ``uint32[2]``) or an int seed.
    n: number of configurations.
    **dists: ``name=distribution`` (:func:`log_uniform`, :func:`uniform`,
      :func:`one_minus_log_uniform`, :func:`choice`, :func:`int_uniform`) or a scalar or
      string (a constant, listed in ``space.fixed``).

  Returns:
    A :class:`Space` with one axis ``"sample"`` of length ``n``.

  Examples:
    >>> from optaxlr import search
    >>> s = search.random(0, 3, lr=search.log_uniform(1e-4, 1e-1), momentum=0.9)
    >>> len(s), s.dims, s.fixed
    (3, ('sample',), {'momentum': 0.9})
  """
  key = _key("random", key)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
    raise TypeError(f"random: n must be an int, got n={n!r}")
  _validate.positive("random", "n", n)
  _check_names("random", list(dists))
  values, fixed = {}, {}
  for name, dist in dists.items():
    if isinstance(dist, Distribution):
      sub = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
      values[name] = _column("random", name, dist.sample(sub, int(n)))
    elif isinstance(dist, str) or np.ndim(dist) == 0:
      _column("random", name, dist)
      fixed[name] = dist
    else:
      raise TypeError(f"random: {name} must be a distribution or a scalar, got "
                      f"{name}={dist!r} (use search.choice for a list of values)")
  if not values:
    raise ValueError("random: at least one hyperparameter must be a distribution")
  return Space([Axis("sample", tuple(values), values)], fixed)


# -------------------------------------------------------------------- value helpers
def logspace(lo: float, hi: float, n: int) -> np.ndarray:
  """``n`` geometrically spaced values from ``lo`` to ``hi``, both included (exactly).

  Examples:
    >>> from optaxlr import search
    >>> search.logspace(1e-3, 1e-1, 3).tolist()
    [0.001, 0.01, 0.1]
  """
  lo, hi = _check_lo_hi("logspace", lo, hi)
  _validate.positive("logspace", "lo", lo)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
    raise TypeError(f"logspace: n must be an int, got n={n!r}")
  _validate.positive("logspace", "n", n)
  out = np.geomspace(lo, hi, int(n))
  out[0] = lo
  if n > 1:
    out[-1] = hi
  return out


def one_three(lo: float, hi: float) -> np.ndarray:
  """The "1-3-10" grid: ``1e-5, 3e-5, 1e-4, 3e-4, ...`` restricted to ``[lo, hi]``.

  Values are the exact decimals (``3e-4`` is ``float("3e-4")``, not ``3 * 1e-4``).

  Examples:
    >>> from optaxlr import search
    >>> search.one_three(2e-3, 0.5).tolist()
    [0.003, 0.01, 0.03, 0.1, 0.3]
  """
  lo, hi = _check_lo_hi("one_three", lo, hi)
  _validate.positive("one_three", "lo", lo)
  tol = 1e-9
  out = []
  for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
    for m in (1, 3):
      v = float(f"{m}e{e}")
      if lo * (1 - tol) <= v <= hi * (1 + tol):
        out.append(v)
  if not out:
    raise ValueError(f"one_three: no 1-3-10 value lies in [lo, hi], got lo={lo!r}, hi={hi!r}")
  return np.asarray(out, dtype=np.float64)


# -------------------------------------------------------------------- validation
def validate_space(
    space: Space,
    *,
    fn: str = "sweep",
    required: Sequence[str] = (),
    positive: Sequence[str] = (),
    nonnegative: Sequence[str] = (),
    integer: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
    finite: bool = True,
) -> None:
  """Checks every config of ``space`` on the host, before anything is compiled.

  Raises ``ValueError`` naming the first bad config, e.g.
  ``"sweep: learning_rate must be > 0, config 3 has learning_rate=-0.1"``.

  Args:
    space: the space to check.
    fn: the caller's name for the message.
    required: names that must be present.
    positive: names whose values must be ``> 0``.
    nonnegative: names whose values must be ``>= 0``.
    integer: names whose values must be whole numbers.
    ranges: ``name -> (lo, hi)``: values must lie in the closed interval.
    finite: all float columns must be finite (no inf; NaN is refused at construction).

  Examples:
    >>> from optaxlr import search
    >>> s = search.grid(lr=[0.1, -0.1])
    >>> s.validate(positive=("lr",))
    Traceback (most recent call last):
    ...
    ValueError: sweep: lr must be > 0, config 1 has lr=-0.1
  """
  if not isinstance(space, Space):
    raise TypeError(f"{fn}: expected a search.Space, got {type(space).__name__}")
  cols = space.columns
  ranges = dict(ranges or {})
  for rule, names in (("required", required), ("positive", positive),
                      ("nonnegative", nonnegative), ("integer", integer),
                      ("ranges", list(ranges))):
    if isinstance(names, str):
      raise TypeError(f"{fn}: {rule} must be a sequence of names, got the string {names!r}")
    for name in names:
      if name not in cols:
        raise ValueError(f"{fn}: hyperparameter {name!r} (rule {rule}) is not in the space; "
                         f"the space has {list(cols)}")

  for rule, names in (("positive", positive), ("nonnegative", nonnegative),
                      ("integer", integer), ("ranges", list(ranges))):
    for name in names:
      if cols[name].dtype.kind == "U":
        raise ValueError(f"{fn}: hyperparameter {name!r} (rule {rule}) is categorical (strings "
                         f"{space.categories[name]}); the rule applies to numbers")

  def first_bad(name: str, ok: np.ndarray, allowed: str) -> None:
    bad = np.flatnonzero(~ok)
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"{fn}: {name} must be {allowed}, config {i} has "
                       f"{name}={cols[name][i].item()!r}")

  if finite:
    for name, col in cols.items():
      if col.dtype.kind == "f":
        first_bad(name, np.isfinite(col), "finite")
  for name in positive:
    first_bad(name, cols[name] > 0, "> 0")
  for name in nonnegative:
    first_bad(name, cols[name] >= 0, ">= 0")
  for name in integer:
    first_bad(name, np.equal(np.mod(cols[name], 1), 0), "a whole number")
  for name, (lo, hi) in ranges.items():
    first_bad(name, (cols[name] >= lo) & (cols[name] <= hi), f"in [{lo}, {hi}]")


# -------------------------------------------------------------------- categorical axes
@jax.tree_util.register_pytree_node_class
class Categorical:
  """A categorical hyperparameter as the optimizer sees it: an int index into ``values``.

  Inside :func:`optaxlr.sweep`, a string axis of the space reaches ``optimizer(hparams)`` (and
  ``objective``) as ``hparams[name]``, a ``Categorical`` whose ``index`` is the config's
  traced int32 position in ``values`` (= ``space.categories[name]``). The host-side call that
  checks every config before compiling passes a concrete index, so the same code runs eagerly
  and traced. Build the chosen piece with :func:`switch`, which checks a dict of branches
  against ``values``: the mapping from index to value travels with the index and cannot be
  mismatched silently.

  A pytree: ``index`` is its leaf (``jax.vmap`` maps it), ``values`` static data.

  Attributes:
    index: int scalar (an int32 array, traced inside a sweep; or a Python/NumPy int).
    values: the category names, a tuple of distinct strings.

  Examples:
    >>> from optaxlr import search
    >>> opt = search.Categorical(1, ("adamw", "sgd"))
    >>> bool(opt == "sgd"), bool(opt == "adamw")
    (True, False)
  """

  __slots__ = ("index", "values")

  def __init__(self, index: Any, values: Sequence[str]):
    values = tuple(values)
    if not values or not all(isinstance(v, str) for v in values) or len(set(values)) != len(values):
      raise ValueError(f"Categorical: values must be a non-empty sequence of distinct strings, "
                       f"got values={values!r}")
    self.index = index
    self.values = values

  def tree_flatten(self):
    return (self.index,), self.values

  @classmethod
  def tree_unflatten(cls, values, children):
    out = object.__new__(cls)
    out.index, out.values = children[0], values
    return out

  def position(self, value: str) -> int:
    """The index that stands for ``value``; a ``ValueError`` if it is not one of ``values``."""
    if not isinstance(value, str) or value not in self.values:
      raise ValueError(f"Categorical: {value!r} is not one of the values {self.values}")
    return self.values.index(value)

  def __eq__(self, other: Any) -> Any:  # a (traced) bool: ``hparams["opt"] == "sgd"``
    if isinstance(other, str):
      return self.index == self.position(other)
    raise TypeError(f"Categorical: compare with one of its values {self.values} (a string) or "
                    f"use .index, got {other!r}")

  __hash__ = None  # type: ignore[assignment]

  def __repr__(self) -> str:
    return f"Categorical(index={self.index!r}, values={self.values!r})"


class SwitchState(NamedTuple):
  """State of a :func:`switch` over transformations: every branch's state, in branch order
  (the chosen branch's advances; the others keep their last values)."""

  branches: tuple


def _is_transform(b: Any) -> bool:
  return isinstance(b, optax.GradientTransformation)


def _switch_index(index: Any, values: Sequence[str] | None) -> tuple[Any, tuple[str, ...] | None]:
  if isinstance(index, Categorical):
    if values is not None and tuple(values) != index.values:
      raise ValueError(f"switch: values={tuple(values)!r} differ from the index's own values "
                       f"{index.values}; pass one of them")
    return index.index, index.values
  if isinstance(index, str):
    raise TypeError(f"switch: index must be an int index or a search.Categorical (the sweep "
                    f"passes hparams[name] as one), got the string {index!r}")
  if values is not None:
    values = tuple(values)
    if not values or not all(isinstance(v, str) for v in values) or len(set(values)) != len(values):
      raise ValueError(f"switch: values must be distinct strings, got values={values!r}")
  return index, values


def _switch_branches(branches: Any, values: tuple[str, ...] | None) -> list[Any]:
  if isinstance(branches, Mapping):
    if values is None:
      raise TypeError("switch: branches is a dict keyed by values, but the index carries no "
                      "values; pass the sweep's hparams[name] (a search.Categorical) or values=")
    missing = [v for v in values if v not in branches]
    extra = [k for k in branches if k not in values]
    if missing or extra:
      raise ValueError(f"switch: the branches' keys must be the axis values {values}; "
                       + ", ".join(filter(None, [f"missing {missing}" if missing else "",
                                                 f"unknown {extra}" if extra else ""])))
    return [branches[v] for v in values]
  if not isinstance(branches, (list, tuple)) or isinstance(branches, optax.GradientTransformation):
    raise TypeError(f"switch: branches must be a dict keyed by the axis values or a list in "
                    f"the axis's order, got {type(branches).__name__}")
  if not branches:
    raise ValueError("switch: branches must not be empty")
  if values is not None and len(branches) != len(values):
    raise ValueError(f"switch: {len(branches)} branches for the {len(values)} axis values "
                     f"{values}; give one per value, in that order (or a dict keyed by them)")
  return list(branches)


def _checked_index(index: Any, n: int) -> jax.Array:
  """The index as an int32 scalar array; a concrete one must be in ``[0, n)``, a traced one is
  clipped to it (as ``jax.lax.switch`` does)."""
  dtype = getattr(index, "dtype", None)
  if dtype is None:
    dtype = np.int64 if isinstance(index, int) and not isinstance(index, bool) else np.object_
  if np.dtype(dtype).kind not in "iu":
    raise TypeError(f"switch: index must be an integer, got {index!r}")
  if np.ndim(index) != 0:
    raise ValueError(f"switch: index must be a scalar (vmap over configs), got shape {np.shape(index)}")
  if not isinstance(index, jax.core.Tracer):
    if not 0 <= int(index) < n:
      raise ValueError(f"switch: index must be in [0, {n}) for {n} branches, got index={int(index)}")
    return jnp.asarray(index, jnp.int32)
  return jnp.clip(index, 0, n - 1).astype(jnp.int32)


def _select(index: jax.Array, values: Sequence[Any]) -> jax.Array:
  """``values[index]``: the values promoted to one dtype and broadcast to one shape."""
  arrays = [jnp.asarray(v) for v in values]
  dtype = jnp.result_type(*arrays)
  arrays = jnp.broadcast_arrays(*[a.astype(dtype) for a in arrays])
  return arrays[0] if len(arrays) == 1 else jax.lax.select_n(index, *arrays)


def _switch_transform(index: jax.Array, branches: list[Any]) -> optax.GradientTransformationExtraArgs:
  txs = [optax.with_extra_args_support(b) for b in branches]

  def init_fn(params):
    return SwitchState(tuple(tx.init(params) for tx in txs))

  def update_fn(updates, state, params=None, **extra_args):
    outs = [tx.update(updates, s, params, **extra_args) for tx, s in _zip(txs, state.branches)]
    new_updates = jax.tree.map(lambda *us: _select(index, us), *[u for u, _ in outs])

    def keep_unchosen(i, new, old):
      return jax.tree.map(lambda n, o: jax.lax.select(index == i, jnp.asarray(n).astype(o.dtype), o),
                          new, old)

    states = tuple(keep_unchosen(i, new, old)
                   for i, ((_, new), old) in enumerate(_zip(outs, state.branches)))
    return new_updates, SwitchState(states)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def switch(index: Any, branches: Mapping[str, Any] | Sequence[Any], *,
           values: Sequence[str] | None = None) -> Any:
  """The branch chosen by a (traced) categorical index: a schedule, a transformation or a value.

  Branches are all of one kind:

  - **schedules** (callables ``step -> value``): returns the schedule
    ``step -> branches[index](step)``;
  - **transformations** (``optax.GradientTransformation``): returns a
    ``GradientTransformationExtraArgs`` whose state (:class:`SwitchState`) holds every
    branch's state. Each update computes every branch and returns the chosen branch's updates;
    the chosen branch's state advances and the others keep theirs, leaf by leaf, so configs
    with different indices share one ``vmap``. Extra arguments (``value=``...) reach every
    branch;
  - **values** (numbers or arrays, possibly traced): returns ``branches[index]``.

  Values of schedules and branches are promoted to one dtype and broadcast to one shape. The
  chosen branch's numbers are those of the branch alone (a select, no arithmetic); the cost is
  that of every branch (as ``jax.lax.switch`` under ``vmap``), and a transformation's state is
  the sum of the branches' states.

  Args:
    index: ``hparams[name]`` of a string axis in a sweep (a :class:`Categorical`), or an int
      (array) index. A concrete index must lie in ``[0, len(branches))``; a traced plain index
      is clipped into it, as ``jax.lax.switch`` does (the sweep's indices are always valid).
    branches: a dict keyed by the axis's values (the keys must be exactly those values; their
      order does not matter), or a list in the axis's order (``space.categories[name]``, the
      order of first appearance in the space). Prefer the dict: it cannot be mismatched.
    values: the axis's values, for a plain int ``index`` with dict branches; with a
      :class:`Categorical` they come from it (if given too, they must be equal).

  Returns:
    A schedule, an ``optax.GradientTransformationExtraArgs`` or an array.

  Raises:
    ValueError: the dict's keys differ from the axis values (naming the missing and unknown
      ones), a list's length differs from the number of values, or a concrete index is out
      of range.
    TypeError: dict branches with a plain index and no ``values``; branches of mixed kinds.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optaxlr import search, schedules
    >>> space = search.grid(schedule=["cosine", "constant"], lr=[0.1])
    >>> def lr_schedule(h):
    ...   return search.switch(h["schedule"], {"cosine": schedules.cosine(h["lr"], 10),
    ...                                        "constant": schedules.constant(h["lr"])})
    >>> h = {"schedule": search.Categorical(jnp.array([0, 1]), space.categories["schedule"]),
    ...      "lr": jnp.array([0.1, 0.1])}
    >>> jax.vmap(lambda h: lr_schedule(h)(10))(h).round(6).tolist()   # cosine ends at 0
    [0.0, 0.1]
    >>> opt = search.Categorical(1, ("adamw", "sgd"))
    >>> tx = search.switch(opt, {"sgd": optax.sgd(0.1), "adamw": optax.adamw(1e-3)})
    >>> u, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
    >>> u["w"].tolist()
    [-0.1, -0.1]
  """
  raw, names = _switch_index(index, values)
  blist = _switch_branches(branches, names)
  idx = _checked_index(raw, len(blist))
  kinds = ["transformation" if _is_transform(b) else "schedule" if callable(b) else "value"
           for b in blist]
  if len(set(kinds)) != 1:
    raise TypeError(f"switch: branches must be all schedules, all transformations or all "
                    f"values, got {kinds}")
  if kinds[0] == "transformation":
    return _switch_transform(idx, blist)
  if kinds[0] == "schedule":
    return lambda count: _select(idx, [b(count) for b in blist])
  for i, b in enumerate(blist):
    if not isinstance(b, (jax.Array, np.ndarray, np.generic, int, float, bool, complex)):
      raise TypeError(f"switch: branch {i} is neither a schedule, a transformation nor a "
                      f"number or array, got {type(b).__name__}")
  return _select(idx, blist)


def encode(columns: Mapping[str, Any], categories: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
  """The columns with each categorical one replaced by its int32 index into ``categories``.

  Columns not in ``categories`` are returned unchanged. A value that is not one of its
  column's categories is a ``ValueError`` (e.g. a config drawn later from a space whose
  categories were fixed earlier).

  Examples:
    >>> from optaxlr import search
    >>> space = search.zip(opt=["sgd", "adamw", "sgd"], lr=[0.1, 0.01, 0.2])
    >>> search.encode(space.columns, space.categories)["opt"].tolist()
    [0, 1, 0]
  """
  out = dict(columns)
  for name, cats in categories.items():
    col = np.asarray(columns[name])
    cats = np.asarray(tuple(cats))
    order = np.argsort(cats)
    pos = np.searchsorted(cats, col, sorter=order)
    codes = order[np.minimum(pos, len(cats) - 1)]
    bad = cats[codes] != col
    if np.any(bad):
      raise ValueError(f"encode: {name}={col[np.flatnonzero(bad)[0]].item()!r} is not one of the "
                       f"categories {tuple(cats.tolist())}")
    out[name] = codes.astype(np.int32)
  return out


def _as_index(name: str, value: Any, values: tuple[str, ...]) -> Any:
  """A hyperparameter's value (a string on the host, an int index in the program) as an index."""
  if isinstance(value, Categorical):
    if value.values != values:
      raise ValueError(f"{name}: a Categorical with values {value.values}, expected {values}")
    return value.index
  if isinstance(value, str):
    return np.int32(Categorical(0, values).position(value))
  dtype = getattr(value, "dtype", None)
  if dtype is not None and np.dtype(dtype).kind in "US":
    if isinstance(value, jax.core.Tracer):
      # Only an abstract evaluation (jax.eval_shape of a config given as strings) traces a
      # string; its shape is all that is read.
      return jnp.zeros(np.shape(value), jnp.int32)
    return encode({name: np.asarray(value)}, {name: values})[name]
  if dtype is None and not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise TypeError(f"{name} is categorical {values}: expected a string or an int index, got {value!r}")
  return value


class _CategoricalView(Mapping):
  """``hparams`` with each categorical name read as a :class:`Categorical` (reads pass through,
  so the engine still sees which names were read)."""

  def __init__(self, hparams: Mapping[str, Any], categories: Mapping[str, tuple[str, ...]]):
    self._hparams = hparams
    self._categories = categories

  def __getitem__(self, name):
    value = self._hparams[name]
    if name not in self._categories:
      return value
    values = self._categories[name]
    return Categorical(_as_index(name, value, values), values)

  def __iter__(self):
    return iter(self._hparams)

  def __len__(self):
    return len(self._hparams)

  def __contains__(self, name):
    return name in self._hparams

  def __repr__(self):
    return repr(self._hparams)


class _WithCategories:
  """``f(*args, hparams)`` with ``hparams`` read through a :class:`_CategoricalView`. Equal (and
  hashed) by ``(f, categories)``, so the engine's compile cache treats two sweeps over the same
  function and categories as one program."""

  def __init__(self, fn: Callable, categories: tuple[tuple[str, tuple[str, ...]], ...]):
    self.fn = fn
    self.categories = categories

  def __call__(self, *args):
    *rest, hparams = args
    return self.fn(*rest, _CategoricalView(hparams, dict(self.categories)))

  def __eq__(self, other):
    return (isinstance(other, _WithCategories) and self.fn == other.fn
            and self.categories == other.categories)

  def __hash__(self):
    return hash((self.fn, self.categories))

  def __repr__(self):
    return f"with_categories({self.fn!r}, {dict(self.categories)!r})"


def with_categories(fn: Callable | None, categories: Mapping[str, Sequence[str]]) -> Callable | None:
  """``fn`` (``optimizer(hparams)`` or ``objective(loss, hparams)``, hparams last) reading each
  categorical name of ``hparams`` as a :class:`Categorical`.

  The engine drivers wrap the user's functions with it: the program carries an int32 index
  (:func:`encode`), the host-side check of every config passes the string; both reach ``fn``
  as the same :class:`Categorical`. ``fn`` itself is returned when there are no categories
  (or ``fn`` is None).

  Examples:
    >>> from optaxlr import search
    >>> f = search.with_categories(lambda h: h["opt"], {"opt": ("adamw", "sgd")})
    >>> f({"opt": 0})
    Categorical(index=0, values=('adamw', 'sgd'))
    >>> int(f({"opt": "sgd"}).index)   # the host passes the string: the same index
    1
  """
  if fn is None or not categories:
    return fn
  return _WithCategories(fn, tuple((k, tuple(v)) for k, v in categories.items()))


_seeds, _folds = seeds, folds  # `Space.repeat`'s arguments shadow the public names.
