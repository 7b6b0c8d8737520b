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
