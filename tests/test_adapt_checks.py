"""Hyperparameters written by steering and by PBT go through the space's checks; the direction
of successive halving / Hyperband / PBT follows the metric's name (issue 20)."""

from __future__ import annotations

import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import adapt, search
from test_sweep import make_task, run


def sgd(h):
  return optax.sgd(h["lr"])


def momentum(h):
  return optax.sgd(h["lr"], momentum=h["m"])


@pytest.mark.parametrize("factory, kw", [
    (adapt.successive_halving, dict(min_steps=4)),
    (adapt.hyperband, dict(min_steps=1, max_steps=9)),
    (adapt.pbt, dict(interval=4, perturb={"lr": (0.8, 1.2)})),
])
def test_mode_follows_the_metric_and_a_conflict_is_an_error(factory, kw):
  name = factory.__name__
  assert factory("val/accuracy", **kw).mode == "max"
  assert factory("val/acc", **kw).mode == "max"
  assert factory("val/loss", **kw).mode == "min"
  assert factory("val/error", **kw).mode == "min"
  assert factory("val/my_score", **kw).mode == "min"  # no direction in the name: "min"
  assert factory("val/my_score", mode="max", **kw).mode == "max"
  assert factory("val/accuracy", mode="max", **kw).mode == "max"
  with pytest.raises(ValueError, match=rf"{name}: mode='min' conflicts with metric='val/accuracy',"
                                       r" which is to be maximised; drop mode or pass mode='max'"):
    factory("val/accuracy", mode="min", **kw)
  with pytest.raises(ValueError, match=rf"{name}: mode='max' conflicts with metric='val/loss'"):
    factory("val/loss", mode="max", **kw)
  with pytest.raises(ValueError, match=rf"{name}: mode must be 'min', 'max' or None"):
    factory("val/loss", mode="maximize", **kw)


def test_successive_halving_on_an_accuracy_keeps_the_most_accurate():
  """The default mode used to be "min" whatever the metric: on an accuracy it kept the worst."""
  task = make_task()
  space = search.zip(lr=[1e-4, 3e-1, 1e-3, 1e-1])
  full = run(task, sgd, space, steps=8, eval_every=4)
  sh = adapt.successive_halving("val/accuracy", eta=2, min_steps=4)
  res = run(task, sgd, space, steps=8, eval_every=4, adapt=sh)
  acc = full.metrics["val/accuracy"][:, :, 0].mean(axis=0)  # ranked at the rung, step 4
  kept = np.flatnonzero(res.stop_reason[0] == "completed")
  assert len(kept) == 2
  assert set(kept) == set(np.argsort(-acc, kind="stable")[:2]), (acc, res.stop_reason)


@pytest.mark.parametrize("value, match", [
    (-1.0, r"sweep: Control.set_hparams for config 0: lr must be > 0, config 0 has lr=-1.0"),
    (0.0, r"lr must be > 0"),
    (1e40, r"beyond float32"),
    (float("inf"), r"not a finite number"),
])
def test_steered_hyperparameters_are_checked_like_the_space(value, match):
  task = make_task()

  def steer(event):
    if event.chunk == 0:
      return optaxlr.Control(set_hparams={0: {"lr": value}})
    return None

  with pytest.raises(ValueError, match=match):
    run(task, sgd, search.zip(lr=[1e-2, 3e-2]), steps=8, eval_every=4, callback=steer)


def test_pbt_keeps_perturbed_values_inside_their_declared_range():
  """Momentum multiplied by 1.5 again and again went past 1 (2.09 seen) with runs
  "completing"; with a declared range it stays inside it."""
  task = make_task()
  space = search.zip(lr=[1e-2, 3e-2, 1e-1, 3e-3], m=[0.9, 0.8, 0.95, 0.7])
  p = adapt.pbt("val/loss", interval=4, quantile=0.5, perturb={"m": (1.5, 1.5)},
                resample={"m": search.uniform(0.0, 0.99)}, resample_probability=0.0, seed=0)
  res = run(task, momentum, space, steps=16, eval_every=4, adapt=p)
  ex = res.info["adapt"]["exploits"]
  assert ex, "no exploit happened"
  values = [e["hparams"]["m"] for e in ex]
  assert max(values) == pytest.approx(0.99), values  # 0.9 * 1.5 = 1.35 clipped
  assert all(0.0 <= v <= 0.99 for v in values)


def test_pbt_refuses_to_multiply_an_integer_or_categorical_axis():
  task = make_task()
  space = search.zip(lr=[1e-2, 3e-2], opt=["sgd", "adam"])

  def opt(h):
    return search.switch(h["opt"], {"sgd": optax.sgd(h["lr"]), "adam": optax.adam(h["lr"])})

  p = adapt.pbt("val/loss", interval=4, perturb={"opt": (0.8, 1.2)})
  with pytest.raises(ValueError, match=r"pbt: perturb names \['opt'\], integer or categorical axes,"
                                       r" which cannot be multiplied; put them in resample"):
    run(task, opt, space, steps=8, eval_every=4, adapt=p)


def _switch_opt(h):
  return search.switch(h["opt"], {"sgd": optax.sgd(h["lr"]), "adam": optax.adam(h["lr"])})


def test_pbt_resamples_a_categorical_axis_by_name():
  """resample={"opt": search.choice(["sgd", "adam"])} draws names; each exploited config
  trains on with the drawn name's index into space.categories["opt"] (read back from the
  slot's final hyperparameters), and the exploit record shows the name."""
  task = make_task()
  space = search.zip(lr=[1e-2, 3e-2, 1e-1, 3e-1], opt=["sgd", "adam", "sgd", "adam"])
  cats = space.categories["opt"]
  assert list(cats) == ["sgd", "adam"]
  p = adapt.pbt("val/loss", interval=4, quantile=0.5,
                resample={"opt": search.choice(["sgd", "adam"])}, resample_probability=1.0,
                seed=1)
  res = run(task, _switch_opt, space, steps=16, eval_every=4, adapt=p)
  ex = res.info["adapt"]["exploits"]
  assert ex, "no exploit happened"
  assert {e["hparams"]["opt"] for e in ex} <= {"sgd", "adam"}
  last = {}
  for e in ex:
    last[e["dst"]] = e["hparams"]["opt"]
  final = res.info["hparams_final"]["opt"]
  for dst, name in last.items():
    assert final[dst] == ["sgd", "adam"].index(name), (dst, name, final)


@pytest.mark.parametrize("dist", [search.choice([0, 1]), search.choice(["sgd", "rmsprop"]),
                                  search.uniform(0.0, 1.0)])
def test_pbt_refuses_a_categorical_resample_not_by_the_axis_names(dist):
  space = search.zip(lr=[1e-2, 3e-2], opt=["sgd", "adam"])
  p = adapt.pbt("val/loss", interval=4, resample={"opt": dist})
  with pytest.raises(ValueError, match=r"pbt: resample\['opt'\] must be search.choice of the "
                     r"categorical axis's values \['sgd', 'adam'\] \(by name\)"):
    run(make_task(), _switch_opt, space, steps=8, eval_every=4, adapt=p)
