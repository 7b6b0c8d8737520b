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


def test_snapshots_of_several_groups(task):
  """Configs trained in groups (max_group_size=1): each group's snapshot lands in its configs."""
  space = search.grid(lr=[1e-2, 3e-3], decay_at=[100.0], end=[200.0])
  one = optaxlr.sweep(task, wsd_linear, space, steps=6, execution=EX.replace(keep_params_at=(3,)), **KW)
  grouped = optaxlr.sweep(task, wsd_linear, space, steps=6,
                          execution=EX.replace(keep_params_at=(3,), max_group_size=1), **KW)
  assert grouped.info["groups"] == 2
  np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(grouped.snapshots[3].params)]),
                             np.concatenate([np.ravel(x) for x in jax.tree.leaves(one.snapshots[3].params)]),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(grouped.snapshots[3].batch_loss, grouped.batch_loss[..., :3])


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


def test_a_child_with_a_batch_size_above_the_training_set_is_an_error(task, monkeypatch):
  from optaxlr.engine import _driver

  parent = optaxlr.sweep(task, wsd_linear, search.grid(lr=[1e-2], decay_at=[100.0], end=[200.0]),
                         steps=3, execution=EX, **KW)

  def no_run(plan):
    raise AssertionError("the sweep ran")
  monkeypatch.setattr(_driver, "run", no_run)
  kids = search.zip(lr=[1e-2, 1e-2], decay_at=[100.0] * 2, end=[200.0] * 2, batch_size=[16, 65])
  with pytest.raises(ValueError, match="batch_size"):
    optaxlr.sweep(task, wsd_linear, kids, steps=3, seeds=2, eval_every=3,
                  start_from=parent.fork([0, 0]), execution=EX)


# ----------------------------------------------------------------------------------------
# horizons


def test_wsd_schedule_matches_the_formula():
  """A NumPy restatement of the three cooldowns (Hägele et al. 2024; Bergsma et al. 2025)."""
  lr, horizon, cool, warm, floor = 0.3, 40, 12, 4, 0.1
  t = np.arange(0, 45)
  q = np.clip((horizon - t) / cool, 0, 1)  # fraction of the cooldown left
  p = 1 - q
  plateau = np.where(t < warm, lr * t / warm, lr)
  want = {"linear": lr * q, "cosine": floor * lr + (lr - floor * lr) * (1 + np.cos(np.pi * p)) / 2,
          "1-sqrt": lr * (1 - np.sqrt(p))}
  for shape, tail in want.items():
    ref = np.where(t < horizon - cool, plateau, tail)
    got = optaxlr.branch.wsd_schedule(lr, horizon, cool, shape, warmup_steps=warm,
                                      cosine_floor=floor)(jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-7, err_msg=shape)
  with pytest.raises(ValueError, match="wsd_schedule: shape must be one of"):
    optaxlr.branch.wsd_schedule(lr, horizon, cool, "sqrt")


def adam(lr):
  return optax.adam(lr)


LRS, WARM, HS, FRAC = [1e-2, 3e-3], 2, [8, 16, 32, 64, 128], 0.25


@pytest.fixture(scope="module")
def hz(task):
  """Five doubling horizons, cooldown 25%, every shape, two peak rates, two seeds."""
  return optaxlr.horizons(task, adam, peak_lr=LRS, horizons=HS, fractions=[FRAC],
                          warmup_steps=WARM, batch_size=16, seeds=2,
                          execution=optaxlr.Execution(progress=False, keep_params=True))


