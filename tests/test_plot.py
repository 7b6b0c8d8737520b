"""Figures drawn from real (tiny) sweeps, checked for what they show: titles, tick labels,
cell values against the result's numbers, which configs and marks are drawn, and the data of
the plotted lines. The PNGs are written too, for a person to look at."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.collections
import matplotlib.colors
import matplotlib.text
import matplotlib.pyplot as plt
import numpy as np
import pytest

import optaxlr
from optaxlr import plot, schedules, search
from optaxlr.doctor import LABELS
from optaxlr.plot import _LABEL_COLORS, _tick_labels


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  plt.close("all")


@pytest.fixture(scope="module")
def task():
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)


@pytest.fixture(scope="module")
def result(task):
  # lr x wd x momentum: the lr x wd figures average over the momentum axis and the seeds.
  space = search.grid(lr=[1e-3, 1e-2, 1e-1, 1e4], wd=[0.0, 1e-2], m=[0.0, 0.9])
  return optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"], momentum=h["m"], weight_decay=h["wd"]),
                       space, steps=40, batch_size=16, seeds=2, eval_every=10, execution=optaxlr.Execution(progress=False))


def _texts(ax):
  return [t.get_text() for t in ax.texts]


def _cell_text(ax, j, i):
  (text,) = [t.get_text() for t in ax.texts if t.get_position() == (j, i)]
  return text


def _by_hand(result, x, y, metric, where=None):
  """Cell (i, j) -> (mean over seeds and the configs sharing its x and y, any diverged)."""
  hp, vals = result.hparams, result.final(metric)
  keep = np.ones(result.num_configs, bool)
  for k, v in (where or {}).items():
    keep &= hp[k] == v
  xs, ys = sorted(set(hp[x][keep])), sorted(set(hp[y][keep]))
  out = {}
  for i, yv in enumerate(ys):
    for j, xv in enumerate(xs):
      sel = keep & (hp[x] == xv) & (hp[y] == yv)
      out[i, j] = (float(vals[:, sel].mean()), bool(result.diverged[:, sel].any()), sel)
  return xs, ys, out


# ----------------------------------------------------------------------------------------
# Tick labels.


def test_tick_labels_tell_every_grid_value_apart():
  grid = search.logspace(1e-4, 1e-1, 10)
  labels = _tick_labels(grid)
  assert labels[:4] == ["1e-4", "2.15e-4", "4.64e-4", "1e-3"]
  assert "4.64e-3" in labels and "5e-03" not in labels
  assert len(set(labels)) == len(labels)
  np.testing.assert_allclose([float(s) for s in labels], grid, rtol=5e-3)
  assert _tick_labels([1e-4, 3e-4, 1e-3, 3e-3]) == ["1e-4", "3e-4", "1e-3", "3e-3"]
  assert _tick_labels([0.0, 1e-5, 1e-3, 0.1]) == ["0", "1e-5", "0.001", "0.1"]
  assert _tick_labels([0.0, 0.25, 0.5]) == ["0", "0.25", "0.5"]
  # Values that agree to three digits still get different labels.
  assert _tick_labels([1.0, 1.001, 1.002]) == ["1", "1.001", "1.002"]


# ----------------------------------------------------------------------------------------
# Heatmap and atlas: the same runs in every cell.


def test_heatmap_cells_are_means_over_seeds_and_the_other_axes(result, tmp_path):
  fig = plot.heatmap(result, "lr", "wd", "val/loss")
  fig.savefig(tmp_path / "heatmap.png")
  ax = fig.axes[0]
  assert ax.get_title().startswith("val/loss (final), mean over 2 seeds and m (2 values); red:"
                                   " best; dots: indistinguishable from it (95% paired t,")
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-3", "1e-2", "1e-1", "1e4"]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.01"]
  xs, ys, cells = _by_hand(result, "lr", "wd", "val/loss")
  for (i, j), (mean, div, _) in cells.items():
    assert _cell_text(ax, j, i) == ("div" if div else f"{mean:.3g}")
  assert _texts(ax).count("div") == 2  # lr = 1e4 diverges, for both weight decays
  # The image holds the same numbers; the best cell is outlined in red.
  img = ax.images[0].get_array()
  for (i, j), (mean, div, _) in cells.items():
    if div:
      assert np.ma.is_masked(img[i, j]) or np.isnan(img[i, j])
    else:
      assert img[i, j] == pytest.approx(mean)
  means = {k: v[0] for k, v in cells.items() if not v[1]}
  bi, bj = min(means, key=means.get)
  (outline,) = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
  assert outline.get_xy() == (bj - 0.5, bi - 0.5)


def test_heatmap_dots_the_cells_indistinguishable_from_the_best(result, tmp_path):
  """The dotted cells are those whose paired t-interval (scipy) with the best cell, over the
  seeds, does not show them worse; each seed's cell value is the mean over its configs."""
  import scipy.stats as st

  _, _, cells = _by_hand(result, "lr", "wd", "val/loss")
  vals = result.final("val/loss").astype(np.float64)
  per_seed = {k: vals[:, sel].mean(1) for k, (_, div, sel) in cells.items() if not div}
  best = min(per_seed, key=lambda k: per_seed[k].mean())
  want = set()
  for k, v in per_seed.items():
    d = v - per_seed[best]
    if k != best and not st.t.interval(0.8, len(d) - 1, loc=d.mean(), scale=st.sem(d))[0] > 0:
      want.add(k)
  fig = plot.heatmap(result, "lr", "wd", "val/loss", confidence=0.8)
  fig.savefig(tmp_path / "heatmap_dots.png")
  ax = fig.axes[0]
  (dots,) = ax.collections
  got = {(round(y - 0.3), round(x + 0.33)) for x, y in dots.get_offsets()}
  assert got == want and best not in got
  assert f"(80% paired t, {len(want)} cells)" in ax.get_title()
  # one seed: nothing can be told apart, nothing is dotted and the title says nothing of it
  first = dataclasses.replace(
      result, seeds=result.seeds[:1], batch_loss=result.batch_loss[:1],
      metrics={k: v[:1] for k, v in result.metrics.items()}, diverged_at=result.diverged_at[:1],
      stopped_at=result.stopped_at[:1], stop_reason=result.stop_reason[:1])
  one = plot.heatmap(first, "lr", "wd", "val/loss")
  assert not one.axes[0].collections and "dots" not in one.axes[0].get_title()
  none = plot.heatmap(result, "lr", "wd", "val/loss", indistinguishable=False)
  assert not none.axes[0].collections and "dots" not in none.axes[0].get_title()


