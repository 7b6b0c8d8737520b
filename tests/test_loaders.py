"""The user's own loaders feed a sweep: NumPy generators with int64 labels, a torch DataLoader
over a plain TensorDataset (tuple batches, int64, finite epochs, seeded shuffling), a grain
pipeline. Each host-fed sweep equals a hand-written loop over the same loader (the loop a user
writes: one pass per epoch), for an MLP and for a flax.nnx CNN with BatchNorm and a Dropout
whose rate is swept. Misuse (a generator object, a loader instead of a factory, unnamed tuple
batches, a partial last batch) is one clear error, at once."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import search
from optaxlr.engine import model_key, run_keys
from optaxlr.tasks import Dropout, Task, reseed_nnx

B, N_TRAIN, STEPS = 16, 64, 10  # 4 batches per epoch: 10 steps read 2.5 epochs
KW = dict(steps=STEPS, eval_every=STEPS, execution=optaxlr.Execution(progress=False))


def _digits(image: bool):
  from sklearn.datasets import load_digits

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  x = x[..., None] if image else x.reshape(len(x), -1)
  y = d.target.astype(np.int64)  # NumPy's and torch's default integer type
  return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:N_TRAIN + 40], y[N_TRAIN:N_TRAIN + 40])


# -- the loaders, as a user writes them: factories seed -> iterable of batches --------------

def numpy_generator(x, y):
  """An endless NumPy generator (dict batches, int64 labels), one permutation per epoch."""
  def batches(seed):
    rng = np.random.default_rng(seed)
    while True:
      perm = rng.permutation(len(y))
      for i in range(len(y) // B):
        idx = perm[i * B:(i + 1) * B]
        yield {"x": x[idx], "y": y[idx]}
  return batches


def torch_loader(x, y):
  """A torch DataLoader over a TensorDataset: [x, y] lists of tensors, int64, one epoch per
  pass, shuffled by a seeded generator."""
  import torch
  from torch.utils.data import DataLoader, TensorDataset

  ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

  def loader(seed):
    return DataLoader(ds, batch_size=B, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))
  return loader


def grain_pipeline(x, y):
  """A grain MapDataset: shuffled, batched tuples of int64 labels, one epoch per pass."""
  grain = pytest.importorskip("grain")

  def pipeline(seed):
    return (grain.MapDataset.source([(x[i], y[i]) for i in range(len(y))])
            .shuffle(seed=seed).batch(B, drop_remainder=True))
  return pipeline


LOADERS = {"numpy": numpy_generator, "torch": torch_loader, "grain": grain_pipeline}


def user_batches(factory, seed, steps):
  """The batches a user's own loop reads: ``for epoch ...: for batch in loader``."""
  out, obj = [], factory(seed)
  while len(out) < steps:
    for batch in obj:
      if isinstance(batch, dict):
        xb, yb = batch["x"], batch["y"]
      else:
        xb, yb = batch
      out.append((np.asarray(xb), np.asarray(yb)))
      if len(out) == steps:
        break
  return out


class Switch:
  """One task per model whose factory reads the loader under test: the compiled program (which
  does not depend on the data's source) is shared by the loaders' sweeps."""

  def __init__(self):
    self.factory = None

  def __call__(self, seed):
    return self.factory(seed)


# -- the MLP ------------------------------------------------------------------------------

def mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (64, 32)) * 0.1, "b1": jnp.zeros(32),
          "w2": jax.random.normal(k2, (32, 10)) * 0.1, "b2": jnp.zeros(10)}


def mlp_apply(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]


