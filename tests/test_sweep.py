"""The sweep engine against standalone training loops written out here by hand."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search
from optaxlr.tasks import Task

STEPS, BATCH, EVAL_EVERY = 24, 16, 8


def make_task(n=96, d=5, nan=False, act=jnp.tanh):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n + 40, d))
  y = (x[:, 0] - x[:, 1] + 0.3 * rng.standard_normal(n + 40) > 0).astype(np.int32)
  if nan:
    x[3, 2] = np.nan

  def init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d, 8)) * 0.5, "b1": jnp.zeros(8),
        "w2": jax.random.normal(k2, (8, 2)) * 0.5, "b2": jnp.zeros(2),
    }

  def apply(p, x):
    return act(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]

  return Task.from_functions(
      "toy", init, apply, "cross_entropy",
      train={"x": x[:n], "y": y[:n]}, eval={"val": {"x": x[n:], "y": y[n:]}},
      info={"num_classes": 2},
  )


def adamw(h):
  return optax.adamw(h["lr"], weight_decay=h["wd"])


def sgd(h):
  return optax.sgd(h["lr"])


def standalone(task, optimizer, hp, seed, *, steps=STEPS, key=0, objective=None):
  """One run written as the loop a user would write: the engine's row must equal it."""
  init_key, data_key = optaxlr.run_keys(key, seed)
  params = task.init(init_key)
  opt_state = optimizer(hp).init(params)
  n = task.train["x"].shape[0]
  losses = []
  step = _standalone_step(task, optimizer, objective)
  for t in range(steps):
    idx = optaxlr.batch_indices(data_key, t, n, BATCH)
    batch = {k: v[idx] for k, v in task.train.items()}
    params, opt_state, loss = step(params, opt_state, batch, hp)
    losses.append(loss)
  return np.asarray(losses), task.metrics(params, task.eval["val"])


def _standalone_step(task, optimizer, objective):
  @jax.jit
  def step(params, opt_state, batch, hp):
    def loss_fn(p):
      loss = task.loss(p, batch)
      return loss if objective is None else objective(loss, hp)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer(hp).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


EXECUTION_FIELDS = {f.name for f in dataclasses.fields(optaxlr.Execution)}


def run(task, optimizer, space, **kw):
  """``optaxlr.sweep`` with this file's defaults and no progress bar; ``Execution`` settings may
  be given as keywords too (merged into ``execution=``)."""
  ex = {"progress": False, **{k: kw.pop(k) for k in list(kw) if k in EXECUTION_FIELDS}}
  kw["execution"] = dataclasses.replace(kw.get("execution") or optaxlr.Execution(), **ex)
  kw = {"steps": STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY, **kw}
  return optaxlr.sweep(task, optimizer, space, **kw)


