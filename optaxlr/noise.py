"""The gradient noise scale of a task at given parameters: how large a batch is worth it.

:func:`noise_scale` measures the *simple noise scale* of McCandlish, Kaplan, Amodei et al.
(2018), ``B_simple = tr(Sigma) / |G|^2``, with either of two estimators: exact per-example
gradients under ``vmap`` over a sample of examples, or the paper's unbiased two-batch-size
estimator averaged over many batch pairs. :func:`micro_batch_stats` (inside ``jit``) and
:func:`two_batch_estimate` (on the host) are the two-batch estimator's halves, for a training
step that splits its batch into parts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optaxlr.engine import batch_indices
from optaxlr.engine import model_key
from optaxlr.engine import run_keys
from optaxlr.engine import micro_batch_stats
from optaxlr.engine import two_batch_estimate
from optaxlr.tasks import Task

__all__ = ["NoiseScale", "noise_scale", "micro_batch_stats", "two_batch_estimate"]

_ESTIMATORS = ("per_example", "two_batch")
_GROUPS = 32  # per_example: examples are summed in this many groups (the jackknife's groups)


class NoiseScale(NamedTuple):
  """The result of :func:`noise_scale`.

  Attributes:
    b_simple: ``tr(Sigma) / |G|^2``, the simple noise scale (a batch size, in examples);
      ``inf`` when the estimate of ``|G|^2`` is not positive (the gradient is too small to
      resolve with this many examples: a warning says so).
    tr_sigma: the estimate of ``tr(Sigma)``, the trace of the per-example gradients'
      covariance over the training set (``ddof=0``: the training set is the population).
    g2: the estimate of ``|G|^2``, the squared norm of the full-batch gradient (the mean of
      the per-example gradients over the training set); unbiased, so it can be negative.
    stderr: standard error of ``b_simple``: a delete-a-group jackknife over the 32 groups of
      examples (``per_example``; times the finite-population factor ``sqrt(1 - n / N)`` for
      a finite population, so 0 when every training example was used) or a delete-one
      jackknife over the batch pairs
      (``two_batch``); ``nan`` where it cannot be formed.
    estimator: ``"per_example"`` or ``"two_batch"``.
    n_examples: example gradients computed: the sample size ``n`` (``per_example``) or
      ``num_pairs * B_big`` (``two_batch``, examples may repeat across pairs).
    num_batches: the jackknife's groups (``per_example``) or the batch pairs (``two_batch``).
    batch_sizes: ``(B_small, B_big)`` for ``two_batch``, else ``None``.
    finite_population: whether the training set was treated as a finite population
      (finite-population factors) or as an infinite one (a model with randomness).
  """

  b_simple: float
  tr_sigma: float
  g2: float
  stderr: float
  estimator: str
  n_examples: int
  num_batches: int
  batch_sizes: tuple[int, int] | None
  finite_population: bool


def _check_int(name: str, value: Any, low: int, high: int | None = None, why: str = "") -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"noise_scale: {name} must be an int, got {name}={value!r}")
  value = int(value)
  if value < low or (high is not None and value > high):
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"noise_scale: {name} must be {allowed}{why}, got {name}={value}")
  return value


def _check_tree(name: str, given: Any, expected: Any, what: str, hint: str) -> Any:
  """``given`` as jax arrays, after checking it has ``expected``'s structure and shapes."""
  given_def, expected_def = jax.tree.structure(given), jax.tree.structure(expected)
  if given_def != expected_def:
    raise ValueError(f"noise_scale: {name} must have the structure of {what}; got "
                     f"{given_def}, expected {expected_def}{hint}")
  for (path, g), e in zip(jax.tree.leaves_with_path(given), jax.tree.leaves(expected)):
    if np.shape(g) != e.shape:
      raise ValueError(f"noise_scale: {name} leaf {jax.tree_util.keystr(path)} has shape "
                       f"{np.shape(g)}, expected {e.shape} (as {what}){hint}")
  return jax.tree.map(jnp.asarray, given)