def adam(h):
  return optax.adam(h["lr"])


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def mlp_hand_loop(batches, lr, seed, val):
  """A plain optax loop: same init key as the sweep's row, the loader's batches."""
  init_key, _ = run_keys(0, seed)
  params = mlp_init(init_key)
  tx = optax.adam(lr)
  state = tx.init(params)
  losses = []
  for xb, yb in batches:
    loss, g = jax.value_and_grad(lambda p: xent(mlp_apply(p, xb), yb))(params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
  return np.array(losses), float(xent(mlp_apply(params, val[0]), val[1]))


_MLP = {}


def mlp_task():
  if not _MLP:
    (x, y), val = _digits(image=False)
    switch = Switch()
    task = Task.from_functions("mlp", mlp_init, mlp_apply, "cross_entropy", train=switch,
                               eval={"val": {"x": val[0], "y": val[1]}})
    _MLP.update(task=task, switch=switch, x=x, y=y, val=val)
  return _MLP


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_mlp_host_fed_equals_a_hand_loop_over_the_same_loader(loader):
  m = mlp_task()
  factory = LOADERS[loader](m["x"], m["y"])
  m["switch"].factory = factory
  res = optaxlr.sweep(m["task"], adam, search.grid(lr=[3e-3, 1e-2]), seeds=[0, 1], **KW)
  assert res.info["host_fed"] and res.info["batch_size"] == B
  for s in (0, 1):
    batches = user_batches(factory, s, STEPS)
    assert batches[0][1].dtype == np.int64
    for c, lr in enumerate((3e-3, 1e-2)):
      losses, val_loss = mlp_hand_loop(batches, lr, s, m["val"])
      np.testing.assert_allclose(res.batch_loss[s, c], losses, rtol=2e-5, atol=1e-6)
      np.testing.assert_allclose(res.metrics["val/loss"][s, c, -1], val_loss, rtol=2e-5)


# -- the flax.nnx CNN with BatchNorm and a swept Dropout --------------------------------------

class BNNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.drop = Dropout(0.1, hparam="dropout", rngs=rngs)
    self.head = nnx.Linear(4 * 16, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.conv(x)))
    x = x.reshape(x.shape[0], 4, 2, 4, 2, 4).max(axis=(2, 4))
    return self.head(self.drop(x.reshape(x.shape[0], -1)))


def cnn_hand_loop(batches, hp, seed, val):
  """A plain flax.nnx loop: the sweep row's init key and dropout keys (reseed_nnx with
  model_key), nnx.Optimizer, the loader's batches."""
  init_key, _ = run_keys(0, seed)
  model = BNNet(nnx.Rngs(init_key))
  opt = nnx.Optimizer(model, optax.adam(hp["lr"]), wrt=nnx.Param)
  losses = []
  for t, (xb, yb) in enumerate(batches):
    model.train()
    reseed_nnx(model, model_key(0, seed, t))
    model.drop.rate = hp["dropout"]
    loss, grads = nnx.value_and_grad(lambda m: xent(m(jnp.asarray(xb)), yb))(model)
    opt.update(model, grads)
    losses.append(float(loss))
  model.eval()
  return np.array(losses), float(xent(model(jnp.asarray(val[0])), val[1]))


_CNN = {}


