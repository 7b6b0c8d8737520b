"""Issue 20, "nothing silent": the smaller cases that trained on quietly or crashed deep inside
(two configs equal in float32, a step counter past int32, a stream factory without a seed, a
bad label after the first batch, a stateful model rebuilt without its state) are each one clear
error before compute, naming the value."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import optaxlr
from optaxlr import search
from optaxlr.tasks import Task

KW = dict(execution=optaxlr.Execution(progress=False))


def _init(key):
  return {"w": jax.random.normal(key, (4, 3)) * 0.1}


def _apply(p, x):
  return x @ p["w"]


_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((32, 4)).astype(np.float32)
_Y = _RNG.integers(0, 3, 32)


def _never_called(h):
  raise AssertionError("the sweep compiled: the check came too late")


def _small_task():
  return Task.from_functions("t", _init, _apply, "cross_entropy", train={"x": _X, "y": _Y},
                             eval={"val": {"x": _X, "y": _Y}})


# -- (a) configs equal after the cast to float32 -------------------------------------------

def test_configs_equal_in_float32_are_refused_naming_both():
  assert np.float32(1e-3) == np.float32(1e-3 + 1e-12) and 1e-3 != 1e-3 + 1e-12  # the premise
  space = search.zip(lr=[1e-2, 1e-3, 1e-3 + 1e-12])
  with pytest.raises(ValueError, match=r"sweep: configs 1 and 2 differ \(lr=0\.001 vs "
                     r"0\.001000000001\) but are equal in float32"):
    optaxlr.sweep(_small_task(), lambda h: optax.sgd(h["lr"]), space, steps=2, **KW)


def test_configs_distinct_in_float32_or_repeated_as_given_run():
  """Values one float32 ulp apart stay distinct configs; a value repeated as given is the
  user's own repeat (not a float32 collapse) and runs."""
  lr = np.float32(1e-3)
  space = search.zip(lr=[float(lr), float(np.nextafter(lr, np.float32(1))), 1e-2, 1e-2])
  res = optaxlr.sweep(_small_task(), lambda h: optax.sgd(h["lr"]), space, steps=2, **KW)
  assert res.metrics["val/loss"].shape[1] == 4


# -- (b) steps past the int32 step counter -------------------------------------------------

@pytest.mark.parametrize("steps", [10**11, 2**31])
def test_steps_past_int32_are_refused_naming_the_limit(steps):
  with pytest.raises(ValueError, match=rf"sweep: steps={steps} .* past 2147483647 = 2\*\*31 - 1"):
    optaxlr.sweep(_small_task(), _never_called, {"lr": [0.1]}, steps=steps, **KW)


def test_steps_padded_past_int32_by_the_last_chunk_are_refused():
  from optaxlr.engine._engine import check_step_range

  check_step_range("sweep", 2**31 - 1)  # the last step numbered 2**31 - 1: allowed
  with pytest.raises(ValueError, match="reach step 2147483650, past 2147483647"):
    check_step_range("sweep", 2**31 - 3, start_step=0, sync_every=10)  # padded to 2**31 + 2
  with pytest.raises(ValueError, match="from step 10"):
    check_step_range("sweep", 2**31 - 5, start_step=10)


# -- (c) a stream factory that takes no seed ------------------------------------------------

def _no_seed():
  while True:
    yield {"x": _X[:8], "y": _Y[:8]}


def _keyword_seed(*, seed):
  yield from _no_seed()


def _three_required(seed, epoch, shard):
  yield from _no_seed()


@pytest.mark.parametrize("factory", [_no_seed, _keyword_seed, _three_required])
def test_a_factory_without_a_positional_seed_is_refused_at_the_task(factory):
  with pytest.raises(TypeError, match=rf"train must be a batch factory called as train\(seed\) "
                     rf"or train\(seed, epoch\), but {factory.__name__}\(.*\) cannot be"):
    Task.from_functions("t", _init, _apply, train=factory, eval={"val": {"x": _X, "y": _Y}})


def test_factories_that_take_a_seed_are_accepted():
  for f in (lambda seed: _no_seed(), lambda seed, epoch: _no_seed(),
            lambda *a: _no_seed(), lambda seed, batch_size=8: _no_seed()):
    task = Task.from_functions("t", _init, _apply, train=f, eval={"val": {"x": _X, "y": _Y}})
    assert task.host_fed and set(task.first_batch(0)) == {"x", "y"}


# -- (d) a label out of range after the first batch ----------------------------------------

@pytest.mark.parametrize("bad", [5, -1])
def test_a_bad_label_in_a_later_batch_is_a_data_error_naming_the_batch(bad):
  """Without the check the run was reported "diverged" (label 5 gives a NaN loss) or trained
  silently (label -1 read as the last class)."""
  def make(seed):
    i = 0
    while True:
      y = _Y[:8].copy()
      if i == 3:
        y[2] = bad
      i += 1
      yield {"x": _X[:8], "y": y}

  task = Task.from_functions("t", _init, _apply, "cross_entropy", train=make,
                             eval={"val": {"x": _X, "y": _Y}})
  with pytest.raises(ValueError, match=rf"sweep: the batch stream of seed 0, batch 3, split "
                     rf"'train', key 'y': labels must be in \[0, 3\), got {bad} in example 2"):
    optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), {"lr": [0.1]}, steps=6, eval_every=6,
                  sync_every=6, **KW)


# -- (e) to_model without the state of a stateful model ------------------------------------

