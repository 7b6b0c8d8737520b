"""Parity of ``optaxlr.schedules`` with independent references.

* PyTorch's ``torch.optim.lr_scheduler``, driven the normal way: an SGD optimizer with momentum
  on one parameter, ``optimizer.step()`` then ``scheduler.step()``, reading
  ``optimizer.param_groups[0]["lr"]`` (and ``"momentum"``) BEFORE each step, so the value read
  at PyTorch's ``last_epoch == t`` is compared with ours at step ``t``. Many seeded random
  settings per scheduler.
* Keras formulas (``InverseTimeDecay``, ``CosineDecayRestarts``) restated in NumPy.
* optax's own schedules where optax has the same one.

Ours is evaluated vectorised (one call on ``jnp.arange(T)``) in float64. Tolerance: ``rtol=1e-10``
plus an absolute floor of ``1e-12`` times the schedule's scale, except where noted: PyTorch's
schedulers are mostly *recursive* (each rate is the previous one times a ratio), so PyTorch
carries a little rounding that grows with the step; measured worst case over 200 random
``CosineAnnealingLR`` settings and 400 steps was ``3.4e-13 * lr``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxlr import schedules as S

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

pytestmark = pytest.mark.torch

N_SETTINGS = 40  # random settings per scheduler
RTOL = 1e-10
ATOL = 1e-12  # times the schedule's scale (its largest rate)


# --------------------------------------------------------------------------------------------
# helpers


def _torch_run(
    make: Callable[[torch.optim.Optimizer], object],
    steps: int,
    lr: float = 1.0,
    *,
    momentum: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Values of a PyTorch scheduler at last_epoch 0..steps-1, read before each step."""
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  opt = torch.optim.SGD([param], lr=lr, momentum=0.9)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # e.g. PyTorch's own deprecation notes
    sched = make(opt)
    lrs, moms = [], []
    for t in range(steps):
      lrs.append(opt.param_groups[0]["lr"])
      moms.append(opt.param_groups[0]["momentum"])
      if t + 1 < steps:  # OneCycleLR raises when stepped past total_steps
        param.grad = torch.ones_like(param)
        opt.step()
        sched.step()
  lrs = np.asarray(lrs, dtype=np.float64)
  if momentum:
    return lrs, np.asarray(moms, dtype=np.float64)
  return lrs


MAX_STEPS = 400
# One shape for every call: eager JAX compiles each primitive once per shape, so evaluating on
# a fixed-length step array and slicing keeps this file fast.
_T = np.arange(MAX_STEPS)


def _ours(schedule, steps: int) -> np.ndarray:
  """Our schedule on steps 0..steps-1, one vectorised call on int32 steps (as optax counts)."""
  assert steps <= MAX_STEPS
  out = np.asarray(schedule(jnp.arange(MAX_STEPS, dtype=jnp.int32)))
  assert out.shape == (MAX_STEPS,)
  assert out.dtype == np.float64, "x64 run should give float64 rates"
  return out[:steps]


def _close(got, want, scale, settings, rtol=RTOL, atol=ATOL):
  got = np.asarray(got)
  want = np.asarray(want)
  assert np.all(np.isfinite(got)), f"non-finite values for {settings}"
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=str(settings))


def _loguniform(rng, lo, hi):
  return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))


# --------------------------------------------------------------------------------------------
# one PyTorch scheduler each


def test_constant_factor_vs_constantlr(x64):
  rng = np.random.default_rng(1)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    factor = float(rng.uniform(0.01, 1.0))
    # total_iters >= 1: with total_iters=0 PyTorch's recursive form never restores the rate
    # (its closed form does), so 0 is not a consistent PyTorch reference.
    total = int(rng.integers(1, 60))
    steps = int(rng.integers(total + 1, 120))
    want = _torch_run(lambda o: lr_scheduler.ConstantLR(o, factor, total), steps, lr)
    got = _ours(S.constant_factor(lr, factor, total), steps)
    _close(got, want, lr, dict(lr=lr, factor=factor, total_steps=total))


