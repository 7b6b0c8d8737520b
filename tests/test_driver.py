"""One driver: ``sweep`` is the only way in. The other entry points are views of it (lr_find with
every axis kind and checkpoints), how-to-run settings are one validated object, rule numbers are
data, compilation is never counted as run time, and the package's layering holds."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pathlib
import pkgutil
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _child
import optaxlr
from optaxlr import search
from optaxlr.tasks import Task

PACKAGE = pathlib.Path(optaxlr.__file__).parent
TESTS = pathlib.Path(__file__).parent
QUIET = optaxlr.Execution(progress=False)


def linreg_task(n=96, d=4, seed=0):
  """Linear regression in plain functions (a task with no model state)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d,)) + 0.1 * rng.normal(size=n)).astype(np.float32)
  return Task.from_functions(
      "linreg", init=lambda key: {"w": jnp.zeros(d), "b": jnp.zeros(())},
      apply=lambda p, x: x @ p["w"] + p["b"], loss="mse",
      train={"x": x[:64], "y": y[:64]}, eval={"val": {"x": x[64:], "y": y[64:]}})


def sgd(h):
  return optax.sgd(h["lr"], momentum=0.9)


# ----------------------------------------------------------------------------------------
# The public surface and the layering.


def test_sweep_has_at_most_21_parameters_and_entry_points_share_execution():
  # 21: issue 22 names sweep(..., noise_scale=True) as the contract (a metric the program
  # computes, like a rule, not a how-to-run choice that would belong in Execution).
  assert len(inspect.signature(optaxlr.sweep).parameters) <= 21
  for fn in (optaxlr.sweep, optaxlr.lr_find, optaxlr.lr_find_grid):
    params = inspect.signature(fn).parameters
    assert "execution" in params, fn.__name__
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), fn.__name__
    assert "monitor" not in params, f"{fn.__name__}: the watched metric is called metric"
    assert list(params)[:3] == ["task", "optimizer", "space"], fn.__name__


def _imports(path: pathlib.Path):
  """Every module name a file imports (at any depth, lazy imports included)."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        yield a.name
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      for a in node.names:
        yield f"{node.module}.{a.name}"


def test_no_module_outside_the_engine_imports_a_private_engine_module():
  bad = []
  for path in PACKAGE.rglob("*.py"):
    if PACKAGE / "engine" in path.parents:
      continue
    for name in _imports(path):
      parts = name.split(".")
      if parts[:2] == ["optaxlr", "engine"] and len(parts) > 2 and parts[2].startswith("_"):
        bad.append(f"{path.relative_to(PACKAGE)}: {name}")
  assert not bad, bad


def test_the_engine_imports_nothing_above_it():
  below = ("optaxlr._validate", "optaxlr.search", "optaxlr.transforms", "optaxlr.schedules",
           "optaxlr.losses", "optaxlr._monitor", "optaxlr.tasks", "optaxlr.engine")
  # SweepResult.plot_heatmap and .winner/.compare/.rescore load optaxlr.plot and optaxlr.stats
  # when called (as pandas' DataFrame.plot loads its backend): conveniences on the result, not
  # dependencies of the engine (nothing in the training path imports them).
  allowed = {("_result.py", "optaxlr.plot"), ("_result.py", "optaxlr.plot.heatmap"),
             ("_result.py", "optaxlr.stats")}
  bad = []
  for path in (PACKAGE / "engine").rglob("*.py"):
    for name in _imports(path):
      if (name.startswith("optaxlr") and name != "optaxlr" and not name.startswith(below)
          and (path.name, name) not in allowed):
        bad.append(f"{path.name}: {name}")
  assert not bad, bad


def test_no_star_imports_and_no_function_named_like_its_module():
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    stars = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and any(a.name == "*" for a in n.names)]
    assert not stars, f"{path.relative_to(PACKAGE)} has a star import"
  for info in pkgutil.walk_packages([str(PACKAGE)], "optaxlr."):
    parent, _, leaf = info.name.rpartition(".")
    owner = importlib.import_module(parent)
    if hasattr(owner, leaf):
      assert inspect.ismodule(getattr(owner, leaf)), f"{parent}.{leaf} shadows its module"


def test_execution_is_validated_when_built_and_refused_in_other_forms():
  with pytest.raises(ValueError, match=r"Execution: devices must be distinct"):
    optaxlr.Execution(devices=[jax.devices()[0]] * 2)
  ex = optaxlr.Execution(keep_params=True)
  assert ex.replace(progress=False).keep_params and not ex.replace(progress=False).progress
  with pytest.raises(TypeError, match=r"lr_find: execution must be an optaxlr.Execution"):
    optaxlr.lr_find(linreg_task(), sgd, steps=4, execution="fast")


# ----------------------------------------------------------------------------------------
# lr_find is a view of sweep: every axis kind, checkpoints.


def test_lr_find_with_a_batch_size_axis_equals_lr_find_at_each_size():
  task = linreg_task()
  kw = dict(steps=24, min_lr=1e-4, max_lr=3.0, seeds=2, diverge=np.inf)
  both = optaxlr.lr_find(task, sgd, search.grid(batch_size=[8, 32]), **kw)
  assert both.settings["batch_size"] == [8, 32]
  for i, b in enumerate([8, 32]):
    alone = optaxlr.lr_find(task, sgd, batch_size=b, **kw)
    np.testing.assert_allclose(both.loss[:, i], alone.loss[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both.smoothed[:, i], alone.smoothed[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(both.stopped_at[:, i], alone.stopped_at[:, 0])
  # the axis is used: the two sizes give different curves (it was silently dropped before)
  assert not np.allclose(both.loss[:, 0], both.loss[:, 1])


def test_lr_find_takes_model_hyperparameter_and_categorical_axes():
  task = linreg_task()
  opt = lambda h: search.switch(h["opt"], {"sgd": optax.sgd(h["lr"]),  # noqa: E731
                                           "adam": optax.adam(h["lr"])})
  res = optaxlr.lr_find(task, opt, search.grid(opt=["sgd", "adam"]), steps=16, min_lr=1e-4,
                        max_lr=1.0)
  assert res.loss.shape == (1, 2, 16)
  assert not np.allclose(res.loss[0, 0], res.loss[0, 1])
  assert res.sweep is not None and "val/loss" in res.sweep.metrics


LR_FIND_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import optaxlr
    from test_driver import linreg_task, sgd
    from optaxlr import search
    kill_at = int(sys.argv[2])

    def callback(event):
      if event.chunk == kill_at:  # a kill point chosen by the test, not by the clock
        os.kill(os.getpid(), signal.SIGKILL)

    optaxlr.lr_find(linreg_task(), sgd, search.grid(batch_size=[8, 16]), steps=40, seeds=2,
                    min_lr=1e-4, max_lr=10.0, sync_every=4, callback=callback,
                    execution=optaxlr.Execution(checkpoint_dir=sys.argv[1], progress=False))
    print("DONE", flush=True)
    """
)


