"""Weight decay: parity with torch.optim / optax / NumPy restatements of the AdamW paper, masks,
jit / vmap / no-retrace, flax nnx, optax.chain and optax.inject_hyperparams, bad input."""

from __future__ import annotations

import inspect

import math

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import (
    adamw,
    decoupled_weight_decay,
    l1_regularization,
    l2_regularization,
    no_bias_norm_mask,
    sgd,
)
from optaxlr._paths import path_str

torch = pytest.importorskip("torch")

STEPS = 10
TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64 against float64
LOOSE = dict(rtol=1e-5, atol=1e-6)  # float32 against float32

# ------------------------------------------------------------------------------------------------
# A 2-layer MLP on fixed data, the same in JAX, PyTorch and NumPy.
# ------------------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
X = _rng.normal(size=(8, 3))
Y = _rng.normal(size=(8, 2))
P0 = {
    "Dense_0/kernel": 0.7 * _rng.normal(size=(3, 4)),
    "Dense_0/bias": 0.3 * _rng.normal(size=4),
    "Dense_1/kernel": 0.7 * _rng.normal(size=(4, 2)),
    "Dense_1/bias": 0.3 * _rng.normal(size=2),
}
NAMES = sorted(P0)
KERNELS = {"Dense_0/kernel", "Dense_1/kernel"}


def _tree(flat, dtype):
  return {
      layer: {leaf: jnp.asarray(flat[f"{layer}/{leaf}"], dtype) for leaf in ("kernel", "bias")}
      for layer in ("Dense_0", "Dense_1")
  }


def _flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): np.asarray(v) for p, v in leaves}


def _loss(params, x, y):
  h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None, :])
  return jnp.mean((h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None, :] - y) ** 2)


_grad = jax.grad(_loss)


def run_jax(tx, dtype=np.float64, steps=STEPS):
  params = _tree(P0, dtype)
  x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
  state = tx.init(params)
  traj = []
  for _ in range(steps):
    updates, state = tx.update(_grad(params, x, y), state, params)
    params = optax.apply_updates(params, updates)
    traj.append(_flat(params))
  return traj


def run_torch(make_opt, dtype=np.float64, steps=STEPS, lr_lambda=None):
  tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
  p = {k: torch.tensor(v, dtype=tdtype, requires_grad=True) for k, v in P0.items()}
  x, y = torch.tensor(X, dtype=tdtype), torch.tensor(Y, dtype=tdtype)
  opt = make_opt(p)
  sched = None if lr_lambda is None else torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
  traj = []
  for _ in range(steps):
    opt.zero_grad()
    h = torch.tanh(x @ p["Dense_0/kernel"] + p["Dense_0/bias"])
    loss = torch.mean((h @ p["Dense_1/kernel"] + p["Dense_1/bias"] - y) ** 2)
    loss.backward()
    opt.step()
    if sched is not None:
      sched.step()
    traj.append({k: v.detach().numpy().copy() for k, v in p.items()})
  return traj


def np_grad(flat):
  """The loss gradient (float64) at NumPy params; the optimisers below are NumPy only."""
  g = _grad(_tree(flat, np.float64), jnp.asarray(X, np.float64), jnp.asarray(Y, np.float64))
  return _flat(g)


def np_adam(alpha, eta, wd, *, mode, b1=0.9, b2=0.999, eps=1e-8, decayed=NAMES, steps=STEPS):
  """Algorithm 2 of Loshchilov & Hutter (2019), with t counted from 1 and eta = eta(t - 1).

  mode "paper":       theta <- theta - eta_t * (alpha * mhat / (sqrt(vhat) + eps) + wd * theta)
  mode "independent": theta <- theta - alpha * eta_t * mhat / (sqrt(vhat) + eps) - wd * theta
  """
  p = {k: v.copy() for k, v in P0.items()}
  m = {k: np.zeros_like(v) for k, v in P0.items()}
  v = {k: np.zeros_like(x) for k, x in P0.items()}
  traj = []
  for t in range(1, steps + 1):
    g = np_grad(p)
    e = eta(t - 1)
    for k in NAMES:
      lam = wd if k in decayed else 0.0
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      a = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
      if mode == "paper":
        p[k] = p[k] - e * (alpha * a + lam * p[k])
      else:
        p[k] = p[k] - alpha * e * a - lam * p[k]
    traj.append({k: x.copy() for k, x in p.items()})
  return traj