def test_linear_vs_linearlr(x64):
  rng = np.random.default_rng(2)
  for i in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    start = float(rng.uniform(0.01, 1.0))
    end = 0.0 if i % 5 == 0 else float(rng.uniform(0.0, 1.0))
    total = int(rng.integers(1, 100))
    steps = int(rng.integers(total + 1, 200))
    want = _torch_run(lambda o: lr_scheduler.LinearLR(o, start, end, total), steps, lr)
    got = _ours(S.linear(lr, start, end, total), steps)
    _close(got, want, lr, dict(lr=lr, start_factor=start, end_factor=end, total_steps=total))


def test_step_vs_steplr(x64):
  rng = np.random.default_rng(3)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    size = int(rng.integers(1, 60))
    gamma = float(rng.uniform(0.05, 1.0))
    steps = 300
    want = _torch_run(lambda o: lr_scheduler.StepLR(o, size, gamma), steps, lr)
    got = _ours(S.step(lr, size, gamma), steps)
    _close(got, want, lr, dict(lr=lr, step_size=size, gamma=gamma))


def test_multistep_vs_multisteplr_with_repeats(x64):
  rng = np.random.default_rng(4)
  n_repeated = 0
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    k = int(rng.integers(1, 7))
    # drawn with replacement from a small range: repeated milestones compound (gamma**count)
    milestones = sorted(int(m) for m in rng.integers(0, 40, size=k) * 5)
    n_repeated += len(set(milestones)) < len(milestones)
    gamma = float(rng.uniform(0.1, 1.0))
    steps = 250
    want = _torch_run(lambda o: lr_scheduler.MultiStepLR(o, milestones, gamma), steps, lr)
    got = _ours(S.multistep(lr, milestones, gamma), steps)
    _close(got, want, lr, dict(lr=lr, milestones=milestones, gamma=gamma))
  assert n_repeated >= 5  # the repeats really were exercised


def test_exponential_vs_exponentiallr(x64):
  rng = np.random.default_rng(5)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    gamma = float(rng.uniform(0.9, 1.0))
    steps = 300
    want = _torch_run(lambda o: lr_scheduler.ExponentialLR(o, gamma), steps, lr)
    got = _ours(S.exponential(lr, gamma), steps)
    _close(got, want, lr, dict(lr=lr, gamma=gamma))


def test_polynomial_vs_polynomiallr(x64):
  rng = np.random.default_rng(6)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    total = int(rng.integers(1, 200))
    power = float(rng.uniform(0.1, 3.0))
    steps = 250
    want = _torch_run(lambda o: lr_scheduler.PolynomialLR(o, total, power), steps, lr)
    got = _ours(S.polynomial(lr, total, power), steps)
    _close(got, want, lr, dict(lr=lr, total_steps=total, power=power))


def test_cosine_vs_cosineannealinglr_periodic(x64):
  """Past ``t_max`` PyTorch's recursive form is periodic (period ``2 t_max``); so is ours."""
  rng = np.random.default_rng(7)
  for i in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    t_max = int(rng.integers(1, 100))
    eta_min = 0.0 if i % 3 == 0 else lr * float(rng.uniform(0.0, 0.5))
    steps = 300
    want = _torch_run(lambda o: lr_scheduler.CosineAnnealingLR(o, t_max, eta_min), steps, lr)
    got = _ours(S.cosine(lr, t_max, eta_min=eta_min), steps)
    # PyTorch's recursive ratio form accumulates rounding (measured <= 3.4e-13 * lr).
    _close(got, want, lr, dict(lr=lr, t_max=t_max, eta_min=eta_min), atol=1e-11)


