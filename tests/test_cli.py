"""The optaxlr command: a small real sweep, its files, plots, and exit codes for bad usage."""

from __future__ import annotations

import json

import numpy as np
import pytest

import optaxlr
from optaxlr import cli

SMALL = ["--steps", "20", "--eval-every", "10", "--seeds", "2", "--lr", "1e-3,1e-2",
         "--wd", "0,1e-2", "--no-progress", "--batch-size", "32"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  out = tmp_path_factory.mktemp("sweep")
  assert cli.main(["sweep", *SMALL, "--out", str(out)]) == 0
  return out


def test_sweep_writes_results_heatmaps_and_summary(swept, capsys):
  for name in ("sweep_adam_l2.npz", "sweep_adamw.npz", "heatmaps.png", "atlas.png", "summary.json"):
    assert (swept / name).is_file(), name
  res = optaxlr.load(swept / "sweep_adamw.npz")
  assert res.num_configs == 4 and res.seeds.tolist() == [0, 1]
  assert sorted(np.unique(res.hparams["lr"]).tolist()) == [1e-3, 1e-2]
  rows = json.loads((swept / "summary.json").read_text())
  assert [r["optimizer"] for r in rows] == ["adam_l2", "adamw"]
  best = res.best("val/error")
  assert rows[1]["best"] == best["hparams"] and rows[1]["val"][0] == pytest.approx(best["val/error"])


def test_plot_and_diagnose_a_saved_result(swept, tmp_path, capsys):
  assert cli.main(["plot", str(swept / "sweep_adamw.npz"), "--out", str(tmp_path)]) == 0
  assert (tmp_path / "sweep_adamw_heatmap.png").is_file()
  assert (tmp_path / "sweep_adamw_curves.png").is_file()
  assert cli.main(["diagnose", str(swept / "sweep_adamw.npz")]) == 0
  assert cli.main(["diagnose", str(tmp_path / "missing.npz")]) == 1


def test_space_file_overrides_axes(tmp_path):
  space = tmp_path / "space.toml"
  space.write_text('lr = [3e-3]\nwd = "1e-4:1e-2:3"\n')
  out = tmp_path / "o"
  assert cli.main(["sweep", *SMALL, "--optimizers", "sgd_l2", "--space", str(space),
                   "--out", str(out)]) == 0
  res = optaxlr.load(out / "sweep_sgd_l2.npz")
  np.testing.assert_allclose(np.unique(res.hparams["wd"]), [1e-4, 1e-3, 1e-2])
  assert np.unique(res.hparams["lr"]).tolist() == [3e-3]


def test_lr_find_command(tmp_path, capsys):
  assert cli.main(["lr-find", "--steps", "30", "--seeds", "1", "--out", str(tmp_path)]) == 0
  assert (tmp_path / "lr_find.png").is_file()
  out = capsys.readouterr().out
  assert "valley" in out and "cyclic max" in out


def test_schedules_command(tmp_path, capsys):
  assert cli.main(["schedules", "--steps", "60", "--out", str(tmp_path)]) == 0
  assert (tmp_path / "schedules.png").is_file()
  assert "one_cycle" in capsys.readouterr().out


@pytest.mark.torch
def test_schedules_beside_pytorch(tmp_path, capsys):
  pytest.importorskip("torch")
  assert cli.main(["schedules", "--steps", "90", "--torch", "--out", str(tmp_path)]) == 0
  diffs = [float(line.rsplit("=", 1)[1]) for line in capsys.readouterr().out.splitlines()
           if "max |optaxlr - PyTorch|" in line]
  assert len(diffs) == 6 and max(diffs) < 1e-6, diffs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--optimizers", "adam,nope"], "--optimizers: unknown"),
        (["sweep", "--steps", "0"], "--steps must be >= 1"),
        (["sweep", "--lr", "0,1e-3"], "--lr values must be > 0"),
        (["sweep", "--lr", "abc"], "expected 'a,b,c'"),
        (["sweep", "--task", "mnist"], "invalid choice"),
        (["sweep", "--space", "/nonexistent.toml"], "no such file"),
        (["frobnicate"], "invalid choice"),
        (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "0 < min < max"),
    ],
)
def test_bad_usage_exits_2_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err
