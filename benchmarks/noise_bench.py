"""Recording the gradient noise scale in a sweep, and the critical batch size by branching.

Part ``overhead`` (issue 22 item 2): run time of the same sweep with ``noise_scale=True`` and
without (digits MLP, 16 learning rates x 2 seeds, SGD with momentum, batch 64, 600 steps, an
evaluation every 50 steps), repeats interleaved (off, on, off, on, ...), medians of
``info["run_s"]`` (compilation excluded: ``info["compile_s"]``, reported apart; the first
call of each compiles and is not counted), and of the process's CPU time per call (all
threads; less disturbed by other processes on a shared machine than wall time). The load
average of the machine is recorded before and after: on a shared machine the ratio's spread
is the honest error bar. Part ``flops``: XLA's FLOP count of a step and of the estimate.

Part ``critical`` (item 3): a trunk on digits (batch 32, SGD with momentum 0.9, lr 0.02,
``noise_scale=True``) with snapshots at steps 20 and 100 and its final state at 400;
``optaxlr.critical_batch_size`` forks batch sizes 8..512 (square-root rule) for 4096 examples
from each, against a brute force: each batch size its own sweep from the same snapshot with
another minibatch order (key 1), the critical batch size read off by the same rule (the
largest B within 10% of the smallest B's validation loss). Both curves, the critical batch
size and the noise scale at each snapshot, are reported.

Usage:
  python benchmarks/noise_bench.py --out benchmarks/results/noise_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
import optax

import optaxlr
from optaxlr import search

from _common import versions


def overhead(repeats: int) -> dict:
  task = optaxlr.tasks.digits(hidden=(128,))
  space = search.grid(lr=np.geomspace(1e-3, 0.3, 16).tolist())
  opt = lambda h: optax.sgd(h["lr"], momentum=0.9)  # noqa: E731
  kw = dict(steps=600, batch_size=64, seeds=2, eval_every=50,
            execution=optaxlr.Execution(progress=False))
  run_s = {False: [], True: []}
  cpu_s = {False: [], True: []}  # process CPU time of the whole call: robust to other loads
  compile_s = {}
  load = [os.getloadavg()]
  for rep in range(repeats + 1):
    for flag in (False, True):
      c0 = time.process_time()
      res = optaxlr.sweep(task, opt, space, noise_scale=flag, **kw)
      cpu = time.process_time() - c0
      if rep == 0:
        compile_s[flag] = res.info["compile_s"]
      else:
        run_s[flag].append(res.info["run_s"])
        cpu_s[flag].append(cpu)
  load.append(os.getloadavg())
  off, on = np.median(run_s[False]), np.median(run_s[True])
  return {
      "setup": "digits MLP (128), 16 lrs x 2 seeds, sgd momentum 0.9, batch 64, 600 steps, "
               "eval every 50 (12 noise estimates per run)",
      "repeats": repeats, "run_s_off": run_s[False], "run_s_on": run_s[True],
      "median_off_s": float(off), "median_on_s": float(on), "ratio": float(on / off),
      "min_off_s": float(np.min(run_s[False])), "min_on_s": float(np.min(run_s[True])),
      "ratio_of_min": float(np.min(run_s[True]) / np.min(run_s[False])),
      "cpu_s_off": cpu_s[False], "cpu_s_on": cpu_s[True],
      "cpu_ratio_of_medians": float(np.median(cpu_s[True]) / np.median(cpu_s[False])),
      "median_of_paired_ratios": float(np.median([b / a for a, b in zip(run_s[False], run_s[True])])),
      "ratio_per_repeat": [float(b / a) for a, b in zip(run_s[False], run_s[True])],
      "compile_s_off": compile_s[False], "compile_s_on": compile_s[True],
      "loadavg_before_after": load,
  }


def flops() -> dict:
  """XLA's FLOP count (``cost_analysis``) of one training step of one config (loss, gradient,
  SGD-momentum update) and of the noise statistics (the gradients of the 8 parts of its
  minibatch): the overhead per step is ``noise / eval_every / step``, independent of the
  machine's load."""
  import jax
  import jax.numpy as jnp

  from optaxlr.engine import micro_batch_stats, noise_parts

  task = optaxlr.tasks.digits(hidden=(128,))
  params = task.init(jax.random.key(0))
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)
  batch = {k: jnp.asarray(v[:64]) for k, v in task.train.items()}

  def step(p, s, b):
    g = jax.grad(task.loss)(p, b)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def noise(p, b):
    k, small = noise_parts(64)
    parts = jax.tree.map(lambda a: a[: k * small].reshape(k, small, *a.shape[1:]), b)
    return micro_batch_stats(jax.vmap(lambda part: jax.grad(task.loss)(p, part))(parts))

  f_step = jax.jit(step).lower(params, opt_state, batch).compile().cost_analysis()
  f_noise = jax.jit(noise).lower(params, batch).compile().cost_analysis()
  f_step = (f_step[0] if isinstance(f_step, list) else f_step)["flops"]
  f_noise = (f_noise[0] if isinstance(f_noise, list) else f_noise)["flops"]
  return {"step_flops": f_step, "noise_flops": f_noise, "noise_over_step": f_noise / f_step,
          "overhead_at_eval_every_50": f_noise / f_step / 50}


