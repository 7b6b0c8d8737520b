"""Small flax.nnx models for the built-in tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

__all__ = ["MLP", "CNN"]


class MLP(nnx.Module):
  """Fully connected network: ``Linear -> act -> ... -> Linear``, no activation on the output.

  Args:
    in_features: input size.
    hidden: widths of the hidden layers (may be empty: a linear model).
    out_features: output size.
    rngs: ``nnx.Rngs`` for the initialisers (flax defaults: LeCun-normal kernels, zero biases).
    activation: elementwise nonlinearity between layers.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> MLP(3, (8,), 2, rngs=nnx.Rngs(0))(jnp.ones((5, 3))).shape
    (5, 2)
  """

  def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
               rngs: nnx.Rngs, activation: Callable[[jax.Array], jax.Array] = jax.nn.relu):
    sizes = [in_features, *hidden, out_features]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = self.activation(layer(x))
    return self.layers[-1](x)


class CNN(nnx.Module):
  """Small convnet for ``(H, W, C)`` images: ``[conv3x3 -> relu -> maxpool2]`` x 2 -> linear.

  Args:
    image_shape: ``(H, W, C)``; ``H`` and ``W`` divisible by 4.
    num_classes: output size.
    rngs: ``nnx.Rngs`` for the initialisers.
    channels: output channels of the two conv layers.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> CNN((8, 8, 1), 10, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs,
               channels: Sequence[int] = (16, 32)):
    h, w, c = image_shape
    c1, c2 = channels
    self.conv1 = nnx.Conv(c, c1, kernel_size=(3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), padding="SAME", rngs=rngs)
    self.head = nnx.Linear((h // 4) * (w // 4) * c2, num_classes, rngs=rngs)

  @staticmethod
  def _pool(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self._pool(jax.nn.relu(self.conv1(x)))
    x = self._pool(jax.nn.relu(self.conv2(x)))
    return self.head(x.reshape(x.shape[0], -1))