def test_cosine_restarts_vs_warmrestarts(x64):
  rng = np.random.default_rng(8)
  for i in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    t_0 = int(rng.integers(1, 50))
    t_mult = (1, 2, 3)[i % 3]
    eta_min = 0.0 if i % 4 == 0 else lr * float(rng.uniform(0.0, 0.5))
    steps = 300
    want = _torch_run(
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, t_0, t_mult, eta_min), steps, lr
    )
    got = _ours(S.cosine_restarts(lr, t_0, t_mult, eta_min=eta_min), steps)
    _close(got, want, lr, dict(lr=lr, t_0=t_0, t_mult=t_mult, eta_min=eta_min))


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_vs_cycliclr_with_momentum(x64, mode):
  rng = np.random.default_rng(9 + len(mode))
  for i in range(N_SETTINGS):
    base_lr = _loguniform(rng, 1e-4, 0.1)
    max_lr = base_lr * float(rng.uniform(1.0, 20.0))
    up = int(rng.integers(1, 40))
    down = None if i % 3 == 0 else int(rng.integers(1, 40))
    gamma = float(rng.uniform(0.97, 1.0))
    base_m = float(rng.uniform(0.5, 0.9))
    max_m = float(rng.uniform(base_m, 0.99))
    steps = 300
    want_lr, want_m = _torch_run(
        lambda o: lr_scheduler.CyclicLR(
            o, base_lr, max_lr, up, down, mode, gamma, cycle_momentum=True,
            base_momentum=base_m, max_momentum=max_m,
        ),
        steps,
        momentum=True,
    )
    settings = dict(base_lr=base_lr, max_lr=max_lr, step_size_up=up, step_size_down=down,
                    mode=mode, gamma=gamma)
    # PyTorch computes the phase as 1 + t/size - floor(1 + t/size): rounding of order 1e-16 in
    # the phase, i.e. of (max_lr - base_lr) * 1e-16 / step_ratio in the rate.
    got_lr = _ours(S.cyclic(base_lr, max_lr, up, down, mode, gamma), steps)
    _close(got_lr, want_lr, max_lr, settings, atol=1e-11)
    got_m = _ours(S.cyclic_momentum(base_m, max_m, up, down, mode, gamma), steps)
    _close(got_m, want_m, max_m, dict(settings, base_momentum=base_m, max_momentum=max_m),
           atol=1e-11)


