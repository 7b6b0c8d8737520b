"""Diagnostics that run inside ``jit``: per-leaf norms and the update/parameter ratio, dead
units, data sanity checks; plus host-side reports that name the parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr.transforms._guards import find_states, host_array
from optaxlr.transforms._param_groups import leaf_path_list

__all__ = [
    "MonitorState",
    "monitor",
    "update_ratio_report",
    "dead_relu_fraction",
    "BatchCheck",
    "check_batch",
    "assert_clean_data",
]


class MonitorState(NamedTuple):
  """State of ``monitor``: the latest step's norms, per leaf and global.

  Per-leaf fields are vectors of shape ``(num_leaves,)`` in ``jax.tree.leaves`` order of the
  parameters (``update_ratio_report`` names them); under ``vmap`` every field gains the
  leading config axis. All values are those of the most recent ``update`` (zeros after
  ``init``); log them per step from your training loop or ``lax.scan`` outputs.

  Attributes:
    count: steps seen (int32).
    grad_norm: L2 norm of each leaf of the updates coming *in* (the gradients when ``monitor``
      wraps the optimizer).
    update_norm: L2 norm of each leaf of the updates going *out* (the parameter change when
      ``monitor`` wraps the whole optimizer or sits after the learning rate).
    param_norm: L2 norm of each parameter leaf *before* the update.
    ratio: ``update_norm / param_norm`` per leaf; ``inf`` where the parameter is all zeros and
      the update is not (e.g. zero-initialised biases on step 1), ``0`` where both are zero.
    global_grad_norm, global_update_norm, global_param_norm, global_ratio: the same over all
      leaves together (``optax.global_norm``).
    inner_state: the wrapped transformation's state (``EmptyState`` for ``monitor()``).
  """

  count: jax.Array
  grad_norm: jax.Array
  update_norm: jax.Array
  param_norm: jax.Array
  ratio: jax.Array
  global_grad_norm: jax.Array
  global_update_norm: jax.Array
  global_param_norm: jax.Array
  global_ratio: jax.Array
  inner_state: Any


def _sq_norms(tree: Any) -> jax.Array:
  """Squared L2 norm of every leaf, accumulated in at least float32, as a vector."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((0,), jnp.float32)
  out = []
  for x in leaves:
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    out.append(jnp.sum(jnp.square(x)))
  return jnp.stack(out)


def _ratio(u: jax.Array, p: jax.Array) -> jax.Array:
  ok = p > 0
  return jnp.where(ok, u / jnp.where(ok, p, 1), jnp.where(u > 0, jnp.inf, 0.0))


