"""Forking (``SweepResult.fork``, ``Execution(keep_params_at=)``) and every horizon from one
trunk (``optaxlr.horizons``).

The references are separately trained runs (a sweep from scratch of the full schedule), never
the forked code path itself: a child must equal the run trained without the fork."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search

EX = optaxlr.Execution(progress=False, keep_params=True)
KW = dict(batch_size=16, seeds=2, eval_every=3)


@pytest.fixture(scope="module")
def task():
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)


def wsd_linear(h):
  """Adam on a hand-written warmup-free WSD schedule: ``lr`` until ``decay_at``, then linear to
  zero at ``end`` (the test's own restatement, independent of optaxlr.schedules)."""
  lr, decay_at, end = h["lr"], h["decay_at"], h["end"]

  def schedule(step):
    frac = jnp.clip((step - decay_at) / (end - decay_at), 0.0, 1.0)
    return lr * (1.0 - frac)
  return optax.adam(schedule)


def leaves_equal(a, b) -> None:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_snapshot_equals_a_sweep_of_that_many_steps(task, tmp_path):
  space = search.grid(lr=[1e-2, 3e-3], decay_at=[100.0], end=[200.0])
  trunk = optaxlr.sweep(task, wsd_linear, space, steps=12,
                        execution=EX.replace(keep_params_at=(3, 9)), **KW)
  assert sorted(trunk.snapshots) == [3, 9]
  short = optaxlr.sweep(task, wsd_linear, space, steps=9, execution=EX, **KW)
  snap = trunk.snapshots[9]
  assert snap.info["steps"] == 9 and snap.eval_steps.tolist() == [3, 6, 9]
  leaves_equal(snap.params, short.params)
  leaves_equal(snap.opt_state, short.opt_state)
  np.testing.assert_array_equal(snap.batch_loss, short.batch_loss)
  np.testing.assert_array_equal(snap.metrics["val/loss"], short.metrics["val/loss"])
  assert (snap.stop_reason == "completed").all()
  # the trunk itself is untouched by taking snapshots
  whole = optaxlr.sweep(task, wsd_linear, space, steps=12, execution=EX, **KW)
  leaves_equal(trunk.params, whole.params)
  with pytest.warns(UserWarning, match="snapshots .* are held in memory only"):
    trunk.save(tmp_path / "r.npz")


def test_forked_child_equals_the_unforked_run_bitwise(task):
  """Trunk at constant rate to step 6, then children: one with the parent's own settings (it
  continues the trunk) and two with another schedule tail (linear decay from step 6 to 12),
  compared bitwise with separately trained 12-step runs of those full schedules."""
  trunk_space = search.zip(lr=[1e-2, 3e-3], decay_at=[100.0, 100.0], end=[200.0, 200.0])
  trunk = optaxlr.sweep(task, wsd_linear, trunk_space, steps=12,
                        execution=EX.replace(keep_params_at=(6,)), **KW)
  child_space = search.zip(lr=[1e-2, 1e-2, 3e-3], decay_at=[100.0, 6.0, 6.0],
                           end=[200.0, 12.0, 12.0])
  kids = optaxlr.sweep(task, wsd_linear, child_space, steps=6,
                       start_from=trunk.snapshots[6].fork([0, 0, 1]), execution=EX, **KW)
  assert kids.info["start_step"] == 6 and kids.eval_steps.tolist() == [9, 12]
  alone = optaxlr.sweep(task, wsd_linear, child_space, steps=12, execution=EX, **KW)
  leaves_equal(kids.params, alone.params)
  leaves_equal(kids.opt_state, alone.opt_state)
  np.testing.assert_array_equal(kids.batch_loss, alone.batch_loss[..., 6:])
  np.testing.assert_array_equal(kids.metrics["val/loss"], alone.metrics["val/loss"][..., 2:])
  # the child with the parent's own settings is the trunk's own run, bitwise
  leaves_equal(jax.tree.map(lambda x: x[:, 0], kids.params),
               jax.tree.map(lambda x: x[:, 0], trunk.params))
  # the decay changed something (the comparison above can fail)
  assert not np.array_equal(kids.batch_loss[:, 0], kids.batch_loss[:, 1])


def test_children_of_one_parent_share_its_state_exactly(task):
  space = search.grid(lr=[1e-2, 3e-3], decay_at=[100.0], end=[200.0])
  parent = optaxlr.sweep(task, wsd_linear, space, steps=6, execution=EX, **KW)
  kids = parent.fork([1, 0, 1, 1])
  assert kids.num_configs == 4 and kids.info["forked_from"] == [1, 0, 1, 1]
  assert kids.hparams["lr"].tolist() == [3e-3, 1e-2, 3e-3, 3e-3]
  for j, p in enumerate([1, 0, 1, 1]):
    leaves_equal(jax.tree.map(lambda x: x[:, j], kids.params),
                 jax.tree.map(lambda x: x[:, p], parent.params))
    leaves_equal(jax.tree.map(lambda x: x[:, j], kids.opt_state),
                 jax.tree.map(lambda x: x[:, p], parent.opt_state))
  # the same settings from the same state train the same numbers
  same = optaxlr.sweep(task, wsd_linear, search.zip(lr=[3e-3] * 2, decay_at=[100.0] * 2,
                                                     end=[200.0] * 2),
                       steps=3, start_from=parent.fork([1, 1]), execution=EX, **KW)
  np.testing.assert_array_equal(same.batch_loss[:, 0], same.batch_loss[:, 1])


def test_fork_bad_input_is_an_error_before_any_compute(task):
  space = search.grid(lr=[1e-2, 3e-3], decay_at=[100.0], end=[200.0])
  no_state = optaxlr.sweep(task, wsd_linear, space, steps=3,
                           execution=EX.replace(keep_params=False), **KW)
  assert no_state.snapshots is None
  with pytest.raises(ValueError, match="SweepResult.fork: this result holds no kept state"):
    no_state.fork([0])
  parent = optaxlr.sweep(task, wsd_linear, space, steps=3, execution=EX, **KW)
  for bad in ([2], [-1], [0, 1.0], [True]):
    with pytest.raises(ValueError, match=r"SweepResult.fork: parents must hold config indices in "
                                         r"\[0, 2\), got parents\[\d\]="):
      parent.fork(bad)
  for bad in (3, "01", []):
    with pytest.raises(ValueError, match="SweepResult.fork: parents must"):
      parent.fork(bad)


@pytest.mark.parametrize("at, match", [
    ((0,), "keep_params_at steps must be >= 1"),
    ((-3,), "keep_params_at steps must be >= 1"),
    ((2.5,), "keep_params_at must hold ints"),
    (("3",), "keep_params_at must hold ints"),
    (3, "keep_params_at must be a sequence of ints"),
    ((6, 3), "keep_params_at must be strictly increasing"),
    ((3, 3), "keep_params_at must be strictly increasing"),
])
def test_snapshot_steps_bad_values(at, match):
  with pytest.raises(ValueError, match=f"Execution: {match}"):
    optaxlr.Execution(keep_params_at=at)


def test_snapshot_steps_outside_the_run_or_off_chunk_ends(task, tmp_path, monkeypatch):
  """Checked against the sweep before anything is traced or compiled."""
  from optaxlr.engine import _driver

  def no_run(plan):
    raise AssertionError("the sweep ran")
  monkeypatch.setattr(_driver, "run", no_run)
  space = search.grid(lr=[1e-2], decay_at=[100.0], end=[200.0])
  for at, match in (((12,), r"in \[1, steps=12\).*got 12 in"), ((3, 15), "got 15"),
                    ((4,), "multiples of sync_every=3")):
    with pytest.raises(ValueError, match=f"sweep: Execution\\(keep_params_at=\\) steps must be.*{match}"):
      optaxlr.sweep(task, wsd_linear, space, steps=12, execution=EX.replace(keep_params_at=at), **KW)
  with pytest.raises(ValueError, match="does not combine with checkpoint_dir"):
    optaxlr.sweep(task, wsd_linear, space, steps=12,
                  execution=EX.replace(keep_params_at=(3,), checkpoint_dir=str(tmp_path)), **KW)
