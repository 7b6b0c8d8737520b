"""The notebooks' record of a run: key numbers, per-seed values, sizes, machine, versions,
hashes of the code that made it, wall time, verdict.

Only a full-size run (``OPTAXLR_NB_FULL=1``) writes ``notebooks/results/<notebook>.json``; the
small run that CI executes prints the same record and leaves the committed files alone, and
says "smoke run: no verdict" instead of a verdict (:func:`say_verdict`): a smoke-size run is
too small to decide a claim and must not print a verdict that can contradict the full-size one.

A record binds itself to its code: ``hashes`` holds the SHA-256 of the notebook's code cells,
of this file and of the optaxlr package's sources; :func:`stale` says which of them changed
since the record was made (then the notebook must be rerun at full size). The package hash
covers exactly the ``.py`` files under ``optaxlr/`` (relative path and bytes): editing tests,
benchmarks, docs or another notebook leaves a record current. Records written before hashing
have no ``hashes``. ``digest`` is the SHA-256 of the record's own content (everything but
``digest``, as canonical JSON): :func:`digest_ok` says whether a number was changed by hand.

Verdicts follow one statistical rule (:func:`part`, :func:`verdict`). A claim is split into
parts; each part is a paired difference ``treatment - control`` over seeds of a metric where
lower is better, measured on test for configs selected on val, with its 95% Student-t
interval, and one of three readings:

* ``"better"``: holds when the interval lies below 0 (the treatment is surely lower);
* ``"similar"``: holds when the interval lies inside ``[-margin, margin]``;
* ``"not worse"``: holds when the interval's upper end is ``<= margin``.

``checks`` are differences that must be told apart from 0 (interval excludes 0) for the claim
to be testable on this task (the control the claim speaks about differs from the treatment).
The word is ``"not testable here"`` when a check fails, else ``"holds"`` when every part
holds, ``"does not hold"`` when none does, ``"partly"`` otherwise. Parts and checks keep
their per-seed values, so :func:`recheck` recomputes every interval and the word from a
record.
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
import scipy.stats

import optaxlr

HERE = pathlib.Path(__file__).resolve().parent  # the notebooks' folder
RESULTS = HERE / "results"
SMOKE = "smoke run: no verdict"
WORDS = ("holds", "partly", "does not hold", "not testable here")
READINGS = ("better", "similar", "not worse", "differs")
CONFIDENCE = 0.95


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


def _interval(diff: np.ndarray) -> tuple[float, float, float]:
  """Mean of ``diff`` and its Student-t interval at :data:`CONFIDENCE` (NaN with < 2 values
  or a NaN value)."""
  d = np.asarray(diff, dtype=float)
  m = float(np.mean(d))
  if d.size < 2 or not np.all(np.isfinite(d)):
    return m, float("nan"), float("nan")
  half = float(scipy.stats.t.ppf((1 + CONFIDENCE) / 2, d.size - 1) * d.std(ddof=1)
               / math.sqrt(d.size))
  return m, m - half, m + half


def _reads(reading: str, lo: float, hi: float, margin: float) -> bool:
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return False
  if reading == "better":
    return hi < 0
  if reading == "similar":
    return -margin <= lo and hi <= margin
  if reading == "not worse":
    return hi <= margin
  return lo > 0 or hi < 0  # "differs"


def part(name: str, treatment, control, *, reading: str = "better", margin: float = 0.0,
         metric: str = "test/error") -> dict:
  """One part of a claim: the paired difference ``treatment - control`` over seeds.

  ``treatment`` and ``control``: per-seed values (same length, same seeds, lower is better) of
  ``metric``, for configs selected on val. ``reading``: ``"better"``, ``"similar"``, ``"not
  worse"`` (see the module's docstring) or ``"differs"`` (a check: the interval excludes 0).

  Returns:
    ``{"name", "metric", "reading", "margin", "diff", "lo", "hi", "seeds", "holds",
    "treatment", "control"}``.

  Examples:
    >>> p = part("a beats b", [0.10, 0.12, 0.11], [0.15, 0.16, 0.16])
    >>> p["holds"], round(p["diff"], 3)
    (True, -0.047)
  """
  if reading not in READINGS:
    raise ValueError(f"part: reading must be one of {READINGS}, got reading={reading!r}")
  if not (isinstance(margin, (int, float)) and margin >= 0):
    raise ValueError(f"part: margin must be a number >= 0, got margin={margin!r}")
  t = np.asarray(treatment, dtype=float).ravel()
  c = np.asarray(control, dtype=float).ravel()
  if t.shape != c.shape or t.size < 2:
    raise ValueError(f"part: treatment and control must be per-seed values of the same length"
                     f" >= 2, got {t.size} and {c.size} ({name!r})")
  m, lo, hi = _interval(t - c)
  return {"name": name, "metric": metric, "reading": reading, "margin": float(margin),
          "diff": m, "lo": lo, "hi": hi, "seeds": int(t.size),
          "holds": _reads(reading, lo, hi, float(margin)),
          "treatment": t.tolist(), "control": c.tolist()}


def word(parts: list[dict], checks: list[dict] = ()) -> str:
  """The verdict word from the parts' and checks' ``holds`` (see the module's docstring)."""
  if not parts:
    raise ValueError("word: parts must not be empty, got parts=[]")
  if not all(c["holds"] for c in checks):
    return "not testable here"
  held = [p["holds"] for p in parts]
  return "holds" if all(held) else ("does not hold" if not any(held) else "partly")


def verdict(claim: str, measured: str, parts: list[dict], checks: list[dict] = (),
            **extra) -> dict:
  """The verdict of a claim from its parts (:func:`part`) and checks: ``{"claim",
  "measured", "holds": <word>, "parts", "checks", ...extra}``."""
  return {"claim": claim, "measured": measured, "holds": word(parts, list(checks)),
          "parts": list(parts), "checks": list(checks), **extra}


def show(v: dict) -> None:
  """Prints each part and check: yes/no, the paired difference and its interval."""
  for kind, items in (("part", v["parts"]), ("check", v["checks"])):
    for p in items:
      print(f"{'yes' if p['holds'] else 'no ':3s} {kind}: {p['name']}: {p['metric']} paired diff"
            f" {p['diff']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] ({p['reading']}"
            + (f", margin {p['margin']:g}" if p["reading"] in ("similar", "not worse") else "")
            + f", {p['seeds']} seeds)")


def recheck(v: dict, tol: float = 1e-4) -> list[str]:
  """What in a stored verdict ``v`` does not follow from its per-seed values: each part's and
  check's difference, interval and ``holds``, then the word. ``[]`` when all follow."""
  wrong = []
  for p in [*v.get("parts", []), *v.get("checks", [])]:
    again = part(p["name"], p["treatment"], p["control"], reading=p["reading"],
                 margin=p["margin"], metric=p["metric"])
    for k in ("diff", "lo", "hi"):
      stored = float("nan") if p[k] is None else p[k]  # a record stores NaN as null
      if not (math.isclose(again[k], stored, rel_tol=tol, abs_tol=tol * 1e-2)
              or (math.isnan(again[k]) and math.isnan(stored))):
        wrong.append(f"{p['name']}: {k} {p[k]} but its per-seed values give {again[k]:.6g}")
    if again["holds"] != p["holds"]:
      wrong.append(f"{p['name']}: holds={p['holds']} but its interval gives {again['holds']}")
  if v.get("parts"):
    w = word([{"holds": p["holds"]} for p in v["parts"]],
             [{"holds": c["holds"]} for c in v.get("checks", [])])
    if w != v.get("holds"):
      wrong.append(f"verdict {v.get('holds')!r} but its parts give {w!r}")
  return wrong


def digest(rec: dict) -> str:
  """SHA-256 of a record's content without its ``digest`` (canonical JSON)."""
  body = {k: v for k, v in rec.items() if k != "digest"}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def digest_ok(rec: dict) -> bool:
  """Whether a record's ``digest`` matches its content (False when it has none)."""
  return rec.get("digest") == digest(rec)


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
           split_seed: int | None = None, also: list[dict] = ()) -> dict:
  """Builds the record; writes it to ``results/<name>.json`` only when ``full``.

  ``verdict``: ``{"claim": ..., "measured": ..., "holds": "holds" | "does not hold" | ...}``,
  best built with :func:`verdict` (parts with per-seed values, so that tests recompute it).
  ``per_seed``: name -> per-seed values (arrays with a leading seed axis), so that paired
  statistics can be recomputed from the record; ``key`` and ``split_seed``: the sweeps' base
  PRNG key and the data split's seed. Every record carries ``hashes`` (see :func:`stale`).
  ``also``: further verdicts of the same claim on other tasks (second rows of the README's
  table), each built with :func:`verdict` with a ``row`` naming its task; they are checked as
  the main one is.
  """
  for v in also:
    if not (isinstance(v, dict) and v.get("row") and v.get("parts")):
      raise ValueError(f"record: each verdict in also must come from verdict(..., row=<task>) "
                       f"with parts, got {v!r:.80}")
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
      **({"also": list(also)} if also else {}),
      "wall_s": time.time() - started,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
      "machine": machine(),
      "versions": versions(),
  }
  rec = plain(rec)
  rec["digest"] = digest(rec)
  if full:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)} (wall {rec['wall_s']:.0f} s)")
  else:
    print(f"small run (wall {rec['wall_s']:.0f} s): results/{name}.json not written; "
          "OPTAXLR_NB_FULL=1 writes it")
  return rec