def noise_scale(
    task: Task,
    params: Any,
    *,
    estimator: Literal["per_example", "two_batch"] = "per_example",
    model_state: Any = None,
    n_examples: int | None = None,
    batch_sizes: tuple[int, int] | None = None,
    num_pairs: int | None = None,
    chunk_size: int = 256,
    hparams: Mapping[str, Any] | None = None,
    finite_population: bool | None = None,
    key: Any = 0,
) -> NoiseScale:
  """The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` of ``task`` at ``params``.

  ``G`` is the gradient of the mean training loss over the task's whole training set (the
  mean of the per-example gradients ``g_i``) and ``Sigma`` the covariance of the ``g_i`` over
  the training set (``ddof=0``). A minibatch of ``B`` examples drawn without replacement has
  ``E|G_B|^2 = |G|^2 + tr(Sigma) c(B)`` with ``c(B) = (N - B) / ((N - 1) B)``, close to the
  paper's ``1 / B`` when ``B << N``. ``B_simple`` is about the batch size above which a
  larger batch stops paying off in steps (the critical batch size's scale); the paper's
  Appendix A derives both estimators below.

  Estimators (``estimator=``):

  * ``"per_example"`` (the default): the gradient of every example of a sample of
    ``n_examples`` drawn without replacement (default: the whole training set, which makes
    the result exact), computed under ``vmap`` ``chunk_size`` at a time. With the sample mean
    ``g`` and the sample variance ``S = sum |g_i - g|^2 / (n - 1)``:
    ``tr(Sigma) = S (N - 1) / N`` and ``|G|^2 = |g|^2 - S (N - n) / (N n)`` (the paper's
    ``|g|^2 - tr(Sigma) / n`` with the finite-population factor), both unbiased. It is the
    default because it is exact with ``n = N`` (no sampling error at all, and no batch sizes
    to choose), and, for the small models this library trains on the CPU, costs about one
    epoch of per-example backward passes. On a sample, its standard error per example
    gradient is about that of ``"two_batch"`` (measured on digits: 14% at ``n = 500``
    before the finite-population factor, against 2.4% for 200 pairs of ``(8, 64)``, i.e.
    12,800 example gradients; both scale as one over the square root of that count). It
    needs a loss that is a mean of per-example losses, so a model with state (BatchNorm) is
    an error: use ``"two_batch"``.
  * ``"two_batch"``: the paper's unbiased two-batch-size estimator, for models whose
    per-example gradients are too costly. ``batch_sizes=(B_small, B_big)`` with ``B_big`` a
    multiple ``k >= 2`` of ``B_small``; each of ``num_pairs`` pairs takes a big batch (the
    minibatches a sweep with ``batch_size=B_big`` and this ``key`` reads at seed 0, steps
    ``0, 1, ...``: :func:`optaxlr.batch_indices`), splits it into ``k`` small batches (as the
    paper's data-parallel workers) and computes the ``k`` small-batch gradients ``G_l``, whose
    mean is the big batch's gradient ``G_b``. Then ``E[d] = tr(Sigma) (c(B_small) - c(B_big))``
    for ``d = mean_l |G_l - G_b|^2 = mean_l |G_l|^2 - |G_b|^2`` (computed as the spread, so
    it is never negative and loses no digits), and ``E|G_b|^2 = |G|^2 + tr(Sigma) c(B_big)``;
    ``d`` and ``|G_b|^2`` are averaged over the pairs (the paper smooths them with moving
    averages along training; at fixed parameters the plain mean is the right smoothing) and
    solved for ``tr(Sigma)`` and ``|G|^2``. Defaults: ``batch_sizes=(16, 128)``,
    ``num_pairs=100``. A model with BatchNorm normalises each small batch with its own
    statistics, as each device of data-parallel training does.

  Departures from the paper: the finite-population factor ``c(B)`` in place of ``1 / B``
  (batches are drawn without replacement from a finite training set, as a sweep draws them;
  the two agree for ``B << N``, and with it ``n = N`` or ``B_big = N`` is exact), and the
  small-batch norms averaged over all ``k`` parts of the big batch instead of one.

  A model with randomness (Dropout: the task's ``info["rng_streams"]``, which the flax
  adapters set) has random per-example gradients (a fresh mask each time), so no finite
  sample is exact: by default the training set is then treated as an infinite population
  (``N -> inf`` in every formula above: ``c(B) = 1 / B``, ``tr(Sigma) = S``,
  ``|G|^2 = |g|^2 - S / n``, no factor on the standard error), ``Sigma`` being the
  covariance over examples and masks together.

  Args:
    task: a :class:`optaxlr.Task` whose training split is in memory (a host-fed task, whose
      ``train`` is a factory of batch iterators, is an error).
    params: the parameters, with the structure of ``task.init(key)``: ``res.params_of(config,
      seed)`` of a sweep run with ``Execution(keep_params=True)``.
    estimator: ``"per_example"`` or ``"two_batch"`` (above).
    model_state: a stateful task's model state (``res.model_state_of(...)``; default
      ``task.initial_state``). The loss is evaluated in training mode (as the sweep's steps:
      Dropout on, BatchNorm with batch statistics); the state is read, not updated.
    n_examples: ``per_example`` only: the sample size, in ``[2, N]`` (default ``N``).
    batch_sizes: ``two_batch`` only: ``(B_small, B_big)``, ``1 <= B_small``,
      ``B_big = k * B_small <= N`` with ``k >= 2``.
    num_pairs: ``two_batch`` only: the number of batch pairs, ``>= 2``.
    chunk_size: ``per_example`` only: examples whose gradients are held at once (memory:
      ``chunk_size`` times the number of parameters); does not change the result beyond
      rounding.
    hparams: one config's hyperparameters for a model that reads them
      (:func:`optaxlr.tasks.hparam`, e.g. a dropout rate).
    finite_population: treat the training set as a finite population (above); default:
      ``True`` unless the task declares random streams (``info["rng_streams"]``). A task of
      your own whose ``train_loss`` draws random numbers should pass ``False``.
    key: an int or a PRNG key: draws the sample (``per_example``) or the batches
      (``two_batch``) from ``optaxlr.run_keys(key, 0)``'s data key, and the model's random
      streams from ``optaxlr.engine.model_key(key, 0, ...)``.

  Returns:
    A :class:`NoiseScale` (``b_simple``, ``tr_sigma``, ``g2``, ``stderr``, ``estimator``,
    ``n_examples``, ``num_batches``, ``batch_sizes``, ``finite_population``), as Python
    numbers.

  Raises:
    ValueError: before any compute: a host-fed task, an unknown estimator, ``params`` or
      ``model_state`` of another structure or shape, a sample or batch size above the
      training set, ``B_big`` not a multiple ``>= 2`` of ``B_small``, an argument of the other
      estimator, ``per_example`` on a model with state; after: non-finite gradients.
    TypeError: a count that is not an int.

  Examples:
    >>> import jax, optaxlr
    >>> from optaxlr.noise import noise_scale
    >>> task = optaxlr.tasks.teacher_student(d=3, n_train=64, hidden=(8,))
    >>> res = noise_scale(task, task.init(jax.random.key(0)))
    >>> res.estimator, res.n_examples, res.stderr   # every example: exact, no sampling error
    ('per_example', 64, 0.0)
    >>> res.b_simple > 0
    True
    >>> noise_scale(task, task.init(jax.random.key(0)), estimator="two_batch",
    ...             batch_sizes=(4, 16), num_pairs=50).num_batches
    50

  References:
    McCandlish, Kaplan, Amodei and the OpenAI Dota Team, `An Empirical Model of Large-Batch
    Training <https://arxiv.org/abs/1812.06162>`_, 2018 (section 2.2 and Appendix A).
  """
  if not isinstance(task, Task):
    raise TypeError(f"noise_scale: task must be an optaxlr.Task, got {type(task).__name__}")
  if task.host_fed:
    raise ValueError(f"noise_scale: task {task.name!r} is host-fed (train is a factory of batch "
                     "iterators); the noise scale needs the training set in memory to draw "
                     "samples from it: build the task with train={...arrays...}")
  if estimator not in _ESTIMATORS:
    raise ValueError(f"noise_scale: estimator must be one of {_ESTIMATORS}, got "
                     f"estimator={estimator!r}")
  n_train = task.n_train
  if n_train < 2:
    raise ValueError(f"noise_scale: task {task.name!r} has {n_train} training example; a "
                     "covariance needs at least 2")
  chunk_size = _check_int("chunk_size", chunk_size, 1)
  if finite_population is None:
    finite_population = not task.info.get("rng_streams")
  elif not isinstance(finite_population, bool):
    raise TypeError(f"noise_scale: finite_population must be a bool or None, got "
                    f"finite_population={finite_population!r}")
  population = float(n_train) if finite_population else math.inf
  if estimator == "per_example":
    for name, value in (("batch_sizes", batch_sizes), ("num_pairs", num_pairs)):
      if value is not None:
        raise ValueError(f"noise_scale: {name} applies to estimator='two_batch', got "
                         f"{name}={value!r} with estimator='per_example' (which uses n_examples)")
    n = n_train if n_examples is None else _check_int(
        "n_examples", n_examples, 2, n_train, f" (the training set has {n_train} examples)")
  else:
    if n_examples is not None:
      raise ValueError(f"noise_scale: n_examples applies to estimator='per_example', got "
                       f"n_examples={n_examples!r} with estimator='two_batch' (which uses "
                       "batch_sizes and num_pairs)")
    sizes = (16, 128) if batch_sizes is None else batch_sizes
    if not (isinstance(sizes, (tuple, list)) and len(sizes) == 2):
      raise ValueError(f"noise_scale: batch_sizes must be a pair (B_small, B_big), got "
                       f"batch_sizes={batch_sizes!r}")
    b_small = _check_int("batch_sizes[0] (B_small)", sizes[0], 1, n_train // 2,
                         f" (B_big >= 2 * B_small and the training set has {n_train} examples)")
    b_big = _check_int("batch_sizes[1] (B_big)", sizes[1], 2 * b_small, n_train,
                       f" (at least 2 * B_small = {2 * b_small}, at most the training set's "
                       f"{n_train} examples)")
    if b_big % b_small:
      raise ValueError(f"noise_scale: batch_sizes[1] (B_big) must be a multiple of B_small = "
                       f"{b_small} (the big batch is split into small ones), got "
                       f"batch_sizes={tuple(sizes)!r}")
    pairs = 100 if num_pairs is None else _check_int("num_pairs", num_pairs, 2)

  init_key = jax.random.key(0)
  params = _check_tree("params", params, jax.eval_shape(task.init, init_key), "task.init(key)",
                       "; pass one run's parameters, e.g. res.params_of(config, seed)")
  try:
    _, data_key = run_keys(key, 0)
  except (TypeError, ValueError) as e:
    raise type(e)(f"noise_scale: key must be an int or a PRNG key, got {key!r} ({e})") from e
  expected_state = jax.eval_shape(task.initial_state, init_key)
  if model_state is None:
    state = task.initial_state(data_key)
  else:
    state = _check_tree("model_state", model_state, expected_state, "task.initial_state(key)",
                        "; pass one run's model state, e.g. res.model_state_of(config, seed)")
  if estimator == "per_example" and jax.tree.leaves(state):
    raise ValueError(f"noise_scale: estimator='per_example' needs a loss that is a mean of "
                     f"per-example losses, but task {task.name!r} carries model state "
                     "(BatchNorm statistics...), whose training-mode loss couples the examples "
                     "of a batch; use estimator='two_batch'")
  hp = {k: jnp.asarray(v) for k, v in dict(hparams or {}).items()}

  def loss_of(p, batch, mkey):
    return task.step_loss(p, state, batch, mkey, hp)[0]

  data = task.train
  if estimator == "per_example":
    def flat_grad(p, batch, mkey):
      return ravel_pytree(jax.grad(loss_of)(p, batch, mkey))[0]

    return _per_example(flat_grad, params, data, data_key, key, n, n_train, population,
                        chunk_size)
  return _two_batch(jax.grad(loss_of), params, data, data_key, key, b_small, b_big, pairs,
                    n_train, population)


