"""Built-in tasks and Task adapters, checked against NumPy / scikit-learn restatements."""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optaxlr import tasks
from optaxlr.tasks import Task

SMALL = dict(hidden=(16,))


def _np_cross_entropy(logits, y):
  logits = np.asarray(logits, np.float64)
  m = logits.max(axis=1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
  return float(np.mean(lse - logits[np.arange(len(y)), y]))


def _synthetic(kind, **kw):
  builder = {"two_gaussians": tasks.two_gaussians, "sinusoid": tasks.sinusoid,
             "spiral": tasks.spiral}[kind]
  return builder(**{"n_test": 400, **SMALL, **kw})


def _raw(task, split):
  """Undo the standardisation: the generator's original coordinates."""
  return np.asarray(task.eval[split]["x"] if split != "train" else task.train["x"],
                    np.float64) * task.info["scale"] + task.info["mean"]


# ------------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits_mlp():
  return tasks.digits(n=400, seed=1, **SMALL)


def test_digits_shapes_and_info(digits_mlp):
  t = digits_mlp
  sizes = t.info["sizes"]
  assert sum(sizes.values()) == 400 and sizes["test"] == 80 and sizes["val"] == 80
  assert t.train["x"].shape == (240, 64) and t.train["y"].shape == (240,)
  assert t.eval["val"]["x"].shape == (80, 64) and t.eval["test"]["y"].shape == (80,)
  assert t.train["x"].dtype == jnp.float32 and jnp.issubdtype(t.train["y"].dtype, jnp.integer)
  assert isinstance(t.train["x"], jax.Array)
  assert t.info["num_classes"] == 10
  t.validate()
  cnn = tasks.digits("cnn", n=200, seed=1)
  assert cnn.train["x"].shape == (120, 8, 8, 1)
  cnn.validate()


def test_digits_no_leakage_and_stratified(digits_mlp):
  from sklearn.datasets import load_digits
  idx = digits_mlp.info["indices"]
  sets = {k: set(v.tolist()) for k, v in idx.items()}
  assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
  assert not sets["val"] & sets["test"]
  assert sum(len(s) for s in sets.values()) == 400
  y_all = load_digits().target
  for k, batch in {"train": digits_mlp.train, **digits_mlp.eval}.items():
    np.testing.assert_array_equal(np.asarray(batch["y"]), y_all[idx[k]])  # labels follow rows
  # stratified: each class's share of val/test within one example of the training share
  for k in ("val", "test"):
    counts = np.bincount(y_all[idx[k]], minlength=10)
    expected = np.bincount(y_all[idx["train"]], minlength=10) * len(idx[k]) / len(idx["train"])
    assert np.all(np.abs(counts - expected) <= 1.5)


def test_digits_standardised_with_train_statistics_only(digits_mlp):
  from sklearn.datasets import load_digits
  from sklearn.preprocessing import StandardScaler
  x_all = load_digits().data
  idx = digits_mlp.info["indices"]
  scaler = StandardScaler().fit(x_all[idx["train"]])  # independent reference
  for k, batch in {"train": digits_mlp.train, **digits_mlp.eval}.items():
    np.testing.assert_allclose(np.asarray(batch["x"]), scaler.transform(x_all[idx[k]]),
                               rtol=1e-5, atol=1e-5)
  # and NOT with statistics that include the held-out rows
  everything = StandardScaler().fit(x_all[np.concatenate(list(idx.values()))])
  assert not np.allclose(np.asarray(digits_mlp.eval["test"]["x"]),
                         everything.transform(x_all[idx["test"]]), atol=1e-3)


def test_digits_deterministic_from_seed():
  a, b, c = tasks.digits(n=200, seed=3), tasks.digits(n=200, seed=3), tasks.digits(n=200, seed=4)
  np.testing.assert_array_equal(np.asarray(a.train["x"]), np.asarray(b.train["x"]))
  np.testing.assert_array_equal(a.info["indices"]["test"], b.info["indices"]["test"])
  assert not np.array_equal(a.info["indices"]["test"], c.info["indices"]["test"])


def test_digits_bad_arguments():
  with pytest.raises(ValueError,
                     match="digits: model must be one of 'mlp', 'cnn', got model='rnn'"):
    tasks.digits("rnn")
  with pytest.raises(ValueError, match=r"digits: val_fraction \+ test_fraction must be < 1"):
    tasks.digits(val_fraction=0.5, test_fraction=0.5)
  with pytest.raises(ValueError, match=r"digits: val_fraction must be in \[0.0, 1.0\), got "
                                       r"val_fraction=-0.1"):
    tasks.digits(val_fraction=-0.1)


# ------------------------------------------------------------------------------ synthetic
@pytest.mark.parametrize("kind", ["two_gaussians", "sinusoid", "spiral"])
def test_synthetic_shapes_and_determinism(kind):
  a = _synthetic(kind, n_train=50, n_val=30, seed=5)
  b = _synthetic(kind, n_train=50, n_val=30, seed=5)
  c = _synthetic(kind, n_train=50, n_val=30, seed=6)
  d = 10 if kind == "two_gaussians" else 2
  assert a.train["x"].shape == (50, d) and a.eval["val"]["x"].shape == (30, d)
  assert a.eval["test"]["y"].shape == (400,) and a.info["num_classes"] == 2
  for split in ("train", "val", "test"):
    xa = a.train["x"] if split == "train" else a.eval[split]["x"]
    xb = b.train["x"] if split == "train" else b.eval[split]["x"]
    xc = c.train["x"] if split == "train" else c.eval[split]["x"]
    np.testing.assert_array_equal(np.asarray(xa), np.asarray(xb))
    assert not np.allclose(np.asarray(xa), np.asarray(xc))
  # splits are disjoint draws
  raw_tr, raw_te = _raw(a, "train"), _raw(a, "test")
  assert not (raw_tr[:, None, :] == raw_te[None, :, :]).all(-1).any()
  # the test set does not depend on n_train (own stream per split)
  e = _synthetic(kind, n_train=80, n_val=30, seed=5)
  np.testing.assert_allclose(_raw(e, "test"), _raw(a, "test"), rtol=1e-5, atol=1e-5)
  a.validate()


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.1, 0.29])
@pytest.mark.parametrize("kind", ["two_gaussians", "sinusoid", "spiral"])
def test_label_noise_rate_realised(kind, rate):
  t = _synthetic(kind, n_train=100, label_noise=rate)
  y, clean = np.asarray(t.train["y"]), t.info["train_clean_y"]
  flipped = y != clean
  assert flipped.sum() == math.floor(rate * 100 + 1e-9) == t.info["n_flipped"]
  np.testing.assert_array_equal(flipped, t.info["flipped"])
  assert set(np.unique(y)) <= {0, 1}


