"""The notebooks' record of a run: key numbers, sizes, machine, versions, wall time, verdict.

Only a full-size run (``OPTAXLR_NB_FULL=1``) writes ``notebooks/results/<notebook>.json``; the
small run that CI executes prints the same record and leaves the committed files alone.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jaxlib
import numpy as np
import optax

import optaxlr

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> dict:
  return {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "jax_backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
  }


def versions() -> dict:
  return {
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "optax": optax.__version__,
      "optaxlr": optaxlr.__version__,
      "numpy": np.__version__,
  }


def plain(x):
  """NumPy values and containers as JSON values (NaN and inf as None)."""
  if isinstance(x, dict):
    return {str(k): plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return plain(x.tolist())
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer, int)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.6g}")
  if isinstance(x, np.str_):
    return str(x)
  return x


def record(name: str, *, full: bool, started: float, sizes: dict, numbers: dict,
           verdict: dict) -> dict:
  """Builds the record; writes it to ``results/<name>.json`` only when ``full``.

  ``verdict``: ``{"claim": ..., "measured": ..., "holds": "holds" | "does not hold" | ...}``.
  """
  rec = {
      "notebook": f"{name}.ipynb",
      "size": "full" if full else "small",
      "sizes": sizes,
      "numbers": numbers,
      "verdict": verdict,
      "wall_s": time.time() - started,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
      "machine": machine(),
      "versions": versions(),
  }
  rec = plain(rec)
  if full:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)} (wall {rec['wall_s']:.0f} s)")
  else:
    print(f"small run (wall {rec['wall_s']:.0f} s): results/{name}.json not written; "
          "OPTAXLR_NB_FULL=1 writes it")
  return rec
