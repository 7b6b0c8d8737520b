"""Steering and adaptive search on several (simulated CPU) devices equal their 1-device runs.

They crashed at the chunk after the first decision ("Computation was compiled for input
shardings that disagree"): the steered or compacted carry came back replicated (issue 20).
Each device count runs in a subprocess of its own (XLA_FLAGS must be set before JAX starts).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

TESTS = pathlib.Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={n}"
    import jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    import numpy as np, optax, optaxlr
    from optaxlr import adapt, search
    from test_sweep import make_task, run
    assert len(jax.devices()) == {n}, jax.devices()
    task = make_task()
    sgd = lambda h: optax.sgd(h["lr"])
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 2.0, 0.001]

    def steer(event):  # a callback that steers: copy, set and stop at the first chunk
      if event.chunk == 0:
        return optaxlr.Control(copy={{2: 0}}, set_hparams={{1: {{"lr": 0.05}}}}, stop=[3])
      return None

    cases = {{
        "successive_halving": (lambda: adapt.successive_halving("val/loss", eta=3, min_steps=4),
                               dict(steps=12, eval_every=4)),
        "hyperband": (lambda: adapt.hyperband("val/loss", eta=3, min_steps=4, max_steps=12),
                      dict(steps=12, eval_every=4)),
        "pbt": (lambda: adapt.pbt("val/loss", interval=4, perturb={{"lr": (0.8, 1.25)}}, seed=0),
                dict(steps=12, eval_every=4)),
        "callback": (None, dict(steps=12, eval_every=4)),
    }}
    for name, (strategy, kw) in cases.items():
      n_cfg = adapt.hyperband_size(3, 4, 12) if name == "hyperband" else len(lrs)
      space = search.zip(lr=(lrs * 3)[:n_cfg])
      extra = dict(adapt=strategy()) if strategy else dict(callback=steer)
      many = run(task, sgd, space, seeds=2, **kw, **extra)
      extra = dict(adapt=strategy()) if strategy else dict(callback=steer)
      one = run(task, sgd, space, seeds=2, devices=jax.devices()[:1], **kw, **extra)
      assert many.info["devices"] == {n} and one.info["devices"] == 1, name
      np.testing.assert_array_equal(many.stop_reason, one.stop_reason, err_msg=name)
      np.testing.assert_allclose(many.batch_loss, one.batch_loss, rtol=1e-12, atol=1e-14,
                                 err_msg=name)
      for m in one.metrics:
        np.testing.assert_allclose(many.metrics[m], one.metrics[m], rtol=1e-12, atol=1e-14,
                                   err_msg=name + " " + m)
      print("OK", name, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_steering_and_adaptive_search_on_several_devices_equal_one_device(n):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent),
                                                      os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT.format(n=n, tests=str(TESTS))],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr[-4000:]
  for name in ("successive_halving", "hyperband", "pbt", "callback"):
    assert f"OK {name}" in out.stdout, out.stdout
