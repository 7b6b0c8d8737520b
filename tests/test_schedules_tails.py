"""What schedules do at and after their end, and no NaN anywhere (float32, jit and vmap).

* Every schedule that promises a final value holds it from its end on, at every later step up
  to ``2**31 - 1``, eagerly, under ``jit`` and under ``vmap`` over its hyperparameters: the
  value equals the documented final value (``rtol=1e-6``, float32).
* ``cosine`` is documented periodic past ``t_max`` (as PyTorch's ``CosineAnnealingLR``): it
  stays periodic, ``s(t + 2 t_max) == s(t)``.
* Edge settings (fractional powers, zero-length phases, zero warmups, ``eta_min == lr``,
  ``gamma`` and ``m_mul`` at their bounds, ``power = 0``) give finite values at every step, in
  particular at and after the end where ``(1 - t/T) ** p`` and friends sit on 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxlr import schedules as S

BIG = 2**31 - 1


def _after(end: int) -> jnp.ndarray:
  return jnp.asarray([end, end + 1, end + 2, end + 17, 2 * end + 3, 10**6, BIG - 1, BIG],
                     dtype=jnp.int32)


# (id, make(**hp), hp (numeric, vmapped), end step, the final value as a function of hp)
HOLDS = [
    ("linear", lambda lr, s, e, T: S.linear(lr, s, e, T),
     dict(lr=[0.1, 1.0, 3e-4], s=[0.5, 1.0, 0.01], e=[0.0, 0.3, 1.0], T=[1, 7, 300]),
     lambda hp: hp["lr"] * hp["e"]),
    ("polynomial", lambda lr, T, p, end: S.polynomial(lr, T, p, end_lr=end),
     dict(lr=[0.1, 1.0, 1.23], T=[1, 10, 300], p=[0.3, 1.0, 2.5], end=[0.0, 1e-3, 1e-5]),
     lambda hp: hp["end"]),
    ("polynomial-power0", lambda lr, T: S.polynomial(lr, T, 0.0),
     dict(lr=[0.1, 1.0, 2.0], T=[1, 5, 40]), lambda hp: hp["lr"]),  # 0 ** 0 == 1, as PyTorch
    ("constant_factor", lambda lr, f, T: S.constant_factor(lr, f, T),
     dict(lr=[0.1, 1.0, 3e-4], f=[0.1, 0.5, 1.0], T=[0, 7, 300]), lambda hp: hp["lr"]),
    *[(f"one_cycle-{a}-{tp}",
       (lambda a, tp: lambda lr, T, p, d, fd: S.one_cycle(
           lr, T, pct_start=p, anneal=a, div_factor=d, final_div_factor=fd, three_phase=tp))(
               a, tp),
       dict(lr=[1.23, 0.1, 3e-3], T=[300, 10, 1000], p=[0.3, 0.45, 0.05], d=[25.0, 3.0, 100.0],
            fd=[1e4, 10.0, 1e5]),
       lambda hp: hp["lr"] / hp["d"] / hp["fd"])
      for a in ("cos", "linear") for tp in (False, True)],
    *[(f"one_cycle_momentum-{a}-{tp}",
       (lambda a, tp: lambda T, p, lo, hi: S.one_cycle_momentum(
           T, pct_start=p, anneal=a, base_momentum=lo, max_momentum=hi, three_phase=tp))(a, tp),
       dict(T=[300, 10, 1000], p=[0.3, 0.45, 0.05], lo=[0.85, 0.0, 0.5], hi=[0.95, 0.9, 0.99]),
       lambda hp: hp["hi"])
      for a in ("cos", "linear") for tp in (False, True)],
    *[(f"warmup_stable_decay-{d}",
       (lambda d: lambda lr, T, w, dd, end: S.warmup_stable_decay(
           lr, T, w, decay_steps=dd, decay=d, end_lr=end))(d),
       dict(lr=[0.1, 1.0, 3e-4], T=[100, 10, 7], w=[10, 0, 3], dd=[20, 10, 0], end=[0.0, 1e-3,
                                                                                    1e-5]),
       lambda hp: hp["end"])
      for d in ("linear", "cosine", "sqrt")],
    *[(f"warmup-{m}",
       (lambda m: lambda lr, w, s: S.warmup(S.constant(lr), w, s, m))(m),
       dict(lr=[0.1, 1.0, 3e-4], w=[1, 10, 300], s=[0.5, 0.01, 1.0]), lambda hp: hp["lr"])
      for m in ("linear", "constant", "cosine", "exponential")],
]


def _end(name, hp, i):
  if name.startswith("one_cycle"):
    return hp["T"][i] - 1  # the final value is reached at step T - 1
  if name.startswith("warmup-"):
    return hp["w"][i]
  return hp["T"][i]


def _as_arrays(hp):
  return {k: jnp.asarray(v, jnp.int32 if isinstance(v[0], int) else jnp.float32)
          for k, v in hp.items()}


@pytest.mark.parametrize("name,make,hp,final", [pytest.param(*h, id=h[0]) for h in HOLDS])
def test_final_value_is_held_after_the_end(name, make, hp, final):
  n = len(next(iter(hp.values())))
  for i in range(n):
    one = {k: v[i] for k, v in hp.items()}
    want = np.float32(final(one))
    t = _after(_end(name, hp, i))
    for how, got in (("eager", make(**one)(t)), ("jit", jax.jit(make(**one))(t))):
      np.testing.assert_allclose(got, np.full(t.shape, want), rtol=1e-6, atol=0,
                                 err_msg=f"{name} {how} {one}")
  # vmap over all hyperparameters at once (traced), same steps for each setting
  ends = [_end(name, hp, i) for i in range(n)]
  t = _after(max(ends))
  got = jax.jit(jax.vmap(lambda h: make(**h)(t)))(_as_arrays(hp))
  for i in range(n):
    want = np.float32(final({k: v[i] for k, v in hp.items()}))
    np.testing.assert_allclose(got[i], np.full(t.shape, want), rtol=1e-6, atol=0,
                               err_msg=f"{name} vmap setting {i}")


def test_one_cycle_example_from_the_issue():
  """``one_cycle(1.23, 300)``: 4.92e-6 at step 299 and at every later step (was 7.4e-5 at 300,
  PyTorch's overshoot of the last anneal past its end)."""
  s = S.one_cycle(1.23, 300)
  final = 1.23 / 25.0 / 1e4
  got = s(jnp.asarray([299, 300, 301, 10**6], jnp.int32))
  np.testing.assert_allclose(got, np.full(4, final, np.float32), rtol=1e-6)
  assert float(s(298)) > final


@pytest.mark.parametrize("t_max,eta", [(1, 0.0), (7, 0.01), (300, 0.0), (1000, 1e-4)])
def test_cosine_stays_periodic_past_t_max(t_max, eta):
  """Documented (and PyTorch's): ``cosine`` climbs back to ``lr`` at ``2 t_max``."""
  s = S.cosine(0.1, t_max, eta_min=eta)
  t = jnp.arange(2 * t_max + 1, dtype=jnp.int32)
  base = np.asarray(s(t))
  for k in (1, 3, 1000):
    shifted = np.asarray(jax.jit(s)(t + k * 2 * t_max))
    np.testing.assert_allclose(shifted, base, rtol=1e-6, atol=1e-7 * 0.1, err_msg=f"k={k}")
  np.testing.assert_allclose(base[[0, t_max, 2 * t_max]], [0.1, eta, 0.1], rtol=1e-6)


def test_polynomial_fractional_power_is_finite_at_and_after_the_end():
  """The issue: ``(1 - t / T) ** 0.5`` was NaN at ``t = T`` under ``jit`` (``1 - t/T``
  rounds to ``-6e-8`` there); eager gave 0."""
  t = jnp.arange(0, 3000, dtype=jnp.int32)
  for total in (1, 3, 7, 10, 100, 2461, 2999):
    for power in (0.1, 0.5, 1.5, 2.5648086):
      s = S.polynomial(1.5, total, power)
      for got in (s(t), jax.jit(s)(t)):
        got = np.asarray(got)
        assert np.all(np.isfinite(got)), (total, power)
        assert np.all(got[total:] == 0.0), (total, power)
  totals = jnp.arange(1, 200, dtype=jnp.int32)
  got = jax.jit(jax.vmap(lambda T: S.polynomial(1.0, T, 0.7)(t[:400])))(totals)
  assert np.all(np.isfinite(np.asarray(got)))


# Edge settings that sit on a 0 ** p, 0 / 0, 0 * inf or log(0): every value must be finite.
EDGES = [
    ("polynomial", lambda lr, T, p, end: S.polynomial(lr, T, p, end_lr=end),
     dict(lr=[0.1, 0.0, 1.0], T=[1, 3, 1], p=[0.0, 0.5, 1e-3], end=[0.1, 0.0, 0.0])),
    ("cosine", lambda lr, T, e: S.cosine(lr, T, eta_min=e),
     dict(lr=[0.1, 0.0, 0.1], T=[1, 2, 1], e=[0.1, 0.0, 0.0])),
    ("cosine_restarts", lambda lr, t0, tm, e, m: S.cosine_restarts(lr, t0, tm, eta_min=e, m_mul=m),
     dict(lr=[0.1, 0.1, 0.0], t0=[1, 1, 3], tm=[1.0, 2.0, 1.000001], e=[0.1, 0.0, 0.0],
          m=[1e-30, 1.0, 1e-3])),
    *[(f"cyclic-{mode}", (lambda mode: lambda lo, hi, up, down, g: S.cyclic(
        lo, hi, up, down, mode, g))(mode),
       dict(lo=[0.1, 0.0, 0.0], hi=[0.1, 1.0, 1e-6], up=[1, 1, 1], down=[1, 1000, 1],
            g=[1.0, 1e-30, 0.5]))
      for mode in ("triangular", "triangular2", "exp_range")],
    *[(f"one_cycle-{a}-{tp}", (lambda a, tp: lambda lr, T, p: S.one_cycle(
        lr, T, pct_start=p, anneal=a, three_phase=tp))(a, tp),
       dict(lr=[0.0, 0.1, 0.1], T=[1, 2, 10], p=[0.5, 0.5, 0.1]))
      for a in ("cos", "linear") for tp in (False, True)],
    ("warmup-exponential", lambda w, s: S.warmup(S.constant(0.1), w, s, "exponential"),
     dict(w=[0, 1, 5], s=[1e-30, 1e-30, 1.0])),
    ("warmup-cosine", lambda w, s: S.warmup(S.constant(0.1), w, s, "cosine"),
     dict(w=[0, 1, 5], s=[0.0, 0.0, 1.0])),
    *[(f"warmup_stable_decay-{d}", (lambda d: lambda lr, T, w, dd: S.warmup_stable_decay(
        lr, T, w, decay_steps=dd, decay=d))(d),
       dict(lr=[0.0, 0.1, 0.1], T=[1, 5, 5], w=[0, 5, 0], dd=[1, 0, 5]))
      for d in ("linear", "cosine", "sqrt")],
    ("rsqrt", lambda lr, w, tau: S.rsqrt(lr, w, tau),
     dict(lr=[0.0, 0.1, 0.1], w=[0, 0, 10], tau=[1.0, 1e-3, 1.0])),
    ("exponential", lambda lr, g: S.exponential(lr, g),
     dict(lr=[0.0, 0.1, 0.0], g=[1e-30, 1.0, 2.0])),
    ("step", lambda lr, g: S.step(lr, 1, g), dict(lr=[0.0, 0.1, 0.0], g=[1e-30, 1.0, 3.0])),
]


@pytest.mark.parametrize("name,make,hp", [pytest.param(*e, id=e[0]) for e in EDGES])
def test_edge_settings_are_finite_under_jit_and_vmap(name, make, hp):
  t = jnp.concatenate([jnp.arange(0, 40, dtype=jnp.int32), _after(40)])
  got = jax.jit(jax.vmap(lambda h: make(**h)(t)))(_as_arrays(hp))
  assert np.all(np.isfinite(np.asarray(got))), (name, np.asarray(got))
  n = len(next(iter(hp.values())))
  for i in range(n):
    one = {k: v[i] for k, v in hp.items()}
    eager = np.asarray(make(**one)(t))
    assert np.all(np.isfinite(eager)), (name, one, eager)