def _killed_child(tmp_path, script_text: str, *args: str) -> None:
  """Runs ``script_text`` in a subprocess that SIGKILLs itself at a point the test chose."""
  script = tmp_path / "child.py"
  script.write_text(script_text.format(tests=str(TESTS)))
  env = _child.env({"PYTHONPATH": os.pathsep.join([str(PACKAGE.parent),
                                                   os.environ.get("PYTHONPATH", "")]),
                    "JAX_PLATFORMS": "cpu"})
  _child.assert_killed(_child.run([sys.executable, str(script), *args], env), args)


@pytest.mark.parametrize("kill_at", [1, 6])
def test_lr_find_resumes_after_a_sigkill_bitwise(tmp_path, kill_at):
  folder = tmp_path / "ckpt"
  _killed_child(tmp_path, LR_FIND_SCRIPT, str(folder), str(kill_at))
  kw = dict(steps=40, seeds=2, min_lr=1e-4, max_lr=10.0, sync_every=4)
  reference = optaxlr.lr_find(linreg_task(), sgd, search.grid(batch_size=[8, 16]), **kw)
  resumed = optaxlr.lr_find(linreg_task(), sgd, search.grid(batch_size=[8, 16]), **kw,
                            execution=optaxlr.Execution(checkpoint_dir=folder, progress=False))
  assert 0 < resumed.info["slot_steps"] < reference.info["slot_steps"]  # it did resume
  for name in ("loss", "smoothed", "batch_loss", "stopped_at"):
    np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name), err_msg=name)
  np.testing.assert_array_equal(resumed.stop_reason, reference.stop_reason)


# ----------------------------------------------------------------------------------------
# Rule numbers are data; compile time is never run time.


def test_changing_only_rule_numbers_reuses_the_compiled_program():
  task = linreg_task()
  space = search.grid(lr=[1e-3, 0.05, 0.3])
  kw = dict(steps=40, eval_every=4, batch_size=16, seeds=2, execution=QUIET)
  first = optaxlr.sweep(task, sgd, space, early_stopping=optaxlr.EarlyStop(patience=1), **kw)
  for stop in (optaxlr.EarlyStop(patience=3, min_delta=1e-3),
               optaxlr.EarlyStop(patience=2, start_from=2)):
    again = optaxlr.sweep(task, sgd, space, early_stopping=stop, **kw)
    assert again.info["compile_s"] == 0.0, stop
  # the numbers did reach the program: a longer patience stops later (or never)
  later = optaxlr.sweep(task, sgd, space, early_stopping=optaxlr.EarlyStop(patience=6), **kw)
  s1 = np.where(first.stopped_at < 0, 40, first.stopped_at)
  s6 = np.where(later.stopped_at < 0, 40, later.stopped_at)
  assert (s6 >= s1).all() and (s6 > s1).any()
  # the range test's smoothing and threshold likewise
  a = optaxlr.lr_find(task, sgd, steps=20, smooth=0.05, diverge=4.0)
  b = optaxlr.lr_find(task, sgd, steps=20, smooth=0.3, diverge=2.0)
  assert b.info["compile_s"] == 0.0 and not np.allclose(a.smoothed, b.smoothed, equal_nan=True)


