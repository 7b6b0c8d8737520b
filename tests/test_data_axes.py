"""Axes the core reads itself (batch size, k-fold) and host-fed data: each against separate
sweeps / in-memory sweeps and scikit-learn's KFold."""

from __future__ import annotations

import dataclasses

import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search
from optaxlr.engine import batch_indices, fold_split, run_keys
from optaxlr.tasks import Task



def with_ex(kw, **ex):
  """``kw`` with its ``execution`` updated by ``ex`` (the Execution settings of one call)."""
  return {**kw, "execution": dataclasses.replace(kw.get("execution") or optaxlr.Execution(), **ex)}

def _task(n=120):
  return optaxlr.tasks.teacher_student(n_train=n, n_val=40, n_test=40)


def sgd(h):
  return optax.sgd(h["lr"], momentum=0.9)


KW = dict(steps=10, seeds=2, eval_every=5, execution=optaxlr.Execution(progress=False))


def test_fold_split_equals_sklearn_kfold():
  from sklearn.model_selection import KFold

  for n, k in ((10, 3), (17, 5), (120, 4)):
    for i, (tr, held) in enumerate(KFold(n_splits=k).split(np.zeros(n))):
      a, b = fold_split(n, k, i)
      np.testing.assert_array_equal(a, tr)
      np.testing.assert_array_equal(b, held)
  with pytest.raises(ValueError, match="k must be"):
    fold_split(5, 6, 0)


def test_batch_size_axis_rows_equal_separate_sweeps():
  task = _task()
  space = search.grid(lr=[0.01, 0.05], batch_size=[8, 16, 32])
  res = optaxlr.sweep(task, sgd, space, **KW)
  for b in (8, 16, 32):
    alone = optaxlr.sweep(task, sgd, search.grid(lr=[0.01, 0.05]), batch_size=b, **KW)
    for j, lr in enumerate((0.01, 0.05)):
      i = res.index_of({"lr": lr, "batch_size": b})
      np.testing.assert_allclose(res.batch_loss[:, i], alone.batch_loss[:, j], rtol=1e-5,
                                 atol=1e-7, err_msg=f"b={b} lr={lr}")
      for m, v in alone.metrics.items():
        np.testing.assert_allclose(res.metrics[m][:, i], v[:, j], rtol=1e-5, atol=1e-7)
  # batch sizes really differ: not identical rows
  assert not np.allclose(res.batch_loss[:, 0], res.batch_loss[:, 1])


def test_linear_scaling_reads_batch_size_in_the_optimizer():
  task = _task()
  space = search.zip(lr=[0.01, 0.02], batch_size=[8, 16])
  res = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"] * h["batch_size"] / 8), space, **KW)
  alone = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"] * 2.0), search.grid(lr=[0.02]),
                        batch_size=16, **KW)
  np.testing.assert_allclose(res.batch_loss[:, 1], alone.batch_loss[:, 0], rtol=1e-5, atol=1e-7)


def test_batch_size_axis_errors():
  task = _task()
  with pytest.raises(ValueError, match="do not also pass batch_size"):
    optaxlr.sweep(task, sgd, search.grid(lr=[0.1], batch_size=[8]), batch_size=8, **KW)
  with pytest.raises(ValueError, match="batch_size must be an int in"):
    optaxlr.sweep(task, sgd, search.grid(lr=[0.1], batch_size=[8, 1000]), **KW)


def test_kfold_rows_equal_separate_sweeps_on_the_splits():
  task = _task(n=90)
  k = 3
  space = search.grid(lr=[0.01, 0.05]) * search.folds(k)
  res = optaxlr.sweep(task, sgd, space, batch_size=16, **KW)
  assert "fold/loss" in res.metrics and "val/loss" in res.metrics
  tr_all = {kk: np.asarray(v) for kk, v in task.train.items()}
  for f in range(k):
    tr, held = fold_split(90, k, f)
    split = Task(name="f", init=task.init, loss=task.loss, metrics=task.metrics,
                 train={kk: v[tr] for kk, v in tr_all.items()},
                 eval={**task.eval, "fold": {kk: v[held] for kk, v in tr_all.items()}})
    alone = optaxlr.sweep(split, sgd, search.grid(lr=[0.01, 0.05]), batch_size=16, **KW)
    for j, lr in enumerate((0.01, 0.05)):
      i = res.index_of({"lr": lr, "fold": f})
      np.testing.assert_allclose(res.batch_loss[:, i], alone.batch_loss[:, j], rtol=1e-5,
                                 atol=1e-7)
      for m in ("fold/loss", "val/loss"):
        np.testing.assert_allclose(res.metrics[m][:, i], alone.metrics[m][:, j], rtol=1e-5,
                                   atol=1e-7)
  summary = res.fold_summary("fold/loss")
  assert summary["mean"].shape == (2,) and summary["std"].shape == (2,)
  final = res.final("fold/loss").mean(axis=0)
  for j, lr in enumerate((0.01, 0.05)):
    rows = [res.index_of({"lr": lr, "fold": f}) for f in range(k)]
    np.testing.assert_allclose(summary["mean"][j], final[rows].mean(), rtol=1e-6)
    np.testing.assert_allclose(summary["std"][j], final[rows].std(), rtol=1e-6)


