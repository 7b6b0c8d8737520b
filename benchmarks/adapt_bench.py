"""Adaptive search: successive halving and PBT against the full grid, and PBT where a schedule matters.

Successive halving (issue 12): a random space of 81 AdamW configs (lr, weight decay), 2 seeds.
The full budget trains every config ``steps`` steps; successive halving (eta 3, first rung at
``steps / 27``) keeps the best third at each rung. Reported: the best config's validation error
(mean over seeds) of each, the config-steps each spent (steps trained, summed over configs), the
steps the program computed (``slot_steps``) and the wall time of both, measured side by side.

PBT on digits: SGD with momentum, a population of 16 constant learning rates (log-uniform) x 2
seeds; PBT every ``steps / 8`` steps (quantile 0.25, perturb x0.5 / x2) against the best fixed
rate of the same population at the same budget; then the winner's trajectory replayed as a
schedule in a plain sweep. A fixed rate already does well on digits.

PBT where a schedule matters (``--part schedule``): regression on a noisy random teacher
(:func:`noisy_teacher_student`), SGD with momentum 0.9, batch 16, 16 log-spaced rates. First the
fixed grid of constant rates against cosine and step decay from the same peaks (does a schedule
matter?), then PBT populations of those 16 rates (several exploit/explore settings), each seed
an independent PBT; every PBT's best member is replayed from scratch with its lineage's
schedule. Same budget: 16 runs x ``steps`` steps per seed for every method.

Usage:
  python benchmarks/adapt_bench.py --out benchmarks/results/adapt_cpu.json
  python benchmarks/adapt_bench.py --part schedule --out benchmarks/results/adapt_cpu.json
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
  kw = dict(steps=steps, batch_size=64, seeds=seeds, eval_every=r0, execution=optaxlr.Execution(progress=False))
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

  kw = dict(steps=steps, batch_size=64, seeds=seeds, eval_every=steps // 8, execution=optaxlr.Execution(progress=False))
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


# --------------------------------------------------------------------------- PBT where a schedule matters
def noisy_teacher_student(seed: int = 0):
  """Regression on a random tanh teacher with heavy target noise (std 1 on O(1) targets) and
  small batches: a large rate learns the teacher fast, but with a constant rate the gradient
  noise holds the clean validation error up in proportion to the rate, so the rate has to come
  down at the end (a schedule matters)."""
  return optaxlr.tasks.teacher_student(d=10, n_train=16384, n_val=1024, n_test=1024, noise=1.0,
                                       teacher_hidden=(32,), hidden=(64,), seed=seed)


SCHEDULE_TASKS = {"teacher_student": (noisy_teacher_student, "val/loss", "test/loss")}

PBT_SETTINGS = {
    # The setting fixed before the runs (Jaderberg et al.'s factors, 20 decisions).
    "perturb_0.8_1.25_every_T/20": dict(interval=20, quantile=0.25, perturb=(0.8, 1.25)),
    "perturb_0.8_1.25_every_T/10": dict(interval=10, quantile=0.25, perturb=(0.8, 1.25)),
    "perturb_0.5_2_every_T/20": dict(interval=20, quantile=0.25, perturb=(0.5, 2.0)),
    "perturb_0.8_1.25_resample_0.25_every_T/20": dict(interval=20, quantile=0.25,
                                                       perturb=(0.8, 1.25), resample=0.25),
    "perturb_0.8_1.25_q0.5_every_T/20": dict(interval=20, quantile=0.5, perturb=(0.8, 1.25)),
    # Added after the others had run (their best by then): not an unbiased estimate.
    "perturb_0.5_2_every_T/5": dict(interval=5, quantile=0.25, perturb=(0.5, 2.0)),
}


def _timing(res) -> dict:
  return {"compile_s": float(res.info["compile_s"]), "run_s": float(res.info["run_s"])}


def _per_seed(res, config: int, val: str, test: str) -> dict:
  return {"val": res.final(val)[:, config].tolist(), "test": res.final(test)[:, config].tolist()}


def _lineage(events: list, member: int, steps: int) -> list[tuple[int, int, int]]:
  """``(slot, first step, end)`` of each segment of ``member``'s lineage, oldest first: the slot
  that carried it between two copies, walking back through PBT's exploit events."""
  segments, cur, end = [], member, steps
  while True:
    before = [e for e in events if e["dst"] == cur and e["step"] < end]
    if not before:
      return [(cur, 0, end), *segments[::-1]]
    last = max(before, key=lambda e: e["step"])
    segments.append((cur, last["step"], end))
    cur, end = last["src"], last["step"]