@pytest.mark.slow
def test_each_branch_equals_a_separately_trained_wsd_run(task, hz):
  """Bitwise: the trunk is the plateau of every separate run, and each branch continues from
  its exact state with the same minibatches, keys and schedule. The references are WSD runs of
  the full horizon from scratch (optaxlr.schedules.warmup_stable_decay, the shape picked by
  its own optimizer function per shape: not the code path of horizons). The reference's chunks
  (eval_every=2) have the branches' length (the gcd of the cooldowns), so that the compiled
  step is the same program: a scan of another length may fuse differently by an ulp."""
  assert hz.values["val/loss"].shape == (2, 2, 5, 1, 3)
  for ki, (shape, decay) in enumerate([("linear", "linear"), ("cosine", "cosine"),
                                       ("1-sqrt", "sqrt")]):
    def ref_opt(hp, shape=shape, decay=decay):
      lr = hp["lr"]
      return optax.adam(optaxlr.schedules.warmup_stable_decay(
          lr, hp["horizon"], WARM, decay_steps=hp["cooldown"], decay=decay,
          end_lr=0.1 * lr if shape == "cosine" else 0.0))
    for h in (8, 128):  # the shortest horizon and the trunk's end: the test's time
      hi, cool = HS.index(h), int(h * FRAC)
      ref = optaxlr.sweep(task, ref_opt, search.grid(lr=LRS, horizon=[h], cooldown=[cool]),
                          steps=h, batch_size=16, seeds=2, eval_every=2, execution=EX)
      for name in ("val/loss", "test/loss"):
        np.testing.assert_array_equal(hz.values[name][:, :, hi, 0, ki], ref.metrics[name][..., -1],
                                      err_msg=f"{h} {shape} {name}")
      for li in range(2):  # branch configs: lr-major, then shape
        take = lambda tree, c: jax.tree.map(lambda x: x[:, c], tree)  # noqa: E731
        leaves_equal(take(hz.branches[(h, FRAC)].params, li * 3 + ki), take(ref.params, li))
        leaves_equal(take(hz.branches[(h, FRAC)].opt_state, li * 3 + ki), take(ref.opt_state, li))
  # the shapes differ (the comparison can fail)
  v = hz.values["val/loss"]
  assert not np.array_equal(v[..., 0], v[..., 2])


def test_horizons_cost_at_five_horizons_is_under_40_percent(hz):
  # steps counted from what the programs ran (configs x steps of each sweep), not from a formula
  ran = hz.trunk.info["slot_steps"] + sum(b.info["slot_steps"] for b in hz.branches.values())
  assert ran == hz.steps_spent == 96 * 2 + (2 + 4 + 8 + 16 + 32) * 3 * 2
  assert hz.separate_steps == sum(HS) * 3 * 2
  assert hz.cost_fraction <= 0.40, hz.cost_fraction
  rows = hz.best_fractions("val/loss", report="test/loss")
  assert len(rows) == 2 * 5 * 3 and all(r["fraction"] == FRAC for r in rows)
  df = hz.to_pandas()
  assert len(df) == 2 * 2 * 5 * 3 and {"seed", "lr", "horizon", "fraction", "shape",
                                       "val/loss"} <= set(df)
  cmp = hz.compare_shapes("linear", "cosine", "test/loss")
  assert len(cmp) == 2 * 5 and all(np.isfinite(r["diff"]) for r in cmp)
  # a longer budget trains further (the curve is not flat noise)
  cur = hz.curve("val/loss")["mean"]  # (L, N, K)
  assert (cur[:, -1] < cur[:, 0]).all()