def np_sgd(lr, wd, *, mode, momentum, nesterov, base=None, steps=STEPS):
  """torch.optim.SGD's momentum buffer (b_1 = d_1, b_t = mu b_{t-1} + d_t) with decoupled decay:

  "decoupled": theta -= lr_t * (dir + wd theta); "paper": theta -= lr_t dir + (lr_t/base) wd theta;
  "independent": theta -= lr_t dir + wd theta.
  """
  p = {k: v.copy() for k, v in P0.items()}
  buf = {}
  traj = []
  for t in range(steps):
    g = np_grad(p)
    lr_t = lr(t)
    for k in NAMES:
      buf[k] = g[k].copy() if t == 0 else momentum * buf[k] + g[k]
      direction = g[k] + momentum * buf[k] if nesterov else buf[k]
      decay = {"decoupled": lr_t * wd, "paper": lr_t / base * wd, "independent": wd}[mode]
      p[k] = p[k] - lr_t * direction - decay * p[k]
    traj.append({k: x.copy() for k, x in p.items()})
  return traj


def assert_traj(got, want, tol):
  assert len(got) == len(want)
  for step, (g, w) in enumerate(zip(got, want)):
    for k in NAMES:
      np.testing.assert_allclose(g[k], w[k], err_msg=f"step {step} {k}", **tol)


def _groups(p, wd, decayed):
  return [
      {"params": [p[k] for k in NAMES if k in decayed], "weight_decay": wd},
      {"params": [p[k] for k in NAMES if k not in decayed], "weight_decay": 0.0},
  ]


# ------------------------------------------------------------------------------------------------
# Trajectory parity.
# ------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize(
    "lr,wd,betas,eps", [(1e-2, 1e-2, (0.9, 0.999), 1e-8), (3e-2, 0.3, (0.8, 0.99), 1e-6)]
)
def test_adamw_decoupled_matches_torch_adamw_and_optax(x64, lr, wd, betas, eps):
  tx = adamw(lr, weight_decay=wd, b1=betas[0], b2=betas[1], eps=eps)
  got = run_jax(tx)
  want = run_torch(lambda p: torch.optim.AdamW(p.values(), lr=lr, betas=betas, eps=eps,
                                               weight_decay=wd))
  assert_traj(got, want, TIGHT)
  ref = run_jax(optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=wd))
  assert_traj(got, ref, TIGHT)
  # The decay moves the trajectory (else this test could not tell modes apart).
  no_decay = run_jax(adamw(lr, weight_decay=0.0))[-1]["Dense_0/kernel"]
  assert not np.allclose(got[-1]["Dense_0/kernel"], no_decay)


@pytest.mark.torch
def test_adamw_decoupled_float32_matches_torch():
  got = run_jax(adamw(1e-2, weight_decay=0.1), dtype=np.float32)
  want = run_torch(lambda p: torch.optim.AdamW(p.values(), lr=1e-2, weight_decay=0.1),
                   dtype=np.float32)
  assert_traj(got, want, LOOSE)


@pytest.mark.torch
def test_adamw_default_weight_decay_is_torch_default(x64):
  assert_traj(run_jax(adamw(1e-2)), run_torch(lambda p: torch.optim.AdamW(p.values(), lr=1e-2)),
              TIGHT)


@pytest.mark.torch
@pytest.mark.parametrize("wd,betas,eps", [(0.1, (0.9, 0.999), 1e-8), (0.5, (0.8, 0.99), 1e-6)])
def test_adamw_l2_matches_torch_adam(x64, wd, betas, eps):
  got = run_jax(adamw(2e-2, weight_decay=wd, decay="l2", b1=betas[0], b2=betas[1], eps=eps))
  want = run_torch(lambda p: torch.optim.Adam(p.values(), lr=2e-2, betas=betas, eps=eps,
                                              weight_decay=wd))
  assert_traj(got, want, TIGHT)


@pytest.mark.torch
def test_adamw_none_matches_torch_adam(x64):
  assert_traj(run_jax(adamw(2e-2, weight_decay=0.5, decay="none")),
              run_torch(lambda p: torch.optim.Adam(p.values(), lr=2e-2)), TIGHT)


@pytest.mark.torch
@pytest.mark.parametrize(
    "momentum,nesterov,wd", [(0.0, False, 0.1), (0.9, False, 0.05), (0.9, True, 0.1),
                             (0.5, True, 0.0)]
)
def test_sgd_l2_matches_torch_sgd(x64, momentum, nesterov, wd):
  got = run_jax(sgd(0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd))
  want = run_torch(lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=momentum,
                                             nesterov=nesterov, weight_decay=wd))
  assert_traj(got, want, TIGHT)


@pytest.mark.torch
def test_sgd_float32_matches_torch():
  got = run_jax(sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1), dtype=np.float32)
  want = run_torch(lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=0.9, nesterov=True,
                                             weight_decay=0.1), dtype=np.float32)
  assert_traj(got, want, LOOSE)


def _cosine(t, total=STEPS):
  """The paper's cosine schedule multiplier (no restarts): eta(0) = 1."""
  return 0.5 * (1.0 + jnp.cos(math.pi * t / total))


