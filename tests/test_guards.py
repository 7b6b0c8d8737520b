"""skip_nonfinite: parity with optax.apply_if_finite, inner state frozen on skips (vs optax run on
the finite gradients only), leaf reporting, jit / vmap / no-retrace, flax nnx, bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import SkipNonfiniteState, nonfinite_leaf_name, skip_nonfinite

PARAMS = {
    "Dense_0": {"bias": jnp.zeros(3), "kernel": jnp.full((2, 3), 0.5)},
    "Dense_1": {"bias": jnp.zeros(1), "kernel": jnp.full((3, 1), -0.5)},
}
NAMES = ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]  # leaves order
STEPS = 9


def _grads(bad):
  """A gradient sequence; ``bad[t] = (leaf index, value)`` poisons one element at step t."""
  out = []
  leaves, treedef = jax.tree.flatten(PARAMS)
  for t in range(STEPS):
    g = [jnp.sin(jnp.arange(x.size, dtype=jnp.float32) + t).reshape(x.shape) for x in leaves]
    for i, val in bad.get(t, []):
      g[i] = g[i].at[(0,) * g[i].ndim].set(val)
    out.append(jax.tree.unflatten(treedef, g))
  return out


BAD = {2: [(3, jnp.nan)], 3: [(1, jnp.inf), (3, jnp.nan)], 4: [(0, -jnp.inf)], 7: [(2, jnp.nan)]}
GRADS = _grads(BAD)
STACKED = jax.tree.map(lambda *xs: jnp.stack(xs), *GRADS)


def _run(tx, grads=STACKED, params=PARAMS):
  """Scan ``tx`` over the stacked gradients; returns per-step params and states."""

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    return (p, s), (p, s)

  _, (ps, ss) = jax.lax.scan(step, (params, tx.init(params)), grads)
  return ps, ss


_run_jit = jax.jit(_run, static_argnums=0)
ADAM = optax.adam(0.1)
TX = skip_nonfinite(ADAM)  # shared, so the jitted runs below compile once per module
MAX_CONSECUTIVE = [0, 1, 2, 5]


@functools.cache
def guarded():
  return _run_jit(TX)


@functools.cache
def guarded_vmapped():
  """All MAX_CONSECUTIVE configs in one vmapped program."""
  f = lambda m: _run(skip_nonfinite(ADAM, max_consecutive=m))  # noqa: E731
  return jax.jit(jax.vmap(f))(jnp.array(MAX_CONSECUTIVE))


_run_traced_m = jax.jit(lambda m: _run(skip_nonfinite(ADAM, max_consecutive=m)))


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def _at(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("i", range(len(MAX_CONSECUTIVE)))
def test_matches_optax_apply_if_finite(i):
  """Row i of the vmapped sweep equals optax.apply_if_finite(adam, m) with a Python int m."""
  m = MAX_CONSECUTIVE[i]
  ps, ss = _at(guarded_vmapped()[0], i), _at(guarded_vmapped()[1], i)
  ps_ref, ss_ref = _run_jit(optax.apply_if_finite(ADAM, m))
  _close(ps, ps_ref, rtol=1e-6, atol=1e-7)  # NaNs (given-up steps) must match too
  np.testing.assert_array_equal(ss.notfinite_count, ss_ref.notfinite_count)
  np.testing.assert_array_equal(ss.total_notfinite, ss_ref.total_notfinite)
  np.testing.assert_array_equal(ss.last_finite, ss_ref.last_finite)
  if m == 0:  # gives up at once: NaNs reach the parameters, as in optax
    assert np.isnan(np.asarray(ps["Dense_1"]["kernel"][-1])).any()


def test_vmap_over_max_consecutive_equals_loop():
  ps, ss = guarded_vmapped()
  for i, m in enumerate(MAX_CONSECUTIVE):
    p1, s1 = _run_traced_m(jnp.int32(m))
    _close(_at(ps, i), p1, rtol=1e-6, atol=1e-7)
    _close(_at(ss, i), s1, rtol=1e-6, atol=1e-7)


def test_none_never_gives_up_and_counts():
  ps, ss = guarded()
  ps_ref, _ = _run_jit(optax.apply_if_finite(ADAM, 10**6))
  _close(ps, ps_ref, rtol=0, atol=0)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(ps))
  np.testing.assert_array_equal(ss.notfinite_count, [0, 0, 1, 2, 3, 0, 0, 1, 0])
  np.testing.assert_array_equal(ss.total_notfinite, [0, 0, 1, 2, 3, 3, 3, 4, 4])
  np.testing.assert_array_equal(ss.last_finite, [t not in BAD for t in range(STEPS)])
  np.testing.assert_array_equal(ss.count, np.arange(1, STEPS + 1))


def test_skipped_steps_leave_inner_state_untouched():
  """Reference: plain optax.adam run on the finite gradients only."""
  ps, _ = guarded()
  finite = [t for t in range(STEPS) if t not in BAD]
  p_ref, _ = _run_jit(ADAM, jax.tree.map(lambda x: x[jnp.array(finite)], STACKED))
  _close(_at(ps, -1), _at(p_ref, -1), rtol=1e-6, atol=1e-7)


def test_leaf_reporting():
  _, ss = guarded()
  last = _at(ss, -1)
  assert int(last.first_nonfinite_leaf) == 3 and int(last.first_nonfinite_step) == 2
  assert nonfinite_leaf_name(last, PARAMS) == "Dense_1/kernel"
  assert nonfinite_leaf_name(last, PARAMS, which="last") == "Dense_1/bias"
  # step 3 poisons leaves 1 and 3: the first in flatten order is reported
  assert nonfinite_leaf_name(_at(ss, 3), PARAMS, which="last") == NAMES[1]
  np.testing.assert_array_equal(ss.last_nonfinite_leaf, [-1, -1, 3, 1, 0, 0, 0, 2, 2])
  np.testing.assert_array_equal(ss.first_nonfinite_step, [-1, -1] + [2] * 7)
  assert nonfinite_leaf_name(skip_nonfinite().init(PARAMS), PARAMS) is None
  # found inside a chain
  chained = optax.chain(optax.clip(1.0), skip_nonfinite(optax.sgd(0.1)))
  assert nonfinite_leaf_name(chained.init(PARAMS), PARAMS) is None


def test_identity_inner_zeroes_only_bad_steps():
  ps, ss = _run_jit(skip_nonfinite())
  prev = PARAMS
  for t in range(STEPS):
    cur = _at(ps, t)
    want = prev if t in BAD else jax.tree.map(jnp.add, prev, GRADS[t])
    _close(cur, want, rtol=1e-6, atol=1e-6)
    prev = cur
  assert int(ss.total_notfinite[-1]) == 4


def test_jit_equals_eager():
  tx = skip_nonfinite(optax.sgd(0.1, momentum=0.9), max_consecutive=1)
  ts = [1, 2, 3]  # finite, skipped, then given up: 2 in a row > max_consecutive
  ps_jit, ss_jit = _run_jit(tx, jax.tree.map(lambda x: x[1:4], STACKED))
  p, s = PARAMS, tx.init(PARAMS)
  for t in ts:
    u, s = tx.update(GRADS[t], s, p)
    p = optax.apply_updates(p, u)
  _close(_at(ps_jit, -1), p, rtol=1e-6, atol=1e-7)
  _close(_at(ss_jit, -1), s, rtol=1e-6, atol=1e-7)
  assert np.isnan(np.asarray(p["Dense_1"]["kernel"])).any()


def test_vmap_one_config_nan_other_not():
  clean = jax.tree.map(lambda *xs: jnp.stack(xs), *_grads({}))
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), clean, STACKED)  # config axis first
  ps, ss = jax.jit(jax.vmap(lambda g: _run(TX, g)))(both)
  ps_clean, _ = _run_jit(ADAM, clean)
  _close(_at(ps, 0), ps_clean, rtol=1e-6, atol=1e-7)
  _close(_at(ps, 1), guarded()[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(ss.total_notfinite[:, -1], [0, 4])
  final = jax.tree.map(lambda x: x[:, -1], ss)
  assert nonfinite_leaf_name(final, PARAMS) == [None, "Dense_1/kernel"]


def test_no_retrace_when_max_consecutive_changes():
  traces = []

  @jax.jit
  def run(m, lr):
    traces.append(1)
    return _run(skip_nonfinite(optax.sgd(lr), max_consecutive=m))[0]

  a = run(jnp.int32(0), jnp.float32(0.1))
  b = run(jnp.int32(3), jnp.float32(0.2))
  assert len(traces) == 1
  assert np.isnan(np.asarray(a["Dense_1"]["kernel"])).any()
  assert not np.isnan(np.asarray(b["Dense_1"]["kernel"])).any()


def test_extra_args_reach_inner():
  inner = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=0, factor=0.5))
  tx = skip_nonfinite(inner)
  state = tx.init(PARAMS)
  for t in (0, 2):  # step 2 is non-finite: plateau state must not see its loss
    _, state = tx.update(GRADS[t], state, PARAMS, value=jnp.float32(1.0))
  ref = inner.init(PARAMS)
  _, ref = inner.update(GRADS[0], ref, PARAMS, value=jnp.float32(1.0))
  _close(state.inner_state, ref, rtol=0, atol=0)


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)])

  def __call__(self, x):
    return self.layers[1](jax.nn.relu(self.layers[0](x)))


def test_nnx_optimizer_skips_and_names_leaf():
  model = _Net(nnx.Rngs(0))
  opt = nnx.Optimizer(model, skip_nonfinite(optax.adam(0.1)), wrt=nnx.Param)
  x = jnp.ones((4, 2))

  @nnx.jit
  def train_step(model, opt, scale):
    def loss_fn(m):  # scale=NaN poisons only the gradient of layers/1/kernel
      return jnp.mean(m(x)) + scale * jnp.sum(m.layers[1].kernel[...])

    opt.update(model, nnx.grad(loss_fn)(model))

  before = nnx.as_pure(nnx.state(model, nnx.Param))
  train_step(model, opt, jnp.float32(jnp.nan))
  _close(nnx.as_pure(nnx.state(model, nnx.Param)), before, rtol=0, atol=0)
  assert nonfinite_leaf_name(opt.opt_state, nnx.state(model, nnx.Param)) == "layers/1/kernel"
  train_step(model, opt, jnp.float32(1.0))
  moved = nnx.as_pure(nnx.state(model, nnx.Param))
  assert not np.allclose(moved["layers"][1]["kernel"], before["layers"][1]["kernel"])


def test_bad_input():
  with pytest.raises(ValueError, match="skip_nonfinite: max_consecutive must be >= 0, got "
                     "max_consecutive=-1"):
    skip_nonfinite(optax.sgd(0.1), max_consecutive=-1)
  with pytest.raises(TypeError, match="pass max_consecutive by keyword"):
    skip_nonfinite(3)
  with pytest.raises(ValueError, match="nonfinite_leaf_name: state contains no skip_nonfinite"):
    nonfinite_leaf_name(optax.adam(0.1).init(PARAMS), PARAMS)
  state = skip_nonfinite().init(PARAMS)
  with pytest.raises(ValueError, match="nonfinite_leaf_name: which must be one of 'first', "
                     "'last', got which='middle'"):
    nonfinite_leaf_name(state, PARAMS, which="middle")
  with pytest.raises(ValueError, match="leaf index 3 out of range for params with 1 leaves"):
    nonfinite_leaf_name(state._replace(first_nonfinite_leaf=jnp.int32(3)), {"w": 1.0})


def test_state_type():
  assert isinstance(skip_nonfinite().init(PARAMS), SkipNonfiniteState)