def test_cyclic_noninteger_step_sizes(x64):
  """PyTorch takes float step sizes (it converts them with ``float``); so must we."""
  rng = np.random.default_rng(12)
  for i in range(10):
    base_lr, max_lr = 0.01, 0.1
    up = float(rng.uniform(1.0, 20.0))
    down = float(rng.uniform(1.0, 20.0))
    mode = ("triangular", "triangular2", "exp_range")[i % 3]
    steps = 200
    want = _torch_run(
        lambda o: lr_scheduler.CyclicLR(o, base_lr, max_lr, up, down, mode, 0.99), steps
    )
    got = _ours(S.cyclic(base_lr, max_lr, up, down, mode, 0.99), steps)
    _close(got, want, max_lr, dict(step_size_up=up, step_size_down=down, mode=mode), atol=1e-11)


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_one_cycle_vs_onecyclelr_with_momentum(x64, anneal, three_phase):
  """Steps ``0..T-1`` equal PyTorch; from ``T - 1`` on the final value is held.

  PyTorch also accepts step ``T`` (it raises after), where its last anneal is evaluated at
  ``pct = T / (T - 1) - ...`` past 1: the cosine climbs back up and the linear anneal goes
  below the final rate (negative for a short last phase). The docstring promises the final
  rate past the end, so step ``T`` and later hold it.
  """
  rng = np.random.default_rng(20 + 2 * three_phase + (anneal == "cos"))
  for _ in range(N_SETTINGS):
    max_lr = _loguniform(rng, 1e-3, 1.0)
    total = int(rng.integers(10, 300))
    # pct_start * total away from 1 (PyTorch divides by zero there); three-phase below 0.5.
    while True:
      pct = float(rng.uniform(0.05, 0.48 if three_phase else 0.95))
      if abs(pct * total - 1) > 1e-3 and total + 1 - 2 * pct * total > 1e-3:
        break
    div = float(rng.uniform(2.0, 50.0))
    final_div = _loguniform(rng, 2.0, 1e5)
    base_m = float(rng.uniform(0.5, 0.9))
    max_m = float(rng.uniform(base_m, 0.99))
    settings = dict(max_lr=max_lr, total_steps=total, pct_start=pct, anneal=anneal,
                    div_factor=div, final_div_factor=final_div, three_phase=three_phase)
    want_lr, want_m = _torch_run(
        lambda o: lr_scheduler.OneCycleLR(
            o, max_lr, total_steps=total, pct_start=pct, anneal_strategy=anneal,
            cycle_momentum=True, base_momentum=base_m, max_momentum=max_m,
            div_factor=div, final_div_factor=final_div, three_phase=three_phase,
        ),
        total,
        momentum=True,
    )
    got_lr = _ours(S.one_cycle(max_lr, total, pct_start=pct, anneal=anneal, div_factor=div,
                               final_div_factor=final_div, three_phase=three_phase),
                   MAX_STEPS)
    _close(got_lr[:total], want_lr, max_lr, settings)
    final = max_lr / div / final_div
    # PyTorch at T - 1 (its linear anneal (end - start) * 1 + start rounds: rtol 1e-10)
    np.testing.assert_allclose(want_lr[-1], final, rtol=1e-10)
    _close(got_lr[total - 1 :], np.full(MAX_STEPS - total + 1, final), max_lr, settings)
    got_m = _ours(S.one_cycle_momentum(total, pct_start=pct, anneal=anneal,
                                       base_momentum=base_m, max_momentum=max_m,
                                       three_phase=three_phase), MAX_STEPS)
    _close(got_m[:total], want_m, 1.0, dict(settings, base_momentum=base_m, max_momentum=max_m))
    _close(got_m[total - 1 :], np.full(MAX_STEPS - total + 1, max_m), 1.0, settings)


def test_one_cycle_first_phase_shorter_than_a_step(x64):
  """``pct_start * total_steps < 1``: PyTorch's first phase ends before step 0."""
  for total, pct in [(10, 0.05), (7, 0.1), (50, 0.015)]:
    want = _torch_run(
        lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=total, pct_start=pct), total
    )
    got = _ours(S.one_cycle(1.0, total, pct_start=pct), total)
    _close(got, want, 1.0, dict(total_steps=total, pct_start=pct))


# --------------------------------------------------------------------------------------------
# compositions


