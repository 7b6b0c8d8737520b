"""Which range-test suggestion makes a good one-cycle peak? Measured on the built-in digits.

The README's recipe runs the LR range test (:func:`optaxlr.lr_find`) and feeds one of its
suggestions to :func:`optaxlr.schedules.one_cycle` as the peak rate. This script measures, for
AdamW and for SGD with momentum, how well each suggestion trains:

1. the range test, exactly as the README runs it (``lr_find(task, optimizer, seeds=3)``, its
   defaults: 100 steps from 1e-7 to 10, batch 128), repeated with 5 different base keys
   (other initialisations and minibatches), because a suggestion is only as good as it is
   stable from one range test to the next;
2. every suggestion of :meth:`optaxlr.LRFindResult.suggest` (``minimum``, ``steep``,
   ``valley``, ``base_lr``, ``max_lr``) and ``valley`` x 3 / x 10 of every range test, plus a
   reference grid of peaks (the best fixed peak in hindsight), as ONE sweep per optimizer: the
   peak is a space axis, times 8 training seeds (base key 1000, unrelated to the range tests'),
   ``one_cycle(peak, 500)``, batch 64, the validation and test splits evaluated at the end;
3. per suggestion, the final validation (and test) error over range tests x training seeds:
   mean, standard deviation, worst run (a diverged run counts as error 1); over both
   optimizers, the paired difference of each suggestion to the best one (same range tests, same
   seeds). The rule, set before the recorded run: ``recommended`` is the suggestion of
   :meth:`optaxlr.LRFindResult.suggest` with the lowest mean validation error over both
   optimizers; the test error is reported, not used to choose.

Run: ``python benchmarks/recipes_lr_find.py`` (about 3.5 minutes on 2 CPU cores; writes
``benchmarks/results/recipes_lr_find.json``), ``--quick`` for a smoke run (< 1 minute) that
writes nothing. Imports only optaxlr's public API.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

import optaxlr
from _common import versions
from optaxlr import schedules, search

HERE = pathlib.Path(__file__).resolve().parent
SUGGESTIONS = ("minimum", "steep", "valley", "base_lr", "max_lr")
DERIVED = {"valley_x3": ("valley", 3.0), "valley_x10": ("valley", 10.0)}
OPTIMIZERS = {
    # name: (lr -> transform, description); the same transform in the range test and training
    "adamw": (lambda lr: optaxlr.adamw(lr, weight_decay=1e-2), "optaxlr.adamw(lr, weight_decay=1e-2)"),
    "sgd_momentum": (lambda lr: optaxlr.sgd(lr, momentum=0.9), "optaxlr.sgd(lr, momentum=0.9)"),
}


def stats(errors: np.ndarray) -> dict:
  """Mean, standard deviation (ddof=1), worst and best over runs; a diverged run (NaN error)
  counts as error 1.0 and is counted in ``diverged``."""
  e = np.asarray(errors, float).ravel()
  diverged = int(np.isnan(e).sum())
  e = np.where(np.isnan(e), 1.0, e)
  return {"mean": float(e.mean()), "std": float(e.std(ddof=1)) if e.size > 1 else 0.0,
          "worst": float(e.max()), "best": float(e.min()), "runs": int(e.size),
          "diverged": diverged}


def measure(name: str, task, *, range_keys: int, range_seeds: int, seeds: int, steps: int,
            grid: np.ndarray) -> dict:
  """Range tests, then one sweep over every suggested (and grid) peak x seeds."""
  make, desc = OPTIMIZERS[name]
  t0 = time.perf_counter()
  suggested = []  # per range test: {suggestion: rate}
  for k in range(range_keys):
    res = optaxlr.lr_find(task, lambda h: make(h["lr"]), seeds=range_seeds, key=k)
    s = res.suggest(0)
    row = {key: s[key] for key in SUGGESTIONS}
    row.update({d: s[base] * f for d, (base, f) in DERIVED.items()})
    suggested.append(row)
  range_s = time.perf_counter() - t0
  rates = sorted({round(float(r), 12) for row in suggested for r in row.values()}
                 | {round(float(g), 12) for g in grid})
  space = search.grid(peak=rates) * search.seeds(seeds)
  t0 = time.perf_counter()
  out = optaxlr.sweep(
      task, lambda h: make(schedules.one_cycle(h["peak"], steps)), space, steps=steps,
      batch_size=64, eval_every=steps, key=1000, execution=optaxlr.Execution(progress=False))
  train_s = time.perf_counter() - t0
  val = out.final("val/error")  # (seed, config)
  test = out.final("test/error")
  index = {r: i for i, r in enumerate(rates)}
  per = {}
  for sug in (*SUGGESTIONS, *DERIVED):
    cols = [index[round(float(row[sug]), 12)] for row in suggested]
    per[sug] = {
        "peaks": [float(row[sug]) for row in suggested],
        "val_error": stats(val[:, cols]), "test_error": stats(test[:, cols]),
        "val_error_per_range_test": [stats(val[:, c])["mean"] for c in cols],
        "val_error_runs": val[:, cols].T.tolist(),  # (range test, training seed); NaN: diverged
    }
  grid_cols = [index[round(float(g), 12)] for g in grid]
  grid_rows = [{"peak": float(g), "val_error": stats(val[:, c]), "test_error": stats(test[:, c])}
               for g, c in zip(grid, grid_cols)]
  best = min(grid_rows, key=lambda r: r["val_error"]["mean"])
  return {"optimizer": desc, "suggestions": per, "grid": grid_rows, "best_grid_peak": best,
          "diverged_runs": int(np.asarray(out.diverged).sum()),
          "range_test_s": round(range_s, 1), "train_s": round(train_s, 1)}


def pooled(results: dict) -> dict:
  """Per suggestion, the runs of every optimizer together; ``recommended``: the lowest mean
  validation error (the rule fixed before looking; the test error is not used to choose)."""
  out = {}
  for sug in (*SUGGESTIONS, *DERIVED):
    val = [r["suggestions"][sug]["val_error"] for r in results.values()]
    test = [r["suggestions"][sug]["test_error"] for r in results.values()]
    out[sug] = {"val_error_mean": float(np.mean([v["mean"] for v in val])),
                "test_error_mean": float(np.mean([t["mean"] for t in test])),
                "worst_val_error": float(max(v["worst"] for v in val)),
                "diverged": int(sum(v["diverged"] for v in val))}
  standard = {k: v for k, v in out.items() if k in SUGGESTIONS}
  best = min(standard, key=lambda k: standard[k]["val_error_mean"])

  def runs(sug):  # every run of every optimizer, in the same (optimizer, test, seed) order
    return np.concatenate([np.nan_to_num(np.asarray(r["suggestions"][sug]["val_error_runs"],
                                                    float), nan=1.0).ravel()
                           for r in results.values()])

  paired = {}
  for sug in out:  # same range tests, same training seeds: paired differences
    d = runs(sug) - runs(best)
    paired[sug] = {"mean_diff": float(d.mean()),
                   "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0}
  return {"per_suggestion": out, "recommended": best,
          "recommended_any": min(out, key=lambda k: out[k]["val_error_mean"]),
          "paired_minus_recommended": paired}


def table(results: dict) -> str:
  lines = []
  for name, r in results.items():
    lines.append(f"\n{name}: {r['optimizer']} (best grid peak {r['best_grid_peak']['peak']:.3g}: "
                 f"val {100 * r['best_grid_peak']['val_error']['mean']:.2f}%)")
    lines.append(f"  {'suggestion':<11} {'peaks':<44} {'val error %':<15} {'worst':<6} test error %")
    for sug, s in r["suggestions"].items():
      peaks = ", ".join(f"{p:.3g}" for p in s["peaks"])
      v, t = s["val_error"], s["test_error"]
      lines.append(f"  {sug:<11} {peaks:<44} {100 * v['mean']:5.2f} ± {100 * v['std']:4.2f}    "
                   f"{100 * v['worst']:5.2f}  {100 * t['mean']:5.2f} ± {100 * t['std']:4.2f}"
                   + (f"  ({v['diverged']} diverged)" if v["diverged"] else ""))
  p = pooled(results)
  lines.append(f"\nboth optimizers: mean val error % (test %), paired difference to "
               f"{p['recommended']} in points ± standard error")
  for sug, r in p["per_suggestion"].items():
    d = p["paired_minus_recommended"][sug]
    lines.append(f"  {sug:<11} {100 * r['val_error_mean']:5.2f} ({100 * r['test_error_mean']:5.2f})"
                 f"  {100 * d['mean_diff']:+5.2f} ± {100 * d['se']:4.2f}")
  lines.append(f"recommended (lowest mean val error among suggest()'s keys): {p['recommended']}; "
               f"among all: {p['recommended_any']}")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes; writes nothing")
  p.add_argument("--out", default=str(HERE / "results" / "recipes_lr_find.json"))
  args = p.parse_args()
  if args.quick:
    cfg = dict(range_keys=1, range_seeds=1, seeds=2, steps=50, grid=np.array([1e-3, 1e-1]))
  else:
    cfg = dict(range_keys=5, range_seeds=3, seeds=8, steps=500,
               grid=np.array([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0]))
  task = optaxlr.tasks.digits()
  load_start = os.getloadavg()
  results = {name: measure(name, task, **cfg) for name in OPTIMIZERS}
  print(table(results))
  if args.quick:
    return
  doc = {
      "what": ("final val/test error of one_cycle(peak, steps) trained from each lr_find "
               "suggestion on optaxlr.tasks.digits() (MLP 64-128-10), batch 64"),
      "settings": {**{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cfg.items()},
                   "range_test": "lr_find(task, optimizer, seeds=range_seeds, key=k) defaults",
                   "training_key": 1000},
      "results": results,
      "pooled": pooled(results),
      "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                  "cpus": os.cpu_count(), "load_start": [round(x, 2) for x in load_start],
                  "load_end": [round(x, 2) for x in os.getloadavg()]},
      "versions": versions(),
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(doc, indent=1) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
