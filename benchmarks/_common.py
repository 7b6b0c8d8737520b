"""Pieces shared by the benchmark scripts (not part of the optaxlr package)."""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess

import optaxlr

HERE = pathlib.Path(__file__).resolve().parent


def versions(dists=("jax", "jaxlib", "optax", "numpy")) -> dict:
  """Installed versions of ``dists``, optaxlr's version and git commit, Python's version."""
  out = {}
  for dist in dists:
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[dist] = None
  out["optaxlr"] = optaxlr.__version__
  out["python"] = platform.python_version()
  try:
    out["optaxlr_commit"] = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    out["optaxlr_commit"] = None
  return out
