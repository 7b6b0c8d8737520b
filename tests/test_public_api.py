"""The public face: every name a submodule exports is re-exported as the same object, and every
name in ``optaxlr.__all__`` is documented (its docstring has a one-line summary)."""

from __future__ import annotations

import importlib
import inspect

import optaxlr

SUBMODULES = ["optaxlr.transforms", "optaxlr.losses", "optaxlr._monitor", "optaxlr.engine"]
TOP_FROM_ENGINE = ["sweep", "SweepResult", "load", "run_keys", "batch_indices", "EarlyStop",
                   "ChunkEvent", "Control"]


def test_reexports_are_the_same_objects():
  for mod_name in SUBMODULES[:3]:
    mod = importlib.import_module(mod_name)
    for name in mod.__all__:
      assert getattr(optaxlr, name) is getattr(mod, name), f"{mod_name}.{name}"
  engine = importlib.import_module("optaxlr.engine")
  for name in TOP_FROM_ENGINE:
    assert getattr(optaxlr, name) is getattr(engine, name), name
  assert len(set(optaxlr.__all__)) == len(optaxlr.__all__), "a name is exported twice"


def test_every_public_callable_is_documented():
  missing = []
  for name in optaxlr.__all__:
    obj = getattr(optaxlr, name)
    if inspect.ismodule(obj) or not callable(obj):
      continue
    doc = inspect.getdoc(obj) or ""
    if not doc.strip() or len(doc.strip().splitlines()[0]) < 10:
      missing.append(name)
  assert not missing, f"undocumented public names: {missing}"