def test_heatmap_where_fixes_an_axis_and_says_so(result):
  fig = plot.heatmap(result, "lr", "wd", "val/loss", where={"m": 0.9}, title="SGD")
  ax = fig.axes[0]
  assert ax.get_title().startswith("SGD\nval/loss (final), mean over 2 seeds; m=0.9; red: best")
  _, _, cells = _by_hand(result, "lr", "wd", "val/loss", where={"m": 0.9})
  for (i, j), (mean, div, sel) in cells.items():
    assert sel.sum() == 1
    assert _cell_text(ax, j, i) == ("div" if div else f"{mean:.3g}")


def test_atlas_pools_the_same_runs_as_the_heatmap(result, tmp_path):
  d = optaxlr.diagnose(result)
  fig = plot.atlas(d, "lr", "wd")
  fig.savefig(tmp_path / "atlas.png")
  ax = fig.axes[0]
  assert ax.get_title() == ("most frequent diagnosis over 2 seeds and m (2 values) "
                            "(runs agreeing)")
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-3", "1e-2", "1e-1", "1e4"]
  _, _, cells = _by_hand(result, "lr", "wd", "val/loss")
  seen = set()
  for (i, j), (_, _, sel) in cells.items():
    runs = d.labels[:, sel].ravel()  # 2 seeds x 2 momenta
    counts = [int((runs == k).sum()) for k in LABELS]
    label = LABELS[int(np.argmax(counts))]
    seen.add(label)
    assert _cell_text(ax, j, i) == f"{max(counts)}/4"
    (cell,) = [p for p in ax.patches if p.get_xy() == (j - 0.5, i - 0.5)]
    assert matplotlib.colors.to_hex(cell.get_facecolor()) == _LABEL_COLORS[label]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert set(legend) == seen and "diverged" in legend
  assert plot.atlas(d, "lr", "wd", where={"m": 0.0}).axes[0].get_title().endswith(
      "over 2 seeds; m=0 (runs agreeing)")