def _np_cosine(t, total=STEPS):
  return 0.5 * (1.0 + math.cos(math.pi * t / total))


@pytest.mark.parametrize("wd", [0.1, 0.5])
def test_adamw_paper_matches_algorithm_2(x64, wd):
  alpha = 3e-2
  got = run_jax(adamw(lambda t: alpha * _cosine(t), weight_decay=wd, decay="paper"))
  assert_traj(got, np_adam(alpha, _np_cosine, wd, mode="paper"), TIGHT)


def test_adamw_paper_with_warmup_needs_and_uses_base_lr(x64):
  alpha, wd = 3e-2, 0.2
  eta = lambda t: np.minimum(1.0, 0.25 * (t + 1))  # warmup: eta(0) = 0.25, not 1
  got = run_jax(adamw(lambda t: alpha * jnp.minimum(1.0, 0.25 * (t + 1)), weight_decay=wd,
                      decay="paper",
                      base_lr=alpha, b1=0.8, b2=0.99, eps=1e-6))
  assert_traj(got, np_adam(alpha, eta, wd, mode="paper", b1=0.8, b2=0.99, eps=1e-6), TIGHT)


def test_adamw_paper_constant_lr_and_independent(x64):
  # A constant rate: eta_t = lr / base_lr.
  got = run_jax(adamw(2e-2, weight_decay=0.1, decay="paper", base_lr=4e-2))
  assert_traj(got, np_adam(4e-2, lambda t: 0.5, 0.1, mode="paper"), TIGHT)
  # Independent: decay not scaled by any rate.
  got = run_jax(adamw(lambda t: 3e-2 * _cosine(t), weight_decay=0.05, decay="independent"))
  assert_traj(got, np_adam(3e-2, _np_cosine, 0.05, mode="independent"), TIGHT)


@pytest.mark.parametrize(
    "mode,momentum,nesterov", [("decoupled", 0.9, False), ("paper", 0.9, True),
                               ("independent", 0.0, False)]
)
def test_sgd_decoupled_modes_match_numpy(x64, mode, momentum, nesterov):
  lr = lambda t: 0.1 * _cosine(t)
  got = run_jax(sgd(lr, momentum=momentum, nesterov=nesterov, weight_decay=0.2, decay=mode))
  want = np_sgd(lambda t: 0.1 * _np_cosine(t), 0.2, mode=mode, momentum=momentum,
                nesterov=nesterov, base=0.1)
  assert_traj(got, want, TIGHT)


@pytest.mark.torch
@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_lr_schedule_matches_torch_lambdalr(x64, decay):
  lr0, wd = 2e-2, 0.3
  factor = lambda t: 1.0 / (1.0 + 0.5 * t)
  got = run_jax(adamw(lambda t: lr0 * factor(t), weight_decay=wd, decay=decay))
  cls = torch.optim.AdamW if decay == "decoupled" else torch.optim.Adam
  want = run_torch(lambda p: cls(p.values(), lr=lr0, weight_decay=wd), lr_lambda=factor)
  assert_traj(got, want, TIGHT)


@pytest.mark.torch
def test_sgd_lr_schedule_matches_torch_lambdalr(x64):
  factor = lambda t: 1.0 / (1.0 + 0.5 * t)
  got = run_jax(sgd(lambda t: 0.1 * factor(t), momentum=0.9, nesterov=True, weight_decay=0.1))
  want = run_torch(lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=0.9, nesterov=True,
                                             weight_decay=0.1), lr_lambda=factor)
  assert_traj(got, want, TIGHT)


# ------------------------------------------------------------------------------------------------
# Masks.
# ------------------------------------------------------------------------------------------------

_MASKS = [
    ("no_bias_norm", KERNELS),
    (no_bias_norm_mask, KERNELS),
    ({"Dense_0": True, "Dense_1": {"kernel": True, "bias": False}},  # a prefix tree
     {"Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel"}),
    (lambda p: {"Dense_0": {"kernel": False, "bias": True}, "Dense_1": False}, {"Dense_0/bias"}),
]


@pytest.mark.torch
@pytest.mark.parametrize("mask,decayed", _MASKS)
def test_masked_adamw_matches_torch_param_groups(x64, mask, decayed):
  wd = 0.5
  got = run_jax(adamw(2e-2, weight_decay=wd, mask=mask))
  assert_traj(got, run_torch(lambda p: torch.optim.AdamW(_groups(p, wd, decayed), lr=2e-2)),
              TIGHT)
  bools = {k: k in decayed for k in NAMES}
  optax_mask = {layer: {leaf: bools[f"{layer}/{leaf}"] for leaf in ("kernel", "bias")}
                for layer in ("Dense_0", "Dense_1")}
  assert_traj(got, run_jax(optax.adamw(2e-2, weight_decay=wd, mask=optax_mask)), TIGHT)


