"""Stop and feedback rules of the training core: small pure state machines, composed as data.

A rule watches every step (``level="step"``: the minibatch loss, the candidate parameters and
optimizer state) or every evaluation (``level="eval"``: the evaluated metrics) of one config,
carries a small state of scalars (vmapped over seeds x configs by the core), and returns a
*stop code*: 0 to go on, or the code of its reason in :data:`STOP_REASONS`. Numbers a rule
reads at run time (``smooth``, ``diverge``) are passed as data (``args``), so changing them
does not recompile; settings that shape the program (a metric's name, a mode) are static.

Semantics of a stop, the same for every rule and every driver:

* a step rule (and the always-on non-finite check of the loss) that stops a run at step ``t``
  discards that step's update: the run is frozen with the parameters after ``t`` steps (those
  that gave the non-finite loss), ``stopped_at = t``;
* an evaluation rule (and the always-on non-finite check of the parameters) that stops a run
  after ``t`` steps freezes it there, ``stopped_at = t``.

So ``stopped_at`` is always the number of updates the run received, and ``stop_reason`` says
why it stopped; ``diverged_at`` is ``stopped_at`` of the runs stopped for non-finite values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxlr.transforms import _plateau

__all__ = [
    "STOP_REASONS",
    "reason_code",
    "stop_reasons",
    "StepContext",
    "EvalContext",
    "Rule",
    "EarlyStop",
    "RangeTest",
    "PlateauDone",
]

PyTree = Any

STOP_REASONS: tuple[str, ...] = (
    "completed",  # ran every step (code 0: also "still running" inside the program)
    "diverged",  # a loss, a parameter or a tracked value turned non-finite
    "early_stopping",  # EarlyStop: the monitored metric stopped improving
    "range_test",  # the range test's smoothed loss exceeded diverge x its best
    "plateau_done",  # reduce_on_plateau can reduce no further (its ``done`` flag)
    "host",  # stopped between chunks by the host (a callback's Control, adaptive search)
    "not_run",  # the sweep was stopped before this run started
)


_REASONS: list[str] = list(STOP_REASONS)


def stop_reasons() -> tuple[str, ...]:
  """Every stop reason known now: :data:`STOP_REASONS` and those of user rules (a
  :class:`Rule` subclass with a new ``reason`` registers it when defined), by code."""
  return tuple(_REASONS)


def reason_code(name: str) -> int:
  """The code of stop reason ``name`` (what the program stores), see :func:`stop_reasons`."""
  try:
    return _REASONS.index(name)
  except ValueError:
    raise ValueError(f"reason_code: unknown stop reason {name!r}; known: {_REASONS}") from None


class StepContext(NamedTuple):
  """What a step rule sees for one config at step ``step``."""

  step: jax.Array  # int32: the index of this step (= updates received before it)
  loss: jax.Array  # the minibatch loss of the parameters before the update
  params: PyTree  # the parameters after the update (not yet accepted)
  opt_state: PyTree  # the optimizer state after the update (not yet accepted)


class EvalContext(NamedTuple):
  """What an evaluation rule sees for one config after ``step`` updates."""

  step: jax.Array  # int32: updates received
  metrics: dict[str, jax.Array]  # "split/name" -> scalar
  params: PyTree
  opt_state: PyTree


class Rule:
  """Base of the core's rules. Subclasses are frozen dataclasses declared with ``eq=False``
  and override ``init``/``update``. The fields named in ``data`` are numbers read at run time:
  :meth:`args` passes them to the program as data, and they are left out of the rule's
  identity (``==`` and ``hash``, part of the compiled program's), so changing them reuses the
  compiled program; every other field is structure."""

  level: ClassVar[str] = "step"
  reason: ClassVar[str] = "completed"
  records: ClassVar[tuple[str, ...]] = ()  # per-point values the rule reports
  data: ClassVar[tuple[str, ...]] = ()  # fields passed as data (not compiled in)

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    reason = cls.__dict__.get("reason")
    if isinstance(reason, str) and reason not in _REASONS:
      _REASONS.append(reason)  # the stop reasons are an extensible enumeration

  def _structure(self) -> tuple:
    fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
    return (type(self), tuple((f.name, getattr(self, f.name)) for f in fields
                              if f.name not in self.data))

  def __eq__(self, other):
    return isinstance(other, Rule) and self._structure() == other._structure()

  def __hash__(self):
    return hash(self._structure())

  def args(self) -> PyTree:
    """Numbers read at run time, passed to the program as data (the ``data`` fields)."""
    return {name: getattr(self, name) for name in self.data}

  def validate(self, metrics: tuple[str, ...]) -> None:
    """Host-side checks against the evaluated metric names (before anything compiles)."""
    del metrics

  def init(self, args: PyTree, dtype: Any) -> PyTree:
    del args, dtype
    return ()

  def update(self, state: PyTree, ctx: Any, args: PyTree) -> tuple[PyTree, jax.Array, dict]:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class EarlyStop(Rule):
  """Per-config early stopping on an evaluated metric, Keras ``EarlyStopping`` rules.

  The rule *is* :func:`optaxlr.transforms.early_stopping` (the version tested against Keras)
  run per config at every evaluation: a config whose ``metric`` has not improved by more than
  ``min_delta`` for ``patience`` evaluations is frozen (its parameters stop changing) and
  marked ``stop_reason="early_stopping"`` at that step. ``mode="max"`` for accuracies.

  Examples:
    >>> stop = EarlyStop(metric="val/accuracy", patience=3, mode="max")
    >>> stop.patience
    3
  """

  level: ClassVar[str] = "eval"
  reason: ClassVar[str] = "early_stopping"
  data: ClassVar[tuple[str, ...]] = ("patience", "min_delta", "start_from")

  metric: str = "val/loss"
  patience: int = 5
  min_delta: float = 0.0
  mode: str = "min"
  start_from: int = 0

  def validate(self, metrics: tuple[str, ...]) -> None:
    if self.mode not in ("min", "max"):
      raise ValueError(f"EarlyStop: mode must be 'min' or 'max', got mode={self.mode!r}")
    for name in ("patience", "start_from"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "patience" else 0):
        low = 1 if name == "patience" else 0
        raise ValueError(f"EarlyStop: {name} must be an int >= {low}, got {name}={v!r}")
    if self.metric not in metrics:
      raise ValueError(
          f"EarlyStop: metric={self.metric!r} is not an evaluated metric; available: {sorted(metrics)}"
      )
    self._machine(self.args())  # its own validation of min_delta

  def _machine(self, args):
    # patience, min_delta and start_from arrive as data (possibly traced): not compiled in.
    return _plateau.early_stopping(patience=args["patience"], min_delta=args["min_delta"],
                                   mode=self.mode, start_from=args["start_from"])

  def init(self, args, dtype):
    del dtype
    return self._machine(args).init()

  def update(self, state, ctx: EvalContext, args):
    state = self._machine(args).update(state, ctx.metrics[self.metric])
    return state, jnp.where(state.stop, reason_code(self.reason), 0), {}


class _RangeState(NamedTuple):
  avg: jax.Array  # the smoothed value at the last point
  best: jax.Array  # the lowest smoothed value so far
  count: jax.Array  # points seen (int32)


@dataclasses.dataclass(frozen=True, eq=False)
class RangeTest(Rule):
  """The LR range test's stop, pytorch-lr-finder's rule: smooth the tracked loss
  (``s_0 = l_0``, ``s_t = smooth * l_t + (1 - smooth) * s_{t-1}``), keep its minimum, stop when
  ``s_t > diverge * best`` (reason ``"range_test"``) or when ``l_t`` or ``s_t`` is not finite
  (reason ``"diverged"``). ``metric=None`` tracks the training minibatch loss at every step;
  ``"val/loss"`` (any evaluated metric) tracks it at every evaluation. ``smooth`` and
  ``diverge`` are data: changing them does not recompile. Records ``raw`` and ``smoothed``."""

  records: ClassVar[tuple[str, ...]] = ("raw", "smoothed")
  reason: ClassVar[str] = "range_test"
  data: ClassVar[tuple[str, ...]] = ("smooth", "diverge")

  smooth: float = 0.05
  diverge: float = 4.0
  metric: str | None = None

  @property
  def level(self) -> str:  # type: ignore[override]
    return "step" if self.metric is None else "eval"

  def validate(self, metrics: tuple[str, ...]) -> None:
    if self.metric is not None and self.metric not in metrics:
      raise ValueError(
          f"RangeTest: metric={self.metric!r} is not an evaluated metric; available: {sorted(metrics)}"
      )

  def init(self, args, dtype):
    del args
    return _RangeState(jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype), jnp.zeros((), jnp.int32))

  def update(self, state: _RangeState, ctx, args):
    value = ctx.loss if self.metric is None else ctx.metrics[self.metric]
    value = value.astype(state.avg.dtype)
    smooth, diverge = args["smooth"], args["diverge"]
    first = state.count == 0
    ema = smooth * value + (1 - smooth) * state.avg
    s = jnp.where(first | (smooth == 0), value, ema)
    best = jnp.where(first, s, jnp.minimum(state.best, s))
    finite = jnp.isfinite(value) & jnp.isfinite(s)
    code = jnp.where(~finite, reason_code("diverged"),
                     jnp.where(s > diverge * best, reason_code(self.reason), 0))
    new = _RangeState(avg=s, best=jnp.where(finite, best, state.best),
                      count=optax.safe_increment(state.count))
    return new, code, {"raw": value, "smoothed": s}


def _plateau_states(tree: PyTree) -> list:
  found = []

  def visit(x):
    if isinstance(x, _plateau.ReduceOnPlateauState):
      found.append(x)
    return x

  jax.tree.map(visit, tree, is_leaf=lambda x: isinstance(x, _plateau.ReduceOnPlateauState))
  return found


@dataclasses.dataclass(frozen=True, eq=False)
class PlateauDone(Rule):
  """Stops a config once every :func:`optaxlr.reduce_on_plateau` in its optimizer is ``done``
  (its scale can fall no further), at the step that fed it the evaluation that made it so:
  as PyTorch's ``val = validate(); scheduler.step(val); if done: break``."""

  reason: ClassVar[str] = "plateau_done"

  def update(self, state, ctx: StepContext, args):
    del args
    found = _plateau_states(ctx.opt_state)
    done = jnp.all(jnp.stack([jnp.asarray(s.done) for s in found])) if found else jnp.array(False)
    return state, jnp.where(done, reason_code(self.reason), 0), {}


def has_plateau(opt_state_shape: PyTree) -> bool:
  return bool(_plateau_states(opt_state_shape))
