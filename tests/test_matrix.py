"""Every entry point x every kind of model x every kind of data, with the defaults
(``vectorize="auto"``): issue 19's matrix.

Entry points: ``sweep``; ``sweep(adapt=)`` with successive halving, Hyperband and PBT;
``lr_find``; ``lr_find_grid``; the Optuna bridge; the CLI's ``--task``; ``start_from``; the
hand-off (``keep_params``, ``save``/``load``, ``to_model``, a loop of one's own continuing).
Models: the MLP, a flax.nnx CNN with BatchNorm and a Dropout whose rate is swept, a linen MLP.
Data: arrays in memory; a NumPy generator factory ``train(seed, epoch)`` (dict batches, int64
labels); a torch
``DataLoader`` over a plain ``TensorDataset`` (``[x, y]`` tuples, int64, one finite epoch per
call); a grain pipeline (tuples, one epoch per call).

How each cell is checked, cheaply and against something else than the code under test:

* data "memory": the entry point against its own reference: a hand-written loop (optax, nnx
  or linen) over the minibatches of :func:`optaxlr.engine.batch_indices` with the keys of
  :func:`optaxlr.engine.run_keys` (sweep, lr_find's ramp, the hand-off's continuation,
  PBT's replayed lineage), or the plain sweep's rows (what adaptive search kept and stopped,
  lr_find_grid, Optuna's told values, start_from, the CLI against the same sweep from Python);
* host-fed data: the loaders yield exactly the minibatches the in-memory run drew (the
  permutation of each epoch), so every number equals the in-memory cell's (float32, the same
  arithmetic fed another way: rtol 1e-5).

A cell that cannot work refuses with one sentence before anything is compiled (asserted):
``lr_find_grid`` with its default ``metric="train/loss"`` on host-fed data (its initial loss is
over the whole training set, which a stream does not hold). Shapes are tiny (64 digits, 8x8
images, 4 channels, 8 steps, 2 seeds, 4 configs); the loaders share one host-fed task per model
and the references reuse the plain sweep (module-level caches), so the programs compile once
per entry point, model and in-memory/host-fed.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxlr
from optaxlr import adapt, search
from optaxlr.engine import epoch_permutation, model_key, run_keys
from optaxlr.tasks import Task, reseed_nnx, set_opt_state
from test_loaders import B, N_TRAIN, BNNet, _digits, mlp_apply, mlp_init, xent

# The CNN's first cells compile for tens of seconds on 2 cores: the whole file is slow (CI runs it).
pytestmark = pytest.mark.slow

STEPS, EVERY, SEEDS = 8, 4, (0, 1)  # 4 batches per epoch: 8 steps read 2 epochs
LRS = [3e-3, 1e-2]
# model -> the sweep's space (4 configs); the CNN's dropout rate is a model hyperparameter
SPACES = {
    "mlp": lambda: search.zip(lr=[3e-3, 1e-2, 3e-2, 1e-1]),
    "linen": lambda: search.zip(lr=[3e-3, 1e-2, 3e-2, 1e-1]),
    "cnn": lambda: search.grid(lr=LRS, dropout=[0.0, 0.3]),
}
MODELS = sorted(SPACES)
DATA = ["memory", "numpy", "torch", "grain"]
ENTRIES = ["sweep", "successive_halving", "hyperband", "pbt", "lr_find", "lr_find_grid",
           "optuna", "cli", "start_from", "handoff_save_load"]
EXEC = optaxlr.Execution(progress=False)
KW = dict(steps=STEPS, batch_size=B, seeds=list(SEEDS), eval_every=EVERY, execution=EXEC)
TOL = dict(rtol=1e-5, atol=1e-6)
# Cells that refuse, with the sentence they refuse with.
REFUSED = {
    ("lr_find_grid", d): "lr_find_grid: metric='train/loss' compares with the initial loss on the "
                         "whole training set, which a host-fed task does not hold"
    for d in ("numpy", "torch", "grain")
}


def adam(h):
  return optax.adam(h["lr"])


# -- the data: arrays, and three loaders yielding the in-memory run's minibatches ------------

@functools.cache
def digits(image: bool):
  return _digits(image)


def order(seed: int, epoch: int) -> np.ndarray:
  """The examples of ``epoch`` for ``seed`` in the in-memory sweep's order."""
  return np.asarray(epoch_permutation(run_keys(0, seed)[1], epoch, N_TRAIN))


