"""optaxlr.critical_batch_size and the ``optaxlr batch-size`` command.

The reference is a brute-force sweep: each batch size trained separately (its own sweep, its
own program, another PRNG key: another minibatch order) from the same snapshot for the same
number of examples, and the critical batch size read off with the test's own restatement of
the rule.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search

BS = [8, 32, 128]
EXAMPLES = 1024


@pytest.fixture(scope="module")
def setup():
  task = optaxlr.tasks.digits(hidden=(16,))
  opt = lambda h: optax.sgd(h["lr"], momentum=0.9)  # noqa: E731
  trunk = optaxlr.sweep(task, opt, search.grid(lr=[0.02]), steps=40, batch_size=32,
                        eval_every=20, execution=optaxlr.Execution(
                            progress=False, keep_params_at=(20,), keep_params=True))
  return task, opt, trunk


def _rule(loss, bs, tol):
  """The largest batch size whose loss is within (1 + tol) of the smallest batch size's."""
  return max(b for b, v in zip(bs, loss) if v <= loss[0] * (1 + tol))


@pytest.mark.slow
def test_branched_estimate_within_factor_2_of_brute_force(setup):
  task, opt, trunk = setup
  cbs = optaxlr.critical_batch_size(task, opt, trunk, batch_sizes=BS, examples=EXAMPLES,
                                    scaling="sqrt", tolerance=0.1)
  assert cbs.steps.tolist() == [20, 40]
  np.testing.assert_allclose(cbs.lrs, 0.02 * np.sqrt(np.array(BS) / 32))
  for i, step in enumerate(cbs.steps):
    snap = trunk.snapshots[20] if step == 20 else trunk
    brute = []
    for b, lr in zip(BS, cbs.lrs):
      r = optaxlr.sweep(task, opt, search.grid(lr=[float(lr)]), steps=EXAMPLES // b,
                        batch_size=b, eval_every=EXAMPLES // b, key=1,
                        start_from=snap.fork([0]), execution=optaxlr.Execution(progress=False))
      brute.append(float(r.metrics["val/loss"][0, 0, -1]))
    ref = _rule(brute, BS, 0.1)
    assert ref / 2 <= cbs.critical[i] <= ref * 2, (step, cbs.loss[i], brute)
    # the branched losses are the same experiment with another minibatch order
    np.testing.assert_allclose(cbs.loss[i], brute, rtol=0.15)
  assert np.all(np.isfinite(cbs.noise_scale)) and np.all(cbs.noise_scale > 0)
  assert cbs.schedule[0][0] == 0
  assert [b for _, b in cbs.schedule] == sorted(b for _, b in cbs.schedule)
  assert "B_crit" in cbs.table()


@pytest.mark.slow
def test_linear_rule_and_snapshot_choice(setup):
  task, opt, trunk = setup
  cbs = optaxlr.critical_batch_size(task, opt, trunk, at=[20], batch_sizes=[16, 64],
                                    examples=256, scaling="linear")
  np.testing.assert_allclose(cbs.lrs, [0.01, 0.04])
  assert cbs.steps.tolist() == [20] and cbs.loss.shape == (1, 2)
  assert cbs.critical[0] in (16, 64)


