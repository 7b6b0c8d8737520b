"""monitor(): norms vs NumPy (updates from an independent optax run), wrap vs chain placement,
jit / vmap / no-retrace, flax nnx, the ratio report; dead_relu_fraction, check_batch and
assert_clean_data vs NumPy counts and exact messages."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import (
    BatchCheck,
    MonitorState,
    assert_clean_data,
    check_batch,
    dead_relu_fraction,
    monitor,
    update_ratio_report,
)

TIGHT = dict(rtol=1e-10, atol=1e-12)
LOOSE = dict(rtol=1e-5, atol=1e-7)

_rng = np.random.default_rng(0)
P_NP = {
    "Dense_0": {"bias": np.zeros(3), "kernel": _rng.normal(size=(2, 3))},
    "Dense_1": {"bias": 0.1 * _rng.normal(size=1), "kernel": _rng.normal(size=(3, 1))},
}
G_NP = [jax.tree.map(lambda p: _rng.normal(size=p.shape), P_NP) for _ in range(3)]
NAMES = ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]


def _j(tree, dtype=None):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _np_norms(tree):
  return np.array([np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree)])


def _run(tx, grads, params):
  """Apply ``tx`` to a list of gradients; returns (final params, state, last updates)."""
  state = tx.init(params)
  for g in grads:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  return params, state, u


def test_wrapped_norms_match_numpy_and_independent_adam(x64):
  params = _j(P_NP)
  _, state, u = _run(monitor(optax.adam(1e-2)), _j(G_NP), params)
  p_ref, s_ref, u_ref = _run(optax.adam(1e-2), _j(G_NP), params)  # independent: no monitor
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), u, u_ref)  # identity
  p_before = jax.tree.map(lambda p, d: np.asarray(p) - np.asarray(d), p_ref, u_ref)
  g, un, pn = _np_norms(G_NP[-1]), _np_norms(u_ref), _np_norms(p_before)
  np.testing.assert_allclose(state.grad_norm, g, **TIGHT)
  np.testing.assert_allclose(state.update_norm, un, **TIGHT)
  np.testing.assert_allclose(state.param_norm, pn, **TIGHT)
  np.testing.assert_allclose(state.ratio, un / pn, **TIGHT)
  np.testing.assert_allclose(state.global_grad_norm, np.sqrt(np.sum(g**2)), **TIGHT)
  np.testing.assert_allclose(state.global_update_norm, np.sqrt(np.sum(un**2)), **TIGHT)
  np.testing.assert_allclose(state.global_param_norm, np.sqrt(np.sum(pn**2)), **TIGHT)
  np.testing.assert_allclose(state.global_ratio, np.sqrt(np.sum(un**2) / np.sum(pn**2)), **TIGHT)
  assert int(state.count) == 3
  # the inner state is adam's, advanced as without the wrapper
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), state.inner_state, s_ref)


def test_chain_placement_sees_only_updates(x64):
  params = _j(P_NP)
  tx = optax.chain(monitor(), optax.adam(1e-2), monitor())
  _, state, u = _run(tx, _j(G_NP), params)
  first, last = state[0], state[2]
  np.testing.assert_allclose(first.grad_norm, _np_norms(G_NP[-1]), **TIGHT)
  np.testing.assert_allclose(first.update_norm, first.grad_norm, **TIGHT)  # identity
  np.testing.assert_allclose(last.grad_norm, _np_norms(u), **TIGHT)
  np.testing.assert_allclose(last.update_norm, _np_norms(u), **TIGHT)
  rows = update_ratio_report(state, params, index=1)
  np.testing.assert_allclose([r["update_norm"] for r in rows[:-1]], _np_norms(u), **TIGHT)


def test_zero_params_give_inf_ratio_not_nan():
  params = {"b": jnp.zeros(2), "w": jnp.ones(4), "z": jnp.zeros(1)}
  grads = {"b": jnp.ones(2), "w": jnp.ones(4), "z": jnp.zeros(1)}
  tx = monitor(optax.sgd(1e-3))
  _, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(np.isinf(state.ratio), [True, False, False])
  assert float(state.ratio[2]) == 0.0
  np.testing.assert_allclose(state.ratio[1], 1e-3, rtol=1e-6)
  rows = update_ratio_report(state, params)
  assert [r["verdict"] for r in rows] == ["zero params", "ok", "zero params", "ok"]
  assert [r["path"] for r in rows] == ["b", "w", "z", "(global)"]


def test_report_verdicts_and_thresholds():
  params = {"a": jnp.ones(1), "b": jnp.ones(1), "c": jnp.ones(1)}
  grads = {"a": jnp.full(1, 1e-6), "b": jnp.full(1, 1e-3), "c": jnp.full(1, 1.0)}
  tx = monitor()
  _, state = tx.update(grads, tx.init(params), params)
  rows = update_ratio_report(state, params)
  assert [r["verdict"] for r in rows[:3]] == ["slow", "ok", "unstable"]
  np.testing.assert_allclose([r["ratio"] for r in rows[:3]], [1e-6, 1e-3, 1.0], rtol=1e-6)
  assert isinstance(rows[0]["ratio"], float)
  rows = update_ratio_report(state, params, low=1e-7, high=2.0)
  assert [r["verdict"] for r in rows[:3]] == ["ok", "ok", "ok"]
  nan_state = tx.update({"a": jnp.full(1, jnp.nan), "b": grads["b"], "c": grads["c"]},
                        state, params)[1]
  assert update_ratio_report(nan_state, params)[0]["verdict"] == "non-finite"


def test_jit_equals_eager():
  params = _j(P_NP, jnp.float32)
  tx = monitor(optax.adam(1e-2))
  eager = _run(tx, _j(G_NP, jnp.float32), params)[1]
  jitted = jax.jit(lambda p, g: _run(tx, g, p)[1])(params, _j(G_NP, jnp.float32))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **LOOSE), eager, jitted)


def _train(lr, params, grads):
  return _run(optax.chain(optax.adam(lr), monitor()), grads, params)[1][1]


def test_vmap_over_lr_equals_loop_and_has_config_axis():
  params, grads = _j(P_NP, jnp.float32), _j(G_NP, jnp.float32)
  lrs = [1e-4, 1e-3, 1e-1]
  f = jax.jit(_train)
  batched = jax.jit(jax.vmap(_train, in_axes=(0, None, None)))(jnp.array(lrs), params, grads)
  assert batched.ratio.shape == (3, 4) and batched.global_ratio.shape == (3,)
  for i, lr in enumerate(lrs):
    single = f(jnp.float32(lr), params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, **LOOSE), batched, single)
  # the ratio scales with the learning rate (Adam's step is ~lr per element)
  r = np.asarray(batched.global_ratio)
  assert r[0] < r[1] < r[2]
  rows = update_ratio_report(batched, params)
  assert rows[1]["ratio"].shape == (3,) and len(rows[1]["verdict"]) == 3
  one = update_ratio_report(batched, params, config=2)
  np.testing.assert_allclose(one[-1]["ratio"], r[2], rtol=1e-6)


def test_no_retrace_when_lr_changes():
  traces = []
  params, grads = _j(P_NP, jnp.float32), _j(G_NP, jnp.float32)

  @jax.jit
  def f(lr):
    traces.append(1)
    return _train(lr, params, grads)

  a, b = f(jnp.float32(1e-3)), f(jnp.float32(1e-2))
  assert len(traces) == 1
  assert float(b.global_ratio) > float(a.global_ratio)


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)])

  def __call__(self, x):
    return self.layers[1](jax.nn.relu(self.layers[0](x)))


def test_nnx_optimizer_and_report_names():
  model = _Net(nnx.Rngs(0))
  opt = nnx.Optimizer(model, monitor(optax.sgd(0.1)), wrt=nnx.Param)
  x = jnp.asarray(_rng.normal(size=(8, 2)), jnp.float32)
  loss = lambda m: jnp.mean(m(x) ** 2)  # noqa: E731
  before = nnx.as_pure(nnx.state(model, nnx.Param))
  grads = nnx.grad(loss)(model)
  g = nnx.as_pure(nnx.state(grads, nnx.Param))
  opt.update(model, grads)
  rows = update_ratio_report(opt.opt_state, nnx.state(model, nnx.Param))
  assert [r["path"] for r in rows] == [
      "layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/kernel", "(global)"]
  np.testing.assert_allclose([r["grad_norm"] for r in rows[:-1]], _np_norms(g), rtol=1e-5)
  np.testing.assert_allclose([r["update_norm"] for r in rows[:-1]], 0.1 * _np_norms(g), rtol=1e-5)
  np.testing.assert_allclose([r["param_norm"] for r in rows[:-1]], _np_norms(before), rtol=1e-5)


def test_needs_params_and_bad_report_args():
  params = {"w": jnp.ones(2)}
  tx = monitor()
  with pytest.raises(ValueError, match="monitor: params must be passed to update"):
    tx.update(params, tx.init(params))
  with pytest.raises(TypeError, match="monitor: inner must be an optax.GradientTransformation"):
    monitor(0.1)
  with pytest.raises(ValueError, match=r"update_ratio_report: state contains 0 monitor state\(s\)"):
    update_ratio_report(optax.sgd(0.1).init(params), params)
  with pytest.raises(ValueError, match="the state has 1 leaves but params have 2"):
    update_ratio_report(tx.init(params), {"w": 1.0, "v": 2.0})
  with pytest.raises(ValueError, match="config given but the state is not batched"):
    update_ratio_report(tx.init(params), params, config=0)


# ------------------------------------------------------------------------------------------------
# dead_relu_fraction
# ------------------------------------------------------------------------------------------------


def _np_dead(a, axis=0, threshold=0.0):
  return np.mean(np.all(a <= threshold, axis=axis))


def test_dead_relu_fraction_vs_numpy():
  a = np.maximum(_rng.normal(size=(16, 6, 5)) - 1.5, 0.0)
  a[:, 0, :] = 0.0
  np.testing.assert_allclose(dead_relu_fraction(jnp.asarray(a)), _np_dead(a), rtol=1e-6)
  np.testing.assert_allclose(dead_relu_fraction(jnp.asarray(a), axis=(0, 1)),
                             _np_dead(a, (0, 1)), rtol=1e-6)
  tree = dead_relu_fraction({"h1": jnp.asarray(a), "h2": (jnp.ones((4, 3)),)})
  assert float(tree["h2"][0]) == 0.0
  got = jax.jit(lambda t: dead_relu_fraction(jnp.asarray(a), threshold=t))(0.5)
  np.testing.assert_allclose(got, _np_dead(a, threshold=0.5), rtol=1e-6)


def test_dead_relu_fraction_vmap_over_threshold_and_linen():
  a = jnp.asarray(_rng.normal(size=(32, 8)))
  ts = [-1.0, 0.0, 1.0, 3.0]
  got = jax.vmap(lambda t: dead_relu_fraction(a, threshold=t))(jnp.array(ts))
  np.testing.assert_allclose(got, [_np_dead(np.asarray(a), threshold=t) for t in ts], rtol=1e-6)

  class MLP(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Dense(8)(x))
      self.sow("intermediates", "relu", h)
      return nn.Dense(1)(h)

  x = jnp.asarray(_rng.normal(size=(32, 2)), jnp.float32)
  variables = MLP().init(jax.random.key(0), x)
  _, inter = MLP().apply(variables, x, mutable="intermediates")
  frac = dead_relu_fraction(inter["intermediates"]["relu"])
  h = np.asarray(inter["intermediates"]["relu"][0])
  np.testing.assert_allclose(frac[0], _np_dead(h), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# check_batch and assert_clean_data
# ------------------------------------------------------------------------------------------------


def _dirty():
  x = _rng.normal(size=(20, 9))
  x[[1, 4, 5], 7] = np.nan
  x[2, 3] = np.inf
  x[:, 0] = 1.0
  y = np.arange(20) % 10
  y[6] = 12
  return x, y


def test_check_batch_vs_numpy_counts():
  x, y = _dirty()
  c = jax.jit(check_batch)(jnp.asarray(x, jnp.float32), jnp.asarray(y),
                                               num_classes=10)
  assert isinstance(c, BatchCheck)
  np.testing.assert_array_equal(c.x_nan, np.isnan(x).sum(0))
  np.testing.assert_array_equal(c.x_inf, np.isinf(x).sum(0))
  np.testing.assert_array_equal(c.x_constant, np.all(x == x[:1], axis=0))
  assert int(c.y_out_of_range) == 1 and int(c.y_nonfinite) == 0 and not bool(c.ok)
  clean = check_batch(jnp.ones((4, 2)).at[0, 0].set(2.0), jnp.array([0, 1, 2, 1]), num_classes=3)
  assert bool(clean.ok)
  fy = check_batch(jnp.ones((3, 2)), jnp.array([0.0, 1.5, jnp.nan]), num_classes=2)
  assert (int(fy.y_non_integer), int(fy.y_nonfinite), int(fy.y_out_of_range)) == (1, 1, 0)
  one_row = check_batch(jnp.ones((1, 2)))
  assert bool(one_row.ok) and not one_row.x_constant.any()


def test_check_batch_vmap_over_num_classes_and_no_retrace():
  y = jnp.array([0, 3, 5, 9])
  x = jnp.ones((4, 2))
  ks = [4, 6, 10]
  got = jax.vmap(lambda k: check_batch(x, y, num_classes=k).y_out_of_range)(jnp.array(ks))
  np.testing.assert_array_equal(got, [np.sum((np.asarray(y) >= k)) for k in ks])
  traces = []

  @jax.jit
  def f(k):
    traces.append(1)
    return check_batch(x, y, num_classes=k).ok

  assert [bool(f(jnp.int32(k))) for k in ks] == [False, False, True]
  assert len(traces) == 1


def test_assert_clean_data_messages():
  x, y = _dirty()
  with pytest.raises(ValueError) as e:
    assert_clean_data(x, y, num_classes=10)
  assert str(e.value) == (
      "assert_clean_data: inputs contain 3 NaN values in column 7; inputs contain 1 inf value "
      "in column 3; inputs have 1 constant column: 0 (pass allow_constant_features=True if "
      "expected); labels outside [0, 10): found 12"
  )
  x2 = np.ones((4, 3))
  x2[:, 1] = [1, 2, 3, 4]
  x2[0, 0] = x2[1, 2] = x2[2, 2] = np.nan
  with pytest.raises(ValueError, match=r"inputs contain 3 NaN values in 2 columns: 0 \(1\), "
                     r"2 \(2\)$"):
    assert_clean_data(x2)
  with pytest.raises(ValueError,
                     match=r"labels outside \[0, 3\): found -1, 3, 7 \(4 of 5 labels\)"):
    assert_clean_data(np.arange(10.0).reshape(5, 2), np.array([-1, 0, 3, 7, 7]), 3)
  with pytest.raises(ValueError, match=r"labels contain 1 NaN/inf value; labels are not "
                     r"integers: found 0.5$"):
    assert_clean_data(np.arange(6.0).reshape(3, 2), np.array([0.5, np.nan, 1.0]), 2)
  with pytest.raises(ValueError, match="x has 3 rows but y has 2"):
    assert_clean_data(np.arange(6.0).reshape(3, 2), np.array([0, 1]))
  with pytest.raises(ValueError, match="inputs are constant: all 5 rows are equal"):
    assert_clean_data(np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"feature \(0, 1\)"):
    img = _rng.normal(size=(4, 2, 2))
    img[3, 0, 1] = np.nan
    assert_clean_data(img)
  with pytest.raises(ValueError, match="assert_clean_data: num_classes must be >= 1, got "
                     "num_classes=0"):
    assert_clean_data(np.ones((2, 2)), np.zeros(2), 0)
  with pytest.raises(ValueError, match="check_batch: num_classes must be >= 1"):
    check_batch(np.ones((2, 2)), np.zeros(2), num_classes=0)


def test_assert_clean_data_on_digits():
  sklearn_datasets = pytest.importorskip("sklearn.datasets")
  x, y = sklearn_datasets.load_digits(return_X_y=True)
  assert_clean_data(x, y, num_classes=10, allow_constant_features=True)
  with pytest.raises(ValueError, match=r"inputs have 3 constant columns: 0, 32, 39"):
    assert_clean_data(x, y, num_classes=10)
  with pytest.raises(ValueError, match=r"labels outside \[0, 9\): found 9 \(180 of 1797 labels\)"):
    assert_clean_data(x, y, num_classes=9, allow_constant_features=True)
  # float64 values beyond float32 range are not mistaken for inf on the host
  assert_clean_data(np.array([[1e300, 1.0], [2e300, 2.0]]))


def test_state_type():
  assert isinstance(monitor().init({"w": jnp.ones(1)}), MonitorState)
