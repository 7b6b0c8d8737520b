"""The training core behind sweep and lr_find, against loops written out here by hand:
exact steps, early stopping = transforms.early_stopping, lr_find = the general program driven the
same way, steering between chunks, the update/weight ratio, plateau's done flag, the compile
cache, unused axes, argument checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search
from test_sweep import BATCH, make_task, run


def sgd(h):
  return optax.sgd(h["lr"])


def standalone_losses(task, tx, seed, steps, *, key=0, on_step=None):
  """A plain training loop with the sweep's keys and minibatch order; returns per-step losses
  and the final parameters. ``on_step(t, params, tx_state)`` may return a new ``tx``."""
  init_key, data_key = optaxlr.run_keys(key, seed)
  params = task.init(init_key)
  state = tx.init(params)
  n = task.n_train
  losses = []
  for t in range(steps):
    if on_step is not None:
      tx = on_step(t, params, tx) or tx
    idx = optaxlr.batch_indices(data_key, t, n, BATCH)
    batch = {k: v[idx] for k, v in task.train.items()}
    loss, g = jax.value_and_grad(task.loss)(params, batch)
    upd, state = tx.update(g, state, params)
    params = optax.apply_updates(params, upd)
    losses.append(float(loss))
  return np.asarray(losses), params


def test_steps_are_exact_and_the_last_evaluation_is_after_the_last_step(x64):
  task = make_task()
  space = search.zip(lr=[0.05, 0.2])
  res = run(task, sgd, space, steps=21, eval_every=8)
  assert res.batch_loss.shape == (1, 2, 21)
  assert res.eval_steps.tolist() == [8, 16, 21]
  for c in range(2):
    losses, params = standalone_losses(task, sgd(space[c]), 0, 21)
    np.testing.assert_allclose(res.batch_loss[0, c], losses, rtol=1e-13)
    final = task.metrics(params, task.eval["val"])["loss"]
    np.testing.assert_allclose(res.metrics["val/loss"][0, c, -1], final, rtol=1e-13)
  # The host may sync less often than it evaluates: same numbers.
  coarse = run(task, sgd, space, steps=21, eval_every=4, sync_every=12)
  assert coarse.eval_steps.tolist() == [4, 8, 12, 16, 20, 21]
  np.testing.assert_allclose(coarse.batch_loss, res.batch_loss, rtol=1e-14)


def test_unused_axes_are_rejected_before_compiling():
  task = make_task()
  with pytest.raises(ValueError, match=r"sweep: the space's axis 'steps' is read by neither"
                                       r".*the number of steps is the sweep's steps="):
    run(task, sgd, search.grid(lr=[0.1], steps=[8, 512]))
  with pytest.raises(ValueError, match=r"axis 'wd' is read by neither the optimizer, the objective"):
    run(task, sgd, search.grid(lr=[0.1], wd=[0.0, 0.1]))
  # An axis read only by the objective is used.
  res = run(task, sgd, search.grid(lr=[0.1], flood=[0.0, 0.3]),
            objective=lambda loss, h: jnp.abs(loss - h["flood"]) + h["flood"], steps=8, eval_every=8)
  assert res.num_configs == 2


def test_a_second_sweep_of_the_same_structure_does_not_compile():
  task = make_task()

  def adam(h):
    return optax.adam(h["lr"])

  first = run(task, adam, search.zip(lr=[1e-3, 1e-2]), steps=16, eval_every=8)
  again = run(task, adam, search.zip(lr=[3e-3, 3e-2]), steps=16, eval_every=8, key=5, seeds=[3])
  assert first.info["compile_s"] > 0 and again.info["compile_s"] == 0.0
  other = run(task, adam, search.zip(lr=[1e-3, 1e-2, 0.1]), steps=16, eval_every=8)
  assert other.info["compile_s"] > 0  # another number of configs is another program


def test_early_stopping_equals_transforms_early_stopping_step_for_step(x64):
  task = make_task()
  space = search.zip(lr=[0.5, 0.05, 1e-3])
  es_cfg = optaxlr.EarlyStop(metric="val/loss", patience=2, min_delta=5e-3)
  steps, k = 64, 4
  res = run(task, sgd, space, early_stopping=es_cfg, steps=steps, eval_every=k)
  stops = []
  for c in range(3):
    es = optaxlr.transforms.early_stopping(patience=2, min_delta=5e-3)
    state = es.init()
    stop_at = -1

    def on_step(t, params, tx):
      nonlocal state, stop_at
      if t > 0 and t % k == 0 and stop_at < 0:
        state = es.update(state, task.metrics(params, task.eval["val"])["loss"])
        if bool(state.stop):
          stop_at = t
      return None

    losses, _ = standalone_losses(task, sgd(space[c]), 0, steps, on_step=on_step)
    if stop_at < 0:  # the evaluation after the last step
      pass
    stops.append(stop_at)
    n = stop_at if stop_at >= 0 else steps
    np.testing.assert_allclose(res.batch_loss[0, c, :n], losses[:n], rtol=1e-12)
    assert np.isnan(res.batch_loss[0, c, n:]).all()
  expected = np.asarray(stops)
  # The reference checks at steps 4..60; the sweep also evaluates after step 64.
  sweep_stops = res.stopped_at[0]
  for c in range(3):
    if expected[c] >= 0:
      assert sweep_stops[c] == expected[c] and res.stop_reason[0, c] == "early_stopping"
    else:
      assert sweep_stops[c] in (-1, steps)
  assert (expected >= 0).any(), "the test needs a config that stops early"


def test_lr_find_equals_the_general_program_driven_the_same_way(x64):
  """The range test is the core with a per-step rate: a sweep whose optimizer reads the same
  rates from a schedule gives the same losses, and the range test's curves are
  pytorch-lr-finder's smoothing of them."""
  task = make_task()
  steps = 30
  lrs = optaxlr.range_test_lrs(1e-3, 3.0, steps)
  finder = optaxlr.lr_find(task, lambda h: optax.sgd(h["lr"], momentum=h["m"]),
                           search.grid(m=[0.0, 0.9]), steps=steps, batch_size=BATCH,
                           min_lr=1e-3, max_lr=3.0, diverge=1e300, smooth=0.1)
  table = jnp.asarray(lrs)
  swept = run(task, lambda h: optax.sgd(lambda count: table[count], momentum=h["m"]),
              search.grid(m=[0.0, 0.9]), steps=steps, eval_every=steps, execution=optaxlr.Execution(update_ratio=False))
  live = np.isfinite(finder.batch_loss)
  np.testing.assert_allclose(finder.batch_loss[live], swept.batch_loss[live], rtol=1e-13)
  for c in range(2):
    raw = swept.batch_loss[0, c]
    n = int(np.isfinite(finder.smoothed[0, c]).sum())
    s = [raw[0]]
    for v in raw[1:n]:
      s.append(0.1 * v + 0.9 * s[-1])
    np.testing.assert_allclose(finder.smoothed[0, c, :n], s, rtol=1e-12)


