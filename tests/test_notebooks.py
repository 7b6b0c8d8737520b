"""Executes every notebook of notebooks/ at its small default size (OPTAXLR_NB_FULL unset)."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
RESULTS = NOTEBOOKS / "results"
NAMES = [
    "01_schedules_tour",
    "02_weight_decay_l2_vs_decoupled",
    "03_flooding",
    "04_lr_range_test",
    "05_sweeps_at_scale",
    "06_sgdr",
    "07_reduce_on_plateau",
    "08_update_ratio",
    "09_linear_scaling",
    "10_grow_the_batch",
]
# notebooks that measure a claim and commit the numbers of a full-size run to results/<name>.json
CLAIMS = [
    "02_weight_decay_l2_vs_decoupled",
    "03_flooding",
    "04_lr_range_test",
    "06_sgdr",
    "07_reduce_on_plateau",
    "08_update_ratio",
    "09_linear_scaling",
    "10_grow_the_batch",
]


def _digests():
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.glob("*.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  monkeypatch.delenv("OPTAXLR_NB_FULL", raising=False)
  monkeypatch.setenv("MPLBACKEND", "agg")
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  # committed notebooks carry no outputs
  assert all(not c.get("outputs") and c.get("execution_count") is None
             for c in nb.cells if c.cell_type == "code"), f"{path.name} has stored outputs"
  before = _digests()
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  assert _digests() == before, "a small run must not overwrite the committed full-size results"
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  # every figure cell produced a figure
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, f"{path.name} drew no figure"
  if name in CLAIMS:  # the closing cell prints the verdict computed from the numbers
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in last.get("outputs", []) if o.get("output_type") == "stream")
    assert "VERDICT: " in text, f"{path.name}: the closing cell printed no verdict"


@pytest.mark.parametrize("name", CLAIMS)
def test_committed_results(name):
  """Each claim notebook's committed record comes from a full-size run and says what it found."""
  path = RESULTS / f"{name}.json"
  assert path.exists(), f"{path.name} missing: run the notebook with OPTAXLR_NB_FULL=1"
  rec = json.loads(path.read_text())
  assert rec["size"] == "full" and rec["notebook"] == f"{name}.ipynb"
  assert rec["wall_s"] > 0 and rec["machine"]["cpu_count"] >= 1
  assert {"jax", "optax", "optaxlr"} <= set(rec["versions"])
  assert rec["verdict"]["holds"] in ("holds", "partly", "does not hold")
  assert rec["verdict"]["claim"] and rec["verdict"]["measured"] and rec["numbers"]