def test_side_by_side_heatmaps_keep_the_title_inside_the_figure(result, tmp_path):
  # One optimizer, a long title: optaxlr sweep's heatmaps.png had it clipped on both sides.
  long = ("teacher_student: val/loss over learning rate x weight decay (cosine schedule, "
          "600 steps, mean of 5 seeds)")
  fig = plot.heatmaps({"SGD (torch SGD weight_decay)": result}, "lr", "wd", "val/loss",
                      suptitle=long)
  fig.savefig(tmp_path / "heatmaps.png", dpi=110)
  fig.canvas.draw()
  box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
  assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
  assert fig._suptitle._get_wrapped_text().replace("\n", " ") == long
  assert fig.axes[0].get_title().startswith("SGD (torch SGD weight_decay)\nval/loss")
  # Panels share one colour range: the lowest and highest cell of all of them.
  _, _, cells = _by_hand(result, "lr", "wd", "val/loss")
  means = [mean for mean, div, _ in cells.values() if not div]
  clims = [ax.images[0].get_clim() for ax in fig.axes if ax.images]
  assert clims == [pytest.approx((min(means), max(means)))]
  fig2 = plot.heatmaps({"a": result, "b": result}, "lr", "wd", "val/loss", vmin=0.0, vmax=2.0)
  assert [ax.images[0].get_clim() for ax in fig2.axes if ax.images] == [(0.0, 2.0)] * 2
  fig3 = plot.atlases({"SGD": optaxlr.diagnose(result)}, "lr", "wd", suptitle=long)
  assert fig3.axes[0].get_title().startswith("SGD\nmost frequent diagnosis")


# ----------------------------------------------------------------------------------------
# Curves.


def test_curves_draw_the_best_configs_by_default(result, tmp_path):
  fig = plot.curves(result, "val/loss", best=3)
  fig.savefig(tmp_path / "curves.png")
  ax = fig.axes[0]
  final = result.final("val/loss").mean(axis=0)
  final = np.where(result.diverged.any(axis=0), np.inf, final)
  best = np.argsort(final, kind="stable")[:3]
  assert ax.get_title() == ("val/loss: best 3 of 16 configs by final value (mean over 2 seeds, "
                            "band: min-max)")
  assert len(ax.lines) == 3
  for line, c in zip(ax.lines, best):
    np.testing.assert_allclose(line.get_xdata(), result.eval_steps)
    np.testing.assert_allclose(line.get_ydata(), result.metrics["val/loss"][:, c].mean(axis=0),
                               rtol=1e-6)
    cfg = result.config(int(c))
    assert line.get_label() == f"lr={cfg['lr']:.3g}, wd={cfg['wd']:.3g}, m={cfg['m']:.3g}"
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [l.get_label() for l in ax.lines]
  # Explicit configs, the per-step loss: x is the step, y the mean over seeds.
  fig = plot.curves(result, "batch_loss", [0, 2], log=True, label_by=["lr"])
  ax = fig.axes[0]
  assert [l.get_label() for l in ax.lines] == ["lr=0.001", "lr=0.001"]
  np.testing.assert_allclose(ax.lines[1].get_ydata(), result.batch_loss[:, 2].mean(axis=0),
                             rtol=1e-6)
  assert ax.get_yscale() == "log" and ax.get_title() == "batch_loss: mean over 2 seeds, band: min-max"


def test_schedules_plot_draws_the_schedule_values():
  scheds = {"cosine": schedules.cosine(0.1, 50), "one_cycle": schedules.one_cycle(0.1, 50)}
  fig = plot.schedules(scheds, 50)
  ax = fig.axes[0]
  assert [l.get_label() for l in ax.lines] == ["cosine", "one_cycle"]
  for line, s in zip(ax.lines, scheds.values()):
    np.testing.assert_allclose(line.get_ydata(), np.asarray(s(np.arange(51))), rtol=1e-6)


# ----------------------------------------------------------------------------------------
# LR range test figures.


def _vertical_lines(ax):
  """The x of every vertical line drawn over the axes (``vlines``)."""
  lines = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
  return sorted(seg[0, 0] for c in lines for seg in c.get_segments())


@pytest.fixture(scope="module")
def finder(task):
  space = search.grid(wd=[0.0, 1e-2])
  return optaxlr.lr_find(task, lambda h: optaxlr.sgd(h["lr"], weight_decay=h["wd"]), space,
                         min_lr=1e-4, max_lr=100.0, steps=60, seeds=2, batch_size=16)


