"""The engine with its DEFAULT settings against the independent hand-written program, short runs.

Issue 19's MLP target: with default settings (100 steps, batch 128, AdamW, a 64-256-256-10 MLP,
51,200 training examples, one evaluation) the engine's run time within 1.05x of an independent
hand-written ``jit(vmap(scan))`` that draws one permutation per epoch and gathers each
minibatch (``benchmarks/handwritten.py``, which imports nothing from optaxlr), at 4 and 64
configs, three runs.

"Default settings" means ``optaxlr.sweep(task, optimizer, space, steps=100, batch_size=128,
eval_every=100)`` and nothing else but ``Execution(progress=False)`` (a terminal progress bar is
host-side and not part of ``run_s``): ``update_ratio=True`` (recorded at the evaluation),
the default ``sync_every``, ``log_every`` and key. sweep_bench.py, in contrast, measures the
bare program (``update_ratio=False``, one sync per run) over 500 steps.

Each run: one warm-up call of each method (the engine's compiles; compile time is reported
apart), then ``repeats`` calls of each in rotating order; the run's ratio is the ratio of the
medians. The result file keeps every run.

Usage:
  python benchmarks/defaults_bench.py                       # -> results/defaults_cpu.json
  python benchmarks/defaults_bench.py --configs 4 --runs 1 --repeats 2 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import handwritten as hw
import optaxlr
import sweep_bench as sb
from _common import HERE, versions

N, N_EVAL, D, WIDTH, K, BATCH, STEPS = 51_200, 1_000, 64, 256, 10, 128, 100


def engine_default(task, space):
  def run():
    t0 = time.perf_counter()
    res = optaxlr.sweep(task, sb.optimizer, space, steps=STEPS, batch_size=BATCH, eval_every=STEPS,
                        execution=optaxlr.Execution(progress=False))
    return {"compile_s": res.info["compile_s"], "run_s": res.info["run_s"],
            "wall_s": time.perf_counter() - t0}
  return run


def one_run(c: int, repeats: int, task, train, data_d, keys) -> dict:
  space, lrs, wds = sb.make_space(c)
  hw_compile, hw_run, _ = sb.handwritten_method(train, data_d, lrs, wds, *keys)
  t = sb.interleaved({"engine": engine_default(task, space), "handwritten": hw_run}, repeats)
  eng, hand = t["engine"]["median"]["run_s"], t["handwritten"]["median"]["run_s"]
  return {"configs": c, "engine_run_s": eng, "handwritten_run_s": hand, "ratio": eng / hand,
          "engine_compile_s": t["engine"]["first"]["compile_s"], "handwritten_compile_s": hw_compile,
          "engine_runs_s": [r["run_s"] for r in t["engine"]["runs"]],
          "handwritten_runs_s": [r["run_s"] for r in t["handwritten"]["runs"]],
          "recompiled": any(r["compile_s"] > 0 for r in t["engine"]["runs"])}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--configs", type=int, nargs="*", default=[4, 64])
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None, help="default: benchmarks/results/defaults_<backend>.json")
  args = ap.parse_args(argv)
  sb.check_independent()
  backend = jax.default_backend()
  sizes = (D, WIDTH, WIDTH, K)
  data = sb.make_data(N, N_EVAL, D, K)
  data_d = tuple(jnp.asarray(a) for a in data)
  task = sb.make_task(data, sizes)
  train = hw.make_train(sizes, steps=STEPS, batch=BATCH, eval_every=STEPS)
  keys = hw.seed_keys(0, 0)
  load_start = sb.load_average()
  rows = []
  for run in range(args.runs):
    for c in args.configs:
      row = {"run": run, **one_run(c, args.repeats, task, train, data_d, keys)}
      rows.append(row)
      print(f"run {run} configs={c:4d}  engine {row['engine_run_s']:.4f}s  hand-written "
            f"{row['handwritten_run_s']:.4f}s  ratio {row['ratio']:.3f}  (compile "
            f"{row['engine_compile_s']:.2f}/{row['handwritten_compile_s']:.2f}s)", flush=True)
  summary = {c: [r["ratio"] for r in rows if r["configs"] == c] for c in args.configs}
  for c, rs in summary.items():
    print(f"configs={c}: ratios {', '.join(f'{x:.3f}' for x in rs)}; median {np.median(rs):.3f}")
  out = {"backend": backend, "device": jax.devices()[0].device_kind, "machine": sb.machine(),
         "versions": versions(), "load_average_start": load_start,
         "load_average_end": sb.load_average(),
         "settings": {"n": N, "n_eval": N_EVAL, "sizes": sizes, "batch": BATCH, "steps": STEPS,
                      "eval_every": STEPS, "runs": args.runs, "repeats": args.repeats},
         "rows": rows, "median_ratio": {str(c): float(np.median(rs)) for c, rs in summary.items()}}
  path = args.out or str(HERE / "results" / f"defaults_{backend}.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  print("wrote", path)


if __name__ == "__main__":
  main()
