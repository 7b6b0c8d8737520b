"""Search spaces: compared with itertools / NumPy restatements, never with search.py itself."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxlr import search


def _ks_uniform(u: np.ndarray) -> float:
  """Kolmogorov-Smirnov distance between the sample ``u`` and U(0, 1), in NumPy."""
  u = np.sort(u)
  n = u.size
  upper = np.arange(1, n + 1) / n - u
  lower = u - np.arange(n) / n
  return float(max(upper.max(), lower.max()))


def _ks_crit(n: int) -> float:
  return 1.63 / math.sqrt(n)  # 1% level of the one-sample KS test, large-n approximation


# ------------------------------------------------------------------------------ grid / zip
def test_grid_order_matches_itertools_product():
  lr, wd, mom = [0.1, 0.01, 0.001], [0.0, 1e-4], [0.9, 0.99]
  space = search.grid(lr=lr, wd=wd, momentum=mom)
  expected = list(itertools.product(lr, wd, mom))
  assert len(space) == len(expected) == 12
  assert [(c["lr"], c["wd"], c["momentum"]) for c in space] == expected
  cols = space.columns
  np.testing.assert_array_equal(cols["lr"], [e[0] for e in expected])
  np.testing.assert_array_equal(cols["momentum"], [e[2] for e in expected])
  assert space.dims == ("lr", "wd", "momentum")
  assert space.shape == (3, 2, 2)
  assert [a.names for a in space.axes] == [("lr",), ("wd",), ("momentum",)]
  np.testing.assert_array_equal(space.axes[0].values["lr"], lr)  # per-axis unique values, in order
  np.testing.assert_array_equal(space.coords["wd"][1], wd)
  assert space.coords["wd"][0] == "wd"


def test_grid_index_and_reshape_follow_c_order():
  space = search.grid(a=[1, 2, 3], b=[10.0, 20.0])
  positions = list(itertools.product(range(3), range(2)))
  for i in range(len(space)):
    assert space.index(i) == positions[i]
  table = space.reshape(space.columns["b"])
  np.testing.assert_array_equal(table, [[10.0, 20.0]] * 3)
  tree = space.reshape({"v": jnp.arange(6.0)[:, None] * jnp.ones((1, 4))})
  assert tree["v"].shape == (3, 2, 4)
  with pytest.raises(ValueError, match="Space.reshape: leading axis must have length 6"):
    space.reshape(np.zeros(5))


def test_zip_aligns_and_rejects_unequal_lengths():
  space = search.zip(lr=[0.1, 0.2, 0.3], wd=[1.0, 2.0, 3.0])
  assert [(c["lr"], c["wd"]) for c in space] == [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0)]
  assert space.dims == ("lr+wd",) and space.shape == (3,)
  with pytest.raises(ValueError, match=r"zip: all axes must have the same length, got "
                                       r"lr of length 3, wd of length 2"):
    search.zip(lr=[0.1, 0.2, 0.3], wd=[1.0, 2.0])


def test_getitem_iteration_and_python_types():
  space = search.grid(lr=[0.5, 0.25], nesterov=[False, True]) * search.seeds(2)
  cfg = space[-1]
  assert cfg == {"lr": 0.25, "nesterov": True, "seed": 1}
  assert type(cfg["lr"]) is float and type(cfg["seed"]) is int and type(cfg["nesterov"]) is bool
  assert list(space) == [space[i] for i in range(len(space))]
  with pytest.raises(IndexError, match="index 8 out of range"):
    space[8]
  with pytest.raises(TypeError, match="index must be an integer"):
    space[0.5]


def test_columns_are_read_only():
  space = search.grid(lr=[0.1, 0.2])
  with pytest.raises(ValueError):
    space.columns["lr"][0] = 5.0


# ------------------------------------------------------------------------------ composition
def test_product_with_seeds_and_folds_matches_itertools():
  base = search.grid(lr=[0.1, 0.01]).with_fixed(momentum=0.9)
  space = base.repeat(seeds=3, folds=2)
  expected = list(itertools.product([0.1, 0.01], range(3), range(2)))
  assert [(c["lr"], c["seed"], c["fold"]) for c in space] == expected
  assert all(c["momentum"] == 0.9 for c in space)
  assert space.dims == ("lr", search.SEED, search.FOLD) == ("lr", "seed", "fold")
  assert space.fixed == {"momentum": 0.9}
  assert space.coords["momentum"] == ((), 0.9)
  same = base * search.seeds(3) * search.folds(2)
  assert list(same) == list(space)
  assert list(search.seeds([7, 42]).columns["seed"]) == [7, 42]


def test_product_renames_repeated_dims_and_rejects_shared_names():
  a = search.random(0, 2, x=search.uniform(0, 1))
  b = search.random(1, 3, y=search.uniform(0, 1))
  assert (a * b).dims == ("sample", "sample_1")
  with pytest.raises(ValueError, match=r"Space.__mul__: the spaces share hyperparameters \['lr'\]"):
    search.grid(lr=[1.0]) * search.grid(lr=[2.0])


def test_concatenation():
  a = search.grid(lr=[0.1, 0.2], wd=[0.0])
  b = search.zip(lr=[0.3], wd=[1e-3])
  c = a + b
  assert [(x["lr"], x["wd"]) for x in c] == [(0.1, 0.0), (0.2, 0.0), (0.3, 1e-3)]
  assert c.dims == ("config",) and len(c) == 3
  with pytest.raises(ValueError, match=r"Space.__add__: concatenated spaces need the same names"):
    a + search.grid(lr=[0.5])


def test_with_fixed_broadcasts_and_rejects_duplicates():
  space = search.grid(lr=[0.1, 0.2, 0.3]).with_fixed(wd=1e-4, seed=0)
  np.testing.assert_array_equal(space.columns["wd"], [1e-4] * 3)
  tree = space.to_pytree()
  assert tree["wd"].shape == (3,) and tree["seed"].dtype == jnp.int32
  with pytest.raises(ValueError, match="Space.with_fixed: lr is already in the space"):
    space.with_fixed(lr=1.0)
  with pytest.raises(ValueError, match="Space.with_fixed: b must be a scalar"):
    space.with_fixed(b=[1.0, 2.0])


# ------------------------------------------------------------------------------ pytree / vmap
def test_to_pytree_dtypes_default_float32():
  tree = search.grid(lr=[3e-4, 1e-3]).repeat(seeds=2).to_pytree()
  assert tree["lr"].dtype == jnp.float32 and tree["seed"].dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(tree["lr"]), np.float32([3e-4, 3e-4, 1e-3, 1e-3]))


def test_to_pytree_float64_under_x64(x64):
  tree = search.grid(lr=[3e-4, 1e-3]).to_pytree()
  assert tree["lr"].dtype == jnp.float64
  assert float(tree["lr"][0]) == 3e-4  # the exact decimal survives


def test_vmap_over_space_equals_loop_and_compiles_once():
  traces = []

  def train(h):
    traces.append(1)
    return h["lr"] * jnp.float32(2.0) + h["seed"].astype(jnp.float32)

  run = jax.jit(jax.vmap(train))
  for lrs in ([0.1, 0.2], [0.3, 0.4]):  # new values, same shapes: no retrace
    space = search.grid(lr=lrs) * search.seeds(2)
    got = np.asarray(run(space.to_pytree()))
    want = np.float32([c["lr"] * 2.0 + c["seed"] for c in space])
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert len(traces) == 1


# ------------------------------------------------------------------------------ random
def test_random_is_reproducible_from_key():
  dists = dict(lr=search.log_uniform(1e-5, 1e-1), m=search.one_minus_log_uniform(0.9, 0.999),
               h=search.int_uniform(16, 64), act=search.choice([0, 1, 2]), wd=0.0)
  a = search.random(jax.random.key(3), 50, **dists)
  b = search.random(jax.random.key(3), 50, **dists)
  c = search.random(3, 50, **dists)  # an int seed means jax.random.key(seed)
  d = search.random(jax.random.PRNGKey(3), 50, **dists)  # a raw uint32 key
  e = search.random(jax.random.key(4), 50, **dists)
  for k in ("lr", "m", "h", "act"):
    np.testing.assert_array_equal(a.columns[k], b.columns[k])
    np.testing.assert_array_equal(a.columns[k], c.columns[k])
    np.testing.assert_array_equal(a.columns[k], d.columns[k])
  assert not np.array_equal(a.columns["lr"], e.columns["lr"])
  assert a.fixed == {"wd": 0.0} and a.dims == ("sample",)


def test_random_streams_are_per_name():
  a = search.random(0, 20, lr=search.log_uniform(1e-4, 1.0))
  b = search.random(0, 20, wd=search.uniform(0, 1), lr=search.log_uniform(1e-4, 1.0))
  np.testing.assert_array_equal(a.columns["lr"], b.columns["lr"])
  assert not np.allclose(np.log(b.columns["lr"] / 1e-4) / np.log(1e4), b.columns["wd"])


def test_log_uniform_in_range_and_uniform_in_log_space():
  n = 4000
  lr = search.random(jax.random.key(0), n, lr=search.log_uniform(1e-5, 1e-1)).columns["lr"]
  assert lr.min() >= 1e-5 and lr.max() <= 1e-1
  u = (np.log10(lr) + 5.0) / 4.0  # 10 ** U(-5, -1)
  assert _ks_uniform(u) < _ks_crit(n)
  # ... and far from uniform in linear space (sanity: the check can fail).
  assert _ks_uniform((lr - 1e-5) / (1e-1 - 1e-5)) > 0.5


def test_one_minus_log_uniform_matches_classic_momentum_recipe():
  n = 4000
  m = search.random(jax.random.key(1), n, m=search.one_minus_log_uniform(0.9, 0.999)).columns["m"]
  assert m.min() >= 0.9 and m.max() <= 0.999
  u = (np.log10(1.0 - m) + 3.0) / 2.0  # 1 - 10 ** U(-3, -1)
  assert _ks_uniform(u) < _ks_crit(n)


def test_uniform_int_uniform_choice():
  n = 3000
  s = search.random(jax.random.key(2), n, u=search.uniform(-2.0, 3.0),
                    k=search.int_uniform(1, 4), c=search.choice([0.5, 2.0]))
  u, k, c = s.columns["u"], s.columns["k"], s.columns["c"]
  assert u.min() >= -2 and u.max() <= 3
  assert _ks_uniform((u + 2.0) / 5.0) < _ks_crit(n)
  assert k.dtype == np.int64 and set(np.unique(k)) == {1, 2, 3, 4}  # both ends included
  np.testing.assert_allclose(np.bincount(k)[1:] / n, 0.25, atol=0.04)
  assert set(np.unique(c)) == {0.5, 2.0}
  assert abs(np.mean(c == 0.5) - 0.5) < 0.05


# ------------------------------------------------------------------------------ value helpers
def test_one_three_exact_decimals():
  got = search.one_three(1e-5, 1.0)
  want = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
  assert got.dtype == np.float64
  assert got.tolist() == want  # exact equality with the Python literals
  assert search.one_three(2e-5, 0.5).tolist() == [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1,
                                                  0.3]
  assert search.one_three(1.0, 100.0).tolist() == [1.0, 3.0, 10.0, 30.0, 100.0]


def test_logspace_endpoints_exact_and_geometric():
  got = search.logspace(1e-4, 1e-1, 7)
  assert got[0] == 1e-4 and got[-1] == 1e-1 and len(got) == 7
  np.testing.assert_allclose(got, 10.0 ** np.linspace(-4, -1, 7), rtol=1e-12)
  np.testing.assert_allclose(got[1:] / got[:-1], 10 ** 0.5, rtol=1e-12)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("build, match", [
    (lambda: search.grid(), r"grid: at least one hyperparameter is required"),
    (lambda: search.grid(lr=[]), r"grid: lr must be non-empty, got lr=\[\]"),
    (lambda: search.grid(lr=[0.1, float("nan")]),
     r"grid: lr must not contain NaN, got lr=\[0.1, nan\]"),
    (lambda: search.grid(lr=[0.1, 0.1]), r"grid: lr must not repeat a value"),
    (lambda: search.grid(lr=[[0.1, 0.2]]),
     r"grid: lr must be a scalar or 1-D, got lr with shape \(1, 2\)"),
    (lambda: search.zip(a=[1.0], b=[float("nan")]), r"zip: b must not contain NaN"),
    (lambda: search.log_uniform(-1.0, 1.0), r"log_uniform: lo must be > 0, got lo=-1.0"),
    (lambda: search.log_uniform(0.0, 1.0), r"log_uniform: lo must be > 0, got lo=0.0"),
    (lambda: search.log_uniform(1.0, 0.1), r"log_uniform: lo must be < hi, got lo=1.0, hi=0.1"),
    (lambda: search.log_uniform(0.1, 0.1), r"log_uniform: lo must be < hi, got lo=0.1, hi=0.1"),
    (lambda: search.uniform(float("nan"), 1.0),
     r"uniform: lo must be a finite number, got lo=nan"),
    (lambda: search.one_minus_log_uniform(0.9, 1.0),
     r"one_minus_log_uniform: hi must be < 1, got hi=1.0"),
    (lambda: search.int_uniform(5, 2), r"int_uniform: lo must be < hi, got lo=5, hi=2"),
    (lambda: search.logspace(0.0, 1.0, 3), r"logspace: lo must be > 0, got lo=0.0"),
    (lambda: search.logspace(1e-3, 1.0, 0), r"logspace: n must be > 0, got n=0"),
    (lambda: search.one_three(-1.0, 1.0), r"one_three: lo must be > 0, got lo=-1.0"),
    (lambda: search.one_three(4e-3, 5e-3), r"one_three: no 1-3-10 value lies in \[lo, hi\]"),
    (lambda: search.random(0, 0, lr=search.uniform(0, 1)), r"random: n must be > 0, got n=0"),
    (lambda: search.random(0, 3, lr=0.1),
     r"random: at least one hyperparameter must be a distribution"),
    (lambda: search.seeds(0), r"seeds: n must be > 0, got n=0"),
    (lambda: search.folds(1), r"folds: k must be >= 2, got k=1"),
])
def test_bad_input_raises_value_error(build, match):
  with pytest.raises(ValueError, match=match):
    build()


@pytest.mark.parametrize("build, match", [
    (lambda: search.grid(lr=["a", 1.0]), r"grid: lr mixes strings and numbers"),
    (lambda: search.zip(opt=(0.1, "sgd")), r"zip: opt mixes strings and numbers"),
    (lambda: search.choice(["adamw", 3]), r"choice: values mixes strings and numbers"),
    (lambda: search.grid(lr=[b"a", b"b"]), r"grid: lr must be numeric \(float, int or bool\) or strings"),
    (lambda: search.grid(lr=search.uniform(0, 1)), r"grid: lr is a distribution"),
    (lambda: search.random(0, 3, lr=[0.1, 0.2]), r"random: lr must be a distribution or a scalar"),
    (lambda: search.random("k", 3, lr=search.uniform(0, 1)), r"random: key must be a JAX PRNG key"),
    (lambda: search.int_uniform(0.5, 3), r"int_uniform: lo must be an int"),
])
def test_bad_types_raise_type_error(build, match):
  with pytest.raises(TypeError, match=match):
    build()


# ------------------------------------------------------------------------------ string axes
def test_string_axes_in_grid_zip_random_and_fixed():
  space = search.grid(schedule=["step", "cosine"], lr=[0.1, 0.01]).with_fixed(loss="plain")
  expected = list(itertools.product(["step", "cosine"], [0.1, 0.01]))
  assert [(c["schedule"], c["lr"]) for c in space] == expected
  assert space[2] == {"schedule": "cosine", "lr": 0.1, "loss": "plain"}
  assert type(space[2]["schedule"]) is str
  assert space.coords["schedule"][0] == "schedule"
  assert space.coords["schedule"][1].tolist() == ["step", "cosine"]
  # The categories: order of first appearance (a grid axis: the order given), fixed ones too.
  assert space.categories == {"schedule": ("step", "cosine"), "loss": ("plain",)}
  z = search.zip(opt=["sgd", "adam", "sgd", "lion"], lr=[1.0, 2.0, 3.0, 4.0])
  assert z.categories == {"opt": ("sgd", "adam", "lion")}
  # to_pytree: the index into the categories, int32, in any dtype mode.
  np.testing.assert_array_equal(z.to_pytree()["opt"], [0, 1, 0, 2])
  assert z.to_pytree()["opt"].dtype == jnp.int32
  r = search.random(0, 40, opt=search.choice(["sgd", "adam"]), lr=search.uniform(0, 1), act="relu")
  col = r.columns["opt"]
  assert col.dtype.kind == "U" and set(col.tolist()) == {"sgd", "adam"}
  assert r.categories["opt"] == tuple(dict.fromkeys(col.tolist()))
  assert r.fixed == {"act": "relu"}
  assert search.grid(opt="adamw").columns["opt"].tolist() == ["adamw"]  # a scalar: one value
  both = search.grid(opt=["sgd"], lr=[0.1]) + search.grid(opt=["adam"], lr=[0.1])
  assert [c["opt"] for c in both] == ["sgd", "adam"]
  (search.grid(opt=["a", "b"]) * search.seeds(2)).validate(integer=("seed",))  # other rules pass


# ------------------------------------------------------------------------------ validate_space
def test_validate_space_names_first_bad_config():
  space = search.zip(learning_rate=[0.1, 0.2, 0.3, -0.1], momentum=[0.9, 0.9, 1.5, 0.9])
  with pytest.raises(ValueError, match=r"^sweep: learning_rate must be > 0, config 3 has "
                                       r"learning_rate=-0\.1$"):
    search.validate_space(space, positive=("learning_rate",))
  with pytest.raises(ValueError, match=r"^fit: momentum must be in \[0, 1\], config 2 has "
                                       r"momentum=1\.5$"):
    space.validate(fn="fit", ranges={"momentum": (0, 1)})
  space.validate(ranges={"momentum": (0, 2)}, nonnegative=("momentum",))  # passes


def test_validate_space_other_rules():
  space = search.grid(lr=[0.1, float("inf")], h=[1.0, 2.5])
  with pytest.raises(ValueError, match=r"sweep: lr must be finite, config 2 has lr=inf"):
    space.validate()
  space = search.grid(lr=[0.1], h=[1.0, 2.5])
  with pytest.raises(ValueError, match=r"sweep: h must be a whole number, config 1 has h=2.5"):
    space.validate(integer=("h",))
  with pytest.raises(ValueError, match=r"sweep: hyperparameter 'wd' \(rule required\) is not in "
                                       r"the space; the space has \['lr', 'h'\]"):
    space.validate(required=("wd",))
  with pytest.raises(ValueError, match=r"sweep: hyperparameter 'lrr' \(rule positive\)"):
    space.validate(positive=("lrr",))
  with pytest.raises(ValueError, match=r"sweep: h must be >= 0, config 0 has h=-1.0"):
    search.grid(h=[-1.0]).validate(nonnegative=("h",))