@pytest.mark.torch
@pytest.mark.parametrize("mask,decayed", _MASKS[::2])
def test_masked_l2_matches_torch_param_groups(x64, mask, decayed):
  got = run_jax(sgd(0.1, momentum=0.9, weight_decay=0.3, mask=mask))
  want = run_torch(lambda p: torch.optim.SGD(_groups(p, 0.3, decayed), lr=0.1, momentum=0.9))
  assert_traj(got, want, TIGHT)
  got = run_jax(adamw(2e-2, weight_decay=0.3, decay="l2", mask=mask))
  want = run_torch(lambda p: torch.optim.Adam(_groups(p, 0.3, decayed), lr=2e-2))
  assert_traj(got, want, TIGHT)


def test_masked_paper_matches_numpy(x64):
  alpha = 3e-2
  got = run_jax(adamw(lambda t: alpha * _cosine(t), weight_decay=0.5, decay="paper",
                      mask="no_bias_norm"))
  assert_traj(got, np_adam(alpha, _np_cosine, 0.5, mode="paper", decayed=KERNELS), TIGHT)


def test_no_bias_norm_mask_linen():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.LayerNorm()(nn.Dense(4)(x))
      return nn.DenseGeneral((2, 2), name="attn")(x)  # a 2-D bias

  class Net(nn.Module):
    @nn.compact
    def __call__(self, ids):
      x = nn.Embed(5, 4)(ids)
      x = Block()(x).reshape(ids.shape + (4,))
      x = nn.BatchNorm(use_running_average=True)(x)
      return nn.Dense(1, name="head")(x) * self.param("gain", nn.initializers.ones, ())

  # Shapes are all the mask needs: eval_shape gives ShapeDtypeStructs without computing.
  params = jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((2,), jnp.int32))["params"]
  got = _flat(no_bias_norm_mask(params))
  assert {k for k, v in got.items() if v} == {
      "Embed_0/embedding", "Block_0/Dense_0/kernel", "Block_0/attn/kernel", "head/kernel"}
  assert set(got) == {
      "Embed_0/embedding", "Block_0/Dense_0/kernel", "Block_0/Dense_0/bias",
      "Block_0/LayerNorm_0/scale", "Block_0/LayerNorm_0/bias", "Block_0/attn/kernel",
      "Block_0/attn/bias", "BatchNorm_0/scale", "BatchNorm_0/bias", "head/kernel", "head/bias",
      "gain"}
  assert params["Block_0"]["attn"]["bias"].ndim == 2  # excluded by name, not by ndim


class _NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs)])
    self.ln_f = nnx.LayerNorm(4, rngs=rngs)
    self.ln_f.scale = nnx.Param(jnp.ones((2, 2)))  # 2-D, excluded by the layer name
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    x = self.norm(jnp.tanh(self.linear(x)))
    x = self.layers[0](x)
    return self.out(x * self.ln_f.bias[None, :] + jnp.sum(self.ln_f.scale[...]))


def test_no_bias_norm_mask_nnx_state_and_pure_state():
  state = nnx.state(nnx.eval_shape(lambda: _NnxNet(nnx.Rngs(0))), nnx.Param)
  want = {"linear/kernel", "layers/0/kernel", "out/kernel"}
  for tree in (state, nnx.as_pure(state)):
    got = jax.tree_util.tree_flatten_with_path(no_bias_norm_mask(tree))[0]
    got = {path_str(p).removesuffix("/value"): v for p, v in got}
    assert {k for k, v in got.items() if v} == want
    assert len(got) == 10


def test_mask_structure_mismatch_raises():
  params = _tree(P0, np.float32)
  with pytest.raises(ValueError, match=r"adamw: mask must be a pytree of bools with the params' "
                     r"structure .*no mask entry for \['Dense_1/bias', 'Dense_1/kernel'\].*"
                     r"mask structure: \['Dense_0'\], params structure: \['Dense_0/bias'"):
    adamw(0.1, mask={"Dense_0": True}).init(params)
  with pytest.raises(ValueError, match=r"l1_regularization: mask must .*mask entries "
                     r"\['Dense_2'\] name no parameter"):
    l1_regularization(0.1, mask=lambda p: {"Dense_0": True, "Dense_1": True, "Dense_2": True}
                      ).init(params)
  with pytest.raises(ValueError, match=r"decoupled_weight_decay: mask leaves must be Python "
                     r"bools \(True = decay\), got mask\['Dense_0/bias'\]"):
    decoupled_weight_decay(0.1, mask=params).init(params)


