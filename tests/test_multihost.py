"""Multi-host for real: two ``jax.distributed`` processes on the CPU (gloo collectives over
localhost) each get the full result of a sweep whose config axis is sharded over both, equal
to the single-process result; process 0 writes the checkpoint."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys
    pid, port, out, ckpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if pid >= 0:
      jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=2,
                                 process_id=pid, initialization_timeout=120)
    sys.path.insert(0, {tests!r})
    import numpy as np
    from optaxlr import search
    from test_sweep import make_task, adamw, run
    space = search.grid(lr=[1e-3, 1e-2, 3e-2], wd=[0.0, 1e-3])  # 6 configs: padded to 6 on 2 devices
    res = run(make_task(), adamw, space, seeds=2, devices=jax.devices(),
              checkpoint_dir=None if ckpt == "-" else ckpt, keep_params=True)
    assert res.info["devices"] == (2 if pid >= 0 else 1), res.info
    np.savez(out, batch_loss=res.batch_loss, stopped_at=res.stopped_at,
             **{{"m:" + k: v for k, v in res.metrics.items()}},
             **{{"p:" + str(i): v for i, v in enumerate(jax.tree.leaves(res.params))}})
    print("OK", jax.process_index(), flush=True)
    """
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_each_get_the_single_process_result(tmp_path):
  script = tmp_path / "mh.py"
  script.write_text(SCRIPT.format(tests=str(TESTS)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
  env.pop("XLA_FLAGS", None)
  port = str(_free_port())
  ckpt = tmp_path / "ckpt"
  procs = [
      subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path / f"p{i}.npz"),
                        str(ckpt)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
      for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "OK" in out, err[-3000:]
  single = subprocess.run([sys.executable, str(script), "-1", port, str(tmp_path / "single.npz"), "-"],
                          env=env, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = np.load(tmp_path / "single.npz")
  for i in range(2):
    got = np.load(tmp_path / f"p{i}.npz")
    assert sorted(got.files) == sorted(ref.files)
    for k in ref.files:
      # Each device runs 3 configs instead of 6 at once: float64 to a few ulps.
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-13, atol=1e-15, err_msg=f"process {i}: {k}")
  assert (ckpt / "manifest.json").exists()  # written once, by process 0


def _launch(tmp_path, name: str, text: str, args: list[str], devices: int = 1):
  """Runs ``text`` as two ``jax.distributed`` processes (``devices`` CPU devices each), then as
  one single-device process (``pid`` -1); returns the three CompletedProcess objects."""
  import _child

  script = tmp_path / f"{name}.py"
  script.write_text(text)
  env = _child.env({"JAX_PLATFORMS": "cpu",
                    "PYTHONPATH": os.pathsep.join([str(TESTS.parent),
                                                   os.environ.get("PYTHONPATH", "")])})
  env.pop("XLA_FLAGS", None)
  port = str(_free_port())
  many = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, *args], env=many,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=_child.HANG_S)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  for o in outs:
    assert o.returncode == 0, _child.describe(o)
  single = _child.run([sys.executable, str(script), "-1", port, *args], env)
  assert single.returncode == 0, _child.describe(single)
  return outs, single


PREAMBLE = textwrap.dedent(
    """
    import sys
    pid, port = int(sys.argv[1]), sys.argv[2]
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if pid >= 0:
      jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=2,
                                 process_id=pid, initialization_timeout=120)
    sys.path.insert(0, {tests!r})
    import numpy as np, optax, optaxlr
    from optaxlr import adapt, search
    from optaxlr.tasks import Task
    from test_sweep import make_task, run
    """
)

FEED_SCRIPT = PREAMBLE + textwrap.dedent(
    """
    base = make_task()
    x, y = np.asarray(base.train["x"]), np.asarray(base.train["y"])

    def stream(differ):
      def make(seed):
        rng = np.random.default_rng(seed)
        t = 0
        while True:
          idx = rng.choice(len(y), 16, replace=False)
          xb = x[idx] + (1.0 if differ and pid == 1 and t >= 4 else 0.0)
          t += 1
          yield {{"x": xb, "y": y[idx]}}
      return Task(name="fed", init=base.init, loss=base.loss, metrics=base.metrics,
                  train=make, eval=base.eval, info=base.info)

    sgd = lambda h: optax.sgd(h["lr"])
    space = search.grid(lr=[1e-2, 3e-2, 0.1, 0.3])
    res = run(stream(False), sgd, space, steps=8, eval_every=4, batch_size=16,
              devices=jax.devices())
    np.save(sys.argv[3] + f"-{{pid}}.npy", res.batch_loss)
    print("SAME OK", flush=True)
    if pid >= 0:
      try:
        run(stream(True), sgd, space, steps=8, eval_every=4, batch_size=16, devices=jax.devices())
        print("NOT REFUSED", flush=True)
      except ValueError as e:
        print("REFUSED", e, flush=True)
      try:  # a folder of each process's own (not shared): the same name, another folder
        run(stream(False), sgd, space, steps=8, eval_every=4, batch_size=16,
            devices=jax.devices(), checkpoint_dir=f"{{sys.argv[3]}}-ckpt-{{pid}}")
        print("CKPT NOT REFUSED", flush=True)
      except ValueError as e:
        print("CKPT REFUSED", e, flush=True)
    """
)


