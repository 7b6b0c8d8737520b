"""Recording: a typed record of one chunk (:class:`ChunkRecord`, from the program or from a
checkpoint) and the host buffers it is written into (:class:`Recorder`), from which the
sweep's result is assembled. The checkpoint's file format (flat named arrays) is written and
read here only."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import numpy as np

from optaxlr.engine import _core
from optaxlr.engine import _rules
from optaxlr.engine._steer import decode_steering, encode_steering

__all__ = ["ChunkRecord", "Recorder", "flatten_state", "unflatten_state"]


@dataclasses.dataclass
class ChunkRecord:
  """What one chunk of a group produced, for the configs in its slots (axes ``(S, n, ...)``).

  Attributes:
    slots: ``(n,)`` the config trained in each slot (-1: padding).
    loss: ``(S, n, windows)`` the training loss (means over ``log_every`` steps).
    stopped_at, reason: ``(S, n)`` the status after the chunk (and after steering).
    hparams: name -> ``(n,)`` the values each slot trained with (after steering).
    metrics: ``"split/name"`` -> ``(S, n, evaluations)``.
    step_records, eval_records: the rules' records, ``"rule_i/name"`` -> ``(S, n, points)``.
    ratio: ``(S, n, evaluations)`` the update/weight ratio, or ``None``.
    noise: ``(S, n, evaluations, 2)`` the noise scale's two-batch statistics, or ``None``.
    steering: the decisions applied after this chunk (dicts of ints and floats).
    kept: ``(config ids, leaves)`` of the final (params, opt_state, model_state) when the
      group ended and the sweep keeps them.
    host_state: a steering strategy's state after this chunk's decision (JSON-able).
  """

  slots: np.ndarray
  loss: np.ndarray
  stopped_at: np.ndarray
  reason: np.ndarray
  hparams: dict
  metrics: dict
  step_records: dict
  eval_records: dict
  ratio: np.ndarray | None = None
  steering: list = dataclasses.field(default_factory=list)
  kept: tuple | None = None
  host_state: dict | None = None
  noise: np.ndarray | None = None

  @classmethod
  def from_program(cls, out, carry, slots: np.ndarray, hparams: dict) -> "ChunkRecord":
    return cls(
        slots=slots.copy(), loss=_core.to_host(out.loss),
        stopped_at=_core.to_host(carry.stopped_at).astype(np.int64),
        reason=_core.to_host(carry.reason).astype(np.int64),
        hparams={k: np.asarray(v) for k, v in hparams.items()},
        metrics={k: _core.to_host(v) for k, v in out.metrics.items()},
        step_records={k: _core.to_host(v) for k, v in out.step_records.items()},
        eval_records={k: _core.to_host(v) for k, v in out.eval_records.items()},
        ratio=None if out.ratio is None else _core.to_host(out.ratio),
        noise=_core.to_host(out.noise) if isinstance(out.noise, jax.Array) else None)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The checkpoint's file format: flat named arrays."""
    arrays = {"loss": self.loss, "stopped_at": self.stopped_at, "reason": self.reason,
              "slots": self.slots,
              **{f"metric:{k}": v for k, v in self.metrics.items()},
              **{f"srec:{k}": v for k, v in self.step_records.items()},
              **{f"erec:{k}": v for k, v in self.eval_records.items()},
              **{f"hp:{k}": v for k, v in self.hparams.items()}}
    if self.ratio is not None:
      arrays["ratio"] = self.ratio
    if self.noise is not None:
      arrays["noise"] = self.noise
    if self.steering:
      arrays["steering"] = encode_steering(self.steering)
    if self.host_state is not None:
      arrays["host_state"] = np.frombuffer(json.dumps(self.host_state).encode(), np.uint8)
    if self.kept is not None:
      ids, leaves = self.kept
      arrays.update({f"param:{i}": x for i, x in enumerate(leaves)})
      arrays["param:count"] = np.asarray(len(leaves))
      arrays["param:slots"] = np.asarray(ids)
    return arrays

  @classmethod
  def from_arrays(cls, arrays) -> "ChunkRecord":
    def part(prefix):
      return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    kept = None
    if "param:count" in arrays:
      kept = (arrays["param:slots"], [arrays[f"param:{i}"] for i in range(int(arrays["param:count"]))])
    steering = decode_steering(arrays["steering"]) if "steering" in arrays else []
    host_state = None
    if "host_state" in arrays:
      host_state = json.loads(bytes(np.asarray(arrays["host_state"], np.uint8)).decode())
    return cls(slots=arrays["slots"], loss=arrays["loss"], stopped_at=arrays["stopped_at"],
               reason=arrays["reason"], hparams=part("hp:"), metrics=part("metric:"),
               step_records=part("srec:"), eval_records=part("erec:"),
               ratio=arrays.get("ratio"), steering=steering, kept=kept, host_state=host_state,
               noise=arrays.get("noise"))