# ------------------------------------------------------------------------------------------------
# The building blocks against their formulas.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("mask", [None, "no_bias_norm"])
def test_l1_l2_regularization_formula(x64, kind, mask):
  wd = 0.3
  params = _tree(P0, np.float64)
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[0, 0].set(0.0)  # sign(0) = 0
  grads = _grad(params, jnp.asarray(X), jnp.asarray(Y))
  make = l1_regularization if kind == "l1" else l2_regularization
  tx = make(wd, mask=mask)
  state = tx.init(params)
  got, state = tx.update(grads, state, params)
  got = _flat(got)
  p, g = _flat(params), _flat(grads)
  for k in NAMES:
    term = np.sign(p[k]) if kind == "l1" else p[k]
    lam = wd if (mask is None or k in KERNELS) else 0.0
    np.testing.assert_allclose(got[k], g[k] + lam * term, **TIGHT)


@pytest.mark.parametrize(
    "schedule,s",
    [(None, lambda t: 1.0), (0.5, lambda t: 0.5), (lambda t: 0.8**t, lambda t: 0.8**t)],
)
def test_decoupled_weight_decay_formula(x64, schedule, s):
  wd = 0.2
  params = _tree(P0, np.float64)
  tx = decoupled_weight_decay(wd, schedule=schedule, mask="no_bias_norm")
  state = tx.init(params)
  u = _tree({k: 0.01 * np.ones_like(v) for k, v in P0.items()}, np.float64)
  for t in range(3):
    got, state = tx.update(u, state, params)
    for k, v in _flat(got).items():
      lam = wd if k in KERNELS else 0.0
      np.testing.assert_allclose(v, 0.01 - lam * s(t) * P0[k], **TIGHT)


def test_decoupled_weight_decay_chain_equals_optax_adamw(x64):
  """adam -> lr -> decoupled decay with s = lr schedule is optax.adamw (decay * lr)."""
  lr = lambda t: 2e-2 / (1.0 + 0.3 * t)
  tx = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(lr),
                   decoupled_weight_decay(0.4, schedule=lr))
  assert_traj(run_jax(tx), run_jax(optax.adamw(lr, weight_decay=0.4)), TIGHT)


# ------------------------------------------------------------------------------------------------
# jit == eager, vmap == loop, no retrace.
# ------------------------------------------------------------------------------------------------

_TOY = {"Dense_0": {"kernel": ((0.5, -1.0), (1.5, 0.2)), "bias": (0.3, -0.4)}}


def _toy_run(make_tx, hp, steps=3):
  params = jax.tree.map(jnp.asarray, _TOY, is_leaf=lambda v: isinstance(v, tuple))
  tx = make_tx(hp)
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: jnp.tanh(p) + 0.3 - 0.2 * p**2, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _hp(**values):
  return {k: np.asarray(v) for k, v in values.items()}


_ADAM_HP = _hp(lr=[1e-2, 3e-2, 1e-1], wd=[0.0, 0.1, 0.7], b1=[0.0, 0.8, 0.95],
               b2=[0.5, 0.9, 0.999], eps=[1e-8, 1e-3, 0.1], base=[1e-2, 5e-2, 0.2])
_SGD_HP = _hp(lr=[1e-2, 3e-2, 1e-1], wd=[0.0, 0.1, 0.7], mom=[0.1, 0.5, 0.9],
              base=[1e-2, 5e-2, 0.2])
_WD_HP = _hp(lr=[1e-2, 3e-2, 1e-1], wd=[0.0, 0.1, 0.7], s=[0.1, 0.5, 1.0])

