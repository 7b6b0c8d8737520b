"""Adaptive search inside one program (optaxlr.adapt) against what the same runs give unsteered:
successive halving keeps exactly the configs a full sweep ranks best at each rung, its survivors
equal their full runs and the stopped ones cost nothing more; Hyperband's brackets are the
paper's; PBT's exploit/explore equals a standalone run that does the same, and its replayed
schedule reproduces it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import adapt, search
from test_sweep import make_task, run


def sgd(h):
  return optax.sgd(h["lr"])


LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 2.0, 0.001]


def test_successive_halving_keeps_what_the_full_sweep_ranks_best(x64):
  task = make_task()
  space = search.zip(lr=LRS)
  full = run(task, sgd, space, seeds=2, steps=36, eval_every=4)
  sh = run(task, sgd, space, seeds=2, steps=36, eval_every=4,
           adapt=adapt.successive_halving("val/loss", eta=3, min_steps=4))
  rungs = sh.info["adapt"]["rungs"]
  assert [r["step"] for r in rungs] == [4, 12]
  val = full.metrics["val/loss"].mean(axis=0)  # (C, E)
  e4, e12 = list(full.eval_steps).index(4), list(full.eval_steps).index(12)
  first = sorted(range(9), key=lambda c: (val[c, e4], c))[:3]
  second = sorted(first, key=lambda c: (val[c, e12], c))[:1]
  assert rungs[0]["kept"] == first and rungs[1]["kept"] == second
  winner = second[0]
  # The survivor equals its run in the full sweep (the program shrank: a few ulps).
  np.testing.assert_allclose(sh.batch_loss[:, winner], full.batch_loss[:, winner], rtol=1e-12)
  for c in range(9):
    if c in first and c not in second:
      assert (sh.stopped_at[:, c] == 12).all() and (sh.stop_reason[:, c] == "host").all()
    elif c not in first:
      assert (sh.stopped_at[:, c] == 4).all()
      np.testing.assert_allclose(sh.batch_loss[:, c, :4], full.batch_loss[:, c, :4], rtol=1e-12)
      assert np.isnan(sh.batch_loss[:, c, 5:]).all()
  # The freed slots did not keep computing: 9 x 4 + 3 x 8 + 1 x 24 slot-steps, not 9 x 36.
  assert sh.info["slot_steps"] == 9 * 4 + 3 * 8 + 1 * 24
  assert sh.info["adapt"]["config_steps"] == 6 * 4 + 2 * 12 + 1 * 36  # steps each config trained
  assert sh.best("val/loss")["index"] == winner


def test_hyperband_brackets_are_the_papers():
  # Li et al. (2018), Table 1: R = 81, eta = 3.
  assert adapt.hyperband_brackets(3, 1, 81) == ((81, 34, 15, 8, 5), (1, 3, 9, 27, 81))
  assert adapt.hyperband_size(3, 1, 81) == 143


def test_hyperband_runs_its_brackets_side_by_side():
  task = make_task()
  n = adapt.hyperband_size(3, 4, 36)  # brackets (9, 3) x first rungs (4, 12): sizes (9, 5)?
  sizes, starts = adapt.hyperband_brackets(3, 4, 36)
  space = search.random(0, n, lr=search.log_uniform(1e-3, 1.0))
  res = run(task, sgd, space, steps=36, eval_every=4,
            adapt=adapt.hyperband("val/loss", eta=3, min_steps=4, max_steps=36))
  rep = res.info["adapt"]
  assert [b["rungs"][:1] for b in rep["brackets"]] == [[s] for s in starts if s < 36] + \
      [[] for s in starts if s >= 36]
  # Every bracket ends with its survivors trained to the end.
  lo = 0
  for size in sizes:
    done = (res.stop_reason[0, lo:lo + size] == "completed").sum()
    assert done >= 1
    lo += size
  assert res.info["slot_steps"] < n * 36


def test_pbt_exploit_and_explore_equal_a_standalone_run_and_its_replay(x64):
  task = make_task()
  space = search.zip(lr=[0.001, 0.05, 0.2, 0.5])
  p = adapt.pbt("val/loss", interval=8, quantile=0.25, perturb={"lr": (0.5, 2.0)}, seed=3)
  res = run(task, sgd, space, steps=24, eval_every=8, adapt=p)
  ex = res.info["adapt"]["exploits"]
  assert ex and all(e["step"] in (8, 16) for e in ex)
  first = [e for e in ex if e["step"] == 8][0]
  dst, src = first["dst"], first["src"]
  assert first["score_src"] < first["score_dst"]
  assert first["hparams"]["lr"] in (0.5 * space[src]["lr"], 2.0 * space[src]["lr"])
  # The replayed schedule of dst's lineage, trained from scratch in a plain sweep, reproduces
  # dst's run (every config of a seed shares its initial parameters and minibatches).
  bounds, values, sched = p.schedule(dst, "lr")
  assert 8 in bounds.tolist()
  replay = run(task, lambda h: optax.sgd(sched), search.zip(x=[0.0]), steps=24, eval_every=8,
               objective=lambda loss, h: loss + 0 * h["x"])
  # From dst's last exploit on, its run is its lineage's: the replay gives the same numbers.
  b = int(bounds[-1])
  np.testing.assert_allclose(res.batch_loss[0, dst, b:], replay.batch_loss[0, 0, b:], rtol=1e-12)
  np.testing.assert_allclose(res.metrics["val/loss"][0, dst, -1], replay.metrics["val/loss"][0, 0, -1],
                             rtol=1e-12)
  # A standalone run that does the same: src's rate for 8 steps, then the new rate.
  from test_core import standalone_losses
  new_lr = first["hparams"]["lr"]
  ref, _ = standalone_losses(task, sgd(space[src]), 0, 24,
                             on_step=lambda t, params, tx: sgd({"lr": new_lr}) if t == 8 else None)
  if b == 8:
    np.testing.assert_allclose(res.batch_loss[0, dst, 8:], ref[8:], rtol=1e-12)


def test_pbt_replaces_a_diverged_member():
  """A member that diverged is a copy target (never a source): its slot trains again."""
  task = make_task()
  space = search.zip(lr=[0.01, 0.05, 0.1, 2.0])

  def nan_above_one(h):  # the last config's updates are NaN: it diverges at its first step
    return optax.chain(optax.sgd(h["lr"]), optax.scale(jnp.where(h["lr"] > 1.0, jnp.nan, 1.0)))
  p = adapt.pbt("val/loss", interval=8, quantile=0.25, perturb={"lr": (0.8, 1.25)}, seed=0)
  res = run(task, nan_above_one, space, steps=24, eval_every=8, adapt=p)
  ex = res.info["adapt"]["exploits"]
  revived = [e for e in ex if e.get("dst_diverged")]
  assert revived and revived[0]["dst"] == 3 and revived[0]["step"] == 8
  assert all(e["src"] != 3 for e in ex if e["step"] == revived[0]["step"])
  # the slot trained on from its new parent's state: finite losses after the exploit
  assert np.isfinite(res.batch_loss[0, 3, 8:]).all()
  assert np.isfinite(res.metrics["val/loss"][0, 3, -1])


@pytest.mark.parametrize("strategy, kwargs, match", [
    (lambda: adapt.successive_halving("val/loss", eta=3, min_steps=3), dict(eval_every=4),
     r"successive_halving: the rung at step 3 is not a host sync point"),
    (lambda: adapt.successive_halving("val/nope", min_steps=4), {}, r"adapt metric 'val/nope'"),
    (lambda: adapt.successive_halving("val/loss", min_steps=4), dict(execution=optaxlr.Execution(max_group_size=2)),
     r"adaptive search compares every config at once"),
    (lambda: adapt.pbt("val/loss", 8, perturb={"wd": (0.8, 1.2)}), {},
     r"pbt: perturb/resample name \['wd'\] not in the space"),
    (lambda: adapt.hyperband("val/loss", min_steps=4, max_steps=36), {},
     r"hyperband: the brackets hold"),
])
def test_bad_settings_are_clear_errors(strategy, kwargs, match):
  with pytest.raises(ValueError, match=match):
    run(make_task(), sgd, search.zip(lr=LRS), steps=36, eval_every=kwargs.pop("eval_every", 4),
        adapt=strategy(), **kwargs)


@pytest.mark.parametrize("factory, match", [
    (lambda: adapt.successive_halving("val/loss", eta=1), r"successive_halving: eta must be an int >= 2"),
    (lambda: adapt.pbt("val/loss", 10, quantile=0.7, perturb={"lr": (0.8, 1.2)}), r"quantile must be in"),
    (lambda: adapt.pbt("val/loss", 10), r"pbt: give perturb="),
    (lambda: adapt.pbt("val/loss", 10, perturb={"lr": (0.0, 1.2)}), r"factors must be finite and > 0"),
])
def test_bad_strategy_arguments(factory, match):
  with pytest.raises(ValueError, match=match):
    factory()


# -- a conv model with the default vectorize (config blocks under lax.map) ------------------

@pytest.fixture(scope="module")
def digits_cnn():
  """One task for both strategies: their programs of the same size compile once."""
  return optaxlr.tasks.digits(model="cnn", n=120, channels=(2, 2))


def adam(h):
  return optax.adam(h["lr"])


@pytest.mark.parametrize("strategy", ["successive_halving", "hyperband"])
def test_conv_model_with_default_vectorize_shrinks_its_blocks(strategy, digits_cnn):
  """Successive halving and Hyperband on the built-in CNN with the defaults: the program
  shrinks to the live runs in blocks of vectorize=1 (it crashed at the first rung: `cannot
  reshape ... (2, 1, 27, 0, 16)`), and every config kept to the end equals its standalone run
  (a sweep of that config alone)."""
  task, kw = digits_cnn, dict(steps=4, eval_every=1, batch_size=8, execution=optaxlr.Execution(progress=False))
  if strategy == "successive_halving":
    n, rule = 4, adapt.successive_halving("val/loss", eta=4, min_steps=1)  # 4 runs, then 1
  else:  # brackets of (2, 2) configs from step (2, 4): 4 runs, then 3
    n, rule = adapt.hyperband_size(2, 2, 4), adapt.hyperband("val/loss", eta=2, min_steps=2,
                                                             max_steps=4)
  space = search.random(0, n, lr=search.log_uniform(1e-3, 1e-1))
  res = optaxlr.sweep(task, adam, space, seeds=2, adapt=rule, **kw)
  assert res.info["vectorize"] == 1  # the default on the CPU for a conv model
  kept = np.flatnonzero((res.stop_reason == "completed").all(axis=0))
  stopped = np.flatnonzero((res.stop_reason == "host").all(axis=0))
  assert kept.size >= 1 and stopped.size >= 1 and kept.size + stopped.size == n
  assert res.info["slot_steps"] < n * 4  # the stopped runs cost nothing after their rung
  for c in kept:
    alone = optaxlr.sweep(task, adam, search.grid(lr=[res.config(int(c))["lr"]]), seeds=2, **kw)
    np.testing.assert_allclose(res.batch_loss[:, c], alone.batch_loss[:, 0], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(res.metrics["val/loss"][:, c], alone.metrics["val/loss"][:, 0],
                               rtol=1e-5, atol=1e-6)
