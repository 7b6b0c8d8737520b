"""The Optuna bridge (optaxlr.integrations.optuna): a study's trials trained in batches as one
sweep, each trial told the value a standalone training loop of its parameters gives; the
study's direction, diverged trials, categorical choices and bad arguments."""

from __future__ import annotations

import functools
import optaxlr

import jax
import numpy as np
import optax
import pytest

optuna = pytest.importorskip("optuna")

from optaxlr import search  # noqa: E402
from optaxlr.integrations import optuna as ox  # noqa: E402
import optaxlr  # noqa: E402
from test_sweep import BATCH, make_task  # noqa: E402

FloatD = optuna.distributions.FloatDistribution
CatD = optuna.distributions.CategoricalDistribution
TrialState = optuna.trial.TrialState
STEPS, EVAL_EVERY = 24, 8
MOMENTUM = {"sgd": 0.0, "momentum": 0.9}  # "sgd": optax.sgd's trace with decay 0, plain SGD
# Every study below trains 4 trials x 2 seeds per sweep with `switched` in float64: one program,
# compiled once for the whole file.
KW = dict(steps=STEPS, batch_size=BATCH, eval_every=EVAL_EVERY, trials_per_sweep=4, seeds=2)
DISTS = {"lr": FloatD(1e-3, 1e200, log=True), "opt": CatD(["sgd", "momentum"])}  # 1e200: diverges

optuna.logging.set_verbosity(optuna.logging.WARNING)


def switched(h):
  """One optimizer for every trial: the choice is a traced index (search.switch)."""
  return optax.sgd(h["lr"], momentum=search.switch(h["opt"], MOMENTUM))


@functools.partial(jax.jit, static_argnames="task")
def _reference_step(params, opt_state, data_key, t, lr, momentum, task):
  idx = optaxlr.batch_indices(data_key, t, task.n_train, BATCH)
  batch = {k: v[idx] for k, v in task.train.items()}
  grads = jax.grad(task.loss)(params, batch)
  updates, opt_state = optax.sgd(lr, momentum=momentum).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def reference(task, lr, momentum, seed, steps=STEPS):
  """The final val/loss of one run written out as a plain optax loop (the keys and minibatches
  of optaxlr.run_keys / batch_indices, as every row of a sweep)."""
  init_key, data_key = optaxlr.run_keys(0, seed)
  params = jax.jit(task.init)(init_key)
  opt_state = optax.sgd(lr, momentum=momentum).init(params)
  for t in range(steps):
    params, opt_state = _reference_step(params, opt_state, data_key, t, lr, momentum, task=task)
  return float(jax.jit(task.metrics)(params, task.eval["val"])["loss"])


@pytest.fixture(scope="module")
def task():
  return make_task(act=jax.nn.relu)


def _study(direction="minimize", seed=0):
  return optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))


def test_batches_of_trials_are_told_what_standalone_runs_give(task, x64):
  study = _study()
  dists = {**DISTS, "lr": FloatD(1e-3, 0.3, log=True)}
  # The first batch draws only "sgd": the program still sees both choices (switch's dict is
  # complete, and the second batch reuses the compiled program).
  for lr in (0.01, 0.02, 0.05, 0.1):
    study.enqueue_trial({"lr": lr, "opt": "sgd"})
  batches = ox.optimize(study, task, switched, dists, n_trials=8, **KW)
  assert [b.trials for b in batches] == [(0, 1, 2, 3), (4, 5, 6, 7)]
  assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
  for b in batches:
    assert b.result.space.categories == {"opt": ("sgd", "momentum")}
  assert batches[1].result.info["compile_s"] == 0.0  # the same program as the first batch
  for b in batches:
    final = b.result.metrics["val/loss"][:, :, -1].mean(axis=0)  # (configs,) mean over 2 seeds
    for c, number in enumerate(b.trials):
      trial = study.trials[number]
      assert trial.value == b.values[c] == pytest.approx(final[c], rel=1e-12)
      assert trial.params["lr"] == b.result.hparams["lr"][c]
      assert trial.params["opt"] == b.result.hparams["opt"][c]
      attrs = trial.user_attrs["optaxlr"]
      assert attrs["sweep"] == batches.index(b) and attrs["config"] == c
      assert attrs["stop_reason"] == ["completed", "completed"]
      assert sorted(trial.intermediate_values) == [8, 16, 24]
  # Independent reference: a hand-written optax loop per seed, for a trial of each batch and
  # each choice of "opt".
  picks = {1} | {next(t.number for t in study.trials[4:] if t.params["opt"] == o)
                 for o in ("sgd", "momentum") if any(t.params["opt"] == o for t in study.trials[4:])}
  for number in sorted(picks):
    p = study.trials[number].params
    ref = [reference(task, p["lr"], MOMENTUM[p["opt"]], seed) for seed in (0, 1)]
    np.testing.assert_allclose(study.trials[number].value, np.mean(ref), rtol=1e-12)
  assert study.best_value == min(t.value for t in study.trials)


