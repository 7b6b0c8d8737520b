"""sweep(..., noise_scale=True): the noise scale recorded inside the compiled program.

References are independent: per-example gradients over the whole training set written out
by hand in NumPy (softmax regression; a tanh MLP's backward pass), from which the exact
``B_simple = tr(Sigma) / |G|^2`` (``Sigma`` the per-example gradients' covariance over the
training set, ``ddof=0``) follows. The sweep trains with a learning rate of 0, so that every
evaluation measures the same fixed parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search
from optaxlr.tasks import Task


def _exact(per_example_grads: np.ndarray) -> tuple[float, float, float]:
  """(B_simple, tr_sigma, g2) of the rows of an (N, P) array of per-example gradients."""
  g = np.asarray(per_example_grads, np.float64)
  mean = g.mean(axis=0)
  tr_sigma = float(np.mean(np.sum((g - mean) ** 2, axis=1)))
  return tr_sigma / float(mean @ mean), tr_sigma, float(mean @ mean)


def _rel(a: float, b: float) -> float:
  return abs(a - b) / abs(b)


def _frozen_sweep(task, space=None, **kw):
  """A sweep at a learning rate of 0 (the parameters stay at their initial values)."""
  space = search.grid(eta=[0.0]) if space is None else space
  kw = {"steps": 60, "eval_every": 1, "batch_size": 128, **kw}
  return optaxlr.sweep(task, lambda h: optax.sgd(h["eta"]), space, noise_scale=True,
                       execution=optaxlr.Execution(keep_params=True, progress=False), **kw)


# ---------------------------------------------------------------------- softmax regression
def _softmax_task():
  digits = optaxlr.tasks.digits(hidden=(8,))
  x, y = np.asarray(digits.train["x"], np.float32), np.asarray(digits.train["y"])

  def init(k):
    kw, kb = jax.random.split(k)
    return {"w": 0.05 * jax.random.normal(kw, (64, 10)), "b": 0.05 * jax.random.normal(kb, (10,))}

  task = Task.from_functions("softmax", init=init, apply=lambda p, x: x @ p["w"] + p["b"][None],
                             train={"x": x, "y": y}, eval={"val": dict(digits.eval["val"])})
  return task, x, y


def _softmax_grads(params, x, y) -> np.ndarray:
  """Per-example gradients of the cross-entropy of softmax(x W + b): (x (p - e_y), p - e_y)."""
  w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
  logits = x @ w + b
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  d = p - np.eye(10)[y]
  return np.concatenate([(x[:, :, None] * d[:, None, :]).reshape(len(x), -1), d], axis=1)


def test_softmax_regression_noise_scale_within_10_percent_of_exact():
  task, x, y = _softmax_task()
  res = _frozen_sweep(task)
  b_ref, tr_ref, g2_ref = _exact(_softmax_grads(res.params_of(0), x.astype(np.float64), y))
  assert 5.0 < b_ref < 500.0, b_ref  # a regime where batches of 16..128 resolve it
  b = res.metrics["train/noise_scale"]
  assert b.shape == res.metrics["val/loss"].shape == (1, 1, 60)
  assert _rel(float(b[0, 0, -1]), b_ref) < 0.10, (b[0, 0, -1], b_ref)
  assert _rel(float(res.metrics["train/noise_tr_sigma"][0, 0, -1]), tr_ref) < 0.10
  assert _rel(float(res.metrics["train/noise_g2"][0, 0, -1]), g2_ref) < 0.10
  # the raw statistics, averaged over all 60 evaluations: the two-batch estimator is unbiased
  k, small = optaxlr.engine.noise_parts(128)
  c = lambda m: (len(x) - m) / ((len(x) - 1) * m)  # noqa: E731 -- without replacement
  tr = res.metrics["train/noise_spread"][0, 0].mean() / (c(small) - c(k * small))
  g2 = res.metrics["train/noise_big_norm2"][0, 0].mean() - tr * c(k * small)
  assert _rel(tr / g2, b_ref) < 0.05, (tr / g2, b_ref)


# ---------------------------------------------------------------------- a tanh MLP
def _mlp_grads(params, x, y) -> np.ndarray:
  """Per-example gradients of (f(x) - y)^2, f a one-hidden-layer tanh MLP (hand backprop)."""
  l0, l1 = params["layers"][0], params["layers"][1]
  w0, b0, w1, b1 = (np.asarray(a[...], np.float64) for a in (l0["kernel"], l0["bias"],
                                                              l1["kernel"], l1["bias"]))
  h = np.tanh(x @ w0 + b0)
  out = (h @ w1 + b1)[:, 0]
  dout = 2.0 * (out - y)  # (N,)
  dz = dout[:, None] * w1[:, 0][None, :] * (1.0 - h * h)  # (N, H)
  return np.concatenate([(x[:, :, None] * dz[:, None, :]).reshape(len(x), -1), dz,
                         h * dout[:, None], dout[:, None]], axis=1)


def test_mlp_noise_scale_within_10_percent_of_exact():
  task = optaxlr.tasks.teacher_student(d=5, n_train=1024, hidden=(16,), noise=0.5)
  x = np.asarray(task.train["x"], np.float64)
  y = np.asarray(task.train["y"], np.float64).reshape(len(x))
  res = _frozen_sweep(task)
  params = res.params_of(0)
  grads = _mlp_grads(params, x, y)
  # the hand-written backward pass is the loss's: its mean is jax's full-batch gradient
  full = jax.flatten_util.ravel_pytree(jax.grad(task.loss)(params, task.train))[0]
  assert np.isclose(np.linalg.norm(grads.mean(0)), float(jnp.linalg.norm(full)), rtol=1e-4)
  b_ref = _exact(grads)[0]
  b = float(res.metrics["train/noise_scale"][0, 0, -1])
  assert _rel(b, b_ref) < 0.10, (b, b_ref)


# ---------------------------------------------------------------------- vmapped axes
def test_batch_size_axis_each_segment_within_10_percent_of_exact():
  # Two batch sizes in one program: each segment splits its own minibatch (k x B_small) and
  # solves with its own c(B); both estimate the same parameters' noise scale.
  task, x, y = _softmax_task()
  res = _frozen_sweep(task, search.grid(eta=[0.0], batch_size=[64, 256]), batch_size=None)
  b_ref = _exact(_softmax_grads(res.params_of(0), x.astype(np.float64), y))[0]
  for i in range(2):
    b = float(res.metrics["train/noise_scale"][0, i, -1])
    assert _rel(b, b_ref) < 0.10, (i, b, b_ref)


@pytest.mark.slow
def test_training_moves_the_noise_scale_and_other_numbers_are_unchanged():
  # vmap over configs and seeds while training. noise_scale=True adds metrics and changes no
  # other number (bitwise): the estimate runs after each block of steps, outside their scan,
  # so the steps are the same program as without it.
  task, _, _ = _softmax_task()
  kw = dict(steps=40, eval_every=10, batch_size=32, seeds=2,
            execution=optaxlr.Execution(progress=False))
  space = search.grid(lr=[0.05, 0.5])
  opt = lambda h: optax.sgd(h["lr"])  # noqa: E731
  on = optaxlr.sweep(task, opt, space, noise_scale=True, **kw)
  off = optaxlr.sweep(task, opt, space, **kw)
  assert set(on.metrics) - set(off.metrics) == {
      "train/noise_scale", "train/noise_tr_sigma", "train/noise_g2", "train/noise_spread",
      "train/noise_big_norm2"}
  for k in off.metrics:
    np.testing.assert_array_equal(on.metrics[k], off.metrics[k])
  np.testing.assert_array_equal(on.batch_loss, off.batch_loss)
  b = on.metrics["train/noise_scale"]
  assert b.shape == (2, 2, 4) and np.all(np.isfinite(b)) and np.all(b > 0)
  # training moves the estimate: the full-batch gradient's squared norm falls with the loss
  g2 = on.metrics["train/noise_g2"]
  assert np.all(g2[:, :, -1] < 0.7 * g2[:, :, 0]), g2


# ---------------------------------------------------------------------- BatchNorm + Dropout
def _bn_dropout_task():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(64, 32, rngs=rngs)
      self.bn = nnx.BatchNorm(32, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)
      self.b = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
      return self.b(self.drop(jax.nn.relu(self.bn(self.a(x)))))

  digits = optaxlr.tasks.digits(hidden=(8,))
  return Task.from_flax_nnx("bn_dropout", Net, train=dict(digits.train),
                            eval={"val": dict(digits.eval["val"])})


@pytest.mark.slow
def test_batchnorm_dropout_model_matches_the_one_call_two_batch_measurement():
  # Not independent of the library (BatchNorm couples the examples of a batch, so there is no
  # per-example reference): the same ghost-batch definition measured two ways, the sweep's
  # recorded value against optaxlr.noise_scale(estimator="two_batch") with 400 pairs at the
  # same parameters and model state (infinite population: Dropout draws fresh masks).
  task = _bn_dropout_task()
  res = _frozen_sweep(task)
  assert task.info.get("rng_streams")
  k, small = optaxlr.engine.noise_parts(128)
  one = optaxlr.noise_scale(task, res.params_of(0), model_state=res.model_state_of(0),
                            estimator="two_batch", batch_sizes=(small, k * small), num_pairs=400)
  assert not one.finite_population
  b = float(res.metrics["train/noise_scale"][0, 0, -1])
  assert _rel(b, one.b_simple) < 0.15, (b, one)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [1, "yes", None, np.bool_(True)])
def test_noise_scale_must_be_a_bool(value):
  task, _, _ = _softmax_task()
  with pytest.raises(TypeError, match=r"sweep: noise_scale must be a bool .*got noise_scale="):
    optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.1]), steps=2,
                  noise_scale=value)


def test_batch_size_one_is_an_error_before_compute():
  task, _, _ = _softmax_task()
  with pytest.raises(ValueError, match=r"sweep: noise_scale=True splits each minibatch into at "
                     r"least 2 parts.*got batch_size=1 \(config 0\)"):
    optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.1], batch_size=[1, 8]),
                  steps=2, noise_scale=True)


def test_checkpointed_noise_statistics_are_read_back(tmp_path):
  # The raw statistics travel with every committed chunk: a finished sweep read back from its
  # checkpoint has the same noise metrics (no recomputation, nothing lost).
  task = optaxlr.tasks.teacher_student(d=3, n_train=64, n_val=16, n_test=16, hidden=(4,))
  kw = dict(steps=8, batch_size=16, eval_every=2, sync_every=4, noise_scale=True,
            execution=optaxlr.Execution(progress=False, checkpoint_dir=tmp_path / "ck"))
  first = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.1]), **kw)
  again = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.1]), **kw)
  assert np.all(np.isfinite(first.metrics["train/noise_spread"]))
  for k in ("train/noise_scale", "train/noise_spread", "train/noise_big_norm2"):
    np.testing.assert_array_equal(again.metrics[k], first.metrics[k])


def test_host_fed_task_records_the_noise_scale():
  # A stream of batches (drawn with replacement here) has no finite population: c(B) = 1 / B.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((256, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)

  def batches(seed):
    r = np.random.default_rng(seed)
    while True:
      i = r.integers(0, 256, 32)
      yield {"x": x[i], "y": y[i]}

  task = Task.from_functions("stream", init=lambda k: {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)},
                             apply=lambda p, x: x @ p["w"] + p["b"][None], train=batches,
                             eval={"val": {"x": x[:64], "y": y[:64]}})
  res = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.1]), steps=20,
                      eval_every=5, noise_scale=True, execution=optaxlr.Execution(progress=False))
  b = res.metrics["train/noise_scale"]
  assert b.shape == (1, 1, 4) and np.all(np.isfinite(b)) and np.all(b > 0)