def test_lr_find_plot_marks_the_recommended_rate_and_names_everything(finder, tmp_path):
  fig = finder.plot()
  fig.savefig(tmp_path / "lr_find.png")
  ax = fig.axes[0]
  valley = finder.suggest()["steep"]  # the recommended rate (suggest()["recommended"])
  assert np.array_equal(valley, finder.suggest()["recommended"], equal_nan=True)
  mean = finder.mean_curve()
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[:2] == [f"wd=0: steep {valley[0]:.3g}", f"wd=0.01: steep {valley[1]:.3g}"]
  assert legend[2:] == ["smoothed loss, mean over 2 seeds", "min-max over seeds",
                        "raw loss (faint)", "valley", "steep", "minimum", "recommended: steep"]
  # The bold lines are the smoothed means; the recommended rate is a vertical line per config.
  bold = [l for l in ax.lines if l.get_linewidth() == 2]
  for c, line in enumerate(bold):
    np.testing.assert_allclose(line.get_ydata(), mean[c], equal_nan=True)
  np.testing.assert_allclose(_vertical_lines(ax), sorted(valley))
  # Nothing runs off the y range: the faint raw lines stay within the limits.
  lo, hi = ax.get_ylim()
  faint = [l for l in ax.lines if l.get_alpha() == 0.3]
  assert len(faint) == 2
  for line in faint:
    y = np.asarray(line.get_ydata(), float)
    assert np.isfinite(y).any() and (y[np.isfinite(y)] >= lo).all() and (y[np.isfinite(y)] <= hi).all()
  assert ax.get_title().startswith("LR range test, exp rates: train loss")
  # No recommendation, no raw line: neither is drawn nor in the legend.
  ax = finder.plot(raw=False, recommend=None, suggestions=("steep",)).axes[0]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == ["wd=0", "wd=0.01", "smoothed loss, mean over 2 seeds", "min-max over seeds",
                    "steep"]
  with pytest.raises(ValueError, match=r"LRFindResult.plot: suggestions and recommend must be "
                                       r"among .*, got 'best'"):
    finder.plot(recommend="best")


def test_lr_grid_plot_draws_the_final_losses_and_marks(task, tmp_path):
  lrs = np.logspace(-3, -1, 3)  # none diverges (lr_find_grid warns on an all-NaN tail)
  grid = optaxlr.lr_find_grid(task, lambda h: optaxlr.sgd(h["lr"], weight_decay=h["wd"]),
                              search.grid(wd=[0.0, 1e-2]), lrs=lrs, steps=20, seeds=2,
                              batch_size=16)
  fig = grid.plot()
  fig.savefig(tmp_path / "lr_grid.png")
  ax = fig.axes[0]
  best = grid.suggest()["best"]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[:2] == [f"wd=0: best {best[0]:.3g}", f"wd=0.01: best {best[1]:.3g}"]
  assert "recommended: best" in legend and "largest_falling" in legend
  assert ("diverged" in legend) == bool(grid.diverged.any())
  mean = grid.mean_final()
  curves = [l for l in ax.lines if l.get_marker() == "o" and len(l.get_xdata()) == len(lrs)]
  for c, line in enumerate(curves):
    np.testing.assert_allclose(line.get_ydata(), np.where(np.isfinite(mean[:, c]), mean[:, c],
                                                          np.nan), equal_nan=True)
  np.testing.assert_allclose(_vertical_lines(ax), sorted(best))


# ----------------------------------------------------------------------------------------
# Errors.


def test_bad_names_raise(result):
  with pytest.raises(ValueError, match=r"heatmap: no hyperparameter 'momentum'; available: "
                                       r"\['lr', 'm', 'wd'\]"):
    plot.heatmap(result, "lr", "momentum", "val/loss")
  with pytest.raises(ValueError, match="atlas: no hyperparameter 'b1'"):
    plot.atlas(optaxlr.diagnose(result), "b1", "wd")
  with pytest.raises(ValueError, match=r"heatmap: no config has where=\{'m': 0.5\}"):
    plot.heatmap(result, "lr", "wd", "val/loss", where={"m": 0.5})


# ----------------------------------------------------------------------------------------
# Adaptive search: successive halving rungs, PBT lineages.


def _gid(ax, gid):
  return [l for l in ax.lines if l.get_gid() == gid]


