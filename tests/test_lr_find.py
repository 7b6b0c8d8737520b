"""lr_find against pytorch-lr-finder's range_test loop restated in NumPy (and in torch for
Adam), fastai's suggestion functions restated in plain Python, SGD's analytic stability limit
2/L on a quadratic and on linear regression; vmap over seeds x configs vs single runs; no
recompilation when the numbers change; lr_find_grid vs a NumPy gradient-descent loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxlr
from optaxlr import LRFindResult, lr_find, lr_find_grid, range_test_lrs
from optaxlr.tasks import Task

N, D = 64, 4
_rng = np.random.default_rng(0)
SCALES = np.array([3.0, 1.0, 0.5, 0.2])
X = _rng.standard_normal((N, D)) * SCALES
W_STAR = _rng.standard_normal(D)
Y = X @ W_STAR + 0.1 * _rng.standard_normal(N)
XV = _rng.standard_normal((32, D)) * SCALES
YV = XV @ W_STAR
L_LINREG = np.linalg.eigvalsh(X.T @ X / N).max()  # curvature of 0.5 * mean squared error

_q, _ = np.linalg.qr(_rng.standard_normal((5, 5)))
EIGS = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
A = _q @ np.diag(EIGS) @ _q.T
A = (A + A.T) / 2
X0 = _rng.standard_normal(5)


SGD = lambda h: optax.sgd(h["lr"])  # noqa: E731
ADAM = lambda h: optax.adam(h["lr"])  # noqa: E731
ADAMW = lambda h: optax.adamw(h["lr"], weight_decay=h["weight_decay"])  # noqa: E731


def linreg_task():
  """0.5 * mean((x w - y)^2): SGD on the full batch is stable iff lr < 2 / L."""
  return _linreg_task(bool(jax.config.jax_enable_x64))


@functools.lru_cache(maxsize=None)
def _linreg_task(x64: bool):
  # One task per dtype mode: lr_find reuses its compiled program across tests.
  del x64
  return Task.from_functions(
      "linreg", init=lambda k: {"w": 0.1 * jax.random.normal(k, (D,))},
      apply=lambda p, x: x @ p["w"], loss=lambda o, y: 0.5 * jnp.mean((o - y) ** 2),
      train={"x": X, "y": Y}, eval={"val": {"x": XV, "y": YV}})


def quadratic_task():
  """0.5 * w^T A w with a dummy batch; the initial point is X0 plus a little seed noise."""
  return _quadratic_task(bool(jax.config.jax_enable_x64))


@functools.lru_cache(maxsize=None)
def _quadratic_task(x64: bool):
  del x64
  a = jnp.asarray(A)
  return Task.from_functions(
      "quadratic", init=lambda k: {"w": jnp.asarray(X0) + 0.01 * jax.random.normal(k, (5,))},
      apply=lambda p, x: 0.5 * p["w"] @ a @ p["w"] + 0.0 * x.sum(), loss=lambda o, y: o,
      train={"x": jnp.zeros((1, 1)), "y": jnp.zeros(1)})


def w_init(task, seed, key=0):
  return np.asarray(task.init(optaxlr.run_keys(key, seed)[0])["w"], np.float64)


# ----------------------------------------------------------------------------------------
# References.


def range_test_reference(step, lrs, smooth_f, diverge_th):
  """pytorch-lr-finder 0.2.2 ``LRFinder.range_test``'s loop, restated (``step(lr)`` trains
  one batch at ``lr`` and returns the loss it tracks)."""
  history = {"lr": [], "loss": [], "raw": []}
  best = None
  for iteration, lr in enumerate(lrs):
    loss = step(lr)
    history["raw"].append(loss)
    history["lr"].append(lr)
    if iteration == 0:
      best = loss
    else:
      if smooth_f > 0:
        loss = smooth_f * loss + (1 - smooth_f) * history["loss"][-1]
      if loss < best:
        best = loss
    history["loss"].append(loss)
    if loss > diverge_th * best:
      break
  return {k: np.asarray(v) for k, v in history.items()}


def numpy_linreg_step(w, *, val=False, batches=None):
  """Plain gradient descent on 0.5 * mean squared error; returns a ``step(lr)`` closure."""
  state = {"w": w.copy(), "t": 0}

  def step(lr):
    idx = np.arange(N) if batches is None else batches(state["t"])
    xb, yb = X[idx], Y[idx]
    r = xb @ state["w"] - yb
    loss = 0.5 * np.mean(r ** 2)
    state["w"] = state["w"] - lr * xb.T @ r / len(idx)
    state["t"] += 1
    if val:
      return 0.5 * np.mean((XV @ state["w"] - YV) ** 2)
    return loss

  return step


def fastai_minimum(lrs, losses):
  return lrs[int(np.argmin(losses))] / 10


def fastai_steep(lrs, losses):
  grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
  return lrs[int(np.argmin(grads))]


def fastai_valley(lrs, losses):
  n = len(losses)
  max_start, max_end = 0, 0
  lds = [1] * n
  for i in range(1, n):
    for j in range(0, i):
      if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
        lds[i] = lds[j] + 1
      if lds[max_end] < lds[i]:
        max_end = i
        max_start = max_end - lds[max_end]
  sections = (max_end - max_start) / 3
  idx = max_start + int(sections) + int(sections / 2)
  return float(lrs[idx])


def fastai_trim(lrs, losses, num_it):
  """``lrs[num_it // 10 : -5]`` after cutting at the first NaN, as ``Learner.lr_find``."""
  lrs, losses = lrs[num_it // 10:-5], losses[num_it // 10:-5]
  nan = np.flatnonzero(np.isnan(losses))
  if len(nan):
    lrs, losses = lrs[:nan[0]], losses[:nan[0]]
  return lrs, losses


# ----------------------------------------------------------------------------------------
# The schedule and the range test itself.


def test_range_test_lrs_match_pytorch_lr_finder_formulas():
  lo, hi, n = 1e-7, 10.0, 100
  i = np.arange(n)
  np.testing.assert_allclose(range_test_lrs(lo, hi, n), lo * (hi / lo) ** (i / (n - 1)),
                             rtol=1e-13)
  np.testing.assert_allclose(range_test_lrs(lo, hi, n, "linear"),
                             lo + i / (n - 1) * (hi - lo), rtol=1e-13)


@pytest.mark.parametrize("mode,smooth,diverge", [("exp", 0.05, 4.0), ("exp", 0.0, 5.0),
                                                 ("linear", 0.3, 4.0)])
def test_train_mode_equals_numpy_restatement_of_pytorch_lr_finder(x64, mode, smooth, diverge):
  task = linreg_task()
  lo, hi = (1e-5, 10.0) if mode == "exp" else (0.0, 2.0)
  res = lr_find(task, SGD, min_lr=lo, max_lr=hi, steps=100, mode=mode, smooth=smooth,
                diverge=diverge, batch_size=N, sync_every=7)
  ref = range_test_reference(numpy_linreg_step(w_init(task, 0)), range_test_lrs(lo, hi, 100,
                                                                               mode),
                             smooth, diverge)
  k = len(ref["loss"])
  assert k < 100, "the reference run must diverge for this test to check the stop"
  assert res.stopped_at[0, 0] == k - 1
  np.testing.assert_allclose(res.lrs[:k], ref["lr"], rtol=1e-14)
  # Plain GD shrinks the loss by orders of magnitude before 2/L: rounding differences in the
  # gradient (X^T r summed in another order) are amplified, hence 1e-6 and not 1e-12.
  np.testing.assert_allclose(res.loss[0, 0, :k], ref["raw"], rtol=1e-6)
  np.testing.assert_allclose(res.smoothed[0, 0, :k], ref["loss"], rtol=1e-6)
  assert np.isnan(res.smoothed[0, 0, k:]).all() and np.isnan(res.batch_loss[0, 0, k:]).all()
  assert not res.nonfinite[0, 0]


def test_val_mode_and_val_every_equal_numpy_restatement(x64):
  task = linreg_task()
  lrs = range_test_lrs(1e-5, 10.0, 100)
  res = lr_find(task, SGD, min_lr=1e-5, max_lr=10.0, steps=100, metric="val/loss", batch_size=N)
  ref = range_test_reference(numpy_linreg_step(w_init(task, 0), val=True), lrs, 0.05, 4.0)
  k = len(ref["loss"])
  # Stopped by the evaluation after the k-th step: k updates received (see _rules).
  assert k < 100 and res.stopped_at[0, 0] == k and res.tracked == "val"
  np.testing.assert_allclose(res.loss[0, 0, :k], ref["raw"], rtol=1e-6)
  np.testing.assert_allclose(res.smoothed[0, 0, :k], ref["loss"], rtol=1e-6)

  # Every 5 steps: one point after each 5 training steps, at the rate of the 5th.
  res5 = lr_find(task, SGD, min_lr=1e-5, max_lr=10.0, steps=100, metric="val/loss",
                 eval_every=5, batch_size=N)
  assert res5.loss.shape == (1, 1, 20)
  np.testing.assert_array_equal(res5.steps, np.arange(4, 100, 5))
  np.testing.assert_allclose(res5.lrs, lrs[4::5], rtol=1e-14)
  step = numpy_linreg_step(w_init(task, 0), val=True)

  def five_steps(lr):
    del lr
    t = five_steps.t
    for s in range(t, t + 5):
      out = step(lrs[s])
    five_steps.t += 5
    return out

  five_steps.t = 0
  ref5 = range_test_reference(five_steps, lrs[4::5], 0.05, 4.0)
  k5 = len(ref5["loss"])
  np.testing.assert_allclose(res5.smoothed[0, 0, :k5], ref5["loss"], rtol=1e-6)
  assert res5.stopped_at[0, 0] == 5 * k5 if k5 < 20 else res5.stopped_at[0, 0] == -1


def test_minibatches_follow_batch_indices(x64):
  task = linreg_task()
  res = lr_find(task, SGD, min_lr=1e-4, max_lr=1.0, steps=40, batch_size=16, seeds=[2])
  data_key = optaxlr.run_keys(0, 2)[1]
  batches = lambda t: np.asarray(optaxlr.batch_indices(data_key, t, N, 16))  # noqa: E731
  ref = range_test_reference(numpy_linreg_step(w_init(task, 2), batches=batches),
                             range_test_lrs(1e-4, 1.0, 40), 0.05, 4.0)
  k = len(ref["loss"])
  np.testing.assert_allclose(res.batch_loss[0, 0, :k], ref["raw"], rtol=1e-9)
  np.testing.assert_allclose(res.smoothed[0, 0, :k], ref["loss"], rtol=1e-9)


@pytest.mark.torch
def test_adam_range_test_matches_torch(x64):
  torch = pytest.importorskip("torch")
  task = linreg_task()
  lrs = range_test_lrs(1e-4, 10.0, 60)
  w = torch.tensor(w_init(task, 0), dtype=torch.float64, requires_grad=True)
  opt = torch.optim.Adam([w], lr=lrs[0])
  xt, yt = torch.tensor(X), torch.tensor(Y)

  def step(lr):
    for g in opt.param_groups:
      g["lr"] = lr
    opt.zero_grad()
    loss = 0.5 * ((xt @ w - yt) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()

  ref = range_test_reference(step, lrs, 0.05, 4.0)
  res = lr_find(task, ADAM, min_lr=1e-4, max_lr=10.0, steps=60, batch_size=N)
  k = len(ref["loss"])
  np.testing.assert_allclose(res.loss[0, 0, :k], ref["raw"], rtol=1e-9)
  np.testing.assert_allclose(res.smoothed[0, 0, :k], ref["loss"], rtol=1e-9)
  assert res.stopped_at[0, 0] == (k - 1 if k < 60 else -1)


# ----------------------------------------------------------------------------------------
# Analytic checks: SGD is stable iff lr < 2 / L.


@pytest.mark.parametrize("which", ["quadratic", "linreg_minibatch"])
def test_sgd_diverges_past_two_over_l_and_suggestions_land_below(which):
  if which == "quadratic":
    task, lim, bs = quadratic_task(), 2 / EIGS.max(), 1
  else:
    task, lim, bs = linreg_task(), 2 / L_LINREG, 16
  res = lr_find(task, SGD, min_lr=1e-5, max_lr=10.0, steps=100, seeds=3, batch_size=bs)
  assert res.stopped.all()
  # The loss blows up only past the stability limit (it needs a few steps above it to grow).
  assert (res.stop_lr > lim).all() and (res.stop_lr < 10 * lim).all()
  s = res.suggest(0)
  for name in ("minimum", "steep", "valley"):
    assert lim / 100 < s[name] < lim, (name, s[name], lim)
  # Smith's bounds: max_lr is where the smoothed loss stops improving (before the stop).
  assert lim / 10 < s["max_lr"] <= res.stop_lr.min()
  assert s["base_lr"] == pytest.approx(s["max_lr"] / 4)
  assert res.cyclic_bounds(0, divisor=3.0) == pytest.approx((s["max_lr"] / 3, s["max_lr"]))
  # The schedule builders take the bounds as they are.
  sched = optaxlr.schedules.cyclic(*res.cyclic_bounds(0), step_size_up=10)
  assert float(sched(10)) == pytest.approx(s["max_lr"], rel=1e-6)


def test_nonfinite_loss_stops_and_is_marked():
  task = quadratic_task()
  # No smoothing and a huge diverge factor: only the non-finite rule can stop the run.
  res = lr_find(task, SGD, min_lr=1.0, max_lr=1e30, steps=60, smooth=0.0,
                diverge=np.inf)
  t = res.stopped_at[0, 0]
  assert t > 0 and res.nonfinite[0, 0]
  assert not np.isfinite(res.batch_loss[0, 0, t]) or not np.isfinite(res.loss[0, 0, t])
  assert np.isfinite(res.batch_loss[0, 0, :t]).all()
  assert np.isnan(res.batch_loss[0, 0, t + 1:]).all()


def test_program_stops_when_every_run_has_stopped():
  task = quadratic_task()
  res = lr_find(task, SGD, min_lr=0.1, max_lr=1e4, steps=200, seeds=2, sync_every=10)
  assert res.stopped.all()
  assert res.info["steps_run"] == 10 * (res.stopped_at.max() // 10 + 1) < 200
  assert np.isnan(res.batch_loss[..., res.info["steps_run"]:]).all()


# ----------------------------------------------------------------------------------------
# Parallel = sequential; forms of the optimizer; no recompilation.


def test_vmap_over_seeds_and_space_equals_single_runs(x64):
  task = linreg_task()
  wds = [0.0, 1.0]
  kw = dict(min_lr=1e-4, max_lr=10.0, steps=50, batch_size=16)
  res = lr_find(task, ADAMW, seeds=[0, 5], space={"weight_decay": wds}, **kw)
  assert res.loss.shape == (2, 2, 50)
  for i, seed in enumerate([0, 5]):
    for c, wd in enumerate(wds):
      one = lr_find(task, ADAMW, seeds=[seed], space={"weight_decay": [wd]}, **kw)
      np.testing.assert_allclose(res.smoothed[i, c], one.smoothed[0, 0], rtol=1e-12,
                                 equal_nan=True)
      np.testing.assert_allclose(res.batch_loss[i, c], one.batch_loss[0, 0], rtol=1e-12,
                                 equal_nan=True)
      assert res.stopped_at[i, c] == one.stopped_at[0, 0]
  # A config's suggestion comes from the mean over its seeds.
  mean = res.mean_curve()
  n_ok = min(int(np.isfinite(res.smoothed[i, 1]).sum()) for i in range(2))
  np.testing.assert_allclose(mean[1, :n_ok], res.smoothed[:, 1, :n_ok].mean(0), rtol=1e-14)
  assert np.isnan(mean[1, n_ok:]).all()


ADAMW_KW = dict(min_lr=1e-5, max_lr=10.0, steps=40, batch_size=16, seeds=2,
                space={"weight_decay": [0.0, 0.1]})


@pytest.fixture(scope="module")
def adamw_find():
  return lr_find(linreg_task(), ADAMW, **ADAMW_KW)


@pytest.fixture(scope="module")
def adamw_grid():
  return lr_find_grid(linreg_task(), ADAMW, lrs=[1e-3, 1e-1, 30.0], steps=20, batch_size=16,
                      space={"weight_decay": [0.0, 0.1]}, metric="val/loss")


def test_an_optax_factory_is_refused_with_a_hint():
  """One optimizer form in every driver: hparams -> transform, never guessed from a signature."""
  with pytest.raises(ValueError, match=r"lr_find: .*hparams -> optax.GradientTransformation"):
    lr_find(linreg_task(), optax.adamw, steps=10)


def test_no_recompilation_when_the_numbers_change():
  task = linreg_task()
  traces = []

  def opt(h):
    if isinstance(h["lr"], jax.core.Tracer):
      traces.append(1)
    return optax.sgd(h["lr"], momentum=h["m"])

  space = {"m": [0.0, 0.9]}
  lr_find(task, opt, min_lr=1e-5, max_lr=1.0, steps=20, batch_size=16, space=space)
  first = len(traces)
  assert first > 0
  r2 = lr_find(task, opt, min_lr=1e-3, max_lr=10.0, steps=20, smooth=0.2, diverge=3.0,
               batch_size=16, space={"m": [0.5, 0.99]}, key=1)
  # Only the host-side shape check traces again; the program is neither traced nor compiled.
  assert len(traces) == first + 1
  assert r2.info["compile_s"] == 0.0
  assert r2.lrs[0] == pytest.approx(1e-3) and r2.settings["diverge"] == 3.0


# ----------------------------------------------------------------------------------------
# Suggestions vs fastai, on given curves.


def _result_from_curves(lrs, smoothed):
  s, c, p = smoothed.shape
  return LRFindResult(
      lrs=lrs, steps=np.arange(p), loss=smoothed, smoothed=smoothed, schedule=lrs,
      batch_loss=smoothed, stopped_at=np.full((s, c), -1), nonfinite=np.zeros((s, c), bool),
      seeds=np.arange(s))


def test_suggestions_equal_fastai_functions_on_random_curves():
  rng = np.random.default_rng(1)
  p, c = 80, 25
  lrs = range_test_lrs(1e-6, 1.0, p)
  x = np.linspace(0, 1, p)
  centre = rng.uniform(0.4, 0.9, size=(c, 1))
  curves = 1 + 3 * (x - centre) ** 2 - 2 * np.exp(-((x - centre) / 0.2) ** 2)
  curves = curves + 0.05 * rng.standard_normal((c, p))
  cut = rng.integers(30, p + 1, size=c)  # some curves end early (stopped runs)
  curves[3] = np.linspace(2.0, 1.0, p)  # monotone: the valley spans everything
  curves = np.where(np.arange(p) < cut[:, None], curves, np.nan)
  res = _result_from_curves(lrs, curves[None])
  got = res.suggest()
  for i in range(c):
    # fastai's recorder holds only the points recorded before the stop.
    tl, tv = fastai_trim(lrs[:cut[i]], curves[i, :cut[i]], p)
    assert got["minimum"][i] == pytest.approx(fastai_minimum(tl, tv), rel=1e-14)
    assert got["steep"][i] == pytest.approx(fastai_steep(tl, tv), rel=1e-14)
    assert got["valley"][i] == pytest.approx(fastai_valley(tl, tv), rel=1e-14)
    assert got["max_lr"][i] == pytest.approx(10 * fastai_minimum(tl, tv), rel=1e-14)


def test_valley_without_any_descent_gives_the_first_point_not_the_last():
  lrs = range_test_lrs(1e-4, 1.0, 30)
  res = _result_from_curves(lrs, np.linspace(1.0, 2.0, 30)[None, None])
  # fastai would index -1 here (the largest rate); this returns the first kept point.
  assert res.valley(skip_start=0, skip_end=0)[0] == lrs[0]


def test_too_short_curves_give_nan():
  lrs = range_test_lrs(1e-4, 1.0, 30)
  curve = np.full(30, np.nan)
  curve[:4] = [1.0, 0.9, 0.8, 0.7]
  s = _result_from_curves(lrs, curve[None, None]).suggest(0)
  assert all(np.isnan(v) for v in s.values())


# ----------------------------------------------------------------------------------------
# The grid variant.


def test_lr_find_grid_largest_falling_rate_is_below_two_over_l(x64):
  task = linreg_task()
  lim = 2 / L_LINREG
  lrs = np.array([0.05, 0.3, 0.9, 1.1, 1.5]) * lim
  res = lr_find_grid(task, SGD, lrs=lrs, steps=30, batch_size=N, window=1, seeds=2)
  np.testing.assert_array_equal(res.fell[:, 0], [True, True, True, False, False])
  assert res.largest_falling()[0] == pytest.approx(0.9 * lim)
  assert res.best()[0] < lim
  for s in range(2):
    w0 = w_init(task, s)
    np.testing.assert_allclose(res.initial[s, 0], 0.5 * np.mean((X @ w0 - Y) ** 2), rtol=1e-12)
    for i, lr in enumerate(lrs):
      step = numpy_linreg_step(w0)
      losses = [step(lr) for _ in range(30)]
      if np.isfinite(res.final[s, i, 0]):
        np.testing.assert_allclose(res.final[s, i, 0], losses[-1], rtol=1e-8)
  assert res.suggest(0) == {"largest_falling": pytest.approx(0.9 * lim),
                            "best": pytest.approx(res.best()[0])}


def test_lr_find_grid_with_a_space_and_val_metric(adamw_grid):
  res = adamw_grid
  assert res.final.shape == (1, 3, 2) and res.fell.shape == (3, 2)
  assert res.fell[1].all() and not res.fell[2].any()  # 30 is far too high for Adam here
  assert res.sweep.num_configs == 6 and res.sweep.config(1) == {"lr": 1e-3, "weight_decay": 0.1}


# ----------------------------------------------------------------------------------------
# Plots and errors.


def test_plots_render_to_png(tmp_path, adamw_find, adamw_grid):
  import matplotlib.pyplot as plt

  fig = adamw_find.plot()
  path = tmp_path / "lr_find.png"
  fig.savefig(path)
  assert path.stat().st_size > 1000
  assert fig.axes[0].get_xscale() == "log"
  # Stopped runs (NaN tails), several seeds, other suggestions marked.
  stopped = lr_find(quadratic_task(), SGD, min_lr=1e-5, max_lr=10.0, steps=100, seeds=3,
                    batch_size=1)
  fig2 = stopped.plot(suggestions=("valley", "max_lr", "base_lr"))
  fig2.savefig(tmp_path / "stopped.png")
  assert len(fig2.axes[0].lines) == 5  # smoothed, raw, three markers
  fig3 = adamw_grid.plot()
  fig3.savefig(tmp_path / "grid.png")
  assert (tmp_path / "grid.png").stat().st_size > 1000
  for f in (fig, fig2, fig3):
    plt.close(f)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="cosine"), "lr_find: mode must be one of 'exp', 'linear', got mode='cosine'"),
    (dict(min_lr=0.0), r"lr_find: min_lr must be > 0, got min_lr=0.0"),
    (dict(min_lr=1.0, max_lr=0.5), r"lr_find: max_lr must be > min_lr=1.0, got max_lr=0.5"),
    (dict(smooth=1.0), r"lr_find: smooth must be in \[0.0, 1.0\), got smooth=1.0"),
    (dict(diverge=1.0), r"lr_find: diverge must be > 1, got diverge=1.0"),
    (dict(steps=1), r"lr_find: steps must be an int >= 2, got steps=1"),
    (dict(eval_every=3), r"lr_find: eval_every=3 is read only when metric is an evaluated"),
    (dict(metric="test/loss"), r"lr_find: metric='test/loss' names split 'test'"),
    (dict(metric="loss"), r"lr_find: metric must be 'train/loss' or an evaluated metric"),
    (dict(steps=True), r"lr_find: steps must be an int >= 2, got steps=True"),
    (dict(space={"lr": [0.1]}), r"lr_find: space must not hold 'lr'"),
    (dict(batch_size=1000), r"lr_find: batch_size must be an int in \[1, 64\]"),
    (dict(seeds=0), r"lr_find: seeds must be >= 1"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lr_find(linreg_task(), SGD, **kwargs)


def test_injected_learning_rate_is_refused():
  opt = lambda h: optax.inject_hyperparams(optax.sgd)(learning_rate=h["lr"])  # noqa: E731
  with pytest.raises(ValueError, match="lr_find: the optimizer keeps its learning rate in an "
                                       "optax.inject_hyperparams state"):
    lr_find(linreg_task(), opt, steps=10)


def test_invalid_config_is_reported_with_its_index():
  with pytest.raises(ValueError, match=r"lr_find: config 1 \{'momentum': -1.0\} is invalid: "
                                       r"sgd: momentum must be >= 0"):
    lr_find(linreg_task(), _bad_momentum, steps=10, space={"momentum": [0.5, -1.0]})


def _bad_momentum(h):
  m = h["momentum"]
  if not isinstance(m, jax.core.Tracer) and m < 0:
    raise ValueError(f"sgd: momentum must be >= 0, got momentum={m}")
  return optax.sgd(h["lr"], momentum=m)


def test_lr_find_grid_bad_arguments():
  task = linreg_task()
  with pytest.raises(ValueError, match=r"lr_find_grid: lrs must be > 0"):
    lr_find_grid(task, SGD, lrs=[0.1, 0.0])
  with pytest.raises(ValueError, match=r"lr_find_grid: lrs must be distinct"):
    lr_find_grid(task, SGD, lrs=[0.1, 0.1])
  with pytest.raises(ValueError, match=r"lr_find_grid: fall_threshold must be in \[0.0, 1.0\)"):
    lr_find_grid(task, SGD, lrs=[0.1], fall_threshold=1.0)
  with pytest.raises(ValueError, match=r"lr_find_grid: metric must be one of 'train/loss', 'val/loss'"):
    lr_find_grid(task, SGD, lrs=[0.1], metric="test/loss")
  with pytest.raises(ValueError, match=r"lr_find_grid: window=2 is read only with metric='train/loss'"):
    lr_find_grid(task, SGD, lrs=[0.1], metric="val/loss", window=2)
  with pytest.raises(TypeError, match=r"lr_find_grid: space \(the third argument.*keyword lrs="):
    lr_find_grid(task, SGD, [0.1, 0.2])
