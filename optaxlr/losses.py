"""Flooding: keep the training loss near a level ``b`` instead of driving it to zero."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optaxlr import _validate as v

__all__ = ["flood", "flooded"]


def flood(loss: ArrayLike, level: ArrayLike) -> jax.Array:
  """The flooded loss ``|loss - level| + level`` (Ishida et al., 2020).

  Equal to ``loss`` (value and gradient) while ``loss > level``; below the level its gradient
  is ``-grad(loss)``, so a gradient step *raises* the loss back towards the level and training
  "floats" around it instead of memorising. At ``loss == level`` exactly, the gradient is
  ``jax.grad(jnp.abs)(0.) == 1``, i.e. ordinary descent. ``level = 0`` with a non-negative loss
  is a no-op.

  Apply it to the mini-batch *mean* loss, as the paper does, not per example (a per-example
  flood is a different method). The level is usually tuned on validation data; the paper
  searches ``b`` in ``{0.00, 0.01, ..., 0.10}`` (and higher for noisy labels): ``vmap`` over
  ``level`` to sweep them in one program.

  Args:
    loss: the (scalar, batch-averaged) loss; any array works elementwise.
    level: the flood level ``b >= 0``; a number or a (traced) array. Concrete values are
      checked (NaN, ``inf`` and ``bool`` are refused); traced ones cannot be.

  Returns:
    ``|loss - level| + level`` in the dtype of ``loss`` (promoted with ``level``).

  Examples:
    >>> import jax
    >>> print(flood(0.3, 0.1), flood(0.05, 0.1))
    0.3 0.15
    >>> print(jax.grad(flood)(0.3, 0.1), jax.grad(flood)(0.05, 0.1))
    1.0 -1.0

  References:
    Ishida, Yamane, Sakai, Niu & Sugiyama, `Do We Need Zero Training Loss After Achieving Zero
    Training Error? <https://arxiv.org/abs/2002.08709>`_, ICML 2020.
  """
  v.nonnegative("flood", "level", level)
  loss = jnp.asarray(loss)
  level = jnp.asarray(level)
  return jnp.abs(loss - level) + level


def flooded(
    loss_fn: Callable[..., Any],
    level: ArrayLike,
    *,
    has_aux: bool | None = None,
) -> Callable[..., Any]:
  """Wraps a loss function so that it returns the flooded loss ``|loss - level| + level``.

  The wrapper has the signature of ``loss_fn``, so it drops into ``jax.grad``,
  ``jax.value_and_grad(..., has_aux=True)`` or ``nnx.value_and_grad`` unchanged. If
  ``loss_fn`` returns ``(loss, aux)``, only ``loss`` is flooded and ``aux`` is passed through
  (report the *unflooded* loss through ``aux`` if you want to log it).

  Args:
    loss_fn: a function returning a scalar loss, or ``(loss, aux)``.
    level: the flood level ``b >= 0``, a number or a (traced) array; see ``flood``.
    has_aux: ``True``/``False`` to say whether ``loss_fn`` returns ``(loss, aux)``; ``None``
      (default) decides at trace time: a tuple or list of length 2 is ``(loss, aux)``.

  Returns:
    The wrapped function.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> loss_fn = lambda w: jnp.sum(w ** 2)
    >>> print(jax.grad(flooded(loss_fn, 1.0))(jnp.array([0.5])))   # loss 0.25 < 1: ascent
    [-1.]
    >>> f = flooded(lambda w: (jnp.sum(w ** 2), "aux"), 1.0)
    >>> f(jnp.array([2.0]))
    (Array(4., dtype=float32), 'aux')

  References:
    Ishida et al., `Do We Need Zero Training Loss After Achieving Zero Training Error?
    <https://arxiv.org/abs/2002.08709>`_, ICML 2020.
  """
  if not callable(loss_fn):
    raise TypeError(f"flooded: loss_fn must be callable, got {loss_fn!r}")
  v.nonnegative("flooded", "level", level)

  @functools.wraps(loss_fn)
  def wrapped(*args, **kwargs):
    out = loss_fn(*args, **kwargs)
    aux = has_aux if has_aux is not None else isinstance(out, (tuple, list)) and len(out) == 2
    if aux:
      if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(
            f"flooded: has_aux=True but loss_fn returned {type(out).__name__}, "
            "not a (loss, aux) pair"
        )
      pair = (flood(out[0], level), out[1])
      return list(pair) if isinstance(out, list) else pair
    return flood(out, level)

  return wrapped
