"""float32 precision of every schedule against float64 references, tails included.

Every schedule is evaluated the way a sweep runs it: float32 (JAX's default), hyperparameters
traced (``jax.jit(jax.vmap(...))`` over many seeded random settings at once), int32 steps. The
reference is float64: PyTorch's ``torch.optim.lr_scheduler`` where PyTorch has the scheduler
(its closed form, ``_get_closed_form_lr``, or ``get_lr`` at ``last_epoch = t`` for the
schedulers that compute from ``last_epoch`` directly; ``CosineAnnealingWarmRestarts`` stepped
recursively), otherwise a NumPy float64 restatement of the published formula.

Float hyperparameters are drawn and then rounded to float32 before both sides see them, so the
comparison measures the schedule's arithmetic, not the rounding of its inputs (a float32
``gamma`` is off by up to ``2**-24`` relative, which moves ``gamma ** t`` by ``t * 2**-24``).

Tolerance, at every compared step: relative error ``<= RTOL = 1e-5`` where the float64 value is
non-zero; where it is zero (``eta_min = 0`` at the bottom of a cosine, ``end_lr = 0`` at the end
of a decay), ``|ours| <= ZERO_ATOL * peak``. Values are kept above ``1e-12 * peak`` (well inside
float32's normal range) by drawing decay rates from the final ratio they reach.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxlr import schedules as S

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

pytestmark = pytest.mark.torch

RTOL = 1e-5
ZERO_ATOL = 1e-7  # times the schedule's peak, where the float64 value is exactly zero
N = 100  # random settings per schedule


def f32(x: float) -> float:
  """``x`` rounded to the nearest float32 (as a Python float)."""
  return float(np.float32(x))


def loguniform(rng, lo, hi) -> float:
  return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def logint(rng, lo, hi) -> int:
  return int(round(loguniform(rng, lo, hi)))


# --------------------------------------------------------------------------------------------
# PyTorch references


def _opt(lr: float):
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  return torch.optim.SGD([param], lr=lr, momentum=0.9)


def torch_closed(make, lr: float, steps: np.ndarray) -> np.ndarray:
  """``make(optimizer)``'s closed form at ``last_epoch = t`` for each ``t`` in ``steps``."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sched = make(_opt(lr))
    out = []
    for t in steps:
      sched.last_epoch = int(t)
      out.append(sched._get_closed_form_lr()[0])
  return np.asarray(out, np.float64)


