"""Categorical (string) axes and search.switch, against the separate sweeps / branches alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search
from optaxlr.tasks import Task

STEPS, BATCH, EVAL_EVERY = 12, 16, 6
LRS = [0.02, 0.05]
ULPS = 8 * np.finfo(np.float64).eps  # "a few ulps": XLA may sum batched reductions in another order

# The references use plain optax objects, chosen in Python per (schedule, optimizer).
SCHEDULES = {
    "cosine": lambda lr: optax.cosine_decay_schedule(lr, STEPS),
    "step": lambda lr: optax.exponential_decay(lr, 4, 0.5, staircase=True),
}
OPTIMIZERS = {
    "adamw": lambda s: optax.adamw(s, weight_decay=1e-2),
    "sgd": lambda s: optax.sgd(s, momentum=0.9),
}


def make_task(n=64, d=4):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n + 32, d))
  y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)

  def init(key):
    return {"w": jax.random.normal(key, (d, 2)) * 0.5, "b": jnp.zeros(2)}

  return Task.from_functions(
      "tiny", init, lambda p, x: x @ p["w"] + p["b"][None], "cross_entropy",
      train={"x": x[:n], "y": y[:n]}, eval={"val": {"x": x[n:], "y": y[n:]}},
      info={"num_classes": 2},
  )


def switched(h):
  """One optimizer function for every family: the choices are traced indices."""
  schedule = search.switch(h["schedule"], {k: f(h["lr"]) for k, f in SCHEDULES.items()})
  return search.switch(h["opt"], {k: f(schedule) for k, f in OPTIMIZERS.items()})


def fixed(schedule, opt):
  return lambda h: OPTIMIZERS[opt](SCHEDULES[schedule](h["lr"]))


def run(task, optimizer, space, **kw):
  kw = {"steps": STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY,
        "execution": optaxlr.Execution(progress=False), "seeds": 2, **kw}
  return optaxlr.sweep(task, optimizer, space, **kw)


@pytest.fixture(scope="module")
def families():
  """The sweep over schedule x optimizer x lr (float64), and the four separate sweeps."""
  with jax.enable_x64(True):
    task = make_task()
    # "step" first in the grid: the index order is the axis's, not alphabetical.
    space = search.grid(schedule=["step", "cosine"], opt=["sgd", "adamw"], lr=LRS)
    res = run(task, switched, space)
    separate = {(s, o): run(task, fixed(s, o), search.grid(lr=LRS))
                for s in SCHEDULES for o in OPTIMIZERS}
  return space, res, separate


def test_families_sweep_equals_the_separate_sweeps(families):
  space, res, separate = families
  assert space.categories == {"schedule": ("step", "cosine"), "opt": ("sgd", "adamw")}
  assert res.batch_loss.dtype == np.float64 and res.batch_loss.shape == (2, 8, STEPS)
  for c, config in enumerate(space):
    ref = separate[config["schedule"], config["opt"]]
    j = LRS.index(config["lr"])
    np.testing.assert_allclose(res.batch_loss[:, c], ref.batch_loss[:, j], rtol=ULPS, atol=0,
                               err_msg=str(config))
    for m, v in ref.metrics.items():
      np.testing.assert_allclose(res.metrics[m][:, c], v[:, j], rtol=ULPS, atol=0,
                                 err_msg=f"{config} {m}")
    np.testing.assert_array_equal(res.stop_reason[:, c], ref.stop_reason[:, j])
  # The families really differ (the test would pass vacuously if switch ignored its index).
  a, b = separate["cosine", "adamw"].batch_loss, separate["step", "sgd"].batch_loss
  assert np.abs(a - b)[..., 1:].min() > 1e-6


def test_results_are_labelled_by_the_strings(families):
  space, res, _ = families
  best = res.best("val/loss")
  assert isinstance(best["hparams"]["schedule"], str) and isinstance(best["hparams"]["opt"], str)
  assert best["hparams"] == space[best["index"]]
  assert res.config(5) == {"schedule": "cosine", "opt": "sgd", "lr": LRS[1]}
  ds = res.to_xarray()
  assert ds["val/loss"].dims == ("seed", "schedule", "opt", "lr", "eval_step")
  assert ds.coords["opt"].values.tolist() == ["sgd", "adamw"]
  c = 2 * 2 * 1 + 2 * 1 + 0  # (cosine, adamw, LRS[0]) in C order
  np.testing.assert_array_equal(ds["val/loss"].sel(schedule="cosine", opt="adamw", lr=LRS[0]),
                                res.metrics["val/loss"][:, c])
  df = res.to_pandas()
  row = df[(df.config == c) & (df.seed == 1)].iloc[0]
  assert (row["schedule"], row["opt"]) == ("cosine", "adamw")
  assert set(df["opt"]) == {"sgd", "adamw"}


def test_save_load_round_trip_keeps_the_strings(families, tmp_path):
  _, res, _ = families
  back = optaxlr.load(res.save(tmp_path / "cat.npz"))
  assert back.space.categories == res.space.categories
  assert list(back.space) == list(res.space)
  assert back.best("val/loss") == res.best("val/loss")
  np.testing.assert_array_equal(back.metrics["val/loss"], res.metrics["val/loss"])
  with np.load(tmp_path / "cat.npz", allow_pickle=False) as z:  # no object arrays
    assert z["axis1:opt"].dtype.kind == "U"


def test_host_check_passes_the_index_and_the_program_a_traced_one():
  task = make_task()
  seen = []

  def optimizer(h):
    opt = h["opt"]
    seen.append((type(opt).__name__, opt.values, type(opt.index)))
    return search.switch(opt, [optax.sgd(h["lr"]), optax.adam(h["lr"])])

  space = search.zip(opt=["sgd", "adam", "sgd"], lr=[0.1, 0.01, 0.05])
  res = run(task, optimizer, space, steps=2, eval_every=2, seeds=1)
  host = [s for s in seen if not issubclass(s[2], jax.core.Tracer)]
  traced = [s for s in seen if issubclass(s[2], jax.core.Tracer)]
  assert host and traced
  assert all(s[0] == "Categorical" and s[1] == ("sgd", "adam") for s in seen)
  assert all(s[2] is np.int32 for s in host)  # never the string
  assert res.space[1]["opt"] == "adam"


def test_compile_cache_keys_on_the_function_and_its_categories():
  """The compile cache keys on (function, categories): the same sweep again compiles nothing;
  the same values in another order must not reuse the first program's index meaning."""
  task = make_task()

  def optimizer(h):
    return search.switch(h["opt"], {"sgd": optax.sgd(h["lr"]), "adam": optax.adam(h["lr"])})

  kw = {"steps": 4, "eval_every": 4, "seeds": 1}
  a = run(task, optimizer, search.grid(opt=["sgd", "adam"], lr=[0.05]), **kw)
  again = run(task, optimizer, search.grid(opt=["sgd", "adam"], lr=[0.05]), **kw)
  assert again.info["compile_s"] == 0.0
  np.testing.assert_array_equal(a.batch_loss, again.batch_loss)
  swapped = run(task, optimizer, search.grid(opt=["adam", "sgd"], lr=[0.05]), **kw)
  np.testing.assert_array_equal(swapped.batch_loss[:, ::-1], a.batch_loss)


