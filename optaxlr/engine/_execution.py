"""How a sweep runs, apart from what it computes: one validated settings object shared by every
entry point (:func:`optaxlr.sweep`, :func:`optaxlr.lr_find`, :func:`optaxlr.lr_find_grid`, the
Optuna bridge, the CLI)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from optaxlr import _validate

__all__ = ["Execution"]


@dataclasses.dataclass(frozen=True)
class Execution:
  """How to run a sweep: devices, grouping, layout, precision, checkpoints, what to keep.

  Built once, validated when built (a bad value is a ``ValueError`` naming it), and passed as
  ``execution=`` to every entry point. None of these settings changes which configs train or
  their hyperparameters; ``compute_dtype`` changes the arithmetic, ``keep_params`` and
  ``update_ratio`` what the result holds.

  Attributes:
    devices: shard the config axis over these devices (default: all devices, of every process
      under ``jax.distributed``).
    max_group_size: train at most this many configs at once; more are split into groups that
      reuse the same compiled program. Default: as many as fit in half of the device memory,
      measured on the compiled program (``memory_analysis``).
    vectorize: how many configs are computed at once per device (vmapped); the rest run one
      block after another inside the same program (``lax.map``). ``None``: all at once;
      ``"auto"`` (default): one at a time for a model with convolutions on the CPU (XLA:CPU runs
      vmapped convolutions as slow grouped convolutions), else all at once; an int ``v``:
      groups are padded to a multiple of ``v``.
    eval_batch_size: evaluate each split in pieces of this many examples (the metrics must be
      means over examples); default: the whole split at once.
    compute_dtype: ``"bfloat16"``: mixed precision (forward and backward pass in bfloat16;
      parameters, gradients, optimizer and model state in float32); default ``None``.
    checkpoint_dir: commit the state after every chunk there (atomically) and resume from it;
      a folder of another sweep or a damaged one is a ``ValueError`` saying what differs.
    progress: show a progress bar (tqdm) with the ETA.
    keep_params: return the final parameters, optimizer and model state (leaves with leading
      ``(seed, config)`` axes).
    update_ratio: record ``||update|| / ||params||`` of the last step before each evaluation
      as the metric ``"train/update_ratio"`` (the seeds' rule of thumb: about 1e-3). That step
      is compiled apart from the others (so that no other step pays for the norms): ``False``
      compiles the step once, 10-60% less compile time on the CPU.
    resume_unverified_code: resume a checkpoint even though part of the code (a task or
      optimizer function reading something that cannot be hashed) could not be fingerprinted:
      you vouch that the code is the same. Default ``False``: such a resume is refused.
    keep_params_at: steps of the sweep (counted from its start, each in ``[1, steps)``, strictly
      increasing, multiples of ``sync_every`` so that a chunk ends there) at which to keep a
      snapshot of every run's parameters, optimizer and model state: ``result.snapshots[k]`` is
      a :class:`SweepResult` of the first ``k`` steps holding that state, exactly what a sweep
      of ``k`` steps with ``keep_params=True`` returns, so ``sweep(start_from=
      result.snapshots[k].fork(...))`` branches children off at step ``k`` (cooldown branches,
      batch-size branches) without training the trunk twice. Default ``()``: none.

  Examples:
    >>> import optaxlr
    >>> optaxlr.Execution(progress=False, keep_params=True).keep_params
    True
    >>> optaxlr.Execution(vectorize="all")
    Traceback (most recent call last):
    ...
    ValueError: Execution: vectorize must be 'auto', None or an int >= 1, got vectorize='all'
  """

  devices: Sequence[Any] | None = None
  max_group_size: int | None = None
  vectorize: int | str | None = "auto"
  eval_batch_size: int | None = None
  compute_dtype: str | None = None
  checkpoint_dir: str | os.PathLike | None = None
  progress: bool = True
  keep_params: bool = False
  update_ratio: bool = True
  resume_unverified_code: bool = False
  keep_params_at: Sequence[int] = ()

  def __post_init__(self):
    fn = "Execution"
    object.__setattr__(self, "keep_params_at", _snapshot_steps(fn, self.keep_params_at))
    if self.devices is not None:
      try:
        devs = tuple(self.devices)
      except TypeError:
        raise ValueError(f"{fn}: devices must be a non-empty list of jax devices, got "
                         f"devices={self.devices!r}") from None
      if not devs or not all(isinstance(d, jax.Device) for d in devs):
        raise ValueError(f"{fn}: devices must be a non-empty list of jax devices (jax.devices()), "
                         f"got devices={self.devices!r}")
      if len(set(devs)) != len(devs):
        raise ValueError(f"{fn}: devices must be distinct, got devices={devs!r}")
      object.__setattr__(self, "devices", devs)
    if self.max_group_size is not None:
      _validate.check_int(fn, "max_group_size", self.max_group_size, 1)
    if isinstance(self.vectorize, str):
      if self.vectorize != "auto":
        raise ValueError(f"{fn}: vectorize must be 'auto', None or an int >= 1, got "
                         f"vectorize={self.vectorize!r}")
    elif self.vectorize is not None:
      try:
        _validate.check_int(fn, "vectorize", self.vectorize, 1)
      except ValueError:
        raise ValueError(f"{fn}: vectorize must be 'auto', None or an int >= 1, got "
                         f"vectorize={self.vectorize!r}") from None
    if self.eval_batch_size is not None:
      _validate.check_int(fn, "eval_batch_size", self.eval_batch_size, 1)
    if self.compute_dtype not in (None, "bfloat16"):
      raise ValueError(f"{fn}: compute_dtype must be None or 'bfloat16', got "
                       f"compute_dtype={self.compute_dtype!r} (float16 needs loss scaling, which "
                       "the core does not do)")
    if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
      raise ValueError(f"{fn}: checkpoint_dir must be a path (str or os.PathLike), got "
                       f"checkpoint_dir={self.checkpoint_dir!r}")
    for name in ("progress", "keep_params", "update_ratio", "resume_unverified_code"):
      _validate.check_flag(fn, name, getattr(self, name))

  def replace(self, **changes: Any) -> "Execution":
    """A copy with ``changes`` applied (validated again)."""
    return dataclasses.replace(self, **changes)

  def device_list(self) -> list:
    """The devices to run on: ``devices``, or every device (of every process)."""
    return list(jax.devices()) if self.devices is None else list(self.devices)


def _snapshot_steps(fn: str, steps: Any) -> tuple[int, ...]:
  """``keep_params_at`` as a tuple of strictly increasing ints >= 1 (its upper bound, the
  sweep's ``steps``, and the chunk alignment are checked by the sweep that knows them)."""
  if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
    raise ValueError(f"{fn}: keep_params_at must be a sequence of ints (steps), got "
                     f"keep_params_at={steps!r}")
  out = []
  for s in steps:
    if isinstance(s, (bool,)) or not isinstance(s, (int, np.integer)):
      raise ValueError(f"{fn}: keep_params_at must hold ints (steps), got {s!r} in "
                       f"keep_params_at={tuple(steps)!r}")
    if s < 1:
      raise ValueError(f"{fn}: keep_params_at steps must be >= 1 (a snapshot after at least one "
                       f"step), got {int(s)} in keep_params_at={tuple(steps)!r}")
    out.append(int(s))
  if any(b <= a for a, b in zip(out, out[1:])):
    raise ValueError(f"{fn}: keep_params_at must be strictly increasing (sorted, no duplicates), "
                     f"got keep_params_at={tuple(out)!r}")
  return tuple(out)


def as_execution(fn: str, execution: Any) -> Execution:
  """``execution`` checked (``None``: the defaults)."""
  if execution is None:
    return Execution()
  if not isinstance(execution, Execution):
    raise TypeError(f"{fn}: execution must be an optaxlr.Execution (how to run: devices, "
                    f"checkpoint_dir, progress, keep_params...), got {type(execution).__name__}")
  return execution