def test_sequential_vs_sequentiallr(x64):
  """``sequential`` against ``SequentialLR``.

  What PyTorch does (torch 2.13, ``SequentialLR.__init__``/``step``): it resets the optimizer's
  rate to ``initial_lr``, undoes the initial step that constructing each scheduler made, and
  redoes it for the first one only; at a milestone it calls the next scheduler's
  ``_update_lr(0)``, i.e. its *closed form* at local step 0 (computed from ``base_lrs``), and
  from there on steps it recursively. So each scheduler restarts from the base rate at its own
  step 0, exactly as ``optax.join_schedules`` does, whatever rate the previous one left.

  Quirks excluded on purpose: ``ConstantLR`` with ``total_iters=0`` (its recursive form never
  restores the rate) and ``CosineAnnealingLR`` only within rounding (recursive). ``LinearLR``
  needs ``start_factor > 0`` in PyTorch.
  """
  rng = np.random.default_rng(30)
  for i in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    steps = 250
    kind = i % 3
    if kind == 0:  # [LinearLR, ExponentialLR]
      sf, total = float(rng.uniform(0.01, 1.0)), int(rng.integers(1, 60))
      gamma = float(rng.uniform(0.95, 1.0))
      m = int(rng.integers(0, 120))
      make = lambda o: lr_scheduler.SequentialLR(
          o, [lr_scheduler.LinearLR(o, sf, 1.0, total), lr_scheduler.ExponentialLR(o, gamma)], [m])
      ours = S.sequential([S.linear(lr, sf, 1.0, total), S.exponential(lr, gamma)], [m])
      settings = dict(kind="linear,exponential", start_factor=sf, total=total, gamma=gamma, m=m)
    elif kind == 1:  # [ConstantLR, CosineAnnealingLR]
      f, total = float(rng.uniform(0.01, 1.0)), int(rng.integers(1, 60))
      t_max = int(rng.integers(1, 100))
      eta = lr * float(rng.uniform(0.0, 0.3))
      m = int(rng.integers(0, 120))
      make = lambda o: lr_scheduler.SequentialLR(
          o, [lr_scheduler.ConstantLR(o, f, total),
              lr_scheduler.CosineAnnealingLR(o, t_max, eta)], [m])
      ours = S.sequential([S.constant_factor(lr, f, total), S.cosine(lr, t_max, eta_min=eta)], [m])
      settings = dict(kind="constant,cosine", factor=f, total=total, t_max=t_max, eta=eta, m=m)
    else:  # [LinearLR, StepLR, CosineAnnealingLR]
      sf, total = float(rng.uniform(0.01, 1.0)), int(rng.integers(1, 30))
      size, gamma = int(rng.integers(1, 30)), float(rng.uniform(0.1, 1.0))
      t_max = int(rng.integers(1, 100))
      m1 = int(rng.integers(1, 80))
      m2 = m1 + int(rng.integers(1, 80))
      make = lambda o: lr_scheduler.SequentialLR(
          o, [lr_scheduler.LinearLR(o, sf, 1.0, total), lr_scheduler.StepLR(o, size, gamma),
              lr_scheduler.CosineAnnealingLR(o, t_max)], [m1, m2])
      ours = S.sequential(
          [S.linear(lr, sf, 1.0, total), S.step(lr, size, gamma), S.cosine(lr, t_max)], [m1, m2])
      settings = dict(kind="linear,step,cosine", sf=sf, total=total, size=size, gamma=gamma,
                      t_max=t_max, m=(m1, m2))
    want = _torch_run(make, steps, lr)
    _close(_ours(ours, steps), want, lr, settings, atol=1e-11)


def test_chained_vs_chainedscheduler(x64):
  rng = np.random.default_rng(31)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    size, g1 = int(rng.integers(1, 60)), float(rng.uniform(0.1, 1.0))
    g2 = float(rng.uniform(0.95, 1.0))
    steps = 300
    want = _torch_run(
        lambda o: lr_scheduler.ChainedScheduler(
            [lr_scheduler.StepLR(o, size, g1), lr_scheduler.ExponentialLR(o, g2)]),
        steps, lr)
    got = _ours(S.chained(S.step(lr, size, g1), S.exponential(1.0, g2)), steps)
    _close(got, want, lr, dict(lr=lr, step_size=size, gamma_step=g1, gamma_exp=g2))


@pytest.mark.parametrize("mode", ["linear", "constant"])
def test_warmup_vs_chained_linearlr_constantlr(x64, mode):
  """``warmup(s, W, f)`` multiplies ``s`` (which keeps counting from 0) by the ramp: the same as
  ``ChainedScheduler([LinearLR(f, 1, W), StepLR])`` ("linear") and ``[ConstantLR(f, W), StepLR]``
  ("constant")."""
  rng = np.random.default_rng(32 + (mode == "linear"))
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    w = int(rng.integers(1, 50))
    f = float(rng.uniform(0.01, 1.0))
    size, gamma = int(rng.integers(1, 60)), float(rng.uniform(0.1, 1.0))
    steps = 200
    ramp = (lambda o: lr_scheduler.LinearLR(o, f, 1.0, w)) if mode == "linear" else (
        lambda o: lr_scheduler.ConstantLR(o, f, w))
    want = _torch_run(
        lambda o: lr_scheduler.ChainedScheduler([ramp(o), lr_scheduler.StepLR(o, size, gamma)]),
        steps, lr)
    got = _ours(S.warmup(S.step(lr, size, gamma), w, f, mode), steps)
    _close(got, want, lr, dict(lr=lr, warmup_steps=w, start_factor=f, step_size=size,
                               gamma=gamma, mode=mode))


