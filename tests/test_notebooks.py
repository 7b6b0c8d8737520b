"""Executes every notebook of notebooks/ at its small default size (OPTAXLR_NB_FULL unset)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import shutil

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
    "11_horizons",
    "12_your_model",
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
    "11_horizons",
]


# Records committed before records carried hashes and per-seed values: reported as made before
# hashing, not checked against the code. A record rerun at full size leaves this list (the
# test below fails until it is removed), and no new record may join it.
MADE_BEFORE_HASHING = {
    "02_weight_decay_l2_vs_decoupled",
    "03_flooding",
    "04_lr_range_test",
    "06_sgdr",
    "07_reduce_on_plateau",
    "08_update_ratio",
    "09_linear_scaling",
    "10_grow_the_batch",
}


def _results_module():
  spec = importlib.util.spec_from_file_location("_nb_results", NOTEBOOKS / "_results.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
    # at smoke size a verdict could contradict the full-size record: none is printed
    assert "smoke run: no verdict" in text and "VERDICT" not in text, (
        f"{path.name}: a smoke-size run must print 'smoke run: no verdict' and no VERDICT")


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
  if name in MADE_BEFORE_HASHING:
    assert "hashes" not in rec, (f"{path.name} now carries hashes: remove {name} from"
                                 " MADE_BEFORE_HASHING so that it is checked against its code")
    return
  assert rec.get("per_seed"), f"{path.name}: no per-seed values"
  changed = _results_module().stale(rec)
  assert not changed, (f"{path.name} was made by other code ({', '.join(changed)} changed"
                       f" since): rerun {name}.ipynb with OPTAXLR_NB_FULL=1")


def test_a_record_is_flagged_when_its_code_changes(tmp_path, monkeypatch, capsys):
  """A record written now is current; editing its notebook's code (not its markdown), the
  record-writing module or the package makes it stale, each named."""
  r = _results_module()
  name = "03_flooding"
  shutil.copy(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
  shutil.copy(NOTEBOOKS / "_results.py", tmp_path / "_results.py")
  monkeypatch.setattr(r, "HERE", tmp_path)
  monkeypatch.setattr(r, "RESULTS", tmp_path / "results")
  monkeypatch.setattr(r, "__file__", str(tmp_path / "_results.py"))
  rec = r.record(name, full=True, started=0.0, sizes={"seeds": 2}, numbers={"a": 1.0},
                 verdict={"claim": "c", "measured": "m", "holds": "holds"},
                 per_seed={"val/error": [[0.1, 0.2], [0.15, 0.25]]}, key=0, split_seed=0)
  written = json.loads((tmp_path / "results" / f"{name}.json").read_text())
  assert written["per_seed"] == {"val/error": [[0.1, 0.2], [0.15, 0.25]]}
  assert set(written["hashes"]) == {"notebook", "_results.py", "optaxlr"}
  assert {"flax", "scikit-learn"} <= set(written["versions"]) and written["machine"]["cpu_model"]
  assert r.stale(written) == [] and rec["hashes"] == written["hashes"]
  nb_path = tmp_path / f"{name}.ipynb"
  nb = json.loads(nb_path.read_text())
  md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
  md["source"] = ["# retitled\n"]
  nb_path.write_text(json.dumps(nb))
  assert r.stale(written) == []  # prose does not change what the notebook computes
  code = next(c for c in nb["cells"] if c["cell_type"] == "code")
  code["source"] = ["".join(code["source"]) + "\nSEEDS = 3\n"]
  nb_path.write_text(json.dumps(nb))
  assert r.stale(written) == ["notebook"]
  (tmp_path / "_results.py").write_text("# edited\n")
  monkeypatch.setattr(r, "package_hash", lambda root=None: "0" * 64)
  assert r.stale(written) == ["notebook", "_results.py", "optaxlr"]
  assert r.stale({k: v for k, v in written.items() if k != "hashes"}) == ["made before hashing"]


def test_smoke_runs_print_no_verdict(capsys):
  r = _results_module()
  assert r.say_verdict("holds", "x", full=True) == "VERDICT: holds - x"
  line = r.say_verdict("holds", "x", full=False)
  assert line.startswith("smoke run: no verdict") and "VERDICT" not in line
  assert capsys.readouterr().out.splitlines() == ["VERDICT: holds - x", line]
