"""Host-fed minibatches: a task's batch streams read, checked and stacked per chunk.

A task whose ``train`` is a factory ``seed -> iterator of batches`` (see
:class:`optaxlr.tasks.Task`) is fed from the host: :class:`_Feed` opens one stream per seed,
reads ``chunk_steps`` batches of each per chunk, checks them against the first batch (keys,
shapes, dtypes after JAX's canonicalisation, finite values) and places them on the device; the
next chunk's batches are read in a background thread while the current one runs.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from optaxlr._validate import canonical_array
from optaxlr.engine import _core

__all__ = ["Feed"]


class Feed:
  """Host-fed minibatches: one iterator per seed (``plan.batches(seed)``), ``chunk_steps``
  batches per seed stacked per chunk, checked, and placed on the device; the next chunk's are
  read in a background thread while the current one runs.

  A batch's dtypes are compared with the plan's (the first batch's, canonicalised as
  ``jnp.asarray`` does: ``int64`` labels are ``int32`` without x64) after the same
  canonicalisation; a key's raw dtype must also stay the one of the stream's first batch
  (a stream that switches dtype midway is refused, not silently cast).
  """

  def __init__(self, plan: Any, n_s: int, chunk_steps: int, steps: int, skip: int, sharding):
    self.plan, self.n_s, self.chunk_steps, self.steps = plan, n_s, chunk_steps, steps
    self.sharding = sharding
    self.iters = []
    self.raw_dtypes: dict[str, np.dtype] = {}
    # labels out of range after the first batch: a data error naming the batch, not a
    # "diverged" run (optax's cross-entropy reads label -1 as the last class, K as NaN)
    self.check_labels = plan.task.label_check()
    for s in plan.seeds:
      it = plan.batches(s)
      try:
        it = iter(it)
      except TypeError:
        raise TypeError(f"{plan.fn}: train(seed) must return an iterator of batches, got "
                        f"{type(it).__name__} for seed {s}") from None
      if any(it is other for other in self.iters):
        raise ValueError(f"{plan.fn}: train(seed) returned the same iterator for two seeds; "
                         "return a fresh iterator per call (each seed has its own stream)")
      self.iters.append(it)
    self.step = 0
    for _ in range(skip):  # resuming: the consumed batches are read again and dropped
      self._one_step()
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._next = None

  def _check(self, s_i: int, batch: Any) -> dict:
    fn, spec, b = self.plan.fn, self.plan.batch_spec, self.plan.batch_size
    seed, step = self.plan.seeds[s_i], self.step
    where = f"{fn}: the batch stream of seed {seed}, batch {step}"
    if not isinstance(batch, Mapping):
      raise ValueError(f"{where}: expected a dict of arrays, got {type(batch).__name__}")
    if set(batch) != set(spec):
      raise ValueError(f"{where}: keys {sorted(batch)} differ from the first batch's "
                       f"{sorted(spec)}")
    out = {}
    for k, (shape, dt) in spec.items():
      raw = np.asarray(batch[k])
      first = self.raw_dtypes.setdefault(k, raw.dtype)
      if raw.dtype != first:
        raise ValueError(f"{where}, key {k!r}: dtype {raw.dtype}, expected {first} (the "
                         "stream's first batch)")
      v = canonical_array(where, k, raw)
      if v.shape != (b, *shape):
        hint = (" (a loader's last, partial batch? drop it: torch's drop_last=True, grain's "
                "batch(..., drop_remainder=True))" if v.shape[1:] == tuple(shape) else "")
        raise ValueError(f"{where}, key {k!r}: shape {v.shape}, expected {(b, *shape)} "
                         f"(batch_size={b}){hint}")
      if v.dtype != dt:
        raise ValueError(f"{where}, key {k!r}: dtype {raw.dtype} (JAX: {v.dtype}), expected "
                         f"{dt}")
      if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{where}, key {k!r}: {int((~np.isfinite(v)).sum())} non-finite "
                         "value(s)")
      out[k] = v
    self.check_labels(where, out)
    return out

  def _one_step(self) -> list[dict]:
    rows = []
    for i, it in enumerate(self.iters):
      try:
        batch = next(it)
      except StopIteration:
        raise ValueError(
            f"{self.plan.fn}: the batch stream of seed {self.plan.seeds[i]} ended after "
            f"{self.step} batches; the sweep needs {self.steps} (steps) per seed: make the "
            "stream endless, or let train(seed) return a re-iterable loader (a torch "
            "DataLoader, a list: one pass per epoch) or take the epoch, train(seed, epoch) "
            "(see optaxlr.tasks.Task)") from None
      rows.append(self._check(i, batch))
    self.step += 1
    return rows

  def _read(self):
    first = self.step
    n = min(self.chunk_steps, self.steps - self.step)
    per_step = [self._one_step() for _ in range(n)]
    host, digest = {}, hashlib.sha256()
    for k, (shape, dt) in self.plan.batch_spec.items():
      arr = np.zeros((self.n_s, self.chunk_steps, self.plan.batch_size, *shape), dt)
      for t, rows in enumerate(per_step):  # steps past ``steps`` stay zeros (masked)
        for s_i, row in enumerate(rows):
          arr[s_i, t] = row[k]
      digest.update(k.encode())
      digest.update(arr.tobytes())
      host[k] = arr
    return host, first, np.frombuffer(digest.digest()[:8], np.int64)

  def next(self):
    """The next chunk's batches, placed on the devices. With several processes, each reads its
    own streams: a digest of the chunk's batches is compared across them first, and batches
    that differ (a stream seeded by process) are refused, naming the chunk; each config trains
    on the same global batch on every process."""
    if self._next is None:
      host, first, digest = self._read()
    else:
      fut, self._next = self._next, None
      host, first, digest = fut.result()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      every = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1)
      if len(set(every.tolist())) > 1:
        chunk = first // self.chunk_steps
        raise ValueError(
            f"{self.plan.fn}: the batch streams differ across processes in chunk {chunk} "
            f"(steps {first}..{first + self.chunk_steps - 1}; digests per process "
            f"{[f'{d & (2**64 - 1):016x}' for d in every.tolist()]}): every process must read "
            "the same batches (train(seed) the same on every process, not seeded by "
            "jax.process_index()); the configs are sharded over processes, not the data")
    return {k: _core.put(v, self.sharding) for k, v in host.items()}

  def prefetch(self):
    if self.step < self.steps:
      self._next = self._pool.submit(self._read)

  def close(self):
    if self._next is not None:
      self._next.cancel()
    self._pool.shutdown(wait=True)
