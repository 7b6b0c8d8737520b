"""The checkpoint fingerprint and the program cache see the code the way a user changes it:
the names a function calls, the globals, dicts, class attributes and partial arguments it
reads, each task function on its own (issue 20)."""

from __future__ import annotations

import functools
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxlr import search
from optaxlr.engine import _fingerprint
from optaxlr.engine._checkpoint import CheckpointStore
from optaxlr.tasks import Task
from test_sweep import make_task, run

SPACE = dict(lr=[1e-2, 3e-2])
KW = dict(seeds=1, steps=8, eval_every=4)
THIS = sys.modules[__name__]

# -- the code the variants change (module globals, read the way user code reads them) -------
CFG = {"b1": 0.9}


class Opt:
  b1 = 0.9


ACT = jnp.tanh


def _make(lr):
  return optax.adam(lr)


def _make_nadam(lr):
  return optax.nadam(lr)


def opt_helper(h):
  return _make(h["lr"])


def opt_dict(h):
  return optax.adam(h["lr"], b1=CFG["b1"])


def opt_class(h):
  return optax.adam(h["lr"], b1=Opt.b1)


def _opt_b1(h, b1):
  return optax.adam(h["lr"], b1=b1)


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _ce_smoothed(logits, y):
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(y, 2), 0.1)).mean()


def _apply_global_act(p, x):
  return ACT(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]


def _task(apply=None, loss=_ce, act=jnp.tanh):
  base = make_task(act=act)
  if apply is None and loss is _ce:
    return base
  return Task.from_functions("toy", base.init, apply or base.apply, loss, train=base.train,
                             eval=base.eval, info={"num_classes": 2})


BASE = dict(optimizer=opt_helper, task=lambda: _task(loss=_ce))
# name -> (the sweep's arguments, a change made in place: (object, attribute or key, new value))
VARIANTS = {
    "optimizer function swapped in a helper": (BASE, (THIS, "_make", _make_nadam)),
    "optimizer adam -> nadam": ({**BASE, "optimizer": lambda h: optax.adam(h["lr"])},
                                {**BASE, "optimizer": lambda h: optax.nadam(h["lr"])}),
    "activation swapped (a global)": ({**BASE, "task": lambda: _task(apply=_apply_global_act)},
                                      (THIS, "ACT", jnp.sin)),
    "activation swapped (closure)": ({**BASE, "task": lambda: _task(act=jnp.tanh)},
                                     {**BASE, "task": lambda: _task(act=jnp.sin)}),
    "loss swapped": ({**BASE, "task": lambda: _task(apply=_apply_global_act, loss=_ce)},
                     {**BASE, "task": lambda: _task(apply=_apply_global_act, loss=_ce_smoothed)}),
    "dict global changed": ({**BASE, "optimizer": opt_dict}, (CFG, "b1", 0.8)),
    "class attribute changed": ({**BASE, "optimizer": opt_class}, (Opt, "b1", 0.8)),
    "partial argument changed": ({**BASE, "optimizer": functools.partial(_opt_b1, b1=0.9)},
                                 {**BASE, "optimizer": functools.partial(_opt_b1, b1=0.8)}),
}


def _sweep(args, **kw):
  return run(args["task"](), args["optimizer"], search.zip(**SPACE), **KW, **kw)


class _Stop(Exception):
  pass


def _half(event):
  if event.chunk >= 1:  # chunk 0 is committed, chunk 1 is not: a half-finished folder
    raise _Stop


def _changed(variant, monkeypatch):
  """The variant's second sweep arguments (applying an in-place change with monkeypatch)."""
  before, after = VARIANTS[variant]
  if isinstance(after, tuple):
    obj, name, value = after
    if isinstance(obj, dict):
      monkeypatch.setitem(obj, name, value)
    else:
      monkeypatch.setattr(obj, name, value)
    return before
  return after