def monitor(
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Records gradient, update and parameter norms and their ratio, per leaf, inside ``jit``.

  Two ways to use it:

  * ``monitor(optax.adam(1e-3))`` (recommended) wraps the optimizer: ``grad_norm`` is the norm
    of the raw gradients going in, ``update_norm`` the norm of the actual parameter change
    coming out, ``ratio = update_norm / param_norm``. Updates pass through unchanged.
  * ``optax.chain(optax.adam(1e-3), monitor())``: an identity placed after the learning
    rate; it sees only the final updates, so ``grad_norm == update_norm`` (both are what it
    sees). Put a second ``monitor()`` first in the chain to also see the gradients.

  The ratio is the classic health check (CS231n): about ``1e-3`` is healthy; much smaller
  means the learning rate is too low (learning too slowly), much larger that it is too high
  (unstable). ``update_ratio_report`` turns the state into a table with verdicts. The ratio
  uses the parameters *before* the step, so a zero-initialised leaf has ``ratio = inf`` on
  step 1.

  Args:
    inner: the transformation to wrap, or ``None`` for the identity.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``MonitorState``; extra keyword arguments
    are forwarded to ``inner``. ``update`` needs ``params`` (``ValueError`` without them).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> tx = monitor(optax.sgd(1e-3))
    >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    >>> print(state.grad_norm, state.update_norm, state.param_norm, state.ratio)
    [5.] [0.005] [5.] [0.001]

  References:
    Karpathy et al., `CS231n: Neural Networks Part 3, "Ratio of weights:updates"
    <https://cs231n.github.io/neural-networks-3/#ratio>`_, 2016.
  """
  if inner is not None and not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
        f"monitor: inner must be an optax.GradientTransformation or None, got {inner!r}"
    )
  inner = optax.with_extra_args_support(inner if inner is not None else optax.identity())

  def init_fn(params):
    n = len(leaf_path_list(params))
    dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
    zeros = jnp.zeros((n,), dtype)
    scalar = jnp.zeros((), dtype)
    return MonitorState(
        count=jnp.zeros((), jnp.int32),
        grad_norm=zeros,
        update_norm=zeros,
        param_norm=zeros,
        ratio=zeros,
        global_grad_norm=scalar,
        global_update_norm=scalar,
        global_param_norm=scalar,
        global_ratio=scalar,
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("monitor: params must be passed to update (it needs the parameter norms)")
    g2 = _sq_norms(updates)
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    u2, p2 = _sq_norms(new_updates), _sq_norms(params)
    cast = lambda x: x.astype(state.grad_norm.dtype)  # noqa: E731  keep the state dtype fixed
    u, p = jnp.sqrt(u2), jnp.sqrt(p2)
    gu, gp = jnp.sqrt(jnp.sum(u2)), jnp.sqrt(jnp.sum(p2))
    return new_updates, MonitorState(
        count=optax.safe_increment(state.count),
        grad_norm=cast(jnp.sqrt(g2)),
        update_norm=cast(u),
        param_norm=cast(p),
        ratio=cast(_ratio(u, p)),
        global_grad_norm=cast(jnp.sqrt(jnp.sum(g2))),
        global_update_norm=cast(gu),
        global_param_norm=cast(gp),
        global_ratio=cast(_ratio(gu, gp)),
        inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _verdict(ratio: np.ndarray, param_norm: np.ndarray, low: float, high: float) -> Any:
  out = np.where(ratio < low, "slow", np.where(ratio > high, "unstable", "ok")).astype(object)
  out = np.where(param_norm == 0, "zero params", out)
  out = np.where(np.isnan(ratio), "non-finite", out)
  return out.item() if out.ndim == 0 else out.tolist()


def update_ratio_report(
    state: Any,
    params: Any,
    *,
    low: float = 1e-4,
    high: float = 1e-2,
    config: int | None = None,
    index: int = 0,
) -> list[dict[str, Any]]:
  """Host-side: a per-leaf table of the norms recorded by ``monitor``, with verdicts.

  Verdicts apply the ``~1e-3`` rule of thumb with an order of magnitude either side (tune with
  ``low``/``high``): ``"slow"`` if ``ratio < low``, ``"unstable"`` if ``ratio > high``, else
  ``"ok"``; ``"zero params"`` where the parameter norm is zero and ``"non-finite"`` where the
  ratio is NaN. The last row, path ``"(global)"``, holds the global norms.
  ``pandas.DataFrame(rows)`` makes it a frame.

  Args:
    state: a ``MonitorState`` or any optimizer state containing one (``optax.chain`` state,
      ``nnx.Optimizer.opt_state``).
    params: the parameters, to name the leaves (any pytree with the gradients' leaves).
    low: ratios below are flagged ``"slow"``.
    high: ratios above are flagged ``"unstable"``.
    config: for a state batched by ``vmap``, the config to report; ``None`` reports every
      config (each value is then an array with one entry per config, each verdict a list).
    index: which ``MonitorState`` to read when the state holds several (in flatten order).

  Returns:
    A list of dicts with keys ``path``, ``grad_norm``, ``update_norm``, ``param_norm``,
    ``ratio``, ``verdict``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"b": jnp.zeros(2), "w": jnp.ones(4)}
    >>> tx = monitor(optax.sgd(1e-3))
    >>> grads = {"b": jnp.ones(2), "w": jnp.ones(4)}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> [(r["path"], r["verdict"]) for r in update_ratio_report(state, params)]
    [('b', 'zero params'), ('w', 'ok'), ('(global)', 'ok')]
  """
  fn = "update_ratio_report"
  states = find_states(state, MonitorState)
  if len(states) <= index:
    raise ValueError(
        f"{fn}: state contains {len(states)} monitor state(s), got index={index}"
    )
  s = states[index]
  fields = ("grad_norm", "update_norm", "param_norm", "ratio")
  per_leaf = {f: host_array(getattr(s, f)) for f in fields}
  glob = {f: host_array(getattr(s, "global_" + f)) for f in fields}
  if config is not None:
    if glob["ratio"].ndim == 0:
      raise ValueError(f"{fn}: config given but the state is not batched, got config={config}")
    per_leaf = {f: a[config] for f, a in per_leaf.items()}
    glob = {f: a[config] for f, a in glob.items()}
  paths = leaf_path_list(params)
  n = per_leaf["ratio"].shape[-1]
  if n != len(paths):
    raise ValueError(
        f"{fn}: the state has {n} leaves but params have {len(paths)}; pass the parameters "
        "the optimizer was initialised with"
    )

  def row(path, vals):
    out = {"path": path}
    for f in fields:
      out[f] = vals[f].item() if vals[f].ndim == 0 else vals[f]
    out["verdict"] = _verdict(vals["ratio"], vals["param_norm"], low, high)
    return out

  rows = [row(p, {f: a[..., i] for f, a in per_leaf.items()}) for i, p in enumerate(paths)]
  rows.append(row("(global)", glob))
  return rows


def dead_relu_fraction(
    activations: Any, *, axis: int | tuple[int, ...] = 0, threshold: ArrayLike = 0.0
) -> Any:
  """Fraction of units that are never active (``<= threshold``) on any example of a batch.

  A "dead" ReLU outputs zero for every input, so it gets no gradient and never recovers;
  a large fraction points at a learning rate that is too high (a big step pushed the biases
  far negative) or a bad initialisation. Works on pre- or post-activations (``relu(x) > 0``
  iff ``x > 0``). Computed on one batch: with small batches, rarely active units look dead.

  Args:
    activations: an array ``(batch, *units)``, or a pytree of them (e.g. collected with
      ``nnx.sow`` or linen ``capture_intermediates``); each array is reduced separately.
    axis: the batch axis or axes; the remaining axes index units. For conv feature maps
      ``(B, H, W, C)`` use ``axis=(0, 1, 2)`` to count dead channels.
    threshold: a unit is active on an example when its value is ``> threshold``.

  Returns:
    A float scalar in ``[0, 1]`` per array (same pytree structure as ``activations``).

  Examples:
    >>> import jax.numpy as jnp
    >>> acts = jnp.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    >>> print(dead_relu_fraction(acts))
    0.5
  """

  def one(a):
    a = jnp.asarray(a)
    return jnp.mean(jnp.all(a <= threshold, axis=axis).astype(jnp.result_type(float)))

  return jax.tree.map(one, activations)


class BatchCheck(NamedTuple):
  """Result of ``check_batch``: counts and flags, all arrays (jit-safe, vmappable).

  Attributes:
    x_nan: NaN count per input feature, shape ``x.shape[1:]``.
    x_inf: +-inf count per input feature, shape ``x.shape[1:]``.
    x_constant: per feature, whether every row of the batch has the same value (``False``
      for a batch of one row). Not counted against ``ok``: blank image borders are constant.
    y_nonfinite: number of NaN/inf labels.
    y_out_of_range: number of finite labels outside ``[0, num_classes)`` (0 without
      ``num_classes``).
    y_non_integer: number of finite, non-integer labels (0 without ``num_classes``).
    ok: no NaN/inf anywhere and every label an integer in range.
  """

  x_nan: jax.Array
  x_inf: jax.Array
  x_constant: jax.Array
  y_nonfinite: jax.Array
  y_out_of_range: jax.Array
  y_non_integer: jax.Array
  ok: jax.Array


def _masks(xp: Any, x: Any, y: Any, num_classes: Any) -> dict[str, Any]:
  """Elementwise problem masks, written once for NumPy (host) and ``jax.numpy`` (jit)."""
  x = xp.asarray(x)
  if x.ndim == 0:
    raise ValueError(f"check_batch: x must have a batch axis, got x with shape {x.shape}")
  floating = xp.issubdtype(x.dtype, xp.inexact)
  none = xp.zeros(x.shape, bool)
  out = {
      "x_nan": xp.isnan(x) if floating else none,
      "x_inf": xp.isinf(x) if floating else none,
      "x_constant": (
          xp.all(x == x[:1], axis=0) if x.shape[0] >= 2 else xp.zeros(x.shape[1:], bool)
      ),
  }
  if y is None:
    y = xp.zeros((0,), xp.int32)
  y = xp.asarray(y)
  y_float = xp.issubdtype(y.dtype, xp.inexact)
  fin = xp.isfinite(y) if y_float else xp.ones(y.shape, bool)
  out["y_nonfinite"] = ~fin
  if num_classes is None:
    out["y_out_of_range"] = xp.zeros(y.shape, bool)
    out["y_non_integer"] = xp.zeros(y.shape, bool)
  else:
    out["y_out_of_range"] = fin & ((y < 0) | (y >= num_classes))
    out["y_non_integer"] = (fin & (y != xp.floor(y))) if y_float else xp.zeros(y.shape, bool)
  return out


def check_batch(x: ArrayLike, y: ArrayLike | None = None, *, num_classes: ArrayLike | None = None
                ) -> BatchCheck:
  """Jit-safe sanity check of a batch: NaN/inf inputs, constant features, bad labels.

  Use it inside a jitted step and log ``ok`` (or ``jnp.sum`` of the counts); on the host,
  ``assert_clean_data`` raises with a readable message instead.

  Args:
    x: inputs with a leading batch axis; features are the remaining axes.
    y: optional labels; without ``num_classes`` only their finiteness is checked.
    num_classes: if given, labels must be integers in ``[0, num_classes)`` (may be traced).

  Returns:
    A ``BatchCheck`` of arrays.

  Examples:
    >>> import jax.numpy as jnp
    >>> c = check_batch(jnp.array([[1.0, jnp.nan], [1.0, 2.0]]), jnp.array([0, 3]), num_classes=3)
    >>> print(c.x_nan, c.x_constant, c.y_out_of_range, c.ok)
    [0 1] [ True False] 1 False
  """
  if num_classes is not None:
    v.at_least("check_batch", "num_classes", num_classes, 1)
  m = _masks(jnp, x, y, num_classes)
  count = lambda a, axis=None: jnp.sum(a, axis=axis, dtype=jnp.int32)  # noqa: E731
  res = BatchCheck(
      x_nan=count(m["x_nan"], 0),
      x_inf=count(m["x_inf"], 0),
      x_constant=m["x_constant"],
      y_nonfinite=count(m["y_nonfinite"]),
      y_out_of_range=count(m["y_out_of_range"]),
      y_non_integer=count(m["y_non_integer"]),
      ok=jnp.array(True),
  )
  bad = (
      count(m["x_nan"]) + count(m["x_inf"]) + res.y_nonfinite + res.y_out_of_range
      + res.y_non_integer
  )
  return res._replace(ok=bad == 0)


def _plural(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def _feature_names(rest: tuple[int, ...], flat_idx: np.ndarray) -> list[str]:
  if len(rest) == 1:
    return [str(int(i)) for i in flat_idx]
  return [str(tuple(int(a) for a in np.unravel_index(i, rest))) for i in flat_idx]


def _input_msg(what: str, mask: np.ndarray) -> str | None:
  counts = mask.sum(axis=0)
  total = int(counts.sum())
  if total == 0:
    return None
  msg = f"inputs contain {_plural(total, what + ' value')}"
  rest = mask.shape[1:]
  if not rest:
    return msg
  idx = np.flatnonzero(counts)
  unit = "column" if len(rest) == 1 else "feature"
  names = _feature_names(rest, idx)
  if len(idx) == 1:
    return f"{msg} in {unit} {names[0]}"
  listed = ", ".join(f"{n} ({int(counts.flat[i])})" for n, i in zip(names[:5], idx[:5]))
  more = f", ... ({len(idx) - 5} more)" if len(idx) > 5 else ""
  return f"{msg} in {len(idx)} {unit}s: {listed}{more}"


def _values(a: np.ndarray) -> str:
  vals = np.unique(a)
  shown = ", ".join(f"{x:g}" if np.issubdtype(vals.dtype, np.inexact) else str(x)
                    for x in vals[:5].tolist())
  return shown + (f", ... ({len(vals) - 5} more distinct)" if len(vals) > 5 else "")


def assert_clean_data(
    x: ArrayLike,
    y: ArrayLike | None = None,
    num_classes: int | None = None,
    *,
    allow_constant_features: bool = False,
) -> None:
  """Host-side data check that raises ``ValueError`` naming every problem it finds.

  Checks, on the whole arrays, in NumPy (no float32 rounding of float64 data): NaN and inf
  inputs (with their columns), features constant over all rows (unless
  ``allow_constant_features``; a fully constant input usually means a loading bug), ``x`` and
  ``y`` row counts, NaN/inf labels and, with ``num_classes``, labels that are not integers in
  ``[0, num_classes)``. The same rules as ``check_batch``.

  Args:
    x: inputs ``(n, *features)``.
    y: optional labels ``(n, ...)``.
    num_classes: if given, the number of classes (labels in ``[0, num_classes)``).
    allow_constant_features: do not complain about constant features (e.g. blank borders of
      digit images).

  Raises:
    ValueError: ``"assert_clean_data: inputs contain 3 NaN values in column 7; labels outside
      [0, 10): found 12"``, one clause per problem.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 3.0]])
    >>> try:
    ...   assert_clean_data(x, np.array([0, 1, 12]), num_classes=10)
    ... except ValueError as e:
    ...   print(e)
    assert_clean_data: inputs contain 1 NaN value in column 0; labels outside [0, 10): found 12
  """
  fn = "assert_clean_data"
  if num_classes is not None:
    v.at_least(fn, "num_classes", num_classes, 1)
  x = np.asarray(x)
  yy = None if y is None else np.asarray(y)
  m = _masks(np, x, yy, num_classes)
  problems = []
  for what, key in (("NaN", "x_nan"), ("inf", "x_inf")):
    msg = _input_msg(what, m[key])
    if msg:
      problems.append(msg)
  const = np.asarray(m["x_constant"])
  if not allow_constant_features and const.any():
    if const.all():
      problems.append(f"inputs are constant: all {x.shape[0]} rows are equal")
    else:
      idx = np.flatnonzero(const)
      unit = "column" if x.ndim == 2 else "feature"
      names = _feature_names(x.shape[1:], idx)
      listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
      problems.append(
          f"inputs have {_plural(len(idx), 'constant ' + unit)}: {listed} (pass "
          "allow_constant_features=True if expected)"
      )
  if yy is not None:
    n_y = yy.size
    if yy.ndim >= 1 and yy.shape[0] != x.shape[0]:
      problems.append(f"x has {x.shape[0]} rows but y has {yy.shape[0]}")
    k = int(m["y_nonfinite"].sum())
    if k:
      problems.append(f"labels contain {_plural(k, 'NaN/inf value')}")
    for key, head in (
        ("y_out_of_range", f"labels outside [0, {num_classes})"),
        ("y_non_integer", "labels are not integers"),
    ):
      bad = m[key]
      k = int(bad.sum())
      if k:
        tail = f" ({k} of {n_y} labels)" if k > 1 else ""
        problems.append(f"{head}: found {_values(yy[bad])}{tail}")
  if problems:
    raise ValueError(f"{fn}: " + "; ".join(problems))