def test_typed_keys_and_numpy_integers_are_accepted(x64):
  task = make_task()
  space = search.zip(lr=[0.1])
  a = run(task, sgd, space, steps=8, eval_every=8, key=0)
  b = run(task, sgd, space, steps=np.int64(8), eval_every=np.int32(8), batch_size=np.int64(BATCH),
          key=jax.random.key(0), seeds=np.arange(1))
  np.testing.assert_array_equal(a.batch_loss, b.batch_loss)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=True), r"sweep: steps must be an int >= 1, got steps=True"),
    (dict(steps=2.0), r"sweep: steps must be an int >= 1, got steps=2.0"),
    (dict(sync_every=12), r"sweep: sync_every must be a multiple of eval_every=8"),
    (dict(log_every=3), r"sweep: log_every must divide eval_every=8"),
    (dict(eval_every=100), r"sweep: eval_every must be <= steps=24"),
    (dict(metric="val/loss"), r"sweep: metric='val/loss' is the metric fed to reduce_on_plateau and is read only with plateau=True"),
    (dict(key="seven"), r"sweep: key must be an int, a typed key"),
    (dict(key=True), r"sweep: key must be an int or a PRNG key"),
    (dict(seeds=[1, 1]), r"sweep: seeds must be a non-empty list of distinct ints"),
    (dict(plateau=True), r"sweep: plateau=True feeds a reduce_on_plateau, but the optimizer holds"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    run(make_task(), sgd, search.zip(lr=[0.1]), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(devices=[]), "Execution: devices must be a non-empty list of jax devices"),
    (dict(max_group_size=0), r"Execution: max_group_size must be an int >= 1, got max_group_size=0"),
    (dict(progress="yes"), r"Execution: progress must be True or False"),
    (dict(keep_params=1), r"Execution: keep_params must be True or False"),
    (dict(vectorize=0), r"Execution: vectorize must be 'auto', None or an int >= 1"),
    (dict(compute_dtype="float16"), r"Execution: compute_dtype must be None or 'bfloat16'"),
    (dict(eval_batch_size=0), r"Execution: eval_batch_size must be an int >= 1"),
    (dict(checkpoint_dir=3), r"Execution: checkpoint_dir must be a path"),
])
def test_bad_execution_settings_are_clear_errors_when_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optaxlr.Execution(**kwargs)


