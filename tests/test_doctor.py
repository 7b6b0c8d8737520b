"""diagnose(): labels of REAL short runs (a diverging, an exploding, a not-learning, an
underfitting and a healthy rate on digits; an overfitting and an overconfident net on the
noisy sinusoid) and of synthetic curves for the rest; evidence vs a plain NumPy restatement
of the documented formulas; vectorised over runs == one run at a time; tables and errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import search, tasks
from optaxlr.doctor import (
    ADVICE,
    LABELS,
    Diagnosis,
    DoctorThresholds,
    diagnose,
    format_table,
)

T = 200
t = np.arange(T, dtype=np.float64)
_rng = np.random.default_rng(0)


def noisy(curve, rel=0.03, rng=_rng):
  return curve * (1 + rel * rng.standard_normal(curve.shape))


CURVES = {
    "healthy": noisy(2.3 * np.exp(-t / 30) + 0.02),
    "not_learning": noisy(np.full(T, 2.3), 0.02),
    "underfitting": noisy(2.3 * (1 - 0.3 * t / T), 0.01),
    "plateaued": noisy(2.3 * (0.4 + 0.6 * np.exp(-t / 15)), 0.01),
    "oscillating": 2.3 * (0.3 + 0.7 * np.exp(-t / 40)) * np.random.default_rng(1).lognormal(
        0.0, 1.2, T),
    "exploding": noisy(2.3 * 10 ** (4 * t / T)),
}


# ----------------------------------------------------------------------------------------
# Real runs.


@pytest.fixture(scope="module")
def digits_sweep():
  task = tasks.digits(n=300, hidden=(32,))
  return optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]),
                       search.grid(lr=[1e-7, 1e-3, 0.1, 1.0, 1e3]), steps=200, batch_size=8,
                       eval_every=20, progress=False)


def test_real_runs_on_digits(digits_sweep):
  d = diagnose(digits_sweep)
  assert d.labels.shape == (1, 5)
  assert d.labels[0].tolist() == ["not_learning", "underfitting", "healthy", "exploding",
                                  "diverged"]
  # Evidence behind them.
  ev = {k: v[0] for k, v in d.evidence.items()}
  np.testing.assert_array_equal(ev["diverged_at"], digits_sweep.diverged_at[0])
  assert ev["diverged_at"][4] >= 0 and (ev["diverged_at"][:4] == -1).all()
  assert abs(ev["improvement"][0]) < 0.05  # lr = 1e-7: flat
  assert ev["recent_improvement"][1] > 0.01 and ev["remaining"][1] > 0.5  # lr = 1e-3: slow
  assert ev["remaining"][2] < 0.1  # lr = 0.1 learns
  assert ev["peak_ratio"][3] > 1e3  # lr = 1: the loss grows by orders of magnitude
  np.testing.assert_array_equal(d.hparams["lr"], [1e-7, 1e-3, 0.1, 1.0, 1e3])


def test_real_overfitting_and_overconfidence_on_noisy_sinusoid():
  # 30 training points, 20% flipped labels, a 32x32 MLP trained full-batch with Adam: the
  # validation loss rises after ~20 steps; at lr=1e-3 the validation accuracy rises with it
  # (overconfident), at lr=1e-2 it falls (overfitting).
  task = tasks.sinusoid(n_train=30, n_val=200, label_noise=0.2, hidden=(32, 32))
  res = optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), search.grid(lr=[1e-3, 1e-2]),
                      steps=300, batch_size=30, eval_every=20, progress=False)
  d = diagnose(res)
  assert d.labels[0].tolist() == ["overconfident", "overfitting"]
  ev = {k: v[0] for k, v in d.evidence.items()}
  assert (ev["val_rise"] > 0.3).all()
  assert ev["val_acc_change"][0] > 0.02 and ev["val_acc_change"][1] < -0.02
  assert (ev["train_fall_after_val_best"] > 0.5).all()
  # With a higher bar for "rising", neither is flagged.
  d2 = diagnose(res, val_rise=100.0)
  assert not d2.flags["overfitting"].any() and not d2.flags["overconfident"].any()


# ----------------------------------------------------------------------------------------
# Synthetic curves.


@pytest.mark.parametrize("label", list(CURVES))
def test_synthetic_train_curves(label):
  d = diagnose(CURVES[label])
  assert d.labels.shape == (1, 1)
  assert d.labels[0, 0] == label, d.explain(0, 0)


def test_loss_that_ends_higher_is_oscillating():
  d = diagnose(noisy(2.3 * (1 + t / T), 0.01))  # doubles, far from exploding
  assert d.labels[0, 0] == "oscillating"
  assert d.evidence["improvement"][0, 0] < -0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_loss_is_diverged_at_its_step(bad):
  x = CURVES["healthy"].copy()
  x[57:] = bad
  d = diagnose(x)
  assert d.labels[0, 0] == "diverged"
  assert d.evidence["diverged_at"][0, 0] == 57
  # The evidence describes the run before it diverged.
  assert d.evidence["remaining"][0, 0] < 0.3


def test_diverged_outranks_exploding_and_both_are_flagged():
  x = CURVES["exploding"].copy()
  x[150:] = np.nan
  d = diagnose(x)
  assert d.labels[0, 0] == "diverged"
  assert d.flags["exploding"][0, 0] and d.flags["diverged"][0, 0]
  assert "also: exploding" in d.explain(0, 0)


def test_early_stopped_run_is_not_diverged():
  x = CURVES["healthy"].copy()
  x[120:] = np.nan
  d = diagnose(x, stopped_at=[[120]])
  assert d.labels[0, 0] == "healthy" and d.evidence["diverged_at"][0, 0] == -1
  assert diagnose(x).labels[0, 0] == "diverged"  # without it, trailing NaN is divergence


def _val_curves(kind):
  e = np.arange(10)
  loss = 1.0 - 0.5 * e / 4
  loss = np.where(e <= 4, loss, 0.5 + 0.15 * (e - 4))  # best at the 5th evaluation, then up
  acc = 0.7 + 0.15 * np.minimum(e, 4) / 4
  if kind == "overconfident":
    acc = acc + 0.02 * np.maximum(e - 4, 0)
  else:
    acc = acc - 0.02 * np.maximum(e - 4, 0)
  return loss, acc


@pytest.mark.parametrize("kind", ["overfitting", "overconfident"])
def test_synthetic_val_curves(kind):
  loss, acc = _val_curves(kind)
  d = diagnose(CURVES["healthy"], val_loss=loss, val_accuracy=acc)
  assert d.labels[0, 0] == kind
  ev = {k: v[0, 0] for k, v in d.evidence.items()}
  assert ev["val_rise"] == pytest.approx((1.25 - 0.5) / 0.5)
  assert ev["val_best_step"] == 100  # evaluations every T / 10 = 20 steps: the 5th after 100
  assert ev["val_acc_change"] == pytest.approx(0.1 if kind == "overconfident" else -0.1)
  # Without accuracy, a rising validation loss with a falling training loss is overfitting.
  assert diagnose(CURVES["healthy"], val_loss=loss).labels[0, 0] == "overfitting"


# ----------------------------------------------------------------------------------------
# Evidence vs a restatement; vectorised vs one by one.


def restated_evidence(x, thr=DoctorThresholds()):
  """The module docstring's formulas, written out for one finite curve."""
  n = len(x)
  w = max(1, int(np.floor(thr.window * n)))
  l0 = x[:w].mean()
  l_end = x[n - w:].mean()
  m = min(n, max(w, int(np.round((1 - thr.recent_fraction) * n))))
  l_mid = x[m - w:m].mean()
  peak = max(x[i - w:i].mean() for i in range(w, n + 1))
  second = x[n // 2:]
  noise = np.sqrt(np.mean(np.diff(second) ** 2) / 2) / second.mean()
  return {"improvement": (l0 - l_end) / l0, "recent_improvement": (l_mid - l_end) / l_mid,
          "remaining": l_end / l0, "peak_ratio": peak / l0, "noise_ratio": noise}


@pytest.mark.parametrize("label", ["healthy", "underfitting", "oscillating"])
def test_evidence_matches_restated_formulas(label):
  x = CURVES[label][:157]  # an odd length: window and half rounding matter
  d = diagnose(x)
  for k, v in restated_evidence(x).items():
    assert d.evidence[k][0, 0] == pytest.approx(v, rel=1e-10), k


def test_vectorised_over_runs_equals_one_run_at_a_time():
  rng = np.random.default_rng(3)
  s, c = 3, 40
  kinds = list(CURVES)
  train = np.stack([CURVES[kinds[i % len(kinds)]] * rng.uniform(0.5, 2.0)
                    for i in range(s * c)]).reshape(s, c, T)
  cut = rng.integers(10, 3 * T, size=(s, c))  # about a third diverge somewhere
  train = np.where(np.arange(T) < cut[..., None], train, np.nan)
  val = np.stack([_val_curves("overfitting" if i % 3 else "overconfident")[0]
                  * rng.uniform(0.8, 1.2, 10) for i in range(s * c)]).reshape(s, c, 10)
  acc = np.stack([_val_curves("overfitting" if i % 3 else "overconfident")[1]
                  for i in range(s * c)]).reshape(s, c, 10)
  d = diagnose(train, val_loss=val, val_accuracy=acc)
  assert d.labels.shape == (s, c)
  assert len(set(d.labels.ravel())) >= 5
  for i in range(s):
    for j in range(c):
      one = diagnose(train[i, j], val_loss=val[i, j], val_accuracy=acc[i, j])
      assert one.labels[0, 0] == d.labels[i, j]
      for k, v in d.evidence.items():
        np.testing.assert_allclose(one.evidence[k][0, 0], v[i, j], rtol=1e-12, equal_nan=True)


def test_a_thousand_configs_is_fast():
  rng = np.random.default_rng(4)
  x = np.exp(-t / rng.uniform(5, 500, size=(1000, 1))) * rng.lognormal(0, 0.1, (1000, T))
  d = diagnose(x)
  assert d.labels.shape == (1, 1000) and sum(d.counts().values()) == 1000


# ----------------------------------------------------------------------------------------
# Output.


def test_tables_and_pandas(digits_sweep):
  d = diagnose(digits_sweep)
  table = format_table(d)
  assert table == d.summary_table()
  lines = table.splitlines()
  assert lines[0] == ("5 runs (1 seed x 5 configs): 1 diverged, 1 exploding, 1 not_learning, "
                      "1 underfitting, 1 healthy")
  for label in ("diverged", "exploding", "not_learning", "underfitting", "healthy"):
    assert any(line.startswith(label) and ADVICE[label] in line for line in lines)
  # Config rows, problems first, with the hyperparameter.
  rows = lines[lines.index("configs (label of most seeds; problems first):") + 2:]
  assert [r.split()[0] for r in rows] == ["4", "3", "0", "1", "2"]
  assert rows[0].split()[1] == "1000" and "diverged at step" in rows[0]
  assert "more configs" in format_table(d, max_rows=2).splitlines()[-1]

  df = d.to_pandas()
  assert len(df) == 5 and {"config", "seed", "lr", "label", "advice", "noise_ratio",
                           "is_overfitting"} <= set(df.columns)
  assert df.set_index("config").loc[4, "label"] == "diverged"
  assert d.counts() == {k: int(k in ("diverged", "exploding", "not_learning", "underfitting",
                                     "healthy")) for k in LABELS}
  labels, agree = d.by_config()
  assert labels.tolist() == d.labels[0].tolist() and (agree == 1).all()
  assert d.advice[0, 4] == ADVICE["diverged"]


def test_by_config_takes_the_majority_of_seeds():
  x = np.stack([CURVES["healthy"], CURVES["healthy"], CURVES["not_learning"]])[:, None]
  d = diagnose(x)
  assert d.shape == (3, 1)
  labels, agree = d.by_config()
  assert labels.tolist() == ["healthy"] and agree.tolist() == [2]
  assert "2/3" in d.summary_table()


# ----------------------------------------------------------------------------------------
# Thresholds and errors.


def test_thresholds_are_named_and_change_the_verdict():
  x = CURVES["underfitting"]
  assert diagnose(x).labels[0, 0] == "underfitting"
  assert diagnose(x, underfit_remaining=0.9).labels[0, 0] == "healthy"
  thr = DoctorThresholds(not_learning_improvement=0.5)
  assert diagnose(x, thresholds=thr).labels[0, 0] == "not_learning"
  assert diagnose(x, thresholds=thr).thresholds is thr
  assert {f.name for f in dataclasses.fields(DoctorThresholds)} >= {
      "window", "explode_ratio", "oscillation_noise", "not_learning_improvement",
      "plateau_improvement", "underfit_remaining", "converged_remaining", "val_rise",
      "acc_rise"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0.0), r"DoctorThresholds: window must be in \(0.0, 0.5\], got window=0.0"),
    (dict(explode_ratio=1.0),
     r"DoctorThresholds: explode_ratio must be > 1, got explode_ratio=1.0"),
    (dict(oscillation_noise=-1.0), r"DoctorThresholds: oscillation_noise must be > 0"),
    (dict(recent_fraction=1.0), r"DoctorThresholds: recent_fraction must be in \(0.0, 1.0\)"),
    (dict(val_rise=-0.1), r"DoctorThresholds: val_rise must be >= 0, got val_rise=-0.1"),
])
def test_bad_thresholds_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    DoctorThresholds(**kwargs)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"diagnose: unknown threshold\(s\) \['patience'\]"):
    diagnose(CURVES["healthy"], patience=3)
  with pytest.raises(ValueError, match=r"diagnose: train loss must have shape \(T,\), "
                                       r"\(runs, T\) or \(seeds, configs, T\)"):
    diagnose(np.zeros((1, 1, 1, T)))
  with pytest.raises(ValueError, match=r"diagnose: the training curves need at least 4 steps"):
    diagnose(np.ones(3))
  with pytest.raises(ValueError, match=r"diagnose: val_loss must have leading shape \(1, 2\)"):
    diagnose(np.ones((2, T)), val_loss=np.ones((3, 10)))
  with pytest.raises(ValueError, match=r"diagnose: eval_steps must have shape \(10,\)"):
    diagnose(np.ones(T), val_loss=np.ones(10), eval_steps=[1, 2])
  with pytest.raises(ValueError, match=r"diagnose: stopped_at must have shape \(1, 2\)"):
    diagnose(np.ones((2, T)), stopped_at=[1, 2, 3])
  with pytest.raises(TypeError, match=r"diagnose: thresholds must be a DoctorThresholds"):
    diagnose(np.ones(T), thresholds={"window": 0.1})


def test_diagnosis_is_a_plain_dataclass():
  d = diagnose(CURVES["healthy"])
  assert isinstance(d, Diagnosis)
  assert set(d.flags) == set(LABELS) and d.flags["healthy"][0, 0]
