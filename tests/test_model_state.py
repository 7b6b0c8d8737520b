"""Real models in the core: BatchNorm statistics and Dropout keys per run, hyperparameters that
reach the model, config blocks (lax.map), evaluation in pieces, mixed precision, and handing a
run back to flax.nnx. References are standalone flax.nnx / optax loops written here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import search
from optaxlr.engine import batch_indices, model_key, run_keys
from optaxlr.tasks import Dropout, Task, reseed_nnx


class BNNet(nnx.Module):
  """A small convnet with BatchNorm and a Dropout whose rate is set from the sweep."""

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), use_bias=False, rngs=rngs)  # BN follows
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.drop = Dropout(0.1, hparam="dropout", rngs=rngs)
    self.head = nnx.Linear(4 * 16, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.conv(x)))
    x = x.reshape(x.shape[0], 4, 2, 4, 2, 4).max(axis=(2, 4))
    x = self.drop(x.reshape(x.shape[0], -1))
    return self.head(x)



def with_ex(kw, **ex):
  """``kw`` with its ``execution`` updated by ``ex`` (the Execution settings of one call)."""
  return {**kw, "execution": dataclasses.replace(kw.get("execution") or optaxlr.Execution(), **ex)}

def _digits(n_train=96, n_val=40):
  from sklearn.datasets import load_digits

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  tr = {"x": x[:n_train], "y": y[:n_train]}
  va = {"x": x[n_train:n_train + n_val], "y": y[n_train:n_train + n_val]}
  return tr, va


def _task(**kw):
  tr, va = _digits()
  return Task.from_flax_nnx("bn-cnn", BNNet, "cross_entropy", train=tr, eval={"val": va}, **kw)


def opt(h):
  return optax.adamw(h["lr"], weight_decay=h["wd"])


def _standalone(task_train, val, hp, seed, steps, batch_size, key=0, model=None, optimizer=None,
                start=0):
  """A plain flax.nnx loop: same init key, batch order and dropout keys as row (seed, config)."""
  init_key, data_key = run_keys(key, seed)
  if model is None:
    model = BNNet(nnx.Rngs(init_key))
    optimizer = nnx.Optimizer(model, opt(hp), wrt=nnx.Param)
  n = len(task_train["y"])
  losses = []

  def loss_fn(m, batch):
    return optax.softmax_cross_entropy_with_integer_labels(m(batch["x"]), batch["y"]).mean()

  for t in range(start, start + steps):
    idx = np.asarray(batch_indices(data_key, t, n, batch_size))
    batch = {k: jnp.asarray(v[idx]) for k, v in task_train.items()}
    model.train()
    reseed_nnx(model, model_key(key, seed, t))
    model.drop.rate = hp["dropout"]
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    losses.append(float(loss))
  model.eval()
  logits = model(jnp.asarray(val["x"]))
  val_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, val["y"]).mean())
  val_err = float(1 - (jnp.argmax(logits, -1) == val["y"]).mean())
  return np.array(losses), val_loss, val_err, model, optimizer


def test_batchnorm_dropout_rows_equal_standalone_nnx_loops():
  task = _task()
  space = search.grid(lr=[3e-3, 1e-2], wd=[1e-2], dropout=[0.0, 0.3])
  res = optaxlr.sweep(task, opt, space, steps=12, batch_size=16, seeds=2, eval_every=6,
                      execution=optaxlr.Execution(progress=False, keep_params=True))
  assert res.info["vectorize"] == 1  # a conv model on the CPU: configs one block at a time
  tr, va = _digits()
  for s, i in ((0, 0), (0, 3), (1, 1)):
      hp = res.config(i)
      losses, vl, ve, model, _ = _standalone(tr, va, hp, s, 12, 16)
      np.testing.assert_allclose(res.batch_loss[s, i], losses, rtol=2e-4, atol=2e-5)
      np.testing.assert_allclose(res.metrics["val/loss"][s, i, -1], vl, rtol=2e-4, atol=2e-5)
      assert abs(res.metrics["val/error"][s, i, -1] - ve) < 1e-6
      # the BatchNorm statistics moved and equal the loop's
      bn = res.model_state_of(i, seed=s)["bn"]
      np.testing.assert_allclose(np.asarray(bn["mean"][...]), np.asarray(model.bn.mean[...]),
                                 rtol=2e-4, atol=2e-6)
  # dropout changes the numbers (it is really applied), wd and lr too
  assert not np.allclose(res.batch_loss[0, 0], res.batch_loss[0, 1])


def test_model_hyperparameters_are_checked():
  task = _task()
  # the model reads 'dropout': a space without it is a clear error naming the name
  with pytest.raises(ValueError, match="reads hyperparameter 'dropout'"):
    optaxlr.sweep(task, opt, search.grid(lr=[1e-2], wd=[0.0]), steps=2, batch_size=8, execution=optaxlr.Execution(progress=False))
  # an axis read by nothing (the optimizer, the objective nor the model) is an error
  with pytest.raises(ValueError, match="'mom' is read by neither"):
    optaxlr.sweep(task, opt, search.grid(lr=[1e-2], wd=[0.0], dropout=[0.1], mom=[0.0, 0.5]),
                  steps=2, batch_size=8, execution=optaxlr.Execution(progress=False))


def test_vectorized_blocks_equal_fully_vmapped():
  """Configs in blocks one after another (lax.map) give the fully vmapped numbers."""
  task = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
  space = search.grid(lr=[3e-3, 1e-2], wd=[0.0, 1e-2])
  kw = dict(steps=6, batch_size=16, seeds=2, eval_every=3, execution=optaxlr.Execution(progress=False))
  full = optaxlr.sweep(task, opt, space, **with_ex(kw, vectorize=None))
  assert full.info["vectorize"] is None
  auto = optaxlr.sweep(task, opt, space, **kw)
  assert auto.info["vectorize"] is None  # no convolution: fully vectorised
  for v in (1, 2):
    r = optaxlr.sweep(task, opt, space, **with_ex(kw, vectorize=v))
    np.testing.assert_allclose(r.batch_loss, full.batch_loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(r.metrics["val/loss"], full.metrics["val/loss"], rtol=2e-5)
  three = optaxlr.sweep(task, opt, search.grid(lr=[3e-3, 1e-2, 2e-2], wd=[0.0]), 
                        **with_ex(kw, vectorize=2))  # padded to a multiple of 2
  np.testing.assert_allclose(three.batch_loss[:, :2], full.batch_loss[:, [0, 2]], rtol=2e-5,
                             atol=1e-6)


def test_eval_in_pieces_equals_one_piece():
  task = optaxlr.tasks.digits(n=300)
  space = search.grid(lr=[1e-2, 3e-2])
  kw = dict(steps=8, batch_size=32, seeds=2, eval_every=4, execution=optaxlr.Execution(progress=False))
  whole = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), space, **kw)
  n_val = len(task.eval["val"]["y"])
  assert n_val % 7
  pieces = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), space, **with_ex(kw, eval_batch_size=7))
  for k, v in whole.metrics.items():
    np.testing.assert_allclose(pieces.metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_mixed_precision_bfloat16():
  task = optaxlr.tasks.digits(n=300)
  space = search.grid(lr=[3e-3, 1e-2])
  kw = dict(steps=30, batch_size=32, eval_every=10, execution=optaxlr.Execution(progress=False, keep_params=True))
  f32 = optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), space, **kw)
  bf16 = optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), space, **with_ex(kw, compute_dtype="bfloat16"))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16.params))  # master weights
  assert bf16.batch_loss.dtype == np.float32
  # not the same numbers (bfloat16 has an 8-bit mantissa), but the same training
  assert not np.array_equal(bf16.batch_loss, f32.batch_loss)
  np.testing.assert_allclose(bf16.metrics["val/loss"][..., -1], f32.metrics["val/loss"][..., -1],
                             rtol=0.1)
  with pytest.raises(ValueError, match="compute_dtype must be"):
    optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), space, **with_ex(kw, compute_dtype="float16"))


def test_continued_run_equals_the_sweep_carried_on():
  """params_of + opt_state_of + model_state_of put back into nnx and trained on with
  nnx.Optimizer equals the sweep's own run for 2T steps."""
  task = _task()
  space = search.grid(lr=[1e-2], wd=[1e-2], dropout=[0.2])
  kw = dict(batch_size=16, seeds=1, execution=optaxlr.Execution(progress=False, keep_params=True))
  long = optaxlr.sweep(task, opt, space, steps=12, eval_every=12, **kw)
  short = optaxlr.sweep(task, opt, space, steps=6, eval_every=6, **kw)
  hp = short.config(0)
  model = task.to_model(short.params_of(0), short.model_state_of(0))
  assert isinstance(model, BNNet)
  optimizer = nnx.Optimizer(model, opt(hp), wrt=nnx.Param)
  optaxlr.tasks.set_opt_state(optimizer, short.opt_state_of(0))
  tr, va = _digits()
  losses, vl, _, _, _ = _standalone(tr, va, hp, 0, 6, 16, model=model, optimizer=optimizer,
                                    start=6)
  np.testing.assert_allclose(losses, long.batch_loss[0, 0, 6:], rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(vl, long.metrics["val/loss"][0, 0, -1], rtol=2e-4)
  # by hyperparameter values as well as by index
  assert short.index_of({"lr": 1e-2, "wd": 1e-2, "dropout": 0.2}) == 0
  with pytest.raises(ValueError, match="keep_params=True"):
    optaxlr.sweep(task, opt, space, steps=2, batch_size=16, execution=optaxlr.Execution(progress=False)).params_of(0)


def test_save_and_load_keep_the_runs_state(tmp_path):
  task = _task()
  space = search.grid(lr=[1e-2, 3e-3], wd=[1e-2], dropout=[0.2])
  res = optaxlr.sweep(task, opt, space, steps=3, eval_every=3, batch_size=16, seeds=2,
                      execution=optaxlr.Execution(progress=False, keep_params=True))
  path = res.save(tmp_path / "r.npz")
  assert (tmp_path / "r.npz.state").is_dir()
  numbers_only = optaxlr.load(path)
  assert numbers_only.params is None and numbers_only.info["state_file"] == "r.npz.state"
  with pytest.raises(ValueError, match="optaxlr.load\\(path, task=task, optimizer=optimizer\\)"):
    numbers_only.params_of(0)
  back = optaxlr.load(path, task=task, optimizer=opt)
  for what in ("params_of", "opt_state_of", "model_state_of"):
    a, b = getattr(res, what)(1, seed=1), getattr(back, what)(1, seed=1)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # the loaded run continues: it rebuilds into the model
  model = task.to_model(back.params_of(1, seed=1), back.model_state_of(1, seed=1))
  assert isinstance(model, BNNet)
  # another optimizer's structure is refused with a clear error
  with pytest.raises(ValueError, match="do not fit this task and optimizer"):
    optaxlr.load(path, task=task, optimizer=lambda h: optax.sgd(h["lr"], momentum=0.9))


def test_start_from_continues_every_run_exactly():
  """Two sweeps of 6 steps (the second start_from the first) equal one sweep of 12: schedules,
  minibatch order, dropout keys and BatchNorm statistics continue."""
  task = _task()
  space = search.grid(lr=[1e-2, 3e-3], wd=[1e-2], dropout=[0.2])

  def sched_opt(h):
    return optax.adamw(optax.cosine_decay_schedule(h["lr"], 12), weight_decay=h["wd"])
  kw = dict(batch_size=16, seeds=2, eval_every=3, execution=optaxlr.Execution(progress=False, keep_params=True))
  whole = optaxlr.sweep(task, sched_opt, space, steps=12, **kw)
  first = optaxlr.sweep(task, sched_opt, space, steps=6, **kw)
  second = optaxlr.sweep(task, sched_opt, space, steps=6, start_from=first, **kw)
  assert second.eval_steps.tolist() == [9, 12] and second.info["start_step"] == 6
  np.testing.assert_allclose(second.batch_loss, whole.batch_loss[..., 6:], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(second.metrics["val/loss"], whole.metrics["val/loss"][..., 2:],
                             rtol=2e-5)
  # another batch size in the second phase is allowed (grow the batch); a mismatch is not
  grown = optaxlr.sweep(task, sched_opt, space, steps=3, start_from=first,
                        **{**kw, "batch_size": 32})
  assert np.isfinite(grown.batch_loss).all()
  with pytest.raises(ValueError, match="start_from has 2 configs, this space 1"):
    optaxlr.sweep(task, sched_opt, search.grid(lr=[1e-2], wd=[1e-2], dropout=[0.2]), steps=3,
                  start_from=first, **kw)
  with pytest.raises(ValueError, match="do not fit this task and optimizer"):
    optaxlr.sweep(task, lambda h: optax.sgd(h["lr"] + 0 * h["wd"]), space, steps=3,
                  start_from=first, **kw)
  import dataclasses

  with pytest.raises(ValueError, match="keep_params=True"):
    optaxlr.sweep(task, sched_opt, space, steps=3, start_from=dataclasses.replace(first, params=None),
                  **kw)