def test_sinusoid_val_test_labels_are_clean():
  t = _synthetic("sinusoid", label_noise=0.1)
  for split in ("val", "test"):
    x = _raw(t, split)
    want = (x[:, 0] + np.sin(x[:, 1]) > 0).astype(int)
    np.testing.assert_array_equal(np.asarray(t.eval[split]["y"]), want)
  x = _raw(t, "train")
  np.testing.assert_array_equal(t.info["train_clean_y"], (x[:, 0] + np.sin(x[:, 1]) > 0))


def test_two_gaussians_class_means_and_balance():
  t = tasks.two_gaussians(n_test=2000, d=3, mean=2.0, **SMALL)
  x, y = _raw(t, "test"), np.asarray(t.eval["test"]["y"])
  assert (y == 0).sum() == (y == 1).sum() == 1000
  np.testing.assert_allclose(x[y == 0].mean(0), 0.0, atol=0.15)
  np.testing.assert_allclose(x[y == 1].mean(0), 2.0, atol=0.15)
  np.testing.assert_allclose(x[y == 1].std(0), 1.0, atol=0.1)


def test_spiral_geometry():
  t = tasks.spiral(n_test=2000, spread=0.0, **SMALL)
  x, y = _raw(t, "test"), np.asarray(t.eval["test"]["y"])
  r, a = np.hypot(x[:, 0], x[:, 1]), np.arctan2(x[:, 1], x[:, 0])
  # class 1: radius == angle (mod 2 pi); class 0: radius == angle + pi (mod 2 pi).
  # (float32 storage: ~1e-5 error; the origin has no angle.)
  one, zero = (y == 1) & (r > 0.1), y == 0
  np.testing.assert_allclose(np.cos(r[one]), np.cos(a[one]), atol=1e-4)
  np.testing.assert_allclose(np.sin(r[one]), np.sin(a[one]), atol=1e-4)
  np.testing.assert_allclose(np.cos(r[zero] - np.pi), np.cos(a[zero]), atol=1e-4)
  assert (y == 1).sum() == zero.sum() == 1000
  assert r.max() <= 5 * np.pi + 1e-6