def test_the_study_direction_is_respected(task, x64):
  study = _study("maximize")
  for lr, opt in ((0.3, "sgd"), (0.01, "sgd"), (0.1, "momentum"), (0.003, "momentum")):
    study.enqueue_trial({"lr": lr, "opt": opt})
  (b,) = ox.optimize(study, task, switched, DISTS, n_trials=4, metric="val/accuracy", at="best",
                     **KW)
  acc = b.result.metrics["val/accuracy"].max(axis=-1).mean(axis=0)  # best over evaluations
  np.testing.assert_allclose([t.value for t in study.trials], acc, rtol=1e-12)
  assert study.best_trial.number == int(np.argmax(acc))
  # An explicit mode must agree with the study; an accuracy is not minimized by default.
  with pytest.raises(ValueError, match=r"optimize: mode='min' conflicts with the study's "
                                       r"direction 'maximize'; create the study with "
                                       r"direction='minimize' or drop mode"):
    ox.optimize(study, task, switched, DISTS, n_trials=2, mode="min", **KW)
  with pytest.raises(ValueError, match=r"the study's direction is 'minimize' but "
                                       r"metric='val/accuracy' is to be maximized"):
    ox.optimize(_study(), task, switched, DISTS, n_trials=2, metric="val/accuracy", **KW)
  with pytest.raises(ValueError, match=r"metric='val/loss' is to be minimized"):
    ox.optimize(_study("maximize"), task, switched, DISTS, n_trials=2, **KW)
  assert len(study.trials) == 4  # nothing more was asked for


def test_a_diverged_trial_is_told_fail_or_the_given_value(task, x64):
  for diverged_value in (None, 50.0):
    study = _study()
    for lr, opt in ((1e200, "sgd"), (0.01, "sgd"), (0.05, "momentum"), (1e200, "momentum")):
      study.enqueue_trial({"lr": lr, "opt": opt})
    (b,) = ox.optimize(study, task, switched, DISTS, n_trials=4, diverged_value=diverged_value,
                       **KW)
    assert b.result.diverged.all(axis=0).tolist() == [True, False, False, True]
    # The 4-trial program of the tests above; once both diverged trials stop, the live two move
    # into a 2-slot program (the pruner's compaction), compiled on the first pass only.
    if diverged_value is not None:
      assert b.result.info["compile_s"] == 0.0
    for number in (0, 3):
      bad = study.trials[number]
      if diverged_value is None:
        assert bad.state == TrialState.FAIL and bad.value is None and np.isnan(b.values[number])
      else:
        assert bad.state == TrialState.COMPLETE and bad.value == 50.0 == b.values[number]
      assert bad.user_attrs["optaxlr"]["stop_reason"] == ["diverged", "diverged"]
      assert bad.user_attrs["optaxlr"]["seed_values"] == [None, None]
    for number in (1, 2):
      assert study.trials[number].state == TrialState.COMPLETE
      assert np.isfinite(study.trials[number].value)


def _median_rule(study, number, values, steps):
  """MedianPruner(n_startup_trials=4) restated: at each reported step, prune once the trial's
  best value so far is above the median of the completed trials' values at that step."""
  done = [t for t in study.trials if t.state == TrialState.COMPLETE and t.number < number]
  for i, step in enumerate(steps):
    others = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
    if len(done) >= 4 and others and np.min(values[:i + 1]) > np.median(others):
      return step
  return None