def _finish(estimator: str, tr_sigma: float, g2: float, stderr: float, n_examples: int,
            num_batches: int, batch_sizes: tuple[int, int] | None,
            population: float) -> NoiseScale:
  if not (math.isfinite(tr_sigma) and math.isfinite(g2)):
    raise ValueError(f"noise_scale: the gradients are not finite at these parameters "
                     f"(tr_sigma={tr_sigma}, g2={g2}, estimator={estimator!r})")
  if g2 > 0:
    b_simple = tr_sigma / g2
  else:
    b_simple = math.inf
    warnings.warn(f"noise_scale: the estimate of |G|^2 is {g2:.3g} <= 0 (estimator="
                  f"{estimator!r}, {n_examples} example gradients): the full-batch gradient is "
                  "too small to resolve against the noise; b_simple is reported as inf. Use "
                  "more examples (or pairs)", RuntimeWarning, stacklevel=3)
  return NoiseScale(b_simple=float(b_simple), tr_sigma=float(tr_sigma), g2=float(g2),
                    stderr=float(stderr), estimator=estimator, n_examples=int(n_examples),
                    num_batches=int(num_batches), batch_sizes=batch_sizes,
                    finite_population=math.isfinite(population))


def _unsampled(m: Any, population: float) -> Any:
  """``(N - m) / N``, the finite-population factor of a sample of ``m`` (1 for ``N = inf``)."""
  return 1.0 if math.isinf(population) else (population - m) / population


