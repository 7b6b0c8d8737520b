"""SweepResult.save / optaxlr.load: one atomic unit across the .npz and its state, checked at
load, clear errors on bad targets and bad arguments, killed at points chosen by the test."""

from __future__ import annotations

import pathlib
import shutil
import sys
import textwrap
import time

import numpy as np
import pytest

import optaxlr
from optaxlr import search
from optaxlr.engine import _result
import _child
from test_checkpoint import _env
from test_sweep import adamw, make_task, run

TESTS = pathlib.Path(__file__).parent
KW = dict(seeds=1, steps=4, eval_every=2, keep_params=True)


@pytest.fixture(scope="module")
def two_results():
  """Two results of one task and optimizer whose numbers and parameters all differ."""
  task = make_task()
  a = run(task, adamw, search.zip(lr=[1e-3, 3e-2], wd=[0.0, 1e-2]), **KW)
  b = run(task, adamw, search.zip(lr=[1e-1, 3e-3], wd=[1e-3, 0.0]), **KW)
  assert not np.array_equal(a.batch_loss, b.batch_loss)
  return task, a, b


def _params(res):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves((res.params, res.opt_state))]


def _which(loaded, a, b) -> str:
  """'a' or 'b' when ``loaded`` is entirely one of them (numbers and state); fails on a mix."""
  for name, ref in (("a", a), ("b", b)):
    if np.array_equal(loaded.batch_loss, ref.batch_loss):
      for x, y in zip(_params(loaded), _params(ref), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=f"the numbers of {name} with another state")
      return name
  raise AssertionError("the loaded numbers are neither result's")


def test_a_state_folder_copied_from_another_result_is_refused(tmp_path, two_results):
  task, a, b = two_results
  pa, pb = a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
  assert _which(optaxlr.load(pa, task=task, optimizer=adamw), a, b) == "a"
  assert _which(optaxlr.load(pb, task=task, optimizer=adamw), a, b) == "b"
  state_a, state_b = tmp_path / "a.npz.state", tmp_path / "b.npz.state"
  (sub_a,), (sub_b,) = list(state_a.iterdir()), list(state_b.iterdir())
  # b's state folder copied over a's as it is: a's state is missing
  shutil.rmtree(state_a)
  shutil.copytree(state_b, state_a)
  with pytest.raises(ValueError, match=rf"load: '{pa}' is incomplete: its runs' state folder"
                                       rf" 'a.npz.state/{sub_a.name}' is missing"):
    optaxlr.load(pa, task=task, optimizer=adamw)
  # ... and renamed to the name a's file refers to: the fingerprints differ
  (state_a / sub_b.name).rename(state_a / sub_a.name)
  with pytest.raises(ValueError, match=r"has a state folder 'a.npz.state/s-\w+' that belongs to"
                                       r" another result \(its numbers' fingerprint is"):
    optaxlr.load(pa, task=task, optimizer=adamw)
  # the numbers alone still load; saving again repairs the pair
  assert np.array_equal(optaxlr.load(pa).batch_loss, a.batch_loss)
  a.save(pa)
  assert _which(optaxlr.load(pa, task=task, optimizer=adamw), a, b) == "a"
  assert [p.name for p in state_a.iterdir()] != [sub_a.name], "a new state sub-folder each save"
  assert len(list(state_a.iterdir())) == 1, "the previous state was not removed"


def test_saving_over_a_result_replaces_it_and_leaves_nothing_behind(tmp_path, two_results):
  task, a, b = two_results
  p = a.save(tmp_path / "r.npz")
  b.save(p)
  assert _which(optaxlr.load(p, task=task, optimizer=adamw), a, b) == "b"
  assert sorted(x.name for x in tmp_path.iterdir()) == ["r.npz", "r.npz.state"]
  # a result without state over one with state: the state folder goes
  numbers = optaxlr.load(p)
  numbers.save(p)
  assert sorted(x.name for x in tmp_path.iterdir()) == ["r.npz"]
  assert "state_file" not in optaxlr.load(p).info


def test_a_damaged_number_is_refused_by_the_fingerprint(tmp_path, two_results):
  _, a, _ = two_results
  p = a.save(tmp_path / "r.npz")
  arrays = dict(np.load(p))
  arrays["batch_loss"] = arrays["batch_loss"].copy()
  arrays["batch_loss"][0, 0, 0] += 1.0  # rewritten with valid zip checksums
  np.savez(p, **arrays)
  with pytest.raises(ValueError, match=r"is damaged: its arrays do not match the fingerprint"):
    optaxlr.load(p)