def test_epochs_vs_scheduler_stepped_per_epoch(x64):
  """A PyTorch scheduler stepped once per epoch, read at every optimizer step."""
  rng = np.random.default_rng(34)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    spe = int(rng.integers(1, 12))
    size, gamma = int(rng.integers(1, 6)), float(rng.uniform(0.1, 1.0))
    steps = 150
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=lr, momentum=0.9)
    sched = lr_scheduler.StepLR(opt, size, gamma)
    want = []
    for t in range(steps):
      want.append(opt.param_groups[0]["lr"])
      opt.step()
      if (t + 1) % spe == 0:
        sched.step()
    got = _ours(S.epochs(S.step(lr, size, gamma), spe), steps)
    _close(got, want, lr, dict(lr=lr, steps_per_epoch=spe, step_size=size, gamma=gamma))


# --------------------------------------------------------------------------------------------
# Keras formulas, restated in NumPy


def _keras_inverse_time(step, lr, decay_rate, decay_steps, staircase):
  p = step / decay_steps
  if staircase:
    p = np.floor(p)
  return lr / (1 + decay_rate * p)


def _keras_cosine_decay_restarts(step, lr, first_decay_steps, t_mul, m_mul, alpha):
  """keras.optimizers.schedules.CosineDecayRestarts.__call__, in NumPy.

  One change: ``1e-9`` is added to ``log(...) / log(t_mul)`` before the floor, because Keras'
  float rounding can put an exact restart step (where ``log`` is an exact integer in exact
  arithmetic) in the previous cycle; we compare with the exact-arithmetic formula.
  """
  completed = step / first_decay_steps
  if t_mul == 1.0:
    i_restart = np.floor(completed)
    completed = completed - i_restart
  else:
    i_restart = np.floor(np.log(1.0 - completed * (1.0 - t_mul)) / np.log(t_mul) + 1e-9)
    sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
    completed = (completed - sum_r) / t_mul**i_restart
  m_fac = m_mul**i_restart
  cosine_decayed = 0.5 * m_fac * (1.0 + np.cos(np.pi * completed))
  decayed = (1 - alpha) * cosine_decayed + alpha
  return lr * decayed


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_vs_keras(x64, staircase):
  rng = np.random.default_rng(40 + staircase)
  t = np.arange(MAX_STEPS, dtype=np.float64)
  for _ in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    k = _loguniform(rng, 1e-3, 2.0)
    decay_steps = int(rng.integers(1, 50))
    want = _keras_inverse_time(t, lr, k, decay_steps, staircase)
    got = _ours(S.inverse_time(lr, k=k, decay_steps=decay_steps, staircase=staircase), MAX_STEPS)
    _close(got, want, lr, dict(lr=lr, k=k, decay_steps=decay_steps, staircase=staircase))


def test_cosine_restarts_m_mul_vs_keras(x64):
  rng = np.random.default_rng(42)
  t = np.arange(MAX_STEPS, dtype=np.float64)
  for i in range(N_SETTINGS):
    lr = _loguniform(rng, 1e-4, 1.0)
    t_0 = int(rng.integers(1, 40))
    t_mult = (1, 2, 3)[i % 3]
    eta_min = 0.0 if i % 4 == 0 else lr * float(rng.uniform(0.0, 0.5))
    m_mul = float(rng.uniform(0.3, 1.0))
    want = _keras_cosine_decay_restarts(t, lr, t_0, float(t_mult), m_mul, eta_min / lr)
    got = _ours(S.cosine_restarts(lr, t_0, t_mult, eta_min=eta_min, m_mul=m_mul), MAX_STEPS)
    # The Keras form goes through log/exp and t_mul**i: a few ulps, not exact.
    _close(got, want, lr, dict(lr=lr, t_0=t_0, t_mult=t_mult, eta_min=eta_min, m_mul=m_mul),
           rtol=1e-9, atol=1e-11)


