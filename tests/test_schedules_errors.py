"""Bad arguments to ``optaxlr.schedules`` raise ``ValueError`` naming function and argument.

Expected message format (house style): ``"<function>: <argument> must be <allowed>, got
<argument>=<value>"``. Concrete values are checked when the schedule is built; traced values
cannot be, and must not raise (the sweep engine validates a grid on the host).
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxlr import schedules as S

C = S.constant(0.1)  # an inner schedule for the combinators


def _case(fn: str, arg: str, value, call):
  """``call`` must raise ``ValueError("fn: arg must be ..., got arg=<value>")``."""
  return pytest.param(fn, arg, value, call, id=f"{fn}-{arg}={value!r}")


CASES = [
    # negative learning rates
    _case("constant", "lr", -0.1, lambda: S.constant(-0.1)),
    _case("constant_factor", "lr", -1.0, lambda: S.constant_factor(-1.0)),
    _case("linear", "lr", -1.0, lambda: S.linear(-1.0)),
    _case("step", "lr", -0.1, lambda: S.step(-0.1, 10)),
    _case("multistep", "lr", -0.1, lambda: S.multistep(-0.1, [3])),
    _case("exponential", "lr", -0.1, lambda: S.exponential(-0.1, 0.9)),
    _case("exponential_decay", "lr", -0.1, lambda: S.exponential_decay(-0.1, k=0.1)),
    _case("inverse_time", "lr", -0.1, lambda: S.inverse_time(-0.1, k=0.5)),
    _case("polynomial", "lr", -0.1, lambda: S.polynomial(-0.1, 10)),
    _case("cosine", "lr", -0.1, lambda: S.cosine(-0.1, 10)),
    _case("cosine_restarts", "lr", -0.1, lambda: S.cosine_restarts(-0.1, 10)),
    _case("cyclic", "base_lr", -0.1, lambda: S.cyclic(-0.1, 0.1)),
    _case("one_cycle", "max_lr", -0.1, lambda: S.one_cycle(-0.1, 100)),
    _case("linear_scaling", "lr", -0.1, lambda: S.linear_scaling(-0.1, 512)),
    _case("warmup_stable_decay", "lr", -0.1, lambda: S.warmup_stable_decay(-0.1, 100)),
    _case("rsqrt", "lr", -0.1, lambda: S.rsqrt(-0.1, 10)),
    _case("cosine", "eta_min", -0.01, lambda: S.cosine(0.1, 10, eta_min=-0.01)),
    _case("cosine_restarts", "eta_min", -0.01,
          lambda: S.cosine_restarts(0.1, 10, 1, eta_min=-0.01)),
    _case("polynomial", "end_lr", -0.01, lambda: S.polynomial(0.1, 10, 1.0, end_lr=-0.01)),
    _case("warmup_stable_decay", "end_lr", -0.01,
          lambda: S.warmup_stable_decay(0.1, 100, end_lr=-0.01)),
    # NaN is never a valid hyperparameter
    _case("step", "gamma", float("nan"), lambda: S.step(0.1, 10, float("nan"))),
    # step sizes, cycle lengths, totals
    _case("step", "step_size", 0, lambda: S.step(0.1, 0)),
    _case("step", "step_size", -3, lambda: S.step(0.1, -3)),
    _case("cosine", "t_max", 0, lambda: S.cosine(0.1, 0)),
    _case("cosine_restarts", "t_0", 0, lambda: S.cosine_restarts(0.1, 0)),
    _case("cosine_restarts", "t_mult", 0.5, lambda: S.cosine_restarts(0.1, 10, 0.5)),
    _case("cosine_restarts", "t_mult", 0, lambda: S.cosine_restarts(0.1, 10, 0)),
    _case("cosine_restarts", "m_mul", -0.5, lambda: S.cosine_restarts(0.1, 10, 1, m_mul=-0.5)),
    _case("cyclic", "step_size_up", 0, lambda: S.cyclic(0.01, 0.1, 0)),
    _case("cyclic", "step_size_down", 0, lambda: S.cyclic(0.01, 0.1, 10, 0)),
    _case("cyclic_momentum", "step_size_up", 0, lambda: S.cyclic_momentum(0.8, 0.9, 0)),
    _case("linear", "total_steps", 0, lambda: S.linear(0.1, 0.5, 1.0, 0)),
    _case("polynomial", "total_steps", 0, lambda: S.polynomial(0.1, 0)),
    _case("one_cycle", "total_steps", 0, lambda: S.one_cycle(0.1, 0)),
    _case("one_cycle_momentum", "total_steps", 0, lambda: S.one_cycle_momentum(0)),
    _case("warmup_stable_decay", "total_steps", 0, lambda: S.warmup_stable_decay(0.1, 0)),
    _case("constant_factor", "total_steps", -1, lambda: S.constant_factor(0.1, 0.5, -1)),
    _case("inverse_time", "decay_steps", 0, lambda: S.inverse_time(0.1, k=0.5, decay_steps=0)),
    _case("epochs", "steps_per_epoch", 0, lambda: S.epochs(C, 0)),
    _case("linear_scaling", "batch_size", 0, lambda: S.linear_scaling(0.1, 0)),
    _case("linear_scaling", "base_batch_size", 0, lambda: S.linear_scaling(0.1, 512, 0)),
    # decay factors
    _case("step", "gamma", 0.0, lambda: S.step(0.1, 10, 0.0)),
    _case("step", "gamma", -0.5, lambda: S.step(0.1, 10, -0.5)),
    _case("multistep", "gamma", 0.0, lambda: S.multistep(0.1, [3], 0.0)),
    _case("exponential", "gamma", 0.0, lambda: S.exponential(0.1, 0.0)),
    _case("exponential", "gamma", -0.9, lambda: S.exponential(0.1, -0.9)),
    _case("cyclic", "gamma", 0.0, lambda: S.cyclic(0.01, 0.1, mode="exp_range", gamma=0.0)),
    _case("cyclic_momentum", "gamma", -1.0,
          lambda: S.cyclic_momentum(mode="exp_range", gamma=-1.0)),
    # factors in (0, 1]
    _case("constant_factor", "factor", 0.0, lambda: S.constant_factor(0.1, 0.0)),
    _case("constant_factor", "factor", 1.5, lambda: S.constant_factor(0.1, 1.5)),
    _case("constant_factor", "factor", -0.2, lambda: S.constant_factor(0.1, -0.2)),
    _case("linear", "start_factor", -0.5, lambda: S.linear(0.1, -0.5)),
    _case("linear", "end_factor", -0.1, lambda: S.linear(0.1, 0.5, -0.1)),
    # one_cycle
    _case("one_cycle", "pct_start", 0.0, lambda: S.one_cycle(0.1, 100, pct_start=0.0)),
    _case("one_cycle", "pct_start", 1.0, lambda: S.one_cycle(0.1, 100, pct_start=1.0)),
    _case("one_cycle", "pct_start", 1.5, lambda: S.one_cycle(0.1, 100, pct_start=1.5)),
    _case("one_cycle", "pct_start", -0.1, lambda: S.one_cycle(0.1, 100, pct_start=-0.1)),
    _case("one_cycle_momentum", "pct_start", 1.5, lambda: S.one_cycle_momentum(100, pct_start=1.5)),
    _case("one_cycle", "div_factor", 0.0, lambda: S.one_cycle(0.1, 100, div_factor=0.0)),
    _case("one_cycle", "div_factor", -2.0, lambda: S.one_cycle(0.1, 100, div_factor=-2.0)),
    _case("one_cycle", "final_div_factor", 0.0,
          lambda: S.one_cycle(0.1, 100, final_div_factor=0.0)),
    # warmup
    _case("warmup", "warmup_steps", -1, lambda: S.warmup(C, -1)),
    _case("warmup", "start_factor", -0.1, lambda: S.warmup(C, 10, -0.1)),
    _case("warmup", "start_factor", 1.5, lambda: S.warmup(C, 10, 1.5)),
    _case("warmup", "start_factor", 1.5, lambda: S.warmup(C, 10, 1.5, "cosine")),
    _case("warmup", "start_factor", 0.0, lambda: S.warmup(C, 10, 0.0, "exponential")),
    _case("warmup_stable_decay", "warmup_steps", -1,
          lambda: S.warmup_stable_decay(0.1, 100, warmup_steps=-1)),
    _case("warmup_stable_decay", "decay_steps", -1,
          lambda: S.warmup_stable_decay(0.1, 100, decay_steps=-1)),
    _case("rsqrt", "warmup_steps", -1, lambda: S.rsqrt(0.1, -1)),
    _case("rsqrt", "timescale", 0, lambda: S.rsqrt(0.1, 10, 0)),
    _case("rsqrt", "timescale", -5.0, lambda: S.rsqrt(0.1, 10, -5.0)),
    # milestones
    _case("multistep", "milestones", [5, 3], lambda: S.multistep(0.1, [5, 3])),
    _case("multistep", "milestones", [2, 9, 4], lambda: S.multistep(0.1, [2, 9, 4])),
    _case("sequential", "milestones", [5, 5], lambda: S.sequential([C, C, C], [5, 5])),
    _case("sequential", "milestones", [9, 4], lambda: S.sequential([C, C, C], [9, 4])),
]


@pytest.mark.parametrize("fn,arg,value,call", CASES)
def test_bad_argument_raises_named_value_error(fn, arg, value, call):
  with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be ") as info:
    call()
  msg = str(info.value)
  # the value given is echoed back, after "got arg="
  got = re.search(rf", got {arg}=(.+)$", msg)
  assert got, f"message does not end with ', got {arg}=<value>': {msg!r}"
  if isinstance(value, list):
    assert got.group(1) == repr(value), msg
  elif value != value:  # NaN
    assert "nan" in got.group(1).lower(), msg
  else:
    assert float(got.group(1)) == value, msg


@pytest.mark.parametrize(
    "fn,call",
    [
        ("cyclic", lambda: S.cyclic(0.1, 0.01)),
        ("cyclic_momentum", lambda: S.cyclic_momentum(0.95, 0.85)),
        ("one_cycle_momentum", lambda: S.one_cycle_momentum(100, base_momentum=0.95,
                                                            max_momentum=0.85)),
        ("warmup_stable_decay", lambda: S.warmup_stable_decay(0.1, 100, 60, decay_steps=50)),
        ("rsqrt", lambda: S.rsqrt(0.1, 0)),  # no warmup and no timescale: tau would be 0
    ],
    ids=["cyclic-base>max", "cyclic_momentum-base>max", "one_cycle_momentum-base>max",
         "wsd-warmup+decay>total", "rsqrt-no-timescale"],
)
def test_inconsistent_arguments_raise(fn, call):
  """Checks across arguments: the message names the function and the arguments involved."""
  with pytest.raises(ValueError, match=rf"^{fn}: \w+( [+-] \w+)* must be .*, got \w+="):
    call()


@pytest.mark.parametrize(
    "fn,arg,call",
    [
        ("cyclic", "mode", lambda: S.cyclic(0.01, 0.1, mode="triangle")),
        ("cyclic_momentum", "mode", lambda: S.cyclic_momentum(mode="exp")),
        ("one_cycle", "anneal", lambda: S.one_cycle(0.1, 100, anneal="cosine")),
        ("one_cycle_momentum", "anneal", lambda: S.one_cycle_momentum(100, anneal="lin")),
        ("warmup", "mode", lambda: S.warmup(C, 10, mode="quadratic")),
        ("linear_scaling", "rule", lambda: S.linear_scaling(0.1, 512, rule="log")),
        ("warmup_stable_decay", "decay", lambda: S.warmup_stable_decay(0.1, 100, decay="exp")),
    ],
)
def test_unknown_choice_raises(fn, arg, call):
  with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be one of .*, got {arg}='"):
    call()


def test_sequential_needs_one_milestone_fewer_than_schedules():
  for schedules, milestones in (([C, C], []), ([C, C], [1, 2]), ([C, C, C], [4])):
    with pytest.raises(ValueError, match=r"^sequential: milestones"):
      S.sequential(schedules, milestones)


def test_array_hyperparameters_are_checked_elementwise():
  """A concrete array (a grid) is validated as a whole: one bad entry is enough."""
  with pytest.raises(ValueError, match=r"^step: step_size must be "):
    S.step(0.1, jnp.array([4, 0, 2]))
  with pytest.raises(ValueError, match=r"^cosine: lr must be "):
    S.cosine(np.array([0.1, -0.1]), 10)


@pytest.mark.parametrize(
    "call",
    [
        # edges that are allowed
        lambda: S.constant_factor(0.1, 1.0),
        lambda: S.constant(0.0),
        lambda: S.multistep(0.1, [3, 3, 5]),  # repeated milestones compound (PyTorch)
        lambda: S.multistep(0.1, []),
        lambda: S.step(0.1, 1, 1.0),
        lambda: S.exponential(0.1, 1.0),
        lambda: S.cosine_restarts(0.1, 1, 1),
        lambda: S.cosine_restarts(0.1, 3, 1.5),  # float t_mult is an extension
        lambda: S.cyclic(0.1, 0.1),  # base_lr == max_lr
        lambda: S.linear(0.1, 1.0, 0.0, 1),
        lambda: S.one_cycle(0.1, 1, pct_start=0.5),
        lambda: S.warmup(C, 0),  # no warmup
        lambda: S.warmup(C, 10, 0.0),
        lambda: S.warmup(C, 10, 1.0, "exponential"),
        lambda: S.sequential([C], []),
        lambda: S.sequential([C, C], [0]),
        lambda: S.warmup_stable_decay(0.1, 100, 80, decay_steps=20),  # warmup + decay == total
        lambda: S.rsqrt(0.1, 0, 100),
        lambda: S.inverse_time(0.1, k=0.0),
    ],
)
def test_boundary_values_are_accepted(call):
  sched = call()
  v = sched(jnp.arange(5)) if callable(sched) else sched
  assert np.all(np.isfinite(np.asarray(v)))


def test_traced_values_are_not_checked():
  """Under jit a hyperparameter is a tracer: construction must not raise (nor concretize)."""
  t = jnp.arange(4)
  jax.jit(lambda s: S.step(0.1, s)(t))(0)
  jax.jit(lambda g: S.exponential(0.1, g)(t))(-1.0)
  jax.jit(lambda p: S.one_cycle(0.1, 10, pct_start=p)(t))(1.5)
  jax.jit(lambda m: S.sequential([C, C, C], m)(t))(jnp.array([5, 3]))
  jax.vmap(lambda lr: S.cosine(lr, 10)(t))(jnp.array([-0.1, 0.1]))


# --------------------------------------------------------------------------------------------
# bool, inf and NumPy scalars, for every numeric hyperparameter of every public schedule

# (name, factory, valid keyword arguments): every numeric argument is listed.
FACTORIES = [
    ("constant", S.constant, dict(lr=0.1)),
    ("constant_factor", S.constant_factor, dict(lr=0.1, factor=0.5, total_steps=5)),
    ("linear", S.linear, dict(lr=0.1, start_factor=0.5, end_factor=1.0, total_steps=5)),
    ("step", S.step, dict(lr=0.1, step_size=3, gamma=0.5)),
    ("multistep", S.multistep, dict(lr=0.1, milestones=[2, 5], gamma=0.5)),
    ("exponential", S.exponential, dict(lr=0.1, gamma=0.9)),
    ("exponential_decay", S.exponential_decay, dict(lr=0.1, k=0.1)),
    ("inverse_time", S.inverse_time, dict(lr=0.1, k=0.5, decay_steps=2)),
    ("polynomial", S.polynomial, dict(lr=0.1, total_steps=10, power=0.5, end_lr=0.01)),
    ("cosine", S.cosine, dict(lr=0.1, t_max=10, eta_min=0.01)),
    ("cosine_restarts", S.cosine_restarts,
     dict(lr=0.1, t_0=5, t_mult=2, eta_min=0.01, m_mul=0.9)),
    ("cyclic", lambda **kw: S.cyclic(mode="exp_range", **kw),
     dict(base_lr=0.01, max_lr=0.1, step_size_up=4, step_size_down=3, gamma=0.99)),
    ("cyclic_momentum", lambda **kw: S.cyclic_momentum(mode="exp_range", **kw),
     dict(base_momentum=0.8, max_momentum=0.9, step_size_up=4, step_size_down=3, gamma=0.99)),
    ("one_cycle", S.one_cycle,
     dict(max_lr=0.1, total_steps=20, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)),
    ("one_cycle_momentum", S.one_cycle_momentum,
     dict(total_steps=20, pct_start=0.3, base_momentum=0.85, max_momentum=0.95)),
    ("warmup", lambda **kw: S.warmup(C, **kw), dict(warmup_steps=5, start_factor=0.1)),
    ("sequential", lambda **kw: S.sequential([C, C], **kw), dict(milestones=[5])),
    ("epochs", lambda **kw: S.epochs(C, **kw), dict(steps_per_epoch=3)),
    ("warmup_stable_decay", S.warmup_stable_decay,
     dict(lr=0.1, total_steps=20, warmup_steps=2, decay_steps=5, end_lr=0.01)),
    ("rsqrt", S.rsqrt, dict(lr=0.1, warmup_steps=5, timescale=8)),
    ("linear_scaling", S.linear_scaling, dict(lr=0.1, batch_size=512, base_batch_size=256)),
]

_ARGS = [pytest.param(fn, make, kw, arg, id=f"{fn}-{arg}")
         for fn, make, kw in FACTORIES for arg in kw]


def _replace(value, new):
  """``new`` in place of ``value`` (of each entry of a list)."""
  return [new] * len(value) if isinstance(value, list) else new


@pytest.mark.parametrize("fn,make,kw,arg", _ARGS)
def test_bool_is_refused_as_a_number(fn, make, kw, arg):
  msg = rf"^{fn}: {arg} must be a number .*, not a bool, got {arg}="
  with pytest.raises(ValueError, match=msg):
    make(**{**kw, arg: _replace(kw[arg], True)})
  with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be a number .*, not a bool"):
    make(**{**kw, arg: jnp.asarray(_replace(kw[arg], False))})


@pytest.mark.parametrize("fn,make,kw,arg", _ARGS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_is_refused(fn, make, kw, arg, bad):
  msg = rf"^{fn}: {arg} must be .*, got {arg}=\[?-?(inf|nan)"
  with pytest.raises(ValueError, match=msg):
    make(**{**kw, arg: _replace(kw[arg], bad)})
  with pytest.raises(ValueError, match=msg):
    make(**{**kw, arg: np.asarray(_replace(kw[arg], bad), np.float32)})


@pytest.mark.parametrize("fn,make,kw", [pytest.param(*f, id=f[0]) for f in FACTORIES])
def test_numpy_scalars_are_accepted(fn, make, kw):
  """``np.float32(0.1)``, ``np.int64(5)`` (and arrays of them) give the Python numbers' values."""
  def numpy(v):
    if isinstance(v, list):
      return np.asarray(v, np.int64)
    return np.int64(v) if isinstance(v, int) else np.float32(v)

  want = make(**kw)
  got = make(**{k: numpy(v) for k, v in kw.items()})
  t = jnp.arange(30, dtype=jnp.int32)
  if callable(want):
    want, got = want(t), got(t)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, err_msg=fn)