def torch_get_lr(make, steps: np.ndarray, momentum: bool = False) -> np.ndarray:
  """``get_lr()`` at ``last_epoch = t`` (schedulers that compute from ``last_epoch`` alone:
  ``CyclicLR``, ``OneCycleLR``); with ``momentum`` the momentum it writes into the group."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    opt = _opt(1.0)
    sched = make(opt)
    out = []
    for t in steps:
      sched.last_epoch = int(t)
      lr = sched.get_lr()[0]
      out.append(opt.param_groups[0]["momentum"] if momentum else lr)
  return np.asarray(out, np.float64)


def torch_recursive(make, lr: float, n_steps: int) -> np.ndarray:
  """The rate before each of ``n_steps`` ``scheduler.step()`` calls (PyTorch's normal use)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    opt = _opt(lr)
    sched = make(opt)
    out = []
    for _ in range(n_steps):
      out.append(opt.param_groups[0]["lr"])
      sched.step()
  return np.asarray(out, np.float64)


# --------------------------------------------------------------------------------------------
# the cases


@dataclasses.dataclass
class Setting:
  hp: dict[str, Any]  # numeric hyperparameters handed to ``make`` (vmapped)
  steps: np.ndarray  # the steps compared, int
  want: np.ndarray  # float64 reference at ``steps``
  peak: float  # the schedule's scale
  slack: np.ndarray | float = 0.0  # absolute error allowed on top of RTOL (documented per case)


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  make: Callable[..., Any]  # make(**hp) -> schedule
  draw: Callable[[np.random.Generator], Setting]
  n: int = N


def _tails(n_steps: int, rng, points=(), width=12, n_random=150) -> np.ndarray:
  """Steps to compare: the first and last ``width``, ``width`` around each point, and random."""
  s = set(range(min(width, n_steps))) | set(range(max(0, n_steps - width), n_steps))
  for p in points:
    c = int(math.floor(p))
    s |= {t for t in range(c - width, c + width + 1) if 0 <= t < n_steps}
  s |= set(rng.integers(0, n_steps, size=min(n_random, n_steps)).tolist())
  return np.asarray(sorted(s), np.int64)


def _lr(rng) -> float:
  return f32(loguniform(rng, 1e-5, 3.0))


def _draw_constant(rng):
  lr = _lr(rng)
  steps = np.arange(20)
  return Setting(dict(lr=lr), steps, np.full(20, lr), lr)


def _draw_constant_factor(rng):
  lr, factor = _lr(rng), f32(rng.uniform(0.01, 1.0))
  total = int(rng.integers(0, 2000))
  steps = _tails(total + 40, rng, [total])
  want = torch_closed(lambda o: lr_scheduler.ConstantLR(o, factor, total), lr, steps)
  return Setting(dict(lr=lr, factor=factor, total_steps=total), steps, want, lr)


def _draw_linear(rng):
  lr, start = _lr(rng), f32(rng.uniform(0.01, 1.0))
  u = rng.random()
  end = 0.0 if u < 0.3 else 1.0 if u < 0.4 else f32(rng.uniform(0.0, 1.0))
  total = logint(rng, 1, 5000)
  steps = _tails(total + 40, rng, [total // 2, total])
  want = torch_closed(lambda o: lr_scheduler.LinearLR(o, start, end, total), lr, steps)
  return Setting(dict(lr=lr, start_factor=start, end_factor=end, total_steps=total), steps,
                 want, lr)


def _decay_rate(rng, n_steps):
  """A per-step factor that reaches a ratio in [1e-12, 1] after ``n_steps`` (float32)."""
  return f32(loguniform(rng, 1e-12, 1.0) ** (1.0 / max(n_steps, 1)))


def _draw_step(rng):
  lr, size = _lr(rng), logint(rng, 1, 500)
  n_steps = int(rng.integers(size, 20 * size + 1))
  gamma = _decay_rate(rng, n_steps // size)
  steps = _tails(n_steps, rng, [size, n_steps // 2])
  want = torch_closed(lambda o: lr_scheduler.StepLR(o, size, gamma), lr, steps)
  return Setting(dict(lr=lr, step_size=size, gamma=gamma), steps, want, lr)


def _draw_multistep(rng):
  lr = _lr(rng)
  milestones = sorted(int(m) for m in rng.integers(0, 300, size=4) * 10)  # repeats compound
  gamma = _decay_rate(rng, 4)
  steps = _tails(3100, rng, milestones, width=3)
  want = torch_closed(lambda o: lr_scheduler.MultiStepLR(o, milestones, gamma), lr, steps)
  return Setting(dict(lr=lr, milestones=np.asarray(milestones), gamma=gamma), steps, want, lr)


def _draw_exponential(rng):
  lr, n_steps = _lr(rng), logint(rng, 10, 5000)
  gamma = _decay_rate(rng, n_steps)
  steps = _tails(n_steps, rng)
  want = torch_closed(lambda o: lr_scheduler.ExponentialLR(o, gamma), lr, steps)
  return Setting(dict(lr=lr, gamma=gamma), steps, want, lr)


def _draw_exponential_decay(rng):
  lr, n_steps = _lr(rng), logint(rng, 10, 5000)
  k = f32(-math.log(loguniform(rng, 1e-12, 1.0)) / n_steps)
  steps = _tails(n_steps, rng)
  return Setting(dict(lr=lr, k=k), steps, lr * np.exp(-k * steps.astype(np.float64)), lr)


def _draw_inverse_time(rng):
  """Keras ``InverseTimeDecay``: ``lr / (1 + k * t / decay_steps)`` (floored with staircase)."""
  lr, k, ds = _lr(rng), f32(loguniform(rng, 1e-3, 10.0)), logint(rng, 1, 500)
  steps = _tails(5000, rng, [ds])
  return Setting(dict(lr=lr, k=k, decay_steps=ds), steps, np.zeros(0), lr)  # want set below


def _inverse_time_want(staircase):
  def draw(rng):
    s = _draw_inverse_time(rng)
    p = s.steps.astype(np.float64) / s.hp["decay_steps"]
    p = np.floor(p) if staircase else p
    s.want = s.hp["lr"] / (1.0 + s.hp["k"] * p)
    return s
  return draw


def _draw_polynomial_torch(rng):
  lr, total, power = _lr(rng), logint(rng, 1, 5000), f32(rng.uniform(0.1, 5.0))
  steps = _tails(total + 40, rng, [total])
  want = torch_closed(lambda o: lr_scheduler.PolynomialLR(o, total, power), lr, steps)
  return Setting(dict(lr=lr, total_steps=total, power=power, end_lr=0.0), steps, want, lr)


def _draw_polynomial_end(rng):
  """optax ``polynomial_schedule`` / Keras ``PolynomialDecay``: decays to ``end_lr``."""
  lr, total, power = _lr(rng), logint(rng, 1, 5000), f32(rng.uniform(0.1, 5.0))
  end = f32(lr * loguniform(rng, 1e-4, 0.9))
  steps = _tails(total + 40, rng, [total])
  t = np.minimum(steps, total).astype(np.float64)
  want = (lr - end) * (1.0 - t / total) ** power + end
  return Setting(dict(lr=lr, total_steps=total, power=power, end_lr=end), steps, want, lr)


def _eta_min(rng, lr, i_zero=0.3):
  u = rng.random()
  return 0.0 if u < i_zero else f32(lr * loguniform(rng, 1e-4, 0.5))


def _draw_cosine(rng):
  """Periodic past ``t_max`` as PyTorch's ``CosineAnnealingLR`` (closed form)."""
  lr, t_max = _lr(rng), logint(rng, 1, 5000)
  eta = _eta_min(rng, lr)
  steps = _tails(2 * t_max + 20, rng, [t_max, 2 * t_max])
  want = torch_closed(lambda o: lr_scheduler.CosineAnnealingLR(o, t_max, eta), lr, steps)
  return Setting(dict(lr=lr, t_max=t_max, eta_min=eta), steps, want, lr)


def _draw_cosine_restarts_torch(rng):
  lr, t_0, t_mult = _lr(rng), logint(rng, 1, 800), int(rng.choice([1, 2, 3]))
  eta = _eta_min(rng, lr)
  n_steps = min(2500, 4 * t_0 * t_mult**2 + 5)
  want = torch_recursive(
      lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, t_0, t_mult, eta), lr, n_steps)
  return Setting(dict(lr=lr, t_0=t_0, t_mult=t_mult, eta_min=eta, m_mul=1.0),
                 np.arange(n_steps), want, lr)


def _sgdr_walk(n_steps, lr, t_0, t_mult, eta, m_mul):
  """SGDR by PyTorch's own recursion (``T_cur += 1``, restart when ``T_cur >= T_i``) in
  float64, with Keras' ``m_mul`` on each restart's amplitude and any float ``t_mult``.
  Returns the rates and each step's distance to the nearest restart."""
  out, near, slope, t_cur, t_i, i = [], [], [], 0.0, float(t_0), 0
  for _ in range(n_steps):
    out.append(eta + (lr - eta) * m_mul**i * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
    near.append(min(t_cur, t_i - t_cur))
    slope.append((lr - eta) * m_mul**i * math.pi / (2 * t_i) * abs(math.sin(math.pi * t_cur / t_i)))
    t_cur += 1
    if t_cur >= t_i:
      t_cur -= t_i
      t_i *= t_mult
      i += 1
  return np.asarray(out), np.asarray(near), np.asarray(slope)


def _draw_cosine_restarts_float(rng):
  """Fractional ``t_mult`` (an extension: PyTorch takes integers only). Restarts then fall
  between steps, at positions float32 holds to about an ulp of ``t`` (``1.2e-4`` at step
  1000), so the phase is that far off: the allowance is the rate's slope times ``8`` ulps of
  ``t`` on top of ``RTOL``. A step within ``1e-5 t`` of a restart cannot be put in the right
  cycle by float32 arithmetic; those few steps are left out. ``eta_min >= 1e-2 * lr`` keeps
  the rate at a cycle's (fractional) end away from 0."""
  lr, t_0 = _lr(rng), logint(rng, 1, 300)
  t_mult, m_mul = f32(rng.uniform(1.0, 3.0)), f32(rng.uniform(0.3, 1.0))
  eta = f32(lr * loguniform(rng, 1e-2, 0.5))
  n_steps = 2500
  want, near, slope = _sgdr_walk(n_steps, lr, t_0, t_mult, eta, m_mul)
  steps = np.arange(n_steps)
  keep = (near == 0) | (near > 1e-5 * steps)
  slack = slope * 8 * 2.0**-24 * steps
  return Setting(dict(lr=lr, t_0=t_0, t_mult=t_mult, eta_min=eta, m_mul=m_mul),
                 steps[keep], want[keep], lr, slack[keep])


_MODES = ("triangular", "triangular2", "exp_range")


def _draw_cyclic(mode, momentum):
  def draw(rng):
    base = 0.0 if rng.random() < 0.2 else _lr(rng)
    top = f32(max(base, 1e-5) * loguniform(rng, 1.0, 100.0))
    up = logint(rng, 1, 1000)
    down = logint(rng, 1, 1000)
    total = up + down
    n_steps = min(5000, 3 * total + 5)
    gamma = _decay_rate(rng, n_steps) if mode == "exp_range" else 1.0
    base_m = 0.0 if rng.random() < 0.2 else f32(rng.uniform(0.0, 0.9))
    max_m = f32(rng.uniform(base_m, 1.0))
    points = [c * total + o for c in range(3) for o in (0, up)]
    steps = _tails(n_steps, rng, points)
    make = lambda o: lr_scheduler.CyclicLR(
        o, base, top, up, down, mode, gamma, cycle_momentum=True, base_momentum=base_m,
        max_momentum=max_m)
    want = torch_get_lr(make, steps, momentum=momentum)
    if momentum:
      hp = dict(base_momentum=base_m, max_momentum=max_m)
    else:
      hp = dict(base_lr=base, max_lr=top)
    hp.update(step_size_up=up, step_size_down=down, gamma=gamma)
    return Setting(hp, steps, want, max_m if momentum else top)
  return draw


def _draw_one_cycle(anneal, three_phase, momentum):
  """Steps ``0..T-1`` against PyTorch; from ``T - 1`` on the final value is held."""
  def draw(rng):
    total = logint(rng, 10, 5000)
    while True:
      pct = f32(rng.uniform(0.02, 0.48 if three_phase else 0.95))
      if abs(pct * total - 1) > 1e-3 and total + 1 - 2 * pct * total > 1e-3:
        break
    max_lr = _lr(rng)
    div, final_div = f32(loguniform(rng, 2.0, 1e3)), f32(loguniform(rng, 2.0, 1e5))
    base_m = 0.0 if rng.random() < 0.2 else f32(rng.uniform(0.0, 0.9))
    max_m = f32(rng.uniform(base_m, 1.0))
    ends = [pct * total - 1, 2 * pct * total - 2, total - 1] if three_phase else [
        pct * total - 1, total - 1]
    steps = _tails(total, rng, ends)
    make = lambda o: lr_scheduler.OneCycleLR(
        o, max_lr, total_steps=total, pct_start=pct, anneal_strategy=anneal,
        cycle_momentum=True, base_momentum=base_m, max_momentum=max_m, div_factor=div,
        final_div_factor=final_div, three_phase=three_phase)
    want = torch_get_lr(make, steps, momentum=momentum)
    # the final value is held from T - 1 on (PyTorch stops at T, where its anneal overshoots)
    after = np.asarray([total, total + 1, total + 50], np.int64)
    final = max_m if momentum else max_lr / div / final_div
    steps, want = np.concatenate([steps, after]), np.concatenate([want, np.full(3, final)])
    if momentum:
      hp = dict(total_steps=total, pct_start=pct, base_momentum=base_m, max_momentum=max_m)
    else:
      hp = dict(max_lr=max_lr, total_steps=total, pct_start=pct, div_factor=div,
                final_div_factor=final_div)
    return Setting(hp, steps, want, max_m if momentum else max_lr)
  return draw


def _warmup_factor(mode, t, w, s):
  r = np.minimum(t / w, 1.0) if w > 0 else np.ones_like(t)
  return {
      "linear": s + (1 - s) * r,
      "constant": np.where(t < w, s, 1.0),
      "cosine": s + (1 - s) * (1 - np.cos(np.pi * r)) / 2,
      "exponential": s ** (1 - r),
  }[mode]


def _draw_warmup(mode):
  """``warmup(cosine(lr, t_max), W, s)``: the ramp times PyTorch's ``CosineAnnealingLR``."""
  def draw(rng):
    lr, t_max = _lr(rng), logint(rng, 1, 3000)
    w = logint(rng, 1, 2000)
    lo = 0.01 if mode == "exponential" else 0.0
    s = 0.0 if (rng.random() < 0.3 and lo == 0.0) else f32(loguniform(rng, max(lo, 1e-3), 1.0))
    steps = _tails(max(w, t_max) + 20, rng, [w, t_max])
    inner = torch_closed(lambda o: lr_scheduler.CosineAnnealingLR(o, t_max, 0.0), lr, steps)
    want = _warmup_factor(mode, steps.astype(np.float64), w, s) * inner
    return Setting(dict(lr=lr, t_max=t_max, warmup_steps=w, start_factor=s), steps, want, lr)
  return draw


def _draw_sequential(rng):
  """``[LinearLR, CosineAnnealingLR]`` joined at ``m``: each restarts at its local step 0."""
  lr, sf, w = _lr(rng), f32(rng.uniform(0.01, 1.0)), logint(rng, 1, 1000)
  t_max, m = logint(rng, 1, 3000), int(rng.integers(0, 1500))
  steps = _tails(m + t_max + 20, rng, [w, m, m + t_max])
  first = torch_closed(lambda o: lr_scheduler.LinearLR(o, sf, 1.0, w), lr, steps)
  second = torch_closed(lambda o: lr_scheduler.CosineAnnealingLR(o, t_max), lr,
                        np.maximum(steps - m, 0))
  want = np.where(steps < m, first, second)
  return Setting(dict(lr=lr, start_factor=sf, w=w, t_max=t_max, m=m), steps, want, lr)


def _draw_chained(rng):
  lr, size = _lr(rng), logint(rng, 1, 300)
  g1, g2 = _decay_rate(rng, 10), _decay_rate(rng, 3000)
  steps = _tails(3000, rng, [size])
  want = (torch_closed(lambda o: lr_scheduler.StepLR(o, size, g1), lr, steps)
          * torch_closed(lambda o: lr_scheduler.ExponentialLR(o, g2), 1.0, steps))
  return Setting(dict(lr=lr, step_size=size, g1=g1, g2=g2), steps, want, lr)


def _draw_epochs(rng):
  lr, spe, size = _lr(rng), logint(rng, 1, 100), logint(rng, 1, 30)
  gamma = _decay_rate(rng, 3000 // (spe * size) + 1)
  steps = _tails(3000, rng, [spe * size])
  want = torch_closed(lambda o: lr_scheduler.StepLR(o, size, gamma), lr, steps // spe)
  return Setting(dict(lr=lr, steps_per_epoch=spe, step_size=size, gamma=gamma), steps, want, lr)


def _draw_wsd(decay):
  """Warmup-stable-decay (Hu et al. 2024; Hägele et al. 2024), restated in NumPy."""
  shape = {"linear": lambda p: 1 - p, "cosine": lambda p: (1 + np.cos(np.pi * p)) / 2,
           "sqrt": lambda p: 1 - np.sqrt(p)}[decay]

  def draw(rng):
    lr, total = _lr(rng), logint(rng, 2, 5000)
    d = int(rng.integers(1, total + 1))
    w = int(rng.integers(0, total - d + 1))
    end = 0.0 if rng.random() < 0.4 else f32(lr * loguniform(rng, 1e-4, 0.5))
    steps = _tails(total + 30, rng, [w, total - d, total])
    t = steps.astype(np.float64)
    p = np.clip((t - (total - d)) / d, 0.0, 1.0)
    warm = lr * t / w if w > 0 else np.zeros_like(t)
    want = np.where(t < w, warm, np.where(t < total - d, lr, end + (lr - end) * shape(p)))
    return Setting(dict(lr=lr, total_steps=total, warmup_steps=w, decay_steps=d, end_lr=end),
                   steps, want, lr)
  return draw


def _draw_rsqrt(rng):
  """``lr * t / W`` then ``lr * sqrt(tau / (tau + t - W))`` (fairseq ``inverse_sqrt`` at
  ``tau = W``)."""
  lr, w, tau = _lr(rng), logint(rng, 1, 2000), logint(rng, 1, 2000)
  steps = _tails(5000, rng, [w])
  t = steps.astype(np.float64)
  want = np.where(t < w, lr * t / w, lr * np.sqrt(tau / (tau + np.maximum(t - w, 0))))
  return Setting(dict(lr=lr, warmup_steps=w, timescale=tau), steps, want, lr)


CASES = [
    Case("constant", S.constant, _draw_constant, n=10),
    Case("constant_factor", lambda lr, factor, total_steps: S.constant_factor(
        lr, factor, total_steps), _draw_constant_factor),
    Case("linear", lambda lr, start_factor, end_factor, total_steps: S.linear(
        lr, start_factor, end_factor, total_steps), _draw_linear),
    Case("step", lambda lr, step_size, gamma: S.step(lr, step_size, gamma), _draw_step),
    Case("multistep", lambda lr, milestones, gamma: S.multistep(lr, milestones, gamma),
         _draw_multistep),
    Case("exponential", lambda lr, gamma: S.exponential(lr, gamma), _draw_exponential),
    Case("exponential_decay", lambda lr, k: S.exponential_decay(lr, k=k),
         _draw_exponential_decay),
    *[Case(f"inverse_time-staircase={sc}",
           (lambda sc: lambda lr, k, decay_steps: S.inverse_time(
               lr, k=k, decay_steps=decay_steps, staircase=sc))(sc),
           _inverse_time_want(sc)) for sc in (False, True)],
    Case("polynomial-torch", lambda lr, total_steps, power, end_lr: S.polynomial(
        lr, total_steps, power, end_lr=end_lr), _draw_polynomial_torch),
    Case("polynomial-end_lr", lambda lr, total_steps, power, end_lr: S.polynomial(
        lr, total_steps, power, end_lr=end_lr), _draw_polynomial_end),
    Case("cosine", lambda lr, t_max, eta_min: S.cosine(lr, t_max, eta_min=eta_min),
         _draw_cosine),
    Case("cosine_restarts-torch", lambda lr, t_0, t_mult, eta_min, m_mul: S.cosine_restarts(
        lr, t_0, t_mult, eta_min=eta_min, m_mul=m_mul), _draw_cosine_restarts_torch, n=50),
    Case("cosine_restarts-float", lambda lr, t_0, t_mult, eta_min, m_mul: S.cosine_restarts(
        lr, t_0, t_mult, eta_min=eta_min, m_mul=m_mul), _draw_cosine_restarts_float, n=50),
    *[Case(f"cyclic-{mode}",
           (lambda mode: lambda base_lr, max_lr, step_size_up, step_size_down, gamma: S.cyclic(
               base_lr, max_lr, step_size_up, step_size_down, mode, gamma))(mode),
           _draw_cyclic(mode, False)) for mode in _MODES],
    *[Case(f"cyclic_momentum-{mode}",
           (lambda mode: lambda base_momentum, max_momentum, step_size_up, step_size_down,
            gamma: S.cyclic_momentum(base_momentum, max_momentum, step_size_up,
                                     step_size_down, mode, gamma))(mode),
           _draw_cyclic(mode, True)) for mode in _MODES],
    *[Case(f"one_cycle-{anneal}-three_phase={tp}",
           (lambda anneal, tp: lambda max_lr, total_steps, pct_start, div_factor,
            final_div_factor: S.one_cycle(
                max_lr, total_steps, pct_start=pct_start, anneal=anneal,
                div_factor=div_factor, final_div_factor=final_div_factor,
                three_phase=tp))(anneal, tp),
           _draw_one_cycle(anneal, tp, False))
      for anneal in ("cos", "linear") for tp in (False, True)],
    *[Case(f"one_cycle_momentum-{anneal}-three_phase={tp}",
           (lambda anneal, tp: lambda total_steps, pct_start, base_momentum, max_momentum:
            S.one_cycle_momentum(total_steps, pct_start=pct_start, anneal=anneal,
                                 base_momentum=base_momentum, max_momentum=max_momentum,
                                 three_phase=tp))(anneal, tp),
           _draw_one_cycle(anneal, tp, True))
      for anneal in ("cos", "linear") for tp in (False, True)],
    *[Case(f"warmup-{mode}",
           (lambda mode: lambda lr, t_max, warmup_steps, start_factor: S.warmup(
               S.cosine(lr, t_max), warmup_steps, start_factor=start_factor,
               mode=mode))(mode),
           _draw_warmup(mode)) for mode in ("linear", "constant", "cosine", "exponential")],
    Case("sequential", lambda lr, start_factor, w, t_max, m: S.sequential(
        [S.linear(lr, start_factor, 1.0, w), S.cosine(lr, t_max)], jnp.stack([m])),
         _draw_sequential),
    Case("chained", lambda lr, step_size, g1, g2: S.chained(
        S.step(lr, step_size, g1), S.exponential(1.0, g2)), _draw_chained),
    Case("epochs", lambda lr, steps_per_epoch, step_size, gamma: S.epochs(
        S.step(lr, step_size, gamma), steps_per_epoch), _draw_epochs),
    *[Case(f"warmup_stable_decay-{decay}",
           (lambda decay: lambda lr, total_steps, warmup_steps, decay_steps, end_lr:
            S.warmup_stable_decay(lr, total_steps, warmup_steps, decay_steps=decay_steps,
                                  decay=decay, end_lr=end_lr))(decay),
           _draw_wsd(decay)) for decay in ("linear", "cosine", "sqrt")],
    Case("rsqrt", lambda lr, warmup_steps, timescale: S.rsqrt(
        lr, warmup_steps, timescale=timescale), _draw_rsqrt),
]


def _stack(settings: list[Setting]) -> dict[str, jax.Array]:
  out = {}
  for k in settings[0].hp:
    arr = np.stack([np.asarray(s.hp[k]) for s in settings])
    if np.issubdtype(arr.dtype, np.integer):
      out[k] = jnp.asarray(arr, jnp.int32)
    else:
      out[k] = jnp.asarray(arr, jnp.float32)
  return out


def errors(case: Case, seed: int = 0) -> tuple[float, float, dict]:
  """``(max relative error where the reference is non-zero, max |ours| / peak where it is
  zero, the worst setting)`` over ``case.n`` random settings, ours in float32 under
  ``jit(vmap)`` over the settings."""
  rng = np.random.default_rng([seed, sum(map(ord, case.id))])
  settings = [case.draw(rng) for _ in range(case.n)]
  n_steps = max(int(s.steps.max()) for s in settings) + 1
  t = jnp.arange(n_steps, dtype=jnp.int32)
  got = jax.jit(jax.vmap(lambda hp: case.make(**hp)(t)))(_stack(settings))
  got = np.asarray(got)
  assert got.dtype == np.float32
  worst_rel, worst_zero, worst = 0.0, 0.0, {}
  for s, row in zip(settings, got):
    g = row[s.steps].astype(np.float64)
    if not np.all(np.isfinite(g)):
      return math.inf, math.inf, dict(hp=s.hp, non_finite_at=s.steps[~np.isfinite(g)][:5])
    zero = np.abs(s.want) <= 1e-13 * s.peak  # zero up to float64 rounding of the reference
    with np.errstate(divide="ignore", invalid="ignore"):
      err = np.maximum(np.abs(g - s.want) - s.slack, 0.0)
      rel = np.where(zero, 0.0, err / np.abs(s.want))
    z = np.max(np.abs(g - s.want)[zero] / s.peak, initial=0.0)
    if rel.max() > worst_rel:
      i = int(np.argmax(rel))
      worst_rel = float(rel.max())
      worst = dict(hp=s.hp, step=int(s.steps[i]), got=float(g[i]), want=float(s.want[i]))
    worst_zero = max(worst_zero, float(z))
  return worst_rel, worst_zero, worst


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_float32_within_1e_5_of_float64_reference(case):
  assert not jax.config.jax_enable_x64
  rel, zero, worst = errors(case)
  assert rel <= RTOL, f"{case.id}: max relative error {rel:.3g} at {worst}"
  assert zero <= ZERO_ATOL, f"{case.id}: |ours| / peak = {zero:.3g} where the reference is 0"


if __name__ == "__main__":  # python tests/test_schedules_float32.py: the table of errors
  import time
  for c in CASES:
    t0 = time.time()
    rel, zero, worst = errors(c)
    print(f"{c.id:40s} rel {rel:9.2e}  zero {zero:9.2e}  ({time.time() - t0:4.1f} s)"
          + (f"  worst {worst}" if rel > RTOL else ""))
