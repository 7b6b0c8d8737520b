"""A task's batch factory: the user's loader (a generator, a torch ``DataLoader``, grain) read as
a stream of named NumPy batches, one pass per epoch, reproducibly per seed."""

from __future__ import annotations

import collections.abc
import inspect
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BatchFactory", "is_one_shot", "default_batch_keys", "to_numpy"]


def is_one_shot(obj: Any) -> bool:
  """Whether ``obj`` is an iterator that can be read once (a generator, ``iter(...)``):
  ``iter(obj) is obj``. A torch ``DataLoader``, a grain dataset or a list is re-iterable."""
  return isinstance(obj, collections.abc.Iterator)


def to_numpy(v: Any) -> Any:
  """A torch (or TensorFlow) tensor as a NumPy array; anything else unchanged."""
  if isinstance(v, np.ndarray) or not hasattr(v, "numpy"):
    return v
  if hasattr(v, "detach"):  # torch: off the autograd graph and onto the host first
    v = v.detach().cpu()
  return v.numpy()


def default_batch_keys(info: Mapping[str, Any], eval_splits: Mapping[str, Mapping[str, Any]]
                       ) -> tuple[tuple[str, ...] | None, str]:
  """``(keys, why not)``: the names of a tuple batch's items when the task knows them.

  The task's inputs and targets keys ``(info["x_key"], info["y_key"])`` when the task names
  them (the adapters :meth:`Task.from_functions`, :meth:`Task.from_flax_nnx` and
  :meth:`Task.from_linen` do: their loss reads exactly these), or ``("x", "y")`` when the eval
  splits hold exactly the keys ``x`` and ``y``; else ``None`` and the reason."""
  if "x_key" in info or "y_key" in info:
    return (info.get("x_key", "x"), info.get("y_key", "y")), ""
  if eval_splits:
    keys = set(next(iter(eval_splits.values())))
    if keys == {"x", "y"}:
      return ("x", "y"), ""
    return None, f"the eval splits' keys are {sorted(keys)}, in no defined order"
  return None, "the task names no inputs and targets keys (info x_key / y_key) and has no eval splits"


def _takes_epoch(factory: Callable) -> bool:
  """Whether ``factory`` takes ``(seed, epoch)``: a second positional parameter that is
  required or named ``epoch`` (``def make(seed, batch_size=64)`` is a one-argument factory)."""
  try:
    params = list(inspect.signature(factory).parameters.values())
  except (TypeError, ValueError):
    return False
  pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  return len(pos) >= 2 and (pos[1].default is pos[1].empty or pos[1].name == "epoch")