def test_traced_bool_is_refused():
  """A traced value cannot be checked, but its dtype can: a bool array is never a rate."""
  with pytest.raises(ValueError, match=r"^cosine: lr must be a number .*not a bool"):
    jax.jit(lambda b: S.cosine(b, 10)(jnp.arange(3)))(True)


# --------------------------------------------------------------------------------------------
# keyword-only arguments where a positional call would mean something else in optax/PyTorch/Keras


@pytest.mark.parametrize(
    "factory,keyword_only",
    [
        (S.exponential_decay, ["k"]),
        (S.inverse_time, ["k", "decay_steps", "staircase"]),
        (S.polynomial, ["end_lr"]),
        (S.cosine, ["eta_min"]),
        (S.cosine_restarts, ["eta_min", "m_mul"]),
        (S.one_cycle, ["pct_start", "anneal", "div_factor", "final_div_factor", "three_phase"]),
        (S.one_cycle_momentum,
         ["pct_start", "anneal", "base_momentum", "max_momentum", "three_phase"]),
        (S.warmup_stable_decay, ["decay_steps", "decay", "end_lr"]),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_keyword_only_arguments(factory, keyword_only):
  params = inspect.signature(factory).parameters
  assert [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] == keyword_only


@pytest.mark.parametrize(
    "call",
    [
        lambda: S.exponential_decay(0.1, 1000, 0.5),  # optax: (init, transition_steps, rate)
        lambda: S.exponential_decay(0.1, 1000),
        lambda: S.inverse_time(0.1, 1000, 0.5),  # Keras: (lr, decay_steps, decay_rate)
        lambda: S.cosine(0.1, 1000, 0.1),  # optax: alpha, a fraction; ours eta_min, a rate
        lambda: S.cosine_restarts(0.1, 100, 2, 0.9),  # Keras' 4th is m_mul
        lambda: S.polynomial(0.1, 100, 1.0, 0.01),
        lambda: S.one_cycle(0.1, 1000, 10),  # PyTorch's 3rd is epochs
        lambda: S.one_cycle_momentum(1000, 0.3),
        lambda: S.warmup_stable_decay(0.1, 1000, 10, 100),
    ],
)
def test_positional_calls_that_would_be_misread_raise(call):
  with pytest.raises(TypeError, match="positional argument"):
    call()
