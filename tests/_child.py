"""Child processes of the fault-injection tests (SIGKILLed sweeps, saves, lr_find runs), run
without clock dependence: a child is never failed for being slow on a loaded machine (the only
time limit is a hang guard, far above any run), and every failure shows the child's exit
status, stdout and stderr (a crash included: the children run with Python's faulthandler)."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

import pytest

# A hang guard, not a speed limit: a child of these tests runs for seconds unloaded.
HANG_S = 1800

_CACHE: list[pathlib.Path] = []


def compilation_cache() -> pathlib.Path:
  """A persistent compilation cache private to this pytest process: its children (run one at a
  time) share it, but never with another test session running beside it (JAX writes cache
  entries in place, so a concurrent session could read one half-written)."""
  if not _CACHE:
    _CACHE.append(pathlib.Path(tempfile.mkdtemp(prefix="optaxlr-test-jax-cache-")))
    atexit.register(shutil.rmtree, _CACHE[0], True)
  return _CACHE[0]


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """``os.environ`` with faulthandler on (a crashing child prints its stack) and ``extra``."""
  return {**os.environ, "PYTHONFAULTHANDLER": "1", **dict(extra or {})}


def describe(out: subprocess.CompletedProcess) -> str:
  return (f"exit status {out.returncode}\n--- stdout ---\n{out.stdout[-3000:]}\n"
          f"--- stderr ---\n{out.stderr[-4000:]}")


def run(cmd: Sequence[str], child_env: Mapping[str, str]) -> subprocess.CompletedProcess:
  """Runs ``cmd`` to its end and returns it (stdout and stderr as text); a child that has not
  ended after :data:`HANG_S` seconds is a hang: killed, and the test fails with its output."""
  proc = subprocess.Popen(list(cmd), env=dict(child_env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    stdout, stderr = proc.communicate(timeout=HANG_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    stdout, stderr = proc.communicate()
    pytest.fail(f"the child {list(cmd)} hung (no end after {HANG_S} s)\n"
                + describe(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)))
  return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def assert_killed(out: subprocess.CompletedProcess, what: object = "") -> None:
  """The child ended by its own SIGKILL (not an error, a crash, or the end of its run)."""
  assert out.returncode == -signal.SIGKILL, f"{what}: {describe(out)}"