def test_the_study_pruner_stops_trials_between_chunks(task, x64):
  """With MedianPruner, trials of the second round whose curves trail the first round's
  median are stopped at that evaluation and told PRUNED; the rest are told their value."""
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=4))
  for lr, opt in ((0.02, "sgd"), (0.05, "sgd"), (0.1, "sgd"), (0.2, "momentum"),
                  (0.001, "sgd"), (0.003, "sgd"), (0.1, "momentum"), (0.3, "sgd")):
    study.enqueue_trial({"lr": lr, "opt": opt})
  dists = {**DISTS, "lr": FloatD(1e-3, 0.3, log=True)}
  first, second = ox.optimize(study, task, switched, dists, n_trials=8, **KW)
  assert first.pruned == ()  # nothing finished yet to compare with
  steps = second.result.eval_steps
  want = {}
  for c, number in enumerate(second.trials):
    curve = second.result.metrics["val/loss"][:, c].mean(axis=0)
    at = _median_rule(study, number, curve, steps)
    if at is not None:
      want[number] = at
  assert len(second.pruned) >= 2 and second.pruned == tuple(sorted(want)), (second.pruned, want)
  for c, number in enumerate(second.trials):
    trial = study.trials[number]
    if number in want:
      assert trial.state == TrialState.PRUNED and np.isnan(second.values[c])
      assert trial.user_attrs["optaxlr"]["stop_reason"] == ["host", "host"]
      assert max(trial.intermediate_values) == want[number] < STEPS
      assert (second.result.stopped_at[:, c] == want[number]).all()
    else:
      assert trial.state == TrialState.COMPLETE
      assert sorted(trial.intermediate_values) == steps.tolist()
  assert second.result.info["adapt"]["pruned"] == {
      second.trials.index(n): s for n, s in want.items()}
  # prune=False: the same trials all run to the end.
  study2 = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=4))
  for t in study.trials:
    study2.enqueue_trial(t.params)
  ox.optimize(study2, task, switched, dists, n_trials=8, prune=False, **KW)
  assert [t.state for t in study2.trials] == [TrialState.COMPLETE] * 8
  with pytest.raises(ValueError, match=r"optimize: prune=True runs the study's pruner as the "
                                       r"sweep's adapt= strategy"):
    ox.optimize(study2, task, switched, dists, n_trials=1,
                adapt=optaxlr.adapt.successive_halving("val/loss"), **KW)


class _OnePerEvaluation(optuna.pruners.BasePruner):
  """Prunes one more trial of the second round at each evaluation (trial 8 + k at evaluation
  k + 1; trial 15 is kept), whatever the values: the live count takes every value from 8
  down to 1."""

  def prune(self, study, trial):
    step = trial.last_step
    return 8 <= trial.number < 15 and step is not None and trial.number - 8 < step // EVAL_EVERY


def test_pruned_rounds_compile_power_of_two_program_sizes(task, x64, monkeypatch):
  """A pruner may leave any number of trials: the bridge moves the live ones into programs of
  8, 4, 2 and 1 slots (not 7, 6, 5, 3), and the trial that survives is told what a standalone
  run of its parameters gives."""
  from optaxlr.engine import _core

  sizes = []
  orig = _core._Compiled.compiled_chunk

  def spy(self, *args):
    sizes.append(int(args[0].alive.shape[1]))
    return orig(self, *args)

  monkeypatch.setattr(_core._Compiled, "compiled_chunk", spy)
  steps = 8 * EVAL_EVERY
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), pruner=_OnePerEvaluation())
  lrs = [0.01 * (k + 1) for k in range(8)]
  for lr in lrs + lrs:
    study.enqueue_trial({"lr": lr, "opt": "sgd"})
  kw = {**KW, "steps": steps, "trials_per_sweep": 8}
  first, second = ox.optimize(study, task, switched, {**DISTS, "lr": FloatD(1e-3, 0.3, log=True)},
                              n_trials=16, **kw)
  assert first.pruned == () and second.pruned == tuple(range(8, 15))
  # (the memory plan also asks for the first chunk's executable once per round)
  second_sizes = sizes[-8:]  # the second round's 8 chunks
  assert sorted(set(sizes)) == [1, 2, 4, 8], sizes
  # live after chunk k: 8 - k (the pruner stops one per evaluation); pow2 sizes, never 7/6/5/3
  assert second_sizes == [8, 8, 8, 8, 4, 4, 2, 1], second_sizes
  survivor = study.trials[15]
  assert survivor.state == TrialState.COMPLETE
  ref = [reference(task, lrs[7], 0.0, seed, steps=steps) for seed in (0, 1)]
  np.testing.assert_allclose(survivor.value, np.mean(ref), rtol=1e-12)


