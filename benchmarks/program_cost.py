"""The compiled MLP program's cost (ops, flops, bytes), to check that a host-side refactor leaves
the program XLA compiles unchanged.

Runs the default digits sweep (64-256-256-10 MLP, AdamW, 4 configs x 1 seed, default settings
otherwise) and reads the chunk executable's ``cost_analysis()`` and the number of HLO
instructions of its optimized module. Appends the numbers, keyed by the git commit, to
``results/program_cost.json``. Usage: ``python benchmarks/program_cost.py``.
"""

from __future__ import annotations

import json
import re

import jax

import optaxlr
from optaxlr import search

from _common import HERE, versions


def measure() -> dict:
  from optaxlr.engine import _core  # the cache holds the compiled chunk (a check of internals)

  _core.clear_cache()
  task = optaxlr.tasks.digits()
  space = search.grid(lr=[1e-3, 3e-3], wd=[0.0, 1e-4])
  optaxlr.sweep(task, lambda h: optaxlr.adamw(h["lr"], weight_decay=h["wd"]), space, steps=100,
                execution=optaxlr.Execution(progress=False))
  (prog,) = _core._CACHE.values()
  (exe,) = prog.executables.values()
  cost = exe.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  text = exe.as_text()
  ops = len(re.findall(r"^\s+(?:ROOT )?%?[\w.\-]+ = ", text, flags=re.M))
  return {"hlo_instructions": ops, "flops": float(cost.get("flops", -1)),
          "bytes_accessed": float(cost.get("bytes accessed", -1)),
          "transcendentals": float(cost.get("transcendentals", -1))}


def main() -> None:
  v = versions()
  out = HERE / "results" / "program_cost.json"
  data = json.loads(out.read_text()) if out.exists() else {}
  row = {**measure(), "jax": v["jax"], "jaxlib": v["jaxlib"], "devices": jax.device_count()}
  import subprocess

  dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "../optaxlr"],
                         capture_output=True, text=True).stdout.strip()
  data[(v["optaxlr_commit"] or "unknown") + ("-dirty" if dirty else "")] = row
  out.write_text(json.dumps(data, indent=1) + "\n")
  print(json.dumps(row))


if __name__ == "__main__":
  main()
