"""The two-batch-size noise-scale estimator's halves (McCandlish et al. 2018, Appendix A).

They live in the engine so that the training core can record the noise scale inside its
compiled step (``sweep(..., noise_scale=True)``) without importing from the layer above it;
:mod:`optaxlr.noise` re-exports them as its public face.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["micro_batch_stats", "two_batch_estimate", "noise_parts", "ema", "noise_metrics",
           "NOISE_EMA_DECAY"]


def noise_parts(batch_size: int, max_parts: int = 4) -> tuple[int, int]:
  """``(k, B_small)``: the parts a minibatch of ``batch_size`` is split into for the noise scale.

  The ``k`` in ``[2, max_parts]`` that uses the most examples (``k * B_small`` of the batch,
  ``B_small = batch_size // k``; ties go to the larger ``k``, whose spread has more degrees of
  freedom). ``max_parts`` bounds the memory (``k`` gradients per run are held at once) and
  the cost: on the CPU the ``k`` gradients of small parts under ``vmap`` cost 1.0, 1.4 and 3.1
  times one training step for ``k`` = 2, 4, 8 (digits MLP, batch 64, 32 configs: the small
  parts' batched matmuls run far below the step's rate), so 4 parts; ``|G|^2``'s estimate,
  the noisier term, does not depend on ``k``.

  Examples:
    >>> noise_parts(128), noise_parts(100), noise_parts(3)
    ((4, 32), (4, 25), (3, 1))
  """
  if batch_size < 2:
    raise ValueError(f"noise_parts: batch_size must be >= 2 (two parts of one example), got "
                     f"batch_size={batch_size}")
  best = max(range(2, min(max_parts, batch_size) + 1), key=lambda k: (k * (batch_size // k), k))
  return best, batch_size // best


def micro_batch_stats(grads: Any) -> tuple[jax.Array, jax.Array]:
  """The two statistics of one batch pair from its ``k`` micro-batch gradients.

  ``grads`` is a pytree whose leaves have a leading axis of ``k >= 2`` gradients ``G_l``, one
  per equal part (``B_small`` examples) of a batch of ``B_big = k B_small``; their mean is the
  big batch's gradient ``G_b``. Returns ``(spread, big_norm2)``: ``mean_l |G_l - G_b|^2``
  (``= mean_l |G_l|^2 - |G_b|^2``, computed as a spread so that it loses no digits) and
  ``|G_b|^2``, summed over the leaves (no flattening). Pure and ``jit``/``vmap``-safe: a
  training step can compute them from ``vmap(grad)`` over the parts of its batch and
  :func:`two_batch_estimate` turn their means into the noise scale.

  Examples:
    >>> import jax.numpy as jnp
    >>> spread, big2 = micro_batch_stats({"w": jnp.array([[1.0, 0.0], [3.0, 0.0]])})
    >>> float(spread), float(big2)   # G_b = (2, 0): mean(|(-1, 0)|^2, |(1, 0)|^2), |G_b|^2
    (1.0, 4.0)
  """
  leaves = jax.tree.leaves(grads)
  if not leaves or any(jnp.ndim(g) < 1 or g.shape[0] != leaves[0].shape[0] for g in leaves):
    raise ValueError("micro_batch_stats: grads must be a pytree of arrays with a common "
                     "leading axis of micro-batch gradients, got leaf shapes "
                     f"{[jnp.shape(g) for g in leaves]}")
  if leaves[0].shape[0] < 2:
    raise ValueError(f"micro_batch_stats: needs k >= 2 micro-batch gradients, got "
                     f"k={leaves[0].shape[0]}")
  big = [g.mean(axis=0) for g in leaves]
  spread = sum(jnp.mean(jnp.sum(jnp.square(g - b[None]).reshape(g.shape[0], -1), axis=1))
               for g, b in zip(leaves, big))
  return spread, sum(jnp.sum(jnp.square(b)) for b in big)


def two_batch_estimate(spread: Any, big_norm2: Any, batch_sizes: tuple[int, int],
                       num_examples: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(tr_sigma, g2, b_simple)`` from the means of :func:`micro_batch_stats` over batch pairs.

  Solves ``E[spread] = tr(Sigma) (c(B_small) - c(B_big))`` and
  ``E[big_norm2] = |G|^2 + tr(Sigma) c(B_big)`` with ``c(B) = (N - B) / ((N - 1) B)``
  (batches drawn without replacement from ``N = num_examples``) or ``c(B) = 1 / B``
  (``num_examples=None``: an infinite population, the paper's Appendix A). Elementwise over
  arrays (one value per run and evaluation), in float64 on the host; ``b_simple`` is ``inf``
  where ``g2 <= 0`` and ``nan`` where an input is.

  Examples:
    >>> tr, g2, b = two_batch_estimate(0.75, 1.25, (1, 4), None)  # c(1) - c(4) = 0.75
    >>> float(tr), float(g2), float(b)
    (1.0, 1.0, 1.0)
  """
  b_small, b_big = batch_sizes
  if not 1 <= b_small < b_big:
    raise ValueError(f"two_batch_estimate: batch_sizes must be (B_small, B_big) with "
                     f"1 <= B_small < B_big, got batch_sizes={tuple(batch_sizes)!r}")
  if num_examples is not None and not b_big <= num_examples:
    raise ValueError(f"two_batch_estimate: B_big must be <= num_examples, got "
                     f"batch_sizes={tuple(batch_sizes)!r}, num_examples={num_examples}")

  def c(b):
    if num_examples is None:
      return 1.0 / b
    return (num_examples - b) / ((num_examples - 1) * b)

  spread = np.asarray(spread, np.float64)
  big_norm2 = np.asarray(big_norm2, np.float64)
  tr_sigma = spread / (c(b_small) - c(b_big))
  g2 = big_norm2 - tr_sigma * c(b_big)
  with np.errstate(divide="ignore", invalid="ignore"):
    b_simple = np.where(g2 > 0, tr_sigma / g2, np.where(np.isnan(g2), np.nan, np.inf))
  return tr_sigma, g2, b_simple