class _BN(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(4, 3, rngs=rngs)
    self.bn = nnx.BatchNorm(3, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.lin(x))


class _LinenBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def test_to_model_without_the_state_of_a_batchnorm_model_is_refused():
  data = {"x": _X, "y": _Y}
  tasks = [Task.from_flax_nnx("bn", _BN, train=data, eval={"val": data}),
           Task.from_linen("lbn", _LinenBN(), train=data, eval={"val": data},
                           train_kwargs={"train": True})]
  for task in tasks:
    key = jax.random.key(1)
    params, state = task.init(key), task.initial_state(key)
    with pytest.raises(ValueError, match=r"to_model\(params, state=None\): this model holds "
                       r"state \(e\.g\. BatchNorm's running statistics\)"):
      task.to_model(params)
    task.to_model(params, state)  # with the run's state: fine


# -- (f) load with a foreign task or optimizer, a state that does not match its file --------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
  opt = lambda h: optax.adam(h["lr"])  # noqa: E731
  res = optaxlr.sweep(task, opt, search.grid(lr=[1e-2, 1e-3]), steps=4, batch_size=8,
                      eval_every=2, execution=optaxlr.Execution(progress=False, keep_params=True))
  return task, opt, res, res.save(tmp_path_factory.mktemp("saved") / "r.npz")


def _raises(x):
  raise ZeroDivisionError("boom")


@pytest.mark.parametrize("optimizer, why", [
    (lambda h: optax.adam(h["learning_rate"]), "KeyError: 'learning_rate'"),
    (lambda h: 3, "AttributeError: 'int' object has no attribute 'init'"),
    (_raises, "ZeroDivisionError: boom")])
def test_load_with_a_foreign_optimizer_is_one_error(saved, optimizer, why):
  task, _, _, path = saved
  with pytest.raises(ValueError, match=r"load: .*r\.npz': optimizer\(hparams\)\.init\(params\) "
                     rf"fails on the saved hyperparameters \['lr'\] .*{why}"):
    optaxlr.load(path, task=task, optimizer=optimizer)


def test_load_with_a_task_whose_init_fails_is_one_error(saved):
  task, opt, _, path = saved

  class Broken:
    init = staticmethod(_raises)
    initial_state = staticmethod(lambda key: {})

  with pytest.raises(ValueError, match=r"task\.init fails, so the saved state cannot be matched"):
    optaxlr.load(path, task=Broken(), optimizer=opt)


def test_load_refuses_a_state_that_does_not_match_its_digest(saved, tmp_path):
  """The header records a digest of the state's arrays: the state loaded back is checked
  against it (a state damaged in place, or rewritten, is refused; the numbers' fingerprint
  does not cover the header, so the digest is edited there)."""
  import io
  import json
  import shutil

  task, opt, res, path = saved
  back = optaxlr.load(path, task=task, optimizer=opt)
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(res.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  copy = tmp_path / "r.npz"
  shutil.copy(path, copy)
  shutil.copytree(str(path) + ".state", str(copy) + ".state")
  with np.load(io.BytesIO(copy.read_bytes())) as z:
    arrays = {k: z[k] for k in z.files}
  header = json.loads(arrays["header"].tobytes())
  header["state"]["digest"] = "0" * 32
  arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  np.savez(copy, **arrays)
  with pytest.raises(ValueError, match=r"has a damaged state folder .*: its arrays do not match "
                     "the digest in the file's header"):
    optaxlr.load(copy, task=task, optimizer=opt)


# -- (g) the command line: a value past float32, a host-fed task --------------------------

def _cli_usage_error(argv, capsys) -> str:
  """One line on stderr, exit 2, no traceback: test_cli's own check of a usage error."""
  from test_cli import _usage_error

  return _usage_error(argv, capsys)


@pytest.mark.parametrize("lr", ["1e39", "1e-3,1e39"])
def test_cli_lr_past_float32_is_one_line_exit_2(lr, capsys, tmp_path):
  err = _cli_usage_error(["sweep", "--lr", lr, "--steps", "4", "--out", str(tmp_path)], capsys)
  assert "--lr values must be at most 3.40282e+38 (float32, the dtype the sweep computes in), " \
         "got 1e+39" in err


def _stream(seed):
  while True:
    yield {"x": _X[:8], "y": _Y[:8]}


def host_fed_task():
  """A ``MODULE:FUNCTION`` task for the command line, fed by a stream."""
  return Task.from_functions("hf", _init, _apply, "cross_entropy", train=_stream,
                             eval={"val": {"x": _X, "y": _Y}})


@pytest.mark.parametrize("command", [["sweep", "--steps", "4"], ["lr-find"]])
def test_cli_host_fed_task_with_another_batch_size_is_one_line_exit_2(command, capsys, tmp_path):
  """A stream sets its own batch size: a --batch-size that differs (here the default 64, the
  stream's batches hold 8) is one line naming both, not a traceback from the sweep. (A stream
  whose size --batch-size names runs: tests/test_matrix.py's CLI cells.)"""
  err = _cli_usage_error([*command, "--task", f"{__file__}:host_fed_task", "--out",
                          str(tmp_path)], capsys)
  assert "--batch-size 64 differs from the batches of --task" in err
  assert "stream (8 examples): pass --batch-size 8" in err


def test_cli_lr_find_max_lr_past_float32_is_one_line_exit_2(capsys, tmp_path):
  err = _cli_usage_error(["lr-find", "--max-lr", "1e39", "--out", str(tmp_path)], capsys)
  assert "--max-lr must be at most 3.40282e+38 (float32" in err


def test_lr_find_max_lr_past_float32_is_refused_before_compute():
  """The range test's last rates were cast to inf and it "recommended" a rate silently."""
  with pytest.raises(ValueError, match=r"lr_find: ramp\['lr'\] is 1e\+39 at step 9, beyond "
                     "float32"):
    optaxlr.lr_find(_small_task(), lambda h: optax.sgd(h["lr"]), min_lr=1e-3, max_lr=1e39,
                    steps=10)