def cnn_task():
  if not _CNN:
    (x, y), val = _digits(image=True)
    switch = Switch()
    task = Task.from_flax_nnx("bn-cnn", BNNet, "cross_entropy", train=switch,
                              eval={"val": {"x": val[0], "y": val[1]}})
    _CNN.update(task=task, switch=switch, x=x, y=y, val=val)
  return _CNN


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_nnx_batchnorm_dropout_host_fed_equals_a_hand_loop(loader):
  """from_flax_nnx(train=factory) with the defaults (vectorize="auto": config blocks on the
  CPU): every row equals the user's nnx loop over the same loader."""
  m = cnn_task()
  factory = LOADERS[loader](m["x"], m["y"])
  m["switch"].factory = factory
  space = search.grid(lr=[1e-2], dropout=[0.0, 0.3])
  res = optaxlr.sweep(m["task"], adam, space, seeds=1, **KW)
  assert res.info["vectorize"] == 1
  batches = user_batches(factory, 0, STEPS)
  for c in range(2):
    losses, val_loss = cnn_hand_loop(batches, res.config(c), 0, m["val"])
    np.testing.assert_allclose(res.batch_loss[0, c], losses, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(res.metrics["val/loss"][0, c, -1], val_loss, rtol=2e-4)
  assert not np.allclose(res.batch_loss[0, 0], res.batch_loss[0, 1])  # dropout is applied


# -- epochs ---------------------------------------------------------------------------------

def test_one_epoch_loaders_are_read_epoch_after_epoch():
  """A list of batches (one epoch, re-iterable) and a factory (seed, epoch) of one-epoch
  generators both feed more steps than an epoch holds; a one-shot generator that ends is a
  clear error that says how to give more epochs."""
  m = mlp_task()
  x, y = m["x"], m["y"]
  one_epoch = [(x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]) for i in range(N_TRAIN // B)]

  def per_epoch(seed, epoch):
    perm = np.random.default_rng([seed, epoch]).permutation(N_TRAIN)
    return ((x[perm[i * B:(i + 1) * B]], y[perm[i * B:(i + 1) * B]]) for i in range(N_TRAIN // B))

  m["switch"].factory = lambda seed: one_epoch
  by_epoch = Task.from_functions("mlp", mlp_init, mlp_apply, train=per_epoch,
                                 eval=m["task"].eval)
  for task, expected in (
      (m["task"], (one_epoch * 3)[:STEPS]),
      (by_epoch, [b for e in range(3) for b in per_epoch(0, e)][:STEPS])):
    res = optaxlr.sweep(task, adam, search.grid(lr=[1e-2]), seeds=1, **KW)
    losses, _ = mlp_hand_loop(expected, 1e-2, 0, m["val"])
    np.testing.assert_allclose(res.batch_loss[0, 0], losses, rtol=2e-5, atol=1e-6)
  m["switch"].factory = lambda seed: iter(one_epoch)  # read once: 4 batches, 10 needed
  with pytest.raises(ValueError, match="ended after 4 batches.*re-iterable loader.*"
                     "train\\(seed, epoch\\)"):
    optaxlr.sweep(m["task"], adam, search.grid(lr=[1e-2]), seeds=1, **KW)


def test_torch_loader_resumes_bitwise_from_a_checkpoint(tmp_path):
  """Interrupted after a chunk, a sweep fed by a shuffling DataLoader resumes (the loader is
  made again from its seed and read from the start) and equals the uninterrupted run."""
  m = mlp_task()
  m["switch"].factory = torch_loader(m["x"], m["y"])
  space = search.grid(lr=[3e-3, 1e-2])
  kw = dict(KW, eval_every=5, sync_every=5, seeds=1)
  full = optaxlr.sweep(m["task"], adam, space, **kw)

  def boom(event):
    if event.chunk == 1:
      raise RuntimeError("killed")
  with pytest.raises(RuntimeError, match="killed"):
    optaxlr.sweep(m["task"], adam, space, callback=boom,
                  **{**kw, "execution": optaxlr.Execution(progress=False, checkpoint_dir=tmp_path / "c")})
  resumed = optaxlr.sweep(m["task"], adam, space, **{
      **kw, "execution": optaxlr.Execution(progress=False, checkpoint_dir=tmp_path / "c")})
  np.testing.assert_array_equal(resumed.batch_loss, full.batch_loss)
  np.testing.assert_array_equal(resumed.metrics["val/loss"], full.metrics["val/loss"])


# -- adapters and misuse --------------------------------------------------------------------

def test_from_linen_takes_a_batch_factory():
  """from_linen initialises from the factory's first batch; its host-fed rows equal the
  hand loop over the same generator."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))

  (x, y), val = _digits(image=False)
  factory = numpy_generator(x, y)
  task = Task.from_linen("linen", Net(), train=factory, eval={"val": {"x": val[0], "y": val[1]}})
  res = optaxlr.sweep(task, adam, search.grid(lr=[1e-2]), seeds=1, **KW)
  init_key, _ = run_keys(0, 0)
  params = Net().init(init_key, jnp.asarray(x[:1]))["params"]
  tx = optax.adam(1e-2)
  state, losses = tx.init(params), []
  for xb, yb in user_batches(factory, 0, STEPS):
    loss, g = jax.value_and_grad(lambda p: xent(Net().apply({"params": p}, xb), yb))(params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
  np.testing.assert_allclose(res.batch_loss[0, 0], losses, rtol=2e-5, atol=1e-6)


def test_a_generator_object_is_refused_at_once():
  (x, y), val = _digits(image=False)

  def endless():
    while True:
      yield {"x": x[:B], "y": y[:B]}

  calls = {
      "Task": lambda g: Task("t", mlp_init, lambda p, b: 0.0, lambda p, b: {}, train=g),
      "from_functions": lambda g: Task.from_functions("t", mlp_init, mlp_apply, train=g),
      "from_flax_nnx": lambda g: Task.from_flax_nnx("t", BNNet, train=g),
      "from_linen": lambda g: Task.from_linen("t", object(), train=g),
  }
  for name, make in calls.items():
    t0 = time.perf_counter()
    with pytest.raises(TypeError, match="generator object, a one-shot iterator.*pass a "
                       "factory instead: train=lambda seed"):
      make(endless())
    assert time.perf_counter() - t0 < 1.0, name
  # a loader object instead of a factory returning it
  with pytest.raises(TypeError, match="DataLoader object \\(a loader\\); pass a factory"):
    Task.from_functions("t", mlp_init, mlp_apply, train=torch_loader(x, y)(0))


def test_tuple_batches_need_names_the_task_can_tell():
  (x, y), val = _digits(image=False)
  tuples = lambda seed: iter([(x[:B], y[:B])] * 20)  # noqa: E731

  def loss(p, b):
    return xent(mlp_apply(p, b["image"]), b["label"])

  def metrics(p, b):
    return {"loss": loss(p, b)}
  kw = dict(eval={"val": {"image": val[0], "label": val[1]}})
  # a plain Task reading other keys: its eval keys do not say the tuple's order
  task = Task("t", mlp_init, loss, metrics, train=tuples, **kw)
  with pytest.raises(ValueError, match="cannot tell their names.*\\['image', 'label'\\].*"
                     "pass batch_keys="):
    optaxlr.sweep(task, adam, search.grid(lr=[1e-2]), **KW)
  named = Task("t", mlp_init, loss, metrics, train=tuples, batch_keys=("image", "label"), **kw)
  res = optaxlr.sweep(named, adam, search.grid(lr=[1e-2]), **KW)
  assert np.isfinite(res.batch_loss).all()
  with pytest.raises(ValueError, match="tuple of 2 arrays, but batch_keys=\\('image',\\) "
                     "names 1"):
    optaxlr.sweep(Task("t", mlp_init, loss, metrics, train=tuples, batch_keys=("image",), **kw),
                  adam, search.grid(lr=[1e-2]), **KW)
  with pytest.raises(ValueError, match="batch_keys must be a tuple of distinct"):
    Task("t", mlp_init, loss, metrics, train=tuples, batch_keys=("x", "x"))
  with pytest.raises(ValueError, match="train is a dict .* drop batch_keys"):
    Task("t", mlp_init, loss, metrics, train={"image": x, "label": y}, batch_keys=("a", "b"))


def test_loader_mistakes_are_clear():
  (x, y), _ = _digits(image=False)
  m = mlp_task()
  import torch
  from torch.utils.data import DataLoader, TensorDataset

  ds = TensorDataset(torch.from_numpy(x[:40]), torch.from_numpy(y[:40]))
  m["switch"].factory = lambda seed: DataLoader(ds, batch_size=B)  # 16, 16, then 8
  with pytest.raises(ValueError, match="shape \\(8, 64\\).*drop_last=True"):
    optaxlr.sweep(m["task"], adam, search.grid(lr=[1e-2]), **KW)
  big = np.full(B, 2**40, np.int64)  # does not fit int32 (x64 off): not silently wrapped
  m["switch"].factory = lambda seed: iter([{"x": x[:B], "y": big}] * 20)
  with pytest.raises(ValueError, match="int64 values in .* do not fit int32"):
    optaxlr.sweep(m["task"], adam, search.grid(lr=[1e-2]), **KW)


def test_in_memory_tuples_and_tensors_are_named_and_converted():
  """A tuple split (train=(x, y)) is named like tuple batches; torch tensors and int64 labels
  in memory become the arrays JAX would make of them (int32 labels without x64)."""
  import torch

  (x, y), val = _digits(image=False)
  task = Task.from_functions("t", mlp_init, mlp_apply, train=(torch.from_numpy(x), y),
                             eval={"val": val})
  assert sorted(task.train) == sorted(task.eval["val"]) == ["x", "y"]
  np.testing.assert_array_equal(np.asarray(task.train["x"]), x)
  np.testing.assert_array_equal(np.asarray(task.eval["val"]["y"]), val[1])
  assert task.train["y"].dtype == jnp.int32
  with pytest.raises(ValueError, match="split 'train' is a tuple of 3 arrays, but "
                     "batch_keys=\\('x', 'y'\\) names 2"):
    Task.from_functions("t", mlp_init, mlp_apply, train=(x, y, y))


def test_which_factories_are_called_per_epoch():
  """factory(seed, epoch) is called again per epoch; a second parameter with a default that is
  not named epoch is the user's own (never given an epoch count)."""
  (x, y), _ = _digits(image=False)
  calls = []

  def per_epoch(seed, epoch):
    calls.append((seed, epoch))
    return [(x[:B], y[:B])]  # one batch per epoch

  def own_default(seed, size=B):
    calls.append((seed, size))
    return [(x[:size], y[:size])] * 2

  stream = Task.from_functions("t", mlp_init, mlp_apply, train=per_epoch).train(3)
  assert [b["y"].shape for b in (next(stream), next(stream), next(stream))] == [(B,)] * 3
  assert calls == [(3, 0), (3, 1), (3, 2)]
  calls.clear()
  stream = Task.from_functions("t", mlp_init, mlp_apply, train=own_default).train(5)
  assert len([next(stream) for _ in range(5)]) == 5  # a re-iterable list, epoch after epoch
  assert calls == [(5, B)]
