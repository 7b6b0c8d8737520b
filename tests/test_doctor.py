"""diagnose(): labels of REAL short runs (a diverging, an exploding, a not-learning, a too
slow and a healthy rate on digits; an overfitting and an overconfident net on the noisy
sinusoid; a one-cycle run whose loss spikes and recovers; out-of-range labels) and of
synthetic curves for the rest; the comparison with the sweep's best and the update/weight
ratio rule on hand-built results; evidence vs a plain NumPy restatement of the documented
formulas; vectorised over runs == one run at a time; tables and errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import schedules, search, tasks
from optaxlr.doctor import (
    ADVICE,
    LABELS,
    Diagnosis,
    DoctorThresholds,
    diagnose,
    format_table,
    with_train_eval,
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
                       eval_every=20, execution=optaxlr.Execution(progress=False))


def test_real_runs_on_digits(digits_sweep):
  d = diagnose(digits_sweep)
  assert d.labels.shape == (1, 5)
  assert d.labels[0].tolist() == ["not_learning", "too_slow", "healthy", "exploding",
                                  "diverged"]
  # Evidence behind them.
  ev = {k: v[0] for k, v in d.evidence.items()}
  np.testing.assert_array_equal(ev["diverged_at"], digits_sweep.diverged_at[0])
  assert ev["diverged_at"][4] >= 0 and (ev["diverged_at"][:4] == -1).all()
  assert abs(ev["improvement"][0]) < 0.05  # lr = 1e-7: flat
  assert ev["recent_improvement"][1] > 0.01  # lr = 1e-3: still improving...
  # ...but far behind the best (lr = 0.1) at the same step: its validation error against the
  # best config's, both read from the result.
  err = digits_sweep.final("val/error")[0]
  assert ev["score"][1] == pytest.approx(err[1]) and ev["best_score"][1] == pytest.approx(err[2])
  assert ev["behind_ratio"][1] == pytest.approx(err[1] / err[2]) and ev["behind_ratio"][1] > 2
  assert ev["remaining"][2] < 0.1 and ev["behind_ratio"][2] == 1.0  # lr = 0.1 is the best
  # lr = 1: the loss grows by orders of magnitude and ends there, far above its minimum.
  assert ev["peak_ratio"][3] > 1e3 and ev["end_over_min"][3] > 1e3
  np.testing.assert_array_equal(d.hparams["lr"], [1e-7, 1e-3, 0.1, 1.0, 1e3])
  # The sweep records ||update|| / ||params|| at every evaluation: the evidence is its largest
  # value over the run, growing with the rate.
  ratio = digits_sweep.metrics["train/update_ratio"][0]
  np.testing.assert_allclose(ev["update_ratio"][:4], np.nanmax(ratio[:4], axis=-1), rtol=1e-6)
  assert (np.diff(ev["update_ratio"][:4]) > 0).all() and ev["update_ratio"][0] < 1e-4
  assert not d.notes


def test_real_one_cycle_spike_that_recovers_is_not_exploding():
  # Notebook 04's one-cycle run (SGD + momentum 0.9, peak rate 0.62 from the range test): as
  # the rate rises the loss climbs two orders of magnitude above its start, then falls below
  # its earlier minimum as the rate anneals, ending at a few percent error.
  task = tasks.digits(hidden=(64,))
  res = optaxlr.sweep(task, lambda h: optax.sgd(schedules.one_cycle(h["lr"], 300), momentum=0.9),
                      search.grid(lr=[0.62]), steps=300, batch_size=64, eval_every=30, execution=optaxlr.Execution(progress=False))
  d = diagnose(res)
  ev = {k: v[0, 0] for k, v in d.evidence.items()}
  assert ev["peak_ratio"] > d.thresholds.explode_ratio  # the old rule called it exploding
  assert ev["end_over_min"] < 3  # it ends near its running minimum: recovered
  assert res.final("val/error")[0, 0] < 0.06
  assert not d.flags["exploding"][0, 0] and d.labels[0, 0] != "exploding", d.explain(0, 0)


def test_out_of_range_labels_are_a_data_error_not_the_learning_rate():
  # A custom loss (Task.validate checks the labels of the built-in "cross_entropy" against the
  # model's outputs, not those of a callable it cannot read): label 3 with 3 outputs makes the
  # cross-entropy NaN at step 0, before any update.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  y = rng.integers(0, 3, 32).astype(np.int32)
  y[7] = 3

  def init(key):
    return {"w": 0.1 * jax.random.normal(key, (5, 3)), "b": jnp.zeros(3)}

  def ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  task = tasks.Task.from_functions("bad labels", init, lambda p, x: x @ p["w"] + p["b"][None],
                                   ce, train={"x": x, "y": y}, eval={"val": {"x": x, "y": y}})
  res = optaxlr.sweep(task, lambda h: optax.sgd(h["lr"]), search.grid(lr=[1e-4, 1e-2, 1.0]),
                      steps=4, batch_size=32, eval_every=2, execution=optaxlr.Execution(progress=False))
  assert (res.diverged_at == 0).all() and np.isnan(res.batch_loss[..., 0]).all()
  d = diagnose(res)
  assert d.labels.tolist() == [["data_error"] * 3]
  assert d.flags["diverged"].all()  # it did diverge; the label names the cause
  assert "labels outside [0, num_classes)" in d.advice[0, 0]
  assert any("non-finite loss before any update" in n for n in d.notes)
  # The same when a run's first recorded loss is finite but every rate diverges at step 0
  # (a NaN gradient): no learning rate is to blame.
  loss = np.where(np.arange(T) < 1, 2.3, np.nan) * np.ones((1, 3, T))
  d = diagnose(loss, diverged_at=np.zeros((1, 3), int))
  assert d.labels.tolist() == [["data_error"] * 3]
  assert any("every run diverged at step 0" in n for n in d.notes)
  # One rate diverging at step 0 while others learn is the rate's fault.
  loss[0, 1:] = CURVES["healthy"]
  assert diagnose(loss, diverged_at=[[0, -1, -1]]).labels.tolist() == [
      ["diverged", "healthy", "healthy"]]


def test_real_overfitting_and_overconfidence_on_noisy_sinusoid():
  # 30 training points, 20% flipped labels, a 32x32 MLP trained full-batch with Adam: the
  # validation loss rises after ~20 steps; at lr=1e-3 the validation accuracy rises with it
  # (overconfident), at lr=1e-2 it falls (overfitting).
  # The training points are also evaluated as a split ("train_eval"): in evaluation mode the
  # model does as well on them as the training loss says (no train/eval-mode gap), so the
  # high validation loss is overfitting indeed.
  task = with_train_eval(tasks.sinusoid(n_train=30, n_val=200, label_noise=0.2,
                                        hidden=(32, 32)), n=30)
  res = optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), search.grid(lr=[1e-3, 1e-2]),
                      steps=300, batch_size=30, eval_every=20, execution=optaxlr.Execution(progress=False))
  d = diagnose(res)
  assert d.labels[0].tolist() == ["overconfident", "overfitting"]
  ev = {k: v[0] for k, v in d.evidence.items()}
  assert (ev["eval_gap"] < 1.5).all() and not d.flags["train_eval_gap"].any()
  # Full batch, no BatchNorm or Dropout: the subset in evaluation mode (the whole training
  # set, after the last update) and the last training loss (before it) nearly agree.
  np.testing.assert_allclose(res.metrics["train_eval/loss"][0, :, -1], res.batch_loss[0, :, -1],
                             rtol=0.1)
  assert (ev["val_rise"] > 0.3).all()
  assert ev["val_acc_change"][0] > 0.02 and ev["val_acc_change"][1] < -0.02
  assert (ev["train_fall_after_val_best"] > 0.5).all()
  # With a higher bar for "rising", neither is flagged.
  d2 = diagnose(res, val_rise=100.0)
  assert not d2.flags["overfitting"].any() and not d2.flags["overconfident"].any()


def _bn_cnn_task():
  """Raw digits (pixels 0..16, not normalised) and a conv + BatchNorm net whose running
  statistics move slowly (momentum 0.999): after 40 steps they are still near their initial
  (0, 1), far from the activations' real statistics. A training subset evaluated in
  evaluation mode is the "train_eval" split."""
  from flax import nnx
  from sklearn.datasets import load_digits

  data = load_digits()
  x = data.images.astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  idx = np.random.default_rng(0).permutation(len(y))
  tr, va = idx[:1200], idx[1200:1500]

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(8, momentum=0.999, rngs=rngs)
      self.head = nnx.Linear(8 * 64, 10, rngs=rngs)

    def __call__(self, x):
      h = jax.nn.relu(self.bn(self.conv(x)))
      return self.head(h.reshape(h.shape[0], -1))

  task = tasks.Task.from_flax_nnx("bn-cnn", Net, train={"x": x[tr], "y": y[tr]},
                                  eval={"val": {"x": x[va], "y": y[va]}})
  return with_train_eval(task, n=256)


def test_real_batchnorm_train_eval_gap_is_not_overfitting():
  task = _bn_cnn_task()
  res = optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), search.grid(lr=[3e-3, 1e-2]),
                      steps=40, batch_size=8, eval_every=10, execution=optaxlr.Execution(progress=False))
  d = diagnose(res)
  assert d.labels[0].tolist() == ["train_eval_gap", "train_eval_gap"]
  assert "it is not overfitting" in ADVICE["train_eval_gap"]  # its own advice
  # The evidence, restated: the subset's loss in evaluation mode at the last evaluation over
  # the mean training loss of the last window (10% of 40 steps).
  te, bl = res.metrics["train_eval/loss"][0, :, -1], res.batch_loss[0, :, -4:].mean(-1)
  np.testing.assert_allclose(d.evidence["eval_gap"][0], te / bl, rtol=1e-6)
  assert (te / bl > 2).all() and (te - bl > 0.1).all()
  # The model fails in evaluation mode on its own training examples about as much as on new
  # ones: no train/validation gap to speak of, so not overfitting.
  err_tr, err_val = res.metrics["train_eval/error"][0, :, -1], res.metrics["val/error"][0, :, -1]
  assert (np.abs(err_tr - err_val) < 0.05).all()
  # Without the training subset the same runs read as overfitting / overconfidence (the old
  # verdict), with a note that says what would tell them apart.
  blind = diagnose(res, train_eval_metric="absent/loss")
  assert set(blind.labels[0]) <= {"overfitting", "overconfident"}
  assert any("train/eval-mode gap" in n for n in blind.notes)


def test_real_undertrained_sweep_says_train_longer():
  """Adam on digits for 40 steps: the best rate still gains ~20% of its validation error over
  the last quarter. The same sweep over 200 steps has converged: its best run is healthy."""
  task = tasks.digits(n=600, hidden=(32,))
  space = search.grid(lr=[3e-4, 1e-3, 3e-3])

  def run(steps):
    return optaxlr.sweep(task, lambda h: optax.adam(h["lr"]), space, steps=steps,
                         batch_size=16, eval_every=10, sync_every=40, execution=optaxlr.Execution(progress=False))

  short, long = run(40), run(200)
  d = diagnose(short)
  assert d.labels[0, 2] == "undertrained"  # the best rate: its curves alone look fine
  assert set(d.labels[0]) <= {"undertrained", "too_slow", "underfitting"}
  assert "train longer" in ADVICE["undertrained"].lower()
  assert any("under-trained" in n for n in d.notes)
  # Restated: the best config's val/error at step 30 (the last evaluation at or before 75% of
  # the steps) against step 40.
  err = short.metrics["val/error"][0]
  best = int(np.argmin(err[:, -1]))
  assert best == 2
  want = (err[best, 2] - err[best, 3]) / err[best, 2]
  np.testing.assert_allclose(d.evidence["best_recent_improvement"][0, 0], want, rtol=1e-6)
  assert want > 0.05
  d_long = diagnose(long)
  assert d_long.labels[0, 2] == "healthy" and not d_long.flags["undertrained"].any()


def test_behind_best_at_1_9_times_the_best_error():
  """A run at 1.9x the best config's error (5.7% vs 3%) is behind the best, not healthy; one
  at 1.2x is not far behind. The training curves have converged (nothing else to flag)."""
  curves = np.stack([2.3 * np.exp(-t / 8) + 0.02] * 3)
  err = np.stack([np.full(10, 0.03), np.full(10, 0.057), np.full(10, 0.036)])
  d = diagnose(curves, val_loss=err)
  assert d.labels[0].tolist() == ["healthy", "behind_best", "healthy"]
  np.testing.assert_allclose(d.evidence["behind_ratio"][0], [1.0, 1.9, 1.2])


# ----------------------------------------------------------------------------------------
# Synthetic curves.


@pytest.mark.parametrize("label", list(CURVES))
def test_synthetic_train_curves(label):
  d = diagnose(CURVES[label])
  assert d.labels.shape == (1, 1)
  assert d.labels[0, 0] == label, d.explain(0, 0)


def test_a_spike_that_recovers_is_not_exploding():
  # A schedule that raises the rate on purpose (one_cycle, cyclic) can push the loss far above
  # its start; if it comes back down, that is not an explosion.
  base = 2.3 * np.exp(-t / 30) + 0.02
  bump = (t >= 80) & (t < 120)
  recovers = noisy(np.where(bump, 2.3 * 50, base), 0.01)
  stays = noisy(np.where(t >= 80, 2.3 * 50, base), 0.01)
  d = diagnose(np.stack([recovers, stays]))
  assert d.labels[0].tolist()[1] == "exploding" and not d.flags["exploding"][0, 0]
  assert (d.evidence["peak_ratio"][0] > 40).all()  # both rose 50-fold
  ev = restated_evidence(recovers)
  assert d.evidence["end_over_min"][0, 0] == pytest.approx(ev["end_over_min"], rel=1e-10)
  assert d.evidence["end_over_min"][0, 0] < 2 and d.evidence["end_over_min"][0, 1] > 100


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
  levels = [x[i - w:i].mean() for i in range(w, n + 1)]
  second = x[n // 2:]
  noise = np.sqrt(np.mean(np.diff(second) ** 2) / 2) / second.mean()
  return {"improvement": (l0 - l_end) / l0, "recent_improvement": (l_mid - l_end) / l_mid,
          "remaining": l_end / l0, "peak_ratio": max(levels) / l0,
          "end_over_min": l_end / max(min(levels), thr.explode_floor * l0),
          "noise_ratio": noise}


@pytest.mark.parametrize("label", ["healthy", "underfitting", "oscillating", "exploding"])
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
                  * rng.uniform(0.8, 1.2, 10) * rng.choice([1.0, 4.0])  # some far behind
                  for i in range(s * c)]).reshape(s, c, 10)
  acc = np.stack([_val_curves("overfitting" if i % 3 else "overconfident")[1]
                  for i in range(s * c)]).reshape(s, c, 10)
  d = diagnose(train, val_loss=val, val_accuracy=acc)
  assert d.labels.shape == (s, c)
  assert len(set(d.labels.ravel())) >= 5
  assert d.flags["far_behind"].any() and not d.flags["far_behind"].all()
  # These need the other runs (the best config's score and its late improvement).
  compared = {"score", "best_score", "behind_ratio", "best_recent_improvement"}
  for i in range(s):
    for j in range(c):
      one = diagnose(train[i, j], val_loss=val[i, j], val_accuracy=acc[i, j])
      # Alone, a run is its own best; in the sweep, a run far behind gets a label for it, and
      # whether the sweep is under-trained is read from its best config.
      if not (d.flags["far_behind"][i, j] or d.flags["undertrained"][i, j]
              or one.flags["undertrained"][0, 0]):
        assert one.labels[0, 0] == d.labels[i, j]
      for k, v in d.evidence.items():
        if k not in compared:
          np.testing.assert_allclose(one.evidence[k][0, 0], v[i, j], rtol=1e-12, equal_nan=True)
      alone = one.evidence["behind_ratio"][0, 0]
      assert alone == 1.0 or np.isnan(one.evidence["score"][0, 0])


def _hand_result(batch_loss, metrics, *, eval_steps, diverged_at=None, stopped_at=None,
                 info=None):
  """A SweepResult built by hand, as the engine would return it (seeds x configs over lr)."""
  n_s, n_c, _ = batch_loss.shape
  minus = np.full((n_s, n_c), -1)
  return optaxlr.SweepResult(
      space=search.grid(lr=np.logspace(-4, -1, n_c)), seeds=np.arange(n_s),
      batch_loss=np.asarray(batch_loss), metrics={k: np.asarray(v) for k, v in metrics.items()},
      eval_steps=np.asarray(eval_steps),
      diverged_at=minus if diverged_at is None else np.asarray(diverged_at),
      stopped_at=minus if stopped_at is None else np.asarray(stopped_at),
      info=dict(info or {}))


def test_comparison_with_the_best_at_the_same_budget():
  # 2 seeds x 3 configs, 5 evaluations. Seed 1 of config 2 diverges at step 90 (its metrics
  # are NaN from there); seed 0 of config 1 was stopped early at step 120.
  rng = np.random.default_rng(5)
  steps_e = np.array([40, 80, 120, 160, 200])
  err = rng.uniform(0.02, 0.3, size=(2, 3, 5))
  err[1, 2, 2:] = np.nan
  loss = np.broadcast_to(CURVES["healthy"], (2, 3, T)).copy()
  loss[1, 2, 90:] = np.nan
  diverged = np.array([[-1, -1, -1], [-1, -1, 90]])
  stopped = np.array([[-1, 120, -1], [-1, -1, 90]])
  res = _hand_result(loss, {"val/error": err, "val/loss": err * 10}, eval_steps=steps_e,
                     diverged_at=diverged, stopped_at=stopped)
  d = diagnose(res)
  mean = err.mean(axis=0)  # (C, E): NaN for config 2 once a seed diverged
  for (i, j), last in {(0, 0): 4, (1, 0): 4, (0, 1): 2, (1, 1): 4, (0, 2): 4, (1, 2): 1}.items():
    best = np.nanmin(mean[:, last])
    assert d.evidence["score"][i, j] == err[i, j, last]
    assert d.evidence["best_score"][i, j] == pytest.approx(best, rel=1e-12)
    far = err[i, j, last] > 2 * best and err[i, j, last] - best > 0.01
    assert d.flags["far_behind"][i, j] == far
  assert d.flags["far_behind"].any()
  # The score is val/error when present (it is what the sweep is judged on), else val/loss.
  res.metrics.pop("val/error")
  np.testing.assert_allclose(diagnose(res).evidence["score"], d.evidence["score"] * 10)
  # Tiny scores are not "far apart": 0.3% against 0.1% is three times, but within the margin.
  curves = np.stack([CURVES["healthy"]] * 2)
  d = diagnose(curves, val_loss=np.ones((2, 10)), score=np.array([[0.001] * 10, [0.003] * 10]))
  assert d.evidence["behind_ratio"][0].tolist() == pytest.approx([1.0, 3.0])
  assert not d.flags["far_behind"].any()
  assert diagnose(curves, val_loss=np.ones((2, 10)), score=np.array([[0.001] * 10, [0.003] * 10]),
                  behind_margin=0.0).flags["far_behind"][0].tolist() == [False, True]


def test_update_ratio_rule_of_thumb():
  # ||update|| / ||params|| near 1e-3 is the rule of thumb; far below: slow; far above:
  # unstable. Configs: 0 the best (ratio 1e-3); 1 close to the best but still falling with
  # tiny updates; 2 far behind with huge updates; 3 converged with tiny updates (fine);
  # 4 diverges at step 100 (its ratios after it do not count).
  steps_e = np.arange(20, T + 1, 20)
  loss = np.stack([CURVES["healthy"], CURVES["underfitting"], CURVES["healthy"],
                   CURVES["healthy"], CURVES["healthy"]])[None]
  loss[0, 4, 100:] = np.nan
  err = np.array([0.03, 0.035, 0.15, 0.03, 0.03])[None, :, None] * np.ones(10)
  ratio = np.array([1e-3, 3e-5, 5e-2, 3e-5, 1e-3])[None, :, None] * np.linspace(1, 0.1, 10)
  ratio[0, 4, 5:] = 1.0
  metrics = {"val/error": err, "val/loss": 10 * err, "train/update_ratio": ratio}
  res = _hand_result(loss, metrics, eval_steps=steps_e, diverged_at=[[-1, -1, -1, -1, 100]])
  d = diagnose(res)
  np.testing.assert_allclose(d.evidence["update_ratio"][0], [1e-3, 3e-5, 5e-2, 3e-5, 1e-3])
  assert d.labels[0].tolist() == ["healthy", "too_slow", "oscillating", "healthy", "diverged"]
  assert d.flags["slow_updates"][0].tolist() == [False, True, False, True, False]
  assert d.flags["large_updates"][0].tolist() == [False, False, True, False, False]
  assert not any("update/weight ratio" in n for n in d.notes)
  assert "update ratio 3.0e-05 (rule of thumb ~1e-3)" in d.explain(0, 1)
  # An old result without the metric: the rule is skipped, and the diagnosis says so.
  del res.metrics["train/update_ratio"]
  old = diagnose(res)
  assert old.labels[0].tolist() == ["healthy", "underfitting", "too_slow", "healthy", "diverged"]
  assert np.isnan(old.evidence["update_ratio"]).all()
  assert any("'train/update_ratio'" in n and "skipped" in n for n in old.notes)
  assert "note: update/weight ratio rule (~1e-3) skipped" in format_table(old)
  # Thresholds are named: with a lower bar for "slow", config 1 is only underfitting.
  assert diagnose(res, update_ratio=ratio, update_ratio_low=1e-5).labels[0, 1] == "underfitting"


def test_recorded_losses_over_several_steps():
  # sweep(log_every=k) records the mean loss of every k steps; steps (eval_steps,
  # diverged_at, stopped_at) stay in steps.
  x = CURVES["healthy"].copy()
  x[120:] = np.nan
  coarse = x.reshape(-1, 5).mean(axis=1)  # 40 windows of 5 steps, NaN from step 120 on
  steps_e = np.arange(20, T + 1, 20)
  val = np.where(steps_e <= 120, 0.5, np.nan)
  fine = diagnose(_hand_result(x[None, None], {"val/loss": val[None, None]}, eval_steps=steps_e,
                               diverged_at=[[120]]))
  res = _hand_result(coarse[None, None], {"val/loss": val[None, None]}, eval_steps=steps_e,
                     diverged_at=[[120]], info={"log_every": 5})
  d = diagnose(res)
  assert d.labels[0, 0] == fine.labels[0, 0] == "diverged"
  assert d.evidence["diverged_at"][0, 0] == 120
  assert d.evidence["remaining"][0, 0] == pytest.approx(fine.evidence["remaining"][0, 0], rel=0.2)


def test_a_thousand_runs_of_known_kinds_in_one_call():
  # 1000 runs drawn from six kinds, with random scales, time constants and noise: each gets
  # its kind; the rules are relative, so scaling every loss changes nothing.
  rng = np.random.default_rng(4)
  kinds = ["healthy", "not_learning", "underfitting", "plateaued", "oscillating", "exploding"]
  which = rng.integers(0, len(kinds), 1000)
  scale = rng.uniform(0.1, 10.0, (1000, 1))
  tau = rng.uniform(10, 30, (1000, 1))
  make = {
      "healthy": np.exp(-t / tau) + 0.01,
      "not_learning": np.ones((1000, T)),
      "underfitting": 1 - rng.uniform(0.2, 0.4, (1000, 1)) * t / T,
      "plateaued": (lambda p: p + (1 - p) * np.exp(-t / (tau / 2)))(rng.uniform(0.3, 0.6,
                                                                                (1000, 1))),
      # the minibatch loss jumps between 0.1x and 1.9x its level from step to step
      "oscillating": (0.3 + 0.7 * np.exp(-t / 40)) * (1 + 0.9 * (-1) ** t)
                     * rng.lognormal(0.0, 0.1, (1000, T)),
      "exploding": 10 ** (rng.uniform(2, 5, (1000, 1)) * t / T),
  }
  x = np.stack([make[kinds[k]][i] for i, k in enumerate(which)])
  x = scale * np.where(which[:, None] == kinds.index("oscillating"), x, noisy(x, 0.003, rng))
  d = diagnose(x)
  assert d.labels.shape == (1, 1000)
  np.testing.assert_array_equal(d.labels[0], np.asarray(kinds)[which])
  assert d.counts() == {k: int((np.asarray(kinds)[which] == k).sum()) for k in LABELS}
  np.testing.assert_array_equal(diagnose(1e3 * x).labels, d.labels)


# ----------------------------------------------------------------------------------------
# Output.


def test_tables_and_pandas(digits_sweep):
  d = diagnose(digits_sweep)
  table = format_table(d)
  assert table == d.summary_table()
  lines = table.splitlines()
  assert lines[0] == ("5 runs (1 seed x 5 configs): 1 diverged, 1 exploding, 1 not_learning, "
                      "1 too_slow, 1 healthy")
  for label in ("diverged", "exploding", "not_learning", "too_slow", "healthy"):
    assert any(line.startswith(label) and ADVICE[label] in line for line in lines)
  # Config rows, problems first, with the hyperparameter.
  rows = lines[lines.index("configs (label of most seeds; problems first):") + 2:]
  assert "" not in rows and not d.notes  # no notes: every rule had its data
  assert [r.split()[0] for r in rows] == ["4", "3", "0", "1", "2"]
  assert rows[0].split()[1] == "1000" and "diverged at step" in rows[0]
  assert any(line.startswith("... 3 more configs") for line in format_table(d, max_rows=2).splitlines())

  df = d.to_pandas()
  assert len(df) == 5 and {"config", "seed", "lr", "label", "advice", "noise_ratio",
                           "is_overfitting"} <= set(df.columns)
  assert df.set_index("config").loc[4, "label"] == "diverged"
  assert d.counts() == {k: int(k in ("diverged", "exploding", "not_learning", "too_slow",
                                     "healthy")) for k in LABELS}
  err = digits_sweep.final("val/error")[0]
  assert f"score {err[0]:.4g} vs best {err[2]:.4g} (x{err[0] / err[2]:.3g})" in rows[2]  # lr=1e-7
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
      "acc_rise", "behind_ratio", "behind_margin", "update_ratio_low", "update_ratio_high"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0.0), r"DoctorThresholds: window must be in \(0.0, 0.5\], got window=0.0"),
    (dict(explode_ratio=1.0),
     r"DoctorThresholds: explode_ratio must be > 1, got explode_ratio=1.0"),
    (dict(oscillation_noise=-1.0), r"DoctorThresholds: oscillation_noise must be > 0"),
    (dict(recent_fraction=1.0), r"DoctorThresholds: recent_fraction must be in \(0.0, 1.0\)"),
    (dict(val_rise=-0.1), r"DoctorThresholds: val_rise must be >= 0, got val_rise=-0.1"),
    (dict(explode_floor=0.0), r"DoctorThresholds: explode_floor must be in \(0.0, 1.0\]"),
    (dict(behind_ratio=1.0), r"DoctorThresholds: behind_ratio must be > 1, got behind_ratio=1.0"),
    (dict(behind_margin=-1.0), r"DoctorThresholds: behind_margin must be >= 0"),
    (dict(update_ratio_low=0.0), r"DoctorThresholds: update_ratio_low must be > 0"),
    (dict(update_ratio_high=1e-5), r"DoctorThresholds: update_ratio_high must be > "
                                   r"update_ratio_low=0.0001, got update_ratio_high=1e-05"),
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
  with pytest.raises(ValueError, match=r"diagnose: score must have 10 evaluations like the other"):
    diagnose(np.ones(T), val_loss=np.ones(10), score=np.ones(5))
  res = _hand_result(np.ones((1, 2, T)), {"val/loss": np.ones((1, 2, 10))},
                     eval_steps=np.arange(20, T + 1, 20))
  with pytest.raises(ValueError, match=r"diagnose: score_metric 'val/f1' is not in the result; "
                                       r"available: \['val/loss'\]"):
    diagnose(res, score_metric="val/f1")


def test_diagnosis_is_a_plain_dataclass():
  d = diagnose(CURVES["healthy"])
  assert isinstance(d, Diagnosis)
  assert set(d.flags) == {*LABELS, "far_behind", "slow_updates", "large_updates"}
  assert d.flags["healthy"][0, 0]
  assert set(ADVICE) == set(LABELS)


def test_best_warns_when_the_best_config_is_on_a_grid_edge():
  """SweepResult.best says when the best value of a grid axis (>= 3 values) is the largest or
  the smallest tried (0 is a floor, not an edge; 2 values are all edges, so not flagged), with
  the rule the CLI prints (cli.on_edge)."""
  import warnings

  from optaxlr import cli
  from optaxlr.engine._result import GridEdgeWarning

  space = search.grid(lr=[1e-3, 1e-2, 1e-1], wd=[0.0, 1e-3, 1e-2], m=[0.5, 0.9])
  n = 18

  def result(best):
    err = np.full((1, n, 2), 0.5)
    err[0, best] = 0.1
    return optaxlr.SweepResult(space=space, seeds=np.arange(1), batch_loss=np.ones((1, n, 4)),
                               metrics={"val/error": err}, eval_steps=np.array([2, 4]),
                               diverged_at=np.full((1, n), -1), stopped_at=np.full((1, n), -1))

  def by_hand(h):  # the documented rule, restated
    out = []
    for name, vals in (("lr", [1e-3, 1e-2, 1e-1]), ("wd", [0.0, 1e-3, 1e-2])):
      if h[name] == max(vals):
        out.append(f"{name}=max")
      elif h[name] == min(vals) and min(vals) != 0:
        out.append(f"{name}=min")
    return out

  seen = 0
  for i in range(n):
    res = result(i)
    h = res.config(i)
    want = by_hand(h)
    assert cli.on_edge(res, h) == want
    if want:
      seen += 1
      with pytest.warns(GridEdgeWarning, match=r"SweepResult.best: the best config by "
                                               r"'val/error' is on the edge of the grid \("
                                               + ", ".join(want)):
        assert res.best("val/error")["index"] == i
    else:
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert res.best("val/error")["index"] == i
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      res.best("val/error", warn=False)
  assert seen == 14  # 18 configs; only lr=1e-2 with wd in {0, 1e-3} (x 2 momenta) is inside