_CASES = {
    **{f"adamw-{mode}": (lambda h, mode=mode: adamw(
        h["lr"], weight_decay=h["wd"], decay=mode, b1=h["b1"], b2=h["b2"], eps=h["eps"],
        base_lr=h["base"],
        mask="no_bias_norm"), _ADAM_HP) for mode in ("decoupled", "paper", "independent", "l2")},
    "adamw-paper-schedule": (lambda h: adamw(lambda t: h["lr"] * 0.8**t, weight_decay=h["wd"],
                                             decay="paper", b1=h["b1"], b2=h["b2"]), _ADAM_HP),
    **{f"sgd-{mode}": (lambda h, mode=mode: sgd(
        h["lr"], momentum=h["mom"], nesterov=mode == "l2", weight_decay=h["wd"], decay=mode,
        base_lr=h["base"]), _SGD_HP)
       for mode in ("l2", "decoupled", "paper", "independent")},
    "sgd-paper-schedule": (lambda h: sgd(lambda t: h["lr"] * 0.8**t, momentum=h["mom"],
                                         nesterov=True, weight_decay=h["wd"], decay="paper"),
                           _SGD_HP),
    "l2": (lambda h: optax.chain(l2_regularization(h["wd"]), optax.sgd(h["lr"])), _WD_HP),
    "l1": (lambda h: optax.chain(l1_regularization(h["wd"], mask="no_bias_norm"),
                                 optax.sgd(h["lr"])), _WD_HP),
    "decoupled-const": (lambda h: optax.chain(optax.sgd(h["lr"]), decoupled_weight_decay(
        h["wd"], schedule=h["s"])), _WD_HP),
    "decoupled-schedule": (lambda h: optax.chain(optax.sgd(h["lr"]), decoupled_weight_decay(
        h["wd"], schedule=lambda t: h["s"] * 0.5**t, mask="no_bias_norm")), _WD_HP),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_jit_eager_vmap_loop_no_retrace(x64, name):
  make_tx, hps = _CASES[name]
  hps = {k: jnp.asarray(v) for k, v in hps.items()}
  traces = []

  def run(hp):
    traces.append(1)
    return _toy_run(make_tx, hp)

  configs = [jax.tree.map(lambda v, i=i: v[i], hps) for i in range(3)]
  jitted = jax.jit(run)
  loop = [jitted(c) for c in configs]
  assert len(traces) == 1, "changing hyperparameter values retraced"
  eager = run(configs[1])
  batched = jax.jit(jax.vmap(run))(hps)
  assert len(traces) == 3
  for i, want in enumerate(loop):
    got = jax.tree.map(lambda v, i=i: v[i], batched)
    chex_tree_allclose(got, want, **TIGHT)
  chex_tree_allclose(eager, loop[1], **TIGHT)
  # The configs differ, so the comparison above is not vacuous.
  assert not np.allclose(loop[0]["Dense_0"]["kernel"], loop[2]["Dense_0"]["kernel"])


def chex_tree_allclose(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


# ------------------------------------------------------------------------------------------------
# flax nnx, optax.chain, optax.inject_hyperparams.
# ------------------------------------------------------------------------------------------------

_NNX_TX = {
    "adamw": lambda: adamw(1e-2, weight_decay=0.1, mask="no_bias_norm"),
    "sgd": lambda: sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
                       mask=no_bias_norm_mask),
    "l2": lambda: optax.chain(l2_regularization(0.1, mask="no_bias_norm"), optax.adam(1e-2)),
    "l1": lambda: optax.chain(l1_regularization(0.1), optax.sgd(0.1)),
    "decoupled": lambda: optax.chain(optax.adam(1e-2), decoupled_weight_decay(
        0.1, schedule=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))),
}