def test_rungs_draw_every_config_up_to_its_rung(task, tmp_path):
  lrs = [3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.6, 1.0, 2.0, 1e-3]
  res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), search.zip(lr=lrs), steps=36,
                      batch_size=16, seeds=2, eval_every=4, 
                      adapt=optaxlr.adapt.successive_halving("val/loss", eta=3, min_steps=4), execution=optaxlr.Execution(progress=False))
  fig = plot.rungs(res)
  fig.savefig(tmp_path / "rungs.png", dpi=110)
  ax = fig.axes[0]
  rep = res.info["adapt"]
  stopped = {c: r["step"] for r in rep["rungs"] for c in r["stopped"]}
  assert sorted(stopped.values()) == [4] * 6 + [12] * 2
  lines = _gid(ax, "config")
  assert len(lines) == 9
  mean = res.metrics["val/loss"].mean(axis=0)
  for c, line in enumerate(lines):
    end = stopped.get(c, 36)
    keep = res.eval_steps <= end
    np.testing.assert_allclose(line.get_xdata(), res.eval_steps[keep])
    np.testing.assert_allclose(line.get_ydata(), mean[c][keep], rtol=1e-6)
    if c in stopped:  # a cross where it stopped
      assert line.get_marker() == "x" and list(line.get_markevery()) == [keep.sum() - 1]
    else:
      assert line.get_linewidth() > 2 and line.get_label() == f"lr={lrs[c]:.3g} (to the end)"
  assert sorted(l.get_xdata()[0] for l in _gid(ax, "rung")) == [4, 12]
  (top,) = ax.child_axes  # the rungs' axis: how many of the configs that reached them were kept
  assert [t.get_text() for t in top.get_xticklabels()] == ["kept 3/9", "kept 1/3"]
  np.testing.assert_allclose(top.get_xticks(), [4, 12])
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[:2] == ["stopped at step 4 (6 configs)", "stopped at step 12 (2 configs)"]
  assert ax.get_xlabel() == "step" and ax.get_ylabel() == "val/loss"
  share = rep["config_steps"] / rep["full_config_steps"]
  assert ax.get_title() == (f"successive_halving on val/loss (eta=3): 9 configs, 1 trained to the "
                            f"end\nval/loss, mean over 2 seeds; {share:.0%} of the steps of "
                            f"training all to the end")
  # The y range shows the configs that passed the first rung; those that blew up before it
  # leave the axes, and the note says so.
  passed = [c for c in range(9) if stopped.get(c, 36) > 4]
  won = [mean[c, list(res.eval_steps).index(r["step"])] for r in rep["rungs"] for c in r["kept"]]
  lo, hi = np.nanmin(mean), max(won)  # the worst value a rung kept
  assert ax.get_ylim()[1] == pytest.approx(2 * hi - lo)
  far = [c for c in range(9) if np.nanmax(mean[c]) > 2 * hi - lo]
  assert far and set(far).isdisjoint(passed)
  assert f"{len(far)} configs above the axis (up to {np.nanmax(mean):.3g})" in _texts(ax)
  ax = plot.rungs(res, log=True).axes[0]
  assert ax.get_yscale() == "log" and not _texts(ax)