NOISE_EMA_DECAY = 0.9  # per evaluation: the variance of about (1 + d) / (1 - d) = 19 pairs averaged


def ema(values: np.ndarray, decay: float) -> np.ndarray:
  """The bias-corrected exponential moving average along the last axis, skipping NaN.

  ``m_e = (sum_{j <= e} decay^(e - j) (1 - decay) x_j) / (sum_j decay^(e - j) (1 - decay))``
  over the finite ``x_j`` (Adam's bias correction: the first value is its own average); NaN
  where ``x_e`` is NaN (a run that did not run there), so a gap is never filled in.

  Examples:
    >>> ema(np.array([1.0, 3.0, np.nan, 3.0]), 0.5).tolist()
    [1.0, 2.333333333333333, nan, 2.7142857142857144]
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"ema: decay must be in [0, 1), got decay={decay!r}")
  x = np.asarray(values, np.float64)
  out = np.full(x.shape, np.nan)
  num = np.zeros(x.shape[:-1])
  den = np.zeros(x.shape[:-1])
  for e in range(x.shape[-1]):
    ok = np.isfinite(x[..., e])
    num = np.where(ok, decay * num + (1 - decay) * np.where(ok, x[..., e], 0.0), num)
    den = np.where(ok, decay * den + (1 - decay), den)
    out[..., e] = np.where(ok, num / np.where(den > 0, den, 1.0), np.nan)
  return out


def noise_metrics(stats: np.ndarray, batch_sizes: np.ndarray, populations: np.ndarray,
                  decay: float = NOISE_EMA_DECAY) -> dict[str, np.ndarray]:
  """A sweep's noise-scale metrics from its recorded statistics.

  ``stats`` ``(S, C, E, 2)``: per evaluation, the ``(spread, |G_big|^2)`` of the last step
  before it (:func:`micro_batch_stats` over the :func:`noise_parts` of that step's minibatch);
  ``batch_sizes`` ``(C,)``: each config's minibatch size; ``populations`` ``(C,)``: each
  config's training-set size, ``inf`` for an infinite population (a model with random
  streams, a host-fed stream). Both statistics are smoothed along the evaluations by
  :func:`ema` (``decay``; the paper's moving averages), then solved by
  :func:`two_batch_estimate` per config.

  Returns ``"train/noise_scale"`` (``B_simple``), ``"train/noise_tr_sigma"``,
  ``"train/noise_g2"`` (smoothed) and the raw ``"train/noise_spread"``,
  ``"train/noise_big_norm2"``, each ``(S, C, E)``.
  """
  stats = np.asarray(stats, np.float64)
  smooth = ema(np.moveaxis(stats, -1, 0), decay)  # (2, S, C, E)
  tr = np.full(stats.shape[:-1], np.nan)
  g2, b = tr.copy(), tr.copy()
  for bsz, pop in sorted(set(zip(np.asarray(batch_sizes).tolist(),
                                 np.asarray(populations, np.float64).tolist()))):
    cols = np.flatnonzero((np.asarray(batch_sizes) == bsz)
                          & (np.asarray(populations, np.float64) == pop))
    k, small = noise_parts(int(bsz))
    t, g, bs = two_batch_estimate(smooth[0][:, cols], smooth[1][:, cols], (small, k * small),
                                  None if np.isinf(pop) else int(pop))
    tr[:, cols], g2[:, cols], b[:, cols] = t, g, bs
  return {"train/noise_scale": b, "train/noise_tr_sigma": tr, "train/noise_g2": g2,
          "train/noise_spread": stats[..., 0], "train/noise_big_norm2": stats[..., 1]}
