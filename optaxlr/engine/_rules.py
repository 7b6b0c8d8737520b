"""Stop and feedback rules of the training core: small pure state machines, composed as data.

A rule watches every step (``level="step"``: the minibatch loss, the candidate parameters and
optimizer state) or every evaluation (``level="eval"``: the evaluated metrics) of one config,
carries a small state of scalars (vmapped over seeds x configs by the core), and returns a
*stop code*: 0 to go on, or the code of its reason in :data:`STOP_REASONS`. Numbers a rule
reads at run time (``smooth``, ``diverge``) are passed as data (``args``), so changing them
does not recompile; settings that shape the program (a metric's name, a mode) are static.

Semantics of a stop, the same for every rule and every driver:

* a step rule (and the always-on non-finite check) that stops a run at step ``t`` discards that
  step's update: the run is frozen with the parameters after ``t`` steps, ``stopped_at = t``;
* an evaluation rule that stops a run after ``t`` steps freezes it there, ``stopped_at = t``.

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


def reason_code(name: str) -> int:
  return STOP_REASONS.index(name)


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
  """Base of the core's rules. Subclasses are frozen dataclasses (hashable: part of the
  compiled program's identity) and override ``init``/``update``."""

  level: ClassVar[str] = "step"
  reason: ClassVar[str] = "completed"
  records: ClassVar[tuple[str, ...]] = ()  # per-point values the rule reports

  def args(self) -> PyTree:
    """Numbers read at run time, passed to the program as data."""
    return ()

  def validate(self, metrics: tuple[str, ...]) -> None:
    """Host-side checks against the evaluated metric names (before anything compiles)."""
    del metrics

  def init(self, args: PyTree, dtype: Any) -> PyTree:
    del args, dtype
    return ()

  def update(self, state: PyTree, ctx: Any, args: PyTree) -> tuple[PyTree, jax.Array, dict]:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
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
    self._machine()  # its own validation of min_delta

  def _machine(self):
    return _plateau.early_stopping(
        patience=self.patience, min_delta=self.min_delta, mode=self.mode, start_from=self.start_from
    )

  def init(self, args, dtype):
    del args, dtype
    return self._machine().init()

  def update(self, state, ctx: EvalContext, args):
    del args
    state = self._machine().update(state, ctx.metrics[self.metric])
    return state, jnp.where(state.stop, reason_code(self.reason), 0), {}


class _RangeState(NamedTuple):
  avg: jax.Array  # the smoothed value at the last point
  best: jax.Array  # the lowest smoothed value so far
  count: jax.Array  # points seen (int32)


@dataclasses.dataclass(frozen=True)
class RangeTest(Rule):
  """The LR range test's stop, pytorch-lr-finder's rule: smooth the tracked loss
  (``s_0 = l_0``, ``s_t = smooth * l_t + (1 - smooth) * s_{t-1}``), keep its minimum, stop when
  ``s_t > diverge * best`` (reason ``"range_test"``) or when ``l_t`` or ``s_t`` is not finite
  (reason ``"diverged"``). ``metric=None`` tracks the training minibatch loss at every step;
  ``"val/loss"`` (any evaluated metric) tracks it at every evaluation. ``smooth`` and
  ``diverge`` are data: changing them does not recompile. Records ``raw`` and ``smoothed``."""

  records: ClassVar[tuple[str, ...]] = ("raw", "smoothed")
  reason: ClassVar[str] = "range_test"

  smooth: float = 0.05
  diverge: float = 4.0
  metric: str | None = None

  @property
  def level(self) -> str:  # type: ignore[override]
    return "step" if self.metric is None else "eval"

  def __hash__(self):  # the numbers are data: only the structure identifies the program
    return hash((RangeTest, self.metric))

  def __eq__(self, other):
    return isinstance(other, RangeTest) and other.metric == self.metric

  def validate(self, metrics: tuple[str, ...]) -> None:
    if self.metric is not None and self.metric not in metrics:
      raise ValueError(
          f"RangeTest: metric={self.metric!r} is not an evaluated metric; available: {sorted(metrics)}"
      )

  def args(self):
    return {"smooth": self.smooth, "diverge": self.diverge}

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


@dataclasses.dataclass(frozen=True)
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