def test_lineage_draws_each_slots_values_and_the_copies(task, tmp_path):
  space = search.zip(lr=[1e-3, 1e-2, 3e-2, 0.1, 0.3, 1e-4, 3e-3, 0.05])
  p = optaxlr.adapt.pbt("val/loss", interval=8, quantile=0.25, perturb={"lr": (0.5, 2.0)}, seed=3)
  res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), space, steps=40, batch_size=16,
                      eval_every=8, adapt=p, execution=optaxlr.Execution(progress=False))
  fig = plot.lineage(res, "lr")
  fig.savefig(tmp_path / "lineage.png", dpi=110)
  ax = fig.axes[0]
  exploits = res.info["adapt"]["exploits"]
  assert exploits and {e["step"] for e in exploits} <= {8, 16, 24, 32}
  # One circle per exploit, at the step, on the value the copy explores; one arrow each.
  (marks,) = [c for c in ax.collections if c.get_gid() == "exploit"]
  np.testing.assert_allclose(marks.get_offsets(), [(e["step"], e["hparams"]["lr"]) for e in exploits])
  # Each slot's line ends on the value the engine trained it with last.
  slots = _gid(ax, "slot")
  assert len(slots) == 8
  final = res.info["hparams_final"]["lr"]
  for c, line in enumerate(slots):
    assert line.get_drawstyle() == "steps-post"
    assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 40
    assert line.get_ydata()[0] == space[c]["lr"]
    np.testing.assert_allclose(line.get_ydata()[-1], final[c], rtol=1e-6)
  # An arrow per exploit: from the source's line just before the step to the new value.
  arrows = [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)]
  assert len(arrows) == len(exploits)
  for a, e in zip(arrows, exploits):
    xs, ys = slots[e["src"]].get_xdata(), slots[e["src"]].get_ydata()
    before = ys[np.searchsorted(xs, e["step"]) - 1]  # the source's value before the exploit
    assert a.xy == (e["step"], e["hparams"]["lr"])
    assert a.xyann == (pytest.approx(e["step"] - 1.2), before)
  # The best slot's lineage is the trajectory PBT.schedule replays.
  best = res.best("val/loss", warn=False)["index"]  # PBT moves the rates: edges are expected
  (lin,) = _gid(ax, "best_lineage")
  bounds, values, _ = p.schedule(best, "lr")
  np.testing.assert_allclose(lin.get_xdata(), [0, *bounds, 40])
  np.testing.assert_allclose(lin.get_ydata(), [*values, values[-1]])
  assert ax.get_yscale() == "log" and ax.get_ylabel() == "lr"
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[-2:] == [f"exploits ({len(exploits)}): circle = new value, arrow from the source",
                         f"lineage of the best slot ({best})"]


def test_adaptive_plots_need_their_strategy(result):
  with pytest.raises(ValueError, match=r"rungs: result must come from optaxlr.sweep\(\.\.\., "
                                       r"adapt=optaxlr.adapt.successive_halving\(\.\.\.\) or "
                                       r"hyperband\(\.\.\.\)\), got a result whose info\['adapt'\] "
                                       r"strategy is None"):
    plot.rungs(result)
  with pytest.raises(ValueError, match=r"lineage: result must come from .*adapt.pbt"):
    plot.lineage(result, "lr")


# ----------------------------------------------------------------------------------------
# Categorical (string) axes.


def test_categorical_axes_are_labelled_by_their_strings(task, tmp_path):
  space = search.grid(opt=["sgd", "momentum"], lr=[1e-3, 1e-2, 1e-1], wd=[0.0, 1e-3])
  momentum = {"sgd": 0.0, "momentum": 0.9}
  res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"], weight_decay=h["wd"],
                                                  momentum=search.switch(h["opt"], momentum)),
                      space, steps=20, batch_size=16, eval_every=10, execution=optaxlr.Execution(progress=False))
  fig = plot.heatmap(res, "lr", "opt", "val/loss")
  fig.savefig(tmp_path / "heatmap_categorical.png")
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd", "momentum"]  # the space's order
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-3", "1e-2", "1e-1"]
  assert ax.get_title() == "val/loss (final), mean over 1 seed and wd (2 values)"
  final = res.final("val/loss")[0].reshape(2, 3, 2).mean(axis=-1)  # (opt, lr), mean over wd
  for i in range(2):
    for j in range(3):
      assert _cell_text(ax, j, i) == f"{final[i, j]:.3g}"
  # The categorical axis on x, in the atlas, fixed by where=, in a legend.
  ax = plot.heatmap(res, "opt", "lr", "val/loss").axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["sgd", "momentum"]
  ax = plot.atlas(optaxlr.diagnose(res), "opt", "lr").axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["sgd", "momentum"]
  ax = plot.heatmap(res, "lr", "wd", "val/loss", where={"opt": "momentum"}).axes[0]
  assert ax.get_title() == "val/loss (final), mean over 1 seed; opt=momentum"
  assert _cell_text(ax, 0, 0) == f"{res.final('val/loss')[0, 6]:.3g}"  # momentum, 1e-3, wd 0
  with pytest.raises(ValueError, match=r"heatmap: no config has where=\{'opt': 'adam'\}"):
    plot.heatmap(res, "lr", "wd", "val/loss", where={"opt": "adam"})
  ax = plot.curves(res, "val/loss", [0, 8], label_by=["opt", "lr"]).axes[0]
  assert [l.get_label() for l in ax.lines] == ["opt=sgd, lr=0.001", "opt=momentum, lr=0.01"]