# -- host-fed data ------------------------------------------------------------------------

def _stream_task(task, batch_size, steps, key=0, mutate=None, short=None, same=None):
  tr = {k: np.asarray(v) for k, v in task.train.items()}
  n = len(tr["y"])

  def make(seed):
    _, data_key = run_keys(key, seed)

    def gen():
      for t in range(10**9):  # an endless stream: the sweep must take only what it needs
        if short is not None and t >= short:
          return
        idx = np.asarray(batch_indices(data_key, t, n, batch_size))
        batch = {k: v[idx] for k, v in tr.items()}
        if mutate is not None:
          batch = mutate(t, batch)
        yield batch
    return gen() if same is None else same
  return Task(name="stream", init=task.init, loss=task.loss, metrics=task.metrics, train=make,
              eval=task.eval, info=task.info)


def test_host_fed_equals_in_memory():
  task = _task()
  space = search.grid(lr=[0.01, 0.05])
  mem = optaxlr.sweep(task, sgd, space, batch_size=16, sync_every=5, **KW)
  fed = optaxlr.sweep(_stream_task(task, 16, 10), sgd, space, sync_every=5, **KW)
  np.testing.assert_array_equal(fed.batch_loss, mem.batch_loss)
  for m, v in mem.metrics.items():
    np.testing.assert_array_equal(fed.metrics[m], v)
  assert fed.info["host_fed"] and fed.info["batch_size"] == 16


@pytest.mark.parametrize("case,match", [
    ("short", "ended after 6 batches"),
    ("shape", "shape"),
    ("dtype", "dtype"),
    ("nan", "non-finite"),
    ("keys", "keys"),
    ("batch", "batch_size=16"),
])
def test_bad_streams_are_clear_errors(case, match):
  task = _task()

  def mutate(t, b):
    if t < 3:
      return b
    if case == "shape":
      return {**b, "x": b["x"][:, :-1]}
    if case == "dtype":
      return {**b, "x": b["x"].astype(np.float64)}
    if case == "nan":
      x = b["x"].copy()
      x[0, 0] = np.nan
      return {**b, "x": x}
    if case == "keys":
      return {"x": b["x"]}
    if case == "batch":
      return {k: v[:8] for k, v in b.items()}
    return b
  stream = _stream_task(task, 16, 10, mutate=mutate, short=6 if case == "short" else None)
  with pytest.raises(ValueError, match=match):
    optaxlr.sweep(stream, sgd, search.grid(lr=[0.01]), **KW)


def test_stream_misuse():
  task = _task()
  shared = iter([])
  with pytest.raises(ValueError, match="batch_size=8 differs"):
    optaxlr.sweep(_stream_task(task, 16, 10), sgd, search.grid(lr=[0.01]), batch_size=8, **KW)
  gen = _stream_task(task, 16, 10).train(0)
  with pytest.raises(ValueError, match="same iterator object on two calls"):
    optaxlr.sweep(_stream_task(task, 16, 10, same=gen), sgd, search.grid(lr=[0.01]), **KW)
  del shared
  with pytest.raises(ValueError, match="cannot take a 'batch_size' axis"):
    optaxlr.sweep(_stream_task(task, 16, 10), sgd, search.grid(lr=[0.01], batch_size=[8]), **KW)


def test_host_fed_resumes_from_a_checkpoint(tmp_path):
  """Interrupted after a chunk, a host-fed sweep resumes by reading its streams from the start
  and dropping the batches already trained on: equal to an uninterrupted run."""
  task = _stream_task(_task(), 16, 10)
  space = search.grid(lr=[0.01, 0.05])
  full = optaxlr.sweep(task, sgd, space, sync_every=5, **KW)

  def boom(event):
    if event.chunk == 1:  # chunk 0 is committed; chunk 1 is not
      raise RuntimeError("killed")
  with pytest.raises(RuntimeError, match="killed"):
    optaxlr.sweep(task, sgd, space, sync_every=5, callback=boom,
                  **with_ex(KW, checkpoint_dir=tmp_path / "c"))
  resumed = optaxlr.sweep(task, sgd, space, sync_every=5, **with_ex(KW, checkpoint_dir=tmp_path / "c"))
  np.testing.assert_array_equal(resumed.batch_loss, full.batch_loss)
  np.testing.assert_array_equal(resumed.metrics["val/loss"], full.metrics["val/loss"])
  # another stream (other first batch) is refused
  other = _stream_task(_task(), 16, 10, key=7)
  with pytest.raises(ValueError, match="data"):
    optaxlr.sweep(other, sgd, space, sync_every=5, **with_ex(KW, checkpoint_dir=tmp_path / "c"))