def test_synthetic_standardised_with_train_statistics():
  t = tasks.sinusoid(n_train=64, **SMALL)
  x = np.asarray(t.train["x"], np.float64)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(0), 1.0, atol=1e-5)
  raw = tasks.sinusoid(n_train=64, standardize=False, **SMALL)
  np.testing.assert_allclose(np.asarray(raw.eval["test"]["x"]), _raw(t, "test"), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: tasks.sinusoid(label_noise=1.0), r"sinusoid: label_noise must be in \[0.0, 1.0\), "
                                              r"got label_noise=1.0"),
    (lambda: tasks.spiral(n_train=1), r"spiral: n_train must be >= 2, got n_train=1"),
    (lambda: tasks.spiral(spread=-1.0), r"spiral: spread must be >= 0, got spread=-1.0"),
    (lambda: tasks.two_gaussians(loss="hinge"), r"two_gaussians: loss must be one of"),
    (lambda: tasks.sinusoid(d=1), r"sinusoid: d must be >= 2, got d=1"),
    (lambda: tasks.teacher_student(noise=-0.1), r"teacher_student: noise must be >= 0"),
])
def test_synthetic_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------------------------------ teacher-student
def test_teacher_student_targets_and_noise():
  t = tasks.teacher_student(d=4, n_train=2000, n_test=50, noise=0.3, teacher_hidden=(8,), **SMALL)
  w1, w2 = t.info["teacher"]
  x_te = np.asarray(t.eval["test"]["x"], np.float64)
  np.testing.assert_allclose(np.asarray(t.eval["test"]["y"]), (np.tanh(x_te @ w1) @ w2)[:, 0],
                             rtol=1e-5, atol=1e-5)
  x_tr = np.asarray(t.train["x"], np.float64)
  resid = np.asarray(t.train["y"], np.float64) - (np.tanh(x_tr @ w1) @ w2)[:, 0]
  assert abs(resid.std() - 0.3) < 0.03 and abs(resid.mean()) < 0.03
  a = tasks.teacher_student(seed=1, **SMALL)
  b = tasks.teacher_student(seed=1, **SMALL)
  np.testing.assert_array_equal(np.asarray(a.train["y"]), np.asarray(b.train["y"]))
  t.validate()


# ------------------------------------------------------------------------------ noisy teacher
def test_noisy_teacher_labels_noise_and_seed():
  t = tasks.noisy_teacher(n_train=3000, n_val=40, n_test=50, d=5, classes=4, label_noise=0.25,
                          teacher_hidden=(8,), **SMALL)
  assert t.train["x"].shape == (3000, 5) and t.train["y"].shape == (3000,)
  assert t.eval["val"]["x"].shape == (40, 5) and t.eval["test"]["y"].shape == (50,)
  w1, w2 = t.info["teacher"]
  assert w1.shape == (5, 8) and w2.shape == (8, 4)
  for split in ("val", "test"):  # clean: the teacher's argmax, restated
    x = np.asarray(t.eval[split]["x"], np.float64)
    np.testing.assert_array_equal(np.asarray(t.eval[split]["y"]),
                                  np.argmax(np.tanh(x @ w1) @ w2, axis=1))
  x_tr = np.asarray(t.train["x"], np.float64)
  clean = np.argmax(np.tanh(x_tr @ w1) @ w2, axis=1)
  np.testing.assert_array_equal(t.info["train_clean_y"], clean)
  y = np.asarray(t.train["y"])
  wrong = y != clean
  assert wrong.sum() == 750 and np.array_equal(wrong, t.info["flipped"])  # floor(0.25 * 3000)
  # a flipped label goes to each of the other classes about equally often
  shifts = np.bincount((y[wrong] - clean[wrong]) % 4, minlength=4)
  assert shifts[0] == 0 and shifts[1:].min() > 200
  assert set(np.unique(clean)) == {0, 1, 2, 3}
  a = tasks.noisy_teacher(n_train=100, n_val=10, n_test=10, seed=3, **SMALL)
  b = tasks.noisy_teacher(n_train=100, n_val=10, n_test=10, seed=3, **SMALL)
  c = tasks.noisy_teacher(n_train=100, n_val=10, n_test=10, seed=4, **SMALL)
  np.testing.assert_array_equal(np.asarray(a.train["x"]), np.asarray(b.train["x"]))
  np.testing.assert_array_equal(np.asarray(a.train["y"]), np.asarray(b.train["y"]))
  assert not np.array_equal(np.asarray(a.train["x"]), np.asarray(c.train["x"]))
  assert t.info["num_classes"] == 4
  t.validate()


@pytest.mark.parametrize("kw, match", [
    (dict(classes=1), r"noisy_teacher: classes must be >= 2, got classes=1"),
    (dict(label_noise=1.0), r"noisy_teacher: label_noise must be in \[0.0, 1.0\), got label_noise=1.0"),
    (dict(n_train=1), r"noisy_teacher: n_train must be >= 2, got n_train=1"),
])
def test_noisy_teacher_bad_arguments(kw, match):
  with pytest.raises(ValueError, match=match):
    tasks.noisy_teacher(**kw)


