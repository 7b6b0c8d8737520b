"""Keys and minibatch order: what makes a row of a sweep reproducible by a standalone run.

``run_keys`` and ``batch_indices`` are public: a standalone training loop that uses them sees
the same initial parameters and the same minibatches as row ``(seed, config)`` of a sweep. The
training core reads minibatches in O(batch) per step: it draws one permutation per epoch (and
one at the start of each compiled chunk) and slices it, where ``batch_indices`` recomputes the
permutation on every call; both give the same indices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run_keys", "batch_indices", "as_key", "key_data", "epoch_permutation"]


def as_key(fn: str, key: Any) -> jax.Array:
  """``key`` as a PRNG key: an int (``jax.random.PRNGKey(key)``), a raw ``uint32[2]`` key or a
  typed key (``jax.random.key(0)``); anything else is a ``ValueError`` naming ``fn``."""
  if isinstance(key, (bool, np.bool_)):
    raise ValueError(f"{fn}: key must be an int or a PRNG key, got key={key!r}")
  if isinstance(key, (int, np.integer)):
    if not 0 <= int(key) < 2**63:
      raise ValueError(f"{fn}: key must be an int in [0, 2**63) or a PRNG key, got key={key!r}")
    return jax.random.PRNGKey(int(key))
  if isinstance(key, (jax.Array, np.ndarray)):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(f"{fn}: key must be a single PRNG key, got a key array of shape {key.shape}")
      return key
    if key.shape == (2,) and key.dtype == np.uint32:
      return jnp.asarray(key)
  raise ValueError(
      f"{fn}: key must be an int, a typed key (jax.random.key(0)) or a raw uint32[2] key"
      f" (jax.random.PRNGKey(0)), got {type(key).__name__}"
      + (f" of shape {key.shape} and dtype {key.dtype}" if hasattr(key, "shape") else "")
  )


def key_data(key: jax.Array) -> list[int]:
  """The integers of a key (raw or typed), for fingerprints and records."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).ravel().tolist()


def run_keys(key: Any, seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
  """The ``(init_key, data_key)`` of one seed of a sweep.

  ``init_key = fold_in(fold_in(key, seed), 0)`` initialises the parameters, ``data_key =
  fold_in(fold_in(key, seed), 1)`` orders the minibatches. Every config of a seed shares both
  (common random numbers), so differences between configs are due to the hyperparameters.
  ``key`` is an int, a raw key (``jax.random.PRNGKey``) or a typed key (``jax.random.key``).

  Examples:
    >>> init_key, data_key = run_keys(0, seed=3)
    >>> init_key.shape, data_key.shape
    ((2,), (2,))
  """
  key = as_key("run_keys", key)
  k = jax.random.fold_in(key, seed)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def epoch_permutation(data_key: jax.Array, epoch: jax.Array | int, num_examples: int) -> jax.Array:
  """The order of the training examples in ``epoch``: ``permutation(fold_in(data_key, epoch))``."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def batch_indices(
    data_key: jax.Array, step: jax.Array | int, num_examples: int, batch_size: int
) -> jax.Array:
  """Indices of the minibatch used at ``step``: epochs of shuffling without replacement.

  Epoch ``e = step // (num_examples // batch_size)`` is the permutation
  :func:`epoch_permutation` ``(data_key, e)``; the step takes the next ``batch_size`` indices of
  it (the remainder of each epoch is dropped, as ``drop_last=True``). This function draws the
  permutation on every call (O(N log N)); the sweep draws it once per epoch and gets the same
  indices.

  Examples:
    >>> import jax
    >>> idx = batch_indices(jax.random.PRNGKey(0), 0, num_examples=10, batch_size=4)
    >>> idx.shape
    (4,)
  """
  per_epoch = num_examples // batch_size
  step = jnp.asarray(step)
  epoch, pos = step // per_epoch, step % per_epoch
  perm = epoch_permutation(data_key, epoch, num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