def test_execution_must_be_an_execution():
  with pytest.raises(TypeError, match="sweep: execution must be an optaxlr.Execution"):
    optaxlr.sweep(make_task(), sgd, search.zip(lr=[0.1]), steps=4, execution={"progress": False})


def test_keep_params_from_a_finished_checkpoint(tmp_path):
  task = make_task()
  space = search.zip(lr=[0.1, 0.01])
  first = run(task, sgd, space, execution=optaxlr.Execution(keep_params=True, checkpoint_dir=tmp_path / "c"))
  again = run(task, sgd, space, execution=optaxlr.Execution(keep_params=True, checkpoint_dir=tmp_path / "c"))
  assert again.info["steps_run"] == 0  # nothing trained again
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(first.batch_loss, again.batch_loss)


def test_steering_copy_set_and_stop_between_chunks(x64):
  task = make_task()
  space = search.zip(lr=[0.01, 0.03, 0.1])
  events = []

  def steer(event):
    events.append(event)
    if event.chunk == 0:
      return optaxlr.Control(copy={2: 0}, set_hparams={1: {"lr": 0.05}}, stop=[0])
    return None

  res = run(task, sgd, space, steps=24, eval_every=8, callback=steer)
  plain = run(task, sgd, space, steps=24, eval_every=8)
  assert [e.step for e in events] == [8, 16, 24] and events[0]["configs"] == (0, 1, 2)
  # Config 0 stopped by the host after 8 updates.
  assert res.stop_reason[0, 0] == "host" and res.stopped_at[0, 0] == 8
  assert np.isnan(res.batch_loss[0, 0, 8:]).all()
  np.testing.assert_array_equal(res.batch_loss[0, 0, :8], plain.batch_loss[0, 0, :8])
  # Config 2 took config 0's state and rate: it continues config 0's run.
  np.testing.assert_allclose(res.batch_loss[0, 2, 8:], plain.batch_loss[0, 0, 8:], rtol=1e-13)
  assert events[1].hparams["lr"].tolist() == [0.01, 0.05, 0.01]
  # Config 1 switched its rate at step 8: a standalone run that does the same.
  ref, _ = standalone_losses(task, sgd({"lr": 0.03}), 0, 24,
                             on_step=lambda t, p, tx: sgd({"lr": 0.05}) if t == 8 else None)
  np.testing.assert_allclose(res.batch_loss[0, 1], ref, rtol=1e-12)
  assert res.info["steering"][0]["copy"] == {2: 0} and res.info["steering"][0]["stop"] == [0]
  with pytest.raises(ValueError, match=r"Control.stop names config 7, outside the current group"):
    run(task, sgd, space, steps=16, eval_every=8, callback=lambda e: optaxlr.Control(stop=[7]))
  with pytest.raises(ValueError, match=r"Control.set_hparams sets 'wd', not a hyperparameter"):
    run(task, sgd, space, steps=16, eval_every=8,
        callback=lambda e: optaxlr.Control(set_hparams={0: {"wd": 1.0}}))


def test_loss_recorded_as_means_over_windows(x64):
  task = make_task(act=lambda z: z)  # a deep linear net: lr 1e200 overflows it
  space = search.zip(lr=[0.05, 1e200])  # the second diverges
  every = run(task, sgd, space, steps=24, eval_every=8)
  coarse = run(task, sgd, space, steps=24, eval_every=8, log_every=4)
  assert coarse.batch_loss.shape == (1, 2, 6)
  np.testing.assert_allclose(coarse.batch_loss[0, 0], every.batch_loss[0, 0].reshape(6, 4).mean(1),
                             rtol=1e-14)
  t = int(every.diverged_at[0, 1])
  assert coarse.diverged_at[0, 1] == t and not np.isfinite(coarse.batch_loss[0, 1, t // 4])
  assert np.isnan(coarse.batch_loss[0, 1, t // 4 + 1:]).all()


def test_update_ratio_is_the_last_steps_update_over_weight_norm(x64):
  task = make_task()
  space = search.zip(lr=[0.01, 0.3])
  res = run(task, sgd, space, steps=16, eval_every=8)
  ratio = res.metrics["train/update_ratio"]
  for c in range(2):
    norms = {}

    def on_step(t, params, tx):
      norms[t] = params
      return None

    _, last = standalone_losses(task, sgd(space[c]), 0, 16, on_step=on_step)
    norms[16] = last
    for e, step in enumerate(res.eval_steps):
      before, after = norms[int(step) - 1], norms[int(step)]
      du = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                       for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))))
      w = np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree.leaves(after)))
      np.testing.assert_allclose(ratio[0, c, e], du / w, rtol=1e-10)