def test_random_choice_of_strings_and_an_objective_axis():
  task = make_task()
  space = search.random(3, 6, opt=search.choice(["sgd", "adam"]), lr=search.log_uniform(0.01, 0.1),
                        loss=search.choice(["plain", "flooded"]))
  cols = space.columns
  assert set(cols["opt"]) <= {"sgd", "adam"} and cols["opt"].dtype.kind == "U"
  first = list(dict.fromkeys(cols["opt"].tolist()))
  assert space.categories["opt"] == tuple(first)

  def optimizer(h):
    return search.switch(h["opt"], {"sgd": optax.sgd(h["lr"]), "adam": optax.adam(h["lr"])})

  def objective(loss, h):  # a categorical axis read only by the objective
    return search.switch(h["loss"], {"plain": loss, "flooded": optaxlr.flood(loss, 0.3)})

  res = run(task, optimizer, space, objective=objective, steps=2, eval_every=2, seeds=1)
  assert res.to_pandas()["loss"].tolist() == cols["loss"].tolist()


# ------------------------------------------------------------------------------ switch alone
def _grads(n_steps):
  rng = np.random.default_rng(1)
  return [{"w": jnp.asarray(rng.standard_normal(3)), "b": jnp.asarray(rng.standard_normal())}
          for _ in range(n_steps)]


