"""Properties every ``optaxlr.schedules`` schedule must have, plus NumPy references.

For every schedule (one ``Spec`` per schedule and static variant):

* ``jax.jit`` equals eager, values finite;
* ``jax.vmap`` over each numeric hyperparameter (the schedule built INSIDE the vmapped function
  from the traced value) equals a Python loop over concrete values;
* changing hyperparameter values does not retrace (a Python counter in the traced function);
* a scalar step (Python int or int32 array) equals the same entry of an array of steps;
* int32 steps near ``2**31`` give finite values in the schedule's range;
* it composes with ``optax.chain(scale_by_adam(), scale_by_learning_rate(s))`` and works under
  ``optax.inject_hyperparams``, matching a manual computation.

Then exact values at huge int32 steps computed with Python integers, NumPy restatements of the
formulas that have no PyTorch counterpart (Keras-, fairseq-, paper-style), and
``cosine_restarts`` with a traced float ``t_mult`` against a pure-Python simulation of restarts.

Tolerances: float32 (the default) comparisons use ``rtol=1e-6`` (jit/vmap may fuse ops
differently from eager); float64 references ``rtol=1e-12`` unless noted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxlr import schedules as S

RTOL32 = 1e-6
STEPS = 64
BIG = (2**31 - 1, 2**31 - 100)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A schedule under test: ``make(**hps)`` builds it; ``sweep[name]`` holds 3 values per hp."""

  id: str
  make: Callable[..., Any]
  hps: dict[str, Any]
  sweep: dict[str, tuple]

  def __post_init__(self):
    assert set(self.sweep) == set(self.hps), self.id  # every numeric hp is swept


def _spec(id_, make, hps, sweep):
  return pytest.param(Spec(id_, make, hps, sweep), id=id_)


_LR = (0.01, 0.5, 2.0)

