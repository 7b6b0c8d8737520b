"""Non-finite guards: skip an update whose gradients hold NaN/inf, and say which leaf did it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr.transforms._param_groups import is_variable, leaf_path_list

__all__ = [
    "SkipNonfiniteState",
    "skip_nonfinite",
    "nonfinite_leaf_name",
]


class SkipNonfiniteState(NamedTuple):
  """State of ``skip_nonfinite``: optax's ``ApplyIfFiniteState`` fields plus where and when.

  ``notfinite_count``, ``last_finite``, ``total_notfinite`` and ``inner_state`` mean what they
  mean in ``optax.ApplyIfFiniteState``.

  Attributes:
    count: steps seen (int32).
    notfinite_count: consecutive steps with a non-finite gradient, reset by a finite one.
    last_finite: whether the latest gradient was finite (bool).
    total_notfinite: all steps with a non-finite gradient since ``init`` (never reset).
    first_nonfinite_leaf: index, in ``jax.tree.leaves`` order of the parameters, of the first
      non-finite leaf at the earliest non-finite step; ``-1`` while none has happened.
    first_nonfinite_step: the 0-based step of that event, ``-1`` while none has happened.
    last_nonfinite_leaf: the same index for the most recent non-finite step, ``-1`` if none.
    inner_state: the wrapped transformation's state (not advanced on a skipped step).
  """

  count: jax.Array
  notfinite_count: jax.Array
  last_finite: jax.Array
  total_notfinite: jax.Array
  first_nonfinite_leaf: jax.Array
  first_nonfinite_step: jax.Array
  last_nonfinite_leaf: jax.Array
  inner_state: Any


def _first_bad_leaf(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """``(all finite, index of the first non-finite leaf or -1)``."""
  if not leaves:
    return jnp.array(True), jnp.array(-1, jnp.int32)
  ok = jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])
  finite = jnp.all(ok)
  return finite, jnp.where(finite, -1, jnp.argmin(ok)).astype(jnp.int32)


def skip_nonfinite(
    inner: optax.GradientTransformation | None = None,
    max_consecutive: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Skips any step whose incoming gradients contain NaN or inf, counting and locating them.

  On a step where some gradient leaf is not finite, the returned updates are all zeros and
  ``inner``'s state is left exactly as it was (its moments, counts and schedules do not move),
  as ``optax.apply_if_finite`` does; the state records how many steps were skipped (in a row
  and in total) and *which* parameter leaf went non-finite first (see
  ``nonfinite_leaf_name``).

  Wrap the whole optimizer: ``skip_nonfinite(optax.adamw(1e-3))``. With ``inner=None`` the
  guard is an identity that zeroes non-finite steps; put it *first* in a chain only ahead of
  stateless transforms, because a stateful one after it (Adam's moments, a step count) still
  advances on the zeros it receives.

  Differences from ``optax.apply_if_finite(inner, max_consecutive_errors)``: ``inner`` is
  optional, ``max_consecutive=None`` (the default) skips forever instead of eventually
  accepting, ``max_consecutive`` may be a traced array (sweepable), and the offending leaf and
  step are recorded. With an integer ``max_consecutive`` the behaviour is optax's: after more
  than ``max_consecutive`` non-finite steps in a row the guard gives up and lets the
  (non-finite) update through, so a run that is truly broken shows it instead of stalling.

  Args:
    inner: the transformation to guard, or ``None`` for the identity.
    max_consecutive: ``None`` to always skip, or an integer ``>= 0`` as optax's
      ``max_consecutive_errors``. Pass it by keyword.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is ``SkipNonfiniteState``; extra
    keyword arguments (e.g. ``value=loss``) are forwarded to ``inner``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    >>> tx = skip_nonfinite(optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"a": jnp.ones(2), "b": jnp.array([jnp.nan])}, state)
    >>> print(updates["a"], int(state.total_notfinite), nonfinite_leaf_name(state, params))
    [0. 0.] 1 b
  """
  fn = "skip_nonfinite"
  if inner is not None and not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
        f"{fn}: inner must be an optax.GradientTransformation or None, got {inner!r}; "
        "pass max_consecutive by keyword: skip_nonfinite(inner, max_consecutive=3)"
    )
  if max_consecutive is not None:
    v.nonnegative(fn, "max_consecutive", max_consecutive)
  inner = optax.with_extra_args_support(inner if inner is not None else optax.identity())

  def init_fn(params):
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return SkipNonfiniteState(
        count=i32(0),
        notfinite_count=i32(0),
        last_finite=jnp.asarray(True),
        total_notfinite=i32(0),
        first_nonfinite_leaf=i32(-1),
        first_nonfinite_step=i32(-1),
        last_nonfinite_leaf=i32(-1),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    finite, bad_leaf = _first_bad_leaf(jax.tree.leaves(updates))
    notfinite_count = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
    apply = finite
    if max_consecutive is not None:
      apply = finite | (notfinite_count > jnp.asarray(max_consecutive))

    def do_update(_):
      return inner.update(updates, state.inner_state, params, **extra_args)

    def reject_update(_):
      return optax.tree.zeros_like(updates), state.inner_state

    new_updates, inner_state = lax.cond(apply, do_update, reject_update, None)
    first_event = (~finite) & (state.first_nonfinite_leaf < 0)
    return new_updates, SkipNonfiniteState(
        count=optax.safe_increment(state.count),
        notfinite_count=notfinite_count,
        last_finite=finite,
        total_notfinite=jnp.where(
            finite, state.total_notfinite, optax.safe_increment(state.total_notfinite)
        ),
        first_nonfinite_leaf=jnp.where(first_event, bad_leaf, state.first_nonfinite_leaf),
        first_nonfinite_step=jnp.where(first_event, state.count, state.first_nonfinite_step),
        last_nonfinite_leaf=jnp.where(finite, state.last_nonfinite_leaf, bad_leaf),
        inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_states(state: Any, cls: type) -> list[Any]:
  """Every ``cls`` instance inside an optimizer state (chains, wrappers, ``nnx`` states)."""
  found = []

  def visit(x):
    if isinstance(x, cls):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_leaves(state, is_leaf=visit)
  return found


def host_array(x: Any) -> np.ndarray:
  """A state field as NumPy; unboxes the ``nnx.OptState`` variables of an ``nnx.Optimizer``."""
  if is_variable(x):
    x = x.get_value() if hasattr(x, "get_value") else x.value
  return np.asarray(x)


def nonfinite_leaf_name(
    state: Any, params: Any, which: str = "first"
) -> str | None | list[Any]:
  """Host-side: the path of the parameter leaf recorded by ``skip_nonfinite``, or ``None``.

  Args:
    state: a ``SkipNonfiniteState`` or any optimizer state containing one (an
      ``optax.chain`` state, ``nnx.Optimizer.opt_state``); the first one found is used.
    params: the parameters (a dict, an ``nnx.State`` such as ``nnx.state(model, nnx.Param)``,
      or any pytree with the same leaves as the gradients).
    which: ``"first"`` (the earliest non-finite step, usually the root cause) or ``"last"``.

  Returns:
    ``"a/b/c"``, or ``None`` when no non-finite gradient has been seen. If the state was
    batched by ``vmap`` (a leading config axis), a (nested) list with one entry per config.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.zeros(1)}
    >>> print(nonfinite_leaf_name(skip_nonfinite().init(params), params))
    None
  """
  fn = "nonfinite_leaf_name"
  v.one_of(fn, "which", which, ("first", "last"))
  states = find_states(state, SkipNonfiniteState)
  if not states:
    raise ValueError(f"{fn}: state contains no skip_nonfinite state, got {type(state).__name__}")
  s = states[0]
  idx = host_array(s.first_nonfinite_leaf if which == "first" else s.last_nonfinite_leaf)
  paths = leaf_path_list(params)
  if idx.size and idx.max() >= len(paths):
    raise ValueError(
        f"{fn}: leaf index {int(idx.max())} out of range for params with {len(paths)} leaves; "
        "pass the parameters the optimizer was initialised with"
    )
  names = np.vectorize(lambda i: None if i < 0 else paths[i], otypes=[object])(idx)
  return names.item() if names.ndim == 0 else names.tolist()
