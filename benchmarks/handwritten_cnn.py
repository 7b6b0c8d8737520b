"""The hand-written baseline of ``cnn_bench.py``: JAX, optax and flax.nnx only, NO optaxlr.

What a careful JAX engineer writes to train one small convnet per config without a sweep
library, then calls in a Python loop over the configs. It imports nothing from optaxlr
(``cnn_bench.py`` checks its imports before it runs). It holds:

* the model, ``CNN``: ``conv3x3 (no bias) -> BatchNorm -> relu -> maxpool2`` twice, then
  inverted dropout and a linear head (flax.nnx layers, flax's default initialisers); the
  dropout rate is an argument of the call, so it may be a traced scalar;
* the minibatch order, cut before training: epoch ``e`` is
  ``jax.random.permutation(fold_in(data_key, e), N)``, step ``t`` takes the ``B`` examples at
  position ``t % (N // B)`` of epoch ``t // (N // B)`` (the rest of an epoch is dropped);
* ``make_train``: ``train(lr, wd, rate, keys, data) -> (losses, val_loss, val_err)``: the
  model built from ``init_key``, split once into parameters and BatchNorm statistics
  (``nnx.split``), AdamW on the parameters under ``lax.scan`` (the statistics carried beside
  them, updated in training mode), an evaluation on the whole eval split (running averages,
  no dropout) after every ``eval_every`` steps. ``jax.jit(train)`` compiled once and called
  per config is the loop.

Keys follow one documented convention (optaxlr's as well, so both programs can be checked to
compute the same numbers): ``k = fold_in(PRNGKey(key), seed)``; ``fold_in(k, 0)`` builds the
model, ``fold_in(k, 1)`` orders the minibatches, and the dropout mask of step ``t`` is drawn
from ``fold_in(fold_in(fold_in(fold_in(fold_in(k, 2), t), crc32("default")), 0), 0)``
(a model built from ``nnx.Rngs(key)`` has one RNG stream, ``"default"``, which its dropout
forks: optaxlr reseeds that stream per step with ``nnx.reseed``, whose ``Rngs`` draws
``fold_in(key, 0)``, and the layer's draw folds in its count, 0).
"""

from __future__ import annotations

import time
import zlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["CNN", "seed_keys", "batch_order", "make_train", "loop"]

_DROPOUT_STREAM = zlib.crc32(b"default") & 0x7FFFFFFF


class CNN(nnx.Module):
  """``[conv3x3 (no bias) -> BatchNorm -> relu -> maxpool2] x 2 -> dropout -> linear``."""

  def __init__(self, channels: tuple[int, int], num_classes: int, *, rngs: nnx.Rngs,
               image: int = 8):
    c1, c2 = channels
    self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(c1, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(c2, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear((image // 4) ** 2 * c2, num_classes, rngs=rngs)

  @staticmethod
  def _pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

  def __call__(self, x, *, train: bool, rate=0.0, drop_key=None):
    x = self._pool(jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train)))
    x = self._pool(jax.nn.relu(self.bn2(self.conv2(x), use_running_average=not train)))
    x = x.reshape(x.shape[0], -1)
    if train:
      keep = 1.0 - jnp.asarray(rate, x.dtype)
      mask = jax.random.bernoulli(drop_key, p=keep, shape=x.shape)
      x = jax.lax.select(mask, x / keep, jnp.zeros_like(x))
    return self.head(x)


def seed_keys(key: int, seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(init_key, data_key, dropout_base)`` of one seed."""
  k = jax.random.fold_in(jax.random.PRNGKey(key), seed)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1), jax.random.fold_in(k, 2)


def batch_order(data_key, n: int, batch: int, steps: int):
  """The ``(steps, batch)`` example indices of a run: one permutation per epoch, cut in rows."""
  per_epoch = n // batch
  epochs = -(-steps // per_epoch)
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n))(
      jnp.arange(epochs))
  return perms[:, : per_epoch * batch].reshape(epochs * per_epoch, batch)[:steps]


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train(channels: tuple[int, int], *, steps: int, batch: int, eval_every: int):
  """``train(lr, wd, rate, keys, data) -> (losses (steps,), val_loss, val_err)``, one eval
  entry per ``eval_every`` steps; ``keys = seed_keys(...)``, ``data = (x, y, x_eval, y_eval)``."""
  if steps % eval_every:
    raise ValueError(f"make_train: steps={steps} must be a multiple of eval_every={eval_every}")
  n_evals = steps // eval_every

  def train(lr, wd, rate, keys, data):
    init_key, data_key, drop_base = keys
    x, y, x_eval, y_eval = data
    graphdef, params, stats = nnx.split(CNN(channels, 10, rngs=nnx.Rngs(init_key)), nnx.Param, ...)
    tx = optax.adamw(lr, weight_decay=wd)
    opt_state = tx.init(params)
    order = batch_order(data_key, x.shape[0], batch, steps).reshape(n_evals, eval_every, batch)
    ts = jnp.arange(steps).reshape(n_evals, eval_every)

    def fresh(tree):  # new Variables of the current trace (the carried ones come from outside it)
      return jax.tree.map(lambda a: a, tree)

    def loss_fn(params, stats, xb, yb, key):
      model = nnx.merge(graphdef, fresh(params), fresh(stats))
      logits = model(xb, train=True, rate=rate, drop_key=key)
      return _cross_entropy(logits, yb), nnx.state(model, nnx.BatchStat)

    def step(carry, inp):
      params, stats, opt_state = carry
      idx, t = inp
      key = jax.random.fold_in(drop_base, t)
      for d in (_DROPOUT_STREAM, 0, 0):
        key = jax.random.fold_in(key, d)
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, x[idx], y[idx], key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), stats, opt_state), loss

    def interval(carry, inp):
      carry, losses = jax.lax.scan(step, carry, inp)
      logits = nnx.merge(graphdef, fresh(carry[0]), fresh(carry[1]))(x_eval, train=False)
      err = 1.0 - jnp.mean(jnp.argmax(logits, -1) == y_eval)
      return carry, (losses, _cross_entropy(logits, y_eval), err)

    _, (losses, val_loss, val_err) = jax.lax.scan(interval, (params, stats, opt_state),
                                                  (order, ts))
    return losses.reshape(steps), val_loss, val_err

  return train


def loop(compiled, lrs, wds, rates, keys, data):
  """Calls the compiled run once per config (a Python loop); returns the outputs on the host
  and the seconds."""
  t0 = time.perf_counter()
  outs = [compiled(jnp.float32(a), jnp.float32(b), jnp.float32(r), keys, data)
          for a, b, r in zip(lrs, wds, rates)]
  outs = jax.device_get(outs)
  return outs, time.perf_counter() - t0