def test_noisy_teacher_a_tuned_decay_beats_the_best_constant_rate():
  """The property the task exists for: at its defaults, cosine decay's clean test error is below
  the best constant rate's (picked on val among three) by several paired standard errors."""
  import optaxlr
  from optaxlr import search, schedules
  task = tasks.noisy_teacher()
  steps, seeds, lrs = 2000, 3, [0.003, 0.01, 0.03]
  space = search.zip(kind=["constant"] * 3 + ["cosine"], lr=lrs + [0.03])

  def opt(h):
    return optax.sgd(search.switch(h["kind"], {
        "constant": schedules.constant(h["lr"]),
        "cosine": optax.cosine_decay_schedule(h["lr"], steps)}), momentum=0.9)

  res = optaxlr.sweep(task, opt, space, steps=steps, batch_size=32, eval_every=steps,
                      seeds=seeds, execution=optaxlr.Execution(update_ratio=False, progress=False))
  val, test = np.asarray(res.final("val/error")), np.asarray(res.final("test/error"))
  best_constant = int(np.argmin(val[:, :3].mean(0)))
  diff = test[:, best_constant] - test[:, 3]  # paired over seeds: constant - decay
  se = diff.std(ddof=1) / np.sqrt(seeds)
  assert diff.mean() > 0.02 and diff.mean() > 4 * se, (diff, se)


# ------------------------------------------------------------------------------ training works
def _train(task, tx, steps, batch=64):
  """Full-batch training on the first ``batch`` examples: one compiled program (init + scan)."""
  data = {k: v[:batch] for k, v in task.train.items()}

  @jax.jit
  def run(key):
    params = task.init(key)

    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(task.loss)(params, data)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    _, losses = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return losses

  return np.asarray(run(jax.random.key(0)))


@pytest.mark.parametrize("build", [
    lambda: tasks.digits(n=200, **SMALL),
    pytest.param(lambda: tasks.digits("cnn", n=200, channels=(4, 8)), marks=pytest.mark.slow),
    lambda: tasks.two_gaussians(n_test=10, **SMALL),
    lambda: tasks.sinusoid(n_test=10, **SMALL),
    lambda: tasks.spiral(n_test=10, **SMALL),
    lambda: tasks.spiral(n_test=10, loss="logistic", **SMALL),
    lambda: tasks.teacher_student(n_test=10, **SMALL),
    lambda: tasks.noisy_teacher(n_train=200, n_val=10, n_test=10, classes=3, label_noise=0.0,
                                **SMALL),
], ids=["digits-mlp", "digits-cnn", "two_gaussians", "sinusoid", "spiral", "spiral-logistic",
        "teacher_student", "noisy_teacher"])
def test_a_few_sgd_steps_reduce_the_loss(build):
  losses = _train(build(), optax.sgd(0.1), steps=15)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0]


# ------------------------------------------------------------------------------ adapters
_X = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
_Y = np.array([0, 1, 1, 0, 1, 0])


def test_from_flax_nnx_loss_equals_hand_computation():
  task = Task.from_flax_nnx("lin", lambda rngs: nnx.Linear(3, 2, rngs=rngs), "cross_entropy",
                            train={"x": _X, "y": _Y}, eval={"val": {"x": _X[:2], "y": _Y[:2]}},
                            info={"num_classes": 2})
  task.validate()
  params = task.init(jax.random.key(7))
  assert isinstance(params, nnx.State)
  kernel, bias = np.asarray(params["kernel"][...]), np.asarray(params["bias"][...])
  bias = bias + 0.3  # make the bias matter
  params["bias"][...] = jnp.asarray(bias)
  logits = _X.astype(np.float64) @ kernel + bias
  np.testing.assert_allclose(float(task.loss(params, task.train)), _np_cross_entropy(logits, _Y),
                             rtol=1e-5)
  m = task.metrics(params, task.train)
  acc = np.mean(logits.argmax(1) == _Y)
  np.testing.assert_allclose(float(m["accuracy"]), acc, rtol=1e-6)
  np.testing.assert_allclose(float(m["error"]), 1 - acc, rtol=1e-6, atol=1e-7)
  # jit equals eager; init under vmap equals a loop of inits (the engine relies on both)
  np.testing.assert_allclose(float(jax.jit(task.loss)(params, task.train)),
                             float(task.loss(params, task.train)), rtol=1e-6)
  keys = jax.random.split(jax.random.key(1), 3)
  batched = jax.vmap(task.init)(keys)
  for i in range(3):
    one = task.init(keys[i])
    np.testing.assert_allclose(np.asarray(batched["kernel"][...][i]),
                               np.asarray(one["kernel"][...]), rtol=1e-6)


def test_from_linen_loss_equals_hand_computation():
  task = Task.from_linen("lin", nn.Dense(1), "mse", train={"x": _X, "y": _Y.astype(np.float32)})
  task.validate()
  params = task.init(jax.random.key(2))
  assert set(params) == {"kernel", "bias"}
  params = {"kernel": params["kernel"], "bias": jnp.array([0.5])}
  pred = (_X.astype(np.float64) @ np.asarray(params["kernel"]))[:, 0] + 0.5
  want = np.mean((pred - _Y) ** 2)
  np.testing.assert_allclose(float(task.loss(params, task.train)), want, rtol=1e-5)
  np.testing.assert_allclose(float(task.metrics(params, task.train)["rmse"]), np.sqrt(want),
                             rtol=1e-5)