def test_uneven_folds_rows_equal_separate_sweeps_on_the_splits():
  """91 examples in 4 folds: held-out parts of 23, 23, 23 and 22 (three folds stacked into one
  segment, the fourth alone) and a batch-size axis beside them: each row equals a sweep of the
  task on its split."""
  task = _task(n=91)
  k = 4
  space = search.grid(lr=[0.05]) * search.folds(k)
  res = optaxlr.sweep(task, sgd, space, batch_size=16, **KW)
  tr_all = {kk: np.asarray(v) for kk, v in task.train.items()}
  assert [len(fold_split(91, k, f)[1]) for f in range(k)] == [23, 23, 23, 22]
  for f in range(k):
    tr, held = fold_split(91, k, f)
    split = Task(name="f", init=task.init, loss=task.loss, metrics=task.metrics,
                 train={kk: v[tr] for kk, v in tr_all.items()},
                 eval={**task.eval, "fold": {kk: v[held] for kk, v in tr_all.items()}})
    alone = optaxlr.sweep(split, sgd, search.grid(lr=[0.05]), batch_size=16, **KW)
    i = res.index_of({"lr": 0.05, "fold": f})
    np.testing.assert_allclose(res.batch_loss[:, i], alone.batch_loss[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.metrics["fold/loss"][:, i], alone.metrics["fold/loss"][:, 0],
                               rtol=1e-5, atol=1e-7)


def _counting(task):
  """``task`` with a loss that counts its traces, and the list it appends to."""
  n = []

  def loss(params, batch):
    n.append(1)
    return task.loss(params, batch)

  return Task(name="counted", init=task.init, loss=loss, metrics=task.metrics, train=task.train,
              eval=task.eval), n


def test_the_program_does_not_grow_with_the_number_of_folds():
  """Folds of one size run as one segment vmapped over them: the training loss is traced as
  often for 8 folds as for 2 (it was traced once per fold), so compile time does not grow
  with k; groups of other folds (max_group_size) share one program."""
  task = _task(n=96)
  counted, traced = _counting(task)
  counts, res = {}, {}
  for k, group in ((2, None), (8, None), (8, 4)):
    traced.clear()
    res[k, group] = optaxlr.sweep(
        counted, sgd, search.grid(lr=[0.05]) * search.folds(k), batch_size=8, steps=4,
        eval_every=4, execution=optaxlr.Execution(progress=False, max_group_size=group))
    counts[k, group] = len(traced)
  assert counts[8, None] == counts[2, None], counts
  # Several configs per fold (and per batch size) are one segment, not one segment each (a
  # comparison of a list with a tuple made every config a segment of its own: the program
  # grew with configs x folds)
  def traces(space, **kw):  # a new task each time: nothing cached, every program traced anew
    fresh, n = _counting(task)
    optaxlr.sweep(fresh, sgd, space, steps=4, eval_every=4,
                  execution=optaxlr.Execution(progress=False), **kw)
    return len(n)

  one_fold = traces(search.grid(lr=[0.05]) * search.folds(8), batch_size=8)
  one_bs = traces(search.grid(lr=[0.05], batch_size=[8, 16]))
  for lrs in ([0.01, 0.03, 0.05], [0.01, 0.02, 0.03, 0.04, 0.05]):
    assert traces(search.grid(lr=lrs) * search.folds(8), batch_size=8) == one_fold
    assert traces(search.grid(lr=lrs, batch_size=[8, 16])) == one_bs
  # two groups of 4 folds each (folds 0-3 and 4-7): one program, its fold data an argument
  assert res[8, 4].info["groups"] == 2 and counts[8, 4] == counts[2, None], counts
  for m in ("fold/loss", "val/loss"):
    np.testing.assert_allclose(res[8, 4].metrics[m], res[8, None].metrics[m], rtol=1e-5,
                               atol=1e-7, err_msg=m)


@pytest.mark.parametrize("space", [
    search.grid(lr=[0.01, 0.05], batch_size=[8, 24]),
    search.grid(lr=[0.01, 0.05]) * search.folds(3),
], ids=["batch_size", "folds"])
def test_block_indices_equal_the_per_step_permutations_bitwise(monkeypatch, space):
  """Each block's minibatch positions are computed before its steps (one draw per epoch the
  block touches); longer blocks draw them step by step. Both give the same minibatches,
  bitwise: blocks spanning several epochs (120 examples, 5-15 steps per epoch, 21-step blocks),
  chunks starting mid-epoch (sync every 42 steps), a ragged last block."""
  from optaxlr.engine import _core

  task = _task()
  kw = dict(steps=100, seeds=2, eval_every=21, sync_every=42,
            execution=optaxlr.Execution(progress=False))
  ahead = optaxlr.sweep(task, sgd, space, **kw)
  monkeypatch.setattr(_core, "_INDEX_AHEAD_MAX", 0)
  _core.clear_cache()
  per_step = optaxlr.sweep(task, sgd, space, **kw)
  _core.clear_cache()
  np.testing.assert_array_equal(ahead.batch_loss, per_step.batch_loss)
  for k in ahead.metrics:
    np.testing.assert_array_equal(ahead.metrics[k], per_step.metrics[k])
  assert np.isfinite(ahead.batch_loss).all()
