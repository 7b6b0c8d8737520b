"""The optaxlr command: a small real sweep, what it prints and writes, and bad usage.

Bad usage: every bad value ends with ONE line on stderr naming the option, and exit code 2,
before anything is trained or drawn (the commands are replaced by a tripwire in those tests).
Damaged result files: ``optaxlr.load`` raises ``ValueError`` naming the file (fault injection
on a real saved result), and ``optaxlr plot`` / ``diagnose`` exit 1 with one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import jax
import matplotlib.figure
import matplotlib.image
import matplotlib.text
import numpy as np
import pytest

import optaxlr
from optaxlr import cli, search

# 3 learning rates so the best one (the largest, after 20 steps) is flagged on the grid's edge.
SMALL = ["--steps", "20", "--eval-every", "10", "--seeds", "2", "--lr", "1e-5,1e-4,1e-3",
         "--wd", "0,1e-2", "--no-progress", "--batch-size", "32"]


def _sweep(tmp_path_factory, *options):
  """Runs ``optaxlr sweep``; keeps what it printed and every figure it saved (by file name)."""
  out = tmp_path_factory.mktemp("sweep")
  printed, figures = io.StringIO(), {}
  savefig = matplotlib.figure.Figure.savefig

  def keep(fig, fname, *args, **kwargs):
    figures[pathlib.Path(fname).name] = fig
    return savefig(fig, fname, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
    mp.setattr(matplotlib.figure.Figure, "savefig", keep)
    assert cli.main(["sweep", *SMALL, *options, "--out", str(out)]) == 0
  return SimpleNamespace(out=out, printed=printed.getvalue(), figures=figures)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  return _sweep(tmp_path_factory)


@pytest.fixture(scope="module")
def swept_one(tmp_path_factory):
  return _sweep(tmp_path_factory, "--optimizers", "adamw")


def _png(path, min_width):
  """A real, non-blank image at least ``min_width`` pixels wide."""
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[1] >= min_width, img.shape
  assert float(img[..., :3].std()) > 0.05, "blank image"
  return img


def _edges_by_hand(res, best):
  """on_edge re-stated: the best value vs the min/max of each axis with >= 3 values."""
  out = []
  for name, col in res.hparams.items():
    vals = sorted(set(col.tolist()))
    if len(vals) >= 3 and best[name] == vals[-1]:
      out.append(f"{name}=max")
    elif len(vals) >= 3 and best[name] == vals[0] and vals[0] != 0:
      out.append(f"{name}=min")
  return out


def test_sweep_summary_agrees_with_the_saved_results(swept):
  rows = json.loads((swept.out / "summary.json").read_text())
  assert [r["optimizer"] for r in rows] == ["adam_l2", "adamw"]
  for row in rows:
    res = optaxlr.load(row["file"])
    assert res.num_configs == 6 and res.seeds.tolist() == [0, 1]
    assert sorted(set(res.hparams["lr"].tolist())) == [1e-5, 1e-4, 1e-3]
    assert sorted(set(res.hparams["wd"].tolist())) == [0.0, 1e-2]
    best = res.best("val/error", warn=False)  # on_edge below checks the edges
    assert row["best"] == best["hparams"]
    assert row["val"][0] == pytest.approx(best["val/error"])
    assert row["val"][1] == pytest.approx(best["val/error_std"])
    test = res.final("test/error")[:, best["index"]]
    assert row["test"][0] == pytest.approx(float(test.mean()))
    assert row["diverged_runs"] == int(res.diverged.sum())
    assert row["on_edge"] == _edges_by_hand(res, best["hparams"])
  # 20 steps of Adam: the largest of 1e-5, 1e-4, 1e-3 trains furthest, on the grid's edge
  assert "lr=max" in rows[1]["on_edge"], rows[1]


def test_sweep_prints_the_table_and_says_when_the_best_is_on_the_edge(swept):
  rows = json.loads((swept.out / "summary.json").read_text())
  lines = swept.printed.splitlines()
  assert "on grid edge" in next(line for line in lines if line.startswith("optimizer"))
  for row in rows:
    line = next(line for line in lines if line.startswith(row["optimizer"] + " "))
    assert f"{row['best']['lr']:.1e}" in line and f"{row['best']['wd']:.1e}" in line
    assert line.rstrip().endswith(", ".join(row["on_edge"]) or "-")
    if "lr=max" in row["on_edge"]:
      assert (f"best lr ({row['optimizer']}) is the largest value tried"
              f" ({row['best']['lr']:g}): extend the grid upward") in swept.printed


def test_sweep_prints_each_winner_with_intervals_gap_and_p_best(swept):
  """The winners block and summary.json's "winner" against scipy's t-interval on the saved
  per-seed values (2 seeds: t with 1 degree of freedom)."""
  import scipy.stats as st

  rows = json.loads((swept.out / "summary.json").read_text())
  assert "t-intervals over 2 seeds, gaps paired over seeds" in swept.printed
  lines = swept.printed.splitlines()
  for row in rows:
    res = optaxlr.load(row["file"])
    v = res.final("val/error").astype(np.float64)
    order = np.argsort(v.mean(0), kind="stable")
    w, r = order[0], order[1]
    win = row["winner"]
    lo, hi = st.t.interval(0.95, 1, loc=v[:, w].mean(), scale=st.sem(v[:, w]))
    np.testing.assert_allclose(win["interval"], [lo, hi], rtol=1e-6)
    d = v[:, w] - v[:, r]
    assert win["gap"] == pytest.approx(d.mean())
    assert win["runner_up"] == res.config(int(r)) and 0 <= win["p_best"] <= 1
    t = res.final("test/error")[:, w].astype(np.float64)
    assert win["report"]["metric"] == "test/error"
    assert win["report"]["value"] == pytest.approx(t.mean())
    first = next(i for i, line in enumerate(lines) if line.startswith(f"  {row['optimizer']} "))
    assert f"val {100 * v[:, w].mean():.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]" in lines[first]
    assert f"test {100 * t.mean():.2f} %" in lines[first]
    assert f"gap to runner-up" in lines[first + 1] and f"p_best {win['p_best']:.2f}" in lines[first + 1]
    assert f"{win['indistinguishable']} of 6 configs indistinguishable" in lines[first + 1]


def _outside(fig) -> list[str]:
  """The visible texts of ``fig`` that reach past its edges (clipped in the saved image);
  a wrapped text is measured as drawn, wrapped."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  canvas = FigureCanvasAgg(fig)  # also for a figure closed after saving
  canvas.draw()
  renderer = canvas.get_renderer()
  box = fig.bbox
  out = []
  for t in fig.findobj(matplotlib.text.Text):
    if not t.get_visible() or not t.get_text().strip():
      continue
    if t.get_wrap():  # matplotlib wraps only while drawing (private API, matplotlib 3.x)
      with t._cm_set(text=t._get_wrapped_text()):
        bb = t.get_window_extent(renderer)
    else:
      bb = t.get_window_extent(renderer)
    if bb.x0 < box.x0 - 1 or bb.x1 > box.x1 + 1 or bb.y0 < box.y0 - 1 or bb.y1 > box.y1 + 1:
      out.append(f"{t.get_text()!r}: x {bb.x0:.0f}..{bb.x1:.0f}, y {bb.y0:.0f}..{bb.y1:.0f} "
                 f"in a {box.x1:.0f} x {box.y1:.0f} figure")
  return out