def test_a_user_rule_extends_the_stop_reasons():
  import dataclasses
  from typing import ClassVar

  from optaxlr.engine import Rule, stop_reasons

  @dataclasses.dataclass(frozen=True, eq=False)
  class LossBelow(Rule):
    level: ClassVar[str] = "step"
    reason: ClassVar[str] = "loss_below_test_threshold"
    data: ClassVar[tuple[str, ...]] = ("threshold",)
    threshold: float = 0.5

    def update(self, state, ctx, args):
      code = jnp.where(ctx.loss < args["threshold"], optaxlr.engine.reason_code(self.reason), 0)
      return state, code, {}

  assert "loss_below_test_threshold" in stop_reasons()
  res = optaxlr.sweep(linreg_task(), sgd, search.grid(lr=[1e-4, 0.1]), steps=30, batch_size=16,
                      rules=[LossBelow(threshold=0.5)], execution=QUIET)
  assert res.stop_reason[0, 0] == "completed"
  assert res.stop_reason[0, 1] == "loss_below_test_threshold"
  stopped = int(res.stopped_at[0, 1])
  assert res.batch_loss[0, 1, stopped] < 0.5 <= np.nanmin(res.batch_loss[0, 1, :stopped])


def test_compilation_of_a_new_optimizer_is_in_compile_s_not_run_s():
  events = []

  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append((kwargs.get("fun_name", ""), duration))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    res = optaxlr.sweep(linreg_task(), lambda h: optax.adam(h["lr"] * 1.0),  # a new function
                        search.grid(lr=[1e-3, 1e-2]), steps=8, batch_size=16, execution=QUIET)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  program = [d for name, d in events if name in ("jit(init)", "jit(chunk)")]
  assert {name for name, _ in events} >= {"jit(init)", "jit(chunk)"}, events
  # both programs' compilations were timed inside compile_s (the initialisation's was in run_s)
  assert res.timings.compile_s >= sum(program) > 0
  assert res.timings.run_s < res.timings.total_s


def test_ramp_and_space_none_are_public_sweep_arguments():
  task = linreg_task()
  lrs = np.geomspace(1e-3, 0.1, 12)
  res = optaxlr.sweep(task, sgd, None, steps=12, batch_size=16, ramp={"lr": lrs}, execution=QUIET)
  assert res.batch_loss.shape == (1, 1, 12) and res.hparams == {}
  # the same run by hand: SGD with momentum and the per-step rate
  with pytest.raises(ValueError, match=r"sweep: ramp\['lr'\] must hold 12 numbers"):
    optaxlr.sweep(task, sgd, None, steps=12, ramp={"lr": lrs[:5]}, execution=QUIET)
  with pytest.raises(ValueError, match=r"sweep: 'lr' is both an axis of the space and a ramp"):
    optaxlr.sweep(task, sgd, search.grid(lr=[0.1]), steps=12, ramp={"lr": lrs}, execution=QUIET)
  with pytest.raises(ValueError, match=r"sweep: the space's axis 'm' is read by neither"):
    optaxlr.sweep(task, sgd, None, steps=12, ramp={"lr": lrs, "m": lrs}, execution=QUIET)


def test_sweep_ramp_equals_an_optax_schedule_of_the_same_values():
  """A ramp is the per-step value the optimizer reads: SGD at ramp[t] equals optax.sgd with a
  schedule that returns the same table (an independent path through optax)."""
  task = linreg_task()
  lrs = np.geomspace(1e-3, 0.1, 12).astype(np.float32)
  ramped = optaxlr.sweep(task, sgd, None, steps=12, batch_size=16, ramp={"lr": lrs},
                         execution=QUIET)
  table = jnp.asarray(lrs)

  def tabled(h):
    one = h["one"]
    return optax.sgd(lambda c: table[c] * one, momentum=0.9)

  fixed = optaxlr.sweep(task, tabled, search.grid(one=[1.0]), steps=12, batch_size=16,
                        execution=QUIET)
  np.testing.assert_allclose(ramped.batch_loss, fixed.batch_loss, rtol=1e-6)


