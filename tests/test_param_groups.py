"""Per-group learning rates: pattern semantics, layer-wise multipliers vs a NumPy restatement of
fastai's ``slice(low, high)``, trajectories vs torch.optim parameter groups, jit / vmap /
no-retrace, flax nnx and linen, bad input."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import layerwise_lr, layerwise_multipliers, param_group_lr, param_group_multipliers
from optaxlr._paths import path_str

TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64 vs float64
LOOSE = dict(rtol=1e-6, atol=1e-7)  # float32 vs float32

_rng = np.random.default_rng(0)
X = _rng.normal(size=(8, 3))
Y = _rng.normal(size=(8, 2))
LAYERS = ("Dense_0", "Dense_1", "Dense_2")
SHAPES = {"Dense_0": (3, 4), "Dense_1": (4, 4), "Dense_2": (4, 2)}
P0 = {
    f"{l}/{k}": 0.5 * _rng.normal(size=SHAPES[l] if k == "kernel" else SHAPES[l][1:])
    for l in LAYERS
    for k in ("kernel", "bias")
}


def _tree(dtype=None):  # None: the default float (float64 under the x64 fixture)
  return {l: {k: jnp.asarray(P0[f"{l}/{k}"], dtype) for k in ("kernel", "bias")} for l in LAYERS}


def _flat(tree):
  return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _loss(params, x, y):
  h = x
  for i, l in enumerate(LAYERS):
    h = h @ params[l]["kernel"] + params[l]["bias"][None, :]
    if i < len(LAYERS) - 1:
      h = jnp.tanh(h)
  return jnp.mean((h - y) ** 2)


_grad = jax.grad(_loss)


def run_jax(tx, steps=4, dtype=None, jit=True):
  """``steps`` full-batch steps from P0 (jitted unless ``jit=False``)."""

  def run():
    params = _tree(dtype)
    x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    state = tx.init(params)
    for _ in range(steps):
      updates, state = tx.update(_grad(params, x, y), state, params)
      params = optax.apply_updates(params, updates)
    return params

  return jax.jit(run)() if jit else run()


# ------------------------------------------------------------------------------------------------
# Pattern semantics (re.search on "a/b/c", first match wins, unmatched = 1.0)
# ------------------------------------------------------------------------------------------------


def _np_multipliers(paths, spec):
  """NumPy/re restatement of the documented rule."""
  out = {}
  for p in paths:
    out[p] = next((float(m) for pat, m in spec.items() if re.search(pat, p)), 1.0)
  return out


@pytest.mark.parametrize(
    "spec",
    [
        {"bias": 2.0},
        {"^Dense_0/": 0.1, "bias": 2.0},  # first match wins: Dense_0/bias -> 0.1
        {"bias": 2.0, "^Dense_0/": 0.1},  # ...and in the other order -> 2.0
        {"kernel$": 0.5, "Dense_[12]": 3.0},
    ],
)
def test_multipliers_follow_documented_rule(spec, x64):
  params = _tree()
  got = _flat(param_group_multipliers(params, spec))
  want = _np_multipliers(sorted(P0), spec)
  assert {k: float(v) for k, v in got.items()} == want


def test_caffe_bias_rule_matches_manual_sgd(x64):
  """SGD with lr 0.1 and 2x for biases equals the hand-written update."""
  params = _tree()
  tx = optax.chain(optax.sgd(0.1), param_group_lr({"bias": 2.0}))
  got = _flat(run_jax(tx, steps=1))
  g = _flat(_grad(params, jnp.asarray(X), jnp.asarray(Y)))
  for k in P0:
    lr = 0.2 if k.endswith("bias") else 0.1
    np.testing.assert_allclose(got[k], P0[k] - lr * g[k], **TIGHT)


def test_zero_multiplier_freezes_group(x64):
  params = _tree()
  got = _flat(run_jax(optax.chain(optax.adam(0.1), param_group_lr({"^Dense_0/": 0.0}))))
  for k in ("Dense_0/kernel", "Dense_0/bias"):
    np.testing.assert_array_equal(got[k], P0[k])
  assert not np.allclose(got["Dense_1/kernel"], P0["Dense_1/kernel"])
  del params


def test_callable_multipliers(x64):
  by_rank = lambda p: jax.tree.map(lambda x: 2.0 if x.ndim == 1 else 1.0, p)  # noqa: E731
  a = _flat(run_jax(optax.chain(optax.sgd(0.1, momentum=0.9), param_group_lr(by_rank))))
  b = _flat(run_jax(optax.chain(optax.sgd(0.1, momentum=0.9), param_group_lr({"bias": 2.0}))))
  for k in P0:
    np.testing.assert_allclose(a[k], b[k], **TIGHT)


def test_per_element_callable_and_dtype_kept():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = param_group_lr(lambda p: {"w": jnp.array([0.0, 1.0, 2.0])})
  u, _ = tx.update(params, tx.init(params), params)
  assert u["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(u["w"], np.float32), [0.0, 1.0, 2.0])


# ------------------------------------------------------------------------------------------------
# Layer-wise multipliers vs fastai's formula restated in NumPy
# ------------------------------------------------------------------------------------------------


def _np_geometric(low, high, n):
  if n == 1:
    return np.array([high])
  return np.array([low * (high / low) ** (i / (n - 1)) for i in range(n)])


@pytest.mark.parametrize("n", [1, 2, 4, 12])
def test_layerwise_natural_order_and_formula(n, x64):
  params = {f"Dense_{i}": {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)} for i in range(n)}
  got = layerwise_multipliers({"params": params}, 1e-4, 1e-1)["params"]  # "params" descended
  want = _np_geometric(1e-4, 1e-1, n)
  for i in range(n):  # Dense_2 < Dense_10: natural, not lexicographic, order
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(float(got[f"Dense_{i}"][k]), want[i], **TIGHT)
  np.testing.assert_allclose(want, np.geomspace(1e-4, 1e-1, n) if n > 1 else [1e-1], **TIGHT)


def test_layerwise_explicit_groups_first_match_and_catch_all(x64):
  params = _tree()
  groups = ["^Dense_0/", "^Dense_1/kernel", ".*"]
  got = _flat(layerwise_multipliers(params, 0.01, 1.0, groups))
  want = _np_geometric(0.01, 1.0, 3)
  exp = {"Dense_0/bias": 0, "Dense_0/kernel": 0, "Dense_1/kernel": 1}
  for k in P0:
    np.testing.assert_allclose(got[k], want[exp.get(k, 2)], **TIGHT)


def test_layerwise_descends_nnx_layers_list():
  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(11)])

  state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
  got = _flat(layerwise_multipliers(nnx.as_pure(state), 1e-3, 1.0))
  want = _np_geometric(1e-3, 1.0, 11)
  for i in range(11):
    np.testing.assert_allclose(got[f"layers/{i}/kernel"], want[i], rtol=1e-6)
  # the boxed state that nnx.Optimizer passes to init gets the same names and values
  boxed = jax.tree.leaves(layerwise_multipliers(state, 1e-3, 1.0))
  np.testing.assert_allclose(np.stack(boxed), np.stack(jax.tree.leaves(
      layerwise_multipliers(nnx.as_pure(state), 1e-3, 1.0))), rtol=0)


# ------------------------------------------------------------------------------------------------
# PyTorch parameter groups
# ------------------------------------------------------------------------------------------------


def _torch_run(make_opt, group_of, steps=4):
  torch = pytest.importorskip("torch")
  tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P0.items()}
  x, y = torch.tensor(X), torch.tensor(Y)
  groups = {}
  for k in sorted(tp):
    groups.setdefault(group_of(k), []).append(tp[k])
  opt = make_opt([{"params": ps, "lr": lr} for lr, ps in groups.items()])
  for _ in range(steps):
    opt.zero_grad()
    h = x
    for i, l in enumerate(LAYERS):
      h = h @ tp[f"{l}/kernel"] + tp[f"{l}/bias"]
      if i < len(LAYERS) - 1:
        h = torch.tanh(h)
    torch.mean((h - y) ** 2).backward()
    opt.step()
  return {k: t.detach().numpy() for k, t in tp.items()}


@pytest.mark.torch
def test_sgd_momentum_bias_group_matches_torch(x64):
  torch = pytest.importorskip("torch")
  lr = 0.05
  want = _torch_run(
      lambda g: torch.optim.SGD(g, lr=lr, momentum=0.9),
      lambda k: 2 * lr if k.endswith("bias") else lr,
  )
  got = _flat(run_jax(optax.chain(optax.sgd(lr, momentum=0.9), param_group_lr({"bias": 2.0}))))
  for k in P0:
    np.testing.assert_allclose(got[k], want[k], **TIGHT)


@pytest.mark.torch
def test_adamw_layerwise_groups_match_torch(x64):
  torch = pytest.importorskip("torch")
  lrs = _np_geometric(1e-3, 1e-1, 3)
  want = _torch_run(
      lambda g: torch.optim.AdamW(g, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
      lambda k: float(lrs[LAYERS.index(k.split("/")[0])]),
  )
  # torch multiplies the decoupled decay by the group lr too: scale after adamw.
  tx = optax.chain(optax.adamw(1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1),
                   layerwise_lr(1e-3, 1e-1))
  got = _flat(run_jax(tx))
  for k in P0:
    np.testing.assert_allclose(got[k], want[k], **TIGHT)


# ------------------------------------------------------------------------------------------------
# jit / vmap / no retrace
# ------------------------------------------------------------------------------------------------


_P32 = _tree(np.float32)
_G32 = jax.jit(_grad)(_P32, jnp.asarray(X, np.float32), jnp.asarray(Y, np.float32))


def _one_step(tx, steps=1):
  """The updates of ``steps`` calls of ``tx.update`` on fixed float32 gradients."""
  state = tx.init(_P32)
  for _ in range(steps):
    u, state = tx.update(_G32, state, _P32)
  return u


def test_jit_equals_eager():
  for make in (lambda: param_group_lr({"bias": 2.0, "Dense_0": 0.3}),
               lambda: layerwise_lr(0.01, 0.5)):
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), make())
    eager = _flat(_one_step(tx, steps=2))
    jitted = _flat(jax.jit(lambda: _one_step(tx, steps=2))())
    for k in P0:
      np.testing.assert_allclose(jitted[k], eager[k], **LOOSE)


def test_vmap_over_multiplier_equals_loop():
  ms = jnp.array([0.0, 0.5, 2.0])
  f = lambda m: _one_step(optax.chain(optax.sgd(0.1), param_group_lr({"bias": m})))  # noqa: E731
  batched = _flat(jax.vmap(f)(ms))
  for i, m in enumerate([0.0, 0.5, 2.0]):
    single = _flat(f(m))
    for k in P0:
      np.testing.assert_allclose(batched[k][i], single[k], **LOOSE)


@pytest.mark.parametrize("which", ["low", "high"])
def test_vmap_over_layerwise_low_high_equals_loop(which):
  vals = [1e-3, 1e-2, 0.3]

  def f(v):
    low, high = (v, 1.0) if which == "low" else (1e-3, v)
    return _one_step(optax.chain(optax.sgd(1.0), layerwise_lr(low, high)))

  batched = _flat(jax.vmap(f)(jnp.array(vals)))
  for i, v in enumerate(vals):
    single = _flat(f(v))
    for k in P0:
      np.testing.assert_allclose(batched[k][i], single[k], **LOOSE)


def test_no_retrace_when_multipliers_change():
  traces = []

  @jax.jit
  def step(m, low, high):
    traces.append(1)
    tx = optax.chain(optax.sgd(0.1), param_group_lr({"bias": m}), layerwise_lr(low, high))
    return _one_step(tx)

  outs = [step(jnp.float32(m), jnp.float32(lo), jnp.float32(hi))
          for m, lo, hi in [(1.0, 0.1, 1.0), (2.0, 0.2, 3.0), (0.5, 0.01, 0.5)]]
  assert len(traces) == 1
  assert not np.allclose(outs[0]["Dense_0"]["bias"], outs[1]["Dense_0"]["bias"])


def test_inject_hyperparams_changes_low_high_without_retrace():
  tx = optax.inject_hyperparams(layerwise_lr)(low=jnp.float32(0.01), high=jnp.float32(1.0))
  params = {"Dense_0": jnp.ones(2), "Dense_1": jnp.ones(2)}
  traces = []

  @jax.jit
  def update(state):
    traces.append(1)
    return tx.update(params, state, params)

  u, state = update(tx.init(params))
  np.testing.assert_allclose(u["Dense_0"], [0.01, 0.01], rtol=1e-6)
  state.hyperparams["low"] = jnp.float32(0.5)
  u, _ = update(state)
  np.testing.assert_allclose(u["Dense_0"], [0.5, 0.5], rtol=1e-6)
  assert len(traces) == 1


# ------------------------------------------------------------------------------------------------
# flax nnx Optimizer and linen
# ------------------------------------------------------------------------------------------------


class _NnxMLP(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

  def __call__(self, x):
    return self.layers[1](jnp.tanh(self.layers[0](x)))


def test_nnx_optimizer_bias_and_layerwise():
  model = _NnxMLP(nnx.Rngs(0))
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)  # noqa: E731
  before = _flat(nnx.as_pure(nnx.state(model, nnx.Param)))
  grads = _flat(nnx.as_pure(nnx.state(nnx.grad(loss_fn)(model), nnx.Param)))
  tx = optax.chain(optax.sgd(1.0), param_group_lr({"bias": 2.0}), layerwise_lr(0.01, 0.1))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  opt.update(model, nnx.grad(loss_fn)(model))
  after = _flat(nnx.as_pure(nnx.state(model, nnx.Param)))
  for k in before:
    lr = (0.01 if k.startswith("layers/0/") else 0.1) * (2.0 if k.endswith("bias") else 1.0)
    np.testing.assert_allclose(after[k], before[k] - lr * grads[k], rtol=1e-5, atol=1e-7)


def test_nnx_optimizer_strict_pattern_sees_unboxed_names():
  model = _NnxMLP(nnx.Rngs(0))
  nnx.Optimizer(model, param_group_lr({"bias$": 2.0}), wrt=nnx.Param)  # no "/value" suffix
  with pytest.raises(ValueError, match=r"param_group_lr: pattern\(s\) \['biases'\] match no"):
    nnx.Optimizer(model, param_group_lr({"biases": 2.0}), wrt=nnx.Param)


def test_linen_params():
  class MLP(nn.Module):

    @nn.compact
    def __call__(self, x):
      for i in range(11):
        x = nn.Dense(2)(x)
      return x

  params = MLP().init(jax.random.key(0), jnp.ones((1, 2)))["params"]
  m = _flat(layerwise_multipliers(params, 1e-3, 1.0))
  want = _np_geometric(1e-3, 1.0, 11)
  for i in range(11):
    np.testing.assert_allclose(m[f"Dense_{i}/kernel"], want[i], rtol=1e-6)
  tx = optax.chain(optax.sgd(1.0), param_group_lr({"Dense_10/": 0.0}))
  grads = jax.tree.map(jnp.ones_like, params)
  u, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(u["Dense_10"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(u["Dense_1"]["kernel"]).min()) == 1.0


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input(x64):
  params = _tree()
  with pytest.raises(ValueError, match=r"param_group_lr: multipliers\['bias'\] must be >= 0, got "
                     r"multipliers\['bias'\]=-1.0"):
    param_group_lr({"bias": -1.0})
  with pytest.raises(ValueError, match=r"param_group_lr: invalid pattern '\('"):
    param_group_lr({"(": 1.0})
  with pytest.raises(TypeError, match="param_group_lr: multipliers must be a mapping"):
    param_group_lr(2.0)
  with pytest.raises(ValueError, match=r"pattern\(s\) \['nope'\] match no parameter"):
    param_group_lr({"nope": 2.0}).init(params)
  param_group_lr({"nope": 2.0}, strict=False).init(params)  # allowed
  with pytest.raises(ValueError, match="pattern"):  # shadowed by an earlier pattern
    param_group_lr({"Dense": 1.0, "bias": 2.0}).init(params)
  with pytest.raises(ValueError, match="layerwise_lr: low must be > 0, got low=0.0"):
    layerwise_lr(0.0, 1.0)
  with pytest.raises(ValueError, match="layerwise_lr: high must be > 0, got high=-1"):
    layerwise_lr(0.1, -1)
  with pytest.raises(ValueError, match=r"layerwise_lr: parameter\(s\) \['Dense_2/bias'.*match "
                     r"none of groups \['\^Dense_0', '\^Dense_1'\]; add a catch-all"):
    layerwise_lr(0.1, 1.0, ["^Dense_0", "^Dense_1"]).init(params)
  with pytest.raises(ValueError, match="layerwise_lr: groups must be a non-empty list"):
    layerwise_lr(0.1, 1.0, []).init(params)