@pytest.mark.parametrize("labels", [_Y, 2 * _Y - 1], ids=["01", "pm1"])
def test_from_functions_logistic_equals_hand_computation(labels):
  w = np.array([0.5, -1.0, 2.0], np.float32)
  task = Task.from_functions("logreg", lambda key: {"w": jnp.asarray(w)},
                             lambda p, x: x @ p["w"], "logistic",
                             train={"x": _X, "y": labels})
  task.validate()
  f = _X.astype(np.float64) @ w
  s = np.where(labels > 0, 1.0, -1.0)
  want = np.mean(np.log1p(np.exp(-s * f)))
  params = task.init(jax.random.key(0))
  np.testing.assert_allclose(float(task.loss(params, task.train)), want, rtol=1e-5)
  acc = np.mean(np.where(f > 0, 1.0, -1.0) == s)
  np.testing.assert_allclose(float(task.metrics(params, task.train)["accuracy"]), acc)


def test_from_functions_custom_loss_and_metrics():
  task = Task.from_functions("abs", lambda key: jnp.zeros(()), lambda p, x: x[:, 0] + p,
                             loss=lambda out, y: jnp.mean(jnp.abs(out - y)),
                             metrics=lambda out, y: {"max": jnp.max(jnp.abs(out - y))},
                             train={"x": _X, "y": np.zeros(6, np.float32)})
  m = task.metrics(jnp.float32(0.0), task.train)
  np.testing.assert_allclose(float(m["loss"]), np.mean(np.abs(_X[:, 0])), rtol=1e-6)
  np.testing.assert_allclose(float(m["max"]), np.max(np.abs(_X[:, 0])), rtol=1e-6)


def test_adapters_carry_model_state():
  """BatchNorm statistics (nnx BatchStat, linen batch_stats) are model state, not refused."""
  class WithBN(nnx.Module):
    def __init__(self, rngs):
      self.lin = nnx.Linear(3, 2, rngs=rngs)
      self.bn = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
      return self.bn(self.lin(x))

  task = Task.from_flax_nnx("bn", WithBN, train={"x": _X, "y": _Y})
  assert task.stateful
  state = task.initial_state(jax.random.key(0))
  assert set(state["bn"]) == {"mean", "var"}
  with pytest.raises(ValueError, match=r"Task.from_functions\('f'\): loss must be one of"):
    Task.from_functions("f", lambda k: 0.0, lambda p, x: x, "hinge", train={"x": _X, "y": _Y})