def test_outside_catches_the_old_clipped_title():
  """The check below sees what the issue saw: one panel under a long hand-set suptitle."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.2, 4.3), constrained_layout=True)
  ax.set_title("AdamW (decoupled, torch AdamW)")
  fig.suptitle("digits: val/error over learning rate x weight decay (cosine schedule, 600 "
               "steps, mean of 5 seeds)")
  assert [t.split(":")[0] for t in _outside(fig)] == ["'digits"]
  plt.close(fig)


@pytest.mark.parametrize("run", ["swept", "swept_one"])
def test_sweep_figures_one_panel_per_optimizer_nothing_clipped(run, request):
  """heatmaps.png and atlas.png: one panel per optimizer titled with its name, the figure title
  naming the metric and the run, every text inside the image, with one optimizer or two."""
  sw = request.getfixturevalue(run)
  names = [r["optimizer"] for r in json.loads((sw.out / "summary.json").read_text())]
  labels = [cli.OPTIMIZERS[n][0] for n in names]
  assert sorted(sw.figures) == ["atlas.png", "heatmaps.png"]
  for file, first in [("heatmaps.png", "val/error over learning rate x weight decay"),
                      ("atlas.png", "training doctor's diagnosis over learning rate x weight")]:
    fig = sw.figures[file]
    panels = [ax for ax in fig.axes if ax.get_title()]  # colorbars have no title
    assert [ax.get_title().split("\n")[0] for ax in panels] == labels
    assert all("over 2 seeds" in ax.get_title() for ax in panels)
    title = fig.get_suptitle()
    assert title.startswith(first) and "digits, cosine schedule, 20 steps" in title, title
    assert _outside(fig) == [], _outside(fig)
    _png(sw.out / file, len(names) * 400)


def test_on_edge_rules():
  res = SimpleNamespace(space=search.grid(lr=[1e-3, 1e-2, 1e-1], wd=[0.0, 1e-3, 1e-2],
                                          momentum=[0.5, 0.9]))
  assert cli.on_edge(res, {"lr": 1e-1, "wd": 1e-2, "momentum": 0.9}) == ["lr=max", "wd=max"]
  assert cli.on_edge(res, {"lr": 1e-3, "wd": 0.0, "momentum": 0.5}) == ["lr=min"]  # 0: a floor
  assert cli.on_edge(res, {"lr": 1e-2, "wd": 1e-3, "momentum": 0.9}) == []  # 2 values: no flag
  res = SimpleNamespace(space=search.grid(wd=[1e-4, 1e-3, 1e-2]))
  assert cli.on_edge(res, {"wd": 1e-4}) == ["wd=min"]


def test_plot_and_diagnose_a_saved_result(swept, tmp_path, capsys):
  path = swept.out / "sweep_adamw.npz"
  assert cli.main(["plot", str(path), "--x", "wd", "--y", "lr", "--out", str(tmp_path)]) == 0
  _png(tmp_path / "sweep_adamw_heatmap.png", 400)
  _png(tmp_path / "sweep_adamw_curves.png", 400)
  capsys.readouterr()
  assert cli.main(["diagnose", str(path)]) == 0
  first = capsys.readouterr().out.splitlines()[0]
  assert "12 runs (2 seeds x 6 configs)" in first, first


def test_space_file_sets_axes_including_momentum_for_sgd(tmp_path):
  space = tmp_path / "space.toml"
  space.write_text('[space]\nlr = [3e-3]\nwd = "1e-4:1e-2:3"\nmomentum = [0.5, 0.9]\n')
  out = tmp_path / "o"
  with contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(["sweep", *SMALL, "--optimizers", "sgd_l2", "--space", str(space),
                     "--out", str(out)]) == 0
  res = optaxlr.load(out / "sweep_sgd_l2.npz")
  np.testing.assert_allclose(np.unique(res.hparams["wd"]), [1e-4, 1e-3, 1e-2])
  assert np.unique(res.hparams["lr"]).tolist() == [3e-3]
  assert np.unique(res.hparams["momentum"]).tolist() == [0.5, 0.9]
  row = json.loads((out / "summary.json").read_text())[0]
  assert set(row["best"]) == {"lr", "wd", "momentum"}


def test_lr_find_command(tmp_path, capsys):
  assert cli.main(["lr-find", "--steps", "30", "--seeds", "1", "--wd", "0,1e-2",
                   "--out", str(tmp_path)]) == 0
  _png(tmp_path / "lr_find.png", 400)
  lines = capsys.readouterr().out.splitlines()
  head = next(i for i, line in enumerate(lines) if "valley" in line and "cyclic max" in line)
  assert lines[head].split()[:2] == ["wd", "recommended"], lines[head]
  table = [line.split() for line in lines[head + 1: head + 3]]
  assert [float(r[0]) for r in table] == [0.0, 1e-2]
  for r in table:  # every suggestion is a rate between --min-lr and --max-lr
    assert all(1e-6 <= float(v) <= 10 for v in r[1:]), r
  assert lines[head + 3].startswith(f"recommended learning rate: {table[0][1]} at wd 0,"
                                    f" {table[1][1]} at wd 0.01 ("), lines[head + 3]


def test_schedules_command(tmp_path, capsys):
  assert cli.main(["schedules", "--steps", "60", "--out", str(tmp_path)]) == 0
  _png(tmp_path / "schedules.png", 1000)
  out = capsys.readouterr().out
  rows = {line.split("  ")[0]: line for line in out.splitlines()}
  assert "one_cycle" in rows and "cosine" in rows
  assert float(rows["cosine"].split()[1]) == pytest.approx(0.1)  # t=0: the peak rate


@pytest.mark.torch
def test_schedules_beside_pytorch(tmp_path, capsys):
  pytest.importorskip("torch")
  assert cli.main(["schedules", "--steps", "90", "--torch", "--out", str(tmp_path)]) == 0
  diffs = [float(line.rsplit("=", 1)[1].split()[0]) for line in capsys.readouterr().out.splitlines()
           if "max |optaxlr - PyTorch|" in line]
  assert len(diffs) == 6 and max(diffs) < 1e-6, diffs


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"optaxlr {optaxlr.__version__}"


@pytest.mark.parametrize("command", [[], ["sweep"], ["lr-find"], ["schedules"], ["plot"],
                                     ["diagnose"]])
def test_help_of_every_command(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([*command, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: optaxlr") and "--help" in out


def test_the_readme_quick_start_passes_the_checks_with_its_default_grid(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # the checks create ./optaxlr_out
  seen = {}
  monkeypatch.setattr(cli, "cmd_sweep", lambda args: seen.setdefault("args", args) and 0)
  assert cli.main([]) == 0
  args = seen["args"]
  assert len(args.axes["lr"]) == 7 and len(args.axes["wd"]) == 6
  assert (args.steps, args.eval_every, args.seeds) == (600, 50, 5)


@pytest.mark.parametrize("steps, eval_every", [(130, 50), (20, 20), (10, 10)])
def test_default_eval_every_need_not_divide_steps(steps, eval_every, monkeypatch, tmp_path):
  """50 (or --steps if fewer): the engine evaluates after the last step too."""
  monkeypatch.chdir(tmp_path)
  seen = {}
  monkeypatch.setattr(cli, "cmd_sweep", lambda args: seen.setdefault("args", args) and 0)
  assert cli.main(["sweep", "--steps", str(steps)]) == 0
  assert seen["args"].eval_every == eval_every


# ----------------------------------------------------------------------------------------
# Bad usage: one line, exit 2, nothing run.


@pytest.fixture
def tripwire(monkeypatch, tmp_path):
  """Fails the test if a command starts its work (the checks must stop it first)."""
  monkeypatch.chdir(tmp_path)
  def started(args):
    raise AssertionError(f"{args.command} started with a bad value")

  for name in ("cmd_sweep", "cmd_lr_find", "cmd_schedules"):
    monkeypatch.setattr(cli, name, started)


def _usage_error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  captured = capsys.readouterr()
  assert e.value.code == 2, captured
  err = captured.err
  assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
  assert err.startswith("optaxlr") and ": error: " in err and "Traceback" not in err
  return err


BAD_ARGV = [
    # sweep: grids
    (["sweep", "--lr", "nan"], "argument --lr: 'nan': 'nan' is not a finite number"),
    (["sweep", "--lr", "inf"], "argument --lr: 'inf'"),
    (["sweep", "--lr=-inf"], "argument --lr"),
    (["sweep", "--lr", "1e-3,1e-3"], "0.001 is given twice"),
    (["sweep", "--lr", "0,1e-3"], "--lr values must be > 0"),
    (["sweep", "--lr=-1e-3"], "--lr values must be > 0"),
    (["sweep", "--lr", "abc"], "'abc' is not a number"),
    (["sweep", "--lr", ","], "an empty value"),
    (["sweep", "--lr", "1e-3,"], "an empty value"),
    (["sweep", "--lr", "1e-1:1e-4:3"], "0 < lo < hi"),
    (["sweep", "--lr", "1e-4:1e-1:0"], "n must be in [2, 10000]"),
    (["sweep", "--lr", "1e-4:1e-1:1"], "n must be in [2, 10000]"),
    (["sweep", "--lr", "1e-4:1e-1:100000000"], "n must be in [2, 10000]"),
    (["sweep", "--lr", "1e-4:1e-1:2.5"], "n must be an int or '1-3'"),
    (["sweep", "--lr", "1e-4:1e-1"], "a range has 3 parts"),
    (["sweep", "--lr", "1e-3:nan:3"], "'nan' is not a finite number"),
    (["sweep", "--lr", "0.5:0.9:1-3"], "no 1-3-10 value lies in"),
    (["sweep", "--wd", "nan"], "argument --wd"),
    (["sweep", "--wd", "inf"], "argument --wd"),
    (["sweep", "--wd", "0,0"], "0 is given twice"),
    (["sweep", "--wd=-1e-3"], "--wd values must be >= 0"),
    (["sweep", "--wd", "0:1:3"], "0 < lo < hi"),
    # sweep: other options
    (["sweep", "--optimizers", "adam,nope"], "--optimizers: unknown"),
    (["sweep", "--optimizers", ""], "--optimizers: an empty name"),
    (["sweep", "--optimizers", "adamw,"], "--optimizers: an empty name"),
    (["sweep", "--optimizers", "adamw,adamw"], "--optimizers: adamw is given twice"),
    (["sweep", "--task", "mnist"], "--task 'mnist' is not a built-in task (digits, digits-cnn,"),
    (["sweep", "--task", "mnist:"], "--task 'mnist:': expected a built-in task"),
    (["sweep", "--task", ":make"], "--task ':make': expected a built-in task"),
    (["sweep", "--schedule", "linear"], "invalid choice"),
    (["sweep", "--steps", "0"], "--steps must be >= 4"),
    (["sweep", "--steps", "2"], "--steps must be >= 4 (the training doctor reads at least 4 steps)"),
    (["sweep", "--steps", "1e3"], "invalid int value"),
    (["sweep", "--steps", str(2**40)], "--steps must be in [4, 2147483647]"),
    (["sweep", "--steps", "100000000", "--eval-every", "100"], "more than a quarter of this"),
    (["sweep", "--seeds", "0"], "--seeds must be >= 1"),
    (["sweep", "--seeds", "-3"], "--seeds must be >= 1"),
    (["sweep", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["sweep", "--batch-size", "100000"], "--batch-size must be in [1, 1077]"),
    (["sweep", "--task", "teacher_student", "--batch-size", "101"], "[1, 100]"),
    (["sweep", "--eval-every", "0"], "--eval-every must be in [1, 600]"),
    (["sweep", "--eval-every", "1000"], "--eval-every must be in [1, 600]"),
    (["sweep", "--devices", "0"], "--devices must be in [1,"),
    (["sweep", "--devices", str(len(jax.devices()) + 1)], "--devices must be in [1,"),
    (["sweep", "--key", "-1"], "--key must be >= 0"),
    (["sweep", "--key", str(2**32)], "--key must be in [0, 4294967295]"),
    (["sweep", "--out", ""], "--out must be a folder path"),
    (["sweep", "--out", "/proc/optaxlr-no"], "--out '/proc/optaxlr-no': cannot write there"),
    (["sweep", "--space", "/nonexistent.toml"], "--space /nonexistent.toml: no such file"),
    (["sweep", "--nope"], "unrecognized arguments: --nope"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["frobnicate"], "invalid choice"),
    # lr-find
    (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "0 < min < max"),
    (["lr-find", "--min-lr", "0"], "0 < min < max"),
    (["lr-find", "--min-lr", "1e-400"], "0 < min < max"),
    (["lr-find", "--min-lr", "nan"], "--min-lr must be a finite number"),
    (["lr-find", "--max-lr", "inf"], "--max-lr must be a finite number"),
    (["lr-find", "--max-lr", "nan"], "--max-lr must be a finite number"),
    (["lr-find", "--steps", "1"], "--steps must be >= 20"),
    (["lr-find", "--steps", "19"], "--steps must be >= 20"),
    (["lr-find", "--seeds", "0"], "--seeds must be >= 1"),
    (["lr-find", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["lr-find", "--batch-size", "5000"], "--batch-size must be in [1, 1077]"),
    (["lr-find", "--wd=-1"], "--wd values must be >= 0"),
    (["lr-find", "--wd", "nan"], "argument --wd"),
    (["lr-find", "--wd", "0,0"], "0 is given twice"),
    (["lr-find", "--optimizer", "lion"], "invalid choice"),
    (["lr-find", "--task", "mnist"], "--task 'mnist' is not a built-in task"),
    (["lr-find", "--task", "nosuch_optaxlr_mod:make"], "no module named 'nosuch_optaxlr_mod'"),
    (["lr-find", "--out", ""], "--out must be a folder path"),
    # schedules
    (["schedules", "--steps", "10"], "--steps must be in [30, 1000000]"),
    (["schedules", "--steps", str(10**11)], "--steps must be in [30, 1000000]"),
    (["schedules", "--out", ""], "--out must be a folder path"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGV, ids=[" ".join(a) for a, _ in BAD_ARGV])
def test_bad_usage_exits_2_with_one_line(argv, message, tripwire, capsys):
  err = _usage_error(argv, capsys)
  assert message in err, err


BAD_SPACE_FILES = [
    ("syntax.toml", "lr = [1e-3,\n", "not valid TOML"),
    ("empty-list.toml", "lr = []\n", "lr: an empty list"),
    ("unknown.toml", "beta = [0.9]\n", "unknown axis 'beta'; --optimizers adam_l2,adamw read only: lr, wd"),
    ("seed.toml", "seed = [1, 2]\n", "unknown axis 'seed'"),
    ("momentum-adam.toml", "momentum = [0.9]\n", "momentum is read only by sgd_l2, sgdw"),
    ("bool.toml", "lr = [true]\n", "lr: the list holds True (bool), not a number"),
    ("bool-scalar.toml", "lr = true\n", "lr: True (bool) is not a number"),
    ("negative.toml", "lr = [-1e-3]\n", "lr values must be > 0"),
    ("zero.toml", "lr = [0]\n", "lr values must be > 0"),
    ("negative-wd.toml", "wd = [-1]\n", "wd values must be >= 0"),
    ("string.toml", 'lr = "abc"\n', "lr: 'abc' is not a number"),
    ("string-list.toml", 'lr = ["abc"]\n', "lr: 'abc' is not a number"),
    ("nested.toml", "lr = [[1e-3, 1e-2]]\n", "lr: the list holds [0.001, 0.01]"),
    ("table.toml", "[lr]\na = 1\n", "lr: {'a': 1} (dict) is not a number, list or range"),
    ("space-scalar.toml", "space = 3\n", "'space' must be a table"),
    ("space-and-more.toml", "lr = [1e-3]\n[space]\nwd = [0.0]\n", "found other top-level keys"),
    ("nan.toml", "lr = [nan]\n", "lr: nan is not a finite number"),
    ("inf.toml", "wd = [inf]\n", "wd: inf is not a finite number"),
    ("duplicate.toml", "lr = [1e-3, 1e-3]\n", "lr: 0.001 is given twice"),
    ("bad-range.toml", 'wd = "1e-1:1e-3:3"\n', "wd: a range needs 0 < lo < hi"),
    ("empty.toml", "", "defines no axes"),
    ("not-utf8.toml", b"lr = [\xff]\n", "not UTF-8 text"),
    ("syntax.yaml", "lr: [1e-3\n", "not valid YAML at line"),
    ("list.yaml", "- 1\n- 2\n", "got a list"),
    ("null.yaml", "lr: null\n", "lr: None (NoneType)"),
    ("empty.yaml", "", "got a NoneType"),
    ("words.yaml", "lr: [1e-3, foo]\n", "lr: 'foo' is not a number"),
]


@pytest.mark.parametrize("name, content, message", BAD_SPACE_FILES,
                         ids=[n for n, _, _ in BAD_SPACE_FILES])
def test_bad_space_file_exits_2_with_one_line(name, content, message, tmp_path, tripwire, capsys):
  if name.endswith(".yaml"):
    pytest.importorskip("yaml")
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  err = _usage_error(["sweep", "--space", str(path), "--out", str(tmp_path / "o")], capsys)
  assert f"--space {path}: " in err and message in err, err


def test_space_file_momentum_range_for_sgd(tmp_path, tripwire, capsys):
  path = tmp_path / "m.toml"
  path.write_text("momentum = [0.9, 1.0]\n")
  err = _usage_error(["sweep", "--optimizers", "sgd_l2,sgdw", "--space", str(path)], capsys)
  assert "momentum values must be in [0, 1), got 1 in [0.9, 1.0]" in err


def test_unwritable_out_exits_2(tmp_path, tripwire, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  err = _usage_error(["sweep", "--out", str(a_file)], capsys)
  assert f"--out '{a_file}' is a file" in err
  err = _usage_error(["lr-find", "--out", str(a_file / "sub")], capsys)
  assert f"--out '{a_file / 'sub'}': cannot write there (Not a directory)" in err


def test_plot_options_are_checked_against_the_result(swept, tmp_path, monkeypatch, capsys):
  from optaxlr import plot

  monkeypatch.setattr(plot, "heatmap", lambda *a, **k: pytest.fail("plotted"))
  monkeypatch.setattr(plot, "curves", lambda *a, **k: pytest.fail("plotted"))
  path = str(swept.out / "sweep_adamw.npz")
  for extra, message in [
      (["--metric", "val/nope"], "--metric 'val/nope' is not in"),
      (["--x", "momentum"], "--x 'momentum' is not a hyperparameter"),
      (["--y", "beta"], "--y 'beta' is not a hyperparameter"),
      (["--x", "lr", "--y", "lr"], "--x and --y must differ"),
      (["--out", str(swept.out / "summary.json")], "is a file"),
  ]:
    assert message in _usage_error(["plot", path, "--out", str(tmp_path), *extra], capsys)


def test_bad_usage_exit_code_from_a_real_process(tmp_path):
  bad = tmp_path / "space.toml"
  bad.write_text("lr = [true]\n")
  proc = subprocess.run([sys.executable, "-m", "optaxlr.cli", "sweep", "--space", str(bad)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stdout == ""


# ----------------------------------------------------------------------------------------
# Damaged result files: load raises ValueError naming the file; plot/diagnose exit 1.


def _load_or_message(blob: bytes, path):
  path.write_bytes(blob)
  try:
    return optaxlr.load(path)
  except ValueError as e:
    msg = str(e)
    assert msg.startswith(f"load: '{path}' "), msg
    for leak in ("BadZipFile", "pickle", "Error", "allow_pickle"):
      assert leak not in msg, msg
    return msg


def _same(a, b):
  np.testing.assert_array_equal(a.batch_loss, b.batch_loss)
  np.testing.assert_array_equal(a.diverged_at, b.diverged_at)
  assert a.metrics.keys() == b.metrics.keys()
  for m in a.metrics:
    np.testing.assert_array_equal(a.metrics[m], b.metrics[m])
  for k, v in a.hparams.items():
    np.testing.assert_array_equal(v, b.hparams[k])


def test_load_truncated_result_raises_value_error(swept, tmp_path):
  blob = (swept.out / "sweep_adamw.npz").read_bytes()
  offsets = sorted({0, 1, 3, 4, 30, 100, len(blob) // 3, len(blob) // 2, len(blob) - 23,
                    len(blob) - 22, len(blob) - 1})
  for n in offsets:
    got = _load_or_message(blob[:n], tmp_path / "cut.npz")
    assert isinstance(got, str), f"a result truncated to {n} of {len(blob)} bytes loaded"
    if n == 0:
      assert "is empty (0 bytes)" in got
    elif n >= 4:
      assert "truncated or damaged" in got, got


def test_load_flipped_bytes_raise_value_error_or_change_nothing(swept, tmp_path):
  path = swept.out / "sweep_adamw.npz"
  good, blob = optaxlr.load(path), path.read_bytes()
  rng = np.random.default_rng(0)
  failed = 0
  for i in sorted(rng.choice(len(blob), size=min(400, len(blob)), replace=False)):
    bad = bytearray(blob)
    bad[i] ^= 0xFF
    got = _load_or_message(bytes(bad), tmp_path / "flip.npz")
    if isinstance(got, str):
      failed += 1
    else:  # a flip in a field that no reader uses (a timestamp): the data are intact
      _same(got, good)
  assert failed > 100, failed


def _rewrite(src, dst, *, drop=(), replace=None):
  with np.load(src) as data:
    arrays = {k: data[k] for k in data.files if k not in drop}
  arrays.update(replace or {})
  np.savez(dst, **arrays)
  return dst


def _header(src, **changes):
  with np.load(src) as data:
    header = json.loads(data["header"].tobytes().decode())
  header.update(changes)
  return np.frombuffer(json.dumps(header).encode(), np.uint8)


def test_load_wrong_files_say_what_is_wrong(swept, tmp_path):
  src = swept.out / "sweep_adamw.npz"
  np.savez(tmp_path / "plain.npz", a=np.zeros(3))
  np.save(tmp_path / "single.npy", np.zeros(3))
  (tmp_path / "text.npz").write_text("lr,wd\n0.1,0\n")
  (tmp_path / "empty.npz").write_bytes(b"")
  (tmp_path / "folder.npz").mkdir()
  with zipfile.ZipFile(tmp_path / "not-npy.npz", "w") as zf:
    zf.writestr("header.npy", b"this is not an array")
  with np.load(src) as data:
    n_s, n_c = data["diverged_at"].shape
  cases = {
      "plain.npz": "is a .npz file but not an optaxlr sweep result (no header",
      "single.npy": "is a single .npy array, not a saved sweep result",
      "text.npz": "is not a .npz file (no zip signature)",
      "empty.npz": "is empty (0 bytes)",
      "folder.npz": "is a directory",
      "not-npy.npz": "is damaged: its member 'header.npy' is not a valid .npy array",
      _rewrite(src, tmp_path / "no-json.npz", replace={"header": np.frombuffer(b"{lr", np.uint8)}
               ).name: "its header is not valid JSON",
      _rewrite(src, tmp_path / "format.npz", replace={"header": _header(src, format="other/9")}
               ).name: "has format 'other/9'",
      _rewrite(src, tmp_path / "axes.npz", replace={"header": _header(src, axes="lr")}
               ).name: "its header's 'axes' is not a non-empty list",
      _rewrite(src, tmp_path / "missing.npz", drop=("batch_loss",)).name:
          "is incomplete: its array 'batch_loss' is missing",
      _rewrite(src, tmp_path / "shape.npz", replace={"diverged_at": np.zeros((n_s, n_c + 1), int)}
               ).name: f"'diverged_at' has shape ({n_s}, {n_c + 1}), expected ({n_s}, {n_c})",
      _rewrite(src, tmp_path / "axis.npz", replace={"axis0:lr": np.zeros((2, 2))}).name:
          "'axis0:lr' is a 2-D float64 array, expected 1-D",
  }
  for name, message in cases.items():
    with pytest.raises(ValueError) as e:
      optaxlr.load(tmp_path / name)
    assert str(e.value).startswith(f"load: '{tmp_path / name}' ") and message in str(e.value), e
  with pytest.raises(FileNotFoundError, match="missing-file.npz. does not exist"):
    optaxlr.load(tmp_path / "missing-file.npz")


@pytest.mark.parametrize("command", ["plot", "diagnose"])
def test_plot_and_diagnose_exit_1_on_a_damaged_result(command, swept, tmp_path, capsys):
  blob = (swept.out / "sweep_adamw.npz").read_bytes()
  cut = tmp_path / "cut.npz"
  cut.write_bytes(blob[: len(blob) // 2])
  (tmp_path / "empty.npz").write_bytes(b"")
  for path in (cut, tmp_path / "empty.npz", tmp_path / "missing.npz", tmp_path):
    argv = [command, str(path)] + (["--out", str(tmp_path / "o")] if command == "plot" else [])
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"optaxlr {command}: error: cannot read the sweep result: '{path}'"), err


# ----------------------------------------------------------------------------------------
# --task MODULE:FUNCTION (or path/to/file.py:FUNCTION): a task of the user's.

USER_TASK = """\
import optaxlr


