"""reduce_on_plateau against torch's ReduceLROnPlateau; early_stopping against Keras 3's rules."""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr

torch = pytest.importorskip("torch")

HP_NAMES = ("factor", "patience", "threshold", "cooldown", "min_scale", "eps", "max_reductions",
            "base_lr")
MODES = [(m, t) for m in ("min", "max") for t in ("rel", "abs")]
T = 48  # update calls per random case


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


class _TorchPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
  """torch's scheduler, plus the (documented) max_reductions limit and `done` flag.

  With ``max_reductions=None`` nothing of torch's logic is touched: ``_reduce_lr`` is only
  wrapped to count real reductions and to note a due reduction that ``eps`` swallowed.
  """

  def __init__(self, opt, max_reductions=None, **kwargs):
    super().__init__(opt, **kwargs)
    self.max_reductions = max_reductions
    self.n_red = 0
    self.stuck = False

  def _reduce_lr(self, epoch):
    if self.max_reductions is not None and self.n_red >= self.max_reductions:
      return
    old = self.optimizer.param_groups[0]["lr"]
    super()._reduce_lr(epoch)
    if self.optimizer.param_groups[0]["lr"] != old:
      self.n_red += 1
    else:
      self.stuck = True


def torch_plateau(case, metrics, evaluate):
  """Per call: (scale, best, num_bad_epochs, cooldown_counter, num_reductions, count, done)."""
  lr = case["lr"]
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
  sched = _TorchPlateau(
      opt, max_reductions=case["max_reductions"], mode=case["mode"], factor=case["factor"],
      patience=case["patience"], threshold=case["threshold"],
      threshold_mode=case["threshold_mode"], cooldown=case["cooldown"],
      min_lr=case["min_scale"] * lr, eps=case["eps"],
  )
  rows = []
  for m, e in zip(metrics, evaluate):
    if e:
      sched.step(float(m))
    cur = opt.param_groups[0]["lr"]
    done = (
        sched.stuck
        or (sched.max_reductions is not None and sched.n_red >= sched.max_reductions)
        or cur <= sched.min_lrs[0]
    )
    rows.append((cur / lr, sched.best, sched.num_bad_epochs, sched.cooldown_counter,
                 sched.n_red, sched.last_epoch, done))
  return [np.array(c) for c in zip(*rows)]


class KerasEarlyStopping:
  """Keras 3's ``EarlyStopping.on_epoch_end`` (keras/src/callbacks/early_stopping.py) restated,
  with ``restore_best_weights=True``; ``weights`` stands for ``model.get_weights()``."""

  def __init__(self, patience, min_delta, mode, baseline, start_from_epoch):
    self.patience, self.baseline, self.start_from_epoch = patience, baseline, start_from_epoch
    self.monitor_op = operator.lt if mode == "min" else operator.gt
    self.min_delta = abs(min_delta) * (-1 if mode == "min" else 1)
    self.best = math.inf if mode == "min" else -math.inf
    self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
    self.best_weights, self.stop_training = None, False

  def _is_improvement(self, value, ref):
    return self.monitor_op(value - self.min_delta, ref)

  def on_epoch_end(self, epoch, current, weights):
    if epoch < self.start_from_epoch:
      return
    if self.best_weights is None:
      self.best_weights, self.best_epoch = weights, epoch
    self.wait += 1
    if self._is_improvement(current, self.best):
      self.best, self.best_epoch, self.best_weights = current, epoch, weights
      if self.baseline is None or self._is_improvement(current, self.baseline):
        self.wait = 0
      return
    if self.wait >= self.patience and epoch > 0:
      self.stopped_epoch, self.stop_training = epoch, True


def keras_early_stopping(case, metrics, evaluate):
  """Per call: (best, best_step, wait, stop, stopped_step, best_weights); stops feeding at stop."""
  cb = KerasEarlyStopping(case["patience"], case["min_delta"], case["mode"], case["baseline"],
                          case["start_from"])
  rows, epoch = [], 0
  for t, (m, e) in enumerate(zip(metrics, evaluate)):
    if e and not cb.stop_training:
      cb.on_epoch_end(epoch, float(m), weights=float(t))
    epoch += bool(e)
    bw = -1.0 if cb.best_weights is None else cb.best_weights
    rows.append((cb.best, cb.best_epoch, cb.wait, cb.stop_training, cb.stopped_epoch, bw))
  return [np.array(c) for c in zip(*rows)]


# ---------------------------------------------------------------------------------------------
# random cases
# ---------------------------------------------------------------------------------------------


def random_metrics(rng, n, grid=16):
  """A random walk on a 1/grid lattice with repeats, plateaus, drifts and jumps."""
  x = rng.integers(-3 * grid, 6 * grid)
  drift = rng.choice([-1, 0, 1])
  out = []
  for _ in range(n):
    r = rng.random()
    if r < 0.35:
      pass  # repeat: a plateau
    elif r < 0.85:
      x += drift + rng.integers(-6, 7)
    else:
      x += rng.integers(-4 * grid, 4 * grid)
    out.append(x / grid)
  return np.array(out, np.float64)