def test_a_failing_sweep_leaves_no_trial_running(task):
  study = _study()
  # The optimizer reads no "wd": the sweep refuses an axis nothing reads.
  with pytest.raises(ValueError, match="wd|beyond float32"):
    ox.optimize(study, task, switched, {**DISTS, "wd": FloatD(0.0, 0.1)}, n_trials=4,
                **{**KW, "trials_per_sweep": 2})
  assert [t.state for t in study.trials] == [TrialState.FAIL] * 2


def test_optaxlr_search_distributions_convert():
  assert ox.to_optuna(search.log_uniform(1e-4, 0.1)) == FloatD(1e-4, 0.1, log=True)
  assert ox.to_optuna(search.uniform(0.0, 0.5)) == FloatD(0.0, 0.5)
  assert ox.to_optuna(search.int_uniform(1, 4)) == optuna.distributions.IntDistribution(1, 4)
  assert ox.to_optuna(search.choice(["a", "b"])) == CatD(("a", "b"))
  with pytest.raises(ValueError, match=r"to_optuna: one_minus_log_uniform\(0.9, 0.999\) has no "
                                       r"Optuna distribution"):
    ox.to_optuna(search.one_minus_log_uniform(0.9, 0.999))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_trials=0), ValueError, r"optimize: n_trials must be an int >= 1, got n_trials=0"),
    (dict(trials_per_sweep=0), ValueError, r"trials_per_sweep must be an int >= 1"),
    (dict(steps=2.5), ValueError, r"optimize: steps must be an int >= 1, got steps=2.5"),
    (dict(seeds=0), ValueError, r"optimize: seeds must be >= 1"),
    (dict(prune=1), TypeError, r"optimize: prune must be True or False, got prune=1"),
    (dict(at="last"), ValueError, r"optimize: at must be 'final' or 'best', got at='last'"),
    (dict(diverged_value=float("nan")), ValueError, r"diverged_value must be a finite number"),
    (dict(mode="down"), ValueError, r"mode must be 'min', 'max' or None"),
    (dict(metric="loss"), ValueError, r"metric must be 'split/name' with split one of the "
                                      r"task's evaluation splits \['val'\], got metric='loss'"),
    (dict(metric="test/loss"), ValueError, r"got metric='test/loss'"),
    (dict(batch_size=10_000), ValueError, r"optimize: batch_size must be an int in \[1, 96\]"),
    (dict(bacth_size=16), TypeError, r"optimize: unknown sweep argument 'bacth_size'"),
    (dict(space={}), TypeError, r"optimize: space is set by optimize itself"),
    (dict(execution=optaxlr.Execution(checkpoint_dir="ckpt")), ValueError, r"optimize: checkpoint_dir is not supported"),
    (dict(distributions={}), ValueError, r"distributions must be a non-empty dict"),
    (dict(distributions={"seed": FloatD(0, 1)}), ValueError, r"'seed' is a reserved axis name"),
    (dict(distributions={"lr": [0.1, 0.2]}), TypeError,
     r"optimize: distributions\['lr'\]: to_optuna: expected an optuna.distributions"),
    (dict(distributions={"m": search.one_minus_log_uniform(0.9, 0.99)}), ValueError,
     r"distributions\['m'\]: to_optuna: one_minus_log_uniform"),
    (dict(distributions={"opt": CatD(["sgd", 1.0])}), ValueError,
     r"distributions\['opt'\] must choose among strings only or numbers only"),
    (dict(study="study"), TypeError, r"optimize: study must be an optuna.Study"),
    (dict(study="multi"), ValueError, r"optimize: the study has 2 objectives"),
])
def test_bad_arguments_raise_before_any_trial(task, kwargs, error, match):
  study = _study()
  args = dict(study=study, distributions=DISTS, n_trials=2, **KW)
  args.update(kwargs)
  if args["study"] == "multi":
    args["study"] = optuna.create_study(directions=["minimize", "minimize"])
  with pytest.raises(error, match=match):
    ox.optimize(args.pop("study"), task, switched, args.pop("distributions"), **args)
  assert not study.trials


def test_without_optuna_the_error_says_what_to_install(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "optuna", None)
  with pytest.raises(ImportError, match=r"pip install optuna \(or pip install 'optaxlr\[optuna\]'\)"):
    ox.optimize(None, None, switched, {}, n_trials=1, steps=1)
