"""noise_scale: the simple gradient noise scale against independent references.

References: NumPy per-example gradients of a logistic regression written out by hand, PyTorch
(torch.func) per-example gradients of a teacher-student MLP and of the digits MLP at a sweep's
kept parameters, and the closed form of a linear regression with Gaussian inputs and noise.
Each reference uses the WHOLE training set: G = mean_i g_i, tr(Sigma) = mean_i |g_i - G|^2
(ddof=0). NumPy restatements of both estimators' formulas check them on the same samples.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import optaxlr
from optaxlr import search
from optaxlr.noise import NoiseScale, noise_scale
from optaxlr.tasks import Task


def _b_simple(per_example_grads: np.ndarray) -> tuple[float, float, float]:
  """(B_simple, tr_sigma, g2) of the rows of an (N, P) array of per-example gradients."""
  g = np.asarray(per_example_grads, np.float64)
  mean = g.mean(axis=0)
  tr_sigma = float(np.mean(np.sum((g - mean) ** 2, axis=1)))
  g2 = float(mean @ mean)
  return tr_sigma / g2, tr_sigma, g2


def _rel(a: float, b: float) -> float:
  return abs(a - b) / abs(b)


# ----------------------------------------------------------------- logistic regression, NumPy
N_LOG, D_LOG = 1000, 5


@pytest.fixture(scope="module")
def logistic():
  rng = np.random.default_rng(1)
  w_true = rng.standard_normal(D_LOG)
  x = rng.standard_normal((N_LOG, D_LOG))
  y = (x @ w_true + 0.5 * rng.standard_normal(N_LOG) > 0).astype(np.int32)
  task = Task.from_functions(
      "logreg", init=lambda k: {"w": jnp.zeros(D_LOG), "b": jnp.zeros(())},
      apply=lambda p, x: x @ p["w"] + p["b"], loss="logistic",
      train={"x": x.astype(np.float32), "y": y})
  w, b = 0.3 * w_true, 0.2  # part way to the solution: the gradient is far from 0
  params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  # d/df softplus(-s f) = -s sigmoid(-s f), s = +-1
  s = np.where(y > 0, 1.0, -1.0)
  f = x @ w + b
  df = -s / (1.0 + np.exp(s * f))
  grads = np.concatenate([np.ones((N_LOG, 1)), x], axis=1) * df[:, None]  # (b, w) order
  return task, params, _b_simple(grads)


def test_logistic_per_example_whole_set_is_exact(logistic):
  task, params, (b_ref, tr_ref, g2_ref) = logistic
  res = noise_scale(task, params)
  assert isinstance(res, NoiseScale)
  assert (res.estimator, res.n_examples, res.batch_sizes) == ("per_example", N_LOG, None)
  # every example: the estimator equals the exact value (float32 gradients)
  assert _rel(res.b_simple, b_ref) < 1e-4
  assert _rel(res.tr_sigma, tr_ref) < 1e-4 and _rel(res.g2, g2_ref) < 1e-4
  assert res.stderr == 0.0  # no sampling error left
  assert 1.0 < b_ref < 100.0  # the reference is not degenerate


def test_logistic_per_example_sample_within_10_percent(logistic):
  task, params, (b_ref, _, _) = logistic
  res = noise_scale(task, params, n_examples=500)
  assert res.n_examples == 500 and res.num_batches == 32
  assert _rel(res.b_simple, b_ref) < 0.10
  assert 0 < res.stderr < 0.15 * b_ref  # a half sample: a real, modest error bar
  assert abs(res.b_simple - b_ref) < 3 * res.stderr


def test_logistic_chunk_size_does_not_change_the_result(logistic):
  task, params, _ = logistic
  a = noise_scale(task, params, n_examples=200)
  b = noise_scale(task, params, n_examples=200, chunk_size=3)  # padding in every group
  np.testing.assert_allclose([b.b_simple, b.tr_sigma, b.g2, b.stderr],
                             [a.b_simple, a.tr_sigma, a.g2, a.stderr], rtol=1e-5)


def test_logistic_two_batch_within_10_percent(logistic):
  task, params, (b_ref, tr_ref, g2_ref) = logistic
  res = noise_scale(task, params, estimator="two_batch", batch_sizes=(5, 50), num_pairs=300)
  assert (res.estimator, res.batch_sizes, res.num_batches, res.n_examples) == (
      "two_batch", (5, 50), 300, 300 * 50)
  assert _rel(res.b_simple, b_ref) < 0.10
  assert _rel(res.tr_sigma, tr_ref) < 0.10 and _rel(res.g2, g2_ref) < 0.10
  assert 0 < res.stderr < 0.15 * b_ref
  assert abs(res.b_simple - b_ref) < 3 * res.stderr


def test_two_batch_whole_set_big_batch_is_exact_for_g2(logistic):
  # B_big = N: every big batch is the whole training set, so |G_b|^2 = |G|^2 exactly and the
  # finite-population factor c(N) = 0 leaves it uncorrected.
  task, params, (_, _, g2_ref) = logistic
  res = noise_scale(task, params, estimator="two_batch", batch_sizes=(100, 1000), num_pairs=4)
  assert _rel(res.g2, g2_ref) < 1e-4


def _per_example_grads_logistic(task, params):
  x, y = np.asarray(task.train["x"], np.float64), np.asarray(task.train["y"])
  s = np.where(y > 0, 1.0, -1.0)
  f = x @ np.asarray(params["w"], np.float64) + float(params["b"])
  return np.concatenate([np.ones((len(x), 1)), x], axis=1) * (-s / (1.0 + np.exp(s * f)))[:, None]


@pytest.mark.parametrize("finite", [True, False])
def test_per_example_sample_equals_numpy_restatement(logistic, finite):
  # The formulas on the same sample (run_keys(key, 0)'s data key, first n of a permutation):
  # S = sum|g_i - mean|^2 / (n - 1), tr = S (N - 1) / N, |G|^2 = |mean|^2 - S (N - n) / (N n);
  # jackknife over the 32 groups {j : j % 32 == r} of the sample, times sqrt(1 - n / N).
  # An infinite population: N -> inf in each.
  task, params, _ = logistic
  n, key = 400, 5
  pop = N_LOG if finite else np.inf
  res = noise_scale(task, params, n_examples=n, key=key, finite_population=finite)
  assert res.finite_population is finite
  grads = _per_example_grads_logistic(task, params)
  sample = np.asarray(jax.random.permutation(optaxlr.run_keys(key, 0)[1], N_LOG))[:n]

  def estimate(g):
    m = len(g)
    var = np.sum((g - g.mean(0)) ** 2) / (m - 1)
    tr = var * (1 - 1 / pop)
    g2 = g.mean(0) @ g.mean(0) - var * (1 - m / pop) / m
    return tr, g2

  tr, g2 = estimate(grads[sample])
  loo = np.array([np.divide(*estimate(grads[sample[np.arange(n) % 32 != r]]))
                  for r in range(32)])
  stderr = np.sqrt(31 / 32 * np.sum((loo - loo.mean()) ** 2)) * np.sqrt(1 - n / pop)
  np.testing.assert_allclose([res.tr_sigma, res.g2, res.b_simple, res.stderr],
                             [tr, g2, tr / g2, stderr], rtol=2e-4)


@pytest.mark.parametrize("finite", [True, False])
def test_two_batch_equals_numpy_restatement(logistic, finite):
  # Appendix A on the same batches (the minibatches a sweep with batch_size=B_big reads at
  # seed 0: optaxlr.batch_indices): |G_small|^2 averaged over the k parts of each big batch,
  # c(B) = (N - B) / ((N - 1) B), tr = (E|G_s|^2 - E|G_b|^2) / (c(s) - c(b)),
  # |G|^2 = E|G_b|^2 - tr c(b); jackknife over the pairs.
  task, params, _ = logistic
  b_small, b_big, pairs, key = 10, 40, 60, 7
  res = noise_scale(task, params, estimator="two_batch", batch_sizes=(b_small, b_big),
                    num_pairs=pairs, key=key, finite_population=finite)
  grads = _per_example_grads_logistic(task, params)
  data_key = optaxlr.run_keys(key, 0)[1]
  small2, big2 = np.zeros(pairs), np.zeros(pairs)
  for j in range(pairs):
    idx = np.asarray(optaxlr.batch_indices(data_key, j, N_LOG, b_big))
    parts = grads[idx].reshape(b_big // b_small, b_small, -1).mean(axis=1)
    small2[j] = np.mean(np.sum(parts**2, axis=1))
    big2[j] = np.sum(grads[idx].mean(0) ** 2)

  def c(b):
    return (N_LOG - b) / ((N_LOG - 1) * b) if finite else 1 / b

  def estimate(s2, b2):
    tr = (s2 - b2) / (c(b_small) - c(b_big))
    return tr, b2 - tr * c(b_big)

  tr, g2 = estimate(small2.mean(), big2.mean())
  keep = ~np.eye(pairs, dtype=bool)
  loo = np.array([np.divide(*estimate(small2[m].mean(), big2[m].mean())) for m in keep])
  stderr = np.sqrt((pairs - 1) / pairs * np.sum((loo - loo.mean()) ** 2))
  np.testing.assert_allclose([res.tr_sigma, res.g2, res.b_simple, res.stderr],
                             [tr, g2, tr / g2, stderr], rtol=2e-4)


# ------------------------------------------------------ linear regression, closed form
def test_linear_regression_closed_form():
  # y = x.w* + sigma eps, x ~ N(0, I_d), loss mean (x.w - y)^2, at w = w* + delta:
  # g = 2 x (x.delta - sigma eps), G = 2 delta, E|g|^2 = 4((d + 2)|delta|^2 + sigma^2 d),
  # tr(Sigma) = 4((d + 1)|delta|^2 + sigma^2 d), B_simple = d + 1 + sigma^2 d / |delta|^2.
  d, n, sigma = 4, 5_000, 1.0
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, d))
  w_star = rng.standard_normal(d)
  y = x @ w_star + sigma * rng.standard_normal(n)
  delta = np.full(d, 0.5)  # |delta|^2 = 1
  task = Task.from_functions("linreg", init=lambda k: {"w": jnp.zeros(d)},
                             apply=lambda p, x: x @ p["w"], loss="mse",
                             train={"x": x.astype(np.float32), "y": y.astype(np.float32)})
  params = {"w": jnp.asarray(w_star + delta, jnp.float32)}
  b_exact = d + 1 + sigma**2 * d / 1.0  # 9
  tr_exact, g2_exact = 4 * ((d + 1) + sigma**2 * d), 4.0
  for res in (noise_scale(task, params),
              noise_scale(task, params, estimator="two_batch", batch_sizes=(8, 64),
                          num_pairs=200)):
    assert _rel(res.b_simple, b_exact) < 0.10, res
    assert _rel(res.tr_sigma, tr_exact) < 0.10 and _rel(res.g2, g2_exact) < 0.10, res
  # a half sample: tr_sigma and g2 err together (one sample), their ratio less
  half = noise_scale(task, params, n_examples=2500)
  assert _rel(half.b_simple, b_exact) < 0.10, half


# ------------------------------------------------------------------ MLPs, PyTorch
def _torch_grads(torch, layers, x, y, activation, loss):
  """(N, P) per-example gradients (torch.func, float64) of an MLP with nnx params ``layers``
  (the order of the P columns is irrelevant: only norms and means are compared)."""
  from torch.func import grad, vmap

  names = [(i, leaf) for i in range(len(layers)) for leaf in ("bias", "kernel")]
  tp = {f"{leaf}{i}": torch.tensor(np.asarray(layers[i][leaf][...]), dtype=torch.float64)
        for i, leaf in names}

  def per_example(p, x, y):
    for i in range(len(layers) - 1):
      x = activation(x @ p[f"kernel{i}"] + p[f"bias{i}"])
    return loss(x @ p[f"kernel{len(layers) - 1}"] + p[f"bias{len(layers) - 1}"], y)

  x = torch.tensor(np.asarray(x), dtype=torch.float64)
  g = vmap(grad(per_example), in_dims=(None, 0, 0))(tp, x, torch.tensor(np.asarray(y)))
  return np.concatenate([g[f"{leaf}{i}"].reshape(len(x), -1).numpy() for i, leaf in names], axis=1)


@pytest.mark.torch
def test_teacher_student_mlp_against_torch_per_example_gradients():
  torch = pytest.importorskip("torch")
  task = optaxlr.tasks.teacher_student(d=5, n_train=400, hidden=(16,))
  params = task.init(jax.random.key(0))
  flat = _torch_grads(torch, params["layers"], task.train["x"], task.train["y"], torch.tanh,
                      lambda out, y: (out[0] - y.to(out.dtype)) ** 2)
  b_ref, tr_ref, g2_ref = _b_simple(flat)
  assert 1.0 < b_ref < 1e3
  exact = noise_scale(task, params)
  assert _rel(exact.b_simple, b_ref) < 1e-4
  assert _rel(exact.tr_sigma, tr_ref) < 1e-4 and _rel(exact.g2, g2_ref) < 1e-4
  two = noise_scale(task, params, estimator="two_batch", batch_sizes=(8, 64), num_pairs=200)
  assert _rel(two.b_simple, b_ref) < 0.10, (two, b_ref)
  assert abs(two.b_simple - b_ref) < 3 * two.stderr


@pytest.mark.slow
@pytest.mark.torch
def test_digits_mlp_at_a_sweep_checkpoint_against_torch():
  # The parameters a sweep kept (keep_params=True, res.params_of) after 10 steps.
  torch = pytest.importorskip("torch")
  task = optaxlr.tasks.digits(hidden=(32,))
  res = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"], momentum=0.9),
                      search.grid(lr=[0.01]), steps=10, batch_size=32,  execution=optaxlr.Execution(keep_params=True, progress=False))
  params = res.params_of(0)
  flat = _torch_grads(torch, params["layers"], task.train["x"], task.train["y"], torch.relu,
                      lambda out, y: torch.nn.functional.cross_entropy(out[None], y[None]))
  b_ref, tr_ref, g2_ref = _b_simple(flat)
  assert 1.0 < b_ref < 1e4

  exact = noise_scale(task, params)  # every training example
  assert exact.n_examples == task.n_train
  assert _rel(exact.b_simple, b_ref) < 1e-3
  assert _rel(exact.tr_sigma, tr_ref) < 1e-3 and _rel(exact.g2, g2_ref) < 1e-3
  sample = noise_scale(task, params, n_examples=800)
  assert _rel(sample.b_simple, b_ref) < 0.10, (sample, b_ref)
  two = noise_scale(task, params, estimator="two_batch", batch_sizes=(8, 64), num_pairs=200)
  assert _rel(two.b_simple, b_ref) < 0.10, (two, b_ref)
  assert abs(two.b_simple - b_ref) < 3 * two.stderr


# ------------------------------------------------------------------ models with state
def _batchnorm_task():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(3, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(jax.nn.relu(self.bn(self.a(x))))

  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 3)).astype(np.float32)
  return Task.from_flax_nnx("bn", Net, train={"x": x, "y": (x[:, 0] > 0).astype(np.int32)})


def test_batchnorm_task_two_batch_runs_and_per_example_is_refused():
  task = _batchnorm_task()
  params = task.init(jax.random.key(0))
  state = task.initial_state(jax.random.key(0))
  with pytest.raises(ValueError, match=r"noise_scale: estimator='per_example'.*model state.*"
                     r"use estimator='two_batch'"):
    noise_scale(task, params, model_state=state)
  res = noise_scale(task, params, model_state=state, estimator="two_batch",
                    batch_sizes=(8, 32), num_pairs=20)
  assert res.tr_sigma > 0 and math.isfinite(res.stderr)
  with pytest.raises(ValueError, match=r"noise_scale: model_state must have the structure"):
    noise_scale(task, params, model_state={"x": 1}, estimator="two_batch",
                batch_sizes=(8, 32), num_pairs=20)


def test_dropout_model_is_an_infinite_population_and_its_masks_add_noise():
  from flax import nnx

  from optaxlr.tasks import Dropout

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(3, 16, rngs=rngs)
      self.drop = Dropout(0.1, hparam="dropout", rngs=rngs)
      self.b = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(self.drop(jax.nn.relu(self.a(x))))

  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 3)).astype(np.float32)
  task = Task.from_flax_nnx("drop", Net, train={"x": x, "y": (x[:, 0] > 0).astype(np.int32)})
  params = task.init(jax.random.key(0))
  off = noise_scale(task, params, hparams={"dropout": 0.0})
  on = noise_scale(task, params, hparams={"dropout": 0.5})
  # random masks: no sample is exact, so the whole training set still has an error bar
  assert not on.finite_population and on.stderr > 0
  assert on.tr_sigma > 2 * off.tr_sigma  # measured: 10.9 vs 3.6
  # dropout at rate 0 is the plain model: the infinite-population formulas on all N examples
  state = task.initial_state(jax.random.key(0))  # empty: Dropout's streams are not state

  def grad_one(xi, yi):
    loss = lambda p: task.step_loss(p, state, {"x": xi[None], "y": yi[None]},  # noqa: E731
                                    jax.random.key(0), {"dropout": 0.0})[0]
    return ravel_pytree(jax.grad(loss)(params))[0]

  grads = jax.vmap(grad_one)(task.train["x"], task.train["y"])
  g = np.asarray(grads, np.float64)
  var = np.sum((g - g.mean(0)) ** 2) / (len(g) - 1)
  np.testing.assert_allclose([off.tr_sigma, off.g2],
                             [var, g.mean(0) @ g.mean(0) - var / len(g)], rtol=1e-4)
  with pytest.raises(TypeError, match=r"noise_scale: finite_population must be a bool or None"):
    noise_scale(task, params, finite_population=1)


def test_gradient_at_the_minimum_warns_and_reports_inf():
  # At the least-squares solution G = 0: the unbiased |G|^2 estimate from a half sample is
  # noise around 0 (key 1 draws a negative one), which is reported, not hidden.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 2))
  y = x @ np.array([1.0, -1.0]) + rng.standard_normal(64)
  w = np.linalg.lstsq(x, y, rcond=None)[0]
  task = Task.from_functions("ls", init=lambda k: {"w": jnp.zeros(2)},
                             apply=lambda p, x: x @ p["w"], loss="mse",
                             train={"x": x.astype(np.float32), "y": y.astype(np.float32)})
  with pytest.warns(RuntimeWarning, match=r"noise_scale: the estimate of \|G\|\^2 is .* <= 0"):
    res = noise_scale(task, {"w": jnp.asarray(w, jnp.float32)}, n_examples=32, key=1)
  assert res.b_simple == math.inf and res.g2 <= 0 and res.tr_sigma > 0


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small():
  task = optaxlr.tasks.teacher_student(d=3, n_train=40, hidden=(4,))
  return task, task.init(jax.random.key(0))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(estimator="exact"), ValueError,
     r"noise_scale: estimator must be one of \('per_example', 'two_batch'\), got "
     r"estimator='exact'"),
    (dict(n_examples=41), ValueError,
     r"noise_scale: n_examples must be in \[2, 40\] \(the training set has 40 examples\), "
     r"got n_examples=41"),
    (dict(n_examples=1), ValueError, r"n_examples must be in \[2, 40\]"),
    (dict(n_examples=10.0), TypeError, r"noise_scale: n_examples must be an int, got "
     r"n_examples=10.0"),
    (dict(estimator="two_batch", batch_sizes=(8, 64)), ValueError,
     r"noise_scale: batch_sizes\[1\] \(B_big\) must be in \[16, 40\] \(at least 2 \* B_small "
     r"= 16, at most the training set's 40 examples\), got batch_sizes\[1\] \(B_big\)=64"),
    (dict(estimator="two_batch"), ValueError, r"batch_sizes\[1\] \(B_big\) must be in"),
    (dict(estimator="two_batch", batch_sizes=(8, 12)), ValueError, r"must be in \[16, 40\]"),
    (dict(estimator="two_batch", batch_sizes=(8, 20)), ValueError,
     r"noise_scale: batch_sizes\[1\] \(B_big\) must be a multiple of B_small = 8"),
    (dict(estimator="two_batch", batch_sizes=(0, 20)), ValueError,
     r"batch_sizes\[0\] \(B_small\) must be in \[1, 20\]"),
    (dict(estimator="two_batch", batch_sizes=8), ValueError,
     r"noise_scale: batch_sizes must be a pair \(B_small, B_big\), got batch_sizes=8"),
    (dict(estimator="two_batch", batch_sizes=(4, 8), num_pairs=1), ValueError,
     r"noise_scale: num_pairs must be >= 2, got num_pairs=1"),
    (dict(estimator="two_batch", batch_sizes=(4, 8), n_examples=10), ValueError,
     r"noise_scale: n_examples applies to estimator='per_example'"),
    (dict(batch_sizes=(4, 8)), ValueError,
     r"noise_scale: batch_sizes applies to estimator='two_batch'"),
    (dict(num_pairs=10), ValueError, r"noise_scale: num_pairs applies to estimator='two_batch'"),
    (dict(chunk_size=0), ValueError, r"noise_scale: chunk_size must be >= 1, got chunk_size=0"),
    (dict(chunk_size=True), TypeError, r"noise_scale: chunk_size must be an int"),
    (dict(key="seed"), ValueError, r"noise_scale: key must be an int or a PRNG key, got 'seed'"),
])
def test_bad_arguments(small, kwargs, error, message):
  task, params = small
  with pytest.raises(error, match=message):
    noise_scale(task, params, **kwargs)


def test_bad_params(small):
  task, params = small
  with pytest.raises(ValueError, match=r"noise_scale: params must have the structure of "
                     r"task.init\(key\).*res.params_of\(config, seed\)"):
    noise_scale(task, {"w": jnp.zeros(3)})
  stacked = jax.tree.map(lambda v: jnp.stack([v, v]), params)  # a sweep's (seeds, ...) tree
  with pytest.raises(ValueError, match=r"noise_scale: params leaf .* has shape \(2, .*\), "
                     r"expected .* \(as task.init\(key\)\)"):
    noise_scale(task, stacked)
  with pytest.raises(TypeError, match=r"noise_scale: task must be an optaxlr.Task, got dict"):
    noise_scale({"train": {}}, params)


def test_host_fed_task_is_refused(small):
  task, params = small

  def make(seed):
    return iter([{"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.float32)}])

  fed = Task(name="stream", init=task.init, loss=task.loss, metrics=task.metrics, train=make)
  with pytest.raises(ValueError, match=r"noise_scale: task 'stream' is host-fed"):
    noise_scale(fed, params)


# ------------------------------------------------------ the helpers a sweep step can use
def test_micro_batch_stats_matches_numpy_under_jit_and_vmap():
  from optaxlr.noise import micro_batch_stats

  rng = np.random.default_rng(0)
  grads = {"a": rng.standard_normal((3, 4, 2, 5)),  # (C, k, ...)
           "b": rng.standard_normal((3, 4, 7))}

  def reference(c):
    flat = np.concatenate([grads["a"][c].reshape(4, -1), grads["b"][c]], axis=1)
    big = flat.mean(0)
    return np.mean(np.sum((flat - big) ** 2, axis=1)), big @ big

  expected = np.array([reference(c) for c in range(3)])  # (C, 2)
  tree = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), grads)
  got = jax.jit(jax.vmap(micro_batch_stats))(tree)
  np.testing.assert_allclose(np.stack(got, axis=1), expected, rtol=1e-5)
  one = micro_batch_stats(jax.tree.map(lambda v: v[1], tree))
  np.testing.assert_allclose(np.array(one), expected[1], rtol=1e-5)
  with pytest.raises(ValueError, match=r"micro_batch_stats: needs k >= 2 micro-batch gradients, "
                     r"got k=1"):
    micro_batch_stats({"w": jnp.ones((1, 3))})
  with pytest.raises(ValueError, match=r"micro_batch_stats: grads must be a pytree of arrays "
                     r"with a common leading axis"):
    micro_batch_stats({"w": jnp.ones((2, 3)), "b": jnp.ones((3,))})


def test_two_batch_estimate_is_elementwise_and_checks_its_sizes():
  from optaxlr.noise import two_batch_estimate

  # (S, C, E) arrays of window means, as a sweep would record them; N = 100, B = (8, 32)
  rng = np.random.default_rng(1)
  spread, big2 = rng.uniform(0.5, 2.0, (2, 3, 4)), rng.uniform(0.5, 2.0, (2, 3, 4))
  big2[0, 0, 0] = 0.01  # a window whose |G|^2 estimate falls below 0
  tr, g2, b = two_batch_estimate(spread, big2, (8, 32), 100)
  c8, c32 = (100 - 8) / (99 * 8), (100 - 32) / (99 * 32)
  np.testing.assert_allclose(tr, spread / (c8 - c32))
  np.testing.assert_allclose(g2, big2 - spread / (c8 - c32) * c32)
  np.testing.assert_allclose(b, np.where(g2 > 0, tr / np.where(g2 > 0, g2, 1), np.inf))
  assert b.shape == (2, 3, 4) and (g2 <= 0).any() and np.isinf(b[g2 <= 0]).all()
  with pytest.raises(ValueError, match=r"two_batch_estimate: batch_sizes must be \(B_small, "
                     r"B_big\) with 1 <= B_small < B_big, got batch_sizes=\(8, 8\)"):
    two_batch_estimate(1.0, 1.0, (8, 8), 100)
  with pytest.raises(ValueError, match=r"two_batch_estimate: B_big must be <= num_examples"):
    two_batch_estimate(1.0, 1.0, (8, 128), 100)