def random_plateau_case(rng, mode, threshold_mode, limited):
  lr = float(rng.choice([1.0, 1.0, 0.1, 0.03, 3.0]))
  case = dict(
      mode=mode, threshold_mode=threshold_mode, lr=lr,
      factor=float(rng.choice([0.1, 0.5, rng.uniform(0.05, 0.95)])),
      patience=int(rng.integers(0, 5)),
      cooldown=int(rng.integers(0, 4)),
      threshold=0.0 if rng.random() < 0.15 else float(
          rng.uniform(0, 0.05) if threshold_mode == "rel" else rng.uniform(0, 0.4)),
      min_scale=0.0 if rng.random() < 0.5 else float(rng.uniform(1e-3, 0.3)),
      eps=1e-8 if rng.random() < 0.6 else float(lr * rng.uniform(1e-3, 0.2)),
      max_reductions=int(rng.integers(0, 6)) if limited else None,
  )
  metrics = random_metrics(rng, T)
  evaluate = rng.random(T) < 0.8
  metrics[rng.random(T) < 0.03] = np.nan  # a NaN metric is a bad epoch in torch
  fed = np.where(evaluate, metrics, np.nan)  # non-evaluated values must be ignored
  return case, fed, evaluate


def stack(cases, keys):
  return {k: jnp.asarray(np.array([c[k] for c in cases])) for k in keys}


def plateau_tx(hp, mode, threshold_mode, limited):
  return optaxlr.reduce_on_plateau(
      factor=hp["factor"], patience=hp["patience"], threshold=hp["threshold"],
      threshold_mode=threshold_mode, mode=mode, cooldown=hp["cooldown"],
      min_scale=hp["min_scale"], eps=hp["eps"],
      max_reductions=hp["max_reductions"] if limited else None, base_lr=hp["base_lr"],
  )


@functools.partial(jax.jit, static_argnames=("mode", "threshold_mode", "limited"))
def run_plateau(hp, metrics, evaluate, *, mode="min", threshold_mode="rel", limited=True):
  """One config through a scan: (multiplier applied to each update, state after each call)."""
  tx = plateau_tx(hp, mode, threshold_mode, limited)

  def body(state, xs):
    m, e = xs
    u, state = tx.update(jnp.ones(()), state, value=m, evaluate=e)
    return state, (u, state)

  _, out = jax.lax.scan(body, tx.init(None), (metrics, evaluate))
  return out


@functools.partial(jax.jit, static_argnames=("mode", "threshold_mode", "limited"))
def run_plateau_batch(hp, metrics, evaluate, *, mode, threshold_mode, limited):
  one = functools.partial(run_plateau.__wrapped__, mode=mode, threshold_mode=threshold_mode,
                          limited=limited)
  return jax.vmap(one)(hp, metrics, evaluate)


def assert_plateau_matches(ours, ref, rtol):
  updates, st = ours
  scale, best, bad, cool, nred, count, done = ref
  np.testing.assert_allclose(st.scale, scale, rtol=rtol, atol=0)
  np.testing.assert_allclose(updates, scale, rtol=rtol, atol=0)  # this call used the new scale
  np.testing.assert_array_equal(st.best, best)
  np.testing.assert_array_equal(st.num_bad_epochs, bad)
  np.testing.assert_array_equal(st.cooldown_counter, cool)
  np.testing.assert_array_equal(st.num_reductions, nred)
  np.testing.assert_array_equal(st.count, count)
  np.testing.assert_array_equal(st.done, done)


# ---------------------------------------------------------------------------------------------
# reduce_on_plateau vs torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("mode,threshold_mode", MODES)
def test_plateau_matches_torch_random(x64, mode, threshold_mode):
  """4 x 60 random cases, each mode pair in one vmapped scan; half with a max_reductions limit
  (the other half get a limit of 2**30, and torch's unmodified scheduler as reference).

  float64: comparisons are bit-identical to torch's Python floats; the scale agrees to 1e-12
  relative (torch multiplies the lr, we multiply lr / initial lr).
  """
  rng = np.random.default_rng([7, len(mode), len(threshold_mode) + 3 * (mode == "min")])
  cases, ms, es = zip(*[random_plateau_case(rng, mode, threshold_mode, limited=i % 2 == 1)
                        for i in range(60)])
  unlimited = 2**30
  hp = stack([{**c, "base_lr": c["lr"],
               "max_reductions": unlimited if c["max_reductions"] is None else c["max_reductions"]}
              for c in cases], HP_NAMES)
  out = run_plateau_batch(hp, jnp.asarray(np.stack(ms)), jnp.asarray(np.stack(es)),
                          mode=mode, threshold_mode=threshold_mode, limited=True)
  out = jax.tree.map(np.asarray, out)
  n_reduced = n_stuck = n_limited = 0
  for i, case in enumerate(cases):
    ref = torch_plateau(case, ms[i], es[i])
    assert_plateau_matches(jax.tree.map(lambda x: x[i], out), ref, rtol=1e-12)
    n_reduced += ref[4][-1] > 0
    n_stuck += bool(ref[6][-1]) and case["max_reductions"] is None
    n_limited += ref[4][-1] == case["max_reductions"]
  # the random cases really exercise reductions, the floor / eps, and the limit
  assert n_reduced > 40 and n_stuck > 3 and n_limited > 5, (n_reduced, n_stuck, n_limited)