def _jackknife(values: np.ndarray) -> float:
  """The delete-one jackknife standard error from the leave-one-out estimates ``values``."""
  k = values.shape[0]
  if k < 2 or not np.all(np.isfinite(values)):  # a group's |G|^2 estimate was <= 0
    return math.nan
  return float(np.sqrt((k - 1) / k * np.sum(np.square(values - values.mean()))))


def _per_example(flat_grad, params, data, data_key, key, n: int, n_train: int,
                 population: float, chunk_size: int) -> NoiseScale:
  groups = min(_GROUPS, n)
  per_group = -(-n // groups)
  chunk = min(chunk_size, per_group)
  per_group = -(-per_group // chunk) * chunk
  total = groups * per_group
  sample = jax.random.permutation(data_key, n_train)[:n]
  # Example j of the sample goes to group j % groups: group sizes differ by at most one.
  slots = np.arange(total).reshape(per_group, groups).T  # (groups, per_group) slot -> position
  valid = slots < n
  idx = jnp.where(jnp.asarray(valid), sample[jnp.asarray(np.minimum(slots, n - 1))], 0)
  shape = (groups, per_group // chunk, chunk)
  idx = idx.reshape(shape)
  mask = jnp.asarray(valid, jnp.float32).reshape(shape)
  counts = valid.sum(axis=1)

  @jax.jit
  def stats(params, data, idx, mask):
    def one(i):
      example = {k: v[i][None] for k, v in data.items()}
      return flat_grad(params, example, model_key(key, 0, i))

    # Shift by the first chunk's mean gradient: the sums below then hold deviations of about
    # the noise's size, and the variance loses no digits to |G|^2.
    shift = jax.vmap(one)(idx[0, 0]).mean(axis=0)

    def chunk_sums(carry, xs):
      i, m = xs
      g = (jax.vmap(one)(i) - shift[None, :]) * m[:, None].astype(shift.dtype)
      s, a = carry
      return (s + g.sum(axis=0), a + jnp.sum(g * g)), None

    def group(xs):
      zero = (jnp.zeros_like(shift), jnp.zeros((), shift.dtype))
      return jax.lax.scan(chunk_sums, zero, xs)[0]

    sums, squares = jax.lax.map(group, (idx, mask))
    return shift, sums, squares

  shift, sums, squares = jax.device_get(stats(params, data, idx, mask))
  shift = np.asarray(shift, np.float64)
  sums, squares = np.asarray(sums, np.float64), np.asarray(squares, np.float64)

  def estimate(m, s, a):
    """``(tr_sigma, g2)`` from ``m`` examples with shifted gradient sum ``s`` and sum of
    squares ``a`` (broadcasts over leading axes)."""
    var = (a - np.sum(s * s, axis=-1) / m) / (m - 1)  # sample variance, ddof=1
    mean = shift + s / m[..., None]
    tr_sigma = var * (1.0 - 1.0 / population)  # S (N - 1) / N
    return tr_sigma, np.sum(mean * mean, axis=-1) - var * _unsampled(m, population) / m

  tr_sigma, g2 = estimate(np.asarray(float(n)), sums.sum(0), squares.sum())
  loo_tr, loo_g2 = estimate((n - counts).astype(np.float64), sums.sum(0)[None] - sums,
                            squares.sum() - squares)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = loo_tr / loo_g2
  stderr = math.sqrt(_unsampled(n, population)) * _jackknife(
      np.where(loo_g2 > 0, ratios, np.nan))
  return _finish("per_example", float(tr_sigma), float(g2), stderr, n, groups, None, population)


def _two_batch(grad_fn, params, data, data_key, key, b_small: int, b_big: int, pairs: int,
               n_train: int, population: float) -> NoiseScale:
  k = b_big // b_small

  @jax.jit
  def stats(params, data):
    def pair(j):
      parts = batch_indices(data_key, j, n_train, b_big).reshape(k, b_small)

      def small(i, l):
        batch = {name: v[i] for name, v in data.items()}
        return grad_fn(params, batch, jax.random.fold_in(model_key(key, 0, j), l))

      return micro_batch_stats(jax.vmap(small)(parts, jnp.arange(k)))

    return jax.lax.map(pair, jnp.arange(pairs))

  spread, big2 = (np.asarray(x, np.float64) for x in jax.device_get(stats(params, data)))
  num_examples = None if math.isinf(population) else n_train
  tr_sigma, g2, _ = two_batch_estimate(spread.mean(), big2.mean(), (b_small, b_big),
                                       num_examples)
  _, loo_g2, loo_b = two_batch_estimate((spread.sum() - spread) / (pairs - 1),
                                        (big2.sum() - big2) / (pairs - 1), (b_small, b_big),
                                        num_examples)
  ratios = np.where(loo_g2 > 0, loo_b, np.nan)
  return _finish("two_batch", float(tr_sigma), float(g2), _jackknife(ratios),
                 pairs * b_big, pairs, (b_small, b_big), population)