ADAPT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import optaxlr
    from test_driver import adaptive_sweep
    kill_at = int(sys.argv[3])

    def callback(event):  # the strategy has decided for this chunk; the commit has not run
      if event.chunk == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

    adaptive_sweep(sys.argv[2], callback=callback,
                   execution=optaxlr.Execution(checkpoint_dir=sys.argv[1], progress=False))
    print("DONE", flush=True)
    """
)


def adaptive_sweep(strategy: str, **kw):
  from optaxlr import adapt

  if strategy == "sh":
    space, how = search.grid(lr=[1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]), adapt.successive_halving(
        "val/loss", eta=2, min_steps=4)
  else:
    space, how = search.grid(lr=[1e-3, 1e-2, 0.1, 0.3]), adapt.pbt(
        "val/loss", interval=4, perturb={"lr": (0.5, 2.0)}, seed=3)
  return optaxlr.sweep(linreg_task(), sgd, space, steps=24, batch_size=16, eval_every=4,
                       seeds=2, adapt=how, **kw)


@pytest.mark.parametrize("strategy, kill_at", [("sh", 1), ("sh", 3), ("pbt", 2)])
def test_adaptive_sweeps_resume_after_a_sigkill_with_the_same_decisions(tmp_path, strategy,
                                                                         kill_at):
  folder = tmp_path / "ckpt"
  _killed_child(tmp_path, ADAPT_SCRIPT, str(folder), strategy, str(kill_at))
  reference = adaptive_sweep(strategy, execution=QUIET)
  resumed = adaptive_sweep(strategy, execution=optaxlr.Execution(checkpoint_dir=folder,
                                                                 progress=False))
  assert 0 < resumed.info["slot_steps"] < reference.info["slot_steps"]  # it did resume
  np.testing.assert_array_equal(resumed.batch_loss, reference.batch_loss)
  for m in reference.metrics:
    np.testing.assert_array_equal(resumed.metrics[m], reference.metrics[m], err_msg=m)
  np.testing.assert_array_equal(resumed.stop_reason, reference.stop_reason)
  decided = reference.info["adapt"]["rungs" if strategy == "sh" else "exploits"]
  assert decided, "the reference made no decision: the test would not test resuming them"
  assert resumed.info["adapt"] == reference.info["adapt"]
  assert resumed.info.get("steering") == reference.info.get("steering")


def test_no_engine_function_is_over_150_lines_and_the_driver_loop_is_short():
  """Code lines (the docstring excluded: a long Args section is documentation, not logic)."""
  sizes = {}
  for path in (PACKAGE / "engine").rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        first = node.body[0]
        doc = (first.end_lineno - first.lineno + 1) if (
            isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)) else 0
        sizes[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1 - doc
  assert max(sizes.values()) <= 150, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
  assert sizes["_driver.py:run"] <= 120, sizes["_driver.py:run"]


def test_lr_find_on_a_batchnorm_cnn_that_reads_a_swept_dropout():
  """The first-hour case: a flax.nnx CNN with BatchNorm and a Dropout reading the swept rate,
  range-tested with the rate as an axis (lr_find used to fail: the model's hyperparameters
  never reached its checks)."""
  from flax import nnx

  from optaxlr.tasks import Dropout

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), use_bias=False, rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.drop = Dropout(0.1, hparam="dropout", rngs=rngs)
      self.head = nnx.Linear(4 * 36, 3, rngs=rngs)

    def __call__(self, x):
      x = jax.nn.relu(self.bn(self.conv(x)))
      return self.head(self.drop(x.reshape(x.shape[0], -1)))

  rng = np.random.default_rng(0)
  x = rng.normal(size=(48, 6, 6, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=48)  # int64 labels, as NumPy makes them
  task = Task.from_flax_nnx("cnn", Net, train={"x": x[:32], "y": y[:32]},
                            eval={"val": {"x": x[32:], "y": y[32:]}})
  res = optaxlr.lr_find(task, lambda h: optax.adam(h["lr"]), search.grid(dropout=[0.0, 0.5]),
                        steps=12, batch_size=8, min_lr=1e-4, max_lr=1.0)
  assert res.loss.shape == (1, 2, 12) and np.isfinite(res.loss[..., :4]).all()
  assert not np.allclose(res.loss[0, 0], res.loss[0, 1], equal_nan=True)  # the rate is read
  with pytest.raises(ValueError, match=r"reads hyperparameter 'dropout', which the space does not hold"):
    optaxlr.lr_find(task, lambda h: optax.adam(h["lr"]), steps=12, batch_size=8)


def test_a_negative_batch_size_in_an_axis_is_an_error_not_the_default_batch():
  with pytest.raises(ValueError, match=r"sweep: the 'batch_size' axis must hold ints >= 1"):
    optaxlr.sweep(linreg_task(), sgd, search.grid(lr=[0.1], batch_size=[-1, 8]), steps=4,
                  execution=QUIET)
