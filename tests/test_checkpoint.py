"""Checkpoints under faults: processes SIGKILLed at random instants and inside each file write,
then resumed, give results bitwise equal to an uninterrupted run (float32 and float64); damaged
folders, folders of other sweeps and a second process on the same folder are clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _child
import optaxlr
from optaxlr import search
from optaxlr.tasks import Task
from test_sweep import adamw, make_task, run

TESTS = pathlib.Path(__file__).parent
SPACE = dict(lr=[1e-3, 3e-2, 0.1], wd=[0.0, 1e-2, 1e-3])
KW = dict(seeds=2, steps=40, eval_every=4, max_group_size=2)

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    folder, dtype = sys.argv[1], sys.argv[2]
    import jax
    jax.config.update("jax_enable_x64", dtype == "64")
    sys.path.insert(0, {tests!r})
    from optaxlr import search
    from optaxlr.engine import _checkpoint
    from test_sweep import make_task, adamw, run
    if len(sys.argv) > 3:  # SIGKILL inside the n-th file write, after `frac` of its bytes
      n, frac = int(sys.argv[3]), float(sys.argv[4])
      real, count = _checkpoint._fsync_write, [0]
      def killing(path, data):
        count[0] += 1
        if count[0] == n:
          tmp = path.with_name(path.name + ".tmp")
          with open(tmp, "wb") as f:
            f.write(data[: int(len(data) * frac)])
            f.flush()
          os.kill(os.getpid(), signal.SIGKILL)
        return real(path, data)
      _checkpoint._fsync_write = killing
    task = make_task()
    print("READY", flush=True)
    kw = {kw!r}
    callback = None
    if len(sys.argv) <= 3:  # kills chosen by the test: a long run that waits at each chunk
      kw.update(steps=120, eval_every=2)
      def callback(event):  # announces the chunk, then waits until the test says "go"
        print("CHUNK", flush=True)
        if sys.stdin.readline().strip() != "go":
          raise SystemExit("the test closed stdin")
    run(task, adamw, search.zip(**{space!r}), checkpoint_dir=folder, callback=callback, **kw)
    print("DONE", flush=True)
    """
)


def _script(tmp_path) -> pathlib.Path:
  path = tmp_path / "ckpt_run.py"
  path.write_text(SCRIPT.format(tests=str(TESTS), space=SPACE, kw=KW))
  return path


def _env():
  root = str(TESTS.parent)
  # Subprocesses share a persistent compilation cache (this session's own): each compiles the
  # sweep once, not every time it is started again.
  return _child.env({"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                     "JAX_PLATFORMS": "cpu",
                     "JAX_COMPILATION_CACHE_DIR": str(_child.compilation_cache()),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})


def _kill_at_chunk(script, folder, dtype, chunk, delay):
  """Runs the sweep in a subprocess that waits at every chunk's callback for the test's "go";
  the test lets ``chunk`` chunks through, then SIGKILLs it ``delay`` seconds after releasing the
  last one. The child cannot pass the next chunk's callback on its own, so where it dies is
  chosen by the test (somewhere between that chunk's callback and the next: the commit's file
  writes, the next chunk's compute), never by how fast the machine is."""
  log = script.with_name("child-stderr.txt")  # a file, not a pipe: the child never blocks on it
  with open(log, "w") as err:
    proc = subprocess.Popen([sys.executable, str(script), str(folder), dtype], env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
  try:
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, log.read_text()[-3000:])
    for i in range(chunk):
      line = proc.stdout.readline()
      assert line.strip() == "CHUNK", (f"chunk {i} of {chunk}: {line!r}", log.read_text()[-3000:])
      proc.stdin.write("go\n")
      proc.stdin.flush()
    time.sleep(delay)
  finally:
    proc.kill()
    proc.wait(timeout=60)
    proc.stdin.close()
    proc.stdout.close()