SPECS = [
    _spec("constant", S.constant, {"lr": 0.1}, {"lr": _LR}),
    _spec(
        "constant_factor", S.constant_factor,
        {"lr": 0.1, "factor": 0.25, "total_steps": 7},
        {"lr": _LR, "factor": (0.1, 0.5, 1.0), "total_steps": (1, 5, 30)},
    ),
    _spec(
        "linear", S.linear,
        {"lr": 0.1, "start_factor": 0.2, "end_factor": 0.9, "total_steps": 10},
        # start_factor in (0, 1] as PyTorch's LinearLR (a ramp from 0 is ``warmup``).
        {"lr": _LR, "start_factor": (0.05, 0.5, 1.0), "end_factor": (0.0, 0.3, 1.0),
         "total_steps": (1, 7, 50)},
    ),
    _spec(
        "step", S.step, {"lr": 0.1, "step_size": 7, "gamma": 0.5},
        {"lr": _LR, "step_size": (1, 3, 16), "gamma": (0.1, 0.5, 0.9)},
    ),
    _spec(
        "multistep", S.multistep, {"lr": 0.1, "milestones": (3, 3, 10), "gamma": 0.5},
        {"lr": _LR, "milestones": ((1, 2, 3), (5, 5, 5), (0, 20, 30)), "gamma": (0.1, 0.5, 0.9)},
    ),
    _spec(
        "exponential", S.exponential, {"lr": 0.1, "gamma": 0.9},
        {"lr": _LR, "gamma": (0.5, 0.9, 1.0)},
    ),
    _spec(
        "exponential_decay", S.exponential_decay, {"lr": 0.1, "k": 0.05},
        {"lr": _LR, "k": (0.0, 0.05, 0.5)},
    ),
    *[
        _spec(
            f"inverse_time-staircase={sc}",
            (lambda sc: lambda lr, k, decay_steps: S.inverse_time(
                lr, k=k, decay_steps=decay_steps, staircase=sc))(sc),
            {"lr": 0.1, "k": 0.5, "decay_steps": 4},
            {"lr": _LR, "k": (0.0, 0.5, 2.0), "decay_steps": (1, 4, 9)},
        )
        for sc in (False, True)
    ],
    _spec(
        "polynomial", S.polynomial, {"lr": 0.1, "total_steps": 25, "power": 2.0, "end_lr": 0.001},
        {"lr": _LR, "total_steps": (1, 25, 40), "power": (0.5, 1.0, 3.0),
         "end_lr": (0.0, 0.001, 0.005)},
    ),
    _spec(
        "cosine", S.cosine, {"lr": 0.1, "t_max": 12, "eta_min": 0.01},
        {"lr": _LR, "t_max": (1, 12, 40), "eta_min": (0.0, 0.01, 0.05)},
    ),
    _spec(
        "cosine_restarts", S.cosine_restarts,
        {"lr": 0.1, "t_0": 3, "t_mult": 2, "eta_min": 0.001, "m_mul": 0.8},
        {"lr": _LR, "t_0": (1, 3, 10), "t_mult": (1.0, 2.0, 1.5), "eta_min": (0.0, 0.001, 0.005),
         "m_mul": (0.5, 0.8, 1.0)},
    ),
    *[
        _spec(
            f"cyclic-{mode}",
            (lambda mode: lambda base_lr, max_lr, step_size_up, step_size_down, gamma: S.cyclic(
                base_lr, max_lr, step_size_up, step_size_down, mode, gamma))(mode),
            {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 6,
             "gamma": 0.9},
            {"base_lr": (0.0, 0.01, 0.05), "max_lr": (0.1, 0.2, 1.0), "step_size_up": (1, 4, 10),
             "step_size_down": (1, 6, 13), "gamma": (0.5, 0.9, 1.0)},
        )
        for mode in ("triangular", "triangular2", "exp_range")
    ],
    *[
        _spec(
            f"cyclic_momentum-{mode}",
            (lambda mode: lambda base_momentum, max_momentum, step_size_up, step_size_down, gamma:
             S.cyclic_momentum(base_momentum, max_momentum, step_size_up, step_size_down, mode,
                               gamma))(mode),
            {"base_momentum": 0.8, "max_momentum": 0.9, "step_size_up": 4, "step_size_down": 6,
             "gamma": 0.9},
            {"base_momentum": (0.5, 0.8, 0.85), "max_momentum": (0.9, 0.95, 0.99),
             "step_size_up": (1, 4, 10), "step_size_down": (1, 6, 13), "gamma": (0.5, 0.9, 1.0)},
        )
        for mode in ("triangular", "triangular2", "exp_range")
    ],
    *[
        _spec(
            f"one_cycle-{anneal}-three_phase={tp}",
            (lambda anneal, tp: lambda max_lr, total_steps, pct_start, div_factor,
             final_div_factor: S.one_cycle(
                 max_lr, total_steps, pct_start=pct_start, anneal=anneal, div_factor=div_factor,
                 final_div_factor=final_div_factor, three_phase=tp))(anneal, tp),
            {"max_lr": 0.1, "total_steps": 30, "pct_start": 0.3, "div_factor": 25.0,
             "final_div_factor": 1e4},
            {"max_lr": _LR, "total_steps": (10, 30, 50), "pct_start": (0.15, 0.3, 0.45),
             "div_factor": (2.0, 25.0, 100.0), "final_div_factor": (10.0, 1e3, 1e4)},
        )
        for anneal in ("cos", "linear")
        for tp in (False, True)
    ],
    *[
        _spec(
            f"one_cycle_momentum-{anneal}-three_phase={tp}",
            (lambda anneal, tp: lambda total_steps, pct_start, base_momentum, max_momentum:
             S.one_cycle_momentum(total_steps, pct_start=pct_start, anneal=anneal,
                                  base_momentum=base_momentum, max_momentum=max_momentum,
                                  three_phase=tp))(anneal, tp),
            {"total_steps": 30, "pct_start": 0.3, "base_momentum": 0.85, "max_momentum": 0.95},
            {"total_steps": (10, 30, 50), "pct_start": (0.15, 0.3, 0.45),
             "base_momentum": (0.5, 0.85, 0.9), "max_momentum": (0.9, 0.95, 0.99)},
        )
        for anneal in ("cos", "linear")
        for tp in (False, True)
    ],
    *[
        _spec(
            f"warmup-{mode}",
            (lambda mode: lambda warmup_steps, start_factor: S.warmup(
                S.cosine(0.1, 40), warmup_steps, start_factor, mode))(mode),
            {"warmup_steps": 5, "start_factor": 0.1},
            {"warmup_steps": (0, 5, 20),
             "start_factor": (0.01, 0.1, 1.0) if mode == "exponential" else (0.0, 0.1, 1.0)},
        )
        for mode in ("linear", "constant", "cosine", "exponential")
    ],
    _spec(
        "sequential",
        lambda milestones: S.sequential(
            [S.linear(0.1, 0.1, 1.0, 5), S.cosine(0.1, 20), S.constant(0.01)], milestones),
        {"milestones": (5, 25)},
        {"milestones": ((0, 2), (5, 25), (10, 30))},
    ),
    _spec(
        "chained",
        lambda lr, gamma: S.chained(S.step(lr, 5, 0.5), S.exponential(1.0, gamma)),
        {"lr": 0.1, "gamma": 0.95},
        {"lr": _LR, "gamma": (0.8, 0.95, 1.0)},
    ),
    _spec(
        "epochs", lambda steps_per_epoch: S.epochs(S.step(0.1, 2, 0.5), steps_per_epoch),
        {"steps_per_epoch": 3}, {"steps_per_epoch": (1, 3, 7)},
    ),
    *[
        _spec(
            f"warmup_stable_decay-{decay}",
            (lambda decay: lambda lr, total_steps, warmup_steps, decay_steps, end_lr:
             S.warmup_stable_decay(lr, total_steps, warmup_steps, decay_steps=decay_steps,
                                   decay=decay, end_lr=end_lr))(decay),
            {"lr": 0.1, "total_steps": 40, "warmup_steps": 5, "decay_steps": 10, "end_lr": 0.001},
            {"lr": _LR, "total_steps": (20, 40, 60), "warmup_steps": (0, 5, 10),
             "decay_steps": (1, 10, 10), "end_lr": (0.0, 0.001, 0.005)},
        )
        for decay in ("linear", "cosine", "sqrt")
    ],
    _spec(
        "rsqrt", S.rsqrt, {"lr": 0.1, "warmup_steps": 5, "timescale": 8},
        {"lr": _LR, "warmup_steps": (0, 5, 12), "timescale": (1, 8, 20)},
    ),
]