@pytest.mark.slow
def test_host_fed_streams_and_checkpoint_folders_are_compared_across_processes(tmp_path):
  """Each process reads its own copy of a host-fed stream: equal streams train as one process
  does; a stream that differs on process 1 from step 4 (chunk 1) is refused on both processes,
  naming the chunk, before that chunk runs. A checkpoint folder that is not one folder for
  both processes (each its own) is refused on both."""
  outs, single = _launch(tmp_path, "feed", FEED_SCRIPT.format(tests=str(TESTS)),
                         [str(tmp_path / "loss")])
  ref = np.load(tmp_path / "loss--1.npy")
  for i, o in enumerate(outs):
    assert "SAME OK" in o.stdout, o.stdout
    np.testing.assert_allclose(np.load(tmp_path / f"loss-{i}.npy"), ref, rtol=1e-13, atol=1e-15)
    line = next((x for x in o.stdout.splitlines() if x.startswith(("REFUSED", "NOT"))), o.stdout)
    assert line.startswith("REFUSED sweep: the batch streams differ across processes in chunk 1 "
                           "(steps 4..7; digests per process"), line
    line = next((x for x in o.stdout.splitlines() if x.startswith("CKPT")), o.stdout)
    assert line.startswith("CKPT REFUSED sweep: checkpoint_dir=") and (
        "is not one folder for all 2 processes: process(es) [1] do not see the file process 0 "
        "wrote there") in line, line


STEER_SCRIPT = PREAMBLE + textwrap.dedent(
    """
    out = sys.argv[3]
    task = make_task()
    sgd = lambda h: optax.sgd(h["lr"])
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 2.0, 0.001]

    def steer(event):  # a callback that steers: copy, set and stop at the first chunk
      if event.chunk == 0:
        return optaxlr.Control(copy={{2: 0}}, set_hparams={{1: {{"lr": 0.05}}}}, stop=[3])
      return None

    cases = {{
        "successive_halving": lambda: adapt.successive_halving("val/loss", eta=3, min_steps=4),
        "hyperband": lambda: adapt.hyperband("val/loss", eta=3, min_steps=4, max_steps=12),
        "pbt": lambda: adapt.pbt("val/loss", interval=4, perturb={{"lr": (0.8, 1.25)}}, seed=0),
        "callback": None,
    }}
    for name, strategy in cases.items():
      n_cfg = adapt.hyperband_size(3, 4, 12) if name == "hyperband" else len(lrs)
      space = search.zip(lr=(lrs * 3)[:n_cfg])
      extra = dict(adapt=strategy()) if strategy else dict(callback=steer)
      devices = jax.devices() if pid >= 0 else jax.devices()[:1]
      res = run(task, sgd, space, seeds=2, steps=12, eval_every=4, devices=devices, **extra)
      assert res.info["devices"] == (4 if pid >= 0 else 1), res.info
      np.savez(f"{{out}}-{{name}}-{{pid}}.npz", batch_loss=res.batch_loss,
               stop_reason=res.stop_reason.astype(str),
               **{{"m:" + k: v for k, v in res.metrics.items()}})
      print("OK", name, flush=True)
    """
)


@pytest.mark.slow
def test_steering_in_two_processes_of_two_devices_equals_one_device(tmp_path):
  """Successive halving, Hyperband, PBT and a steering callback, their config axis sharded over
  two processes x two devices, equal the 1-device run (float64, to a few ulps)."""
  outs, single = _launch(tmp_path, "steer", STEER_SCRIPT.format(tests=str(TESTS)),
                         [str(tmp_path / "r")], devices=2)
  for name in ("successive_halving", "hyperband", "pbt", "callback"):
    ref = np.load(tmp_path / f"r-{name}--1.npz")
    for i in range(2):
      got = np.load(tmp_path / f"r-{name}-{i}.npz")
      assert sorted(got.files) == sorted(ref.files), name
      np.testing.assert_array_equal(got["stop_reason"], ref["stop_reason"], err_msg=name)
      for k in ref.files:
        if k != "stop_reason":
          np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14,
                                     err_msg=f"{name}, process {i}: {k}")