@pytest.mark.torch
def test_plateau_matches_torch_float32():
  """float32 state: metrics on a 1/16 lattice and thresholds that are exact binary fractions,
  so every comparison is exact in float32 too; the scale agrees to 1e-6 relative."""
  rng = np.random.default_rng(3)
  for mode, threshold_mode in [("min", "rel"), ("max", "abs")]:
    cases, ms, es = [], [], []
    for _ in range(20):
      case, m, e = random_plateau_case(rng, mode, threshold_mode, limited=False)
      case.update(lr=1.0, eps=1e-8, threshold=float(rng.choice([0.0, 1 / 32, 1 / 8])),
                  factor=float(rng.choice([0.5, 0.25, 0.1])),
                  min_scale=float(rng.choice([0.0, 1 / 64])))
      cases.append(case), ms.append(m.astype(np.float32)), es.append(e)
    hp = stack([{**c, "base_lr": 1.0, "max_reductions": 0} for c in cases], HP_NAMES)
    hp = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.float64 else x, hp)
    out = run_plateau_batch(hp, jnp.asarray(np.stack(ms)), jnp.asarray(np.stack(es)),
                            mode=mode, threshold_mode=threshold_mode, limited=False)
    assert out[1].scale.dtype == jnp.float32
    out = jax.tree.map(np.asarray, out)
    for i, case in enumerate(cases):
      ref = torch_plateau(case, ms[i], es[i])
      assert_plateau_matches(jax.tree.map(lambda x: x[i], out), ref, rtol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("how", ["max_reductions", "min_scale"])
def test_seeds_rule_halve_until_1_1024(x64, how):
  """'Halve after 5 evaluations without improvement, stop at 1/1024': done after exactly 10."""
  kw = dict(max_reductions=10) if how == "max_reductions" else dict(min_scale=1 / 1024)
  tx = optaxlr.reduce_on_plateau(factor=0.5, patience=4, threshold=0.0, **kw)
  metrics = np.concatenate([[2.0, 1.5, 1.0], np.ones(60)])  # improves twice, then flat
  state, scales, done = tx.init(None), [], []
  update = jax.jit(lambda s, m: tx.update(None, s, value=m, evaluate=True))  # repeats count
  for m in metrics:
    _, state = update(state, m)
    scales.append(float(state.scale)), done.append(bool(state.done))
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
      opt, factor=0.5, patience=4, threshold=0.0, min_lr=0.1 / 1024)
  ref = []
  for m in metrics:
    sched.step(m)
    ref.append(opt.param_groups[0]["lr"] / 0.1)
  np.testing.assert_allclose(scales, ref, rtol=1e-12)
  first_done = done.index(True)
  assert not any(done[:first_done]) and all(done[first_done:])
  assert first_done == 2 + 10 * 5  # flat from call 2; reductions at calls 7, 12, ..., 52
  assert scales[first_done] == 1 / 1024 and scales[first_done - 1] == 1 / 512
  assert int(state.num_reductions) == 10 and scales[-1] == 1 / 1024


@pytest.mark.torch
def test_plateau_eps_maps_through_base_lr(x64):
  """PyTorch's eps is on the lr; with base_lr = torch's initial lr the same reductions are
  skipped; with the default base_lr=1, eps applies to the scale (a torch run with lr=1)."""
  metrics = np.ones(30)
  # step lr * 2**-(k+1) must exceed eps=1e-3: lr=0.01 allows 3 halvings, lr=1 allows 9
  for base_lr, n_expected in [(0.01, 3), (1.0, 9)]:
    tx = optaxlr.reduce_on_plateau(factor=0.5, patience=0, eps=1e-3, base_lr=base_lr)
    state = tx.init(None)
    state, _ = jax.lax.scan(lambda s, m: (tx.update(None, s, value=m, evaluate=True)[1], None),
                            state, metrics)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, eps=1e-3)
    for m in metrics:
      sched.step(m)
    assert float(state.scale) == pytest.approx(opt.param_groups[0]["lr"] / base_lr, rel=1e-12)
    assert float(state.scale) == 2.0**-n_expected
    assert int(state.num_reductions) == n_expected and bool(state.done)


# ---------------------------------------------------------------------------------------------
# reduce_on_plateau: jit, vmap, retracing, optax.chain, flax.nnx
# ---------------------------------------------------------------------------------------------

PLATEAU_METRICS = np.array([5.0, 5.0, 4.9, 4.9, 4.9, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.95,
                            2.95, 2.95, 2.95, 2.95, 3.5, 3.5, 3.5], np.float32)
PLATEAU_BASE = dict(factor=0.5, patience=1, threshold=0.01, cooldown=1, min_scale=0.0, eps=1e-8,
                    max_reductions=100, base_lr=1.0)
PLATEAU_SWEEP = dict(
    factor=[0.1, 0.5, 0.9], patience=[0, 1, 2], threshold=[0.0, 0.01, 0.05],
    cooldown=[0, 1, 3], min_scale=[0.0, 0.3, 0.6], eps=[1e-8, 0.2, 0.6],
    max_reductions=[0, 1, 2], base_lr=[0.5, 1.0, 5.0],
)