def _dtype_of(values) -> Any:
  arr = np.asarray(values)
  return jnp.int32 if np.issubdtype(arr.dtype, np.integer) else jnp.float32


def _steps():
  return jnp.arange(STEPS, dtype=jnp.int32)


def _close32(got, want, err_msg=""):
  """float32 closeness: ``rtol=1e-6`` plus ``1e-6`` times the schedule's scale (its largest
  value), since a float32 rate near the bottom of a schedule carries rounding of the top's
  size (e.g. one_cycle's linear anneal ends at ``(end - start) * pct + start``)."""
  want = np.asarray(want)
  scale = float(np.max(np.abs(want))) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=RTOL32, atol=RTOL32 * scale + 1e-12,
                             err_msg=err_msg)


def _finite(x, what):
  x = np.asarray(x)
  assert np.all(np.isfinite(x)), f"{what}: non-finite values {x}"
  return x


# --------------------------------------------------------------------------------------------
# the generic properties


@pytest.mark.parametrize("spec", SPECS)
def test_jit_equals_eager(spec):
  sched = spec.make(**spec.hps)
  eager = _finite(sched(_steps()), spec.id)
  jitted = _finite(jax.jit(sched)(_steps()), spec.id)
  _close32(jitted, eager)
  # The whole construction under jit, hyperparameters closed over as Python numbers.
  _close32(jax.jit(lambda t: spec.make(**spec.hps)(t))(_steps()), eager)
  assert eager.shape == (STEPS,)
  assert np.issubdtype(eager.dtype, np.floating)


@pytest.mark.parametrize("spec", SPECS)
def test_vmap_over_each_hyperparameter_equals_loop(spec):
  for name, values in spec.sweep.items():
    batched = jnp.asarray(values, dtype=_dtype_of(values))

    def f(v, name=name):
      return spec.make(**{**spec.hps, name: v})(_steps())

    got = _finite(jax.vmap(f)(batched), f"{spec.id}/{name}")
    want = np.stack([np.asarray(spec.make(**{**spec.hps, name: v})(_steps())) for v in values])
    assert got.shape == (len(values), STEPS)
    for g, w, v in zip(got, want, values):
      _close32(g, w, err_msg=f"{spec.id}: {name}={v}")