def _check_takes_seed(fn: str, factory: Callable) -> None:
  """Refuses a factory that cannot be called as ``factory(seed)``: one without a positional
  parameter (``def make():``, ``def make(*, seed)``) or with more than two required ones."""
  try:
    params = list(inspect.signature(factory).parameters.values())
  except (TypeError, ValueError):  # a builtin without a signature: called as is
    return
  if any(p.kind == p.VAR_POSITIONAL for p in params):
    return
  pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  required = [p for p in params if p.default is p.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  name = getattr(factory, "__qualname__", type(factory).__name__)
  if not pos or len(required) > 2 or any(p.kind == p.KEYWORD_ONLY for p in required):
    raise TypeError(f"{fn}: train must be a batch factory called as train(seed) or "
                    f"train(seed, epoch), but {name}{inspect.signature(factory)} cannot be "
                    "(a seed must be its first positional parameter; each seed has its own "
                    "stream): write def make(seed): ... and seed your shuffling with it")


class _Memo:
  """The last one-shot iterator a factory returned (a weak reference), to refuse a factory
  that returns the same one for every seed."""

  def __init__(self):
    self.last = None


class BatchFactory:
  """``seed -> iterator of batches`` over the user's loader: a task's ``train`` when it is fed
  from the host (``Task.train`` holds one of these; the user's function is :attr:`factory`).

  Each batch becomes a dict of NumPy arrays: a dict batch keeps its keys, a tuple or list
  batch (a torch ``TensorDataset``'s ``[x, y]``, grain's tuples) is named by
  :attr:`batch_keys`; torch tensors are converted with ``.numpy()``. Dtypes are left to the
  sweep, which compares them after JAX's canonicalisation (``int64`` labels are ``int32``
  without x64).

  Epochs: the stream of seed ``s`` never ends on its own.

  * ``factory(seed)`` returns a re-iterable (a torch ``DataLoader``, a grain ``MapDataset``,
    a list): each epoch is a fresh pass ``iter(loader)`` over the same object, as a user's own
    ``for epoch ...: for batch in loader`` loop does, so a ``DataLoader`` with a seeded
    ``generator`` reshuffles every epoch, reproducibly;
  * ``factory(seed, epoch)`` (a second parameter, required or named ``epoch``): called again
    for every epoch (``0, 1, ...``);
  * ``factory(seed)`` returns an iterator (a generator): it is read once; if it ends before the
    sweep's steps the sweep says so (make it endless, or use one of the above).

  The same seed always gives the same batches (a sweep resumed from a checkpoint reads the
  streams again from the start and drops what it trained on).
  """

  def __init__(self, fn: str, factory: Callable, batch_keys: Sequence[str] | None,
               default_keys: tuple[str, ...] | None, why_no_keys: str):
    _check_takes_seed(fn, factory)
    self.fn = fn
    self.factory = factory
    self.batch_keys = None if batch_keys is None else tuple(batch_keys)
    self._keys = self.batch_keys or default_keys
    self._why = why_no_keys
    self.per_epoch = _takes_epoch(factory)
    self._memo = _Memo()  # outside the fields a checkpoint's fingerprint reads


  def _open(self, seed: int, epoch: int) -> Any:
    obj = self.factory(seed, epoch) if self.per_epoch else self.factory(seed)
    if is_one_shot(obj):
      last = self._memo.last() if self._memo.last is not None else None
      if last is obj:
        raise ValueError(f"{self.fn}: train(seed) returned the same iterator object on two "
                         "calls; return a fresh iterator per call: each seed has its own "
                         "stream, and a sweep reads it from the start")
      try:
        self._memo.last = weakref.ref(obj)
      except TypeError:
        self._memo.last = None
    # Not iter(obj): a DataLoader draws its shuffle from its generator on every iter().
    if not isinstance(obj, collections.abc.Iterable):
      raise TypeError(f"{self.fn}: train(seed) must return an iterable of batches (a "
                      f"generator, a torch DataLoader, a grain dataset), got "
                      f"{type(obj).__name__}")
    return obj

  def __call__(self, seed: int, /) -> Iterator[dict[str, Any]]:
    """The stream of ``seed``: batches as dicts of NumPy arrays, epoch after epoch."""
    first = self._open(seed, 0)
    return self._stream(seed, first)

  def _stream(self, seed: int, obj: Any) -> Iterator[dict[str, Any]]:
    epoch = 0
    while True:
      n = 0
      it = iter(obj)
      try:
        for batch in it:
          yield self.named(batch, seed, n)
          n += 1
      finally:
        close = getattr(it, "close", None)
        if callable(close):
          close()
      if n == 0:
        if epoch == 0:
          return  # an empty stream: reported by the reader ("yielded no batch")
        raise ValueError(f"{self.fn}: train({seed}) gave no batch in epoch {epoch} (after "
                         f"{epoch} epochs)")
      epoch += 1
      if self.per_epoch:
        obj = self._open(seed, epoch)
      elif is_one_shot(obj):
        return  # read once: the reader says how many batches it had
      # else a re-iterable: a fresh pass over the same loader

  def named(self, batch: Any, seed: int, index: int) -> dict[str, Any]:
    """One batch as ``{key: array}`` (tuples named by :attr:`batch_keys`, tensors as NumPy)."""
    where = f"{self.fn}: train({seed}), batch {index}"
    if isinstance(batch, Mapping):
      return {k: to_numpy(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
      if self._keys is None:
        raise ValueError(f"{where}: a {type(batch).__name__} of {len(batch)} arrays, and the "
                         f"task cannot tell their names ({self._why}); pass batch_keys= "
                         "naming them in order, e.g. batch_keys=('x', 'y')")
      if len(batch) != len(self._keys):
        given = "batch_keys" if self.batch_keys is not None else "the default batch_keys"
        raise ValueError(f"{where}: a {type(batch).__name__} of {len(batch)} arrays, but "
                         f"{given}={self._keys!r} names {len(self._keys)}; pass batch_keys= "
                         "with one name per item")
      return {k: to_numpy(v) for k, v in zip(self._keys, batch)}
    raise ValueError(f"{where}: a batch must be a dict of arrays or a tuple/list of arrays "
                     f"(named by batch_keys), got {type(batch).__name__}")

  def __repr__(self) -> str:
    return f"BatchFactory({getattr(self.factory, '__qualname__', self.factory)!r})"