def test_linen_batchnorm_and_dropout_rows_equal_a_linen_loop():
  """A linen module with BatchNorm and Dropout: a sweep's row equals a hand-written linen loop
  (mutable batch_stats, dropout key stream_key(model_key(key, seed, t), "dropout"))."""
  import optax

  import optaxlr
  from optaxlr.engine import batch_indices, model_key, run_keys
  from optaxlr.tasks import stream_key

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      x = nn.Dense(8)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
      return nn.Dense(3)(x)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 5)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  task = Task.from_linen("ln", Net(), train={"x": x, "y": y}, eval={"val": {"x": x, "y": y}},
                         rng_streams=("dropout",), train_kwargs={"train": True},
                         eval_kwargs={"train": False})
  res = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"], momentum=0.9),
                      optaxlr.search.grid(lr=[0.05, 0.2]), steps=6, batch_size=16, seeds=2,
                      eval_every=6, execution=optaxlr.Execution(progress=False))
  module = Net()
  for s, i in ((0, 1), (1, 0)):
    init_key, data_key = run_keys(0, s)
    variables = module.init({"params": init_key, "dropout": stream_key(init_key, "dropout")},
                            x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd([0.05, 0.2][i], momentum=0.9)
    opt_state = tx.init(params)
    losses = []
    for t in range(6):
      idx = np.asarray(batch_indices(data_key, t, 64, 16))

      def loss_fn(p, stats=stats, idx=idx, t=t, s=s):
        out, new = module.apply({"params": p, "batch_stats": stats}, x[idx], train=True,
                                mutable=["batch_stats"],
                                rngs={"dropout": stream_key(model_key(0, s, t), "dropout")})
        return optax.softmax_cross_entropy_with_integer_labels(out, y[idx]).mean(), new
      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params, stats = optax.apply_updates(params, updates), new["batch_stats"]
      losses.append(float(loss))
    np.testing.assert_allclose(res.batch_loss[s, i], losses, rtol=1e-4, atol=1e-6)
    out = module.apply({"params": params, "batch_stats": stats}, x, train=False)
    val = float(optax.softmax_cross_entropy_with_integer_labels(out, y).mean())
    np.testing.assert_allclose(res.metrics["val/loss"][s, i, -1], val, rtol=1e-4)


def test_minibatch_by_traced_index_and_identity_hash():
  task = tasks.sinusoid(n_train=20, n_test=10, **SMALL)
  params = task.init(jax.random.key(0))

  @jax.jit
  def loss_at(idx):
    return task.loss(params, jax.tree.map(lambda a: a[idx], task.train))

  idx = jnp.array([3, 1, 4])
  want = task.loss(params, {k: v[np.array([3, 1, 4])] for k, v in task.train.items()})
  np.testing.assert_allclose(float(loss_at(idx)), float(want), rtol=1e-6)
  assert {task: 1}[task] == 1 and task == task  # hashable, compared by identity
  assert task != tasks.sinusoid(n_train=20, n_test=10, **SMALL)


# ------------------------------------------------------------------------------ validate
def _lin_task(train, eval=None, info=None):  # noqa: A002
  return Task.from_functions("t", lambda key: {"w": jnp.zeros((3, 2))}, lambda p, x: x @ p["w"],
                             train=train, eval=eval or {}, info=info or {"num_classes": 2})


def test_validate_nan_and_inf():
  x = _X.copy()
  x[3, 1] = np.nan
  with pytest.raises(ValueError, match=r"Task.validate: task 't', split 'train', key 'x': 1 "
                                       r"non-finite value\(s\) \(NaN\), first in example 3"):
    _lin_task({"x": x, "y": _Y}).validate()
  x = _X.copy()
  x[1, 0] = np.inf
  with pytest.raises(ValueError, match=r"split 'val', key 'x': 1 non-finite value\(s\) \(inf\), "
                                       r"first in example 1"):
    _lin_task({"x": _X, "y": _Y}, eval={"val": {"x": x, "y": _Y}}).validate()


def test_validate_mismatched_lengths_and_keys():
  with pytest.raises(ValueError, match=r"split 'train': all arrays must have the same number of "
                                       r"examples \(leading length\), got 'x' has 6, 'y' has 5"):
    _lin_task({"x": _X, "y": _Y[:5]}).validate()
  with pytest.raises(ValueError, match=r"split 'val': keys \['x'\] differ from the training "
                                       r"split's keys \['x', 'y'\]"):
    _lin_task({"x": _X, "y": _Y}, eval={"val": {"x": _X}}).validate()
  with pytest.raises(ValueError, match=r"split 'test', key 'x': per-example shape \(4,\) differs "
                                       r"from the training split's \(3,\)"):
    _lin_task({"x": _X, "y": _Y}, eval={"test": {"x": np.zeros((2, 4)), "y": _Y[:2]}}).validate()


def test_validate_bad_labels():
  with pytest.raises(ValueError, match=r"split 'train', key 'y': labels must be in \[0, 2\), got "
                                       r"2 in example 4"):
    _lin_task({"x": _X, "y": np.array([0, 1, 1, 0, 2, 0])}).validate()
  with pytest.raises(ValueError, match=r"key 'y': labels must be integers for num_classes=2, got "
                                       r"dtype float32"):
    _lin_task({"x": _X, "y": _Y.astype(np.float32)}).validate()
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got -1 in example 0"):
    t = tasks.digits(n=100, **SMALL)
    bad = {"x": t.train["x"], "y": t.train["y"].at[0].set(-1)}
    Task(t.name, t.init, t.loss, t.metrics, bad, t.eval, t.info).validate()


def test_validate_labels_against_the_models_outputs_without_num_classes():
  """loss="cross_entropy" without info["num_classes"]: K is the last axis of apply's output."""
  import optaxlr

  def three(train, eval=None, **kw):  # noqa: A002
    return Task.from_functions("three", lambda key: {"w": jnp.zeros((3, 3))},
                               lambda p, x: x @ p["w"], train=train, eval=eval or {}, **kw)

  y = np.array([0, 1, 2, 0, 1, 2])
  three({"x": _X, "y": y}, {"val": {"x": _X, "y": y}}).validate()
  # Why: optax reads label -1 as the last class without a word, and label K as a NaN loss.
  logits = jnp.array([[0.0, 1.0, 3.0]])
  ce = optax.softmax_cross_entropy_with_integer_labels
  assert float(ce(logits, jnp.array([-1]))[0]) == float(ce(logits, jnp.array([2]))[0])
  assert np.isnan(ce(logits, jnp.array([3]))[0])
  for split, bad, row in [("train", -1, 0), ("val", 3, 4)]:
    yb = y.copy()
    yb[row] = bad
    if split == "train":
      task = three({"x": _X, "y": yb}, {"val": {"x": _X, "y": y}})
    else:
      task = three({"x": _X, "y": y}, {"val": {"x": _X, "y": yb}})
    msg = (f"Task.validate: task 'three', split '{split}', key 'y': labels must be in [0, 3), "
           f"got {bad} in example {row} (1 such label(s); 3 classes: the last axis of apply's "
           "output)")
    with pytest.raises(ValueError, match=re.escape(msg)):
      task.validate()
    with pytest.raises(ValueError, match=re.escape(msg)):  # before anything compiles
      optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), {"lr": [0.1]}, steps=2, batch_size=2, execution=optaxlr.Execution(progress=False))
  with pytest.raises(ValueError, match=r"key 'y': labels must be integers for 3 classes: the "
                                       r"last axis of apply's output, got dtype float32"):
    three({"x": _X, "y": y.astype(np.float32)}).validate()
  # another label key, and info["num_classes"] taking precedence over the outputs
  with pytest.raises(ValueError, match=r"key 'label': labels must be in \[0, 3\), got 5"):
    three({"x": _X, "label": np.array([0, 5, 1, 1, 0, 2])}, y_key="label").validate()
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got 2 in example 2 .*"
                                       r"num_classes=2\)"):
    three({"x": _X, "y": y}, info={"num_classes": 2}).validate()
  # a sequence model: logits (B, T, K), labels (B, T)
  seq = Task.from_functions("seq", lambda key: {"w": jnp.zeros((3, 4))},
                            lambda p, x: jnp.einsum("btd,dk->btk", x, p["w"]),
                            train={"x": np.zeros((2, 5, 3), np.float32),
                                   "y": np.array([[0, 1, 2, 3, 4]] * 2)})
  with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 4 in example 0 "
                                       r"\(2 such label\(s\)"):
    seq.validate()
  # a custom loss is not read: it may take anything as targets
  Task.from_functions("soft", lambda key: {"w": jnp.zeros((3, 3))}, lambda p, x: x @ p["w"],
                      lambda out, t: jnp.mean((out - t) ** 2),
                      train={"x": _X, "y": np.full((6, 3), 7.0, np.float32)}).validate()