@pytest.mark.parametrize("spec", SPECS)
def test_no_retrace_when_values_change(spec):
  """One trace for 3 different settings of all hyperparameters; each call equals eager."""
  traces = 0

  def f(hp, t):
    nonlocal traces
    traces += 1
    return spec.make(**hp)(t)

  jf = jax.jit(f)
  arrays = {k: jnp.asarray(v, dtype=_dtype_of(v)) for k, v in spec.sweep.items()}
  for i in range(3):
    got = _finite(jf({k: a[i] for k, a in arrays.items()}, _steps()), spec.id)
    want = spec.make(**{k: v[i] for k, v in spec.sweep.items()})(_steps())
    _close32(got, want, err_msg=f"setting {i}")
  assert traces == 1


@pytest.mark.parametrize("spec", SPECS)
def test_scalar_step_equals_array_step(spec):
  sched = spec.make(**spec.hps)
  full = np.asarray(sched(_steps()))
  scale = float(np.max(np.abs(full)))
  for t in (0, 1, 5, 13, STEPS - 1):
    for step in (t, jnp.int32(t), jnp.asarray(t, dtype=jnp.int32)):
      v = sched(step)
      assert jnp.shape(v) == (), f"{spec.id}: step {step!r} gave shape {jnp.shape(v)}"
      np.testing.assert_allclose(v, full[t], rtol=RTOL32, atol=RTOL32 * scale,
                                 err_msg=f"{spec.id} t={t}")
  # A 2-D array of steps keeps its shape.
  grid = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
  _close32(sched(grid), full[:12].reshape(3, 4))


@pytest.mark.parametrize("spec", SPECS)
def test_huge_int32_steps_are_finite_and_in_range(spec):
  sched = spec.make(**spec.hps)
  early = _finite(sched(jnp.arange(200, dtype=jnp.int32)), spec.id)
  big = _finite(sched(jnp.asarray(BIG, dtype=jnp.int32)), f"{spec.id} at {BIG}")
  jbig = _finite(jax.jit(sched)(jnp.asarray(BIG, dtype=jnp.int32)), f"{spec.id} jit at {BIG}")
  _close32(jbig, big)
  # A rate never exceeds what the schedule reaches early on, never goes below 0.
  assert np.all(big >= 0.0), (spec.id, big)
  assert np.all(big <= early.max() * (1 + 1e-6)), (spec.id, big, early.max())


@pytest.mark.parametrize("spec", SPECS)
def test_composes_with_adam_chain(spec):
  sched = spec.make(**spec.hps)
  tx = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(sched))
  adam = optax.scale_by_adam()
  params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
  state, adam_state = tx.init(params), adam.init(params)
  update = jax.jit(tx.update)
  for t in range(6):
    grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)) + 0.1, params)
    updates, state = update(grads, state, params)
    direction, adam_state = adam.update(grads, adam_state, params)
    lr_t = float(sched(t))  # optax's count starts at 0
    for k in params:
      # jit vs eager float32 Adam: rounding of order 1e-7 of an O(1) direction.
      np.testing.assert_allclose(updates[k], -lr_t * direction[k], rtol=1e-5,
                                 atol=1e-5 * abs(lr_t) + 1e-12,
                                 err_msg=f"{spec.id} step {t} leaf {k}")
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("spec", SPECS)
def test_inject_hyperparams_sgd(spec):
  sched = spec.make(**spec.hps)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=sched)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(6):
    grads = jnp.array([0.5, -1.5]) * (t + 1)
    updates, state = update(grads, state, params)
    want_lr = float(sched(t))
    np.testing.assert_allclose(state.hyperparams["learning_rate"], want_lr, rtol=1e-6,
                               atol=1e-12, err_msg=f"{spec.id} step {t}")
    np.testing.assert_allclose(updates, -want_lr * grads, rtol=1e-6, atol=1e-12,
                               err_msg=f"{spec.id} step {t}")
    params = params + updates


@pytest.mark.parametrize(
    "make", [
        lambda: S.cyclic_momentum(0.8, 0.95, 3, 2),
        lambda: S.one_cycle_momentum(8, pct_start=0.3),
        lambda: S.one_cycle_momentum(8, pct_start=0.4, anneal="linear", three_phase=True),
    ])
