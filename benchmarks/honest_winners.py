"""Are a sweep's winner intervals honest, and does re-scoring on fresh seeds remove the winner's
curse? Measured on the built-in digits with 32 seeds as the truth.

For each of 4 settings (SGD with momentum 0.9 and AdamW, each with a constant and a cosine
rate), ONE sweep trains a 6-point learning-rate grid x 32 seeds (digits MLP, 64 hidden units,
300 steps, batch 32). The 32 seeds are cut into 6 disjoint subsets of 5 (seeds 0-29); each
subset is treated as a 5-seed sweep of its own:

1. coverage: the winner (selected on val error over the subset's 5 seeds) with its 95%
   t-interval (``res.winner``); does the interval cover the winner's mean over all 32 seeds?
   (the issue's bar: in at least 90% of the subsets);
2. the winner's curse: the selected value (its 5-seed mean) against the winner's mean over the
   27 seeds outside the subset (the truth for that config), and ``res.rescore(top=3)`` on 5 fresh
   seeds (1000 + 100 * setting + 10 * subset ...: every row its own; trained in a new sweep)
   against the same truth: mean (selected - truth), mean (rescored - truth) and mean (selected -
   rescored), each with its standard error over the 24 rows and over the 6 subsets' means;
3. p_best against the truth: is the subset's winner the best config by its 32-seed mean?
   (mean p_best, the share truly best, the Brier score).

Run: ``python benchmarks/honest_winners.py`` (writes ``benchmarks/results/honest_winners.json``;
about 5 minutes on 2 CPU cores), ``--quick`` for a smoke run that writes nothing. Imports only
optaxlr's public API (``optaxlr.stats`` is a public module).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import numpy as np

import optaxlr
from _common import versions
from optaxlr import schedules, search

HERE = pathlib.Path(__file__).resolve().parent


def settings(steps: int) -> dict:
  sgd_lr = search.logspace(0.01, 0.3, 6)
  adam_lr = search.logspace(1e-3, 3e-2, 6)
  return {
      "sgd_constant": (lambda h: optaxlr.sgd(h["lr"], momentum=0.9), sgd_lr),
      "sgd_cosine": (lambda h: optaxlr.sgd(schedules.cosine(h["lr"], steps), momentum=0.9), sgd_lr),
      "adamw_constant": (lambda h: optaxlr.adamw(h["lr"], weight_decay=1e-4), adam_lr),
      "adamw_cosine": (lambda h: optaxlr.adamw(schedules.cosine(h["lr"], steps),
                                               weight_decay=1e-4), adam_lr),
  }


def subset(res, idx: np.ndarray):
  """The result restricted to the seeds at positions ``idx`` (rows are independent runs)."""
  return dataclasses.replace(
      res, seeds=np.asarray(res.seeds)[idx], batch_loss=res.batch_loss[idx],
      metrics={k: v[idx] for k, v in res.metrics.items()}, diverged_at=res.diverged_at[idx],
      stopped_at=res.stopped_at[idx], stop_reason=np.asarray(res.stop_reason)[idx])


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  n_seeds, per, steps = (12, 5, 60) if args.quick else (32, 5, 300)
  task = optaxlr.tasks.digits("mlp", hidden=(64,))
  t0 = time.time()
  rows = []
  for si, (name, (opt, lrs)) in enumerate(settings(steps).items()):
    res = optaxlr.sweep(task, opt, search.grid(lr=lrs), steps=steps, batch_size=32,
                        seeds=n_seeds, eval_every=steps, execution=optaxlr.Execution(progress=False))
    full = res.final("val/error").astype(np.float64)  # (32, 6)
    for k in range(n_seeds // per):
      idx = np.arange(k * per, (k + 1) * per)
      rest = np.setdiff1d(np.arange(n_seeds), idx)
      sub = subset(res, idx)
      w = sub.winner("val/error")
      # fresh seeds of this row only (1000 + 100 * setting + 10 * subset ...): rows that shared
      # fresh seeds (an earlier version) had correlated errors, and their standard error was
      # too small
      first = 1000 + 100 * si + 10 * k
      rs = sub.rescore(task, opt, metric="val/error", top=3, seeds=list(range(first, first + per)),
                       execution=optaxlr.Execution(progress=False))
      assert rs.indices[0] == w.index
      truth_all = float(full[:, w.index].mean())
      truth_out = float(full[rest, w.index].mean())
      rows.append({
          "setting": name, "subset": k, "fresh_seeds": [first, first + per - 1], "winner": w.config, "p_best": w.p_best,
          "value": w.value, "interval": list(w.interval), "gap": w.gap,
          "gap_interval": list(w.gap_interval), "mean_32": truth_all,
          "covered": bool(w.interval[0] <= truth_all <= w.interval[1]),
          "mean_outside": truth_out, "rescored": rs.value,
          "indistinguishable": len(w.indistinguishable),
          "truly_best": bool(w.index == int(np.argmin(full.mean(0)))),
      })
      print(f"{name} subset {k}: winner lr={w.config['lr']:.3g} {100 * w.value:.2f}%"
            f" [{100 * w.interval[0]:.2f}, {100 * w.interval[1]:.2f}] vs 32-seed"
            f" {100 * truth_all:.2f}%; outside {100 * truth_out:.2f}%, rescored"
            f" {100 * rs.value:.2f}%; p_best {w.p_best:.2f}", flush=True)
  cov = np.mean([r["covered"] for r in rows])
  sel = np.asarray([r["value"] - r["mean_outside"] for r in rows])
  fresh = np.asarray([r["rescored"] - r["mean_outside"] for r in rows])

  subsets = np.asarray([r["subset"] for r in rows])

  def ms(x):
    # ``se_points``: rows taken as independent; ``se_points_by_subset``: the standard error of
    # the mean of the subsets' means (the settings of one subset share its 5 seeds, so their
    # selected values are correlated: the honest standard error for those).
    by = np.asarray([x[subsets == k].mean() for k in np.unique(subsets)])
    return {"mean_points": float(100 * x.mean()),
            "se_points": float(100 * x.std(ddof=1) / np.sqrt(x.size)),
            "se_points_by_subset": float(100 * by.std(ddof=1) / np.sqrt(by.size))}

  p = np.asarray([r["p_best"] for r in rows])
  truly = np.asarray([r["truly_best"] for r in rows], float)
  summary = {
      "coverage_of_32_seed_mean": float(cov), "subsets": len(rows),
      "p_best_mean": float(p.mean()), "truly_best_share": float(truly.mean()),
      "p_best_brier": float(np.mean((p - truly) ** 2)),
      "selected_minus_truth": ms(sel), "rescored_minus_truth": ms(fresh),
      "selected_minus_rescored": ms(sel - fresh),
      "wall_s": time.time() - t0,
  }
  print(json.dumps(summary, indent=1))
  if not args.quick:
    out = HERE / "results" / "honest_winners.json"
    out.write_text(json.dumps({"summary": summary, "rows": rows, "versions": versions(),
                               "machine": platform.platform()}, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
  main()
