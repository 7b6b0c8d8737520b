"""The notebooks' record of a run: key numbers, per-seed values, sizes, machine, versions,
hashes of the code that made it, wall time, verdict.

Only a full-size run (``OPTAXLR_NB_FULL=1``) writes ``notebooks/results/<notebook>.json``; the
small run that CI executes prints the same record and leaves the committed files alone, and
says "smoke run: no verdict" instead of a verdict (:func:`say_verdict`): a smoke-size run is
too small to decide a claim and must not print a verdict that can contradict the full-size one.

A record binds itself to its code: ``hashes`` holds the SHA-256 of the notebook's code cells,
of this file and of the optaxlr package's sources; :func:`stale` says which of them changed
since the record was made (then the notebook must be rerun at full size). Records written
before hashing have no ``hashes``.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
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

HERE = pathlib.Path(__file__).resolve().parent  # the notebooks' folder
RESULTS = HERE / "results"
SMOKE = "smoke run: no verdict"


def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  return {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "cpu_model": _cpu_model(),
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
      **{name: _dist_version(dist) for name, dist in (("flax", "flax"), ("scikit-learn",
                                                                        "scikit-learn"),
                                                        ("scipy", "scipy"))},
  }


def _dist_version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def notebook_hash(path: pathlib.Path) -> str:
  """SHA-256 of a notebook's code cells (their sources, in order): what it computes, not its
  outputs or metadata."""
  nb = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  h = hashlib.sha256()
  for cell in nb.get("cells", []):
    if cell.get("cell_type") == "code":
      src = cell.get("source", "")
      h.update(("".join(src) if isinstance(src, list) else src).encode())
      h.update(b"\0")
  return h.hexdigest()


def package_hash(root: pathlib.Path | None = None) -> str:
  """SHA-256 of the optaxlr package's ``.py`` sources (relative paths and bytes, sorted)."""
  root = pathlib.Path(root or pathlib.Path(optaxlr.__file__).resolve().parent)
  h = hashlib.sha256()
  for f in sorted(root.rglob("*.py")):
    h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
  return h.hexdigest()


def hashes(name: str) -> dict:
  """The hashes a record of notebook ``name`` is bound to."""
  return {
      "notebook": notebook_hash(HERE / f"{name}.ipynb"),
      "_results.py": hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest(),
      "optaxlr": package_hash(),
  }


def stale(rec: dict) -> list[str]:
  """What changed since the record ``rec`` was made: ``"notebook"``, ``"_results.py"``,
  ``"optaxlr"`` (each means: rerun the notebook at full size); ``["made before hashing"]`` for
  a record without hashes; ``[]`` when the record is current."""
  made = rec.get("hashes")
  if not made:
    return ["made before hashing"]
  name = pathlib.Path(rec["notebook"]).stem
  now = hashes(name)
  return [k for k in ("notebook", "_results.py", "optaxlr") if made.get(k) != now[k]]


def say_verdict(holds: str, measured: str, *, full: bool) -> str:
  """The closing cell's line: ``VERDICT: <holds> - <measured>`` for a full-size run, and for a
  smoke-size one ``smoke run: no verdict`` (its numbers are printed above; a verdict from them
  could contradict the full-size record)."""
  line = f"VERDICT: {holds} - {measured}" if full else (
      f"{SMOKE} (a smoke-size run decides nothing; OPTAXLR_NB_FULL=1 runs the full size)")
  print(line)
  return line


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
           verdict: dict, per_seed: dict | None = None, key: int | None = None,
           split_seed: int | None = None) -> dict:
  """Builds the record; writes it to ``results/<name>.json`` only when ``full``.

  ``verdict``: ``{"claim": ..., "measured": ..., "holds": "holds" | "does not hold" | ...}``.
  ``per_seed``: name -> per-seed values (arrays with a leading seed axis), so that paired
  statistics can be recomputed from the record; ``key`` and ``split_seed``: the sweeps' base
  PRNG key and the data split's seed. Every record carries ``hashes`` (see :func:`stale`).
  """
  rec = {
      "notebook": f"{name}.ipynb",
      "size": "full" if full else "small",
      "sizes": sizes,
      "numbers": numbers,
      "per_seed": per_seed if per_seed is not None else {},
      "key": key,
      "split_seed": split_seed,
      "hashes": hashes(name),
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