def test_momentum_schedules_drive_sgd_momentum_under_inject_hyperparams(make):
  """Momentum schedules are used as SGD's (traced) momentum; check against a manual trace."""
  sched = make()
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=sched)
  params = jnp.zeros(2)
  state = tx.init(params)
  trace = np.zeros(2)
  for t in range(12):
    grads = np.array([1.0, -0.5]) * (t + 1)
    updates, state = tx.update(jnp.asarray(grads), state, params)
    trace = grads + float(sched(t)) * trace  # optax.trace: m = g + decay * m
    np.testing.assert_allclose(updates, -0.1 * trace, rtol=1e-5, err_msg=f"step {t}")


def test_linear_scaling_properties():
  """``linear_scaling`` returns a value: jit == eager, vmap == loop, no retrace."""
  for rule, fn in (("linear", lambda r: r), ("sqrt", np.sqrt)):
    for lr, b, base in ((0.1, 1024, 256), (0.3, 64, 256), (1e-3, 512, 32)):
      want = lr * fn(b / base)
      np.testing.assert_allclose(S.linear_scaling(lr, b, base, rule), want, rtol=1e-6)
      np.testing.assert_allclose(jax.jit(lambda a, c, d: S.linear_scaling(a, c, d, rule))(
          lr, b, base), want, rtol=1e-6)
    sweep = {"lr": (0.1, 0.2, 0.4), "batch_size": (32, 256, 4096),
             "base_batch_size": (16, 256, 1024)}
    base_hp = {"lr": 0.1, "batch_size": 1024, "base_batch_size": 256}
    for name, values in sweep.items():
      got = jax.vmap(lambda v: S.linear_scaling(**{**base_hp, name: v}, rule=rule))(
          jnp.asarray(values, dtype=_dtype_of(values)))
      want = [S.linear_scaling(**{**base_hp, name: v}, rule=rule) for v in values]
      np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{rule}/{name}")
    traces = 0

    def f(lr, b, base):
      nonlocal traces
      traces += 1
      return S.linear_scaling(lr, b, base, rule)

    jf = jax.jit(f)
    for i in range(3):
      jf(jnp.float32(sweep["lr"][i]), jnp.int32(sweep["batch_size"][i]),
         jnp.int32(sweep["base_batch_size"][i]))
    assert traces == 1


def test_integer_hyperparameters_may_be_float_arrays():
  """A sweep may hand integer-valued hyperparameters over as float arrays (e.g. 8.0)."""
  t = _steps()
  cases = [
      (lambda v: S.step(0.1, v, 0.5), 7),
      (lambda v: S.cosine(0.1, v, eta_min=0.01), 12),
      (lambda v: S.cosine_restarts(0.1, v, 2), 3),
      (lambda v: S.one_cycle(0.1, v), 30),
      (lambda v: S.polynomial(0.1, v), 25),
      (lambda v: S.epochs(S.step(0.1, 2, 0.5), v), 3),
      (lambda v: S.warmup(S.constant(0.1), v), 8),
      (lambda v: S.multistep(0.1, jnp.asarray([v, 2 * v]), 0.5), 5),
  ]
  for make, v in cases:
    want = np.asarray(make(v)(t))
    _close32(make(jnp.float32(v))(t), want)
    _close32(jax.jit(lambda x: make(x)(t))(jnp.float32(v)), want)


# --------------------------------------------------------------------------------------------
# exact values at int32 steps near 2**31 (Python integers as the reference)


def _at_big(sched):
  return np.asarray(sched(jnp.asarray(BIG, dtype=jnp.int32)), dtype=np.float64)