def critical() -> dict:
  task = optaxlr.tasks.digits(hidden=(32,))
  opt = lambda h: optax.sgd(h["lr"], momentum=0.9)  # noqa: E731
  ex = optaxlr.Execution(progress=False)
  trunk = optaxlr.sweep(task, opt, search.grid(lr=[0.02]), steps=400, batch_size=32,
                        eval_every=20, noise_scale=True, execution=optaxlr.Execution(
                            progress=False, keep_params_at=(20, 100), keep_params=True))
  bs, examples, tol = [8, 16, 32, 64, 128, 256, 512], 4096, 0.1
  t0 = time.perf_counter()
  cbs = optaxlr.critical_batch_size(task, opt, trunk, batch_sizes=bs, examples=examples,
                                    scaling="sqrt", tolerance=tol)
  branched_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  brute_loss, brute_crit = [], []
  for step in cbs.steps.tolist():
    snap = trunk if step == 400 else trunk.snapshots[step]
    row = []
    for b, lr in zip(bs, cbs.lrs):
      r = optaxlr.sweep(task, opt, search.grid(lr=[float(lr)]), steps=examples // b,
                        batch_size=b, eval_every=examples // b, key=1,
                        start_from=snap.fork([0]), execution=ex)
      row.append(float(r.metrics["val/loss"][0, 0, -1]))
    brute_loss.append(row)
    brute_crit.append(max(b for b, v in zip(bs, row) if v <= row[0] * (1 + tol)))
  brute_s = time.perf_counter() - t0
  eval_steps = trunk.eval_steps.tolist()
  recorded = trunk.metrics["train/noise_scale"][0, 0].tolist()
  return {
      "setup": "digits MLP (32), trunk batch 32, sgd momentum 0.9 lr 0.02, 400 steps; forks at "
               "20, 100, 400; batch sizes 8..512, sqrt rule, 4096 examples, tol 10% val loss",
      "steps": cbs.steps.tolist(), "batch_sizes": bs, "lrs": cbs.lrs.tolist(),
      "branched_loss": cbs.loss.tolist(), "branched_critical": cbs.critical.tolist(),
      "brute_loss": brute_loss, "brute_critical": brute_crit,
      "ratio_branched_over_brute": [a / b for a, b in zip(cbs.critical.tolist(), brute_crit)],
      "noise_scale_at_snapshot": cbs.noise_scale.tolist(),
      "schedule": [list(x) for x in cbs.schedule],
      "trunk_recorded_noise_scale": dict(zip(eval_steps, recorded)),
      "branched_s": branched_s, "brute_s": brute_s,
      "table": cbs.table(),
  }


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", type=pathlib.Path, default=None)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--part", choices=("all", "overhead", "critical"), default="all")
  args = ap.parse_args()
  result = {"versions": versions(), "cpus": os.cpu_count()}
  if args.part in ("all", "overhead"):
    result["flops"] = flops()
    print(result["flops"], flush=True)
    result["overhead"] = overhead(args.repeats)
    print(json.dumps(result["overhead"], indent=1), flush=True)
  if args.part in ("all", "critical"):
    result["critical"] = critical()
    print(result["critical"]["table"], flush=True)
    print({k: result["critical"][k] for k in ("branched_critical", "brute_critical",
                                               "schedule", "branched_s", "brute_s")})
  if args.out is not None:
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.write_text(json.dumps({**old, **result}, indent=1, default=str) + "\n")


if __name__ == "__main__":
  main()