def plateau_eager(hp, metrics, evaluate):
  """Python loop of tx.update, no jit."""
  tx = plateau_tx(hp, "min", "rel", True)
  state, us, states = tx.init(None), [], []
  for m, e in zip(metrics, evaluate):
    u, state = tx.update(jnp.ones(()), state, value=m, evaluate=e)
    us.append(u), states.append(state)
  return jnp.stack(us), jax.tree.map(lambda *x: jnp.stack(x), *states)


def test_plateau_jit_equals_eager():
  ev = np.arange(len(PLATEAU_METRICS)) % 4 != 3
  hp = {**PLATEAU_BASE, "eps": 0.2}
  eager = plateau_eager(hp, PLATEAU_METRICS, ev)
  jitted = run_plateau(jax.tree.map(jnp.asarray, hp), PLATEAU_METRICS, ev)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  assert int(eager[1].num_reductions[-1]) >= 2


def test_plateau_vmap_each_hyperparameter_equals_loop():
  """One vmap whose rows vary one hyperparameter at a time (every one of them is traced),
  against a Python loop over the rows of the unbatched jitted run (eager: see jit_equals_eager)."""
  rows = [(name, x) for name in sorted(PLATEAU_SWEEP) for x in PLATEAU_SWEEP[name]]
  ev = np.arange(len(PLATEAU_METRICS)) % 7 != 6
  hps = [{**PLATEAU_BASE, "eps": 0.3, name: x} if name == "base_lr" else {**PLATEAU_BASE, name: x}
         for name, x in rows]
  batched = jax.jit(jax.vmap(lambda hp: run_plateau.__wrapped__(hp, PLATEAU_METRICS, ev)))(
      stack(hps, HP_NAMES))
  scales = {}
  for i, ((name, _), hp) in enumerate(zip(rows, hps)):
    looped = run_plateau(hp, PLATEAU_METRICS, ev)
    jax.tree.map(lambda b, l: np.testing.assert_array_equal(b[i], l), batched, looped)
    scales.setdefault(name, set()).add(tuple(np.asarray(looped[1].scale)))
  no_effect = [name for name, seen in scales.items() if len(seen) == 1]
  assert not no_effect, f"{no_effect} have no effect on this sequence"


def test_plateau_no_retrace_when_values_change():
  traces = []

  @jax.jit
  def run(hp, metrics):
    traces.append(1)
    return run_plateau.__wrapped__(hp, metrics, jnp.ones(metrics.shape, bool))

  for k, factor in enumerate([0.5, 0.1, 0.7]):
    hp = {**PLATEAU_BASE, "factor": factor, "patience": k, "cooldown": 2 - k,
          "min_scale": 0.1 * k, "eps": 1e-8 * (k + 1), "max_reductions": 5 + k,
          "threshold": 0.01 * k, "base_lr": 1.0 + k}
    run(jax.tree.map(jnp.asarray, hp), jnp.asarray(PLATEAU_METRICS + k))
  assert len(traces) == 1


@pytest.mark.torch
def test_plateau_in_chain_with_adam():
  """chain(adam, reduce_on_plateau) == optax.adam's updates x torch's lr / initial lr."""
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(25, 3)).astype(np.float32)
  metrics = random_metrics(rng, 25)
  tx = optax.chain(optax.adam(1e-2), optaxlr.reduce_on_plateau(factor=0.5, patience=1))
  adam = optax.adam(1e-2)
  params = jnp.zeros(3)
  state, adam_state = tx.init(params), adam.init(params)
  step = jax.jit(lambda g, s, p, m: tx.update(g, s, p, value=m, evaluate=True))
  case = dict(mode="min", threshold_mode="rel", lr=1.0, factor=0.5, patience=1, cooldown=0,
              threshold=1e-4, min_scale=0.0, eps=1e-8, max_reductions=None)
  ref_scale = torch_plateau(case, metrics, np.ones(25, bool))[0]
  assert ref_scale[-1] < 0.1
  for t in range(25):
    u, state = step(jnp.asarray(grads[t]), state, params, metrics[t])
    ua, adam_state = adam.update(jnp.asarray(grads[t]), adam_state, params)
    np.testing.assert_allclose(u, ref_scale[t] * np.asarray(ua), rtol=1e-5, atol=1e-10)


@pytest.mark.torch
def test_plateau_under_inject_hyperparams():
  """Hyperparameters held in optax.inject_hyperparams' state: same scales as torch."""
  metrics = jnp.asarray(PLATEAU_METRICS)
  ev = jnp.ones(metrics.shape, bool)
  hp = {**PLATEAU_BASE, "factor": 0.3, "patience": 0}
  del hp["max_reductions"]
  tx = optax.inject_hyperparams(optaxlr.reduce_on_plateau)(**hp)

  def body(s, xs):
    u, s = tx.update(jnp.ones(()), s, value=xs[0], evaluate=xs[1])
    return s, u

  _, us = jax.jit(lambda: jax.lax.scan(body, tx.init(jnp.zeros(())), (metrics, ev)))()
  case = dict(hp, mode="min", threshold_mode="rel", lr=1.0, max_reductions=None)
  ref_scale = torch_plateau(case, PLATEAU_METRICS, np.ones(len(PLATEAU_METRICS), bool))[0]
  np.testing.assert_allclose(us, ref_scale, rtol=1e-6)
  assert float(us[-1]) < 0.1