def _assert_same(a, b):
  np.testing.assert_array_equal(a.batch_loss, b.batch_loss)
  assert a.metrics.keys() == b.metrics.keys()
  for m in a.metrics:
    np.testing.assert_array_equal(a.metrics[m], b.metrics[m], err_msg=m)
  np.testing.assert_array_equal(a.stopped_at, b.stopped_at)
  np.testing.assert_array_equal(a.stop_reason, b.stop_reason)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["32", "64"])
def test_sigkill_at_random_instants_then_resume_is_bitwise_equal(tmp_path, dtype):
  script = _script(tmp_path)
  folder = tmp_path / "ckpt"
  rng = random.Random(int(dtype))
  kw = {**KW, "steps": 120, "eval_every": 2}
  positions = []
  events = []
  with jax.enable_x64(dtype == "64"):
    reference = run(make_task(), adamw, search.zip(**SPACE), callback=events.append, **kw)
    n_chunks = len(events)
    # The same folder killed again and again: each process resumes the previous one's state.
    # The test picks the chunk of each kill (at least 2, so that every kill moves the folder on
    # by a commit; at least one chunk is left after it, so the child is still waiting when the
    # kill comes) and a delay after it.
    for _ in range(5):
      done = 0
      if (folder / "manifest.json").exists():
        done = len(json.loads((folder / "manifest.json").read_text())["chunks"])
      assert n_chunks - done >= 3, f"too few chunks left to kill in: {done} of {n_chunks} done"
      chunk = rng.randint(2, min(n_chunks - done - 1, 6))
      _kill_at_chunk(script, folder, dtype, chunk, rng.uniform(0.0, 0.05))
      manifest = json.loads((folder / "manifest.json").read_text())
      positions.append((tuple(manifest["position"]), manifest["finished"]))
      assert not manifest["finished"], positions
    assert len(set(positions)) >= 3, f"the kills landed at too few places: {positions}"
    resumed = run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  _assert_same(reference, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("n, frac", [(1, 0.5), (2, 0.5), (3, 0.0), (3, 0.7), (4, 1.0), (8, 0.3)])
def test_sigkill_inside_each_write_then_resume_is_bitwise_equal(tmp_path, n, frac):
  """Writes go chunk file, state file, manifest (the commit), per chunk: killing inside write
  n (after ``frac`` of its bytes) covers a torn chunk file, a torn state file, a torn manifest,
  and every gap between them."""
  script = _script(tmp_path)
  folder = tmp_path / "ckpt"
  out = _child.run([sys.executable, str(script), str(folder), "32", str(n), str(frac)], _env())
  _child.assert_killed(out, (n, frac))
  reference = run(make_task(), adamw, search.zip(**SPACE), **KW)
  resumed = run(make_task(), adamw, search.zip(**SPACE), **KW, execution=optaxlr.Execution(checkpoint_dir=folder))
  _assert_same(reference, resumed)
  assert not list(folder.glob("*.tmp")), "leftovers of the killed write were not removed"


@pytest.fixture
def finished(tmp_path):
  folder = tmp_path / "ckpt"
  kw = dict(seeds=1, steps=16, eval_every=4, max_group_size=2)
  res = run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  return folder, kw, res


def test_damaged_folders_are_clear_errors(finished):
  folder, kw, res = finished
  again = run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  _assert_same(res, again)
  chunk = sorted(folder.glob("chunk-*.npz"))[0]
  data = bytearray(chunk.read_bytes())
  data[len(data) // 2] ^= 0xFF
  chunk.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=rf"checkpoint_dir='{folder}'.*{chunk.name} is damaged"):
    run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  chunk.unlink()
  with pytest.raises(ValueError, match=rf"{chunk.name} is missing or unreadable"):
    run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  manifest = folder / "manifest.json"
  manifest.write_text(manifest.read_text()[:50])
  with pytest.raises(ValueError, match=r"manifest.json is damaged \(JSONDecodeError"):
    run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))
  manifest.write_text("[]")
  with pytest.raises(ValueError, match=r"manifest.json has an unknown format"):
    run(make_task(), adamw, search.zip(**SPACE), **kw, execution=optaxlr.Execution(checkpoint_dir=folder))


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("my results")
  with pytest.raises(ValueError, match=r"is not an optaxlr checkpoint \(no manifest.json\) and is not empty"):
    run(make_task(), adamw, search.zip(**SPACE), steps=8, eval_every=4, execution=optaxlr.Execution(checkpoint_dir=tmp_path))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"exists and is not a folder"):
    run(make_task(), adamw, search.zip(**SPACE), steps=8, eval_every=4, execution=optaxlr.Execution(checkpoint_dir=tmp_path / "file"))