def test_best_fraction_has_a_paired_interval(task):
  """Two fractions: the best by mean over seeds, its paired gap to the other fraction."""
  res = optaxlr.horizons(task, adam, peak_lr=1e-2, horizons=[8, 16], fractions=[0.25, 0.5],
                         shapes=["linear"], batch_size=16, seeds=3,
                         execution=optaxlr.Execution(progress=False))
  v = res.values["val/loss"][:, 0, :, :, 0]  # (S, N, F)
  for row, h in zip(res.best_fractions("val/loss"), [8, 16]):
    x = v[:, [8, 16].index(h)]
    b = int(np.argmin(x.mean(axis=0)))
    d = x[:, b] - x[:, 1 - b]
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert row["fraction"] == [0.25, 0.5][b] and row["runner_up"] == [0.25, 0.5][1 - b]
    np.testing.assert_allclose(row["gap_interval"], (d.mean() - half, d.mean() + half), rtol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(fractions=[1.0]), r"fractions must be strictly increasing cooldown fractions in \(0, 1\)"),
    (dict(fractions=[1.5]), r"fractions must be .* in \(0, 1\)"),
    (dict(fractions=[0.5], warmup_steps=6), "the cooldown of 5 steps .* is longer than horizon 10"),
    (dict(fractions=[0.25]), "the cooldown fraction 0.25 of horizon 10 is 2.5 steps, not a whole"),
    (dict(batch_size=65), r"batch_size must be an int in \[1, 64\]"),
    (dict(horizons=[20, 10]), "horizons must be strictly increasing"),
    (dict(horizons=[10, 1.5]), "horizons must hold ints >= 2"),
    (dict(shapes=["linear", "exp"]), r"shapes must be distinct names of \("),
    (dict(shapes=["linear"], cosine_floor=0.0), r"cosine_floor=0.0 is given but .*has no .cosine.; it would not be used"),
    (dict(peak_lr=-1.0), "peak_lr must be a positive number"),
    (dict(metrics_every=3), r"metrics_every must divide every fork point \[8, 16\]"),
    (dict(execution=optaxlr.Execution(keep_params_at=(2,))), r"Execution\(keep_params_at=\(2,\)\) is set by horizons itself"),
])
def test_horizons_bad_input_is_an_error_before_any_compute(task, monkeypatch, kw, match):
  def no_sweep(*a, **k):
    raise AssertionError("trained")
  monkeypatch.setattr(optaxlr.branch, "sweep", no_sweep)
  args = dict(peak_lr=1e-2, horizons=[10, 20], fractions=[0.2], batch_size=16)
  with pytest.raises(ValueError, match=f"horizons: {match}"):
    optaxlr.horizons(task, adam, **{**args, **kw})


# ----------------------------------------------------------------------------------------
# optaxlr horizons (the command)


@pytest.mark.slow
def test_horizons_command_prints_the_table_and_draws(tmp_path, capsys):
  from optaxlr import cli

  assert cli.main(["horizons", "--base-steps", "8", "--multiples", "1,2", "--fractions",
                   "0.25,0.5", "--seeds", "2", "--batch-size", "16", "--lr", "1e-2",
                   "--no-progress", "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "horizons [8, 16], fractions [0.25, 0.5]" in out
  assert "best cooldown fraction per horizon" in out and "linear to zero - cosine to 0.1x" in out
  # trunk 12 + cooldowns (2 + 4 + 4 + 8) x 3 shapes, against (8 + 16) x 2 fractions x 3 shapes
  assert "cost: 66 steps per seed (every peak rate) against 144 for separate runs (46%)" in out
  import matplotlib.image
  import pandas as pd

  img = matplotlib.image.imread(tmp_path / "horizons.png")
  assert img.shape[0] > 300 and img.shape[1] > 1000
  df = pd.read_csv(tmp_path / "horizons.csv")
  assert len(df) == 2 * 2 * 2 * 3 and np.isfinite(df["val/loss"]).all()


@pytest.mark.parametrize("options, match", [
    (["--fractions", "0.5,1.5"], r"fractions must be strictly increasing cooldown fractions in \(0, 1\)"),
    (["--fractions", "0.75", "--warmup-steps", "4"], r"the cooldown of 6 steps \(fraction 0.75\) is longer than horizon 8"),
    (["--batch-size", "100000"], r"batch_size must be an int in \[1, "),
    (["--multiples", "1,x"], "--multiples must be comma-separated numbers"),
    (["--shapes", "linear,exp"], "shapes must be distinct names of"),
    (["--metric", "nope/loss"], "--metric 'nope/loss': the task has no 'nope' split"),
])
def test_horizons_command_bad_usage_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch,
                                                            options, match):
  from optaxlr import cli

  def tripwire(*a, **k):
    raise AssertionError("trained")
  monkeypatch.setattr(optaxlr, "horizons", tripwire)
  with pytest.raises(SystemExit) as e:
    cli.main(["horizons", "--base-steps", "8", "--multiples", "1,2", "--fractions", "0.5",
              *options, "--out", str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("optaxlr horizons: error: ")
  import re
  assert re.search(match, err), err


def test_horizons_command_help(capsys):
  from optaxlr import cli

  with pytest.raises(SystemExit) as e:
    cli.main(["horizons", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: optaxlr horizons") and "--cosine-floor" in out