@pytest.mark.torch
def test_plateau_through_nnx_optimizer():
  """nnx.Optimizer passes value=/evaluate= through; params match torch SGD + ReduceLROnPlateau
  where scheduler.step(metric_t) comes before the t-th optimizer step."""
  from flax import nnx

  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  y = rng.normal(size=(8, 2)).astype(np.float32)
  metrics = random_metrics(rng, 16)
  evaluate = np.arange(16) % 2 == 0

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.1), optaxlr.reduce_on_plateau(factor=0.5, patience=0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, value, evaluate):
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads, value=value, evaluate=evaluate)

  tlin = torch.nn.Linear(3, 2)
  with torch.no_grad():
    tlin.weight.copy_(torch.from_numpy(np.asarray(model.kernel[...]).T.copy()))
    tlin.bias.copy_(torch.from_numpy(np.asarray(model.bias[...]).copy()))
  topt = torch.optim.SGD(tlin.parameters(), lr=0.1)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=0)
  for t in range(16):
    train_step(model, optimizer, metrics[t], evaluate[t])
    if evaluate[t]:
      sched.step(metrics[t])
    topt.zero_grad()
    torch.mean((tlin(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).backward()
    topt.step()
  assert topt.param_groups[0]["lr"] < 0.1
  plateau_state = optimizer.opt_state[1]
  assert float(plateau_state.scale[...]) == pytest.approx(topt.param_groups[0]["lr"] / 0.1)
  np.testing.assert_allclose(model.kernel[...], tlin.weight.detach().numpy().T, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(model.bias[...], tlin.bias.detach().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# early_stopping vs Keras
# ---------------------------------------------------------------------------------------------

ES_NAMES = ("patience", "min_delta", "baseline", "start_from")


@functools.partial(jax.jit, static_argnames=("mode", "with_baseline"))
def run_es(hp, metrics, evaluate, *, mode="min", with_baseline=True):
  es = optaxlr.early_stopping(
      patience=hp["patience"], min_delta=hp["min_delta"], mode=mode,
      baseline=hp["baseline"] if with_baseline else None, start_from=hp["start_from"])

  def body(carry, xs):
    state, best_w = carry
    m, e, w = xs
    state = es.update(state, m, evaluate=e)
    best_w = optaxlr.keep_best(state, best_w, w)
    return (state, best_w), (state, best_w)

  _, out = jax.lax.scan(body, (es.init(), jnp.asarray(-1.0, metrics.dtype)),
                        (metrics, evaluate, jnp.arange(metrics.shape[0], dtype=metrics.dtype)))
  return out


@functools.partial(jax.jit, static_argnames=("mode", "with_baseline"))
def run_es_batch(hp, metrics, evaluate, *, mode, with_baseline):
  one = functools.partial(run_es.__wrapped__, mode=mode, with_baseline=with_baseline)
  return jax.vmap(one)(hp, metrics, evaluate)


def random_es_case(rng, mode, with_baseline):
  metrics = random_metrics(rng, 40)
  metrics[rng.random(40) < 0.03] = np.nan
  evaluate = rng.random(40) < 0.85
  case = dict(
      mode=mode, patience=int(rng.integers(0, 5)),
      min_delta=0.0 if rng.random() < 0.3 else float(rng.uniform(0, 0.5)),
      baseline=float(np.nanmedian(metrics) + rng.normal()) if with_baseline else None,
      start_from=int(rng.choice([0, 0, 1, 2, 5])),
  )
  return case, np.where(evaluate, metrics, np.nan), evaluate


@pytest.mark.parametrize("mode,with_baseline", [("min", True), ("max", True), ("max", False)])
def test_early_stopping_matches_keras_random(x64, mode, with_baseline):
  """80 random cases per parameter set in one vmapped scan, against Keras 3's on_epoch_end
  restated; keep_best against Keras's best_weights. In the with_baseline runs half of the
  cases have Keras baseline=None, fed to ours as baseline=+-inf (equivalent by the rules);
  the third run exercises ours with the static baseline=None."""
  rng = np.random.default_rng([11, mode == "min", with_baseline])
  cases, ms, es = zip(*[random_es_case(rng, mode, with_baseline and i % 2 == 1)
                        for i in range(80)])
  worst = np.inf if mode == "min" else -np.inf
  hp = stack([{**c, "baseline": worst if c["baseline"] is None else c["baseline"]}
              for c in cases], ES_NAMES)
  states, best_w = run_es_batch(hp, jnp.asarray(np.stack(ms)), jnp.asarray(np.stack(es)),
                                mode=mode, with_baseline=with_baseline)
  states, best_w = jax.tree.map(np.asarray, (states, best_w))
  n_stop = n_base = n_diff_best = 0
  for i, case in enumerate(cases):
    best, best_step, wait, stop, stopped, ref_w = keras_early_stopping(case, ms[i], es[i])
    st = jax.tree.map(lambda x: x[i], states)
    np.testing.assert_array_equal(st.best, best)
    np.testing.assert_array_equal(st.best_step, best_step)
    np.testing.assert_array_equal(st.wait, wait)
    np.testing.assert_array_equal(st.stop, stop)
    np.testing.assert_array_equal(st.stopped_step, stopped)
    np.testing.assert_array_equal(best_w[i], ref_w)
    np.testing.assert_array_equal(st.step, np.cumsum(es[i]))
    n_stop += stop[-1]
    n_base += case["baseline"] is not None and stop[-1] and best_step[-1] > stopped[-1] - wait[-1]
    n_diff_best += ref_w[-1] >= 0 and ref_w[-1] != np.argmax(es[i] & ~np.isnan(ms[i]))
  assert n_stop > 30 and n_diff_best > 20, (n_stop, n_diff_best)
  assert n_base > 3 or not with_baseline, n_base


def test_early_stopping_float32_matches_keras():
  rng = np.random.default_rng(5)
  for mode in ("max",):
    cases, ms, es = zip(*[random_es_case(rng, mode, True) for _ in range(40)])
    cases = [{**c, "min_delta": float(rng.choice([0.0, 1 / 32])),
              "baseline": float(np.round(c["baseline"] * 32) / 32 + 1 / 64)} for c in cases]
    hp = stack(cases, ES_NAMES)
    hp = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.float64 else x, hp)
    states, _ = run_es_batch(hp, jnp.asarray(np.stack(ms), jnp.float32),
                             jnp.asarray(np.stack(es)), mode=mode, with_baseline=True)
    states = jax.tree.map(np.asarray, states)
    for i, case in enumerate(cases):
      best, best_step, wait, stop, stopped, _ = keras_early_stopping(case, ms[i], es[i])
      np.testing.assert_array_equal(states.best[i], best.astype(np.float32))
      np.testing.assert_array_equal(states.best_step[i], best_step)
      np.testing.assert_array_equal(states.stop[i], stop)


def test_early_stopping_keras_doc_example():
  """Keras's docstring: patience=3 on a loss that never improves after epoch 0 -> 4 epochs."""
  es = optaxlr.early_stopping(patience=3)
  state, epochs = es.init(), 0
  for loss in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
    state = es.update(state, loss)
    epochs += 1
    if state.stop:
      break
  assert epochs == 4 and int(state.stopped_step) == 3 and int(state.best_step) == 0


ES_METRICS = np.array([3.0, 2.5, 2.6, 2.45, 2.44, 2.7, 2.1, 2.2, 2.3, 2.25, 2.4, 2.5, 2.6, 2.7],
                      np.float32)
ES_BASE = dict(patience=2, min_delta=0.02, baseline=9.0, start_from=1)
ES_SWEEP = dict(patience=[0, 2, 4], min_delta=[0.0, 0.05, 0.3], baseline=[1.0, 2.35, 9.0],
                start_from=[0, 2, 6])


def es_eager(hp, metrics, evaluate):
  es = optaxlr.early_stopping(patience=hp["patience"], min_delta=hp["min_delta"],
                              baseline=hp["baseline"], start_from=hp["start_from"])
  state, best_w, out = es.init(), jnp.asarray(-1.0), []
  for t, (m, e) in enumerate(zip(metrics, evaluate)):
    state = es.update(state, m, evaluate=e)
    best_w = optaxlr.keep_best(state, best_w, jnp.asarray(float(t)))
    out.append((state, best_w))
  return jax.tree.map(lambda *x: jnp.stack(x), *out)


def test_early_stopping_jit_equals_eager():
  ev = np.arange(len(ES_METRICS)) % 5 != 4
  eager = es_eager(ES_BASE, ES_METRICS, ev)
  jitted = run_es(jax.tree.map(jnp.asarray, ES_BASE), ES_METRICS, ev)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  assert bool(eager[0].stop[-1])


def test_early_stopping_vmap_each_hyperparameter_equals_loop():
  rows = [(name, x) for name in sorted(ES_SWEEP) for x in ES_SWEEP[name]]
  ev = np.ones(len(ES_METRICS), bool)
  hps = [{**ES_BASE, name: x} for name, x in rows]
  batched = jax.jit(jax.vmap(lambda hp: run_es.__wrapped__(hp, ES_METRICS, ev)))(
      stack(hps, ES_NAMES))
  outcomes = {}
  for i, ((name, _), hp) in enumerate(zip(rows, hps)):
    looped = run_es(hp, ES_METRICS, ev)
    jax.tree.map(lambda b, l: np.testing.assert_array_equal(b[i], l), batched, looped)
    outcomes.setdefault(name, set()).add(
        (int(looped[0].stopped_step[-1]), int(looped[0].best_step[-1]),
         tuple(np.asarray(looped[0].wait))))
  no_effect = [name for name, seen in outcomes.items() if len(seen) == 1]
  assert not no_effect, f"{no_effect} have no effect on this sequence"


def test_early_stopping_no_retrace_when_values_change():
  traces = []

  @jax.jit
  def run(hp, metrics):
    traces.append(1)
    return run_es.__wrapped__(hp, metrics, jnp.ones(metrics.shape, bool))

  for k in range(3):
    hp = dict(patience=k, min_delta=0.01 * k, baseline=2.0 + k, start_from=k)
    run(jax.tree.map(jnp.asarray, hp), jnp.asarray(ES_METRICS * (k + 1)))
  assert len(traces) == 1


def test_keep_best_outside_vmap_on_batched_state():
  es = optaxlr.early_stopping(patience=1)
  update = jax.jit(jax.vmap(es.update))
  state = jax.vmap(lambda _: es.init())(jnp.arange(3))
  state = update(state, jnp.array([1.0, 2.0, 3.0]))
  state = update(state, jnp.array([0.5, 2.0, 1.0]))
  params = {"w": jnp.ones((3, 2, 2)), "b": jnp.full((3,), 7.0)}
  best = {"w": jnp.zeros((3, 2, 2)), "b": jnp.zeros(3)}
  out = optaxlr.keep_best(state, best, params)
  np.testing.assert_array_equal(state.improved, [True, False, True])
  np.testing.assert_array_equal(out["w"][:, 0, 0], [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(out["b"], [7.0, 0.0, 7.0])


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reduce_on_plateau without evaluate=: one count per new value
# ---------------------------------------------------------------------------------------------


def held(rng, n_evals, prefix=3):
  """Evaluations with distinct consecutive values, each passed to 1..6 calls, NaN before the
  first: what a loop that validates now and then and passes the latest value to every step
  feeds. Returns (value of each call, first call of each evaluation)."""
  ev = random_metrics(rng, n_evals)
  for i in range(1, n_evals):  # a repeat would be indistinguishable from a held value
    if ev[i] == ev[i - 1]:
      ev[i] += 1 / 1024
  lengths = rng.integers(1, 7, n_evals)
  values = np.concatenate([np.full(prefix, np.nan), np.repeat(ev, lengths)])
  first = np.zeros(len(values), bool)
  first[prefix + np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
  return values, first, ev


@pytest.mark.torch
@pytest.mark.parametrize("mode,threshold_mode", MODES)
def test_plateau_default_counts_each_held_value_once_as_torch(x64, mode, threshold_mode):
  """Without evaluate=, a value held over several calls is one scheduler.step: the scale after
  every call equals torch's after as many steps as evaluations so far; and the whole state equals
  the run fed evaluate=<first call of each evaluation> explicitly."""
  rng = np.random.default_rng([11, len(mode), len(threshold_mode)])
  n_reduced = 0
  for _ in range(12):
    case, _, _ = random_plateau_case(rng, mode, threshold_mode, limited=False)
    values, first, ev = held(rng, 30)
    tx = optaxlr.reduce_on_plateau(
        factor=case["factor"], patience=case["patience"], threshold=case["threshold"],
        threshold_mode=threshold_mode, mode=mode, cooldown=case["cooldown"],
        min_scale=case["min_scale"], eps=case["eps"], base_lr=case["lr"])

    def run(evaluate):
      def body(state, xs):
        kw = {} if evaluate is None else {"evaluate": xs[1]}
        u, state = tx.update(jnp.ones(()), state, value=xs[0], **kw)
        return state, (u, state)
      return jax.lax.scan(body, tx.init(None), (jnp.asarray(values), jnp.asarray(first)))[1]

    updates, st = jax.jit(lambda: run(None))()
    ref = torch_plateau(case, ev, np.ones(len(ev), bool))
    per_call = np.cumsum(first) - 1  # index of the latest evaluation, -1 before the first
    ref_scale = np.where(per_call >= 0, ref[0][np.maximum(per_call, 0)], 1.0)
    np.testing.assert_allclose(st.scale, ref_scale, rtol=1e-12, atol=0)
    np.testing.assert_allclose(updates, ref_scale, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(st.count, per_call + 1)
    np.testing.assert_array_equal(st.num_reductions[first], ref[4])
    explicit = jax.jit(lambda: run(True))()  # evaluate=first (True is only the switch here)
    jax.tree.map(np.testing.assert_array_equal, (updates, st), explicit)
    n_reduced += ref[4][-1] > 0
  assert n_reduced >= 6, n_reduced


def test_plateau_default_skips_nan_and_repeats_evaluate_overrides():
  tx = optaxlr.reduce_on_plateau(factor=0.5, patience=0)
  update = jax.jit(lambda s, v: tx.update(jnp.ones(()), s, value=v))
  state = tx.init(None)
  assert np.isnan(float(state.last_value))
  for v in [np.nan, np.nan, 2.0, 2.0, np.nan, 2.0, 3.0, 3.0, np.nan, 3.0]:
    _, state = update(state, v)
  # counted: 2.0 (best), 3.0 (bad -> halved); NaN and repeats are not evaluations
  assert int(state.count) == 2 and float(state.scale) == 0.5 and float(state.last_value) == 3.0
  # evaluate=True counts a repeat and a NaN (torch's scheduler.step(nan) is a bad epoch)
  _, s1 = tx.update(None, state, value=3.0, evaluate=True)
  _, s2 = tx.update(None, s1, value=np.nan, evaluate=True)
  assert (int(s1.count), float(s1.scale), int(s2.count), float(s2.scale)) == (3, 0.25, 4, 0.125)
  assert float(s2.last_value) == 3.0
  # evaluate=False leaves the state exactly as it was, even with a new value
  _, s3 = tx.update(None, state, value=1.0, evaluate=False)
  jax.tree.map(np.testing.assert_array_equal, s3, state)


@pytest.mark.torch
def test_readme_loop_validation_every_k_steps_with_nnx(x64):
  """The README's flax.nnx loop: validation loss measured every K steps, the latest passed to
  every step as value=. The plateau counts one epoch per validation (= torch stepped once after
  each validation), not one per step (the old behaviour, which drove the scale to ~1e-8)."""
  from flax import nnx

  task = optaxlr.tasks.digits(n=500, hidden=(32,))
  x, y = task.train["x"], task.train["y"]
  xv, yv = task.eval["val"]["x"], task.eval["val"]["y"]
  steps, k, batch = 240, 20, 32
  model = nnx.Sequential(nnx.Linear(64, 32, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
  tx = optax.chain(optaxlr.adamw(3e-2, weight_decay=0.0),
                   optaxlr.reduce_on_plateau(factor=0.5, patience=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(model, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

  @nnx.jit
  def train_step(model, optimizer, xb, yb, val_loss):
    grads = nnx.grad(loss_fn)(model, xb, yb)
    optimizer.update(model, grads, value=val_loss)

  val_loss, vals, scales = float("nan"), [], []
  order = np.random.default_rng(0).permutation(steps * batch) % len(y)
  for step in range(steps):
    if step % k == 0:
      val_loss = float(nnx.jit(loss_fn)(model, xv, yv))
      vals.append(val_loss)
    idx = order[step * batch:(step + 1) * batch]
    train_step(model, optimizer, x[idx], y[idx], val_loss)
    scales.append(float(optimizer.opt_state[1].scale[...]))
  plateau = optimizer.opt_state[1]
  assert int(plateau.count[...]) == len(vals) == steps // k

  def torch_scales(metrics):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    out = []
    for m in metrics:
      sched.step(m)
      out.append(opt.param_groups[0]["lr"])
    return np.array(out)

  per_validation = torch_scales(vals)
  np.testing.assert_allclose(scales, np.repeat(per_validation, k), rtol=1e-12)
  assert 1 <= int(plateau.num_reductions[...]) <= len(vals) // 2  # it did reduce, per validation
  per_step = torch_scales(np.repeat(vals, k))  # what counting every step would have done
  assert per_step[-1] < 1e-7 and per_validation[-1] >= 2.0**-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(factor=1.0), r"reduce_on_plateau: factor must be in \(0.0, 1.0\), got factor=1.0"),
    (dict(factor=0.0), r"reduce_on_plateau: factor must be in \(0.0, 1.0\), got factor=0.0"),
    (dict(factor=float("nan")), r"reduce_on_plateau: factor must be .*got factor=nan"),
    (dict(patience=-1), r"reduce_on_plateau: patience must be an integer >= 0, got patience=-1"),
    (dict(patience=1.5), r"reduce_on_plateau: patience must be an integer >= 0, got patience=1.5"),
    (dict(cooldown=-2), r"reduce_on_plateau: cooldown must be an integer >= 0, got cooldown=-2"),
    (dict(threshold=-1e-4), r"reduce_on_plateau: threshold must be >= 0, got threshold=-0.0001"),
    (dict(min_scale=-0.1), r"reduce_on_plateau: min_scale must be >= 0, got min_scale=-0.1"),
    (dict(eps=-1.0), r"reduce_on_plateau: eps must be >= 0, got eps=-1.0"),
    (dict(max_reductions=-1),
     r"reduce_on_plateau: max_reductions must be an integer >= 0, got max_reductions=-1"),
    (dict(base_lr=0.0), r"reduce_on_plateau: base_lr must be > 0, got base_lr=0.0"),
    (dict(mode="auto"), r"reduce_on_plateau: mode must be one of 'min', 'max', got mode='auto'"),
    (dict(threshold_mode="relative"),
     r"reduce_on_plateau: threshold_mode must be one of 'rel', 'abs', got "
     r"threshold_mode='relative'"),
    (dict(factor=np.array([0.5, 1.5])),
     r"reduce_on_plateau: factor must be in \(0.0, 1.0\), got factor=\[0.5, 1.5\]"),
])
def test_plateau_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optaxlr.reduce_on_plateau(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(patience=-1), r"early_stopping: patience must be an integer >= 0, got patience=-1"),
    (dict(patience=2.5), r"early_stopping: patience must be an integer >= 0, got patience=2.5"),
    (dict(patience=1, min_delta=-0.1),
     r"early_stopping: min_delta must be >= 0, got min_delta=-0.1"),
    (dict(patience=1, mode="auto"),
     r"early_stopping: mode must be one of 'min', 'max', got mode='auto'"),
    (dict(patience=1, start_from=-3),
     r"early_stopping: start_from must be an integer >= 0, got start_from=-3"),
    (dict(patience=1, baseline=float("nan")),
     r"early_stopping: baseline must be a number, got baseline=nan"),
])
def test_early_stopping_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optaxlr.early_stopping(**kwargs)


def test_plateau_value_is_required():
  tx = optaxlr.reduce_on_plateau()
  with pytest.raises(TypeError, match="value"):
    tx.update(jnp.ones(2), tx.init(None))