@pytest.mark.slow
def test_a_trunk_of_several_seeds_forks_every_seed(setup):
  """Each seed of a two-seed trunk is branched (it failed: the children's sweep had one seed);
  the loss is the mean over the seeds of what one-seed trunks of each seed give."""
  task, opt, _ = setup
  ex = optaxlr.Execution(progress=False, keep_params_at=(20,), keep_params=True)
  kw = dict(steps=40, batch_size=32, eval_every=20, execution=ex)
  both = optaxlr.sweep(task, opt, search.grid(lr=[0.02]), seeds=[0, 1], **kw)
  cbs = optaxlr.critical_batch_size(task, opt, both, at=[20], batch_sizes=[16, 64], examples=256)
  assert cbs.results[20].metrics["val/loss"].shape[0] == 2
  per_seed = []
  for seed in (0, 1):
    one = optaxlr.sweep(task, opt, search.grid(lr=[0.02]), seeds=[seed], **kw)
    per_seed.append(optaxlr.critical_batch_size(task, opt, one, at=[20], batch_sizes=[16, 64],
                                                examples=256).loss)
  np.testing.assert_allclose(cbs.loss, np.mean(per_seed, axis=0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(at=[30]), r"at=\[30\] holds step 30, which is not a kept snapshot of the trunk \(its "
                    r"run covers steps 0..40; kept: \[20, 40\]\)"),
    (dict(at=[400]), r"step 400, which is not a kept snapshot"),
    (dict(batch_sizes=[8, 4096]), r"batch_sizes holds 4096, outside \[1, 1077\]"),
    (dict(batch_sizes=[8]), r"at least 2 distinct sizes"),
    (dict(batch_sizes=[32, 8]), r"increasing order"),
    (dict(examples=1000), r"examples must be a positive multiple of every batch size.*"
                          r"examples=1000 with batch size 16"),
    (dict(scaling="cubic"), r"scaling must be one of \('linear', 'sqrt'\), got scaling='cubic'"),
    (dict(lr="eta"), r"lr='eta' is not a hyperparameter of the trunk"),
    (dict(tolerance=0.0), r"tolerance must be a finite number > 0"),
    (dict(metric="train/loss"), r"metric must be 'split/name' of an evaluated split"),
    (dict(config=3), r"config must be in \[0, 1\)"),
])
def test_bad_input_is_an_error_before_any_compute(setup, kwargs, match, monkeypatch):
  task, opt, trunk = setup
  monkeypatch.setattr(optaxlr.batch_size, "sweep", _no_compute)
  args = {"batch_sizes": [8, 16], "examples": 256, **kwargs}
  with pytest.raises(ValueError, match=r"critical_batch_size: .*" + match):
    optaxlr.critical_batch_size(task, opt, trunk, **args)


def _no_compute(*args, **kwargs):
  raise AssertionError("a sweep ran before the input was checked")


def test_a_trunk_without_kept_state_is_an_error(setup, monkeypatch):
  task, opt, _ = setup
  monkeypatch.setattr(optaxlr.batch_size, "sweep", _no_compute)
  bare = optaxlr.sweep(task, opt, search.grid(lr=[0.02]), steps=2, batch_size=8,
                       execution=optaxlr.Execution(progress=False))
  with pytest.raises(ValueError, match=r"critical_batch_size: trunk holds no kept state to fork"):
    optaxlr.critical_batch_size(task, opt, bare, batch_sizes=[8, 16], examples=64)
  with pytest.raises(TypeError, match=r"critical_batch_size: trunk must be a SweepResult"):
    optaxlr.critical_batch_size(task, opt, {"params": 1}, batch_sizes=[8, 16], examples=64)


# ---------------------------------------------------------------------- optaxlr batch-size
@pytest.mark.slow
def test_cli_batch_size_command(tmp_path, capsys):
  from optaxlr import cli

  out = tmp_path / "o"
  code = cli.main(["batch-size", "--task", "teacher_student", "--steps", "20", "--snapshots",
                   "10", "--batch-sizes", "8,32", "--examples", "64", "--batch-size", "8",
                   "--out", str(out)])
  text = capsys.readouterr().out
  assert code == 0, text
  assert "B_crit" in text and "B_simple" in text and "batch-size schedule (warmup)" in text
  import json

  summary = json.loads((out / "batch_size.json").read_text())
  assert summary["steps"] == [10, 20] and summary["batch_sizes"] == [8, 32]
  assert len(summary["loss"]) == 2 and all(c in (8, 32) for c in summary["critical"])
  assert (out / "batch_size.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, match", [
    (["--batch-sizes", "8,100000"], r"--batch-sizes: batch size 100000 is outside \[1, 100\]"),
    (["--snapshots", "500"], r"--snapshots must be increasing steps in \[1, --steps=20\)"),
    (["--examples", "100"], r"--examples must be a multiple of every batch size"),
    (["--batch-sizes", "32,8"], r"--batch-sizes must hold at least 2 increasing sizes"),
    (["--tolerance", "0"], r"--tolerance must be a finite number > 0"),
])
def test_cli_batch_size_bad_usage(tmp_path, capsys, argv, match):
  import re

  from optaxlr import cli

  base = ["batch-size", "--task", "teacher_student", "--steps", "20", "--snapshots", "10",
          "--batch-sizes", "8,32", "--examples", "64", "--out", str(tmp_path)]
  with pytest.raises(SystemExit) as e:
    cli.main(base + argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("optaxlr batch-size: error: ") and re.search(match, err), err