@pytest.mark.parametrize("name", list(_NNX_TX))
def test_through_nnx_optimizer(name):
  x = jnp.asarray(X[:, :3], jnp.float32)
  loss = lambda model: jnp.mean(model(x) ** 2)
  model = _NnxNet(nnx.Rngs(0))
  opt = nnx.Optimizer(model, _NNX_TX[name](), wrt=nnx.Param)
  for _ in range(2):
    opt.update(model, nnx.grad(loss)(model))

  graphdef, params, rest = nnx.split(_NnxNet(nnx.Rngs(0)), nnx.Param, ...)
  params = nnx.as_pure(params)
  tx = _NNX_TX[name]()
  state = tx.init(params)
  pure_loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)
  for _ in range(2):
    updates, state = tx.update(jax.grad(pure_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  chex_tree_allclose(nnx.as_pure(nnx.state(model, nnx.Param)), params, rtol=1e-6, atol=1e-7)
  start = nnx.as_pure(nnx.state(_NnxNet(nnx.Rngs(0)), nnx.Param))
  assert not np.allclose(params["linear"]["kernel"], start["linear"]["kernel"])


def test_nnx_mask_tree_from_state_with_variables():
  """A mask built from nnx.state (Variable boxes) matches the pure state nnx.Optimizer passes."""
  model = _NnxNet(nnx.Rngs(0))
  mask = jax.tree.map(lambda v: v.ndim > 1, nnx.state(model, nnx.Param))
  before = nnx.as_pure(nnx.state(model, nnx.Param))
  opt = nnx.Optimizer(model, sgd(0.1, weight_decay=0.5, decay="independent", mask=mask),
                      wrt=nnx.Param)
  zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  opt.update(model, zero)
  after = nnx.as_pure(nnx.state(model, nnx.Param))
  np.testing.assert_allclose(after["linear"]["kernel"], 0.5 * before["linear"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(after["linear"]["bias"], before["linear"]["bias"])


@pytest.mark.torch
def test_inject_hyperparams_adamw_matches_torch_with_changed_values(x64):
  tx = optax.inject_hyperparams(adamw)(learning_rate=2e-2, weight_decay=0.1)
  params = _tree(P0, np.float64)
  x, y = jnp.asarray(X), jnp.asarray(Y)
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(p, s):
    traces.append(1)
    return tx.update(_grad(p, x, y), s, p)

  traj = []
  for t in range(6):
    if t == 3:
      state.hyperparams["learning_rate"] = jnp.asarray(5e-2, jnp.float64)
      state.hyperparams["weight_decay"] = jnp.asarray(0.4, jnp.float64)
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    traj.append(_flat(params))
  assert len(traces) == 1  # new hyperparameter values did not retrace

  def make(p):
    opt = torch.optim.AdamW(p.values(), lr=2e-2, weight_decay=0.1)
    original_step = opt.step
    calls = []

    def stepper():
      if len(calls) == 3:
        for g in opt.param_groups:
          g["lr"], g["weight_decay"] = 5e-2, 0.4
      calls.append(1)
      original_step()

    opt.step = stepper
    return opt

  assert_traj(traj, run_torch(make, steps=6), TIGHT)


def test_inject_hyperparams_paper_with_base_lr(x64):
  alpha = 3e-2
  tx = optax.inject_hyperparams(adamw)(learning_rate=lambda t: alpha * _cosine(t),
                                       weight_decay=0.3, decay="paper", base_lr=alpha)
  assert_traj(run_jax(tx), np_adam(alpha, _np_cosine, 0.3, mode="paper"), TIGHT)


def test_inject_hyperparams_decoupled_weight_decay(x64):
  mask = lambda p: jax.tree.map(lambda v: v.ndim > 1, p)
  tx = optax.inject_hyperparams(decoupled_weight_decay, static_args=("mask",))(
      weight_decay=0.2, schedule=lambda t: 0.5**t, mask=mask)
  params = _tree(P0, np.float64)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for t in range(3):
    if t == 2:
      state.hyperparams["weight_decay"] = jnp.asarray(0.7, jnp.float64)
    got, state = tx.update(zeros, state, params)
    lam = 0.7 if t == 2 else 0.2
    for k, v in _flat(got).items():
      np.testing.assert_allclose(v, -(lam if k in KERNELS else 0.0) * 0.5**t * P0[k], **TIGHT)


# ------------------------------------------------------------------------------------------------
# Bad input.
# ------------------------------------------------------------------------------------------------

_BAD = [
    (lambda: adamw(0.1, weight_decay=-1.0),
     r"adamw: weight_decay must be >= 0, got weight_decay=-1.0"),
    (lambda: adamw(0.1, decay="adam"),
     r"adamw: decay must be one of 'decoupled', 'paper', 'independent', 'l2', 'none', "
     r"got decay='adam'"),
    (lambda: adamw(0.0), r"adamw: learning_rate must be > 0, got learning_rate=0.0"),
    (lambda: adamw(np.array([0.1, -0.1])),
     r"adamw: learning_rate must be > 0, got learning_rate=\[0.1, -0.1\]"),
    (lambda: adamw(0.1, b1=1.0), r"adamw: b1 must be in \[0.0, 1.0\), got b1=1.0"),
    (lambda: adamw(0.1, b2=-0.1), r"adamw: b2 must be in \[0.0, 1.0\), got b2=-0.1"),
    (lambda: adamw(0.1, eps=-1e-8), r"adamw: eps must be >= 0, got eps=-1e-08"),
    (lambda: adamw(0.1, decay="paper", base_lr=0.0),
     r"adamw: base_lr must be > 0, got base_lr=0.0"),
    (lambda: adamw(lambda t: 0.1 * t, decay="paper"),
     r"adamw: base_lr must be > 0 \(it defaults to learning_rate\(0\); pass base_lr.*\), "
     r"got base_lr=0.0"),
    (lambda: adamw(0.1, mask="biases"),
     r"adamw: mask must be one of 'no_bias_norm', got mask='biases'"),
    (lambda: sgd(-0.1), r"sgd: learning_rate must be > 0, got learning_rate=-0.1"),
    (lambda: sgd(0.1, momentum=1.0), r"sgd: momentum must be in \[0.0, 1.0\), got momentum=1.0"),
    (lambda: sgd(0.1, momentum=-0.5), r"sgd: momentum must be in \[0.0, 1.0\), got momentum=-0.5"),
    (lambda: sgd(0.1, nesterov=True),
     r"sgd: momentum must be > 0 when nesterov=True \(as in torch.optim.SGD\), got momentum=0.0"),
    (lambda: sgd(0.1, weight_decay=-1), r"sgd: weight_decay must be >= 0, got weight_decay=-1"),
    (lambda: sgd(0.1, decay="adamw"), r"sgd: decay must be one of .*got decay='adamw'"),
    (lambda: l2_regularization(-0.1),
     r"l2_regularization: weight_decay must be >= 0, got weight_decay=-0.1"),
    (lambda: l1_regularization(jnp.asarray(-0.5)),
     r"l1_regularization: weight_decay must be >= 0, got weight_decay=-0.5"),
    (lambda: decoupled_weight_decay(-0.1),
     r"decoupled_weight_decay: weight_decay must be >= 0, got weight_decay=-0.1"),
    (lambda: decoupled_weight_decay(0.1, schedule=-1.0),
     r"decoupled_weight_decay: schedule must be >= 0, got schedule=-1.0"),
]


@pytest.mark.parametrize("make,message", _BAD)
def test_bad_input_raises(make, message):
  with pytest.raises(ValueError, match=message):
    make()


# Every numeric hyperparameter of every public transform here, with valid values.
_NUMERIC = [
    ("adamw", adamw, dict(learning_rate=0.1, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8,
                          base_lr=0.1), dict(decay="paper")),
    ("sgd", sgd, dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1, base_lr=0.1),
     dict(decay="paper")),
    ("l2_regularization", l2_regularization, dict(weight_decay=0.1), {}),
    ("l1_regularization", l1_regularization, dict(weight_decay=0.1), {}),
    ("decoupled_weight_decay", decoupled_weight_decay, dict(weight_decay=0.1, schedule=0.5), {}),
]
_NUMERIC_ARGS = [pytest.param(fn, make, kw, extra, arg, id=f"{fn}-{arg}")
                 for fn, make, kw, extra in _NUMERIC for arg in kw]


@pytest.mark.parametrize("fn,make,kw,extra,arg", _NUMERIC_ARGS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_hyperparameters_raise(fn, make, kw, extra, arg, bad):
  """``adamw(lr=inf)`` used to build an optimizer whose first step is NaN."""
  with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be finite and .*, got {arg}=-?inf$"):
    make(**{**kw, **extra, arg: bad})


@pytest.mark.parametrize("fn,make,kw,extra,arg", _NUMERIC_ARGS)
def test_bool_hyperparameters_raise(fn, make, kw, extra, arg):
  """``True`` is not a number here (``adamw(True)`` used to train with ``lr = 1``)."""
  for bad in (True, np.bool_(False), jnp.asarray(True)):
    with pytest.raises(ValueError, match=rf"^{fn}: {arg} must be a number .*, not a bool, "
                                         rf"got {arg}=(True|False)$"):
      make(**{**kw, **extra, arg: bad})


@pytest.mark.parametrize("fn,make,kw,extra", [pytest.param(*n, id=n[0]) for n in _NUMERIC])
def test_numpy_scalar_hyperparameters_are_accepted(fn, make, kw, extra):
  """``np.float32(0.1)`` (what a NumPy grid hands over) gives the Python number's updates."""
  params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]])}
  grads = {"w": jnp.asarray([[0.3, -0.1], [0.2, 0.4]])}
  want_tx = make(**kw, **extra)
  got_tx = make(**{k: np.float32(v) for k, v in kw.items()}, **extra)
  want = want_tx.update(grads, want_tx.init(params), params)[0]
  got = got_tx.update(grads, got_tx.init(params), params)[0]
  # float32 rounding only (Adam's bias correction 1 - b2 amplifies it): rtol 1e-5
  np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, err_msg=fn)


