"""Executes every notebook of notebooks/ at its small default size (OPTAXLR_NB_FULL unset)."""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = [
    "01_schedules_tour",
    "02_weight_decay_l2_vs_decoupled",
    "03_flooding",
    "04_lr_range_test",
    "05_sweeps_at_scale",
]


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
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  # every figure cell produced a figure
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, f"{path.name} drew no figure"
