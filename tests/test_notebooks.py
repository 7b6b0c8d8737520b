"""Executes every notebook of notebooks/ at its small default size (OPTAXLR_NB_FULL unset), and
binds the committed full-size records to their code, their numbers and the README.

``python tests/test_notebooks.py`` prints the README's verdict table generated from the records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
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
    "13_batch_size",
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
    "13_batch_size",
]


# Records committed before records carried hashes and per-seed values: reported as made before
# hashing, not checked against the code. A record rerun at full size leaves this list (the
# test below fails until it is removed), and no new record may join it.
MADE_BEFORE_HASHING: set[str] = set()  # every record has been rerun with hashes

# Records whose notebook and ``_results.py`` are unchanged but which were made by an earlier
# state of the ``optaxlr`` sources (merged from parallel branches after their full-size runs):
# name -> the first 12 hex digits of the package hash in the record. Each is accepted only
# while it is stale by the package alone and its hash is the one listed here (a rerun record
# must leave the list), and the README's table says "rerun pending" beside its verdict.
RERUN_PENDING: dict[str, str] = {}  # every record was rerun after the segments fix


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
  assert rec["verdict"]["holds"] in ("holds", "partly", "does not hold", "not testable here")
  assert rec["verdict"]["claim"] and rec["verdict"]["measured"] and rec["numbers"]
  if name in MADE_BEFORE_HASHING:
    assert "hashes" not in rec, (f"{path.name} now carries hashes: remove {name} from"
                                 " MADE_BEFORE_HASHING so that it is checked against its code")
    return
  r = _results_module()
  assert rec.get("per_seed"), f"{path.name}: no per-seed values"
  assert {"flax", "scikit-learn"} <= set(rec["versions"]) and rec["machine"]["cpu_model"]
  assert rec["key"] is not None and rec["split_seed"] is not None
  assert r.digest_ok(rec), (f"{path.name}: its content no longer matches its digest (a number or"
                            " word was edited by hand): rerun the notebook")
  parts = rec["verdict"].get("parts")
  assert parts and all("treatment" in p and "control" in p for p in parts), (
      f"{path.name}: the verdict has no parts with per-seed values")
  wrong = r.recheck(rec["verdict"])
  assert not wrong, f"{path.name}: the verdict does not follow from its parts: {wrong}"
  for v in rec.get("also", []):  # second rows: the same claim on another task
    assert v.get("row") and v["holds"] in r.WORDS and v["parts"], f"{path.name}: a bad second row"
    wrong = r.recheck(v)
    assert not wrong, f"{path.name}: its {v['row']!r} row does not follow from its parts: {wrong}"
  changed = r.stale(rec)
  if name in RERUN_PENDING:
    assert changed == ["optaxlr"] and rec["hashes"]["optaxlr"].startswith(RERUN_PENDING[name]), (
        f"{path.name} is listed in RERUN_PENDING for package {RERUN_PENDING[name]} but is stale by "
        f"{changed} with package {rec['hashes']['optaxlr'][:12]}: update or remove the entry")
    return
  assert not changed, (f"{path.name} was made by other code ({', '.join(changed)} changed"
                       f" since): rerun {name}.ipynb with OPTAXLR_NB_FULL=1")


BEGIN = "<!-- verdicts: generated from notebooks/results by `python tests/test_notebooks.py` -->"
END = "<!-- /verdicts -->"


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def verdict_table() -> str:
  """The README's verdict table, one row per claim notebook, from its committed record."""
  lines = [BEGIN, "| notebook | claim | measured (full size) | verdict |", "| --- | --- | --- | --- |"]
  for name in CLAIMS:
    rec = json.loads((RESULTS / f"{name}.json").read_text())
    v = rec["verdict"]
    word = f"**{v['holds']}**"
    if name in MADE_BEFORE_HASHING:
      word += " (older record: no per-seed values or hashes, not rerun on the paired statistics)"
    if name in RERUN_PENDING:
      word += " (made by an earlier state of the optaxlr sources: rerun pending)"
    lines.append(f"| `{name}` | {_cell(v['claim'])} | {_cell(v['measured'])} | {word} |")
    for extra in rec.get("also", []):  # the same claim on a second task
      lines.append(f"| `{name}` ({_cell(extra['row'])}) | {_cell(extra['claim'])} | "
                   f"{_cell(extra['measured'])} | **{extra['holds']}** |")
  lines.append(END)
  return "\n".join(lines)