def test_bad_targets_and_arguments_are_clear_errors(tmp_path, two_results):
  task, a, _ = two_results
  folder = tmp_path / "r.npz"
  folder.mkdir()
  with pytest.raises(ValueError, match=r"save: path='.*r.npz' is an existing folder; give a file"
                                       r" name such as"):
    a.save(folder)
  with pytest.raises(ValueError, match=r"save: path='.*' is an existing folder"):
    a.save(tmp_path)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match=r"save: path='.*file/sub/r.npz' cannot be written"
                                       r" \((FileExistsError|NotADirectoryError)"):
    a.save(blocker / "sub" / "r.npz")
  assert sorted(x.name for x in tmp_path.iterdir()) == ["file", "r.npz"], "leftovers"
  p = a.save(tmp_path / "ok.npz")
  with pytest.raises(TypeError, match=r"load: optimizer must be the sweep's function hyperparameters"
                                      r" -> optax.GradientTransformation, got str 'adamw'"):
    optaxlr.load(p, task=task, optimizer="adamw")
  with pytest.raises(TypeError, match=r"load: task must be the sweep's optaxlr Task \(with init and"
                                      r" initial_state\), got dict \{'x'"):
    optaxlr.load(p, task={"x": 1}, optimizer=adamw)


def test_a_failed_state_write_ends_the_process_at_once(tmp_path):
  """orbax's default asynchronous checkpointer made a failed state write wait 300 s for a
  signal; the synchronous one raises at once and the process exits. Timed from the error, not
  from the child's start (its imports, which a loaded machine slows; CLOCK_MONOTONIC is one
  clock for all processes): the exit takes far less than the 300 s wait."""
  blocker = tmp_path / "file"
  blocker.write_text("x")
  code = textwrap.dedent(f"""
      import pathlib, time, numpy as np
      from optaxlr.engine import _result
      try:
        _result._write_state(pathlib.Path({str(blocker)!r}) / "s-1", {{"params": [np.ones(3)]}})
      except Exception as e:
        print("RAISED", type(e).__name__, time.monotonic(), flush=True)
  """)
  out = _child.run([sys.executable, "-c", code], _env())
  ended = time.monotonic()
  assert out.returncode == 0 and "RAISED" in out.stdout, _child.describe(out)
  line = next(x for x in out.stdout.splitlines() if x.startswith("RAISED"))
  took = ended - float(line.rsplit(" ", 1)[1])
  assert took < 150, f"the process took {took:.0f} s to end after a failed state write"


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import optaxlr
    from optaxlr.engine import _result
    from test_sweep import make_task, adamw
    source, target, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    new = optaxlr.load(source, task=make_task(), optimizer=adamw)
    if how.startswith("numbers"):  # the new result has no state
      new.params = new.opt_state = new.model_state = None
    count = [0]

    def wrap(name):
      real = getattr(_result, name)

      def step(path, *args):
        count[0] += 1
        if count[0] == n and how.endswith("before"):
          os.kill(os.getpid(), signal.SIGKILL)
        if count[0] == n and how.endswith("torn"):  # a write or a removal cut half-way
          if name == "_write_file":  # half of the bytes of the temporary file
            with open(path.with_name(path.name + ".tmp"), "wb") as f:
              f.write(args[0][: len(args[0]) // 2])
          elif name == "_write_state":  # the state written, then half of its files cut short
            real(path, *args)
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for p in files[len(files) // 2:]:
              p.write_bytes(p.read_bytes()[:3])
          else:  # half of the files removed
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for p in files[: len(files) // 2]:
              p.unlink()
          os.kill(os.getpid(), signal.SIGKILL)
        real(path, *args)
        if count[0] == n and how.endswith("after"):
          os.kill(os.getpid(), signal.SIGKILL)
        print("STEP", count[0], name, path.name, flush=True)

      setattr(_result, name, step)

    for name in ("_write_state", "_write_file", "_remove"):
      wrap(name)
    new.save(target)
    print("DONE", flush=True)
    """
)

# (n-th file-system step of the save, how): the steps of saving b (with state) over a are
# 1 the state's new sub-folder, 2 the .npz (the commit), 3 the .tmp leftover, 4 a's state.
KILLS = [
    ((1, "before"), "a"), ((1, "torn"), "a"), ((1, "after"), "a"),
    ((2, "before"), "a"), ((2, "torn"), "a"), ((2, "after"), "b"),
    ((3, "after"), "b"), ((4, "before"), "b"), ((4, "torn"), "b"),
    ((1, "numbers-before"), "a"), ((1, "numbers-after"), "b"),  # b without state over a
]


@pytest.mark.slow
def test_sigkill_during_save_over_a_result_never_loads_a_mix(tmp_path, two_results):
  task, a, b = two_results
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(tests=str(TESTS)))
  source = b.save(tmp_path / "b.npz")
  outcomes = []
  for (n, how), expected in KILLS:
    target = tmp_path / f"r-{n}-{how}" / "r.npz"
    a.save(target)
    out = _child.run([sys.executable, str(script), str(source), str(target), str(n), how], _env())
    _child.assert_killed(out, (n, how))
    if "state_file" in optaxlr.load(target).info:
      got = _which(optaxlr.load(target, task=task, optimizer=adamw), a, b)
    else:  # b without its state
      assert np.array_equal(optaxlr.load(target).batch_loss, b.batch_loss), (n, how)
      got = "b"
    outcomes.append(((n, how), got))
    assert got == expected, (n, how, out.stdout)
    # the next save removes what the killed one left
    b.save(target)
    assert _which(optaxlr.load(target, task=task, optimizer=adamw), a, b) == "b"
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.npz", "r.npz.state"]
    assert len(list((target.parent / "r.npz.state").iterdir())) == 1
  assert len(outcomes) == len(KILLS)