def test_every_argument_after_the_learning_rate_is_keyword_only():
  """``optaxlr.adamw(lr, 0.9)`` would set weight decay where ``optax.adamw(lr, 0.9)`` sets
  ``b1``; ``torch.optim.SGD``'s third positional argument is ``dampening``."""
  for factory in (adamw, sgd):
    params = list(inspect.signature(factory).parameters.values())
    assert params[0].name == "learning_rate"
    assert all(p.kind is p.KEYWORD_ONLY for p in params[1:]), factory.__name__
  params = list(inspect.signature(decoupled_weight_decay).parameters.values())
  assert [p.name for p in params if p.kind is p.KEYWORD_ONLY] == ["schedule", "mask"]
  with pytest.raises(TypeError, match="positional argument"):
    adamw(1e-3, 0.9)
  with pytest.raises(TypeError, match="positional argument"):
    sgd(0.1, 0.9)
  with pytest.raises(TypeError, match="positional argument"):
    decoupled_weight_decay(0.1, lambda t: 1.0)


def test_missing_params_raises():
  params = {"w": jnp.ones((2, 2))}
  for tx, fn in [(decoupled_weight_decay(0.1), "decoupled_weight_decay"),
                 (l1_regularization(0.1), "l1_regularization")]:
    with pytest.raises(ValueError, match=fn + r": params must be passed to update"):
      tx.update(params, tx.init(params))


def test_traced_values_are_not_checked():
  """Validation skips tracers (the sweep engine checks grids on the host)."""
  out = jax.jit(lambda lr: _toy_run(lambda h: adamw(h, weight_decay=0.1), lr))(jnp.asarray(-1.0))
  assert np.all(np.isfinite(np.asarray(out["Dense_0"]["kernel"])))