def flatten_state(carry, hparams: dict, slots: np.ndarray) -> dict[str, np.ndarray]:
  """A group's live state for a checkpoint (its carry's leaves, hyperparameters, slots)."""
  return {**{f"s{i}": _core.to_host(x) for i, x in enumerate(jax.tree.leaves(carry))},
          **{f"hp:{k}": v for k, v in hparams.items()}, "slots": slots}


def unflatten_state(state: dict, like, where: str):
  """The carry of a checkpoint's state, checked against the program's (``like``)."""
  leaves = [state[f"s{i}"] for i in range(len(jax.tree.leaves(like)))]
  for a, b in zip(leaves, jax.tree.leaves(like)):
    if a.shape != b.shape or a.dtype != b.dtype:
      raise ValueError(f"{where}: its state does not fit this sweep ({a.shape} {a.dtype} vs "
                       f"{b.shape} {b.dtype})")
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


class Recorder:
  """The host buffers of a sweep: every chunk's record placed by config, then the result."""

  def __init__(self, plan, n_s: int, n_cfg: int, chunk_steps: int, blocks: int, fdtype):
    self.plan, self.n_s, self.n_cfg, self.fdtype = plan, n_s, n_cfg, fdtype
    self.steps, self.chunk_steps, self.blocks = plan.steps, chunk_steps, blocks
    self.n_evals = math.ceil(plan.steps / plan.eval_every)
    self.n_log = math.ceil(plan.steps / plan.log_every)
    self.eval_steps = plan.start_step + np.minimum(
        (np.arange(self.n_evals) + 1) * plan.eval_every, plan.steps)
    self.loss = np.full((n_s, n_cfg, self.n_log), np.nan, fdtype)
    self.metrics: dict[str, np.ndarray] = {}
    self.step_records: dict[str, np.ndarray] = {}
    self.eval_records: dict[str, np.ndarray] = {}
    self.ratio = np.full((n_s, n_cfg, self.n_evals), np.nan, fdtype) if plan.update_ratio else None
    self.noise = (np.full((n_s, n_cfg, self.n_evals, 2), np.nan, fdtype)
                  if getattr(plan, "noise_scale", False) else None)
    self.stopped_at = np.full((n_s, n_cfg), -1, np.int64)
    self.reason = np.zeros((n_s, n_cfg), np.int64)
    self.hp_now = {k: np.array(v, copy=True) for k, v in plan.hparams.items()}
    self.steering: list[dict] = []
    self.kept: dict[int, Any] = {}
    self.snaps: dict[int, dict] = {}  # step -> the groups' state at keep_params_at steps

  def _buf(self, store, name, tail):
    if name not in store:
      store[name] = np.full((self.n_s, self.n_cfg, tail), np.nan, self.fdtype)
    return store[name]

  def record(self, g: int, c: int, rec: ChunkRecord) -> None:
    """Places chunk ``c`` of group ``g`` (from the program or a checkpoint) by config."""
    valid = np.flatnonzero(rec.slots >= 0)
    cfg = rec.slots[valid]
    per = self.plan.log_every
    s0, e0, w0 = c * self.chunk_steps, c * self.blocks, c * self.chunk_steps // per
    s1, e1 = min(s0 + self.chunk_steps, self.steps), min(e0 + self.blocks, self.n_evals)
    w1 = min(w0 + self.chunk_steps // per, self.n_log)
    self.loss[:, cfg, w0:w1] = rec.loss[:, valid, : w1 - w0]
    for k, v in rec.metrics.items():
      self._buf(self.metrics, k, self.n_evals)[:, cfg, e0:e1] = v[:, valid, : e1 - e0]
    for k, v in rec.eval_records.items():
      self._buf(self.eval_records, k, self.n_evals)[:, cfg, e0:e1] = v[:, valid, : e1 - e0]
    for k, v in rec.step_records.items():
      self._buf(self.step_records, k, self.steps)[:, cfg, s0:s1] = v[:, valid, : s1 - s0]
    if self.ratio is not None:
      self.ratio[:, cfg, e0:e1] = rec.ratio[:, valid, : e1 - e0]
    if self.noise is not None:
      self.noise[:, cfg, e0:e1] = rec.noise[:, valid, : e1 - e0]
    self.record_status(rec)
    self.steering.extend(rec.steering)
    if rec.kept is not None:
      self.kept[g] = rec.kept
    self._mask_diverged(cfg)

  def record_status(self, rec: ChunkRecord) -> None:
    valid = np.flatnonzero(rec.slots >= 0)
    cfg = rec.slots[valid]
    self.stopped_at[:, cfg] = rec.stopped_at[:, valid]
    self.reason[:, cfg] = rec.reason[:, valid]
    for k in self.hp_now:
      self.hp_now[k][cfg] = rec.hparams[k][valid]

  def _mask_diverged(self, cfg) -> None:
    """A diverged run has no evaluations after the step it diverged at."""
    div = self.reason[:, cfg] == _rules.reason_code("diverged")
    gone = div[..., None] & (self.eval_steps[None, None, :] > self.stopped_at[:, cfg, None])
    stores = [*self.metrics.values(), *self.eval_records.values()]
    for v in stores + ([self.ratio] if self.ratio is not None else []):
      sub = v[:, cfg]
      sub[gone] = np.nan
      v[:, cfg] = sub
    if self.noise is not None:
      sub = self.noise[:, cfg]
      sub[gone] = np.nan
      self.noise[:, cfg] = sub

  def finish(self, stopped_sweep: bool, n_groups: int, treedef) -> tuple:
    """Marks runs that never ran, repeats frozen runs' last evaluation, joins kept state.
    Returns ``(params, opt_state, model_state)`` or ``(None, None, None)``."""
    never = np.isnan(self.loss).all(axis=-1) & (self.reason == 0) & (self.stopped_at < 0)
    self.reason[never] = _rules.reason_code("not_run")
    # A run stopped (not diverged) before the sweep's end was not evaluated again once its
    # group ended early: its later evaluations repeat its frozen state's (the last one).
    frozen = (self.reason > 0) & (self.reason != _rules.reason_code("diverged")) & (
        self.reason != _rules.reason_code("not_run"))
    for v in self.metrics.values():
      for s, c in zip(*np.nonzero(frozen)):
        row = v[s, c]
        ok = np.flatnonzero(np.isfinite(row))
        if ok.size and ok[-1] + 1 < row.size:
          row[ok[-1] + 1:] = row[ok[-1]]
    if not self.plan.keep_params:
      return None, None, None
    if len(self.kept) < n_groups and not stopped_sweep:
      raise ValueError(f"{self.plan.fn}: Execution(keep_params=True) but the checkpoint holds no parameters"
                       " of some groups")
    if not self.kept:
      return None, None, None
    return self._join(self.kept, treedef)

  def _join(self, kept: dict, treedef) -> tuple:
    """The per-group ``(config ids, leaves)`` of ``kept`` joined into leaves ``(S, C, ...)``."""
    first = next(iter(kept.values()))[1]
    cat = []
    for i, like in enumerate(first):
      full = np.full((self.n_s, self.n_cfg, *like.shape[2:]),
                     np.nan if like.dtype.kind == "f" else 0, like.dtype)
      for ids, leaves in kept.values():
        full[:, np.asarray(ids)] = leaves[i]
      cat.append(full)
    return jax.tree.unflatten(treedef, cat)

  def snapshot(self, step: int, g: int, treedef, rec: ChunkRecord, valid: np.ndarray,
               leaves: list) -> None:
    """Keeps group ``g``'s state and status after ``step`` steps (``keep_params_at``)."""
    snap = self.snaps.setdefault(step, {
        "kept": {}, "treedef": treedef, "stopped_at": np.full((self.n_s, self.n_cfg), -1, np.int64),
        "reason": np.zeros((self.n_s, self.n_cfg), np.int64)})
    cfg = rec.slots[valid]
    snap["kept"][g] = (cfg, leaves)
    snap["stopped_at"][:, cfg] = rec.stopped_at[:, valid]
    snap["reason"][:, cfg] = rec.reason[:, valid]

  def finish_snapshots(self) -> dict:
    """``step -> (params, opt_state, model_state, stopped_at, reason)`` of every snapshot
    taken. Configs of a group that ended before the step (all its runs stopped) have NaN
    state and their final status (stopped), so they cannot be continued."""
    out = {}
    for step, snap in sorted(self.snaps.items()):
      got = np.zeros(self.n_cfg, bool)
      for ids, _ in snap["kept"].values():
        got[np.asarray(ids)] = True
      stopped_at = np.where(got, snap["stopped_at"], self.stopped_at)
      reason = np.where(got, snap["reason"], self.reason)
      out[step] = (*self._join(snap["kept"], snap["treedef"]), stopped_at, reason)
    return out
