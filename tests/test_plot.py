"""Every figure renders from a real (tiny) sweep; the PNGs are written for a person to look at."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import optaxlr
from optaxlr import plot, schedules, search


@pytest.fixture(scope="module")
def result():
  task = optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)
  space = search.grid(lr=[1e-3, 1e-2, 1e-1, 1e4], wd=[0.0, 1e-2])
  return optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"], weight_decay=h["wd"]), space,
                       steps=40, batch_size=16, seeds=2, eval_every=10, progress=False)


def test_figures_render(result, tmp_path):
  assert result.diverged[:, result.hparams["lr"] == 1e4].all()
  figs = {
      "schedules": plot.schedules({"cosine": schedules.cosine(0.1, 50),
                                   "one_cycle": schedules.one_cycle(0.1, 50)}, 50),
      "heatmap": plot.heatmap(result, "lr", "wd", "val/loss"),
      "curves": plot.curves(result, "val/loss", [0, 2]),
      "batch_curves": plot.curves(result, "batch_loss", [0, 2], log=True),
      "atlas": plot.atlas(optaxlr.diagnose(result), "lr", "wd"),
  }
  for name, fig in figs.items():
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 5000, name
  # The heatmap marks diverged cells with "div" and outlines the best cell.
  texts = [t.get_text() for t in figs["heatmap"].axes[0].texts]
  assert texts.count("div") == 2
  legend = [t.get_text() for t in figs["atlas"].axes[0].get_legend().get_texts()]
  assert "diverged" in legend


def test_heatmap_bad_name(result):
  with pytest.raises(ValueError, match="no hyperparameter 'momentum'"):
    plot.heatmap(result, "lr", "momentum", "val/loss")
  with pytest.raises(ValueError, match="no hyperparameter 'b1'"):
    plot.atlas(optaxlr.diagnose(result), "b1", "wd")
  assert np.isnan(result.final("val/loss")[:, 6:]).all()