def _per_seed_choice(res, val: str, test: str) -> dict:
  """The config chosen on each seed's own val (as PBT chooses its member per seed)."""
  v = np.where(np.isfinite(res.final(val)), res.final(val), np.inf)
  i = v.argmin(axis=1)
  seeds = np.arange(len(i))
  return {"index": i.tolist(), "val": _stats(res.final(val)[seeds, i]),
          "test": _stats(res.final(test)[seeds, i])}


def _stats(xs) -> dict:
  a = np.asarray(xs, np.float64)
  return {"mean": float(a.mean()), "std": float(a.std()), "per_seed": a.tolist()}


def pbt_where_a_schedule_matters(task_name: str, steps: int, seeds: int, batch_size: int,
                                 n_lrs: int, lo: float, hi: float, settings: list[str]) -> dict:
  """Fixed rates, decaying schedules and PBT over the same log-spaced rates, same budget.

  Every seed ``s`` is one independent experiment: initial parameters and minibatch order of
  seed ``s`` (shared by every config of the seed, as always in a sweep), one PBT with its own
  random decisions (``pbt(seed=s)``), the fixed grid's and the schedules' rows of seed ``s``.
  Budget: ``n_lrs`` runs x ``steps`` steps per seed for each method (PBT's population is the
  grid of rates; an exploited member keeps training in its slot: the same slot-steps).
  """
  make, val, test = SCHEDULE_TASKS[task_name]
  task = make()
  lrs = search.logspace(lo, hi, n_lrs)
  space = search.grid(lr=lrs)
  seed_list = list(range(seeds))
  eval_every = steps // 20
  kw = dict(steps=steps, batch_size=batch_size, eval_every=eval_every, execution=optaxlr.Execution(progress=False))
  mode_metric = val

  def constant(h):
    return optax.sgd(h["lr"], momentum=0.9)

  def cosine(h):
    return optax.sgd(optaxlr.schedules.cosine(h["lr"], steps), momentum=0.9)

  def step_decay(h):
    return optax.sgd(optaxlr.schedules.multistep(h["lr"], [steps // 2, 3 * steps // 4], 0.1),
                     momentum=0.9)

  out = {"task": task_name, "task_info": {k: v for k, v in task.info.items()
                                          if isinstance(v, (int, float, str, tuple, dict))
                                          and k not in ("indices", "teacher")},
         "metric": val, "reported": test, "lrs": lrs.tolist(),
         "settings": {"steps": steps, "seeds": seeds, "batch_size": batch_size,
                      "eval_every": eval_every, "optimizer": "sgd(momentum=0.9)"},
         "budget": {"runs_per_seed": n_lrs, "steps_per_run": steps,
                    "config_steps_per_seed": n_lrs * steps}}
  fixed = {}
  for name, opt in (("constant", constant), ("cosine", cosine), ("step_decay", step_decay)):
    t0 = time.perf_counter()
    res = optaxlr.sweep(task, opt, space, seeds=seed_list, **kw)
    wall = time.perf_counter() - t0
    b = res.best(mode_metric)
    i = b["index"]
    per = _per_seed(res, i, val, test)
    fixed[name] = {
        "best_lr": float(lrs[i]), "index": i,
        "val": _stats(per["val"]), "test": _stats(per["test"]),
        "all_val_mean": res.final(val).mean(axis=0).tolist(),
        "all_test_mean": res.final(test).mean(axis=0).tolist(),
        # Choosing the rate per seed (as PBT chooses its member per seed): an upper bound.
        "per_seed_choice": _per_seed_choice(res, val, test),
        "diverged": int(res.diverged.sum()), "wall_s": wall, **_timing(res),
    }
  out["fixed_grid"] = fixed
  c, cos = out["fixed_grid"]["constant"], out["fixed_grid"]["cosine"]
  out["schedule_matters"] = {
      "best_constant_test": c["test"]["mean"], "best_cosine_test": cos["test"]["mean"],
      "best_step_decay_test": out["fixed_grid"]["step_decay"]["test"]["mean"],
      "cosine_over_constant": cos["test"]["mean"] / c["test"]["mean"],
      "paired_cosine_minus_constant_test": _stats(np.subtract(cos["test"]["per_seed"],
                                                              c["test"]["per_seed"])),
  }

  out["pbt"] = {}
  for sname in settings:
    cfg = PBT_SETTINGS[sname]
    interval = steps // cfg["interval"]
    runs = []
    for s in seed_list:
      resample = ({"lr": search.log_uniform(lo, hi)} if cfg.get("resample") else None)
      p = adapt.pbt(mode_metric, interval=interval, quantile=cfg["quantile"],
                    perturb={"lr": cfg["perturb"]}, resample=resample,
                    resample_probability=cfg.get("resample", 0.25), seed=s)
      t0 = time.perf_counter()
      res = optaxlr.sweep(task, constant, space, seeds=[s], adapt=p, **kw)
      wall = time.perf_counter() - t0
      b = res.best(mode_metric)
      m = b["index"]
      bounds, values, sched = p.schedule(m, "lr")
      # Replay: a fresh single run (seed s: the same initial parameters and minibatches) with
      # the lineage's piecewise-constant rate as a schedule, no copying.
      t1 = time.perf_counter()
      rep = optaxlr.sweep(task, lambda h: optax.sgd(sched, momentum=h["momentum"]),
                          search.zip(momentum=[0.9]), seeds=[s], **kw)
      rep_wall = time.perf_counter() - t1
      segments = _lineage(p.events, m, steps)
      d_loss = np.concatenate([np.abs(res.batch_loss[0, slot, a:b] - rep.batch_loss[0, 0, a:b])
                               for slot, a, b in segments])
      runs.append({
          "seed": s, "member": m, "val": float(res.final(val)[0, m]),
          "test": float(res.final(test)[0, m]),
          "replay_val": float(rep.final(val)[0, 0]), "replay_test": float(rep.final(test)[0, 0]),
          # Every training step of the lineage: each segment against the slot that ran it.
          "replay_max_abs_batch_loss_diff": float(np.nanmax(d_loss)),
          "lineage": [list(seg) for seg in segments],
          "population_val_mean": float(np.nanmean(res.final(val)[0])),
          "exploits": len(p.events), "schedule": {"boundaries": bounds.tolist(),
                                                  "lr": values.tolist()},
          "config_steps": float(res.info["adapt"].get("config_steps", n_lrs * steps))
          if isinstance(res.info.get("adapt"), dict) else None,
          "slot_steps": int(res.info.get("slot_steps", n_lrs * steps)),
          "wall_s": wall, **_timing(res), "replay_wall_s": rep_wall,
          "replay_compile_s": float(rep.info["compile_s"]), "replay_run_s": float(rep.info["run_s"]),
      })
    pv = [r["val"] for r in runs]
    pt = [r["test"] for r in runs]
    out["pbt"][sname] = {
        "interval": interval, **{k: v for k, v in cfg.items() if k != "interval"},
        "val": _stats(pv), "test": _stats(pt),
        "paired_test_minus_best_constant": _stats(np.subtract(pt, c["test"]["per_seed"])),
        "paired_test_minus_best_cosine": _stats(np.subtract(pt, cos["test"]["per_seed"])),
        "matches_or_beats_best_constant_test": bool(np.mean(pt) <= c["test"]["mean"]),
        "matches_or_beats_best_constant_val": bool(np.mean(pv) <= c["val"]["mean"]),
        "replay_max_abs_test_diff": float(max(abs(r["replay_test"] - r["test"]) for r in runs)),
        "replay_max_abs_val_diff": float(max(abs(r["replay_val"] - r["val"]) for r in runs)),
        "replay_max_abs_batch_loss_diff": float(max(r["replay_max_abs_batch_loss_diff"]
                                                    for r in runs)),
        "runs": runs,
    }
  sweeps = [*out["fixed_grid"].values(), *(r for v in out["pbt"].values() for r in v["runs"])]
  out["timing"] = {
      "compile_s": sum(r["compile_s"] for r in sweeps) + sum(
          r["replay_compile_s"] for v in out["pbt"].values() for r in v["runs"]),
      "run_s": sum(r["run_s"] for r in sweeps) + sum(
          r["replay_run_s"] for v in out["pbt"].values() for r in v["runs"]),
      "pbt_run_s_per_seed_mean": {k: float(np.mean([r["run_s"] for r in v["runs"]]))
                                  for k, v in out["pbt"].items()},
      "constant_grid_run_s_all_seeds": out["fixed_grid"]["constant"]["run_s"],
  }
  return out


def _summary(out: dict) -> str:
  lines = [f"task {out['task']}, {out['metric']} to choose, {out['reported']} reported; "
           f"mean +- std over {out['settings']['seeds']} seeds"]
  for k, v in out["fixed_grid"].items():
    lines.append(f"  best {k:<10} lr {v['best_lr']:.3g}: val {v['val']['mean']:.5f} +- "
                 f"{v['val']['std']:.5f}  test {v['test']['mean']:.5f} +- {v['test']['std']:.5f}"
                 f"  (compile {v['compile_s']:.1f} s, run {v['run_s']:.1f} s)")
  ps = out["fixed_grid"]["constant"]["per_seed_choice"]
  lines.append(f"  constant chosen on each seed's val: val {ps['val']['mean']:.5f} +- "
               f"{ps['val']['std']:.5f}  test {ps['test']['mean']:.5f} +- {ps['test']['std']:.5f}")
  for k, v in out["pbt"].items():
    lines.append(f"  pbt {k:<42}: val {v['val']['mean']:.5f} +- {v['val']['std']:.5f}  test "
                 f"{v['test']['mean']:.5f} +- {v['test']['std']:.5f}  paired vs constant "
                 f"{v['paired_test_minus_best_constant']['mean']:+.5f} +- "
                 f"{v['paired_test_minus_best_constant']['std']:.5f}  replay max|d test| "
                 f"{v['replay_max_abs_test_diff']:.1e}, max|d batch loss| "
                 f"{v['replay_max_abs_batch_loss_diff']:.1e}")
  lines.append(f"  timing {out['timing']}")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--part", choices=("digits", "schedule", "all"), default="all",
                  help="digits: successive halving and PBT on digits; schedule: PBT on a task "
                       "where a schedule matters")
  ap.add_argument("--steps", type=int, default=810, help="digits part")
  ap.add_argument("--seeds", type=int, default=2, help="digits part")
  ap.add_argument("--task", choices=sorted(SCHEDULE_TASKS), default="teacher_student")
  ap.add_argument("--schedule-steps", type=int, default=2000)
  ap.add_argument("--schedule-seeds", type=int, default=5)
  ap.add_argument("--batch-size", type=int, default=16, help="schedule part")
  ap.add_argument("--lrs", type=float, nargs=3, default=(1e-4, 0.1, 16), metavar=("LO", "HI", "N"))
  ap.add_argument("--pbt", nargs="+", default=list(PBT_SETTINGS), choices=list(PBT_SETTINGS))
  ap.add_argument("--out", default=None,
                  help="JSON file; entries of the other part already there are kept")
  args = ap.parse_args()
  path = pathlib.Path(args.out) if args.out else None
  result = json.loads(path.read_text()) if path is not None and path.exists() else {}
  machine = {"platform": platform.platform(), "processor": platform.processor(),
             "backend": jax.default_backend(), "jax": jax.__version__}
  if args.part in ("digits", "all"):
    task = optaxlr.tasks.digits()
    t0 = time.perf_counter()
    result.update({
        "machine": machine, "settings": {"steps": args.steps, "seeds": args.seeds},
        "successive_halving": successive_halving(task, args.steps, args.seeds),
        "pbt": population_based_training(task, args.steps, args.seeds),
    })
    result["wall_s"] = time.perf_counter() - t0
  if args.part in ("schedule", "all"):
    from _common import versions

    t0 = time.perf_counter()
    lo, hi, n = args.lrs
    out = pbt_where_a_schedule_matters(args.task, args.schedule_steps, args.schedule_seeds,
                                       args.batch_size, int(n), lo, hi, args.pbt)
    out["wall_s"] = time.perf_counter() - t0
    out["machine"] = {**machine, "versions": versions()}
    result.setdefault("pbt_schedule", {})[args.task] = out
  text = json.dumps(result, indent=1, default=str)
  print(text if args.part != "schedule" else _summary(result["pbt_schedule"][args.task]))
  if path is not None:
    path.write_text(text)


if __name__ == "__main__":
  main()
