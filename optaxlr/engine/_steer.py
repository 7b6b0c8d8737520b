"""Steering between chunks: what the host tells a callback (:class:`ChunkEvent`), what a callback
may answer (:class:`Control`), and how an answer is applied to the program's carry without
recompiling. Adaptive strategies (:mod:`optaxlr.adapt`) speak the same protocol."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from optaxlr.engine import _rules

__all__ = ["ChunkEvent", "Control", "apply_control", "make_event", "encode_steering",
           "decode_steering"]


@dataclasses.dataclass(frozen=True)
class ChunkEvent:
  """What the host loop tells a callback after each chunk (for the configs of one group).

  Indices in ``configs`` are global config indices; arrays have axes ``(seed, config)`` over
  ``configs``. Dict-style access (``event["step"]``) works as well.

  Attributes:
    group: the group of configs being trained.
    chunk: the chunk just finished within the group.
    step: updates received so far by a run that never stopped.
    configs: the global indices of the configs in the program's slots, a tuple (in slot
      order; after adaptive search compacted the program, only the live ones).
    hparams: name -> ``(n,)`` the hyperparameters each slot trains with now (after steering).
    metrics: name -> ``(S, n)`` at the latest evaluation (NaN for diverged runs).
    history: name -> ``(S, n, E)`` every evaluation so far; ``eval_steps`` their steps.
    eval_steps: ``(E,)``.
    alive: ``(S, n)`` bool; ``stopped_at``, ``diverged_at``: ``(S, n)`` (-1: not stopped);
    stop_reason: ``(S, n)`` strings from :data:`optaxlr.engine.STOP_REASONS`.
    train_loss: ``(S, n, L)`` the training (minibatch) loss recorded so far: one value per
      step, or means over windows of ``log_every`` steps (NaN after a run stopped);
      ``train_steps``: ``(L,)`` the updates done when each window ended (entry ``j`` of a
      per-step record is the loss of the batch of update ``j + 1``, before that update).
  """

  group: int
  chunk: int
  step: int
  configs: tuple
  hparams: dict
  metrics: dict
  history: dict
  eval_steps: np.ndarray
  alive: np.ndarray
  stopped_at: np.ndarray
  diverged_at: np.ndarray
  stop_reason: np.ndarray
  train_loss: np.ndarray | None = None
  train_steps: np.ndarray | None = None

  def __getitem__(self, name: str) -> Any:
    return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class Control:
  """What a callback may return to steer the sweep between chunks, without recompiling.

  Applied in this order: ``copy``, then ``set_hparams``, then ``stop``, then ``stop_sweep``.
  Config indices are global and must lie in the event's group.

  Attributes:
    stop: configs to stop now (every seed), reason ``"host"``.
    set_hparams: ``{config: {name: value}}``: the slot trains with these values from now on.
    copy: ``{dst: src}``: slot ``dst`` takes ``src``'s parameters, optimizer state, rule
      states and status (every seed), e.g. population-based training's exploit step.
    stop_sweep: end the whole sweep after this chunk (what was not run stays NaN).
  """

  stop: Sequence[int] = ()
  set_hparams: Mapping[int, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  copy: Mapping[int, int] = dataclasses.field(default_factory=dict)
  stop_sweep: bool = False


def make_event(g: int, c: int, step: int, slots: np.ndarray, alive: np.ndarray, rec,
               e_now: int) -> ChunkEvent:
  """The event of chunk ``c`` of group ``g`` from the recorder's host buffers."""
  valid = np.flatnonzero(slots >= 0)
  ids = slots[valid]
  reason = rec.reason[:, ids]
  plan = rec.plan
  done = step - plan.start_step
  w_now = -(-done // plan.log_every)
  return ChunkEvent(
      group=g, chunk=c, step=step, configs=tuple(int(i) for i in ids),
      hparams={k: v[ids].copy() for k, v in rec.hp_now.items()},
      metrics={k: v[:, ids, e_now - 1].copy() for k, v in rec.metrics.items()},
      history={k: v[:, ids, :e_now].copy() for k, v in rec.metrics.items()},
      eval_steps=rec.eval_steps[:e_now],
      alive=alive[:, valid].copy(), stopped_at=rec.stopped_at[:, ids].copy(),
      diverged_at=np.where(reason == _rules.reason_code("diverged"), rec.stopped_at[:, ids], -1),
      stop_reason=np.asarray(_rules.stop_reasons(), dtype=object)[reason],
      train_loss=rec.loss[:, ids, :w_now].copy(),
      train_steps=plan.start_step + np.minimum((np.arange(w_now) + 1) * plan.log_every, plan.steps),
  )


def encode_steering(logs: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """Steering decisions as bytes for a checkpoint (JSON: ints, floats, lists, dicts)."""
  return np.frombuffer(json.dumps(list(logs), sort_keys=True).encode(), np.uint8)


def decode_steering(data: np.ndarray) -> list[dict]:
  """The decisions :func:`encode_steering` wrote (JSON object keys back to config ints)."""
  try:
    logs = json.loads(bytes(np.asarray(data, np.uint8)).decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError("the checkpoint's steering log is not JSON (written by an older optaxlr?): "
                     f"{type(e).__name__}: {e}") from None
  out = []
  for log in logs:
    log = dict(log)
    log["copy"] = {int(k): int(v) for k, v in log.get("copy", {}).items()}
    log["set_hparams"] = {int(k): dict(v) for k, v in log.get("set_hparams", {}).items()}
    out.append(log)
  return out


def apply_control(fn, prog, ctrl: Control, carry, hp_g_np, slots, step):
  """Applies ``ctrl`` to the group's carry (copy, then set_hparams, then stop); returns the
  carry, the hyperparameters per slot and the decision's log (``None`` when nothing changed)."""
  where = {int(c): j for j, c in enumerate(slots) if c >= 0}
  n = len(where)

  def slot(i, what):
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or int(i) not in where:
      raise ValueError(f"{fn}: Control.{what} names config {i!r}, outside the current group "
                       f"(configs {sorted(where)[:8]}{'...' if n > 8 else ''})")
    return where[int(i)]

  size = len(slots)
  src = np.arange(size)
  for dst, s in dict(ctrl.copy).items():
    src[slot(dst, "copy")] = slot(s, "copy")
  stop = np.zeros(size, bool)
  stop_list = np.asarray(ctrl.stop)
  if stop_list.dtype == bool:
    if stop_list.shape != (n,):
      raise ValueError(f"{fn}: Control.stop as a mask must have shape ({n},) (the event's "
                       f"configs), got {stop_list.shape}")
    stop[np.flatnonzero(slots >= 0)[stop_list]] = True
  else:
    for i in stop_list.tolist():
      stop[slot(i, "stop")] = True
  hp = {k: v.copy() for k, v in hp_g_np.items()}
  for dst, s in dict(ctrl.copy).items():
    for k in hp:
      hp[k][slot(dst, "copy")] = hp_g_np[k][slot(s, "copy")]
  for i, values in dict(ctrl.set_hparams).items():
    j = slot(i, "set_hparams")
    for k, v in dict(values).items():
      if k not in hp:
        raise ValueError(f"{fn}: Control.set_hparams sets {k!r}, not a hyperparameter of the "
                         f"space; allowed: {sorted(hp)}")
      v = np.asarray(v)
      if v.dtype.kind not in "biuf" or v.dtype == bool or (v.dtype.kind == "f" and not np.isfinite(v).all()):
        raise ValueError(f"{fn}: Control.set_hparams sets {k}={v!r} for config {i}: not a finite"
                         " number (a categorical axis takes the index of its value)")
      # The space's own checks (a learning rate > 0, finite in the sweep's dtype...), on the
      # value as the sweep will hold it.
      from optaxlr.engine._engine import check_hparams

      check_hparams(f"{fn}: Control.set_hparams for config {i}",
                    {k: v.reshape(1).astype(np.result_type(v.dtype, hp[k].dtype))}, 1)
      hp[k][j] = v.astype(hp[k].dtype)
  changed = bool(ctrl.copy or ctrl.set_hparams or stop.any())
  if not changed:
    return carry, hp_g_np, None
  carry = prog.steer(carry, jnp.asarray(src), jnp.asarray(stop), jnp.int32(step))
  log = {"step": int(step), "copy": {int(k): int(v) for k, v in dict(ctrl.copy).items()},
         "set_hparams": {int(k): {kk: float(vv) for kk, vv in dict(v).items()}
                         for k, v in dict(ctrl.set_hparams).items()},
         "stop": [int(slots[j]) for j in np.flatnonzero(stop)]}
  return carry, hp, log
