"""Standard training losses and metrics on (model outputs, targets), mean over the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "cross_entropy",
    "accuracy",
    "mse",
    "logistic",
    "binary_accuracy",
]

Objective = Callable[[jax.Array, jax.Array], jax.Array]
LossSpec = Union[str, Objective]


@jax.jit
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels.

  The mean of ``optax.softmax_cross_entropy_with_integer_labels`` over the batch.

  Args:
    logits: ``(batch, num_classes)``.
    labels: ``(batch,)`` integers in ``[0, num_classes)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log 4
    1.3863
  """
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@jax.jit
def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of ``argmax(logits) == labels`` (ties go to the lowest class index)."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))


def _squeeze_last(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
    return outputs[..., 0]
  return outputs


@jax.jit
def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error; an ``(batch, 1)`` output is compared with ``(batch,)`` targets.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(mse(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])))
    2.5
  """
  outputs = _squeeze_last(outputs, targets)
  if outputs.shape != targets.shape:
    raise ValueError(f"mse: outputs and targets must have the same shape, got "
                     f"{outputs.shape} and {targets.shape}")
  return jnp.mean(jnp.square(outputs - targets))


def _signs(labels: jax.Array, dtype: Any) -> jax.Array:
  # {0, 1} -> {-1, +1}; {-1, +1} unchanged.
  return jnp.where(labels > 0, 1.0, -1.0).astype(dtype)


@jax.jit
def logistic(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  """Binary logistic loss ``mean(softplus(-s * f))`` with ``s = +1`` for label ``> 0`` else ``-1``.

  Accepts labels in ``{0, 1}`` or ``{-1, +1}`` and one score per example (``(batch,)`` or
  ``(batch, 1)``). With labels in ``{0, 1}`` this equals the sigmoid binary cross-entropy
  (``optax.sigmoid_binary_cross_entropy``). The flooding paper's synthetic experiments use
  the two-logit softmax cross-entropy instead (:func:`cross_entropy` with 2 classes).

  Examples:
    >>> import jax.numpy as jnp
    >>> round(float(logistic(jnp.zeros(3), jnp.array([0, 1, -1]))), 4)  # log 2
    0.6931
  """
  outputs = _squeeze_last(outputs, labels)
  return jnp.mean(jax.nn.softplus(-_signs(labels, outputs.dtype) * outputs))


@jax.jit
def binary_accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction with ``sign(f)`` equal to the label's sign (a score of exactly 0 counts as -1)."""
  outputs = _squeeze_last(outputs, labels)
  pred = jnp.where(outputs > 0, 1.0, -1.0)
  return jnp.mean((pred == _signs(labels, pred.dtype)).astype(outputs.dtype))


def resolve(
    loss: LossSpec, fn: str
) -> tuple[Objective, Callable[[jax.Array, jax.Array], dict[str, jax.Array]]]:
  """Maps a loss name (or callable) to ``(loss(outputs, y), metrics(outputs, y))``."""
  if callable(loss):
    return loss, lambda out, y: {"loss": loss(out, y)}
  if loss == "cross_entropy":
    def ce_metrics(out, y):
      acc = accuracy(out, y)
      return {"loss": cross_entropy(out, y), "accuracy": acc, "error": 1.0 - acc}
    return cross_entropy, ce_metrics
  if loss == "logistic":
    def logistic_metrics(out, y):
      acc = binary_accuracy(out, y)
      return {"loss": logistic(out, y), "accuracy": acc, "error": 1.0 - acc}
    return logistic, logistic_metrics
  if loss == "mse":
    def mse_metrics(out, y):
      value = mse(out, y)
      return {"loss": value, "rmse": jnp.sqrt(value)}
    return mse, mse_metrics
  raise ValueError(f"{fn}: loss must be one of 'cross_entropy', 'logistic', 'mse' or a "
                   f"callable (outputs, targets) -> scalar, got loss={loss!r}")
