"""Host-fed training data: one stream of batches per seed, checked and stacked per chunk, read
ahead in a thread while the device computes the previous chunk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from optaxlr.engine import _core

__all__ = ["Feed"]


class Feed:
  """Host-fed minibatches: one iterator per seed (``plan.batches(seed)``), ``chunk_steps``
  batches per seed stacked per chunk, checked, and placed on the device; the next chunk's are
  read in a background thread while the current one runs."""

  def __init__(self, plan: Any, n_s: int, chunk_steps: int, steps: int, skip: int, sharding):
    import concurrent.futures

    self.plan, self.n_s, self.chunk_steps, self.steps = plan, n_s, chunk_steps, steps
    self.sharding = sharding
    self.iters = []
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
      v = np.asarray(batch[k])
      if v.shape != (b, *shape):
        raise ValueError(f"{where}, key {k!r}: shape {v.shape}, expected {(b, *shape)} "
                         f"(batch_size={b})")
      if v.dtype != dt:
        raise ValueError(f"{where}, key {k!r}: dtype {v.dtype}, expected {dt}")
      if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{where}, key {k!r}: {int((~np.isfinite(v)).sum())} non-finite "
                         "value(s)")
      out[k] = v
    return out

  def _one_step(self) -> list[dict]:
    rows = []
    for i, it in enumerate(self.iters):
      try:
        batch = next(it)
      except StopIteration:
        raise ValueError(
            f"{self.plan.fn}: the batch stream of seed {self.plan.seeds[i]} ended after "
            f"{self.step} batches; the sweep needs {self.steps} (steps) per seed") from None
      rows.append(self._check(i, batch))
    self.step += 1
    return rows

  def _read(self):
    n = min(self.chunk_steps, self.steps - self.step)
    per_step = [self._one_step() for _ in range(n)]
    out = {}
    for k, (shape, dt) in self.plan.batch_spec.items():
      arr = np.zeros((self.n_s, self.chunk_steps, self.plan.batch_size, *shape), dt)
      for t, rows in enumerate(per_step):  # steps past ``steps`` stay zeros (masked)
        for s_i, row in enumerate(rows):
          arr[s_i, t] = row[k]
      out[k] = _core.put(arr, self.sharding)
    return out

  def next(self):
    if self._next is None:
      return self._read()
    fut, self._next = self._next, None
    return fut.result()

  def prefetch(self):
    if self.step < self.steps:
      self._next = self._pool.submit(self._read)

  def close(self):
    if self._next is not None:
      self._next.cancel()
    self._pool.shutdown(wait=True)


