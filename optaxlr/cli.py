"""The ``optaxlr`` command: sweeps, schedules, plots and diagnoses from the shell.

Exit codes: 0 success; 1 the run failed (every config diverged) or a result file given to
``plot``/``diagnose`` could not be read (missing, damaged, not a sweep result); 2 bad usage
(unknown option, bad value, bad ``--space`` file, unwritable ``--out``), argparse's convention.

``--task`` takes a built-in task's name or ``MODULE:FUNCTION`` / ``path/to/file.py:FUNCTION``,
a function of the user's called with no arguments that returns an :class:`optaxlr.Task`
(:func:`load_user_task`), as W&B sweeps take a ``program``.

Every option value is checked before anything is trained or drawn; a bad one ends the command
with ONE line on stderr, ``optaxlr <command>: error: <option>: <what is wrong and what is
allowed>``, and exit code 2 (never a traceback).

``optaxlr sweep`` also says when the best config sits on the edge of the grid: for every grid
axis with at least 3 values, a best value equal to the largest value tried (or to the smallest,
unless that is 0, the floor of a weight decay or momentum) is reported as ``"lr=max"`` /
``"wd=min"`` in the printed table and in ``summary.json`` (``"on_edge"``), with a line saying to
extend the grid. With 2 values every value is an edge, so such axes are not flagged.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# ----------------------------------------------------------------------------------------
# Tasks and optimizers the command knows by name.

TASKS = ("digits", "digits-cnn", "sinusoid", "two_gaussians", "spiral", "teacher_student")


@functools.cache
def make_task(name: str, *, quick: bool = False):
  """The built-in task ``name`` (cached: the checks and the run share one)."""
  from optaxlr import tasks

  if name == "digits":
    return tasks.digits("mlp", hidden=(128,))
  if name == "digits-cnn":
    return tasks.digits("cnn")
  hidden = (100, 100) if quick else (500, 500, 500, 500)
  if name == "teacher_student":
    return tasks.teacher_student()
  builder = {"sinusoid": tasks.sinusoid, "two_gaussians": tasks.two_gaussians,
             "spiral": tasks.spiral}[name]
  return builder(n_train=500, label_noise=0.1, hidden=hidden)


TASK_HELP = (f"{', '.join(TASKS)} (built-in; default digits), or your own: MODULE:FUNCTION or"
             " path/to/file.py:FUNCTION, a function taking no arguments that returns an"
             " optaxlr.Task (MODULE is imported with the current directory on the path, as"
             " python -m does)")
TASK_FORMS = (f"a built-in task ({', '.join(TASKS)}), or MODULE:FUNCTION or"
              " path/to/file.py:FUNCTION naming a function that takes no arguments and"
              " returns an optaxlr.Task")


def _raised(e: BaseException, user_file: str | None = None) -> str:
  """``"ValueError: message (at file.py:12)"``: the exception and where: the last line of
  ``user_file`` it passed through (the user's line that led to it), else where it was raised."""
  frames = traceback.extract_tb(e.__traceback__)
  here = os.path.realpath(user_file) if user_file else None
  mine = [f for f in frames if os.path.realpath(f.filename) == here]
  frame = (mine or frames or [None])[-1]
  at = f" (at {frame.filename}:{frame.lineno})" if frame else ""
  return f"{type(e).__name__}: {e}{at}"


def _on_path(folder: str) -> None:
  if folder not in sys.path:
    sys.path.insert(0, folder)


def _import_file(where: str, target: str):
  """The module of the file ``target`` (its folder goes on ``sys.path``, as ``python file.py``)."""
  path = pathlib.Path(target)
  if not path.is_file():
    folder = " (it is a folder)" if path.is_dir() else ""
    raise UsageError(f"{where}: no such file {target!r}{folder}")
  if path.suffix != ".py":
    raise UsageError(f"{where}: {target!r} is not a .py file")
  name = "_optaxlr_task_" + re.sub(r"\W", "_", path.stem)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  _on_path(str(path.resolve().parent))
  sys.modules[name] = module  # dataclasses and pickle look a class's module up there
  try:
    spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:  # a user's module may raise anything
    sys.modules.pop(name, None)
    raise UsageError(f"{where}: importing {target} raised {_raised(e, str(path))}") from None
  return module


def _import_module(where: str, target: str):
  """The module ``target``, imported with the current directory on ``sys.path`` (as
  ``python -m`` does)."""
  if not all(part.isidentifier() for part in target.split(".")):
    raise UsageError(f"{where}: {target!r} is neither a module name (dotted identifiers) nor a"
                     " path to a .py file")
  cwd = os.getcwd()
  if "" not in sys.path:
    _on_path(cwd)
  importlib.invalidate_caches()  # a module written since the last import
  try:
    return importlib.import_module(target)
  except ModuleNotFoundError as e:
    if e.name and (target == e.name or target.startswith(e.name + ".")):
      raise UsageError(f"{where}: no module named {e.name!r} (looked in the current directory"
                       f" {cwd} and on sys.path)") from None
    raise UsageError(f"{where}: importing {target} raised {_raised(e)}") from None
  except (Exception, SystemExit) as e:  # a user's module may raise anything
    raise UsageError(f"{where}: importing {target} raised {_raised(e)}") from None


def load_user_task(option: str, spec: str, hparams: dict[str, float] | None = None):
  """The :class:`optaxlr.Task` returned by ``FUNCTION()`` of ``spec`` = ``MODULE:FUNCTION`` or
  ``path/to/file.py:FUNCTION`` (``FUNCTION`` may be dotted: ``module:Class.make``).

  A module is imported with the current directory on ``sys.path``, as ``python -m`` does; a
  file is loaded from its path, with its folder on ``sys.path``. The function is called once,
  with no arguments, and what it returns is checked with :meth:`optaxlr.Task.validate`, with
  ``hparams`` (one config's values: a model may read a swept dropout rate).

  Raises:
    UsageError: naming ``option``, ``spec`` and what is wrong: no such module or file, no such
      attribute, not callable, needs arguments, raised (the exception and where), returned
      something other than a ``Task``, or a ``Task`` that fails its checks.
  """
  from optaxlr.tasks import Task

  where = f"{option} {spec}"
  target, _, attr = spec.rpartition(":")
  if not target or not attr:
    raise UsageError(f"{option} {spec!r}: expected {TASK_FORMS}")
  if target.endswith(".py") or "/" in target or os.sep in target:
    module = _import_file(where, target)
  else:
    module = _import_module(where, target)
  fn = module
  for part in attr.split("."):
    if not hasattr(fn, part):
      mine = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                    and getattr(v, "__module__", None) == module.__name__)
      raise UsageError(f"{where}: {target} has no attribute {attr!r}"
                       + (f"; its functions: {', '.join(mine)}" if mine else ""))
    fn = getattr(fn, part)
  if not callable(fn):
    raise UsageError(f"{where}: {attr} is not callable (its type is {type(fn).__name__}); give"
                     " a function that takes no arguments and returns an optaxlr.Task")
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):  # some builtins have no signature: just call them
    params = []
  need = [p.name for p in params if p.default is p.empty
          and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  if need:
    raise UsageError(f"{where}: {attr}() requires arguments ({', '.join(need)}) but is called"
                     " with none; give them defaults or wrap it in a function without arguments")
  try:
    task = fn()
  except (Exception, SystemExit) as e:  # a user's function may raise anything
    raise UsageError(f"{where}: {attr}() raised {_raised(e, getattr(module, '__file__', None))}"
                     ) from None
  if not isinstance(task, Task):
    raise UsageError(f"{where}: {attr}() returned a value of type {type(task).__name__},"
                     " expected an optaxlr.Task (e.g. from optaxlr.tasks or"
                     " optaxlr.Task.from_functions)")
  try:
    task.validate(hparams)
  except ValueError as e:
    read = re.search(r"reads hyperparameter '([^']+)', which the space does not hold", str(e))
    hint = (f"; sweep it with --space {read.group(1)}=VALUES (e.g. {read.group(1)}=0.1,0.3)"
            if read and option == "--task" else "")
    raise UsageError(f"{where}: {attr}() returned a Task that fails its checks: {e}{hint}"
                     ) from None
  return task


def _check_task(args: argparse.Namespace, *, quick: bool, ranked: bool) -> None:
  """``args.task``, a built-in name or a user's ``MODULE:FUNCTION``: loads it into
  ``args.task_obj`` (and ``args.task_label``, its name in titles). ``ranked``: the command
  ranks configs by ``val/error`` or ``val/loss``, which the task must then have."""
  if args.task in TASKS:
    args.task_obj, args.task_label = make_task(args.task, quick=quick), args.task
    return
  if ":" not in args.task:
    raise UsageError(f"--task {args.task!r} is not {TASK_FORMS}")
  if getattr(args, "quick", False):
    raise UsageError(f"--quick and --task {args.task} conflict: --quick shrinks the built-in"
                     " tasks' models and does not apply to a task of your own; drop --quick")
  axes = getattr(args, "axes", None) or {}
  task = args.task_obj = load_user_task("--task", args.task, {k: v[0] for k, v in axes.items()})
  args.task_label = task.name or args.task
  if not ranked:
    return
  if "val" not in task.eval:
    raise UsageError(f"--task {args.task}: the task has no 'val' split (its eval splits:"
                     f" {', '.join(task.eval) or 'none'}); the results are ranked by val/error"
                     " or val/loss")
  import jax

  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  names = sorted(jax.eval_shape(task.metrics, params, task.eval["val"]))
  if not {"error", "loss"} & set(names):
    raise UsageError(f"--task {args.task}: the task's metrics ({', '.join(names)}) have neither"
                     " 'error' nor 'loss'; the results are ranked by val/error or val/loss")


OPTIMIZERS = {
    # name: (label, decay mode, base optimizer)
    "adam_l2": ("Adam + L2 (torch Adam weight_decay)", "l2", "adam"),
    "adamw": ("AdamW (decoupled, torch AdamW)", "decoupled", "adam"),
    "adamw_paper": ("AdamW (paper: decay x schedule multiplier)", "paper", "adam"),
    "sgd_l2": ("SGD momentum + L2 (torch SGD weight_decay)", "l2", "sgd"),
    "sgdw": ("SGDW (decoupled)", "decoupled", "sgd"),
}
SCHEDULES = ("constant", "cosine", "one_cycle", "warmup_cosine")
# The hyperparameters each base optimizer reads (see make_optimizer; every schedule reads lr).
AXES_READ = {"adam": ("lr", "wd"), "sgd": ("lr", "wd", "momentum")}


@functools.cache
def make_optimizer(name: str, schedule: str, steps: int) -> Callable:
  """``hparams -> optax transform`` for a named optimizer; hparams has lr, wd (and momentum).

  The same function for the same arguments, so that commands run again in one process (a
  notebook, a test) reuse the sweep's compiled program."""
  import optaxlr
  from optaxlr import schedules as s

  _, decay, base = OPTIMIZERS[name]

  def lr_of(h):
    if schedule == "constant":
      return s.constant(h["lr"])
    if schedule == "cosine":
      return s.cosine(h["lr"], steps)
    if schedule == "one_cycle":
      return s.one_cycle(h["lr"], steps)
    return s.warmup(s.cosine(h["lr"], steps), max(1, steps // 20))

  def build(h):
    kw = {} if decay != "paper" else {"base_lr": h["lr"]}
    if base == "adam":
      return optaxlr.adamw(lr_of(h), weight_decay=h["wd"], decay=decay, **kw)
    return optaxlr.sgd(lr_of(h), momentum=h.get("momentum", 0.9), weight_decay=h["wd"],
                       decay=decay, **kw)

  return build


# ----------------------------------------------------------------------------------------
# Usage errors and value parsing.


class UsageError(ValueError):
  """A bad option value: :func:`main` prints it as one line and exits with code 2."""


def _fail(prog: str, message: str) -> NoReturn:
  line = " ".join(str(message).split())  # one line, whatever the message held
  sys.stderr.write(f"{prog}: error: {line}\n")
  raise SystemExit(EXIT_USAGE)


class _Parser(argparse.ArgumentParser):
  """argparse, with its errors on one line (no usage block) and exit code 2."""

  def error(self, message: str) -> NoReturn:
    _fail(self.prog, f"{message} (see '{self.prog} --help')")


class _Version(argparse.Action):
  def __init__(self, option_strings, dest, **kwargs):
    super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

  def __call__(self, parser, namespace, values, option_string=None):
    import optaxlr

    print(f"optaxlr {optaxlr.__version__}")
    parser.exit(EXIT_OK)


MAX_AXIS_VALUES = 10_000
MAX_STEPS = 2**31 - 1  # step counters are int32
MAX_KEY = 2**32 - 1  # a PRNG seed is 32 bits: larger ones silently wrap around
LR_FIND_MIN_STEPS = 20  # fewer points leave the suggestions (which skip both ends) undefined
SCHEDULES_MAX_STEPS = 1_000_000
VALUES_FORMS = "'a,b,c', 'lo:hi:n' (n log-spaced values) or 'lo:hi:1-3' (the 1-3-10 grid)"


def _number(text: Any) -> float:
  try:
    v = float(text)
  except (TypeError, ValueError):
    raise ValueError(f"{text!r} is not a number") from None
  if not math.isfinite(v):
    raise ValueError(f"{text!r} is not a finite number")
  return v


def _unique_finite(vals: list[float]) -> list[float]:
  if not vals:
    raise ValueError("no values")
  if len(vals) > MAX_AXIS_VALUES:
    raise ValueError(f"{len(vals)} values, at most {MAX_AXIS_VALUES} are allowed")
  dup = sorted({v for v in vals if vals.count(v) > 1})
  if dup:
    raise ValueError(f"{dup[0]:g} is given twice (values must be distinct)")
  return vals


def _parse_values(text: str) -> list[float]:
  """"1e-4,3e-4" (a list), "1e-4:1e-1:7" (log-spaced) or "1e-4:1e-1:1-3" (the 1-3-10 grid).

  Raises ``ValueError`` with the reason (not a number, not finite, a repeated value...).

  >>> _parse_values("1e-3, 1e-2")
  [0.001, 0.01]
  >>> _parse_values("1e-3:1e-1:3")
  [0.001, 0.01, 0.1]
  >>> _parse_values("1e-3:1e-1:1-3")
  [0.001, 0.003, 0.01, 0.03, 0.1]
  """
  from optaxlr import search

  text = text.strip()
  if ":" not in text:
    items = [v.strip() for v in text.split(",")]
    if not text or any(not v for v in items):
      raise ValueError("an empty value")
    return _unique_finite([_number(v) for v in items])
  parts = [v.strip() for v in text.split(":")]
  if len(parts) != 3:
    raise ValueError(f"a range has 3 parts 'lo:hi:n', got {len(parts)}")
  lo, hi = _number(parts[0]), _number(parts[1])
  if not 0 < lo < hi:
    raise ValueError(f"a range needs 0 < lo < hi, got lo={lo:g}, hi={hi:g}")
  if parts[2] == "1-3":
    vals = search.one_three(lo, hi).tolist()
    if not vals:
      raise ValueError(f"no 1-3-10 value lies in [{lo:g}, {hi:g}]")
    return _unique_finite(vals)
  try:
    n = int(parts[2])
  except ValueError:
    raise ValueError(f"n must be an int or '1-3', got {parts[2]!r}") from None
  if not 2 <= n <= MAX_AXIS_VALUES:
    raise ValueError(f"n must be in [2, {MAX_AXIS_VALUES}], got n={n}")
  return _unique_finite(search.logspace(lo, hi, n).tolist())


def _values(text: str) -> list[float]:
  """argparse ``type=`` for a list of values (``--lr``, ``--wd``)."""
  try:
    return _parse_values(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{text!r}: {e}; expected {VALUES_FORMS}") from None


# Which values each hyperparameter axis allows: name -> (test, description).
AXIS_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "wd": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_rule(where: str, name: str, vals: list[float]) -> None:
  ok, allowed = AXIS_RULES[name]
  bad = [v for v in vals if not ok(v)]
  if bad:
    raise UsageError(f"{where} values must be {allowed}, got {bad[0]:g} in {vals}")
  big = [v for v in vals if abs(v) > FLOAT32_MAX]
  if big:
    raise UsageError(f"{where} values must be at most {FLOAT32_MAX:.6g} (float32, the dtype the "
                     f"sweep computes in), got {big[0]:g}")


def allowed_axes(optimizers: Sequence[str]) -> tuple[str, ...]:
  """The hyperparameters every one of ``optimizers`` reads (the schedules read only lr).

  >>> allowed_axes(["adamw", "sgdw"]), allowed_axes(["sgd_l2", "sgdw"])
  (('lr', 'wd'), ('lr', 'wd', 'momentum'))
  """
  read = [AXES_READ[OPTIMIZERS[o][2]] for o in optimizers]
  return tuple(a for a in read[0] if all(a in r for r in read))


def _space_axis(where: str, name: str, value: Any) -> list[float]:
  """One axis of a space file: a range string, a number, or a list of numbers."""
  try:
    if isinstance(value, str):
      return _parse_values(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return _unique_finite([_number(value)])
    if isinstance(value, list):
      if not value:
        raise ValueError("an empty list")
      for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
          raise ValueError(f"the list holds {v!r} ({type(v).__name__}), not a number")
      return _unique_finite([_number(v) for v in value])
    raise ValueError(f"{value!r} ({type(value).__name__}) is not a number, list or range")
  except ValueError as e:
    raise UsageError(f"{where}: {name}: {e}; expected a number, a list of numbers or a range"
                     f" string {VALUES_FORMS}") from None


def _read_space_file(path: str) -> dict[str, Any]:
  """The table of a TOML or YAML space file (its ``[space]`` table if it has one)."""
  where = f"--space {path}"
  p = pathlib.Path(path)
  if not p.is_file():
    raise UsageError(f"{where}: no such file" + (" (it is a folder)" if p.is_dir() else ""))
  try:
    text = p.read_text(encoding="utf-8")
  except UnicodeDecodeError:
    raise UsageError(f"{where}: not UTF-8 text; expected a TOML (or .yaml) file") from None
  except OSError as e:
    raise UsageError(f"{where}: cannot be read ({e.strerror or e})") from None
  if p.suffix in (".yaml", ".yml"):
    try:
      import yaml
    except ImportError:
      raise UsageError(f"{where}: reading YAML needs PyYAML (pip install pyyaml), or use a"
                       " .toml file") from None
    try:
      raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
      mark = getattr(e, "problem_mark", None)
      at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
      problem = getattr(e, "problem", None) or e
      raise UsageError(f"{where}: not valid YAML{at} ({problem})") from None
  else:
    try:
      raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
      raise UsageError(f"{where}: not valid TOML: {e}") from None
  if not isinstance(raw, dict):
    raise UsageError(f"{where}: expected a table of axes such as lr = [1e-3, 1e-2], got a"
                     f" {type(raw).__name__}")
  if "space" in raw:
    others = sorted(k for k in raw if k != "space")
    if not isinstance(raw["space"], dict) or others:
      raise UsageError(f"{where}: 'space' must be a table holding every axis"
                       + (f"; found other top-level keys {others}" if others else ""))
    raw = raw["space"]
  if not raw:
    raise UsageError(f"{where}: defines no axes; write e.g. lr = [1e-3, 1e-2]")
  return raw


def load_space(spec: str, optimizers: Sequence[str]
               ) -> tuple[dict[str, list[float]], list[tuple[str, str]]]:
  """The axes of one ``--space``: a TOML/YAML file, or ``NAME=VALUES`` (one axis,
  ``dropout=0.1,0.3``, values in the forms of ``--lr``), and the names among them that no chosen
  optimizer reads, with where they come from (model axes: :func:`_check_model_axes` checks
  that the task's model reads them).

  >>> load_space("dropout=0.1,0.3", ["adamw"])
  ({'dropout': [0.1, 0.3]}, [('dropout', '--space dropout=0.1,0.3')])
  """
  if "=" in spec and not pathlib.Path(spec).is_file():
    name, _, text = spec.partition("=")
    name, where = name.strip(), f"--space {spec}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
      raise UsageError(f"{where}: {name!r} is not an axis name; write NAME=VALUES, e.g. "
                       "dropout=0.1,0.3")
    raw = {name: text}
  else:
    where, raw = f"--space {spec}", _read_space_file(spec)
  return _space_axes(where, raw, optimizers)


def _space_axes(where: str, raw: dict[str, Any], optimizers: Sequence[str]
                ) -> tuple[dict[str, list[float]], list[tuple[str, str]]]:
  allowed = allowed_axes(optimizers)
  axes, model = {}, []
  for name, value in raw.items():
    if name not in allowed:
      if name in AXIS_RULES:
        readers = [o for o in OPTIMIZERS if name in AXES_READ[OPTIMIZERS[o][2]]]
        raise UsageError(f"{where}: unknown axis {name!r}; --optimizers {','.join(optimizers)}"
                         f" read only: {', '.join(allowed)} ({name} is read only by "
                         f"{', '.join(readers)})")
      model.append((name, where))
    axes[name] = _space_axis(where, name, value)
    if name in AXIS_RULES:
      _check_rule(f"{where}: {name}", name, axes[name])
  return axes, model


class _Reads(dict):
  """A dict of hyperparameters that records which names are read."""

  def __init__(self, values, seen: set[str]):
    super().__init__(values)
    self._seen = seen

  def __getitem__(self, name):
    self._seen.add(name)
    return super().__getitem__(name)

  def get(self, name, default=None):
    self._seen.add(name)
    return super().get(name, default)


def _check_model_axes(args: argparse.Namespace, model_axes: Sequence[tuple[str, str]],
                      optimizers: Sequence[str]) -> None:
  """The axes no chosen optimizer reads must be read by the task's model (a dropout rate
  through :func:`optaxlr.tasks.hparam`); checked with shapes only (``jax.eval_shape``)."""
  if not model_axes:
    return
  import jax

  task = args.task_obj
  seen: set[str] = set()
  if task.stateful:
    hp = {k: np.float32(v[0]) for k, v in args.axes.items()}
    batch = task.first_batch() if task.host_fed else task.train
    probe = {k: v[:2] for k, v in batch.items()}
    key = jax.random.PRNGKey(0)

    def reads(p, s):
      h = _Reads(hp, seen)
      return task.step_loss(p, s, probe, key, h)[0], task.evaluate(p, s, probe, h)
    jax.eval_shape(reads, jax.eval_shape(task.init, key), jax.eval_shape(task.initial_state, key))
  for name, where in model_axes:
    if name not in seen:
      raise UsageError(
          f"{where}: unknown axis {name!r}; --optimizers {','.join(optimizers)} read only: "
          f"{', '.join(allowed_axes(optimizers))}, and the model of --task {args.task} does not "
          f"read it (a model reads a swept value with optaxlr.tasks.hparam({name!r}) or a "
          f"Dropout(..., hparam={name!r}))")


def load_space_file(path: str, optimizers: Sequence[str]) -> dict[str, list[float]]:
  """The axes of a TOML/YAML space file, checked for the chosen ``optimizers``.

  An axis is a range string (``wd = "1e-5:1e-1:5"``), a number or a list of numbers
  (``lr = [1e-4, 1e-3]``); only the hyperparameters every chosen optimizer reads are allowed
  (:func:`allowed_axes`), each with the values of ``AXIS_RULES``. (``optaxlr sweep --space``
  also takes the axes a task's model reads: :func:`load_space`.)

  Raises:
    UsageError: naming the file, the axis and what is allowed.
  """
  where = f"--space {path}"
  axes, model = _space_axes(where, _read_space_file(path), optimizers)
  if model:
    raise UsageError(f"{where}: unknown axis {model[0][0]!r}; --optimizers "
                     f"{','.join(optimizers)} read only: {', '.join(allowed_axes(optimizers))}")
  return axes


def _check_int(option: str, value: int, low: int, high: int, why: str = "") -> None:
  if not low <= value <= high:
    rng = f">= {low}" if value < low and high >= MAX_STEPS else f"in [{low}, {high}]"
    raise UsageError(f"{option} must be {rng}{why}, got {value}")


def _check_out(out: str) -> None:
  """The output folder exists or can be made, and a file can be written in it."""
  if not out.strip():
    raise UsageError("--out must be a folder path, got ''")
  p = pathlib.Path(out)
  if p.exists() and not p.is_dir():
    raise UsageError(f"--out {out!r} is a file; give a folder (created if missing)")
  try:
    p.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=p, prefix=".optaxlr-write-test"):
      pass
  except OSError as e:
    raise UsageError(f"--out {out!r}: cannot write there ({e.strerror or e})") from None


def _memory_bytes() -> int | None:
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return None


def _check_record_size(runs: int, steps: int, hint: str) -> None:
  """The per-step loss record (runs x steps float32) must fit in a quarter of the memory."""
  need, mem = 4 * runs * steps, _memory_bytes()
  if mem is not None and need > mem // 4:
    raise UsageError(
        f"--steps {steps} x {runs} runs: the per-step loss record alone needs about"
        f" {need / 2**30:.1f} GiB, more than a quarter of this machine's memory"
        f" ({mem / 2**30:.0f} GiB); use fewer {hint}"
    )


def _check_batch_size(args: argparse.Namespace) -> None:
  if args.task_obj.host_fed:  # the loader's batches set the size: --batch-size must name it
    rows = {int(np.shape(v)[0]) for v in args.task_obj.first_batch().values()}
    if rows != {args.batch_size}:
      raise UsageError(f"--batch-size {args.batch_size} differs from the batches of --task "
                       f"{args.task}'s stream ({', '.join(map(str, sorted(rows)))} examples): pass "
                       f"--batch-size {max(rows)}")
    return
  n_train = args.task_obj.n_train
  if args.batch_size > n_train:
    raise UsageError(f"--batch-size must be in [1, {n_train}] (the training set size of --task"
                     f" {args.task}), got {args.batch_size}")


# ----------------------------------------------------------------------------------------
# optaxlr sweep


def _fmt_pm(mean: float, std: float, pct: bool) -> str:
  if not np.isfinite(mean):
    return "diverged"
  return f"{100 * mean:5.2f} ± {100 * std:4.2f} %" if pct else f"{mean:.4f} ± {std:.4f}"


def on_edge(res, best: dict[str, Any]) -> list[str]:
  """Where the best config sits on the edge of the grid: ``["lr=max", "wd=min", ...]``.

  Flagged: a grid axis with at least 3 values whose best value is the largest value tried
  (``"=max"``) or the smallest (``"=min"``), unless that smallest value is 0 (the floor of a
  weight decay or a momentum: there is nothing below it to try). With 2 values every value is
  an edge, so such axes are not flagged.

  >>> from types import SimpleNamespace
  >>> from optaxlr import search
  >>> res = SimpleNamespace(space=search.grid(lr=[1e-3, 1e-2, 1e-1], wd=[0.0, 1e-3, 1e-2]))
  >>> on_edge(res, {"lr": 0.1, "wd": 0.0}), on_edge(res, {"lr": 1e-3, "wd": 1e-3})
  (['lr=max'], ['lr=min'])
  """
  from optaxlr.engine import grid_edges

  return grid_edges(res.space, best)  # one rule, shared with SweepResult.best's warning


def _summary_rows(name, res) -> dict:
  metric = "val/error" if "val/error" in res.metrics else "val/loss"
  best = res.best(metric, warn=False)  # the edges are reported in the table (on_edge)
  i = best["index"]
  row = {
      "optimizer": name,
      "best": {k: v for k, v in best["hparams"].items()},
      "on_edge": on_edge(res, best["hparams"]),
      "metric": metric,
      "val": (best[metric], best[f"{metric}_std"]),
      "configs": res.num_configs,
      "seeds": int(len(res.seeds)),
      "diverged_runs": int(res.diverged.sum()),
      "diverged_configs": int(res.diverged.any(axis=0).sum()),
  }
  test = metric.replace("val/", "test/")
  if test in res.metrics:
    v = res.final(test)[:, i]
    row["test"] = (float(v.mean()), float(v.std()))
  if "val/loss" in res.metrics and metric != "val/loss":
    v = res.final("val/loss")[:, i]
    row["val_loss"] = (float(v.mean()), float(v.std()))
  w = res.winner(metric, report="test")
  row["winner"] = {
      "confidence": w.confidence, "seeds": w.seeds,
      "value": w.value, "interval": list(w.interval),
      "report": None if w.report is None else {"metric": w.report.metric,
                                               "value": w.report.value,
                                               "interval": list(w.report.interval)},
      "runner_up": w.runner_up, "gap": w.gap, "gap_interval": list(w.gap_interval),
      "p_best": w.p_best, "indistinguishable": len(w.indistinguishable),
      "sensitivity": w.sensitivity,
  }
  return row


def _fmt_iv(value: float, interval, pct: bool, *, gap: bool = False) -> str:
  """``2.33 % [2.01, 2.65]`` (a rate; a gap in points, signed) or ``0.1234 [0.1, 0.2]``."""
  if not np.isfinite(value):
    return "n/a"
  k, unit = (100, " pt" if gap else " %") if pct else (1, "")
  sign = "+" if gap else ""
  lo, hi = interval
  if not (np.isfinite(lo) and np.isfinite(hi)):
    return f"{k * value:{sign}.2f}{unit} [no interval: 1 seed]" if pct else f"{value:{sign}.4g}"
  if pct:
    return f"{k * value:{sign}.2f}{unit} [{k * lo:{sign}.2f}, {k * hi:{sign}.2f}]"
  return f"{value:{sign}.4g} [{lo:{sign}.4g}, {hi:{sign}.4g}]"


def _print_winners(rows: list[dict], pct: bool) -> None:
  """The winner of each optimizer with its interval, the paired gap to the runner-up and
  p_best (optaxlr.stats)."""
  done = [r for r in rows if not r.get("all_diverged")]
  if not done:
    return
  w0 = done[0]["winner"]
  split = "error" if pct else "loss"
  n = w0["seeds"]
  print(f"\nwinners (selected on val {split}, reported on test; {w0['confidence']:.0%}"
        f" t-intervals over {n} seed{'s' * (n != 1)}, gaps paired over seeds; p_best: the"
        " estimated probability that the winner has the best true mean, empirical Bayes over"
        " seeds):")
  for r in done:
    w = r["winner"]
    line = f"  {r['optimizer']:<12} val {_fmt_iv(w['value'], w['interval'], pct)}"
    if w["report"] is not None:
      line += f", test {_fmt_iv(w['report']['value'], w['report']['interval'], pct)}"
    print(line)
    p_best = f"{w['p_best']:.2f}" if np.isfinite(w["p_best"]) else "n/a (1 seed)"
    if w["runner_up"] is not None:
      ru = ", ".join(f"{k} {v:g}" for k, v in w["runner_up"].items())
      print(f"  {'':<12} gap to runner-up ({ru}):"
            f" {_fmt_iv(w['gap'], w['gap_interval'], pct, gap=True)}; p_best {p_best};"
            f" {w['indistinguishable']} of {r['configs']} configs indistinguishable from it")


def _diagnoses(res) -> dict[str, int]:
  from optaxlr import doctor

  return dict(doctor.diagnose(res).counts())


def cmd_sweep(args: argparse.Namespace) -> int:
  import jax

  import optaxlr
  from optaxlr import plot, search

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  task = args.task_obj
  space = search.grid(**args.axes)
  devices = jax.devices()[: args.devices] if args.devices else None
  named = f"{args.task_label!r}, " if args.task_label != args.task else ""
  size = "train(seed) batches" if task.host_fed else f"{task.n_train} train examples"
  print(f"optaxlr sweep: task={args.task} ({named}{size}), {len(space)} configs x {args.seeds} seeds x {len(args.optimizers)} optimizers,"
        f" {args.steps} steps, batch {args.batch_size}, schedule {args.schedule},"
        f" {len(devices) if devices else len(jax.devices())} device(s) [{jax.default_backend()}]")
  results, rows = {}, []
  t0 = time.perf_counter()
  for name in args.optimizers:
    res = optaxlr.sweep(
        task, make_optimizer(name, args.schedule, args.steps), space,
        steps=args.steps, batch_size=args.batch_size, seeds=args.seeds,
        eval_every=args.eval_every, key=args.key,
        execution=optaxlr.Execution(progress=not args.no_progress, devices=devices),
    )
    path = res.save(out / f"sweep_{name}.npz")
    results[name] = res
    try:
      rows.append(_summary_rows(name, res))
    except ValueError:
      rows.append({"optimizer": name, "all_diverged": True})
    rows[-1]["file"] = str(path)
    rows[-1]["compile_s"] = res.timings.compile_s
    rows[-1]["run_s"] = res.timings.run_s
    rows[-1]["diagnoses"] = _diagnoses(res)
  total = time.perf_counter() - t0

  print()
  pct = any(r.get("metric") == "val/error" for r in rows)
  head = f"{'optimizer':<12} {'best lr':>9} {'best wd':>9}  {'val error' if pct else 'val loss':<18}"
  head += f" {'test error' if pct else 'test loss':<18} {'val loss':<16} {'diverged':>9}  compile/run"
  head += "  on grid edge"
  print(head)
  print("-" * len(head))
  for r in rows:
    if r.get("all_diverged"):
      print(f"{r['optimizer']:<12} every config diverged")
      continue
    b = r["best"]
    line = f"{r['optimizer']:<12} {b['lr']:>9.1e} {b['wd']:>9.1e}  {_fmt_pm(*r['val'], pct):<18}"
    line += f" {_fmt_pm(*r['test'], pct) if 'test' in r else '-':<18}"
    line += f" {_fmt_pm(*r['val_loss'], False) if 'val_loss' in r else '-':<16}"
    line += f" {r['diverged_configs']:>3}/{r['configs']:<5}  {r['compile_s']:.1f}s/{r['run_s']:.1f}s"
    line += "  " + (", ".join(r["on_edge"]) or "-")
    print(line)
  for r in rows:
    if r.get("all_diverged"):
      continue
    others = {k: v for k, v in r["best"].items() if k not in ("lr", "wd")}
    if others:
      print(f"  best ({r['optimizer']}): " + ", ".join(f"{k}={v:g}" for k, v in others.items()))
    for edge in r["on_edge"]:
      name, side = edge.split("=")
      print(f"  best {name} ({r['optimizer']}) is the {'largest' if side == 'max' else 'smallest'}"
            f" value tried ({r['best'][name]:g}): extend the grid"
            f" {'upward' if side == 'max' else 'downward'}")
  for r in rows:
    if r.get("diagnoses"):
      found = {k: v for k, v in r["diagnoses"].items() if v}
      print(f"  diagnoses ({r['optimizer']}, runs): " + ", ".join(f"{k} {v}" for k, v in found.items()))
  print(f"\n(mean ± std over {args.seeds} seeds at the best config; 'diverged' counts configs with"
        f" any diverged seed; total {total:.1f}s)")
  _print_winners(rows, pct)

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from optaxlr import doctor

  # One panel per optimizer, on one colour range; each panel's title says what it averages
  # (seeds, and any other axis such as momentum), the figure's title is wrapped to its width.
  metric = "val/error" if pct else "val/loss"
  panels = {OPTIMIZERS[name][0]: res for name, res in results.items()}
  what = f"{args.task_label}, {args.schedule} schedule, {args.steps} steps"
  fig = plot.heatmaps(panels, "lr", "wd", metric,
                      suptitle=f"{metric} over learning rate x weight decay ({what})")
  fig_path = out / "heatmaps.png"
  fig.savefig(fig_path, dpi=110)
  plt.close(fig)
  fig = plot.atlases({label: doctor.diagnose(res) for label, res in panels.items()}, "lr", "wd",
                     suptitle=f"training doctor's diagnosis over learning rate x weight decay "
                              f"({what})")
  fig.savefig(out / "atlas.png", dpi=110)
  plt.close(fig)
  (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
  print(f"wrote {fig_path}, {out / 'atlas.png'}, {out / 'summary.json'} and {', '.join(str(r['file']) for r in rows)}")
  return EXIT_FAILED if all(r.get("all_diverged") for r in rows) else EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr schedules


def _demo_schedules(steps: int) -> dict:
  from optaxlr import schedules as s

  lr = 0.1
  return {
      "step(5 epochs, x0.5)": s.epochs(s.step(lr, 5, 0.5), max(1, steps // 30)),
      "exponential (0.98/epoch)": s.epochs(s.exponential(lr, 0.98), max(1, steps // 30)),
      "inverse_time (k=0.01)": s.inverse_time(lr, k=0.01),
      "cosine": s.cosine(lr, steps),
      "cosine_restarts (SGDR)": s.cosine_restarts(lr, max(1, steps // 7), 2),
      "cyclic (triangular2)": s.cyclic(lr / 4, lr, max(1, steps // 8), mode="triangular2"),
      "one_cycle": s.one_cycle(lr, steps),
      "warmup + multistep (Goyal)": s.warmup(
          s.multistep(lr, [steps // 2, 3 * steps // 4]), max(1, steps // 20), 0.1
      ),
      "warmup_stable_decay": s.warmup_stable_decay(lr, steps, steps // 20),
      "rsqrt": s.rsqrt(lr, max(1, steps // 20)),
  }


def _torch_curves(steps: int) -> dict[str, np.ndarray]:
  """PyTorch's schedulers for the demo schedules that have one (same settings)."""
  import torch
  from torch.optim import lr_scheduler as L

  lr = 0.1
  spe = max(1, steps // 30)
  makers = {
      "cosine": lambda o: L.CosineAnnealingLR(o, steps),
      "cosine_restarts (SGDR)": lambda o: L.CosineAnnealingWarmRestarts(o, max(1, steps // 7), 2),
      "cyclic (triangular2)": lambda o: L.CyclicLR(o, lr / 4, lr, max(1, steps // 8),
                                                   mode="triangular2", cycle_momentum=False),
      "one_cycle": lambda o: L.OneCycleLR(o, lr, total_steps=steps, cycle_momentum=False),
  }
  out = {}
  for name, make in makers.items():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    vals = []
    for _ in range(steps + 1):
      vals.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step() if len(vals) <= steps else None
    out[name] = np.asarray(vals)
  # per-epoch schedulers, stepped once per epoch and repeated over its steps
  for name, make in {
      "step(5 epochs, x0.5)": lambda o: L.StepLR(o, 5, 0.5),
      "exponential (0.98/epoch)": lambda o: L.ExponentialLR(o, 0.98),
  }.items():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    per_epoch = []
    for _ in range(steps // spe + 1):
      per_epoch.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step()
    out[name] = np.repeat(per_epoch, spe)[: steps + 1]
  return out


def cmd_schedules(args: argparse.Namespace) -> int:
  """Prints a table of the built-in schedules and draws them (beside PyTorch's with --torch)."""
  import jax.numpy as jnp

  scheds = _demo_schedules(args.steps)
  t = jnp.arange(args.steps + 1)
  cols = np.linspace(0, args.steps, 6).astype(int)
  name_w = max(len(n) for n in scheds)
  print(f"{'schedule':<{name_w}}  " + "  ".join(f"t={c:<7d}" for c in cols))
  curves = {}
  for name, sched in scheds.items():
    vals = np.asarray(sched(t))
    curves[name] = vals
    print(f"{name:<{name_w}}  " + "  ".join(f"{vals[c]:<9.3g}" for c in cols))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  torch_curves = {}
  if args.torch:
    try:
      torch_curves = _torch_curves(args.steps)
    except ImportError:
      print("optaxlr schedules: --torch needs PyTorch (pip install torch); drawing optaxlr only",
            file=sys.stderr)
  fig, axes = plt.subplots(2, 5, figsize=(18, 6), sharex=True, constrained_layout=True)
  for ax, (name, vals) in zip(axes.flat, curves.items()):
    ax.plot(np.asarray(t), vals, label="optaxlr")
    if name in torch_curves:
      # PyTorch's OneCycleLR defines steps 0..total_steps-1 only (at total_steps its anneal
      # overshoots); optaxlr holds the final rate from there on: compare where both define it.
      n = args.steps if name == "one_cycle" else len(torch_curves[name])
      ref = torch_curves[name][:n]
      ax.plot(np.asarray(t)[:n], ref, "--", color="k", lw=1, label="PyTorch")
      diff = float(np.max(np.abs(ref - np.asarray(vals)[:n])))
      note = f" (steps 0..{n - 1}; optaxlr holds the final rate after)" if name == "one_cycle" else ""
      print(f"  {name}: max |optaxlr - PyTorch| = {diff:.2e}{note}")
      ax.legend(fontsize=7)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
  axes[0, 0].set_ylabel("learning rate")
  path = out / "schedules.png"
  fig.savefig(path, dpi=100)
  print(f"wrote {path}")
  return EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr lr-find


def _lr_find_builder(name: str) -> Callable:
  """``hparams -> optax transform`` of a named optimizer for the range test (lr, wd)."""
  import optaxlr

  _, decay, base = OPTIMIZERS[name]

  def build(h):
    kw = {"base_lr": h["lr"]} if decay == "paper" else {}
    if base == "adam":
      return optaxlr.adamw(h["lr"], weight_decay=h["wd"], decay=decay, **kw)
    return optaxlr.sgd(h["lr"], momentum=0.9, weight_decay=h["wd"], decay=decay, **kw)

  return build


def cmd_lr_find(args: argparse.Namespace) -> int:
  import optaxlr
  from optaxlr import search

  task = args.task_obj
  space = search.grid(wd=args.wd)
  build = _lr_find_builder(args.optimizer)

  res = optaxlr.lr_find(task, build, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                        seeds=args.seeds, space=space, batch_size=args.batch_size)
  print(f"optaxlr lr-find: task={args.task}, optimizer={args.optimizer}, {args.steps} steps from"
        f" {args.min_lr:g} to {args.max_lr:g}, {args.seeds} seeds, weight decays {args.wd}")
  print(f"{'wd':>9}  {'recommended':>11}  {'minimum/10':>10}  {'steep':>9}  {'valley':>9}"
        f"  {'cyclic base':>11}  {'cyclic max':>10}")
  recommended = []
  for c in range(len(space)):
    sug = res.suggest(c)
    recommended.append(f"{sug['recommended']:.2e} at wd {space[c]['wd']:g}")
    print(f"{space[c]['wd']:>9.1e}  {sug['recommended']:>11.2e}  {sug['minimum']:>10.2e}"
          f"  {sug['steep']:>9.2e}  {sug['valley']:>9.2e}  {sug['base_lr']:>11.2e}"
          f"  {sug['max_lr']:>10.2e}")
  print(f"recommended learning rate: {', '.join(recommended)} (LRFindResult.suggest's choice,"
        " e.g. the peak of a one-cycle schedule)")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  fig = res.plot()
  fig.savefig(out / "lr_find.png", dpi=110)
  print(f"wrote {out / 'lr_find.png'}")
  return EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr plot / diagnose


def _load_result(command: str, path: str):
  """The sweep result at ``path``, or None after one line on stderr (exit code 1)."""
  import optaxlr

  try:
    return optaxlr.load(path)
  except (OSError, ValueError) as e:
    msg = " ".join(str(e).removeprefix("load: ").split())
    print(f"optaxlr {command}: error: cannot read the sweep result: {msg}", file=sys.stderr)
    return None


def _check_plot_names(args: argparse.Namespace, res) -> tuple[str, str | None, str | None]:
  """The metric and the heatmap's (x, y) of ``optaxlr plot``, checked against the result."""
  metric = args.metric or ("val/error" if "val/error" in res.metrics else "val/loss")
  if metric not in res.metrics:
    raise UsageError(f"--metric {metric!r} is not in {args.result}; available:"
                     f" {', '.join(sorted(res.metrics))}")
  names = list(res.hparams)
  for option, name in (("--x", args.x), ("--y", args.y)):
    if name is not None and name not in names:
      raise UsageError(f"{option} {name!r} is not a hyperparameter of {args.result}; available:"
                       f" {', '.join(names)}")
  if len(names) < 2:
    if args.x or args.y:
      raise UsageError(f"--x/--y: a heatmap needs two hyperparameters; {args.result} has only"
                       f" {', '.join(names)}")
    return metric, None, None
  x = args.x or next(n for n in names if n != args.y)
  y = args.y or next(n for n in names if n != x)
  if x == y:
    raise UsageError(f"--x and --y must differ, got {x!r} twice")
  return metric, x, y


def cmd_plot(args: argparse.Namespace) -> int:
  from optaxlr import plot

  res = _load_result(args.command, args.result)
  if res is None:
    return EXIT_FAILED
  metric, x, y = _check_plot_names(args, res)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = pathlib.Path(args.result).stem
  written = []
  if x is not None:
    fig = plot.heatmap(res, x, y, metric)
    written.append(out / f"{stem}_heatmap.png")
    fig.savefig(written[-1], dpi=110)
  fig = plot.curves(res, metric)
  written.append(out / f"{stem}_curves.png")
  fig.savefig(written[-1], dpi=110)
  print("wrote " + ", ".join(map(str, written)))
  return EXIT_OK


def cmd_diagnose(args: argparse.Namespace) -> int:
  res = _load_result(args.command, args.result)
  if res is None:
    return EXIT_FAILED
  from optaxlr import doctor

  print(doctor.format_table(doctor.diagnose(res)))
  return EXIT_OK


# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="optaxlr",
      description="Learning-rate schedules, weight decay and whole-grid sweeps as vmappable "
      "optax pieces. With no command, runs 'optaxlr sweep' (a real sweep on built-in data).",
      epilog="Exit codes: 0 success, 1 the run failed or a result file could not be read, "
      "2 bad usage (every option value is checked before anything runs).",
  )
  parser.add_argument("--version", action=_Version)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")

  p = sub.add_parser(
      "sweep", help="sweep lr x weight decay on built-in data or your own task, one compiled "
      "program per optimizer",
      description="Trains every (lr, wd) config x seed of each optimizer as ONE compiled, vmapped "
      "program, on a built-in task or on yours (--task MODULE:FUNCTION); prints the best "
      "settings and writes to --out: sweep_<optimizer>.npz (every run, read back with "
      "optaxlr.load or 'optaxlr plot'), summary.json (the table), heatmaps.png "
      "(validation error over (lr, wd), one panel per optimizer, as Figure 2 of the AdamW paper) "
      "and atlas.png (the training doctor's diagnosis per cell). A best value on the edge of "
      "a grid axis with >= 3 values (its largest value, or its smallest unless 0) is flagged in "
      "the table and in summary.json ('on_edge'): extend the grid that way. Exit codes: 0 done, "
      "1 every config diverged, 2 bad usage.",
  )
  p.add_argument("--task", default="digits", metavar="TASK", help=TASK_HELP)
  p.add_argument("--optimizers", type=lambda s: s.split(","), default=["adam_l2", "adamw"],
                 help=f"comma-separated, from {', '.join(OPTIMIZERS)} (default adam_l2,adamw)")
  p.add_argument("--lr", type=_values, default="1e-4:1e-1:1-3",
                 help="learning rates (> 0): 'a,b,c', 'lo:hi:n' (log-spaced) or 'lo:hi:1-3' "
                 "(default 1e-4:1e-1:1-3)")
  p.add_argument("--wd", type=_values, default="1e-5:1:6",
                 help="weight decays (>= 0), same forms (default 1e-5:1:6)")
  p.add_argument("--space", action="append", metavar="FILE|NAME=VALUES",
                 help="extra or overriding axes: a TOML/YAML file (e.g. lr = '1e-4:1e-2:5') or "
                 "one axis NAME=VALUES (e.g. dropout=0.1,0.3); may be repeated. Allowed: lr, "
                 "wd, momentum (in [0, 1)) when every optimizer is an SGD one, and the "
                 "hyperparameters the task's model reads (optaxlr.tasks.hparam, a Dropout with "
                 "hparam=)")
  p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="lr schedule (default cosine)")
  p.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
  p.add_argument("--batch-size", type=int, default=64,
                 help="minibatch size, at most the task's training set (default 64)")
  p.add_argument("--seeds", type=int, default=5, help="seeds per config (default 5)")
  p.add_argument("--eval-every", type=int, default=None,
                 help="evaluate every N steps, and after the last step (default: 50, or --steps "
                 "if fewer)")
  p.add_argument("--devices", type=int, default=None, help="use the first N devices (default all)")
  p.add_argument("--key", type=int, default=0, help=f"base PRNG seed in [0, {MAX_KEY}] (default 0)")
  p.add_argument("--quick", action="store_true", help="smaller models for the synthetic tasks")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_sweep, check=_check_sweep)

  p = sub.add_parser("lr-find", help="the LR range test (Smith 2017), seeds x weight decays at once")
  p.add_argument("--task", default="digits", metavar="TASK", help=TASK_HELP)
  p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw", help="default adamw")
  p.add_argument("--wd", type=_values, default="0,1e-2", help="weight decays (default 0,1e-2)")
  p.add_argument("--min-lr", type=float, default=1e-6, help="the first rate, > 0 (default 1e-6)")
  p.add_argument("--max-lr", type=float, default=10.0, help="the last rate, finite (default 10)")
  p.add_argument("--steps", type=int, default=200,
                 help=f"steps, >= {LR_FIND_MIN_STEPS} (default 200)")
  p.add_argument("--seeds", type=int, default=3, help="default 3")
  p.add_argument("--batch-size", type=int, default=64, help="default 64")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_lr_find, check=_check_lr_find)

  p = sub.add_parser("schedules", help="tabulate and plot the built-in schedules")
  p.add_argument("--steps", type=int, default=300,
                 help=f"number of steps to draw, in [30, {SCHEDULES_MAX_STEPS}] (default 300)")
  p.add_argument("--torch", action="store_true",
                 help="draw PyTorch's scheduler of the same name beside each (needs torch)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_schedules, check=_check_schedules)

  p = sub.add_parser("plot", help="heatmap and curves of a saved sweep result")
  p.add_argument("result", help="a .npz written by a sweep")
  p.add_argument("--metric", help="metric to plot (default val/error or val/loss)")
  p.add_argument("--x", help="hyperparameter on the x axis (default: the first)")
  p.add_argument("--y", help="hyperparameter on the y axis (default: the second)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_plot, check=lambda args: _check_out(args.out))

  p = sub.add_parser("diagnose", help="classify every run of a saved sweep and say what to do")
  p.add_argument("result", help="a .npz written by a sweep")
  p.set_defaults(func=cmd_diagnose, check=lambda args: None)
  _add_horizons_parser(sub)
  _add_batch_size_parser(sub)
  return parser


# ----------------------------------------------------------------------------------------
# optaxlr batch-size (issue 22): the critical batch size by branching, beside the noise scale.
# Self-contained: its parser is added by _add_batch_size_parser, its checks and command below.


def _int_list(text: str) -> list[int]:
  try:
    vals = [int(v) for v in str(text).split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
  if not vals:
    raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}")
  return vals


def _add_batch_size_parser(sub) -> None:
  p = sub.add_parser(
      "batch-size", help="the critical batch size over training by branching, beside the "
      "gradient noise scale",
      description="Trains a trunk (one learning rate, --batch-size) with snapshots at "
      "--snapshots and its final state, forks every batch size of --batch-sizes from each (the "
      "learning rate scaled by the --scaling rule), trains each child for --examples examples "
      "(one program per snapshot) and prints, per snapshot, the validation loss per batch "
      "size, the critical batch size (the largest whose loss is within --tolerance of the "
      "smallest's) and the noise scale B_simple at the snapshot; writes batch_size.json and "
      "batch_size.png (the curves and the derived batch-size schedule) to --out.")
  p.add_argument("--task", default="digits", metavar="TASK", help=TASK_HELP)
  p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgdw",
                 help="constant learning rate (default sgdw: SGD momentum 0.9)")
  p.add_argument("--lr", type=float, default=0.02, help="the trunk's learning rate (default 0.02)")
  p.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0)")
  p.add_argument("--batch-size", type=int, default=32, help="the trunk's batch size (default 32)")
  p.add_argument("--steps", type=int, default=400, help="the trunk's steps (default 400)")
  p.add_argument("--snapshots", type=_int_list, default="20,100",
                 help="trunk steps to fork at besides the last, in [1, --steps) (default 20,100)")
  p.add_argument("--batch-sizes", type=_int_list, default="8,16,32,64,128,256,512",
                 help="the children's batch sizes, increasing (default 8,16,...,512)")
  p.add_argument("--examples", type=int, default=4096,
                 help="examples per child, a multiple of every batch size (default 4096)")
  p.add_argument("--scaling", choices=("sqrt", "linear"), default="sqrt",
                 help="learning-rate rule for batch size B: lr * sqrt(B / B0) or lr * B / B0")
  p.add_argument("--tolerance", type=float, default=0.1,
                 help="relative validation-loss tolerance, > 0 (default 0.1)")
  p.add_argument("--seeds", type=int, default=1, help="seeds (default 1)")
  p.add_argument("--key", type=int, default=0, help=f"base PRNG seed in [0, {MAX_KEY}] (default 0)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_batch_size, check=_check_batch_size_cmd)


def _check_batch_size_cmd(args: argparse.Namespace) -> None:
  _check_int("--steps", args.steps, 2, MAX_STEPS)
  _check_int("--seeds", args.seeds, 1, MAX_STEPS)
  _check_int("--key", args.key, 0, MAX_KEY, " (a 32-bit PRNG seed; larger ones wrap around)")
  _check_int("--examples", args.examples, 1, MAX_STEPS)
  if not (math.isfinite(args.lr) and args.lr > 0):
    raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
  if not (math.isfinite(args.wd) and args.wd >= 0):
    raise UsageError(f"--wd must be a finite number >= 0, got {args.wd}")
  if not (math.isfinite(args.tolerance) and args.tolerance > 0):
    raise UsageError(f"--tolerance must be a finite number > 0, got {args.tolerance}")
  snaps = args.snapshots
  if sorted(set(snaps)) != snaps or not all(1 <= s < args.steps for s in snaps):
    raise UsageError(f"--snapshots must be increasing steps in [1, --steps={args.steps}), got "
                     f"{','.join(map(str, snaps))} (the last step is always one)")
  bs = args.batch_sizes
  if len(set(bs)) < 2 or sorted(set(bs)) != bs or bs[0] < 1:
    raise UsageError(f"--batch-sizes must hold at least 2 increasing sizes >= 1, got "
                     f"{','.join(map(str, bs))}")
  _check_task(args, quick=True, ranked=False)
  task = args.task_obj
  if "val" not in task.eval:
    raise UsageError(f"--task {args.task}: the task has no 'val' split; the children are "
                     "compared by val/loss")
  n = task.n_train
  for what, b in [("--batch-size", args.batch_size)] + [("--batch-sizes", b) for b in bs]:
    if not 1 <= b <= n:
      raise UsageError(f"{what}: batch size {b} is outside [1, {n}] (the task's training set "
                       f"has {n} examples)")
  off = [b for b in bs if args.examples % b or args.examples < b]
  if off:
    raise UsageError(f"--examples must be a multiple of every batch size (each child trains "
                     f"examples / B steps), got --examples {args.examples} with batch size {off[0]}")
  _check_out(args.out)


def cmd_batch_size(args: argparse.Namespace) -> int:
  import optaxlr
  from optaxlr import search

  task = args.task_obj
  build = _lr_find_builder(args.optimizer)
  eval_every = math.gcd(args.steps, *args.snapshots)
  trunk = optaxlr.sweep(task, build, search.grid(lr=[args.lr], wd=[args.wd]), steps=args.steps,
                        batch_size=args.batch_size, seeds=args.seeds, eval_every=eval_every,
                        key=args.key, execution=optaxlr.Execution(
                            progress=False, keep_params=True,
                            keep_params_at=tuple(args.snapshots)))
  cbs = optaxlr.critical_batch_size(task, build, trunk, batch_sizes=args.batch_sizes,
                                    examples=args.examples, scaling=args.scaling,
                                    tolerance=args.tolerance, key=args.key)
  print(f"optaxlr batch-size: task={args.task_label}, optimizer={args.optimizer}, trunk lr "
        f"{args.lr:g} at batch {args.batch_size} for {args.steps} steps; children: "
        f"{args.examples} examples each, {args.scaling} rule, tolerance {args.tolerance:g}")
  print(f"val/loss after {args.examples} examples per batch size, the critical batch size and "
        "the noise scale B_simple at each snapshot:")
  print(cbs.table())
  sched = ", ".join(f"B={b} from step {s}" for s, b in cbs.schedule)
  print(f"batch-size schedule (warmup): {sched or 'none (every child diverged)'}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  summary = {"steps": cbs.steps.tolist(), "batch_sizes": cbs.batch_sizes.tolist(),
             "lrs": cbs.lrs.tolist(), "loss": cbs.loss.tolist(),
             "critical": cbs.critical.tolist(), "noise_scale": cbs.noise_scale.tolist(),
             "schedule": [list(x) for x in cbs.schedule], "examples": cbs.examples,
             "tolerance": cbs.tolerance, "metric": cbs.metric, "scaling": cbs.scaling}
  (out / "batch_size.json").write_text(json.dumps(summary, indent=1) + "\n")
  fig = cbs.plot(title=f"{args.task_label}: critical batch size by branching")
  fig.savefig(out / "batch_size.png", dpi=110)
  print(f"wrote {out / 'batch_size.json'} and {out / 'batch_size.png'}")
  return EXIT_OK if np.isfinite(cbs.loss).any() else EXIT_FAILED


# ----------------------------------------------------------------------------------------
# Value checks argparse cannot express: each raises UsageError before anything runs.

def _check_sweep(args: argparse.Namespace) -> None:
  import jax

  names = args.optimizers
  if any(not o for o in names) or not names:
    raise UsageError(f"--optimizers: an empty name in {','.join(names)!r}; give comma-separated"
                     f" names from {', '.join(OPTIMIZERS)}")
  unknown = [o for o in names if o not in OPTIMIZERS]
  if unknown:
    raise UsageError(f"--optimizers: unknown {unknown}; choose from {', '.join(OPTIMIZERS)}")
  twice = sorted({o for o in names if names.count(o) > 1})
  if twice:
    raise UsageError(f"--optimizers: {twice[0]} is given twice; each optimizer runs once")
  _check_int("--steps", args.steps, 4, MAX_STEPS, " (the training doctor reads at least 4 steps)")
  _check_int("--batch-size", args.batch_size, 1, MAX_STEPS)
  _check_int("--seeds", args.seeds, 1, MAX_STEPS)
  _check_int("--key", args.key, 0, MAX_KEY, " (a 32-bit PRNG seed; larger ones wrap around)")
  if args.eval_every is None:
    args.eval_every = min(50, args.steps)
  _check_int("--eval-every", args.eval_every, 1, args.steps, " (at most --steps)")
  if args.devices is not None:
    n_dev = len(jax.devices())
    _check_int("--devices", args.devices, 1, n_dev,
               f" (this machine has {n_dev} {jax.default_backend()} device{'s' * (n_dev > 1)})")
  _check_rule("--lr", "lr", args.lr)
  _check_rule("--wd", "wd", args.wd)
  args.axes = {"lr": args.lr, "wd": args.wd}
  model_axes: list[tuple[str, str]] = []
  for spec in args.space or ():
    axes, model = load_space(spec, names)
    args.axes.update(axes)
    model_axes += model
  configs = math.prod(len(v) for v in args.axes.values())
  _check_record_size(len(names) * configs * args.seeds, args.steps,
                     "steps, seeds, optimizers or grid values")
  for name in names:
    _check_builds(f"--optimizers {name} with --schedule {args.schedule}",
                  make_optimizer(name, args.schedule, args.steps), args.axes)
  _check_task(args, quick=args.quick, ranked=True)
  _check_model_axes(args, model_axes, names)
  _check_batch_size(args)
  _check_out(args.out)


def _check_builds(what: str, build: Callable, axes: dict[str, list[float]]) -> None:
  """Builds the optimizer once per value of each axis (the others at their first value), so
  the transforms' own checks reject a bad value here rather than inside the sweep."""
  first = {k: v[0] for k, v in axes.items()}
  for name, values in axes.items():
    for v in values:
      try:
        build({**first, name: v})
      except ValueError as e:  # the transforms' checks of a value (a TypeError is a bug here)
        raise UsageError(f"{what} rejects {name}={v:g}: {e}") from None


def _check_lr_find(args: argparse.Namespace) -> None:
  for name in ("min_lr", "max_lr"):
    if not math.isfinite(getattr(args, name)):
      raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got"
                       f" {getattr(args, name)}")
    if abs(getattr(args, name)) > FLOAT32_MAX:
      raise UsageError(f"--{name.replace('_', '-')} must be at most {FLOAT32_MAX:.6g} (float32, "
                       f"the dtype the range test computes in), got {getattr(args, name):g}")
  if not 0 < args.min_lr < args.max_lr:
    raise UsageError(f"--min-lr and --max-lr must satisfy 0 < min < max, got --min-lr"
                     f" {args.min_lr:g}, --max-lr {args.max_lr:g}")
  _check_int("--steps", args.steps, LR_FIND_MIN_STEPS, MAX_STEPS,
             " (the suggestions skip the first tenth and the last 5 points)")
  _check_int("--seeds", args.seeds, 1, MAX_STEPS)
  _check_int("--batch-size", args.batch_size, 1, MAX_STEPS)
  _check_rule("--wd", "wd", args.wd)
  _check_record_size(args.seeds * len(args.wd), args.steps, "steps, seeds or weight decays")
  _check_builds(f"--optimizer {args.optimizer}", _lr_find_builder(args.optimizer),
                {"wd": args.wd, "lr": [args.min_lr, args.max_lr]})
  _check_task(args, quick=True, ranked=False)
  _check_batch_size(args)
  _check_out(args.out)


def _check_schedules(args: argparse.Namespace) -> None:
  _check_int("--steps", args.steps, 30, SCHEDULES_MAX_STEPS)
  _check_out(args.out)


# ----------------------------------------------------------------------------------------
# optaxlr horizons (every WSD horizon from one trunk: optaxlr.horizons). A self-contained
# block: its parser, check and command; build_parser calls _add_horizons_parser.

HORIZONS_OPTIMIZERS = ("adam", "sgd")


def _add_horizons_parser(sub) -> None:
  p = sub.add_parser(
      "horizons", help="loss versus training budget from one WSD trunk with cooldown branches",
      description="Trains one warmup-stable-decay trunk at a constant peak rate and forks "
      "cooldown branches off it at every horizon (--base-steps x --multiples), cooldown fraction "
      "and shape (linear to zero, cosine to --cosine-floor x the peak, 1-sqrt): each branch "
      "equals a separately trained WSD run of its horizon, at a fraction of the steps. Prints "
      "the loss-versus-budget table, the best cooldown fraction per horizon with a paired "
      "interval over seeds, linear vs cosine (Straight to Zero), the cost, and writes "
      "horizons.png and horizons.csv to --out.")
  p.add_argument("--task", default="teacher_student", metavar="TASK", help=TASK_HELP)
  p.add_argument("--optimizer", choices=HORIZONS_OPTIMIZERS, default="adam",
                 help="adam, or sgd with momentum 0.9 (default adam)")
  p.add_argument("--lr", type=_values, default="1e-3", help="peak rates (default 1e-3)")
  p.add_argument("--base-steps", type=int, default=100, help="the base budget (default 100)")
  p.add_argument("--multiples", default="1,2,4,8,16",
                 help="horizons as multiples of --base-steps (default 1,2,4,8,16)")
  p.add_argument("--fractions", default="0.1,0.2,0.4",
                 help="cooldown fractions in (0, 1) (default 0.1,0.2,0.4)")
  p.add_argument("--shapes", default="linear,cosine,1-sqrt",
                 help="cooldown shapes (default linear,cosine,1-sqrt)")
  p.add_argument("--cosine-floor", type=float, default=0.1,
                 help="the cosine's final rate as a fraction of the peak (default 0.1)")
  p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup (default 0)")
  p.add_argument("--metric", default="val/loss", help="select on this metric (default val/loss)")
  p.add_argument("--batch-size", type=int, default=64, help="default 64")
  p.add_argument("--seeds", type=int, default=3, help="default 3")
  p.add_argument("--key", type=int, default=0, help=f"base PRNG seed in [0, {MAX_KEY}] (default 0)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_horizons, check=_check_horizons)


def _horizons_optimizer(name: str) -> Callable:
  import optax

  if name == "adam":
    return optax.adam
  return lambda lr: optax.sgd(lr, momentum=0.9)


def _check_horizons(args: argparse.Namespace) -> None:
  """Every value checked (by optaxlr.horizons' own checks) before anything trains."""
  from optaxlr import branch

  def numbers(option, text, kind):
    try:
      return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
      raise UsageError(f"{option} must be comma-separated numbers, got {text!r}") from None
  _check_int("--base-steps", args.base_steps, 1, MAX_STEPS)
  _check_int("--seeds", args.seeds, 1, MAX_STEPS)
  _check_int("--key", args.key, 0, MAX_KEY)
  mults = numbers("--multiples", args.multiples, int)
  args.horizon_list = [args.base_steps * m for m in mults]
  args.fraction_list = numbers("--fractions", args.fractions, float)
  args.shape_list = [x.strip() for x in args.shapes.split(",") if x.strip()]
  _check_task(args, quick=True, ranked=False)
  try:
    branch._check("optaxlr horizons", args.task_obj, args.lr, args.horizon_list,
                  args.fraction_list, args.shape_list, args.warmup_steps, args.cosine_floor,
                  args.batch_size, None)
  except ValueError as e:
    raise UsageError(str(e).replace("optaxlr horizons: ", "")) from None
  split = args.metric.split("/")[0]
  if split not in args.task_obj.eval:
    raise UsageError(f"--metric {args.metric!r}: the task has no {split!r} split (its splits: "
                     f"{', '.join(args.task_obj.eval)})")
  _check_out(args.out)


def cmd_horizons(args: argparse.Namespace) -> int:
  """Trains the trunk and the branches, prints the table and draws horizons.png."""
  import optaxlr

  hz = optaxlr.horizons(
      args.task_obj, _horizons_optimizer(args.optimizer), peak_lr=args.lr,
      horizons=args.horizon_list, fractions=args.fraction_list, shapes=args.shape_list,
      warmup_steps=args.warmup_steps, cosine_floor=args.cosine_floor, batch_size=args.batch_size,
      seeds=args.seeds, key=args.key, execution=optaxlr.Execution(progress=not args.no_progress))
  if args.metric not in hz.values:
    raise UsageError(f"--metric {args.metric!r} is not measured; one of {sorted(hz.values)}")
  report = args.metric.replace("val/", "test/")
  report = report if report in hz.values and report != args.metric else None
  print(f"optaxlr horizons: task={args.task_label}, optimizer={args.optimizer}, horizons "
        f"{args.horizon_list}, fractions {args.fraction_list}, shapes {list(hz.shapes)}, "
        f"{args.seeds} seeds; cosine decays to {hz.cosine_floor:g} x the peak")
  cur = hz.curve(args.metric)
  for li, lr in enumerate(hz.lrs):
    print(f"\npeak lr {lr:g}: {args.metric} (mean over seeds) at the best cooldown fraction")
    print(f"{'shape':<8}" + "".join(f"  {'H=' + str(h):>16}" for h in hz.horizons))
    for ki, shape in enumerate(hz.shapes):
      cells = "".join(f"  {cur['mean'][li, hi, ki]:>9.4g} (f={cur['fraction'][li, hi, ki]:<4g})"
                      for hi in range(len(hz.horizons)))
      print(f"{shape:<8}{cells}")
  if len(hz.fractions) > 1:
    print("\nbest cooldown fraction per horizon (gap: best - runner-up, paired over seeds, 95%)")
    for row in hz.best_fractions(args.metric, report=report):
      gi = row["gap_interval"]
      print(f"  lr {row['lr']:g}  H={row['horizon']:<6d} {row['shape']:<7} f={row['fraction']:<5g}"
            f" {args.metric} {row['value']:.4g}  gap to f={row['runner_up']:g}: {row['gap']:+.3g}"
            f" [{gi[0]:+.3g}, {gi[1]:+.3g}]")
  if {"linear", "cosine"} <= set(hz.shapes) and report is not None:
    print(f"\nlinear to zero - cosine to {hz.cosine_floor:g}x (each at its best fraction on "
          f"{args.metric}), {report}, paired over seeds (95%); < 0: linear is better")
    for row in hz.compare_shapes("linear", "cosine", report, select=args.metric):
      lo, hi = row["interval"]
      verdict = "linear" if hi < 0 else "cosine" if lo > 0 else "tie"
      print(f"  lr {row['lr']:g}  H={row['horizon']:<6d} {row['diff']:+.4g} [{lo:+.3g}, {hi:+.3g}]"
            f"  {verdict}")
  print(f"\ncost: {hz.steps_spent} steps per seed (every peak rate) against "
        f"{hz.separate_steps} for separate runs ({100 * hz.cost_fraction:.0f}%)")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  hz.to_pandas().to_csv(out / "horizons.csv", index=False)
  fig = _horizons_figure(hz, args.metric)
  fig.savefig(out / "horizons.png", dpi=110)
  print(f"wrote {out / 'horizons.png'} and {out / 'horizons.csv'}")
  return EXIT_OK


def _horizons_figure(hz, metric: str):
  """Three panels: the metric versus the budget per shape (best fraction, mean over seeds);
  each shape minus the first, paired over seeds with its 95% interval (the seeds' own spread
  cancels, so this is where shapes are told apart); the metric versus the cooldown fraction,
  one line per horizon (the first shape and peak rate)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from optaxlr import stats

  cur = hz.curve(metric)
  fig, (a, d, b) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
  ticks = [int(h) for h in hz.horizons]
  for li, lr in enumerate(hz.lrs):
    for ki, shape in enumerate(hz.shapes):
      label = shape + (f" (to {hz.cosine_floor:g}x)" if shape == "cosine" else "") + (
          f", lr {lr:g}" if len(hz.lrs) > 1 else "")
      a.plot(hz.horizons, cur["mean"][li, :, ki], "o-", label=label)
      if ki:
        m, lo, hi = stats.paired_interval(cur["per_seed"][:, li, :, ki], cur["per_seed"][:, li, :, 0])
        line, = d.plot(hz.horizons, m, "o-", label=f"{label} - {hz.shapes[0]}")
        if np.isfinite(lo).all():
          d.fill_between(hz.horizons, lo, hi, color=line.get_color(), alpha=0.2)
  for ax in (a, d):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("training budget H (steps)")
    ax.legend(fontsize=8)
  a.set_ylabel(f"{metric} (best cooldown fraction, mean)")
  a.set_title("loss versus budget, every H from one trunk")
  d.axhline(0.0, color="k", lw=0.8)
  d.set_ylabel(f"paired difference of {metric}")
  d.set_title(f"shape - {hz.shapes[0]}, 95% interval over {len(hz.seeds)} seeds")
  v = hz.values[metric].mean(axis=0)  # (L, N, F, K)
  for hi, h in enumerate(hz.horizons):
    b.plot(hz.fractions, v[0, hi, :, 0], "o-", label=f"H={h}")
  b.set_xlabel("cooldown fraction f")
  b.set_ylabel(f"{metric} (mean)")
  b.set_title(f"{hz.shapes[0]} cooldown, lr {hz.lrs[0]:g}: by fraction")
  b.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

  Bad usage raises ``SystemExit(2)`` after one line on stderr.
  """
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
    argv = ["sweep", *argv]
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return EXIT_USAGE
  try:
    args.check(args)
    return args.func(args)
  except UsageError as e:
    _fail(f"optaxlr {args.command}", str(e))


if __name__ == "__main__":
  sys.exit(main())