def test_keras_restatement_agrees_with_torch_when_m_mul_is_1(x64):
  """Sanity check of the NumPy restatement itself against an independent reference."""
  t = np.arange(200, dtype=np.float64)
  for t_0, t_mult, eta in [(3, 1, 0.0), (5, 2, 0.1), (2, 3, 0.05)]:
    want = _torch_run(
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, t_0, t_mult, eta), 200, 1.0)
    np.testing.assert_allclose(
        _keras_cosine_decay_restarts(t, 1.0, t_0, float(t_mult), 1.0, eta), want, rtol=1e-9,
        atol=1e-12)


# --------------------------------------------------------------------------------------------
# optax


def _T64():
  """Steps for optax's schedules: int64 (x64 default), because optax divides the count by an
  int and int32 / int gives float32 in JAX, which would make optax's reference float32."""
  return jnp.arange(MAX_STEPS, dtype=jnp.int64)


def test_cosine_vs_optax_cosine_decay(x64):
  rng = np.random.default_rng(50)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    t_max = int(rng.integers(1, 200))
    eta_min = lr * float(rng.uniform(0.0, 0.5))
    want = np.asarray(optax.cosine_decay_schedule(lr, t_max, alpha=eta_min / lr)(_T64()))
    _close(_ours(S.cosine(lr, t_max, eta_min=eta_min), t_max + 1), want[: t_max + 1], lr,
           dict(lr=lr, t_max=t_max, eta_min=eta_min))


def test_exponential_vs_optax_exponential_decay(x64):
  rng = np.random.default_rng(51)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    gamma = float(rng.uniform(0.5, 1.0))
    want = optax.exponential_decay(lr, transition_steps=1, decay_rate=gamma)(_T64())
    # optax computes decay_rate ** (t / 1) with a float power: a few ulps apart.
    _close(_ours(S.exponential(lr, gamma), MAX_STEPS), want, lr, dict(lr=lr, gamma=gamma),
           rtol=1e-12 * MAX_STEPS)


def test_polynomial_vs_optax_polynomial_schedule(x64):
  rng = np.random.default_rng(52)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    end = lr * float(rng.uniform(0.0, 0.5))
    total = int(rng.integers(1, 200))
    power = float(rng.uniform(0.1, 3.0))
    want = optax.polynomial_schedule(lr, end, power, total)(_T64())
    _close(_ours(S.polynomial(lr, total, power, end_lr=end), MAX_STEPS), want, lr,
           dict(lr=lr, end_lr=end, total_steps=total, power=power))


def test_linear_vs_optax_linear_schedule(x64):
  rng = np.random.default_rng(53)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    start, end = float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 1.0))
    total = int(rng.integers(1, 200))
    want = optax.linear_schedule(lr * start, lr * end, total)(_T64())
    _close(_ours(S.linear(lr, start, end, total), MAX_STEPS), want, lr,
           dict(lr=lr, start_factor=start, end_factor=end, total_steps=total))


