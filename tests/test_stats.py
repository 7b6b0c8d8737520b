"""Honest winners (optaxlr.stats): calibration on synthetic per-seed values with a known truth,
the winner's fields on a tiny real sweep against an independent NumPy / scipy computation, and
re-scoring on fresh seeds against the winner's curse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats as st

import optaxlr
from optaxlr import search, stats

# ----------------------------------------------------------------------------------------
# Synthetic per-seed values with a known truth: v[s, c] = m[c] + u[s] + e[s, c], u a seed's
# effect shared by every config (common random numbers), e independent noise; both N(0, 1).


def _draws(rng, true_means, seeds):
  d, c = true_means.shape
  return (true_means[:, None, :] + rng.normal(size=(d, seeds, 1))
          + rng.normal(size=(d, seeds, c)))


def test_gap_interval_covers_the_true_gap():
  rng = np.random.default_rng(0)
  d, seeds = 600, 5
  covered = []
  for tau in (0.3, 1.0, 3.0):  # near ties, moderate, clear winners; 7 configs
    m = tau * rng.normal(size=(d, 7))
    out = stats.select(_draws(rng, m, seeds), draws=200)
    i = np.arange(d)
    gap = m[i, out["winner"]] - m[i, out["runner_up"]]  # the true gap of the SELECTED pair
    covered.append((out["gap_low"] <= gap) & (gap <= out["gap_high"]))
  rate = np.mean(covered, axis=1)
  assert np.all(rate >= 0.90), f"95% gap interval coverage {rate} (tau 0.3, 1, 3) below 0.90"


def test_winner_value_interval_and_paired_interval_coverage():
  # without selection, the intervals cover at their nominal rate (tested: 95% +- 2.5 points)
  rng = np.random.default_rng(1)
  v = _draws(rng, np.zeros((4000, 2)) + [0.0, 0.5], 5)
  m, lo, hi = stats.mean_interval(v[:, :, 1], axis=1)
  assert abs(np.mean((lo <= 0.5) & (0.5 <= hi)) - 0.95) < 0.025
  m, lo, hi = stats.paired_interval(v[:, :, 1], v[:, :, 0], axis=1)
  assert abs(np.mean((lo <= 0.5) & (0.5 <= hi)) - 0.95) < 0.025


def test_p_best_is_calibrated():
  rng = np.random.default_rng(2)
  d, seeds = 1200, 5
  tau = rng.choice([1.5, 2.0, 3.0], size=(d, 1))  # truths from clear to close, 7 configs
  m = tau * rng.normal(size=(d, 7))
  out = stats.select(_draws(rng, m, seeds), draws=1000)
  p = out["p_best"]
  truly = (m[np.arange(d), out["winner"]] == m.min(1)).astype(float)
  brier = float(np.mean((p - truly) ** 2))
  bins = np.digitize(p, [0.4, 0.6, 0.8, 0.95])
  table = [(float(p[bins == b].mean()), float(truly[bins == b].mean()), int((bins == b).sum()))
           for b in range(5) if (bins == b).sum() >= 40]
  msg = (f"Brier {brier:.3f}; mean p_best {p.mean():.3f} vs truly best {truly.mean():.3f};"
         f" bins (mean p, frequency, n): {table}")
  assert brier <= 0.15, msg
  assert abs(p.mean() - truly.mean()) <= 0.03, msg
  assert all(abs(a - b) <= 0.1 for a, b, _ in table), msg


def test_p_best_is_not_fooled_by_ties_where_a_plain_bootstrap_is():
  # 6 configs with the same true mean: each is best with probability 1/6. A plain bootstrap
  # over seeds (NumPy restatement) gives the selected winner far more; the posterior does not.
  rng = np.random.default_rng(3)
  d, seeds = 400, 5
  v = _draws(rng, np.zeros((d, 6)), seeds)
  ours = stats.select(v, draws=1000)["p_best"].mean()
  counts = rng.multinomial(seeds, [1 / seeds] * seeds, size=1000) / seeds  # (B, S)
  boot = np.einsum("bs,dsc->dbc", counts, v)
  w = v.mean(1).argmin(1)
  plain = (boot.argmin(2) == w[:, None]).mean(1).mean()
  msg = f"mean p_best with 6 tied configs: posterior {ours:.2f}, plain bootstrap {plain:.2f}"
  assert plain > 0.5 and ours < 0.4 and ours < plain - 0.15, msg + ", truth 1/6"


def test_p_best_with_two_configs_equals_the_normal_posterior():
  # Two configs: the posterior probability is Phi((mean_r - mean_w) / sqrt(var_w + var_r)),
  # computed here from the model's formulas with scipy (the code samples it by Monte Carlo).
  v = np.array([[1.0, 1.6], [1.8, 2.1], [1.3, 1.5], [1.1, 1.9], [1.6, 1.7]])
  c = v - v.mean(1, keepdims=True)
  x, s2 = c.mean(0), c.var(0, ddof=1) / 5
  tau2 = max(0.0, x.var(ddof=1) - s2.mean())
  b = tau2 / (tau2 + s2)
  pm, pv = x.mean() + b * (x - x.mean()), b * s2
  want = st.norm.cdf((pm[1] - pm[0]) / np.sqrt(pv.sum()))
  got = stats.p_best(v, draws=200_000)
  np.testing.assert_allclose(got, [want, 1 - want], atol=0.005)
  np.testing.assert_allclose(stats.p_best(-v, mode="max", draws=200_000), got, atol=0.005)


def test_p_best_edge_cases():
  v = np.array([[1.0, np.nan, 2.0], [1.5, 0.0, 2.5]])
  p = stats.p_best(v)
  assert p[1] == 0 and np.isclose(p.sum(), 1)
  assert np.isnan(stats.p_best(v[:1])[0]) and stats.p_best(v[:1])[1] == 0  # one seed
  assert stats.p_best(v[:, :1]).tolist() == [1.0]
  with pytest.raises(ValueError, match="p_best: mode must be 'min' or 'max', got mode='low'"):
    stats.p_best(v, mode="low")
  with pytest.raises(ValueError, match="p_best: draws must be an int >= 1, got draws=0"):
    stats.p_best(v, draws=0)
  with pytest.raises(ValueError, match=r"select: every config has a NaN"):
    stats.select(np.full((3, 2), np.nan))
  with pytest.raises(ValueError, match=r"mean_interval: confidence must be in \(0, 1\), got"
                                       r" confidence=95"):
    stats.mean_interval([1.0, 2.0], 95)


# ----------------------------------------------------------------------------------------
# A tiny real sweep, checked against NumPy / scipy


@pytest.fixture(scope="module")
def task():
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=32)


def _opt(h):
  return optaxlr.adamw(h["lr"], weight_decay=h["wd"])


@pytest.fixture(scope="module")
def swept(task):
  space = search.grid(lr=[3e-3, 1e-2, 3e-2, 1e-1], wd=[0.0, 1e-3, 1e-2])
  return optaxlr.sweep(task, _opt, space, steps=30, batch_size=16, seeds=4, eval_every=15, execution=optaxlr.Execution(progress=False))


def _t_interval(x, conf=0.95):
  return st.t.interval(conf, len(x) - 1, loc=np.mean(x), scale=st.sem(x))


def test_winner_of_a_real_sweep_matches_numpy_and_scipy(swept):
  v = swept.metrics["val/loss"][:, :, -1].astype(np.float64)
  test = swept.metrics["test/loss"][:, :, -1].astype(np.float64)
  means = v.mean(0)
  w, r = np.argsort(means)[:2]
  lr, wd = swept.hparams["lr"], swept.hparams["wd"]
  win = swept.winner("val/loss", confidence=0.9)
  assert win.index == w and win.runner_up_index == r
  assert win.config == {"lr": lr[w], "wd": wd[w]} and win.runner_up == {"lr": lr[r], "wd": wd[r]}
  np.testing.assert_allclose(win.value, means[w], rtol=1e-6)
  np.testing.assert_allclose(win.interval, _t_interval(v[:, w], 0.9), rtol=1e-6)
  d = v[:, w] - v[:, r]
  np.testing.assert_allclose(win.gap, d.mean(), rtol=1e-6)
  np.testing.assert_allclose(win.gap_interval, _t_interval(d, 0.9), rtol=1e-6)
  assert win.report.metric == "test/loss"
  np.testing.assert_allclose(win.report.value, test[:, w].mean(), rtol=1e-6)
  np.testing.assert_allclose(win.report.interval, _t_interval(test[:, w], 0.9), rtol=1e-6)
  # indistinguishable: the lower bound of c - winner's paired interval is not above 0
  ind = {c for c in range(v.shape[1])
         if c == w or not _t_interval(v[:, c] - v[:, w], 0.9)[0] > 0}
  assert set(win.indistinguishable_index) == ind and win.indistinguishable_index[0] == w
  assert win.indistinguishable[0] == win.config
  assert 0 < win.p_best <= 1 and win.seeds == 4 and win.confidence == 0.9
  # edges: lr has 4 values (flagged at its ends), wd has 3 with a smallest of 0 (never "min")
  lrs, wds = np.unique(lr), np.unique(wd)
  assert win.on_edge == {
      "lr": "max" if lr[w] == lrs[-1] else "min" if lr[w] == lrs[0] else None,
      "wd": "max" if wd[w] == wds[-1] else None}
  # sensitivity: the mean over neighbours of the worsening per factor of 2 (log-spaced axes)
  want = {}
  for name, col, other in (("lr", lr, wd), ("wd", wd, lr)):
    vals = np.unique(col)
    k = int(np.flatnonzero(vals == col[w])[0])
    slopes = []
    for j in (k - 1, k + 1):
      if 0 <= j < len(vals) and vals[j] > 0 and col[w] > 0:
        c = int(np.flatnonzero((col == vals[j]) & (other == other[w]))[0])
        slopes.append((means[c] - means[w]) / abs(np.log2(vals[j] / col[w])))
    want[name] = np.mean(slopes) if slopes else np.nan
  np.testing.assert_allclose([win.sensitivity["lr"], win.sensitivity["wd"]],
                             [want["lr"], want["wd"]], rtol=1e-5)
  assert "p_best" in win.summary() and "gap to runner-up" in win.summary()


def test_compare_two_configs_and_two_results_of_the_same_seeds(swept):
  v = swept.metrics["val/loss"][:, :, -1].astype(np.float64)
  a, b = {"lr": 1e-2, "wd": 0.0}, 0
  ia = swept.index_of(a)
  diff = swept.compare(a, b, "val/loss")
  np.testing.assert_allclose(diff.value, (v[:, ia] - v[:, 0]).mean(), rtol=1e-6)
  np.testing.assert_allclose(diff.interval, _t_interval(v[:, ia] - v[:, 0]), rtol=1e-6)
  np.testing.assert_allclose(diff.p_value, st.ttest_rel(v[:, ia], v[:, 0]).pvalue, rtol=1e-6)
  assert diff.a == {"lr": 1e-2, "wd": 0.0} and diff.seeds == 4
  assert diff.distinguishable == (diff.interval[0] > 0 or diff.interval[1] < 0)
  # another result of the same seeds (here the same runs with other numbers: its configs
  # reversed and doubled); b is one of ITS configs
  other = dataclasses.replace(swept, metrics={"val/loss": 2 * swept.metrics["val/loss"][:, ::-1]})
  diff = swept.compare(a, {"lr": 1e-1, "wd": 1e-2}, "val/loss", other=other)
  ib = swept.index_of({"lr": 1e-1, "wd": 1e-2})
  u = 2 * v[:, ::-1][:, ib]
  np.testing.assert_allclose(diff.value, (v[:, ia] - u).mean(), rtol=1e-6)
  np.testing.assert_allclose(diff.interval, _t_interval(v[:, ia] - u), rtol=1e-6)
  fewer = dataclasses.replace(other, seeds=np.asarray(other.seeds) + 1)
  with pytest.raises(ValueError, match=r"compare: the two results must have the same seed values"
                                       r" in the same order \(paired over seeds\), got \[0, 1, 2,"
                                       r" 3\] and \[1, 2, 3, 4\]"):
    swept.compare(a, 0, "val/loss", other=fewer)


def test_winner_report_and_errors(swept):
  assert swept.winner("val/loss", report=None).report is None
  assert swept.winner("val/loss", report="val").report.metric == "val/loss"
  with pytest.raises(KeyError, match="winner: report metric 'train/loss' is not in the result"):
    swept.winner("val/loss", report="train")
  with pytest.raises(KeyError, match="no metric 'val/nope'"):
    swept.winner("val/nope")
  with pytest.raises(ValueError, match=r"winner: confidence must be in \(0, 1\), got"
                                       r" confidence=1.5"):
    swept.winner("val/loss", confidence=1.5)


# ----------------------------------------------------------------------------------------
# Re-scoring on fresh seeds


def test_rescore_trains_the_top_configs_on_fresh_seeds_as_a_plain_sweep(task, swept):
  rs = swept.rescore(task, _opt, metric="val/loss", top=2, seeds=[7, 9], execution=optaxlr.Execution(progress=False))
  means = swept.metrics["val/loss"][:, :, -1].mean(0)
  top = np.argsort(means)[:2]
  assert rs.indices == tuple(top) and rs.seeds == (7, 9)
  assert rs.configs == tuple(swept.config(int(i)) for i in top)
  # the fresh numbers are those of an independent sweep of the two configs on seeds 7 and 9
  ref = optaxlr.sweep(task, _opt, search.zip(lr=swept.hparams["lr"][top],
                                             wd=swept.hparams["wd"][top]),
                      steps=30, batch_size=16, seeds=[7, 9], eval_every=15, execution=optaxlr.Execution(progress=False))
  np.testing.assert_allclose(rs.fresh, ref.metrics["val/loss"][:, :, -1].mean(0), rtol=1e-6)
  np.testing.assert_allclose(rs.selected, means[top], rtol=1e-6)
  assert rs.value == rs.fresh[0]
  with pytest.raises(ValueError, match=r"rescore: seeds must be fresh \(not used by the result,"
                                       r" \[0, 1, 2, 3\]\), got \[3\] again"):
    swept.rescore(task, _opt, metric="val/loss", seeds=[3, 4])
  with pytest.raises(ValueError, match="rescore: top must be an int >= 1, got top=0"):
    swept.rescore(task, _opt, metric="val/loss", top=0)


def _fake_sweep(true_means):
  """A stand-in for optaxlr.sweep: per-seed values m[c] + u[seed] + e[seed, c] from known
  true means, the noise a function of the seed value (fresh seeds, fresh noise)."""

  def sweep(task, optimizer, space, *, seeds, steps=1, **kwargs):
    del task, optimizer, kwargs
    cols = space.columns
    c_idx = np.asarray(cols["c"]).astype(int)
    vals = []
    for s in seeds:
      g = np.random.default_rng(10_000 + int(s))
      e = g.normal(size=len(true_means))
      vals.append(true_means[c_idx] + g.normal() + e[c_idx])
    v = np.asarray(vals)[:, :, None]
    n_s, n_c = v.shape[:2]
    return optaxlr.SweepResult(
        space=space, seeds=np.asarray(seeds), batch_loss=np.zeros((n_s, n_c, 1)),
        metrics={"val/error": v}, eval_steps=np.asarray([steps]),
        diverged_at=np.full((n_s, n_c), -1), stopped_at=np.full((n_s, n_c), -1),
        info={"steps": steps})

  return sweep


def test_rescore_removes_the_winners_curse(monkeypatch):
  # 8 configs, two of them truly best and tied; 5 seeds per sweep, 300 sweeps on disjoint
  # seeds. The selected winner's mean is optimistic against its true mean; its mean on the
  # fresh seeds of rescore is not (mean error within 3 standard errors of 0).
  m = np.array([0.0, 0.0, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0])
  fake = _fake_sweep(m)
  monkeypatch.setattr(optaxlr, "sweep", fake)
  sel, fresh = [], []
  for k in range(300):
    res = fake(None, None, search.grid(c=np.arange(8)), seeds=list(range(5 * k, 5 * k + 5)))
    rs = stats.rescore(res, None, None, top=2, seeds=[100_000 + 2 * k, 100_001 + 2 * k,
                                                    200_000 + k, 300_000 + k, 400_000 + k])
    truth = m[rs.indices[0]]
    sel.append(rs.selected[0] - truth)
    fresh.append(rs.value - truth)
  sel, fresh = np.asarray(sel), np.asarray(fresh)
  se_sel, se_fresh = st.sem(sel), st.sem(fresh)
  msg = (f"selected - true: {sel.mean():+.3f} +- {se_sel:.3f}; rescored - true:"
         f" {fresh.mean():+.3f} +- {se_fresh:.3f}")
  assert sel.mean() < -5 * se_sel, msg  # optimistic (lower error than true)
  assert abs(fresh.mean()) < 3 * se_fresh, msg


def test_select_maximises_accuracy_and_handles_one_config_and_diverged_runs():
  acc = np.array([[0.90, 0.95, 0.93], [0.915, 0.96, np.nan], [0.89, 0.94, 0.97]])
  out = stats.select(acc, mode="max")
  assert int(out["winner"]) == 1 and int(out["runner_up"]) == 0  # config 2 has a diverged seed
  d = acc[:, 1] - acc[:, 0]
  np.testing.assert_allclose([out["gap_low"], out["gap_high"]], _t_interval(d), rtol=1e-9)
  assert out["indistinguishable"].tolist() == [False, True, False]
  assert out["p_all"][2] == 0
  one = stats.select(acc[:, :1], mode="max")
  assert int(one["runner_up"]) == -1 and np.isnan(one["gap"]) and one["p_best"] == 1.0