def test_readme_verdicts_are_the_records():
  """README's verdict table is the one generated from the records, word for word."""
  text = (ROOT / "README.md").read_text()
  assert BEGIN in text and END in text, "README.md lost its verdict table markers"
  table = text[text.index(BEGIN):text.index(END) + len(END)]
  assert table == verdict_table(), ("README.md's verdict table differs from the records: paste the"
                                    " output of `python tests/test_notebooks.py`")


def test_verdict_rule_against_hand_computed_intervals():
  """part() against t-intervals computed here (t_{0.975, 3} = 3.182446), and the word rule."""
  r = _results_module()
  treat, ctrl = [0.20, 0.22, 0.19, 0.21], [0.25, 0.26, 0.22, 0.25]
  d = [-0.05, -0.04, -0.03, -0.04]
  sd = (sum((x + 0.04) ** 2 for x in d) / 3) ** 0.5
  half = 3.182446 * sd / 2
  p = r.part("a", treat, ctrl)
  assert p["diff"] == pytest.approx(-0.04) and p["lo"] == pytest.approx(-0.04 - half, abs=1e-6)
  assert p["hi"] == pytest.approx(-0.04 + half, abs=1e-6) and p["holds"]  # hi = -0.027 < 0
  assert not r.part("b", ctrl, treat)["holds"]                           # the other way round
  assert r.part("c", treat, ctrl, reading="differs")["holds"]
  assert r.part("d", treat, ctrl, reading="not worse", margin=0.0)["holds"]
  assert not r.part("e", ctrl, treat, reading="not worse", margin=0.05)["holds"]  # hi 0.053 > 0.05
  assert r.part("e2", ctrl, treat, reading="not worse", margin=0.06)["holds"]
  assert not r.part("f", treat, ctrl, reading="similar", margin=0.05)["holds"]    # lo -0.053
  assert r.part("g", treat, [t + 0.001 * (-1) ** i for i, t in enumerate(treat)], reading="similar",
                margin=0.005)["holds"]
  nan = r.part("h", [0.1, float("nan")], [0.2, 0.2])
  assert not nan["holds"]  # a diverged seed: no interval, the part fails
  yes, no = {"holds": True}, {"holds": False}
  assert r.word([yes, yes]) == "holds" and r.word([yes, no]) == "partly"
  assert r.word([no, no]) == "does not hold"
  assert r.word([yes, yes], [no]) == "not testable here" and r.word([yes], [yes]) == "holds"
  with pytest.raises(ValueError, match=r"part: reading must be one of"):
    r.part("x", treat, ctrl, reading="worse")
  with pytest.raises(ValueError, match=r"part: treatment and control must be per-seed values"):
    r.part("x", treat, ctrl[:3])


def test_a_record_edited_by_hand_is_caught():
  """A changed number breaks the digest; a flipped word or part no longer follows from the
  per-seed values (recheck), even when the digest is recomputed to match."""
  r = _results_module()
  treat, ctrl = [0.20, 0.22, 0.19, 0.21], [0.25, 0.26, 0.22, 0.25]
  v = r.verdict("c", "m", [r.part("a", treat, ctrl), r.part("b", ctrl, treat)],
                [r.part("k", treat, ctrl, reading="differs")])
  assert v["holds"] == "partly" and r.recheck(v) == []
  rec = r.plain({"numbers": {"x": 0.5}, "verdict": v})
  rec["digest"] = r.digest(rec)
  assert r.digest_ok(rec)
  edited = json.loads(json.dumps(rec))
  edited["numbers"]["x"] = 0.4
  assert not r.digest_ok(edited)
  flipped = json.loads(json.dumps(rec))
  flipped["verdict"]["holds"] = "holds"
  assert not r.digest_ok(flipped) and r.recheck(flipped["verdict"]) == [
      "verdict 'holds' but its parts give 'partly'"]
  moved = json.loads(json.dumps(rec))
  moved["verdict"]["parts"][0]["control"][0] = 0.20  # a per-seed value changed: the interval moves
  assert any(w.startswith("a: diff") for w in r.recheck(moved["verdict"]))
  part_flipped = json.loads(json.dumps(rec))
  part_flipped["verdict"]["parts"][1]["holds"] = True
  assert "b: holds=True but its interval gives False" in r.recheck(part_flipped["verdict"])


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


if __name__ == "__main__":
  print(verdict_table())