def make_task():
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
"""


def _user_task():
  """What USER_TASK's make_task returns, built here rather than through the command."""
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)


@pytest.fixture
def user_dir(monkeypatch, tmp_path):
  """tmp_path as the current directory; sys.path and the user's modules undone afterwards."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  yield tmp_path
  for name in [m for m in sys.modules if m.startswith(("ut_", "_optaxlr_task_"))]:
    del sys.modules[name]


def test_sweep_of_a_user_task_equals_the_same_sweep_from_python(user_dir, capsys):
  """--task MODULE:FUNCTION with --optimizers, --wd and a --space file; 10 steps evaluated
  every 4 (after steps 4, 8 and 10): the numbers are those of optaxlr.sweep called directly."""
  (user_dir / "ut_teacher.py").write_text(USER_TASK)
  (user_dir / "space.toml").write_text("lr = [1e-3, 1e-2]\n")
  assert cli.main(["sweep", "--task", "ut_teacher:make_task", "--optimizers", "adamw",
                   "--space", "space.toml", "--wd", "0,1e-2", "--steps", "10", "--eval-every",
                   "4", "--seeds", "2", "--batch-size", "16", "--no-progress", "--out", "o"]) == 0
  printed = capsys.readouterr().out
  assert "task=ut_teacher:make_task ('teacher_student', 64 train examples)" in printed, printed
  got = optaxlr.load(user_dir / "o" / "sweep_adamw.npz")

  def adamw(h):  # what the command's adamw with its default cosine schedule is
    return optaxlr.adamw(optaxlr.schedules.cosine(h["lr"], 10), weight_decay=h["wd"],
                         decay="decoupled")

  want = optaxlr.sweep(_user_task(), adamw, search.grid(lr=[1e-3, 1e-2], wd=[0.0, 1e-2]),
                       steps=10, batch_size=16, seeds=2, eval_every=4, key=0, execution=optaxlr.Execution(progress=False))
  assert got.eval_steps.tolist() == want.eval_steps.tolist() == [4, 8, 10]
  _same(got, want)  # the same program on the same data and keys: equal to the bit
  assert not got.diverged.any()
  row = json.loads((user_dir / "o" / "summary.json").read_text())[0]
  best = want.best("val/loss")
  assert row["metric"] == "val/loss" and row["best"] == best["hparams"]
  assert row["val"][0] == pytest.approx(best["val/loss"], rel=1e-6)


def test_lr_find_of_a_user_task_file_prints_the_recommended_rate(user_dir, capsys):
  """path/to/file.py:FUNCTION with lr-find: the recommended rate printed is that of
  optaxlr.lr_find(...).suggest() called directly."""
  (user_dir / "sub").mkdir()
  (user_dir / "sub" / "ut_file.py").write_text(USER_TASK)
  assert cli.main(["lr-find", "--task", "sub/ut_file.py:make_task", "--steps", "30", "--seeds",
                   "1", "--wd", "0", "--batch-size", "16", "--out", "o"]) == 0
  lines = capsys.readouterr().out.splitlines()
  head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["wd", "recommended"])
  want = optaxlr.lr_find(_user_task(), lambda h: optaxlr.adamw(h["lr"], weight_decay=h["wd"]),
                         search.grid(wd=[0.0]), steps=30, seeds=1, batch_size=16, min_lr=1e-6,
                         max_lr=10.0).suggest(0)
  assert np.isfinite(want["recommended"])
  cols = lines[head + 1].split()
  assert cols[1] == f"{want['recommended']:.2e}" and cols[3] == f"{want['steep']:.2e}", cols
  assert lines[head + 2].startswith(f"recommended learning rate: {want['recommended']:.2e} at wd 0")


def test_user_task_from_a_file_path_passes_the_checks(user_dir, monkeypatch):
  (user_dir / "ut_path.py").write_text(USER_TASK)
  seen = {}
  monkeypatch.setattr(cli, "cmd_sweep", lambda args: seen.setdefault("args", args) and 0)
  assert cli.main(["sweep", "--task", str(user_dir / "ut_path.py") + ":make_task"]) == 0
  task = seen["args"].task_obj
  assert isinstance(task, optaxlr.Task) and task.n_train == 64 and set(task.eval) == {"val", "test"}


_MAKE = "\n\ndef make():\n  t = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)\n"
BAD_USER_TASKS = [
    # (file name, its text, --task, what the one line says (or a tuple of parts of it))
    (None, None, "nosuch_optaxlr_mod:make",
     "--task nosuch_optaxlr_mod:make: no module named 'nosuch_optaxlr_mod' (looked in the current"),
    (None, None, "nosuch_optaxlr_pkg.sub:make", "no module named 'nosuch_optaxlr_pkg'"),
    (None, None, "missing.py:make", "--task missing.py:make: no such file 'missing.py'"),
    ("notes.txt", "", "./notes.txt:make", "'./notes.txt' is not a .py file"),
    (None, None, "not a module:make", "'not a module' is neither a module name"),
    ("ut_raise.py", "raise RuntimeError('broken at import')\n", "ut_raise:make",
     "--task ut_raise:make: importing ut_raise raised RuntimeError: broken at import (at "),
    ("ut_dep.py", "import nosuch_optaxlr_dep\n", "ut_dep:make",
     "importing ut_dep raised ModuleNotFoundError: No module named 'nosuch_optaxlr_dep' (at "),
    ("ut_attr.py", USER_TASK, "ut_attr:nope",
     "--task ut_attr:nope: ut_attr has no attribute 'nope'; its functions: make_task"),
    ("ut_value.py", "TASK = 3\n", "ut_value:TASK", "TASK is not callable (its type is int)"),
    ("ut_args.py", "def make(n, scale=1):\n  return n\n", "ut_args:make",
     "make() requires arguments (n) but is called with none"),
    ("ut_fails.py", "def make():\n  raise ValueError('no data here')\n", "ut_fails:make",
     "--task ut_fails:make: make() raised ValueError: no data here (at "),
    ("ut_deep.py", "import optaxlr\n\n\ndef make():\n"
     "  return optaxlr.tasks.teacher_student(n_train=-1)\n",
     "ut_deep:make", ("make() raised ValueError: teacher_student: n_train must be >= 1, got"
                      " n_train=-1 (at ", "ut_deep.py:5)\n")),  # the user's line, not optaxlr's
    ("ut_dict.py", "def make():\n  return {'x': 1}\n", "ut_dict:make",
     "make() returned a value of type dict, expected an optaxlr.Task"),
    ("ut_noval.py", "import dataclasses, optaxlr" + _MAKE
     + "  return dataclasses.replace(t, eval={'test': t.eval['test']})\n", "ut_noval:make",
     "the task has no 'val' split (its eval splits: test); the results are ranked by val/error"),
    ("ut_nan.py", "import dataclasses, optaxlr" + _MAKE
     + "  x = t.train['x'].at[0, 0].set(float('nan'))\n"
     + "  return dataclasses.replace(t, train={**t.train, 'x': x})\n",
     "ut_nan:make", "make() returned a Task that fails its checks: Task.validate:"),
]


@pytest.mark.parametrize("file, text, spec, message", BAD_USER_TASKS,
                         ids=[s for _, _, s, _ in BAD_USER_TASKS])
def test_bad_user_task_exits_2_with_one_line(file, text, spec, message, tripwire, user_dir, capsys):
  if file is not None:
    (user_dir / file).write_text(text)
  err = _usage_error(["sweep", "--task", spec], capsys)
  for part in message if isinstance(message, tuple) else (message,):
    assert part in err, err


def test_user_task_conflicts_and_batch_size(tripwire, user_dir, capsys):
  (user_dir / "ut_teacher.py").write_text(USER_TASK)
  err = _usage_error(["sweep", "--task", "ut_teacher:make_task", "--quick"], capsys)
  assert "--quick and --task ut_teacher:make_task conflict" in err, err
  err = _usage_error(["sweep", "--task", "ut_teacher:make_task", "--batch-size", "65"], capsys)
  assert ("--batch-size must be in [1, 64] (the training set size of --task"
          " ut_teacher:make_task), got 65") in err, err


def test_user_task_module_is_found_in_the_current_directory_by_the_installed_command(tmp_path):
  """The console script's sys.path lacks the current directory; the command adds it (as
  python -m does), so the module is found and its function called."""
  exe = pathlib.Path(sys.executable).with_name("optaxlr")
  if not exe.exists():
    pytest.skip(f"no installed optaxlr command beside {sys.executable}")
  (tmp_path / "ut_proc.py").write_text("def make():\n  return 'not a task'\n")
  proc = subprocess.run([str(exe), "sweep", "--task", "ut_proc:make"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr == ("optaxlr sweep: error: --task ut_proc:make: make() returned a value of"
                         " type str, expected an optaxlr.Task (e.g. from optaxlr.tasks or"
                         " optaxlr.Task.from_functions)\n"), proc.stderr


# ----------------------------------------------------------------------------------------
# A model axis in --space: a task whose model reads a swept dropout rate.

USER_DROPOUT_TASK = """\
import numpy as np
from flax import nnx
from optaxlr.tasks import Dropout, Task


