"""Adaptive search on built-in digits: successive halving and PBT against the full grid.

Successive halving (issue 12): a random space of 81 AdamW configs (lr, weight decay), 2 seeds.
The full budget trains every config ``steps`` steps; successive halving (eta 3, first rung at
``steps / 27``) keeps the best third at each rung. Reported: the best config's validation error
(mean over seeds) of each, the config-steps each spent (steps trained, summed over configs), the
steps the program computed (``slot_steps``) and the wall time of both, measured side by side.

PBT: SGD with momentum on digits, where a decaying rate matters, a population of 16 constant
learning rates (log-uniform) x 2 seeds; PBT every ``steps / 8`` steps (quantile 0.25, perturb
x0.5 / x2) against the best fixed rate of the same population at the same budget; then the
winner's trajectory replayed as a schedule in a plain sweep.

Usage:
  python benchmarks/adapt_bench.py --out benchmarks/results/adapt_cpu.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np
import optax

import optaxlr
from optaxlr import adapt, search


def successive_halving(task, steps: int, seeds: int) -> dict:
  space = search.random(0, 81, lr=search.log_uniform(1e-4, 3e-1), wd=search.log_uniform(1e-5, 1.0))

  def opt(h):
    return optaxlr.adamw(h["lr"], weight_decay=h["wd"])

  r0 = steps // 27
  kw = dict(steps=steps, batch_size=64, seeds=seeds, eval_every=r0, progress=False)
  out = {}
  for name, strat in (("full", None), ("successive_halving", adapt.successive_halving(
      "val/error", eta=3, min_steps=r0))):
    optaxlr.sweep(task, opt, space, **{**kw, "steps": r0 * 3}, adapt=None)  # warm the caches
    t0 = time.perf_counter()
    res = optaxlr.sweep(task, opt, space, **kw, adapt=strat)
    wall = time.perf_counter() - t0
    best = res.best("val/error")
    trained = np.where(res.stopped_at >= 0, res.stopped_at, steps).mean(axis=0).sum()
    out[name] = {
        "best_val_error": best["val/error"], "best_val_error_std": best["val/error_std"],
        "best_hparams": best["hparams"], "config_steps": float(trained),
        "slot_steps": int(res.info["slot_steps"]), "wall_s": wall,
        "compile_s": res.info["compile_s"], "run_s": res.info["run_s"],
    }
  f, s = out["full"], out["successive_halving"]
  out["verdict"] = {
      "error_gap_pp": 100 * (s["best_val_error"] - f["best_val_error"]),
      "config_steps_fraction": s["config_steps"] / f["config_steps"],
      "wall_fraction": s["wall_s"] / f["wall_s"],
      "within_half_point": bool(100 * (s["best_val_error"] - f["best_val_error"]) <= 0.5),
      "at_most_a_third": bool(s["config_steps"] <= f["config_steps"] / 3),
  }
  return out


def population_based_training(task, steps: int, seeds: int) -> dict:
  space = search.random(1, 16, lr=search.log_uniform(1e-3, 1.0))

  def opt(h):
    return optax.sgd(h["lr"], momentum=0.9)

  kw = dict(steps=steps, batch_size=64, seeds=seeds, eval_every=steps // 8, progress=False)
  fixed = optaxlr.sweep(task, opt, space, **kw)
  p = adapt.pbt("val/loss", interval=steps // 8, quantile=0.25, perturb={"lr": (0.5, 2.0)}, seed=0)
  res = optaxlr.sweep(task, opt, space, **kw, adapt=p)
  best_fixed = fixed.best("val/error")
  best_pbt = res.best("val/error")
  c = best_pbt["index"]
  bounds, values, sched = p.schedule(c, "lr")
  replay = optaxlr.sweep(task, lambda h: optax.sgd(sched, momentum=h["momentum"]),
                         search.zip(momentum=[0.9]), **kw)
  rep = float(replay.final("val/error").mean())
  return {
      "best_fixed": {"val_error": best_fixed["val/error"], "std": best_fixed["val/error_std"],
                     "lr": best_fixed["hparams"]["lr"]},
      "pbt": {"val_error": best_pbt["val/error"], "std": best_pbt["val/error_std"],
              "exploits": len(res.info["adapt"]["exploits"]),
              "schedule": {"boundaries": bounds.tolist(), "lr": values.tolist()}},
      "replay": {"val_error": rep},
      "verdict": {"pbt_matches_or_beats_fixed": bool(best_pbt["val/error"] <= best_fixed["val/error"]),
                  "replay_gap_pp": 100 * (rep - best_pbt["val/error"])},
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=810)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  task = optaxlr.tasks.digits()
  t0 = time.perf_counter()
  result = {
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "backend": jax.default_backend(), "jax": jax.__version__},
      "settings": {"steps": args.steps, "seeds": args.seeds},
      "successive_halving": successive_halving(task, args.steps, args.seeds),
      "pbt": population_based_training(task, args.steps, args.seeds),
  }
  result["wall_s"] = time.perf_counter() - t0
  print(json.dumps(result, indent=1, default=str))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
  main()