def test_plateau_done_stops_a_config_as_pytorch_loops_do(x64):
  task = make_task()

  def opt(h):
    return optax.chain(optax.sgd(h["lr"]),
                       optaxlr.reduce_on_plateau(factor=0.5, patience=0, threshold=0.99,
                                                 max_reductions=2))

  space = search.zip(lr=[0.05, 0.1])
  res = run(task, opt, space, steps=32, eval_every=4, plateau=True)
  # Evaluation 1 sets the best; 2 and 3 are not 99% better: two reductions, done at the third
  # evaluation (after 12 steps); the step fed with it is not applied.
  assert res.stop_reason[0].tolist() == ["plateau_done", "plateau_done"]
  assert res.stopped_at[0].tolist() == [12, 12]
  # The loss of step 12 (of the final parameters) was computed and is kept, as the point that
  # stops a range test is; no step after it ran.
  assert np.isnan(res.batch_loss[0, :, 13:]).all() and np.isfinite(res.batch_loss[0, :, :13]).all()
  on = run(task, opt, space, steps=32, eval_every=4, plateau="feed")
  assert (on.stop_reason == "completed").all()
  np.testing.assert_array_equal(on.batch_loss[..., :12], res.batch_loss[..., :12])


def _toy_task(name, apply, extra):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((72, 4))
  y = (x[:, 0] > 0).astype(np.int32)

  def init(key):
    return {"w": jax.random.normal(key, (4, 2)) * 0.3, **extra}

  return optaxlr.Task.from_functions(name, init, apply, "cross_entropy",
                                     train={"x": x[:48], "y": y[:48]},
                                     eval={"val": {"x": x[48:], "y": y[48:]}},
                                     info={"num_classes": 2})


def test_a_nan_gradient_of_a_finite_loss_stops_the_run_at_its_next_step():
  """The per-step check reads the loss: a finite loss whose gradient is NaN (sqrt at 0) makes
  the parameters NaN, whose loss at the next step is NaN: the run stops there, diverged."""
  task = _toy_task("sqrt0", lambda p, x: x @ p["w"] + jnp.sqrt(jnp.sum(p["s"] ** 2)),
                   {"s": jnp.zeros(2)})
  res = run(task, sgd, search.zip(lr=[0.01, 0.1]), steps=8, eval_every=4)
  assert np.isfinite(res.batch_loss[0, :, 0]).all()
  assert (res.stop_reason[0] == "diverged").all() and res.diverged_at[0].tolist() == [1, 1]
  assert np.isnan(res.batch_loss[0, :, 1:]).all()


def test_parameters_the_loss_does_not_read_are_checked_at_each_evaluation():
  """A parameter the loss does not read turning NaN (here by the optimizer after 3 updates)
  leaves every loss finite: the evaluation's check of the parameters stops the run there."""

  def nan_z_after(k):
    def update(updates, count, params=None):
      return {**updates, "z": jnp.where(count >= k, jnp.nan, updates["z"])}, count + 1
    return optax.GradientTransformation(lambda p: jnp.zeros((), jnp.int32), update)

  task = _toy_task("unread", lambda p, x: x @ p["w"], {"z": jnp.zeros(3)})
  res = run(task, lambda h: optax.chain(optax.sgd(h["lr"]), nan_z_after(3)),
            search.zip(lr=[0.01, 0.1]), steps=12, eval_every=4)
  assert np.isfinite(res.batch_loss[0, :, :4]).all()
  assert (res.stop_reason[0] == "diverged").all() and res.diverged_at[0].tolist() == [4, 4]
  assert np.isnan(res.batch_loss[0, :, 4:]).all()
  # A run that never turns non-finite is not touched by the check.
  ok = run(task, sgd, search.zip(lr=[0.01, 0.1]), steps=12, eval_every=4)
  assert (ok.stop_reason[0] == "completed").all()
