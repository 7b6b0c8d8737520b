"""Plain Optuna around a hand-written jitted training chunk: the baseline of optuna_bench.py.

What a user writes without optaxlr: ``study.optimize(objective, n_trials)``, where the
objective trains one trial's MLP with ``optax.adamw(lr, weight_decay=wd)``, one compiled chunk
of ``eval_every`` steps at a time (the rate and decay are traced arguments, so every trial
reuses the same compiled chunk), evaluates after each chunk, reports the validation loss
(``trial.report``) and raises ``optuna.TrialPruned`` when ``trial.should_prune()``.

It imports JAX, optax, Optuna and benchmarks/handwritten.py (the MLP, its init and the
minibatch order), nothing from optaxlr (optuna_bench.py checks the imports before it runs).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import optuna

from handwritten import apply_mlp, batch_order, cross_entropy, init_mlp, seed_keys

__all__ = ["make_objective"]


def make_objective(sizes, data, *, steps: int, batch: int, eval_every: int, lr_range, wd_range):
  """``objective(trial) -> final val loss`` with pruning after every ``eval_every`` steps."""
  x, y, x_eval, y_eval = (jnp.asarray(a) for a in data)
  if steps % eval_every:
    raise ValueError(f"make_objective: steps={steps} must be a multiple of eval_every")
  n_chunks = steps // eval_every

  def loss_fn(params, xb, yb):
    return cross_entropy(apply_mlp(params, xb), yb)

  @jax.jit
  def chunk(params, opt_state, lr, wd, idx):
    tx = optax.adamw(lr, weight_decay=wd)

    def step(carry, i):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[i], y[i])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, losses, cross_entropy(apply_mlp(params, x_eval), y_eval)

  order = jax.jit(batch_order, static_argnums=(1, 2, 3))

  def objective(trial):
    lr = trial.suggest_float("lr", *lr_range, log=True)
    wd = trial.suggest_float("wd", *wd_range, log=True)
    init_key, data_key = seed_keys(0, 0)
    params = init_mlp(init_key, sizes)
    opt_state = optax.adamw(lr, weight_decay=wd).init(params)
    idx = order(data_key, x.shape[0], batch, steps).reshape(n_chunks, eval_every, batch)
    val = float("nan")
    for c in range(n_chunks):
      params, opt_state, _, val_loss = chunk(params, opt_state, jnp.float32(lr), jnp.float32(wd),
                                             idx[c])
      val = float(val_loss)
      if not math.isfinite(val):
        return float("nan")  # diverged: Optuna tells a NaN as FAIL (so does the bridge)
      trial.report(val, (c + 1) * eval_every)
      if trial.should_prune():
        raise optuna.TrialPruned()
    return val

  return objective