def _run_tx(tx, grads, params):
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = tx.update(g, state, params, value=jnp.sum(g["w"] ** 2))
    params = optax.apply_updates(params, u)
    out.append(params)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *out), state


def test_switch_transforms_under_vmap_equal_each_branch_alone(x64):
  branches = [
      optax.adam(0.1),
      optax.sgd(0.05, momentum=0.9),
      optaxlr.adamw(0.1, weight_decay=0.1),
      optax.chain(optax.sgd(0.2), optax.contrib.reduce_on_plateau(patience=1)),  # needs value=
  ]
  values = ("adam", "sgd", "adamw", "plateau")
  params = {"w": jnp.arange(3.0), "b": jnp.asarray(0.5)}
  grads = _grads(6)
  idx = jnp.asarray([2, 0, 3, 1, 0], jnp.int32)

  def one(i):
    tx = search.switch(search.Categorical(i, values), dict(zip(values, branches)))
    return _run_tx(tx, grads, params)

  got, states = jax.jit(jax.vmap(one))(idx)
  for c, i in enumerate(idx.tolist()):
    alone, _ = jax.jit(lambda: _run_tx(branches[i], grads, params))()
    for k in params:  # a select adds no arithmetic; a batched program may round differently
      np.testing.assert_allclose(got[k][c], alone[k], rtol=ULPS, atol=ULPS,
                                 err_msg=f"config {c} branch {values[i]}")
    # The branches not chosen keep their initial state.
    for j, b in enumerate(branches):
      if j != i:
        init = b.init(params)
        jax.tree.map(lambda s, r: np.testing.assert_array_equal(s[c], r),
                     states.branches[j], init)


def test_switch_transform_jit_equals_eager_and_does_not_retrace(x64):
  values = ("sgd", "adam")
  params = {"w": jnp.arange(3.0), "b": jnp.asarray(0.5)}
  grads = _grads(3)
  traces = []

  def run_one(i):
    traces.append(1)
    tx = search.switch(search.Categorical(i, values), [optax.sgd(0.1), optax.adam(0.1)])
    return _run_tx(tx, grads, params)[0]

  jitted = jax.jit(run_one)
  for i in (0, 1):
    eager = run_one(np.int32(i))
    np.testing.assert_allclose(jitted(jnp.int32(i))["w"], eager["w"], rtol=ULPS)  # fusion
  assert len(traces) == 3  # two eager calls and ONE trace for both indices


def test_switch_schedules_and_values_under_vmap_equal_the_branches(x64):
  scheds = {"cosine": optax.cosine_decay_schedule(0.3, 10), "const": optax.constant_schedule(0.1),
            "poly": optax.polynomial_schedule(0.2, 0.01, 2, 8)}
  values = tuple(scheds)
  idx = jnp.asarray([1, 2, 0, 0], jnp.int32)
  steps = jnp.arange(12)

  def one(i):
    cat = search.Categorical(i, values)
    s = search.switch(cat, scheds)
    return jax.vmap(s)(steps), search.switch(cat, {"cosine": 1.0, "const": jnp.float64(2.0), "poly": 3})

  got, picked = jax.vmap(one)(idx)
  for c, i in enumerate(idx.tolist()):
    ref = np.asarray([scheds[values[i]](t) for t in range(12)])
    np.testing.assert_array_equal(got[c], ref)
    assert picked[c] == [1.0, 2.0, 3.0][i]
  # A plain int index with a list (the axis order), or a dict with values=.
  assert float(search.switch(1, [optax.constant_schedule(1.0), optax.constant_schedule(2.0)])(0)) == 2.0
  assert float(search.switch(jnp.int32(0), {"b": 5.0, "a": 7.0}, values=("a", "b"))) == 7.0