def test_validate_logistic_labels():
  def binary(y):
    return Task.from_functions("bin", lambda key: {"w": jnp.zeros(3)}, lambda p, x: x @ p["w"],
                               "logistic", train={"x": _X, "y": y})

  binary(np.array([0, 1, 1, 0, 1, 0])).validate()
  binary(np.array([-1, 1, 1, -1, 1, -1])).validate()
  binary(np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0], np.float32)).validate()
  with pytest.raises(ValueError, match=re.escape(
      "Task.validate: task 'bin', split 'train', key 'y': labels of loss='logistic' must be in "
      "{0, 1} or {-1, +1}, got 2 in example 3 (2 such label(s))")):
    binary(np.array([0, 1, 1, 2, 2, 0])).validate()


def test_validate_functions():
  bad_shape = Task.from_functions("t", lambda key: {"w": jnp.zeros((3, 2))},
                                  lambda p, x: x @ p["w"], loss=lambda out, y: out,
                                  train={"x": _X, "y": _Y})
  with pytest.raises(ValueError, match=r"Task.validate: task 't': loss\(params, batch\) must "
                                       r"return a float scalar"):
    bad_shape.validate()
  wrong_dims = Task.from_functions("t", lambda key: {"w": jnp.zeros((4, 2))},
                                   lambda p, x: x @ p["w"], train={"x": _X, "y": _Y})
  with pytest.raises(ValueError, match=r"loss\(params, batch\) failed on 2 training examples: "
                                       r"TypeError"):
    wrong_dims.validate()

  def broken_init(key):
    raise RuntimeError("boom")

  with pytest.raises(ValueError, match=r"init\(key\) failed: RuntimeError: boom"):
    Task.from_functions("t", broken_init, lambda p, x: x, train={"x": _X, "y": _Y}).validate()


# ------------------------------------------------------------------------------ objectives
def test_objectives_against_numpy_and_optax():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((5, 4)).astype(np.float32)
  y = np.array([0, 3, 1, 1, 2])
  np.testing.assert_allclose(float(tasks.cross_entropy(logits, y)), _np_cross_entropy(logits, y),
                             rtol=1e-5)
  np.testing.assert_allclose(float(tasks.accuracy(logits, y)), np.mean(logits.argmax(1) == y))
  f = rng.standard_normal(5).astype(np.float32)
  yb = np.array([0, 1, 1, 0, 1])
  np.testing.assert_allclose(float(tasks.logistic(f, yb)),
                             float(jnp.mean(optax.sigmoid_binary_cross_entropy(f, yb))), rtol=1e-5)
  np.testing.assert_allclose(float(tasks.logistic(f[:, None], 2 * yb - 1)),
                             float(tasks.logistic(f, yb)), rtol=1e-6)
  with pytest.raises(ValueError, match=r"mse: outputs and targets must have the same shape, got "
                                       r"\(5, 2\) and \(5,\)"):
    tasks.mse(jnp.zeros((5, 2)), jnp.zeros(5))


