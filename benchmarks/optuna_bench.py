"""Optuna benchmark: the bridge (optaxlr.integrations.optuna.optimize) against plain Optuna.

Both run the same study on the same work: ``n_trials`` trials of a 3-layer ReLU MLP
(d -> W -> W -> 10) trained with AdamW for ``steps`` steps on synthetic data generated here,
the validation loss evaluated (and reported to the trial) every ``eval_every`` steps, the
search over ``lr`` (log) x ``wd`` (log), the same sampler (``TPESampler(seed)``) and the same
pruner (``MedianPruner(n_startup_trials, n_warmup_steps=0)``):

  bridge    ox_optuna.optimize(study, task, ..., trials_per_sweep=K): K trials per compiled
            sweep, the pruner asked between chunks, pruned trials compacted out of the program
  plain     study.optimize(objective): benchmarks/handwritten_optuna.py, one trial at a time, a
            hand-written jitted chunk of eval_every steps (lr and wd traced: compiled once),
            trial.report + should_prune after every chunk; it imports nothing from optaxlr
            (checked before anything runs)

Three searches are run. "tpe_cold" and "tpe_warm": each study samples its own trials (the
bridge asks K at a time, without each other's results, so its trials differ from the
sequential study's). "fixed_warm": the same ``n_trials`` (lr, wd) pairs enqueued in both
studies, in the same order: equal trials; only the pruning decisions may differ, since a trial
of the bridge is compared with the trials finished before its round, not with those of its own
round. The first row pays every compilation, as a fresh process does; the "warm" ones reuse
what was compiled (the bridge still compiles a program for each number of live trials it has
not met yet). Reported: wall time (compilation included; the bridge's own compile time apart),
trials pruned / failed / complete, the best value and the steps trained (sum over trials).

Usage:
  python benchmarks/optuna_bench.py            # writes benchmarks/results/optuna_cpu.json
  python benchmarks/optuna_bench.py --quick    # a smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import optax  # noqa: E402
import optuna  # noqa: E402

import handwritten as hw  # noqa: E402
import handwritten_optuna as hwo  # noqa: E402
from _common import versions  # noqa: E402
from sweep_bench import check_independent, load_average, machine, make_data  # noqa: E402
import optaxlr  # noqa: E402
from optaxlr.integrations import optuna as ox_optuna  # noqa: E402

PRESETS = {
    "cpu": dict(n=8192, n_eval=1000, d=64, width=64, k=10, batch=128, steps=200, eval_every=20,
                n_trials=32, trials_per_sweep=8, startup=5),
}
QUICK = dict(n=2048, n_eval=256, d=16, width=16, k=10, batch=64, steps=40, eval_every=10,
             n_trials=8, trials_per_sweep=4, startup=2)
LR, WD = (1e-4, 1.0), (1e-6, 1e-1)
_ALLOWED = {"__future__", "math", "jax", "optax", "optuna", "numpy", "time", "handwritten"}


def optimizer(h):
  return optax.adamw(h["lr"], weight_decay=h["wd"])


def make_study(seed: int, startup: int):
  return optuna.create_study(
      sampler=optuna.samplers.TPESampler(seed=seed),
      pruner=optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0))


def counts(study, steps: int) -> dict:
  S = optuna.trial.TrialState
  states = [t.state for t in study.trials]
  trained = sum(max(t.intermediate_values, default=0) if t.state == S.PRUNED else steps
                for t in study.trials)
  done = [t.value for t in study.trials if t.state == S.COMPLETE]
  return {"trials": len(states), "pruned": states.count(S.PRUNED),
          "failed": states.count(S.FAIL), "complete": states.count(S.COMPLETE),
          "best_value": min(done) if done else None, "steps_trained": int(trained)}


def run_bridge(cfg, task, fixed):
  study = make_study(0, cfg["startup"])
  for p in fixed or ():
    study.enqueue_trial(p)
  t0 = time.perf_counter()
  batches = ox_optuna.optimize(
      study, task, optimizer, {"lr": optuna.distributions.FloatDistribution(*LR, log=True),
                               "wd": optuna.distributions.FloatDistribution(*WD, log=True)},
      n_trials=cfg["n_trials"], trials_per_sweep=cfg["trials_per_sweep"], steps=cfg["steps"],
      batch_size=cfg["batch"], eval_every=cfg["eval_every"], metric="val/loss", key=0)
  wall = time.perf_counter() - t0
  return {"wall_s": wall, "compile_s": sum(b.result.info["compile_s"] for b in batches),
          **counts(study, cfg["steps"])}


def run_plain(cfg, objective, fixed):
  study = make_study(0, cfg["startup"])
  for p in fixed or ():
    study.enqueue_trial(p)
  t0 = time.perf_counter()
  study.optimize(objective, n_trials=cfg["n_trials"])
  wall = time.perf_counter() - t0
  return {"wall_s": wall, **counts(study, cfg["steps"])}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=str(HERE / "results" / "optuna_cpu.json"))
  args = ap.parse_args(argv)
  check_independent(HERE / "handwritten_optuna.py", _ALLOWED)
  check_independent(HERE / "handwritten.py")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  cfg = QUICK if args.quick else PRESETS["cpu"]
  x, y, xe, ye = make_data(cfg["n"], cfg["n_eval"], cfg["d"], cfg["k"])
  sizes = (cfg["d"], cfg["width"], cfg["width"], cfg["k"])
  task = optaxlr.Task.from_functions(
      "bench-mlp", init=lambda key: hw.init_mlp(key, sizes), apply=hw.apply_mlp,
      loss="cross_entropy", train={"x": x, "y": y}, eval={"val": {"x": xe, "y": ye}},
      info={"num_classes": cfg["k"]})
  rng = np.random.default_rng(1)
  fixed = [{"lr": float(np.exp(rng.uniform(*np.log(LR)))),
            "wd": float(np.exp(rng.uniform(*np.log(WD))))} for _ in range(cfg["n_trials"])]
  objective = hwo.make_objective(sizes, (x, y, xe, ye), steps=cfg["steps"], batch=cfg["batch"],
                                 eval_every=cfg["eval_every"], lr_range=LR, wd_range=WD)
  out = {"config": cfg, "machine": machine(), "versions": versions(("jax", "optax", "optuna")),
         "load_start": load_average(), "rows": {}}
  # The first row pays the compilations (as a fresh process does); the later ones reuse what
  # was compiled (the bridge compiles a program for each number of live trials it has not met).
  for search_kind, trials in (("tpe_cold", None), ("tpe_warm", None), ("fixed_warm", fixed)):
    row = {"plain": run_plain(cfg, objective, trials), "bridge": run_bridge(cfg, task, trials)}
    row["bridge_over_plain_wall"] = row["bridge"]["wall_s"] / row["plain"]["wall_s"]
    out["rows"][search_kind] = row
    print(search_kind, json.dumps(row, default=float))
  out["load_end"] = load_average()
  if not args.quick:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
  main()