# ------------------------------------------------------------------------------ bad input
def test_branch_keys_that_differ_from_the_axis_values_are_named():
  opt = search.Categorical(0, ("adamw", "sgd"))
  with pytest.raises(ValueError, match=r"^switch: the branches' keys must be the axis values "
                                       r"\('adamw', 'sgd'\); missing \['sgd'\], unknown \['sgdm'\]$"):
    search.switch(opt, {"adamw": optax.adamw(0.1), "sgdm": optax.sgd(0.1)})
  task = make_task()

  def typo(h):
    return search.switch(h["opt"], {"adamw": optax.adamw(h["lr"]), "SGD": optax.sgd(h["lr"])})

  with pytest.raises(ValueError, match=r"sweep: config 0 \{'opt': 'adamw', 'lr': 0.1\} is "
                                       r"invalid: switch: the branches' keys must be the axis "
                                       r"values \('adamw', 'sgd'\); missing \['sgd'\], unknown \['SGD'\]"):
    run(task, typo, search.grid(opt=["adamw", "sgd"], lr=[0.1]))


@pytest.mark.parametrize("call, error, match", [
    (lambda: search.switch(0, {"a": 1.0, "b": 2.0}), TypeError,
     r"switch: branches is a dict keyed by values, but the index carries no values"),
    (lambda: search.switch(search.Categorical(0, ("a", "b")), [1.0]), ValueError,
     r"switch: 1 branches for the 2 axis values \('a', 'b'\)"),
    (lambda: search.switch(search.Categorical(0, ("a", "b")), {"a": 1.0, "b": 2.0}, values=("b", "a")),
     ValueError, r"switch: values=\('b', 'a'\) differ from the index's own values \('a', 'b'\)"),
    (lambda: search.switch(2, [1.0, 2.0]), ValueError, r"switch: index must be in \[0, 2\) for 2 branches, got index=2"),
    (lambda: search.switch(0.5, [1.0, 2.0]), TypeError, r"switch: index must be an integer, got 0.5"),
    (lambda: search.switch("a", [1.0, 2.0]), TypeError, r"switch: index must be an int index or a search.Categorical"),
    (lambda: search.switch(0, [optax.sgd(0.1), optax.constant_schedule(0.1)]), TypeError,
     r"switch: branches must be all schedules, all transformations or all values, got "
     r"\['transformation', 'schedule'\]"),
    (lambda: search.switch(0, []), ValueError, r"switch: branches must not be empty"),
    (lambda: search.switch(0, ["a", "b"]), TypeError, r"switch: branch 0 is neither"),
    (lambda: search.Categorical(0, ("a", "a")), ValueError, r"Categorical: values must be a non-empty"),
    (lambda: search.Categorical(0, ("a", "b")) == 0, TypeError, r"Categorical: compare with one of its values"),
    (lambda: search.Categorical(0, ("a", "b")) == "c", ValueError, r"Categorical: 'c' is not one of the values"),
    (lambda: search.grid(opt=["adamw", 0.1]), TypeError, r"grid: opt mixes strings and numbers"),
    (lambda: search.grid(opt=["adamw", "sgd"]) + search.grid(opt=[1.0]), ValueError,
     r"Space.__add__: opt holds strings in one space and numbers in the other"),
    (lambda: search.encode({"opt": np.asarray(["sgd", "adam"])}, {"opt": ("sgd",)}), ValueError,
     r"encode: opt='adam' is not one of the categories \('sgd',\)"),
    (lambda: search.grid(opt=["a", "b"]).validate(positive=("opt",)), ValueError,
     r"sweep: hyperparameter 'opt' \(rule positive\) is categorical \(strings \('a', 'b'\)\)"),
    (lambda: search.with_categories(lambda h: h["opt"], {"opt": ("a", "b")})({"opt": "c"}), ValueError,
     r"Categorical: 'c' is not one of the values \('a', 'b'\)"),
])
def test_bad_inputs(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_unused_categorical_axis_is_an_error_in_sweep_and_lr_find():
  task = make_task()
  with pytest.raises(ValueError, match=r"sweep: the space's axis 'opt' is read by neither"):
    run(task, lambda h: optax.sgd(h["lr"]), search.grid(opt=["a", "b"], lr=[0.1]))
  # lr_find is a view of sweep: it takes categorical axes, and refuses an unread one the same way
  with pytest.raises(ValueError, match=r"lr_find: the space's axis 'opt' is read by neither"):
    optaxlr.lr_find(task, lambda h: optax.sgd(h["lr"]), space=search.grid(opt=["a", "b"]),
                    steps=4, execution=optaxlr.Execution(progress=False))