# ------------------------------------------------------------------------------ hand-off
class _DropNet(nnx.Module):
  """A model whose dropout rate is a swept hyperparameter (constructor's rate 0.1)."""

  def __init__(self, rngs):
    self.lin = nnx.Linear(64, 10, rngs=rngs)
    self.drop = tasks.Dropout(0.1, hparam="dropout", rngs=rngs)

  def __call__(self, x):
    return self.lin(self.drop(x))


def _drop_task(**kw):
  rng = np.random.default_rng(0)
  data = {"x": rng.standard_normal((32, 64)).astype(np.float32),
          "y": rng.integers(0, 10, 32)}
  return Task.from_flax_nnx("drop", _DropNet, train=data, eval={"val": data}, **kw)


def test_to_model_restores_the_swept_model_hyperparameters():
  """The hand-off sets the config's dropout rate into the layer (it kept the constructor's
  0.1): the restored layer drops a fraction 0.4 of its inputs and scales the others by
  1 / 0.6, nnx.Dropout's formula written here in NumPy."""
  task = _drop_task()
  key = jax.random.key(5)  # a run's parameters and state (as res.params_of / model_state_of)
  params, state = task.init(key), task.initial_state(key)
  config = {"lr": np.float32(1e-2), "dropout": np.float32(0.4)}  # as res.config(i)
  assert task.to_model(params, state).drop.rate == 0.1  # without hparams: the constructor's
  model = task.to_model(params, state, hparams=config)
  assert model.drop.rate == pytest.approx(0.4)
  x = jnp.ones((200_000,))
  tasks.reseed_nnx(model, jax.random.key(3))
  out = np.asarray(model.drop(x))
  kept = out[out != 0]
  np.testing.assert_allclose(kept, 1 / 0.6, rtol=1e-6)
  assert abs((out == 0).mean() - 0.4) < 0.005  # 200,000 Bernoulli draws: sd 0.0011
  # the parameters are the run's (to_model rebuilt them, it did not re-initialise them)
  np.testing.assert_array_equal(np.asarray(model.lin.kernel[...]),
                                np.asarray(params["lin"]["kernel"][...]))
  with pytest.raises(ValueError, match="Dropout at drop reads hyperparameter 'dropout', which "
                     "hparams does not hold"):
    task.to_model(params, state, hparams={"lr": 1e-2})
  with pytest.raises(ValueError, match="hparams\\['dropout'\\] must be one number"):
    task.to_model(params, state, hparams={"dropout": [0.1, 0.2]})
  # configure= runs too, with the values as Python floats
  seen = {}
  configured = _drop_task(configure=lambda m, h: seen.update(h))
  configured.to_model(configured.init(jax.random.key(0)), None, hparams={"dropout": 0.3})
  assert seen == {"dropout": 0.3} and isinstance(seen["dropout"], float)


def test_linen_to_model_refuses_hparams():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dropout(0.1, deterministic=not train)(nn.Dense(2)(x))

  task = Task.from_linen("l", Net(), train={"x": _X, "y": _Y}, rng_streams=("dropout",),
                         train_kwargs={"train": True})
  params = task.init(jax.random.key(0))
  assert set(task.to_model(params)) == {"params"}
  with pytest.raises(ValueError, match="linen variables hold no hyperparameters"):
    task.to_model(params, None, hparams={"dropout": 0.3})


def test_set_opt_state_sets_the_optimizer_step():
  """nnx.Optimizer.step equals the updates the run made (it stayed 0): read from optax's
  update counts, or given; a state without counts needs step=."""
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(optax.constant_schedule(-0.1)))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):  # three updates, as a run of 3 steps made
    _, state = tx.update(grads, state, params)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  tasks.set_opt_state(opt, state)
  assert int(opt.step[...]) == 3
  tasks.set_opt_state(opt, state, step=7)
  assert int(opt.step[...]) == 7
  with pytest.raises(ValueError, match="step must be an integer >= 0"):
    tasks.set_opt_state(opt, state, step=-1)
  sgd = optax.sgd(0.1)
  opt = nnx.Optimizer(model, sgd, wrt=nnx.Param)
  with pytest.raises(ValueError, match="holds no update count.*pass step="):
    tasks.set_opt_state(opt, sgd.init(params))
  tasks.set_opt_state(opt, sgd.init(params), step=4)
  assert int(opt.step[...]) == 4
