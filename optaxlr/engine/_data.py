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

__all__ = ["run_keys", "model_key", "model_base_key", "batch_indices", "fold_split", "as_key",
           "key_data", "epoch_permutation"]


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


def model_base_key(key: Any, seed: int) -> jax.Array:
  """``fold_in(fold_in(key, seed), 2)``: the base of a seed's per-step model keys."""
  key = as_key("model_key", key)
  return jax.random.fold_in(jax.random.fold_in(key, seed), 2)


def model_key(key: Any, seed: int, step: int | jax.Array) -> jax.Array:
  """The model's key at ``step`` (Dropout masks...): ``fold_in(fold_in(fold_in(key, seed), 2),
  step)``, the same for every config of a seed (common random numbers). A flax.nnx task
  reseeds its RNG streams with it (:func:`optaxlr.tasks.reseed_nnx`), a linen task draws
  stream ``s`` from :func:`optaxlr.tasks.stream_key` ``(model_key, s)``.

  Examples:
    >>> model_key(0, seed=1, step=5).shape
    (2,)
  """
  return jax.random.fold_in(model_base_key(key, seed), step)


def fold_split(num_examples: int, k: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
  """``(train_indices, held_out_indices)`` of fold ``fold`` of ``k``: the examples split in
  order into ``k`` contiguous parts (the first ``num_examples % k`` one longer), fold ``i``
  holding out part ``i`` -- scikit-learn's ``KFold(n_splits=k)`` without shuffling. Shuffle
  the data first for random folds.

  Examples:
    >>> tr, held = fold_split(10, 3, 0)
    >>> held.tolist(), tr.tolist()
    ([0, 1, 2, 3], [4, 5, 6, 7, 8, 9])
  """
  if not 2 <= k <= num_examples:
    raise ValueError(f"fold_split: k must be in [2, num_examples={num_examples}], got k={k}")
  if not 0 <= fold < k:
    raise ValueError(f"fold_split: fold must be in [0, {k}), got fold={fold}")
  sizes = np.full(k, num_examples // k)
  sizes[: num_examples % k] += 1
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  held = np.arange(bounds[fold], bounds[fold + 1])
  train = np.concatenate([np.arange(0, bounds[fold]), np.arange(bounds[fold + 1], num_examples)])
  return train, held


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