def test_row_equals_standalone_float64_to_the_last_bits(x64):
  """Same keys, same minibatches, same arithmetic: float64 rows agree with single runs to a few
  ulps (XLA's batched matmuls and reductions may sum in another order than unbatched ones, so
  bitwise equality holds for most steps but is not guaranteed)."""
  task = make_task()
  space = search.grid(lr=[1e-3, 3e-2], wd=[0.0, 1e-2])
  res = run(task, adamw, space, seeds=[0, 5])
  assert res.batch_loss.shape == (2, 4, STEPS)
  assert res.metrics["val/loss"].shape == (2, 4, STEPS // EVAL_EVERY)
  for s_i, seed in enumerate([0, 5]):
    for c in range(4):
      losses, mets = standalone(task, adamw, space[c], seed)
      assert res.batch_loss.dtype == np.float64
      np.testing.assert_allclose(res.batch_loss[s_i, c], losses, rtol=8 * np.finfo(float).eps, atol=0)
      for name, val in mets.items():
        np.testing.assert_allclose(res.metrics[f"val/{name}"][s_i, c, -1], val, rtol=1e-14, err_msg=name)


def test_row_equals_standalone_float32_within_rounding():
  task = make_task()
  space = search.zip(lr=[1e-3, 3e-2, 0.1], wd=[0.0, 1e-2, 1e-3])
  res = run(task, adamw, space, seeds=2)
  for seed in range(2):
    for c in range(3):
      losses, mets = standalone(task, adamw, space[c], seed)
      np.testing.assert_allclose(res.batch_loss[seed, c], losses, rtol=2e-5, atol=1e-6)
      np.testing.assert_allclose(res.metrics["val/loss"][seed, c, -1], mets["loss"], rtol=2e-5)


def test_diverging_config_changes_no_other_row(x64):
  task = make_task(act=lambda z: z)  # a deep linear net: a huge step overflows it
  good = search.zip(lr=[0.01, 0.3])
  with_bad = search.zip(lr=[0.01, 1e200, 0.3])
  a = run(task, sgd, good, seeds=2)
  b = run(task, sgd, with_bad, seeds=2)
  assert np.all(b.diverged_at[:, 1] >= 0), b.diverged_at
  assert np.all(a.diverged_at == -1) and np.all(b.diverged_at[:, [0, 2]] == -1)
  np.testing.assert_array_equal(a.batch_loss, b.batch_loss[:, [0, 2]])
  for m in a.metrics:
    np.testing.assert_array_equal(a.metrics[m], b.metrics[m][:, [0, 2]])
  # The diverged run is frozen: no loss and no metrics after its divergence step.
  t = int(b.diverged_at[0, 1])
  assert not np.isfinite(b.batch_loss[0, 1, t])
  assert np.all(np.isnan(b.batch_loss[0, 1, t + 1:]))
  assert np.all(np.isnan(b.metrics["val/loss"][0, 1, t // EVAL_EVERY:]))
  with pytest.raises(ValueError, match="every config diverged"):
    run(task, sgd, search.zip(lr=[1e200]), seeds=1).best("val/loss")


def test_groups_equal_one_program(x64):
  task = make_task()
  space = search.grid(lr=[1e-3, 1e-2, 3e-2], wd=[0.0, 1e-3])
  whole = run(task, adamw, space)
  split = run(task, adamw, space, execution=optaxlr.Execution(max_group_size=4))  # 6 configs -> groups of 4 and 2 (+2 pad)
  assert split.info["groups"] == 2 and whole.info["groups"] == 1
  np.testing.assert_array_equal(whole.batch_loss, split.batch_loss)
  for m in whole.metrics:
    np.testing.assert_array_equal(whole.metrics[m], split.metrics[m])


def test_one_compilation_whatever_the_number_of_chunks_and_groups():
  task = make_task()
  traces = []

  def counting(h):
    traces.append(isinstance(h["lr"], jax.core.Tracer))
    return adamw(h)

  space = search.grid(lr=[1e-3, 1e-2, 3e-2], wd=[0.0, 1e-3])
  run(task, counting, space, steps=8, eval_every=8)
  few = sum(traces)
  traces.clear()
  run(task, counting, space, steps=32, eval_every=4, execution=optaxlr.Execution(max_group_size=2))  # 8 chunks x 3 groups
  many = sum(traces)
  assert few == many, (few, many)  # traced calls: init + eval_shape + the chunk, once each


def test_resume_after_interruption_equals_uninterrupted(tmp_path, x64):
  task = make_task()
  space = search.grid(lr=[1e-3, 3e-2], wd=[0.0, 1e-2])
  full = run(task, adamw, space, seeds=2, execution=optaxlr.Execution(max_group_size=2))

  class Killed(Exception):
    pass

  def kill_at(group, chunk):
    def cb(info):
      if (info["group"], info["chunk"]) == (group, chunk):
        raise Killed

    return cb

  ckpt = tmp_path / "ckpt"
  for where in [(0, 1), (1, 0)]:  # mid-group, and right after a group boundary
    with pytest.raises(Killed):
      run(task, adamw, space, seeds=2, callback=kill_at(*where), execution=optaxlr.Execution(max_group_size=2, checkpoint_dir=ckpt))
  resumed = run(task, adamw, space, seeds=2, execution=optaxlr.Execution(max_group_size=2, checkpoint_dir=ckpt))
  np.testing.assert_array_equal(full.batch_loss, resumed.batch_loss)
  for m in full.metrics:
    np.testing.assert_array_equal(full.metrics[m], resumed.metrics[m])
  with pytest.raises(ValueError, match="holds a different sweep"):
    run(task, adamw, search.grid(lr=[1e-3], wd=[0.0]), execution=optaxlr.Execution(checkpoint_dir=ckpt))


def test_seed_axis_in_space_and_labels(tmp_path):
  task = make_task()
  space = search.grid(lr=[1e-3, 3e-2], wd=[0.0, 1e-2]) * search.seeds(3)
  res = run(task, adamw, space)
  assert res.seeds.tolist() == [0, 1, 2] and res.num_configs == 4
  ds = res.to_xarray()
  assert dict(ds["val/accuracy"].sizes) == {"seed": 3, "lr": 2, "wd": 2, "eval_step": 3}
  np.testing.assert_array_equal(
      ds["val/loss"].sel(lr=3e-2, wd=1e-2).values, res.metrics["val/loss"][:, 3]
  )
  df = res.to_pandas()
  assert len(df) == 12 and {"lr", "wd", "seed", "val/loss", "diverged_at"} <= set(df.columns)
  best = res.best("val/loss")
  means = res.final("val/loss").mean(axis=0)
  assert best["index"] == int(np.argmin(means)) and best["val/loss"] == pytest.approx(means.min())
  assert res.best("val/accuracy")["index"] == int(np.argmax(res.final("val/accuracy").mean(0)))
  back = optaxlr.load(res.save(tmp_path / "r.npz"))
  np.testing.assert_array_equal(back.metrics["val/loss"], res.metrics["val/loss"])
  assert back.space.dims == res.space.dims and back.config(3) == res.config(3)
  assert back.to_xarray()["val/loss"].sizes == ds["val/loss"].sizes


def test_objective_sees_swept_hyperparameters(x64):
  task = make_task()
  space = search.grid(lr=[0.1], flood=[0.0, 0.5])

  def objective(loss, h):
    return jnp.abs(loss - h["flood"]) + h["flood"]  # flooding, restated

  res = run(task, sgd, space, objective=objective)
  for c in range(2):
    losses, _ = standalone(task, sgd, space[c], 0, objective=objective)
    # XLA fuses the batched and the single program differently here: equal to a few ulps.
    np.testing.assert_allclose(res.batch_loss[0, c], losses, rtol=1e-14, atol=0)
  assert not np.array_equal(res.batch_loss[0, 0], res.batch_loss[0, 1])


def test_early_stopping_freezes_a_config():
  task = make_task()
  space = search.zip(lr=[1e-4, 0.5])
  es = optaxlr.EarlyStop(metric="val/loss", patience=1, min_delta=10.0)  # nothing improves by 10
  res = run(task, sgd, space, early_stopping=es, steps=32, eval_every=8)
  # First evaluation sets the best; the second fails to improve by min_delta: stop at step 16.
  assert res.stopped_at.tolist() == [[16, 16]]
  assert np.all(np.isnan(res.batch_loss[0, :, 16:])) and np.all(np.isfinite(res.batch_loss[0, :, :16]))
  # Frozen: later evaluations repeat the state at the stop.
  np.testing.assert_array_equal(res.metrics["val/loss"][0, :, 1], res.metrics["val/loss"][0, :, 3])


def test_callback_can_stop_the_sweep():
  task = make_task()
  res = run(task, sgd, search.zip(lr=[0.1]), callback=lambda info: info["chunk"] == 0)
  assert np.isfinite(res.metrics["val/loss"][0, 0, 0]) and np.isnan(res.metrics["val/loss"][0, 0, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(space=search.zip(lr=[0.1, -0.1])), "lr must be > 0, config 1 has lr=-0.1"),
        (dict(batch_size=10_000), r"batch_size must be an int in \[1, 96\]"),
        (dict(steps=0), "steps must be an int >= 1"),
        (dict(seeds=0), "seeds must be >= 1"),
        (dict(eval_every=0), "eval_every must be an int >= 1"),
        (dict(metric="val/nope", plateau=True), "metric='val/nope' is not an evaluated metric"),
        (dict(space={"lr": [0.1, 0.2], "wd": [0.1]}), "same length"),
    ],
)
def test_bad_input_raises_before_compiling(kwargs, match):
  task = make_task()
  kw = {"space": search.zip(lr=[0.1]), **kwargs}
  space = kw.pop("space")
  with pytest.raises(ValueError, match=match):
    run(task, sgd, space, **kw)


def test_bad_optimizer_setting_and_bad_data_raise_before_compiling():
  def bad_opt(h):
    if h["lr"] > 1:  # a transform's own eager validation, seen with concrete values
      raise ValueError(f"my_opt: lr must be <= 1, got lr={h['lr']}")
    return optax.sgd(h["lr"])

  with pytest.raises(ValueError, match=r"config 1 \{'lr': 2.0\} is invalid: my_opt: lr must be <= 1"):
    run(make_task(), bad_opt, search.zip(lr=[0.1, 2.0]))
  with pytest.raises(ValueError, match="NaN"):
    run(make_task(nan=True), sgd, search.zip(lr=[0.1]))


def test_too_little_memory_is_a_clear_error(monkeypatch):
  from optaxlr.engine import _layout as _driver  # device memory is read by the layout

  monkeypatch.setattr(_driver, "device_memory_bytes", lambda device: 1024)
  with pytest.raises(ValueError, match="more than half of the device memory"):
    run(make_task(), adamw, search.zip(lr=[0.1], wd=[0.0]))


def test_groups_are_sized_from_the_compiled_program(monkeypatch, x64):
  """With a memory limit below what all configs need, the configs are split into groups whose
  compiled program (activations and evaluation included) fits in half the limit, and the
  numbers do not change."""
  from optaxlr.engine import _layout as _driver  # device memory is read by the layout

  task = make_task()
  space = search.grid(lr=[1e-3, 1e-2, 3e-2], wd=[0.0, 1e-3])
  whole = run(task, adamw, space)
  need = whole.info["program_bytes"]
  assert whole.info["groups"] == 1 and need > 0
  data = sum(np.asarray(v).nbytes for v in task.train.values()) + sum(
      np.asarray(v).nbytes for v in task.eval["val"].values())
  assert need > data  # parameters, optimizer states, activations on top of the data
  limit = 2 * (data + (need - data) // 2)  # about half of the configs fit in half the limit
  monkeypatch.setattr(_driver, "device_memory_bytes", lambda device: limit)
  split = run(task, adamw, space)
  assert split.info["groups"] >= 2
  assert split.info["program_bytes"] <= limit // 2
  np.testing.assert_array_equal(whole.batch_loss, split.batch_loss)
  for m in whole.metrics:
    np.testing.assert_array_equal(whole.metrics[m], split.metrics[m])


@pytest.mark.slow
def test_sharded_over_four_cpu_devices_equals_unsharded(tmp_path):
  script = textwrap.dedent(
      f"""
      import os, sys
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax
      jax.config.update("jax_enable_x64", True)
      sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
      import numpy as np, optaxlr
      from optaxlr import search
      from test_sweep import make_task, adamw, run
      assert len(jax.devices()) == 4, jax.devices()
      space = search.grid(lr=[1e-3, 1e-2, 3e-2], wd=[0.0, 1e-3])  # 6 configs: padded to 8
      sharded = run(make_task(), adamw, space, seeds=2)
      single = run(make_task(), adamw, space, seeds=2, devices=jax.devices()[:1])
      assert sharded.info["devices"] == 4 and single.info["devices"] == 1
      # Each device runs 2 configs instead of 8 at once: XLA may vectorise the reductions
      # differently, so float64 agreement is to a few ulps, not bitwise.
      np.testing.assert_allclose(sharded.batch_loss, single.batch_loss, rtol=1e-13, atol=0)
      for m in single.metrics:
        np.testing.assert_allclose(sharded.metrics[m], single.metrics[m], rtol=1e-13, atol=1e-15)
      assert sharded.batch_loss.dtype == np.float64
      print("OK")
      """
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_reduce_on_plateau_fed_by_the_periodic_evaluation(x64):
  """The engine's protocol restated: evaluate every EVAL_EVERY steps, pass the metric once."""
  task = make_task()

  def opt(h):
    return optax.chain(
        optax.sgd(h["lr"]), optaxlr.reduce_on_plateau(factor=h["factor"], patience=0, threshold=0.5)
    )

  space = search.grid(lr=[0.5], factor=[0.5, 0.1])
  res = run(task, opt, space, plateau=True, steps=32, eval_every=4)
  plain = run(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[0.5]), steps=32, eval_every=4)
  for c in range(2):
    hp = space[c]
    init_key, data_key = optaxlr.run_keys(0, 0)
    params = task.init(init_key)
    tx = opt(hp)
    state = tx.init(params)
    last, fresh, losses = np.nan, False, []
    for t in range(32):
      idx = optaxlr.batch_indices(data_key, t, task.train["x"].shape[0], BATCH)
      batch = {k: v[idx] for k, v in task.train.items()}
      loss, g = jax.value_and_grad(task.loss)(params, batch)
      upd, state = tx.update(g, state, params, value=last if fresh else np.nan, evaluate=fresh)
      params = optax.apply_updates(params, upd)
      losses.append(float(loss))
      fresh = (t + 1) % 4 == 0
      if fresh:
        last = float(task.metrics(params, task.eval["val"])["loss"])
    np.testing.assert_allclose(res.batch_loss[0, c], losses, rtol=1e-12)
    assert int(state[1].num_reductions) >= 1
  assert not np.allclose(res.batch_loss, plain.batch_loss)