def _wide_task(width):
  base = make_task()

  def init(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (5, width)) * 0.5, "b1": jnp.zeros(width),
            "w2": jax.random.normal(k2, (width, 2)) * 0.5, "b2": jnp.zeros(2)}

  def apply(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]

  return Task.from_functions("toy", init, apply, "cross_entropy", train=base.train, eval=base.eval,
                             info={"num_classes": 2})


def _other_data():
  import dataclasses

  base = make_task()
  x = np.array(base.train["x"])
  x[0, 0] += 1e-3  # one value of one example
  return dataclasses.replace(base, train={"x": x, "y": base.train["y"]})


@pytest.mark.parametrize("change, differs", [
    (lambda: dict(optimizer=lambda h: optax.sgd(h["lr"] + 0 * h["wd"])), "opt_state"),
    (lambda: dict(optimizer=lambda h: optax.adamw(h["lr"], b1=0.8, weight_decay=h["wd"])), "optimizer"),
    (lambda: dict(task=_other_data()), "data"),
    (lambda: dict(task=_wide_task(16)), "params"),
    (lambda: dict(objective=lambda loss, h: jnp.abs(loss - 0.1) + 0.1), "objective"),
    (lambda: dict(x64=True), "dtype"),
    (lambda: dict(key=1), "key"),
    (lambda: dict(space=search.zip(lr=[1e-3, 3e-2, 0.2], wd=[0.0, 1e-2, 1e-3])), "hparams"),
])
def test_a_folder_of_another_sweep_is_a_clear_error_naming_what_differs(finished, change, differs):
  folder, kw, _ = finished
  c = change()
  task = c.pop("task", make_task())
  opt = c.pop("optimizer", adamw)
  space = c.pop("space", search.zip(**SPACE))
  x64 = c.pop("x64", False)
  with jax.enable_x64(x64):
    with pytest.raises(ValueError, match=rf"checkpoint_dir='{folder}': holds a different sweep \(.*{differs}"):
      run(task, opt, space, **kw, **c, execution=optaxlr.Execution(checkpoint_dir=folder))


def test_two_processes_on_one_folder(tmp_path):
  """A second process that opens a folder in use gets a clear error, not interleaved commits."""
  folder = tmp_path / "ckpt"
  script = _script(tmp_path)
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import fcntl, os, sys, time
      os.makedirs({str(folder)!r}, exist_ok=True)
      f = open(os.path.join({str(folder)!r}, ".lock"), "a+")
      fcntl.flock(f.fileno(), fcntl.LOCK_EX)
      print("LOCKED", flush=True)
      time.sleep(60)
  """)], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "LOCKED"
    with pytest.raises(ValueError, match=r"is in use by another running sweep"):
      run(make_task(), adamw, search.zip(**SPACE), steps=8, eval_every=4, execution=optaxlr.Execution(checkpoint_dir=folder))
  finally:
    proc.kill()
    proc.wait()
    proc.stdout.close()
  del script
  res = run(make_task(), adamw, search.zip(**SPACE), steps=8, eval_every=4, execution=optaxlr.Execution(checkpoint_dir=folder))
  assert np.isfinite(res.batch_loss).all()
