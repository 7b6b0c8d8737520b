"""The hand-written baselines of ``sweep_bench.py``: JAX and optax only, NO optaxlr.

This module is what a careful JAX engineer writes to train one model over a grid of
hyperparameters without a sweep library. It imports nothing from optaxlr (``sweep_bench.py``
checks its imports before it runs), so the benchmark compares the engine with an independent
program rather than with a copy of its own pieces. It holds:

* the model: a ReLU MLP, He-normal weights and zero biases, softmax cross-entropy;
* the minibatch order, cut before training: epoch ``e`` is
  ``jax.random.permutation(fold_in(data_key, e), N)``, step ``t`` takes the ``B`` examples at
  position ``t % (N // B)`` of epoch ``t // (N // B)`` (the rest of an epoch is dropped);
* ``make_train``: ``train(lr, wd, init_key, data_key, data) -> (losses, val_loss, val_acc)``,
  AdamW under ``lax.scan``, an evaluation on the whole eval split after every ``eval_every``
  steps; ``jax.jit(jax.vmap(train))`` over the configs is the hand-written sweep (the
  minibatch depends on no hyperparameter, so ``vmap`` gathers it once for every config);
* ``naive_loop``: the loop most people write (a fresh ``optax.adamw`` and jitted step per config,
  a Python loop over steps);
* ``torch_loop``: the same naive loop in PyTorch.

The keys follow one documented convention, ``fold_in(fold_in(key, seed), 0 or 1)`` for the
initial parameters and the minibatch order, which is also optaxlr's; so the two programs see the
same data in the same order and the benchmark can check that they compute the same numbers.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["seed_keys", "init_mlp", "apply_mlp", "cross_entropy", "batch_order", "make_train",
           "naive_loop", "torch_loop"]


def seed_keys(key: int, seed: int) -> tuple[jax.Array, jax.Array]:
  """``(init_key, data_key)`` of one seed: ``fold_in(fold_in(PRNGKey(key), seed), 0 / 1)``."""
  k = jax.random.fold_in(jax.random.PRNGKey(key), seed)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  """He-normal weights ``N(0, 2 / fan_in)`` from ``fold_in(key, layer)``, zero biases."""
  params = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    w = jax.random.normal(jax.random.fold_in(key, i), (a, b)) * jnp.sqrt(2.0 / a)
    params.append({"w": w, "b": jnp.zeros((b,))})
  return params


def apply_mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return h @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def batch_order(data_key: jax.Array, n: int, batch: int, steps: int) -> jax.Array:
  """The ``(steps, batch)`` example indices of a run: one permutation per epoch, cut in rows."""
  per_epoch = n // batch
  epochs = -(-steps // per_epoch)
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n))(
      jnp.arange(epochs))
  return perms[:, : per_epoch * batch].reshape(epochs * per_epoch, batch)[:steps]


def make_train(sizes: tuple[int, ...], *, steps: int, batch: int, eval_every: int):
  """``train(lr, wd, init_key, data_key, data) -> (losses (steps,), val_loss, val_acc)``.

  ``data = (x, y, x_eval, y_eval)``; the evaluation arrays have one entry per ``eval_every``
  steps. ``steps`` must be a multiple of ``eval_every``.
  """
  if steps % eval_every:
    raise ValueError(f"make_train: steps={steps} must be a multiple of eval_every={eval_every}")
  n_evals = steps // eval_every

  def loss_fn(params, x, y):
    return cross_entropy(apply_mlp(params, x), y)

  def train(lr, wd, init_key, data_key, data):
    x, y, x_eval, y_eval = data
    order = batch_order(data_key, x.shape[0], batch, steps).reshape(n_evals, eval_every, batch)
    params = init_mlp(init_key, sizes)
    tx = optax.adamw(lr, weight_decay=wd)
    opt_state = tx.init(params)

    def step(carry, idx):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    def interval(carry, idx):
      carry, losses = jax.lax.scan(step, carry, idx)
      logits = apply_mlp(carry[0], x_eval)
      return carry, (losses, cross_entropy(logits, y_eval), accuracy(logits, y_eval))

    _, (losses, val_loss, val_acc) = jax.lax.scan(interval, (params, opt_state), order)
    return losses.reshape(steps), val_loss, val_acc

  return train


def naive_loop(sizes, data, lrs, wds, init_key, data_key, *, steps, batch, eval_every):
  """Per config a fresh ``optax.adamw(lr, wd)`` and jitted step, a Python loop over steps, the
  minibatch taken outside the jitted step; returns the seconds (compilations included: that is
  what this loop costs its user)."""
  x, y, x_eval, y_eval = data
  evaluate = jax.jit(lambda p: (cross_entropy(apply_mlp(p, x_eval), y_eval),
                                accuracy(apply_mlp(p, x_eval), y_eval)))
  t0 = time.perf_counter()
  order = jax.jit(batch_order, static_argnums=(1, 2, 3))(data_key, x.shape[0], batch, steps)
  for lr, wd in zip(lrs, wds):
    tx = optax.adamw(float(lr), weight_decay=float(wd))
    params = init_mlp(init_key, sizes)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
      loss, grads = jax.value_and_grad(lambda p: cross_entropy(apply_mlp(p, xb), yb))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    losses, evals = [], []
    for t in range(steps):
      idx = order[t]
      params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
      losses.append(loss)
      if (t + 1) % eval_every == 0:
        evals.append(evaluate(params))
    jax.block_until_ready((losses, evals))
  return time.perf_counter() - t0


def torch_loop(sizes, data, lrs, wds, *, steps, batch, eval_every, seed=0):
  """The naive loop in PyTorch (``torch.optim.AdamW``, default ``nn.Linear`` init), same shapes,
  batches and evaluations; the per-step losses are kept as tensors (no sync per step). Returns
  the seconds. Raises ImportError without torch."""
  import torch

  x, y, x_eval, y_eval = (np.asarray(a) for a in data)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  xt, yt = torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev, dtype=torch.long)
  xe, ye = torch.as_tensor(x_eval, device=dev), torch.as_tensor(y_eval, device=dev, dtype=torch.long)
  n = x.shape[0]
  per_epoch = n // batch
  gen = torch.Generator(device="cpu").manual_seed(seed)
  epochs = -(-steps // per_epoch)
  order = torch.cat([torch.randperm(n, generator=gen)[: per_epoch * batch].view(per_epoch, batch)
                     for _ in range(epochs)])[:steps].to(dev)
  torch.manual_seed(seed)
  t0 = time.perf_counter()
  for lr, wd in zip(lrs, wds):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=float(wd))
    losses, evals = [], []
    for t in range(steps):
      idx = order[t]
      loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      losses.append(loss.detach())
      if (t + 1) % eval_every == 0:
        with torch.no_grad():
          logits = model(xe)
          evals.append((torch.nn.functional.cross_entropy(logits, ye),
                        (logits.argmax(-1) == ye).float().mean()))
    torch.stack(losses).cpu()
  if dev == "cuda":
    torch.cuda.synchronize()
  return time.perf_counter() - t0
