"""Flooding: values and gradients vs the paper's formula restated in NumPy, aux pass-through,
jit / vmap over the level / no-retrace, a tiny training run that floats at the level, flax nnx,
bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import flood, flooded

TIGHT = dict(rtol=1e-12, atol=1e-12)


def _np_flood(loss, b):
  """Ishida et al. (2020), eq. (1): |J - b| + b."""
  return np.abs(loss - b) + b


def _quad(w):
  return jnp.sum((w - 1.0) ** 2)


W_ABOVE = np.array([3.0, -1.0])  # loss 8.0
W_BELOW = np.array([1.1, 0.9])  # loss 0.02


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.1, 0.3, 2.0])
@pytest.mark.parametrize("level", [0.0, 0.1, 0.5])
def test_value_matches_formula(loss, level, x64):
  np.testing.assert_allclose(flood(loss, level), _np_flood(loss, level), **TIGHT)
  if loss >= level:
    np.testing.assert_allclose(flood(loss, level), loss, **TIGHT)


def test_gradient_equals_plain_loss_above_level(x64):
  w = jnp.asarray(W_ABOVE)
  g_plain = jax.grad(_quad)(w)
  v, g = jax.value_and_grad(flooded(_quad, 1.0))(w)
  np.testing.assert_allclose(v, _quad(w), **TIGHT)
  np.testing.assert_allclose(g, g_plain, **TIGHT)
  np.testing.assert_allclose(g, 2 * (W_ABOVE - 1.0), **TIGHT)  # NumPy derivative


def test_gradient_sign_flips_below_level(x64):
  w = jnp.asarray(W_BELOW)
  v, g = jax.value_and_grad(flooded(_quad, 1.0))(w)
  loss = np.sum((W_BELOW - 1.0) ** 2)
  np.testing.assert_allclose(v, 2 * 1.0 - loss, **TIGHT)
  np.testing.assert_allclose(g, -2 * (W_BELOW - 1.0), **TIGHT)
  # a gradient step raises the plain loss back towards the level
  assert float(_quad(w - 0.1 * g)) > float(_quad(w))


def test_has_aux_auto_and_explicit():
  def with_aux(w):
    return _quad(w), {"plain": _quad(w)}

  w = jnp.asarray(W_BELOW, jnp.float32)
  (v, aux), g = jax.value_and_grad(flooded(with_aux, 1.0), has_aux=True)(w)
  np.testing.assert_allclose(aux["plain"], _quad(w))
  np.testing.assert_allclose(v, 2.0 - float(_quad(w)), rtol=1e-6)
  np.testing.assert_allclose(g, -jax.grad(_quad)(w), rtol=1e-6)
  out = flooded(with_aux, 1.0, has_aux=True)(w)
  assert isinstance(out, tuple) and set(out[1]) == {"plain"}
  assert flooded(lambda w: [_quad(w), 7], 1.0)(w)[1] == 7  # lists keep their type
  assert flooded(_quad, 0.0, has_aux=False).__name__ == "_quad"
  with pytest.raises(ValueError, match="flooded: has_aux=True but loss_fn returned"):
    flooded(_quad, 1.0, has_aux=True)(w)


def test_jit_equals_eager():
  f = jax.value_and_grad(flooded(_quad, 0.5))
  for w in (W_ABOVE, W_BELOW):
    w = jnp.asarray(w, jnp.float32)
    e, j = f(w), jax.jit(f)(w)
    np.testing.assert_allclose(e[0], j[0], rtol=1e-6)
    np.testing.assert_allclose(e[1], j[1], rtol=1e-6)


def test_vmap_over_level_equals_loop():
  levels = [0.0, 0.01, 0.5, 3.0]
  w = jnp.asarray(W_BELOW, jnp.float32)
  f = lambda b: jax.value_and_grad(flooded(_quad, b))(w)  # noqa: E731
  vs, gs = jax.vmap(f)(jnp.array(levels))
  for i, b in enumerate(levels):
    v, g = f(b)
    np.testing.assert_allclose(vs[i], v, rtol=1e-6)
    np.testing.assert_allclose(gs[i], g, rtol=1e-6)


def test_no_retrace_when_level_changes():
  traces = []

  @jax.jit
  def step(w, b):
    traces.append(1)
    return jax.grad(flooded(_quad, b))(w)

  w = jnp.asarray(W_BELOW, jnp.float32)
  g1, g2 = step(w, jnp.float32(0.0)), step(w, jnp.float32(1.0))
  assert len(traces) == 1
  np.testing.assert_allclose(g1, -g2, rtol=1e-6)  # loss 0.02: above 0, below 1


# ------------------------------------------------------------------------------------------------
# A tiny training run: full-batch GD on separable data drives the plain loss to ~0.01; with
# flooding the training loss floats at the level (the paper's Fig. 1 behaviour).
# ------------------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
_X = _rng.normal(size=(64, 2)).astype(np.float32)
_Y = (_X[:, 0] + 0.5 * _X[:, 1] > 0).astype(np.float32)


def _init():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
      "w1": 0.5 * jax.random.normal(k1, (2, 16)),
      "b1": jnp.zeros(16),
      "w2": 0.5 * jax.random.normal(k2, (16,)),
      "b2": jnp.zeros(()),
  }


def _bce(p):
  h = jnp.tanh(jnp.asarray(_X) @ p["w1"] + p["b1"][None, :])
  return jnp.mean(optax.sigmoid_binary_cross_entropy(h @ p["w2"] + p["b2"], jnp.asarray(_Y)))


def _train(level, steps=400):
  tx = optax.sgd(0.5)

  def step(carry, _):
    p, s = carry
    g = jax.grad(flooded(_bce, level))(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), _bce(p)

  p = _init()
  return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[1]


def test_training_floats_at_the_level():
  levels = np.array([0.0, 0.05, 0.2], np.float32)
  curves = np.asarray(jax.jit(jax.vmap(_train))(jnp.asarray(levels)))
  tail = curves[:, -100:]
  assert tail[0].max() < 0.03  # unflooded: near zero training loss
  for b, row in zip(levels[1:], tail[1:]):
    assert abs(row.mean() - b) < 0.1 * b, (b, row.mean())
    assert row.min() > 0.8 * b and row.max() < 1.2 * b  # hovers: neither collapses nor drifts


def test_nnx_optimizer_value_and_grad():
  model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
  loss = lambda m: jnp.mean((m(x) - y) ** 2)  # noqa: E731
  level = loss(model) + 1.0  # the loss is below the level: flooding must push it up
  before = loss(model)
  value, grads = nnx.value_and_grad(flooded(loss, level))(model)
  np.testing.assert_allclose(value, 2 * level - before, rtol=1e-6)
  opt.update(model, grads)
  assert float(loss(model)) > float(before)


def test_bad_level():
  with pytest.raises(ValueError, match=r"flood: level must be >= 0, got level=-0.1"):
    flood(1.0, -0.1)
  with pytest.raises(ValueError, match=r"flooded: level must be >= 0, got level=\[0.1, -1.0\]"):
    flooded(_quad, np.array([0.1, -1.0]))
  with pytest.raises(ValueError, match="flood: level must be >= 0, got level=nan"):
    flood(1.0, float("nan"))
  with pytest.raises(TypeError, match="flooded: loss_fn must be callable"):
    flooded(1.0, 0.1)
  jax.jit(flood)(1.0, -0.1)  # traced: not checkable at trace time, documented


@pytest.mark.parametrize("fn,call", [("flood", lambda b: flood(1.0, b)),
                                     ("flooded", lambda b: flooded(_quad, b))])
def test_infinite_or_bool_level_raises(fn, call):
  for bad in (np.inf, -np.inf, np.array([0.1, np.inf])):
    with pytest.raises(ValueError, match=rf"^{fn}: level must be finite and >= 0, got level="):
      call(bad)
  for bad in (True, np.bool_(False), jnp.asarray(True)):
    with pytest.raises(ValueError, match=rf"^{fn}: level must be a number .*not a bool, "
                                         r"got level=(True|False)$"):
      call(bad)


def test_numpy_scalar_level_is_accepted():
  for level in (np.float32(0.5), np.float64(0.5), np.int64(1)):
    np.testing.assert_allclose(flood(0.2, level), abs(0.2 - float(level)) + float(level),
                               rtol=1e-6)
    loss = float(_quad(jnp.array([0.1])))  # 0.81
    np.testing.assert_allclose(flooded(_quad, level)(jnp.array([0.1])),
                               abs(loss - float(level)) + float(level), rtol=1e-6)


def test_public_names():
  assert {"flood", "flooded"} <= set(optaxlr.__all__)