def test_step_at_huge_steps_uses_exact_integer_division():
  # float32(2**31 - 1) == 2**31, so a float quotient would give 8 instead of 7 here.
  for size in (2**28, 2**20, 3, 1000):
    want = [0.1 * 0.5 ** (t // size) for t in BIG]
    got = _at_big(S.step(0.1, size, 0.5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, err_msg=f"step_size={size}")
  gamma = 0.9999
  want = [0.1 * gamma ** (t // 2**16) for t in BIG]
  np.testing.assert_allclose(_at_big(S.step(0.1, 2**16, gamma)), want, rtol=1e-3)


def test_multistep_at_huge_steps_compares_exactly():
  # 2**31 - 90 and 2**31 - 100 are the same float32; only integer comparison tells them apart.
  milestones = [10, 2**31 - 90]
  want = [0.1 * 0.5 ** sum(m <= t for m in milestones) for t in BIG]
  np.testing.assert_allclose(_at_big(S.multistep(0.1, milestones, 0.5)), want, rtol=1e-6)


def test_inverse_time_staircase_at_huge_steps():
  want = [1.0 / (1 + 1.0 * (t // 2**28)) for t in BIG]
  np.testing.assert_allclose(_at_big(S.inverse_time(1.0, k=1.0, decay_steps=2**28,
                                                    staircase=True)), want,
                             rtol=1e-6)


def test_epochs_at_huge_steps():
  # floor((2**31 - 1) / 2**26) == 31, float32 says 32.
  sched = S.epochs(S.multistep(1.0, [32], 0.5), 2**26)
  want = [0.5 ** ((t // 2**26) >= 32) for t in BIG]
  np.testing.assert_allclose(_at_big(sched), want, rtol=1e-6)


def test_sequential_at_huge_steps():
  sched = S.sequential([S.constant(1.0), S.step(1.0, 2**28, 0.5)], [100])
  want = [0.5 ** ((t - 100) // 2**28) for t in BIG]
  np.testing.assert_allclose(_at_big(sched), want, rtol=1e-6)


def test_cosine_at_huge_steps_keeps_phase():
  lr, eta, t_max = 0.1, 0.01, 1000
  got = _at_big(S.cosine(lr, t_max, eta_min=eta))
  want = [eta + (lr - eta) * (1 + math.cos(math.pi * ((t % (2 * t_max)) / t_max))) / 2
          for t in BIG]
  assert np.all((got >= eta * (1 - 1e-6)) & (got <= lr * (1 + 1e-6))), got
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * lr)


def test_cosine_restarts_at_huge_steps():
  for t_0, t_mult in ((7, 1), (1, 2), (5, 3)):
    got = _at_big(S.cosine_restarts(0.1, t_0, t_mult, eta_min=0.001))
    want = [_restarts_python(t, 0.1, t_0, t_mult, 0.001, 1.0) for t in BIG]
    assert np.all((got >= 0.001 * (1 - 1e-6)) & (got <= 0.1 * (1 + 1e-6))), got
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * 0.1, err_msg=f"{t_0}, {t_mult}")


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_at_huge_steps(mode):
  base, top, up, down, gamma = 0.01, 0.1, 700, 300, 0.999
  got = _at_big(S.cyclic(base, top, up, down, mode, gamma))
  assert np.all((got >= base * (1 - 1e-6)) & (got <= top * (1 + 1e-6))), got
  want = []
  for t in BIG:
    cycle, x = 1 + t // (up + down), t % (up + down)
    frac = x / up if x <= up else (up + down - x) / down
    scale = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1),
             "exp_range": gamma**t}[mode]
    want.append(base + (top - base) * frac * scale)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * top)


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_one_cycle_at_huge_steps_is_min_lr(anneal, three_phase):
  got = _at_big(S.one_cycle(0.5, 1000, pct_start=0.3, anneal=anneal, div_factor=20.0,
                             final_div_factor=100.0, three_phase=three_phase))
  np.testing.assert_allclose(got, 0.5 / 20.0 / 100.0, rtol=1e-5)


def test_decays_at_huge_steps():
  np.testing.assert_allclose(_at_big(S.polynomial(0.1, 1000, 2.0, end_lr=0.003)), 0.003, rtol=1e-6)
  np.testing.assert_allclose(_at_big(S.linear(0.1, 0.5, 0.2, 100)), 0.02, rtol=1e-6)
  np.testing.assert_allclose(_at_big(S.constant_factor(0.1, 0.5, 100)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(_at_big(S.warmup_stable_decay(
      0.1, 1000, 10, decay_steps=100, decay="sqrt", end_lr=0.002)),
                             0.002, rtol=1e-6)
  np.testing.assert_allclose(_at_big(S.inverse_time(0.1, k=0.5)),
                             [0.1 / (1 + 0.5 * t) for t in BIG], rtol=1e-5)
  np.testing.assert_allclose(_at_big(S.rsqrt(0.1, 100)),
                             [0.1 * math.sqrt(100 / t) for t in BIG], rtol=1e-5)
  np.testing.assert_allclose(_at_big(S.warmup(S.constant(0.1), 1000)), 0.1, rtol=1e-6)
  assert np.all(_at_big(S.exponential(0.1, 0.99)) == 0.0)  # underflows to 0, not NaN
  np.testing.assert_allclose(_at_big(S.exponential(0.1, 1.0)), 0.1, rtol=1e-6)
  assert np.all(_at_big(S.exponential_decay(0.1, k=0.01)) == 0.0)


# --------------------------------------------------------------------------------------------
# NumPy / pure-Python references for schedules PyTorch does not have


def _restarts_python(t, lr, t_0, t_mult, eta_min, m_mul):
  """SGDR by simulation: walk through the cycles (PyTorch's own ``step`` logic, float t_mult)."""
  t_cur, t_i, i = float(t), float(t_0), 0
  if t_mult == 1:  # shortcut for huge t
    i, t_cur = divmod(t, t_0)
  else:
    while t_cur >= t_i:
      t_cur -= t_i
      t_i *= t_mult
      i += 1
  return eta_min + (lr - eta_min) * m_mul**i * (1 + math.cos(math.pi * t_cur / t_i)) / 2


@pytest.mark.parametrize("t_mult", [1.5, 1.25, 2.5, 1.0, 3.0])
def test_cosine_restarts_float_t_mult_vs_simulation(x64, t_mult):
  """``t_mult`` may be a float and traced: values equal a step-by-step simulation."""
  t = jnp.arange(400, dtype=jnp.int32)
  for t_0, eta, m_mul in ((4, 0.0, 1.0), (3, 0.01, 0.7), (10, 0.02, 0.9), (1, 0.0, 0.5)):
    want = [_restarts_python(int(s), 0.1, t_0, t_mult, eta, m_mul) for s in range(400)]
    got = S.cosine_restarts(0.1, t_0, t_mult, eta_min=eta, m_mul=m_mul)(t)
    msg = f"t_0={t_0} t_mult={t_mult} eta_min={eta} m_mul={m_mul}"
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=msg)
    traced = jax.jit(lambda a, b, c, d: S.cosine_restarts(0.1, a, b, eta_min=c, m_mul=d)(t))(
        jnp.float64(t_0), jnp.float64(t_mult), jnp.float64(eta), jnp.float64(m_mul))
    np.testing.assert_allclose(traced, want, rtol=1e-9, atol=1e-12, err_msg="traced " + msg)
  # vmap over t_mult, float32
  ts = jnp.asarray([1.0, 1.5, 2.0, 2.5], dtype=jnp.float32)
  got = jax.vmap(lambda m: S.cosine_restarts(0.1, 4, m)(t))(ts)
  want = [[_restarts_python(int(s), 0.1, 4, float(m), 0.0, 1.0) for s in range(400)] for m in ts]
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_exponential_decay_reference(x64):
  t = np.arange(300)
  for lr, k in ((0.1, 0.01), (1.0, 0.3), (0.5, 0.0)):
    np.testing.assert_allclose(S.exponential_decay(lr, k=k)(jnp.asarray(t)), lr * np.exp(-k * t),
                               rtol=1e-12)


@pytest.mark.parametrize("mode", ["linear", "constant", "cosine", "exponential"])
def test_warmup_modes_reference(x64, mode):
  t = np.arange(120)
  inner = lambda s: 0.1 * 0.99**s  # the wrapped schedule keeps counting from step 0
  for w, f in ((10, 0.1), (1, 0.5), (37, 0.01), (25, 1.0)):
    r = np.minimum(t / w, 1.0)
    factor = {
        "linear": f + (1 - f) * r,
        "constant": np.where(t < w, f, 1.0),
        "cosine": f + (1 - f) * (1 - np.cos(np.pi * r)) / 2,
        "exponential": f ** (1 - r),
    }[mode]
    got = S.warmup(S.exponential(0.1, 0.99), w, f, mode)(jnp.asarray(t))
    np.testing.assert_allclose(got, inner(t) * factor, rtol=1e-12, err_msg=f"W={w} f={f}")
    # warmup_steps=0 means no warmup at all
  np.testing.assert_allclose(S.warmup(S.exponential(0.1, 0.99), 0, 0.5, mode)(jnp.asarray(t)),
                             inner(t), rtol=1e-12)


@pytest.mark.parametrize("decay", ["linear", "cosine", "sqrt"])
def test_warmup_stable_decay_reference(x64, decay):
  """Trapezoid (Hu et al. 2024; Hägele et al. 2024): warmup 0 -> lr, plateau, cooldown."""
  shape = {"linear": lambda p: 1 - p, "cosine": lambda p: (1 + np.cos(np.pi * p)) / 2,
           "sqrt": lambda p: 1 - np.sqrt(p)}[decay]
  t = np.arange(130, dtype=np.float64)
  for lr, total, w, d, end in ((0.1, 100, 10, 20, 0.0), (1.0, 50, 0, 7, 0.01),
                               (0.3, 100, 5, None, 0.001), (0.3, 60, 0, 60, 0.0),
                               (0.2, 40, 13, 27, 0.0)):
    dd = 0.2 * total if d is None else d
    p = np.clip((t - (total - dd)) / dd, 0.0, 1.0)
    want = np.where(t < w, lr * t / max(w, 1), np.where(t < total - dd, lr,
                                                       end + (lr - end) * shape(p)))
    got = S.warmup_stable_decay(lr, total, w, decay_steps=d, decay=decay, end_lr=end)(
        jnp.asarray(t, dtype=jnp.int32))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15,
                               err_msg=f"lr={lr} T={total} W={w} D={d} end={end}")


def test_rsqrt_reference(x64):
  t = np.arange(300, dtype=np.float64)
  # fairseq inverse_sqrt (warmup_init_lr=0): t * lr / W below W, then lr * sqrt(W) / sqrt(t).
  for lr, w in ((0.1, 10), (5e-4, 4000 // 40), (1.0, 1)):
    want = np.where(t < w, t * lr / w, lr * np.sqrt(w) / np.sqrt(np.maximum(t, 1)))
    np.testing.assert_allclose(S.rsqrt(lr, w)(jnp.asarray(t, dtype=jnp.int32)), want,
                               rtol=1e-12, err_msg=f"lr={lr} W={w}")
    np.testing.assert_allclose(S.rsqrt(lr, w, w)(jnp.asarray(t, dtype=jnp.int32)), want,
                               rtol=1e-12, err_msg=f"lr={lr} W={w} tau=W")


def test_rsqrt_timescale_reference(x64):
  """After the warmup, ``lr * sqrt(tau / (tau + t - W))`` (big_vision's "rsqrt" decay:
  continuous at ``W`` for every ``tau``; fairseq's ``lr * sqrt(W / t)`` when ``tau == W``)."""
  t = np.arange(300, dtype=np.float64)
  for lr, w, tau in ((0.1, 0, 50), (0.1, 10, 10), (0.1, 10, 40), (0.1, 20, 5)):
    want = np.where(t < w, t * lr / max(w, 1), lr * np.sqrt(tau / (tau + np.maximum(t - w, 0))))
    np.testing.assert_allclose(S.rsqrt(lr, w, tau)(jnp.asarray(t, dtype=jnp.int32)), want,
                               rtol=1e-12, err_msg=f"lr={lr} W={w} tau={tau}")


def test_linear_scaling_reference(x64):
  for lr, b, base in ((0.1, 1024, 256), (0.1, 64, 256), (3e-4, 8192, 512)):
    np.testing.assert_allclose(S.linear_scaling(lr, b, base), lr * b / base, rtol=1e-12)
    np.testing.assert_allclose(S.linear_scaling(lr, b, base, "sqrt"), lr * math.sqrt(b / base),
                               rtol=1e-12)
  np.testing.assert_allclose(S.linear_scaling(0.1, 512), 0.2, rtol=1e-12)  # base 256 default


def test_traced_milestones_for_sequential_and_multistep():
  t = np.arange(STEPS)
  parts = [S.constant(1.0), S.exponential(0.5, 0.9), S.constant(0.01)]
  for ms in ((3, 10), (0, 1), (20, 63)):
    want = np.where(t < ms[0], 1.0, np.where(t < ms[1], 0.5 * 0.9 ** (t - ms[0]), 0.01))
    got = jax.jit(lambda m: S.sequential(parts, m)(_steps()))(jnp.asarray(ms, dtype=jnp.int32))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = jax.jit(lambda m: S.multistep(1.0, m, 0.5)(_steps()))(jnp.asarray(ms, dtype=jnp.int32))
    np.testing.assert_allclose(
        got, 0.5 ** ((t >= ms[0]).astype(int) + (t >= ms[1]).astype(int)), rtol=1e-6)