def test_sequential_vs_optax_join_schedules(x64):
  rng = np.random.default_rng(54)
  for _ in range(20):
    lr = _loguniform(rng, 1e-4, 1.0)
    m1 = int(rng.integers(0, 100))
    m2 = m1 + int(rng.integers(1, 100))
    t_max, gamma = int(rng.integers(1, 100)), float(rng.uniform(0.9, 1.0))
    parts_ours = [S.linear(lr, 0.1, 1.0, 20), S.cosine(lr, t_max), S.exponential(lr / 2, gamma)]
    parts_optax = [
        optax.linear_schedule(lr * 0.1, lr, 20),
        optax.cosine_decay_schedule(lr, t_max),
        optax.exponential_decay(lr / 2, 1, gamma),
    ]
    t = _T
    # optax's cosine is constant after t_max, ours is periodic: compare only where they agree.
    keep = (t < m1) | (t >= m2) | (t - m1 <= t_max)
    want = np.asarray(optax.join_schedules(parts_optax, [m1, m2])(_T64()))
    got = _ours(S.sequential(parts_ours, [m1, m2]), MAX_STEPS)
    _close(got[keep], want[keep], lr, dict(m=(m1, m2), t_max=t_max, gamma=gamma),
           rtol=1e-12 * MAX_STEPS)


def test_readme_migration_table_equivalences(x64):
  """The rewrites the README's "Coming from optax or PyTorch" table gives, against optax."""
  t = _T64()
  ti = jnp.arange(MAX_STEPS, dtype=jnp.int32)
  v, peak, init, end, w, d = 0.3, 0.1, 0.02, 1e-3, 37, 250

  def same(ours, theirs, what):
    np.testing.assert_allclose(np.asarray(ours(ti)), np.asarray(theirs(t)), rtol=1e-10,
                               atol=1e-14, err_msg=what)

  same(S.linear(v, 1.0, end / v, 100), optax.linear_schedule(v, end, 100), "linear down")
  same(S.linear(v, init / v, 1.0, 100), optax.linear_schedule(init, v, 100), "linear up")
  same(S.warmup(S.constant(v), 100), optax.linear_schedule(0.0, v, 100), "linear from 0")
  same(S.multistep(v, [40, 90, 90], 0.1),
       optax.piecewise_constant_schedule(v, {40: 0.1, 90: 0.01}), "piecewise constant")
  same(S.exponential(v, 0.5 ** (1 / 100)), optax.exponential_decay(v, 100, 0.5), "exp decay")
  same(S.exponential_decay(v, k=np.log(2) / 100), optax.exponential_decay(v, 100, 0.5),
       "exp decay, k")
  same(S.step(v, 100, 0.5), optax.exponential_decay(v, 100, 0.5, staircase=True), "staircase")
  same(S.polynomial(v, d, 1.7, end_lr=end), optax.polynomial_schedule(v, end, 1.7, d), "poly")
  same(S.sequential([S.cosine(v, d, eta_min=0.1 * v), S.constant(0.1 * v)], [d]),
       optax.cosine_decay_schedule(v, d, alpha=0.1), "cosine decay, held")
  same(S.warmup(S.constant(peak), w, start_factor=init / peak),
       optax.warmup_constant_schedule(init, peak, w), "warmup constant")
  same(S.sequential([S.warmup(S.constant(peak), w, start_factor=init / peak),
                     S.cosine(peak, d - w, eta_min=end), S.constant(end)], [w, d]),
       optax.warmup_cosine_decay_schedule(init, peak, w, d, end), "warmup cosine decay")
  same(S.sequential([S.warmup(S.constant(peak), w), S.cosine(peak, d - w), S.constant(0.0)],
                    [w, d]),
       optax.warmup_cosine_decay_schedule(0.0, peak, w, d), "warmup cosine decay from 0")
  # ... and S.warmup multiplies instead: the cosine has run W steps when the ramp ends.
  mult = np.asarray(S.warmup(S.cosine(peak, d, eta_min=end), w)(ti))
  cos = np.asarray(S.cosine(peak, d, eta_min=end)(ti))
  np.testing.assert_allclose(mult[w:d], cos[w:d], rtol=1e-12)
  assert not np.allclose(mult[w:d], np.asarray(
      optax.warmup_cosine_decay_schedule(0.0, peak, w, d, end)(t))[w:d])