def epoch_batches(seed: int, epoch: int) -> list[np.ndarray]:
  perm = order(seed, epoch)
  return [perm[i * B:(i + 1) * B] for i in range(N_TRAIN // B)]


def batches(image: bool, seed: int, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """The minibatches of steps ``start..stop-1`` of ``seed`` (what every data kind feeds)."""
  (x, y), _ = digits(image)
  per = N_TRAIN // B
  return [(x[idx], y[idx]) for t in range(start, stop)
          for idx in [epoch_batches(seed, t // per)[t % per]]]


def numpy_factory(x, y):
  """A NumPy generator per (seed, epoch): dict batches, int64 labels."""
  def make(seed, epoch):
    for idx in epoch_batches(seed, epoch):
      yield {"x": x[idx], "y": y[idx]}
  return make


def torch_factory(x, y):
  """A torch DataLoader over a plain TensorDataset per (seed, epoch): [x, y] batches, int64,
  one finite epoch."""
  import torch
  from torch.utils.data import DataLoader, TensorDataset

  ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

  def make(seed, epoch):
    return DataLoader(ds, batch_sampler=[idx.tolist() for idx in epoch_batches(seed, epoch)])
  return make


def grain_factory(x, y):
  """A grain MapDataset per (seed, epoch): (x, y) tuples batched, one finite epoch."""
  grain = pytest.importorskip("grain")

  def make(seed, epoch):
    return (grain.MapDataset.source([(x[i], y[i]) for i in order(seed, epoch)])
            .batch(B, drop_remainder=True))
  return make


LOADERS = {"numpy": numpy_factory, "torch": torch_factory, "grain": grain_factory}


# -- the models, their tasks and the hand-written loops ----------------------------------------

class LinenNet:
  """A linen MLP (built lazily: flax.linen is imported only here)."""

  @staticmethod
  @functools.cache
  def module():
    import flax.linen as nn

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))
    return Net()


class Switch:
  """A task's ``train(seed, epoch)`` reading the loader under test: the loaders' runs of one
  model share a task, and so its compiled programs."""

  def __init__(self):
    self.factory = None

  def __call__(self, seed, epoch):
    return self.factory(seed, epoch)


@functools.cache
def tasks(model: str) -> dict:
  """``{"memory": task, "host": task}`` of ``model``: the host-fed task reads the loader
  under test through a :class:`Switch`."""
  (x, y), val = digits(image=model == "cnn")
  ev = {"val": {"x": val[0], "y": val[1]}}
  out = {"switch": Switch()}
  out["switch"].factory = LOADERS["numpy"](x, y)  # from_linen initialises from a first batch
  for name, train in (("memory", {"x": x, "y": y}), ("host", out["switch"])):
    if model == "mlp":
      out[name] = Task.from_functions("mlp", mlp_init, mlp_apply, "cross_entropy", train=train,
                                      eval=ev)
    elif model == "cnn":
      out[name] = Task.from_flax_nnx("bn-cnn", BNNet, "cross_entropy", train=train, eval=ev)
    else:
      out[name] = Task.from_linen("linen", LinenNet.module(), train=train, eval=ev)
  return out


def task_for(model: str, data: str) -> Task:
  t = tasks(model)
  if data == "memory":
    return t["memory"]
  (x, y), _ = digits(image=model == "cnn")
  t["switch"].factory = LOADERS[data](x, y)
  return t["host"]


class Hand:
  """A run written by hand: the model's own loop (optax, nnx.Optimizer, linen apply)."""

  def __init__(self, model: str, hp: dict, seed: int, tx=None):
    self.model, self.hp, self.seed = model, hp, seed
    self.tx = optax.adam(hp["lr"]) if tx is None else tx
    init_key, _ = run_keys(0, seed)
    if model == "cnn":
      self.net = BNNet(nnx.Rngs(init_key))
      self.opt = nnx.Optimizer(self.net, self.tx, wrt=nnx.Param)
    else:
      x0 = digits(False)[0][0][:1]
      self.params = (mlp_init(init_key) if model == "mlp"
                     else LinenNet.module().init(init_key, jnp.asarray(x0))["params"])
      self.state = self.tx.init(self.params)

  def apply(self, params, x):
    return mlp_apply(params, x) if self.model == "mlp" else LinenNet.module().apply(
        {"params": params}, x)

  def train(self, start: int, stop: int) -> np.ndarray:
    """Steps ``start..stop-1`` on the run's minibatches; their losses (before each update)."""
    losses = []
    for t, (xb, yb) in enumerate(batches(self.model == "cnn", self.seed, start, stop), start):
      if self.model == "cnn":
        self.net.train()
        reseed_nnx(self.net, model_key(0, self.seed, t))
        self.net.drop.rate = self.hp["dropout"]
        loss, g = nnx.value_and_grad(lambda m: xent(m(jnp.asarray(xb)), yb))(self.net)
        self.opt.update(self.net, g)
      else:
        loss, g = jax.value_and_grad(lambda p: xent(self.apply(p, xb), yb))(self.params)
        updates, self.state = self.tx.update(g, self.state, self.params)
        self.params = optax.apply_updates(self.params, updates)
      losses.append(float(loss))
    return np.array(losses)

  def val_loss(self) -> float:
    _, (xv, yv) = digits(self.model == "cnn")
    if self.model == "cnn":
      self.net.eval()
      return float(xent(self.net(jnp.asarray(xv)), yv))
    return float(xent(self.apply(self.params, xv), yv))


def close(a, b, what: str = ""):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL,
                             err_msg=what)


def same_numbers(a: optaxlr.SweepResult, b: optaxlr.SweepResult, what: str = ""):
  close(a.batch_loss, b.batch_loss, what + " batch_loss")
  close(a.metrics["val/loss"], b.metrics["val/loss"], what + " val/loss")
  np.testing.assert_array_equal(a.stopped_at, b.stopped_at)


# -- the entry points: each returns the numbers compared across data kinds ---------------------

@functools.cache
def plain(model: str) -> optaxlr.SweepResult:
  """The in-memory sweep: the reference of several entry points."""
  return optaxlr.sweep(task_for(model, "memory"), adam, SPACES[model](), **KW)


def e_sweep(model, data, tmp_path, monkeypatch):
  res = optaxlr.sweep(task_for(model, data), adam, SPACES[model](), **KW)
  assert res.info["host_fed"] == (data != "memory")
  if data == "memory":
    for s in SEEDS:
      for c in range(res.num_configs):
        hand = Hand(model, res.config(c), s)
        close(res.batch_loss[s, c], hand.train(0, STEPS), f"seed {s} config {c}")
        close(res.metrics["val/loss"][s, c, -1], hand.val_loss())
    if model == "cnn":  # the swept dropout is applied
      assert not np.allclose(res.batch_loss[0, 0], res.batch_loss[0, 1])
  return res.batch_loss, res.metrics["val/loss"]


def _check_against_plain(model, res):
  """Every run of an adaptive sweep equals the plain sweep's run up to where it stopped."""
  full = plain(model)
  for s in SEEDS:
    for c in range(res.num_configs):
      stop = STEPS if res.stop_reason[s, c] == "completed" else int(res.stopped_at[s, c])
      close(res.batch_loss[s, c, :stop], full.batch_loss[s, c, :stop], f"run {s},{c}")
      if res.stop_reason[s, c] == "completed":
        close(res.metrics["val/loss"][s, c], full.metrics["val/loss"][s, c])
  return full


def e_successive_halving(model, data, tmp_path, monkeypatch):
  res = optaxlr.sweep(task_for(model, data), adam, SPACES[model](),
                      adapt=adapt.successive_halving("val/loss", eta=2, min_steps=EVERY), **KW)
  kept = res.info["adapt"]["rungs"][0]["kept"]
  if data == "memory":
    full = _check_against_plain(model, res)
    val = full.metrics["val/loss"][:, :, 0].mean(axis=0)
    assert sorted(kept) == sorted(sorted(range(4), key=lambda c: (val[c], c))[:2])
    assert res.info["slot_steps"] == 4 * EVERY + 2 * (STEPS - EVERY)
  return res.batch_loss, res.metrics["val/loss"], np.asarray(kept)


def e_hyperband(model, data, tmp_path, monkeypatch):
  assert adapt.hyperband_brackets(2, EVERY, STEPS) == ((2, 2), (EVERY, STEPS))
  res = optaxlr.sweep(task_for(model, data), adam, SPACES[model](),
                      adapt=adapt.hyperband("val/loss", eta=2, min_steps=EVERY, max_steps=STEPS),
                      **KW)
  if data == "memory":
    _check_against_plain(model, res)
    assert (res.stopped_at[:, :2] == EVERY).sum() == len(SEEDS)  # one of bracket 0's two stops
    assert (res.stop_reason[:, 2:] == "completed").all()  # bracket 1 runs to the end
  return res.batch_loss, res.metrics["val/loss"], res.stopped_at


def e_pbt(model, data, tmp_path, monkeypatch):
  p = adapt.pbt("val/loss", interval=EVERY, quantile=0.25, perturb={"lr": (0.5, 2.0)}, seed=0)
  task = task_for(model, data)
  res = optaxlr.sweep(task, adam, SPACES[model](), adapt=p, **KW)
  ex = res.info["adapt"]["exploits"]
  assert len(ex) == 1 and ex[0]["step"] == EVERY, ex
  if data == "memory":
    full = plain(model)
    close(res.batch_loss[..., :EVERY], full.batch_loss[..., :EVERY])
    # The exploited member, replayed from scratch with its lineage's rate (src's for the first
    # EVERY steps, then the perturbed one) and src's dropout, equals its run after the copy.
    dst, src = ex[0]["dst"], ex[0]["src"]
    _, _, sched = p.schedule(dst, "lr")
    for s in SEEDS:
      hp = dict(full.config(src))
      hand = Hand(model, hp, s, tx=optax.adam(sched))
      close(hand.train(0, STEPS)[EVERY:], res.batch_loss[s, dst, EVERY:], f"seed {s}")
      close(hand.val_loss(), res.metrics["val/loss"][s, dst, -1])
  return res.batch_loss, res.metrics["val/loss"]


def e_lr_find(model, data, tmp_path, monkeypatch):
  space = search.grid(dropout=[0.0, 0.3]) if model == "cnn" else None
  res = optaxlr.lr_find(task_for(model, data), adam, space, steps=STEPS, batch_size=B,
                        seeds=list(SEEDS), min_lr=1e-3, max_lr=3.0, execution=EXEC)
  if data == "memory":
    lrs = optaxlr.range_test_lrs(1e-3, 3.0, STEPS)
    for s in SEEDS:
      for c in range(1 if space is None else len(space)):
        hp = {"lr": None, **({} if space is None else space[c])}
        hand = Hand(model, hp, s, tx=optax.adam(lambda t: jnp.asarray(lrs)[t]))
        n = int(np.isfinite(res.loss[s, c]).sum())  # the points before the stop (NaN after)
        assert n >= 4 and np.isfinite(res.loss[s, c, :n]).all()
        close(res.loss[s, c, :n], hand.train(0, n), f"seed {s} config {c}")
  return res.loss, res.stopped_at


def e_lr_find_grid(model, data, tmp_path, monkeypatch):
  extra = search.grid(dropout=[0.0, 0.3]) if model == "cnn" else None
  lrs = [3e-3, 1e-2, 3e-2, 1e-1] if extra is None else LRS
  res = optaxlr.lr_find_grid(task_for(model, data), adam, extra, lrs=lrs, **KW)
  if data == "memory":
    same_numbers(res.sweep, plain(model), "lr_find_grid's sweep against the plain sweep")
    (x, y), _ = digits(model == "cnn")
    for i, s in enumerate(SEEDS):
      hand = Hand(model, {"lr": 0.0, "dropout": 0.0}, s)
      if model == "cnn":
        hand.net.eval()
        want = float(xent(hand.net(jnp.asarray(x)), y))
      else:
        want = float(xent(hand.apply(hand.params, x), y))
      close(res.initial[i], want)
  return res.final, res.initial, res.fell


def e_optuna(model, data, tmp_path, monkeypatch):
  optuna = pytest.importorskip("optuna")
  from optaxlr.integrations import optuna as ox

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  space = SPACES[model]()
  dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
  if model == "cnn":
    dists["dropout"] = optuna.distributions.FloatDistribution(0.0, 0.5)
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  for c in range(len(space)):
    study.enqueue_trial({k: float(v) for k, v in space[c].items()})
  (batch,) = ox.optimize(study, task_for(model, data), adam, dists, n_trials=len(space),
                         trials_per_sweep=len(space), steps=STEPS, seeds=len(SEEDS),
                         batch_size=B, eval_every=EVERY, execution=EXEC)
  values = np.array([t.value for t in study.trials])
  if data == "memory":
    full = plain(model)
    same_numbers(batch.result, full, "optuna's sweep against the plain sweep")
    close(values, full.metrics["val/loss"][:, :, -1].mean(axis=0))
  return batch.result.batch_loss, values


def e_cli(model, data, tmp_path, monkeypatch):
  from optaxlr import cli

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
  mod = f"ut_matrix_{model}_{data}"
  (tmp_path / f"{mod}.py").write_text(
      f"import test_matrix\n\ndef make_task():\n  return test_matrix.task_for({model!r}, {data!r})\n")
  space = SPACES[model]()
  lrs = ",".join(repr(v) for v in sorted(set(np.asarray(space.columns["lr"]).tolist())))
  args = ["sweep", "--task", f"{mod}:make_task", "--optimizers", "adamw", "--space",
          f"lr={lrs}", "--wd", "0", "--steps", str(STEPS), "--eval-every", str(EVERY),
          "--seeds", str(len(SEEDS)), "--batch-size", str(B), "--no-progress", "--out", "o"]
  if model == "cnn":
    args += ["--space", "dropout=0,0.3"]
  try:
    assert cli.main(args) == 0
  finally:
    sys.modules.pop(mod, None)
  got = optaxlr.load(tmp_path / "o" / "sweep_adamw.npz")
  if data == "memory":
    def adamw(h):  # the command's adamw: a cosine schedule, decoupled decay
      return optaxlr.adamw(optaxlr.schedules.cosine(h["lr"], STEPS), weight_decay=h["wd"],
                           decay="decoupled")
    axes = dict(lr=sorted(set(np.asarray(space.columns["lr"]).tolist())), wd=[0.0])
    if model == "cnn":
      axes["dropout"] = [0.0, 0.3]
    want = optaxlr.sweep(task_for(model, data), adamw, search.grid(**axes), **KW)
    for c in range(got.num_configs):
      hp = got.config(c)
      w = next(i for i in range(want.num_configs)
               if all(np.isclose(want.config(i)[k], hp[k]) for k in axes))
      close(got.batch_loss[:, c], want.batch_loss[:, w], f"config {hp}")
      close(got.metrics["val/loss"][:, c], want.metrics["val/loss"][:, w])
  return got.batch_loss, got.metrics["val/loss"]


def _kept(model, data, steps=EVERY):
  return optaxlr.sweep(task_for(model, data), adam, SPACES[model](), **{
      **KW, "steps": steps, "execution": optaxlr.Execution(progress=False, keep_params=True)})


def e_start_from(model, data, tmp_path, monkeypatch):
  first = _kept(model, data)
  res = optaxlr.sweep(task_for(model, data), adam, SPACES[model](), start_from=first,
                      **{**KW, "steps": STEPS - EVERY})
  if data == "memory":  # the two halves are the plain sweep's run
    full = plain(model)
    close(first.batch_loss, full.batch_loss[..., :EVERY])
    close(res.batch_loss, full.batch_loss[..., EVERY:])
    close(res.metrics["val/loss"][..., -1], full.metrics["val/loss"][..., -1])
  return res.batch_loss, res.metrics["val/loss"]


def e_handoff_save_load(model, data, tmp_path, monkeypatch):
  """keep_params -> save -> load -> the user's own loop continues from a run's state."""
  first = _kept(model, data)
  path = first.save(tmp_path / "r")
  task = task_for(model, data)
  res = optaxlr.load(path, task=task, optimizer=adam)
  close(res.batch_loss, first.batch_loss)
  out = []
  c = res.num_configs - 1
  hp = res.config(c)
  for s in SEEDS:
    hand = Hand(model, hp, s)
    params, ost = res.params_of(c, s), res.opt_state_of(c, s)
    jax.tree.map(np.testing.assert_array_equal, params, first.params_of(c, s))
    if model == "cnn":
      hand.net = task.to_model(params, res.model_state_of(c, s), hparams=hp)
      assert hand.net.drop.rate == pytest.approx(hp["dropout"])
      hand.opt = nnx.Optimizer(hand.net, optax.adam(hp["lr"]), wrt=nnx.Param)
      set_opt_state(hand.opt, ost)
    else:
      hand.params, hand.state = params, ost
    out.append(hand.train(EVERY, STEPS))
    if data == "memory":  # the continuation is the plain sweep's run
      close(out[-1], plain(model).batch_loss[s, c, EVERY:], f"seed {s}")
      close(hand.val_loss(), plain(model).metrics["val/loss"][s, c, -1])
  return (np.array(out),)


ENTRY = {name: globals()[f"e_{name}"] for name in ENTRIES}


_MEMORY: dict = {}


def memory_numbers(entry, model, tmp_path, monkeypatch):
  """The in-memory cell's numbers (run, and checked against its reference, once)."""
  if (entry, model) not in _MEMORY:
    _MEMORY[entry, model] = ENTRY[entry](model, "memory", tmp_path, monkeypatch)
  return _MEMORY[entry, model]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_matrix(entry, model, data, tmp_path, monkeypatch):
  if (entry, data) in REFUSED:
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
      ENTRY[entry](model, data, tmp_path, monkeypatch)
    msg = str(err.value)
    assert msg.startswith(REFUSED[entry, data]), msg
    assert msg.count(". ") == 0 and "\n" not in msg, msg  # one sentence
    assert time.perf_counter() - t0 < 2.0  # before compiling
    return
  want = memory_numbers(entry, model, tmp_path, monkeypatch)
  if data == "memory":
    return
  got = ENTRY[entry](model, data, tmp_path, monkeypatch)
  for g, w in zip(got, want):
    close(g, w, f"{entry} {model} {data} against memory")