class Net(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(8, 3, rngs=rngs)
    self.drop = Dropout(0.1, hparam="dropout", rngs=rngs)

  def __call__(self, x):
    return self.lin(self.drop(x))


def make_task():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
  return Task.from_flax_nnx("drop", Net, train={"x": x[:64], "y": y[:64]},
                            eval={"val": {"x": x[64:], "y": y[64:]}})
"""


def test_space_takes_a_model_axis_of_a_user_task(user_dir, capsys):
  """--space dropout=0.1,0.3 with --task: the task (whose model reads hparam('dropout')) is
  accepted and swept over the model axis; the numbers are optaxlr.sweep's on the same space."""
  (user_dir / "ut_drop.py").write_text(USER_DROPOUT_TASK)
  assert cli.main(["sweep", "--task", "ut_drop:make_task", "--optimizers", "adamw", "--wd", "0",
                   "--lr", "1e-3,1e-2", "--space", "dropout=0.1,0.3", "--steps", "10",
                   "--eval-every", "5", "--seeds", "1", "--batch-size", "16", "--no-progress",
                   "--out", "o"]) == 0
  got = optaxlr.load(user_dir / "o" / "sweep_adamw.npz")
  import ut_drop

  def adamw(h):
    return optaxlr.adamw(optaxlr.schedules.cosine(h["lr"], 10), weight_decay=h["wd"],
                         decay="decoupled")

  want = optaxlr.sweep(ut_drop.make_task(), adamw,
                       search.grid(lr=[1e-3, 1e-2], wd=[0.0], dropout=[0.1, 0.3]), steps=10,
                       batch_size=16, seeds=1, eval_every=5, key=0,
                       execution=optaxlr.Execution(progress=False))
  assert got.space.names == want.space.names == ("lr", "wd", "dropout")
  _same(got, want)
  # the dropout rate changes the numbers: the axis reached the model
  assert not np.allclose(got.batch_loss[0, 0], got.batch_loss[0, 1])


@pytest.mark.parametrize("space, message", [
    (None, ("reads hyperparameter 'dropout', which the space does not hold; available: ['lr',"
            " 'wd']", "; sweep it with --space dropout=VALUES (e.g. dropout=0.1,0.3)")),
    ("foo=1,2", "--space foo=1,2: unknown axis 'foo'; --optimizers adam_l2,adamw read only: lr,"
     " wd, and the model of --task ut_drop:make_task does not read it"),
    ("3x=1", "--space 3x=1: '3x' is not an axis name; write NAME=VALUES"),
    ("dropout=abc", "--space dropout=abc: dropout: 'abc' is not a number"),
])
def test_model_axis_mistakes_exit_2_with_one_line(space, message, user_dir, tripwire, capsys):
  (user_dir / "ut_drop.py").write_text(USER_DROPOUT_TASK)
  argv = ["sweep", "--task", "ut_drop:make_task", "--out", "o"]
  if space is not None:
    argv += ["--space", "dropout=0.1", "--space", space]
  err = _usage_error(argv, capsys)
  for part in (message,) if isinstance(message, str) else message:
    assert part in err, err


def test_a_model_axis_the_builtin_task_does_not_read_exits_2(tripwire, tmp_path, capsys):
  err = _usage_error(["sweep", "--space", "dropout=0.1,0.3", "--out", str(tmp_path / "o")],
                     capsys)
  assert ("--space dropout=0.1,0.3: unknown axis 'dropout'; --optimizers adam_l2,adamw read "
          "only: lr, wd, and the model of --task digits does not read it") in err, err