@pytest.mark.parametrize("state", ["finished", "half-finished"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_folder_of_the_same_sweep_with_other_code_is_a_clear_error(tmp_path, monkeypatch, variant,
                                                                     state):
  before, _ = VARIANTS[variant]
  folder = tmp_path / "ckpt"
  if state == "finished":
    _sweep(before, checkpoint_dir=folder)
  else:
    with pytest.raises(_Stop):
      _sweep(before, checkpoint_dir=folder, callback=_half)
  after = _changed(variant, monkeypatch)
  with pytest.raises(ValueError, match=rf"checkpoint_dir='{folder}': holds a different sweep"
                                       r" \(.*(optimizer|task_functions)"):
    _sweep(after, checkpoint_dir=folder)


@pytest.mark.parametrize("variant", ["optimizer function swapped in a helper",
                                     "activation swapped (a global)", "dict global changed",
                                     "class attribute changed"])
def test_a_global_changed_in_the_same_process_compiles_again(monkeypatch, variant):
  """The same function objects, a global they read changed in place: the program cache must
  not return the old program (it did: old numbers with compile_s == 0)."""
  before, _ = VARIANTS[variant]
  task = before["task"]()
  before = {**before, "task": lambda: task}  # the same objects: only the global changes
  first = _sweep(before)
  again = _sweep(before)
  assert again.info["compile_s"] == 0.0, "the unchanged sweep should reuse its program"
  np.testing.assert_array_equal(first.batch_loss, again.batch_loss)
  after = _changed(variant, monkeypatch)
  changed = _sweep(after)
  assert changed.info["compile_s"] > 0.0, "a changed global must compile again"
  assert not np.array_equal(first.batch_loss, changed.batch_loss)


def test_each_task_function_is_hashed_on_its_own():
  """A tuple of functions used to hash to a constant."""
  a, b = make_task(act=jnp.tanh), make_task(act=jnp.sin)
  assert _fingerprint.function_id((a.init, a.loss)) != _fingerprint.function_id((b.init, b.loss))
  assert _fingerprint.function_id((a.init, a.loss)) == _fingerprint.function_id(
      (make_task().init, make_task().loss)), "the same code must give the same identity"


LOCK = threading.Lock()  # something no fingerprint can hash


def opt_locked(h):
  with LOCK:
    return optax.adam(h["lr"])


def test_code_that_cannot_be_hashed_refuses_to_resume_unless_told(tmp_path):
  fid = _fingerprint.function_id(opt_locked)
  assert fid.startswith("unverified(lock"), fid
  assert not _fingerprint.function_id(opt_locked, local=True).startswith("unverified")
  folder = tmp_path / "ckpt"
  args = {**BASE, "optimizer": opt_locked}
  res = _sweep(args, checkpoint_dir=folder)  # a new folder: nothing to verify
  with pytest.raises(ValueError, match=r"cannot tell whether this sweep's code is the checkpoint's:"
                                       r" optimizer reads lock .*resume_unverified_code=True"):
    _sweep(args, checkpoint_dir=folder)
  # the override: Execution(resume_unverified_code=True) resumes (the user vouches for the code)
  again = _sweep(args, checkpoint_dir=folder, resume_unverified_code=True)
  np.testing.assert_array_equal(again.batch_loss, res.batch_loss)
  assert again.info["steps_run"] == 0
  # and below sweep, the store itself
  fp = {"optimizer": fid}
  store = CheckpointStore(tmp_path / "other", fp)
  store.open()
  store.commit(0, 0, {"x": np.zeros(1)}, None, (1, 0), True)
  store.close()
  with pytest.raises(ValueError, match="resume_unverified_code=True"):
    CheckpointStore(tmp_path / "other", fp).open()
  trusted = CheckpointStore(tmp_path / "other", fp, resume_unverified_code=True)
  trusted.open()
  trusted.close()
  assert trusted.finished and np.isfinite(res.batch_loss).all()
  with pytest.raises(TypeError, match=r"resume_unverified_code must be True or False, got 'yes'"):
    CheckpointStore(tmp_path / "other", fp, resume_unverified_code="yes")
