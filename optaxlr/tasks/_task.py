"""`Task`: what the sweep engine trains: init, loss, metrics and the data arrays."""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxlr.tasks import _loaders
from optaxlr.tasks import _objectives

__all__ = ["Task", "Batch", "reseed_nnx", "stream_key", "set_opt_state", "hparam", "Dropout"]

PyTree = Any
_LABELS = {"cross_entropy": "classes", "logistic": "binary"}  # built-in loss -> label kind
Batch = dict[str, jax.Array]
"""A dict of arrays sharing a leading example axis, e.g. ``{"x": (N, d), "y": (N,)}``."""


def _as_batch(fn: str, split: str, batch: Any, keys: tuple[str, ...] | None = None,
              why_no_keys: str = "") -> dict[str, jax.Array]:
  """A split as ``{key: jax.Array}``: a dict as is, a tuple/list of arrays named by ``keys``;
  dtypes as ``jnp.asarray`` gives them (integers checked to fit, see
  :func:`optaxlr._validate.canonical_array`)."""
  from optaxlr._validate import canonical_array

  if isinstance(batch, (tuple, list)) and batch and not any(isinstance(v, Mapping) for v in batch):
    if keys is None:
      raise ValueError(f"{fn}: split {split!r} is a {type(batch).__name__} of {len(batch)} "
                       f"arrays and the task cannot tell their names ({why_no_keys}); pass "
                       "batch_keys= naming them in order, e.g. batch_keys=('x', 'y'), or a dict")
    if len(batch) != len(keys):
      raise ValueError(f"{fn}: split {split!r} is a {type(batch).__name__} of {len(batch)} "
                       f"arrays, but batch_keys={keys!r} names {len(keys)}")
    batch = dict(zip(keys, batch))
  if not isinstance(batch, Mapping) or not batch:
    raise TypeError(f"{fn}: split {split!r} must be a non-empty dict of arrays, got "
                    f"{type(batch).__name__}")
  out = {}
  for k, v in batch.items():
    if not isinstance(k, str):
      raise TypeError(f"{fn}: split {split!r} has a non-string key {k!r}")
    out[k] = jnp.asarray(canonical_array(f"{fn}: split {split!r}", k, _loaders.to_numpy(v)))
  return out


def _own(train: Any) -> Any:
  """A copy of an in-memory dict split (the caller's dict is not kept); anything else as is."""
  return dict(train) if isinstance(train, Mapping) else train


def _check_train(fn: str, train: Any) -> Any:
  """Refuses, at once, a ``train`` a sweep cannot read: a one-shot iterator (a generator
  object: reading it to look at it would consume it, and ``dict()`` of an endless one never
  returns) or a loader object instead of a factory returning one."""
  if isinstance(train, Mapping) or isinstance(train, _loaders.BatchFactory):
    return train
  if _loaders.is_one_shot(train):
    raise TypeError(
        f"{fn}: train is a {type(train).__name__} object, a one-shot iterator; a sweep reads "
        "each seed's stream from its start (again after a checkpoint), which a one-shot "
        "iterator cannot give; pass a factory instead: train=lambda seed: make_batches(seed) "
        "(a new iterator per call)")
  if callable(train) or (isinstance(train, (tuple, list)) and train
                         and not any(isinstance(v, Mapping) for v in train)):
    return train  # a batch factory, or in-memory arrays named by batch_keys
  if isinstance(train, collections.abc.Iterable):
    raise TypeError(
        f"{fn}: train is a {type(train).__name__} object (a loader); pass a factory returning "
        "it, seeded: train=lambda seed: make_loader(seed), so that every seed has its own "
        "stream and a resumed sweep can read it again")
  raise TypeError(f"{fn}: train must be a dict of arrays or a batch factory seed -> iterable "
                  f"of batches, got {type(train).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A supervised training problem in pure functions, the sweep engine's input.

  Attributes:
    name: a short label.
    init: ``key -> params`` (any pytree).
    loss: ``(params, batch) -> scalar`` mean training loss; pure, jit/vmap-safe.
    metrics: ``(params, batch) -> {name: scalar}``, e.g. ``loss``, ``accuracy``, ``error``.
    train: the training split; the engine takes minibatches by indexing every array with an
      index array along the leading axis. Or a batch factory ``seed -> iterable of batches``
      (data fed from the host: a generator function, a torch ``DataLoader``, grain, tf.data's
      ``as_numpy_iterator()``), stored wrapped in a ``BatchFactory`` (its ``factory`` is the
      given function): each batch a dict of arrays or a tuple/list named by ``batch_keys``,
      torch tensors converted with ``.numpy()``, dtypes compared after JAX's canonicalisation
      (NumPy's and torch's ``int64`` labels are ``int32`` without x64). A finite loader gives
      one epoch per pass: a re-iterable (a ``DataLoader``, a grain dataset, a list) is
      iterated again for each epoch, like a user's own epoch loop (a ``DataLoader`` with a
      seeded ``generator`` reshuffles each epoch, reproducibly); a factory taking
      ``(seed, epoch)`` is called again for each epoch; a generator returned by
      ``factory(seed)`` is read once (endless, or the sweep says it ended). A generator
      *object* (or any one-shot iterator) is refused at once: a sweep reads each seed's stream
      from its start, again after a checkpoint. The same seed must give the same batches.
    eval: held-out splits by name (``"val"``, ``"test"``), each a batch like ``train``.
    info: free-form description; keys the library reads: ``num_classes`` (labels checked
      by :meth:`validate`), ``y_key`` (the label key, default ``"y"``), ``x_key``, and
      ``labels``: ``"classes"`` (integers in ``[0, K)``) or ``"binary"`` (``{0, 1}`` or
      ``{-1, +1}``), which :meth:`from_functions` sets for its built-in classification losses.
    apply: ``(params, inputs) -> outputs``, the model, when the task was built from one
      (:meth:`from_functions` and the flax adapters set it), else ``None``; :meth:`validate`
      reads the number of classes from its output's shape.
    init_state: ``key -> model_state`` for a model with state or randomness (BatchNorm
      statistics, Dropout), else ``None``; set together with ``train_loss`` and
      ``eval_metrics``. The adapters :meth:`from_flax_nnx` and :meth:`from_linen` set them.
    train_loss: ``(params, model_state, batch, key, hparams) -> (loss, new_model_state)``: one
      training step's loss in training mode; ``key`` is the step's model key
      (:func:`optaxlr.engine.model_key`, the same for every config of a seed) and ``hparams``
      the config's hyperparameters (traced scalars: a dropout rate, label smoothing).
    eval_metrics: ``(params, model_state, batch, hparams) -> {name: scalar}`` in evaluation
      mode.
    to_model: ``(params, model_state, hparams=None) -> model`` (the adapters: an
      ``nnx.Module`` or linen variables), to hand a sweep's run back to the framework; for
      nnx, ``hparams=res.config(i)`` sets the config's swept model hyperparameters into the
      layers (a :class:`Dropout`'s ``hparam=`` rate, ``configure=``), else the model keeps
      its constructor's values.
    batch_keys: the names of the items of tuple/list batches (a torch ``TensorDataset``'s
      ``[x, y]``), in order, e.g. ``("x", "y")``; also names a tuple ``train`` or eval split
      given in memory. Default: ``(info["x_key"], info["y_key"])`` when the task names them
      (the adapters do: ``x_key`` / ``y_key``), ``("x", "y")`` when the eval splits hold
      exactly those keys; otherwise a tuple batch is an error asking for ``batch_keys``.

  A stateful task's :attr:`loss` and :attr:`metrics` evaluate in evaluation mode with the
  initial model state (for quick checks); the engine uses :meth:`step_loss` and
  :meth:`evaluate`.

  The arrays of ``train`` and ``eval`` are stored as ``jax.Array`` (so a traced index can
  take a minibatch). A ``Task`` compares and hashes by identity.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optaxlr.tasks import Task
    >>> task = Task.from_functions(
    ...     "linear", init=lambda key: {"w": jnp.zeros(2)}, apply=lambda p, x: x @ p["w"],
    ...     loss="mse", train={"x": jnp.ones((4, 2)), "y": jnp.ones(4)})
    >>> task.validate()
    >>> float(task.loss(task.init(jax.random.key(0)), task.train))
    1.0
  """

  name: str
  init: Callable[[jax.Array], PyTree]
  loss: Callable[[PyTree, Batch], jax.Array]
  metrics: Callable[[PyTree, Batch], dict[str, jax.Array]]
  train: Batch
  eval: dict[str, Batch] = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)
  apply: Callable[[PyTree, jax.Array], jax.Array] | None = dataclasses.field(default=None,
                                                                            repr=False)
  init_state: Callable[[jax.Array], PyTree] | None = dataclasses.field(default=None, repr=False)
  train_loss: Callable[..., tuple[jax.Array, PyTree]] | None = dataclasses.field(default=None,
                                                                                repr=False)
  eval_metrics: Callable[..., dict[str, jax.Array]] | None = dataclasses.field(default=None,
                                                                              repr=False)
  to_model: Callable[..., Any] | None = dataclasses.field(default=None, repr=False)
  batch_keys: tuple[str, ...] | None = None

  def __post_init__(self):
    given = [n for n in ("init_state", "train_loss", "eval_metrics")
             if getattr(self, n) is not None]
    if given and len(given) != 3:
      missing = sorted({"init_state", "train_loss", "eval_metrics"} - set(given))
      raise ValueError(f"Task: a task with model state gives init_state, train_loss and "
                       f"eval_metrics together; {given} given, {missing} missing")
    train = _check_train("Task", self.train)
    keys = self.batch_keys
    if keys is not None:
      if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys or not all(
          isinstance(k, str) and k for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(f"Task: batch_keys must be a tuple of distinct non-empty strings, one "
                         f"name per item of a tuple batch, got batch_keys={keys!r}")
      keys = tuple(keys)
      object.__setattr__(self, "batch_keys", keys)
    if not isinstance(self.eval, Mapping):
      raise TypeError(f"Task: eval must be a dict of splits, got {type(self.eval).__name__}")
    info = dict(self.info)
    default, why = _loaders.default_batch_keys(info, {
        s: b for s, b in self.eval.items() if isinstance(b, Mapping)})
    names = keys or default
    if isinstance(train, _loaders.BatchFactory):
      train = train.factory  # dataclasses.replace: wrapped again with this task's keys
    if callable(train) and not isinstance(train, Mapping):
      train = _loaders.BatchFactory(f"Task {self.name!r}", train, keys, default, why)
    else:
      if keys is not None and isinstance(train, Mapping):
        raise ValueError(f"Task: batch_keys={keys!r} names the items of tuple batches, but "
                         f"train is a dict (its keys {sorted(train)} are the names); drop "
                         "batch_keys")
      train = _as_batch("Task", "train", train, names, why)
    object.__setattr__(self, "train", train)
    object.__setattr__(self, "eval", {s: _as_batch("Task", s, b, names, why)
                                      for s, b in self.eval.items()})
    object.__setattr__(self, "info", info)

  # ------------------------------------------------------------------ the engine's view
  @property
  def stateful(self) -> bool:
    """Whether the model carries state (BatchNorm statistics) or randomness (Dropout) through
    :attr:`train_loss` / :attr:`eval_metrics` (else :attr:`loss` / :attr:`metrics` are used)."""
    return self.train_loss is not None

  def initial_state(self, key: jax.Array) -> PyTree:
    """The model state of a run initialised with ``key`` (``()`` for a stateless task)."""
    return () if self.init_state is None else self.init_state(key)

  def step_loss(self, params: PyTree, state: PyTree, batch: Batch, key: jax.Array,
                hparams: Mapping[str, jax.Array]) -> tuple[jax.Array, PyTree]:
    """``(loss, new_state)`` of one training step in training mode (Dropout on, BatchNorm
    statistics of the batch, updated); ``key`` drives the model's random streams. A stateless
    task returns ``(loss(params, batch), state)``."""
    if self.train_loss is None:
      return self.loss(params, batch), state
    return self.train_loss(params, state, batch, key, hparams)

  def evaluate(self, params: PyTree, state: PyTree, batch: Batch,
               hparams: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Metrics in evaluation mode (no Dropout, BatchNorm's running statistics)."""
    if self.eval_metrics is None:
      return self.metrics(params, batch)
    return self.eval_metrics(params, state, batch, hparams)

  @property
  def host_fed(self) -> bool:
    """Whether ``train`` is a factory ``seed -> iterator of batches`` (data fed from the host:
    grain, tf.data's ``as_numpy_iterator()``, a torch ``DataLoader``, a generator)."""
    return callable(self.train) and not isinstance(self.train, Mapping)

  @property
  def n_train(self) -> int:
    """Number of training examples (a ``ValueError`` for a host-fed task: a stream has none)."""
    if self.host_fed:
      raise ValueError(f"Task {self.name!r}: the training data is a stream (train(seed) -> "
                       "iterator); it has no fixed number of examples")
    return int(next(iter(self.train.values())).shape[0])

  def first_batch(self, seed: int = 0) -> Batch:
    """A host-fed task's first batch of ``train(seed)`` (a fresh iterator, then dropped)."""
    it = self.train(seed)
    if it is not None and it is self.train(seed):
      raise ValueError(f"Task {self.name!r}: train(seed) returned the same iterator object on two "
                       "calls (for two seeds); return a fresh iterator per call: each seed "
                       "has its own stream, and a sweep reads it from the start")
    try:
      batch = next(iter(it))
    except StopIteration:
      raise ValueError(f"Task {self.name!r}: train({seed}) yielded no batch") from None
    except TypeError:
      raise TypeError(f"Task {self.name!r}: train(seed) must return an iterator of batches, got "
                      f"{type(it).__name__}") from None
    finally:
      close = getattr(it, "close", None)
      if callable(close):
        close()
    return _as_batch(f"Task {self.name!r}", "train (first batch)", batch)

  # ------------------------------------------------------------------ validation
  def validate(self, hparams: Mapping[str, Any] | None = None) -> None:
    """Checks the task on the host before anything is compiled.

    Checks: every split's arrays share the leading length (and eval splits have the
    training split's keys and per-example shapes); no NaN/inf in float arrays; labels are
    integers in ``[0, K)`` for a classification task, ``K`` being ``info["num_classes"]`` or,
    without it, for ``info["labels"] == "classes"`` (a task built by :meth:`from_functions`
    with ``loss="cross_entropy"``), the size of the last axis of ``apply``'s output on one
    example (``jax.eval_shape``; optax's cross-entropy would silently read label ``-1`` as the
    last class); labels in ``{-1, 0, 1}`` for ``info["labels"] == "binary"`` (a task built with
    ``loss="logistic"``: any other value would silently count as positive); ``init`` runs and ``loss`` returns a float scalar differentiable in the
    params, and ``metrics`` returns a dict of scalars on every split (shapes only, with
    ``jax.eval_shape``).

    A stateful task (:attr:`train_loss`) is checked through :meth:`step_loss` and
    :meth:`evaluate` with ``hparams`` (one config's values; the sweep passes its first), and a
    host-fed task through the first batch of ``train(0)``.

    Raises:
      ValueError: naming the task, split, key and problem.
    """
    where = f"Task.validate: task {self.name!r}"
    train = self.first_batch() if self.host_fed else self.train
    splits = {"train": train, **self.eval}
    classes = self._num_classes(train)
    train_sig = {k: (v.shape[1:], v.dtype) for k, v in train.items()}
    for split, batch in splits.items():
      lengths = {k: (v.shape[0] if v.ndim else None) for k, v in batch.items()}
      for k, n in lengths.items():
        if n is None:
          raise ValueError(f"{where}, split {split!r}, key {k!r}: arrays need a leading example "
                           "axis, got a scalar")
      if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{k!r} has {n}" for k, n in lengths.items())
        raise ValueError(f"{where}, split {split!r}: all arrays must have the same number of "
                         f"examples (leading length), got {desc}")
      if next(iter(lengths.values())) == 0:
        raise ValueError(f"{where}, split {split!r}: the split is empty")
      if split != "train":
        if set(batch) != set(train):
          raise ValueError(f"{where}, split {split!r}: keys {sorted(batch)} differ from the "
                           f"training split's keys {sorted(train)}")
        for k, v in batch.items():
          if v.shape[1:] != train_sig[k][0]:
            raise ValueError(f"{where}, split {split!r}, key {k!r}: per-example shape "
                             f"{v.shape[1:]} differs from the training split's {train_sig[k][0]}")
      for k, v in batch.items():
        if jnp.issubdtype(v.dtype, jnp.inexact):
          bad = ~np.isfinite(np.asarray(v))
          if bad.any():
            row = int(np.argwhere(bad)[0][0])
            kind = "NaN" if np.isnan(np.asarray(v)).any() else "inf"
            raise ValueError(f"{where}, split {split!r}, key {k!r}: {int(bad.sum())} non-finite "
                             f"value(s) ({kind}), first in example {row}")
      self._validate_labels(where, split, batch, classes)
    self._validate_functions(where, splits, dict(hparams or {}))

  def label_check(self) -> Callable[[str, Batch], None]:
    """``check(where, batch)``: the label checks of :meth:`validate` for a host-fed batch
    (labels in ``[0, K)``, or binary), ``K`` found once; a bad label raises ``ValueError``
    starting with ``where`` (the sweep names the seed's stream and the batch)."""
    classes = self._num_classes(self.first_batch() if self.host_fed else self.train)
    return lambda where, batch: self._validate_labels(where, "train", batch, classes)

  def _num_classes(self, train: Batch) -> tuple[int | None, str]:
    """``(K, where K comes from)``: ``info["num_classes"]``, else the last axis of ``apply``'s
    output for a cross-entropy task, else ``(None, "")``. A failing ``init`` or ``apply`` gives
    ``None`` here; :meth:`_validate_functions` reports it by name."""
    if self.info.get("num_classes") is not None:
      return self.info["num_classes"], "num_classes"
    if self.apply is None or self.info.get("labels") != "classes":
      return None, ""
    x = train.get(self.info.get("x_key", "x"))
    if x is None or x.ndim == 0:
      return None, ""
    try:
      params = jax.eval_shape(self.init, jax.random.key(0))
      out = jax.eval_shape(self.apply, params, x[:1])
    except Exception:  # noqa: BLE001  (reported by _validate_functions)
      return None, ""
    if getattr(out, "ndim", 0) < 2:
      return None, ""
    return int(out.shape[-1]), "classes: the last axis of apply's output"

  def _validate_labels(self, where: str, split: str, batch: Batch,
                       classes: tuple[int | None, str]) -> None:
    y_key = self.info.get("y_key", "y")
    if y_key not in batch:
      return
    y = np.asarray(batch[y_key])
    num_classes, source = classes
    if num_classes is not None:
      what = (f"num_classes={num_classes}" if source == "num_classes"
              else f"{num_classes} {source}")
      if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}, split {split!r}, key {y_key!r}: labels must be integers "
                         f"for {what}, got dtype {y.dtype}")
      bad = (y < 0) | (y >= num_classes)
      if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{where}, split {split!r}, key {y_key!r}: labels must be in "
                         f"[0, {num_classes}), got {y[bad].flat[0].item()!r} in example {row} "
                         f"({int(bad.sum())} such label(s); {what})")
    if self.info.get("labels") == "binary":
      bad = ~np.isin(y, (-1, 0, 1))
      if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{where}, split {split!r}, key {y_key!r}: labels of "
                         f"loss='logistic' must be in {{0, 1}} or {{-1, +1}}, got "
                         f"{y[bad].flat[0].item()!r} in example {row} ({int(bad.sum())} such "
                         "label(s))")

  def _validate_functions(self, where: str, splits: dict[str, Batch], hparams: dict) -> None:
    key = jax.random.key(0)
    try:
      params = jax.eval_shape(self.init, key)
      state = jax.eval_shape(self.initial_state, key)
    except Exception as e:  # noqa: BLE001  (re-raised with context)
      raise ValueError(f"{where}: init(key) failed: {type(e).__name__}: {e}") from e
    hp = {k: np.asarray(v) for k, v in hparams.items()}

    def loss(p, s, batch):
      return self.step_loss(p, s, batch, key, hp)[0]

    def metrics(p, s, batch):
      return self.evaluate(p, s, batch, hp)

    probe = {k: v[:2] for k, v in splits["train"].items()}
    try:
      value = jax.eval_shape(loss, params, state, probe)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{where}: loss(params, batch) failed on 2 training examples: "
                       f"{type(e).__name__}: {e}") from e
    if not (hasattr(value, "shape") and value.shape == ()
            and jnp.issubdtype(value.dtype, jnp.floating)):
      raise ValueError(f"{where}: loss(params, batch) must return a float scalar, got {value}")
    try:
      jax.eval_shape(jax.grad(loss), params, state, probe)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{where}: loss(params, batch) is not differentiable in params: "
                       f"{type(e).__name__}: {e}") from e
    for split, batch in splits.items():
      probe = {k: v[:2] for k, v in batch.items()}
      try:
        out = jax.eval_shape(metrics, params, state, probe)
      except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where}, split {split!r}: metrics(params, batch) failed: "
                         f"{type(e).__name__}: {e}") from e
      if not isinstance(out, Mapping) or not out:
        raise ValueError(f"{where}: metrics(params, batch) must return a non-empty dict, "
                         f"got {type(out).__name__}")
      for name, v in out.items():
        if getattr(v, "shape", None) != ():
          raise ValueError(f"{where}: metric {name!r} must be a scalar, got {v}")

  # ------------------------------------------------------------------ adapters
  @classmethod
  def from_functions(
      cls,
      name: str,
      init: Callable[[jax.Array], PyTree],
      apply: Callable[[PyTree, jax.Array], jax.Array],
      loss: _objectives.LossSpec = "cross_entropy",
      *,
      train: Mapping[str, Any] | Callable[..., Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      x_key: str = "x",
      y_key: str = "y",
      batch_keys: Sequence[str] | None = None,
  ) -> Task:
    """A task from ``init(key) -> params`` and ``apply(params, x) -> outputs``.

    Args:
      name: the task's label.
      init: ``key -> params``.
      apply: ``(params, inputs) -> outputs`` for a batch of inputs.
      loss: ``"cross_entropy"`` (integer labels, logits ``(B, K)``), ``"logistic"`` (binary,
        labels in ``{0, 1}`` or ``{-1, +1}``, one score per example), ``"mse"``, or a callable
        ``(outputs, targets) -> scalar``.
      train: the training batch, e.g. ``{"x": ..., "y": ...}``, or a batch factory
        ``seed -> iterable of batches`` (see :class:`Task`: a generator function, a torch
        ``DataLoader``, a grain dataset; tuple batches are named ``(x_key, y_key)``).
      eval: held-out splits.
      info: free-form description. With ``loss="cross_entropy"`` :meth:`validate` checks the
        labels against ``num_classes`` if given, else against the number of outputs of
        ``apply``; with ``"logistic"`` it checks that they are in ``{0, 1}`` or ``{-1, +1}``.
      metrics: extra ``(outputs, targets) -> {name: scalar}`` merged into the standard ones.
      x_key: the inputs' key in a batch.
      y_key: the targets' key in a batch.
      batch_keys: the names of the items of tuple batches, in order; default
        ``(x_key, y_key)``.
    """
    fn = f"Task.from_functions({name!r})"
    train = _check_train(fn, train)
    objective, standard = _objectives.resolve(loss, fn)

    def loss_fn(params, batch):
      return objective(apply(params, batch[x_key]), batch[y_key])

    def metrics_fn(params, batch):
      out = apply(params, batch[x_key])
      values = standard(out, batch[y_key])
      if metrics is not None:
        values = {**values, **metrics(out, batch[y_key])}
      return values

    info = {"loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
            "x_key": x_key, "y_key": y_key,
            **({"labels": _LABELS[loss]} if isinstance(loss, str) and loss in _LABELS else {}),
            **dict(info or {})}
    # jit-wrapped so that eager calls (a user's, or a quick check) compile once instead of
    # dispatching op by op; inside the engine's jit / vmap / grad they inline as usual.
    return cls(name=name, init=jax.jit(init), loss=jax.jit(loss_fn),
               metrics=jax.jit(metrics_fn), train=_own(train), eval=dict(eval or {}),
               info=info, apply=apply, batch_keys=batch_keys)

  @classmethod
  def from_flax_nnx(
      cls,
      name: str,
      model_fn: Callable[[Any], Any],
      loss: _objectives.LossSpec = "cross_entropy",
      *,
      train: Mapping[str, Any] | Callable[..., Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      configure: Callable[[Any, Mapping[str, jax.Array]], None] | None = None,
      x_key: str = "x",
      y_key: str = "y",
      batch_keys: Sequence[str] | None = None,
  ) -> Task:
    """A task from a ``flax.nnx`` model factory ``model_fn(rngs) -> nnx.Module``.

    ``init(key)`` builds ``model_fn(nnx.Rngs(key))`` and returns its ``nnx.Param`` state (an
    ``nnx.State``, a pytree that optax and ``nnx.Optimizer`` accept).

    A model with other variables is trained with them:

    * ``BatchStat`` (BatchNorm) and any other non-parameter variable are the run's **model
      state**, carried per config and per seed: updated in training mode (``model.train()``),
      used in evaluation mode (``model.eval()``);
    * RNG streams (Dropout's ``rngs``) are reseeded before every step with
      :func:`reseed_nnx` ``(model, model_key(key, seed, step))``: every config of a seed sees
      the same dropout masks (common random numbers), so a row equals a standalone loop that
      reseeds the same way.

    Args: as :meth:`from_functions`, with ``model_fn`` in place of ``init`` / ``apply``, and
      configure: optional ``(model, hparams) -> None`` called on the merged model before each
        forward pass (training and evaluation), to give the model traced hyperparameters,
        e.g. ``lambda m, h: setattr(m.drop, "rate", h["dropout"])`` with a
        :class:`optaxlr.tasks.Dropout` (``nnx.Dropout`` branches on its rate in Python and
        so cannot take a traced one). Axes it reads count as read.
      loss: as :meth:`from_functions`; a callable may also take ``(outputs, targets,
        hparams)`` (label smoothing as a hyperparameter).
    """
    from flax import nnx  # local: keep `import optaxlr` light

    fn = f"Task.from_flax_nnx({name!r})"
    train = _check_train(fn, train)
    if configure is not None and not callable(configure):
      raise TypeError(f"{fn}: configure must be a function (model, hparams) -> None, got "
                      f"{type(configure).__name__}")
    objective, standard = _objectives.resolve(loss, fn)
    takes_hp = _takes_hparams(loss)
    abstract = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    graphdef, _, _, rest = nnx.split(abstract, nnx.Param, nnx.RngState, ...)
    streams = sorted({v.tag for _, v in nnx.iter_graph(abstract)
                      if isinstance(v, nnx.RngStream)})
    stateful = bool(jax.tree.leaves(rest)) or bool(streams)

    def parts(key):
      return nnx.split(model_fn(nnx.Rngs(key)), nnx.Param, nnx.RngState, ...)

    def init(key):
      return parts(key)[1]

    base_info = {"framework": "flax.nnx", "x_key": x_key, "y_key": y_key,
                 "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
                 **({"labels": _LABELS[loss]} if isinstance(loss, str) and loss in _LABELS else {}),
                 **({"rng_streams": streams} if streams else {}), **dict(info or {})}

    if not stateful and configure is None and not takes_hp:
      def apply(params, x):
        return nnx.merge(graphdef, params, nnx.State({}), nnx.State({}))(x)

      task = cls.from_functions(name, init, apply, loss, train=train, eval=eval, info=base_info,
                                metrics=metrics, x_key=x_key, y_key=y_key, batch_keys=batch_keys)
      return dataclasses.replace(task, to_model=lambda params, state=(), hparams=None: (
          _restore_hparams(fn, nnx.merge(graphdef, params, nnx.State({}), nnx.State({})),
                           hparams, None)))

    # The RNG streams' variables are rebuilt from a template every step (their keys are
    # replaced by reseeding), so they are not part of the carried model state.
    rng_template = jax.jit(lambda: parts(jax.random.key(0))[2])()

    def merged(params, state):
      # fresh Variables of the current trace (the template's were made outside it)
      rngs, state = jax.tree.map(lambda x: x, (rng_template, state))
      return nnx.merge(graphdef, params, rngs, state)

    def forward(model, x, hparams):
      if configure is not None:
        configure(model, hparams)
      with _hparams_scope(hparams):
        return model(x)

    def objective_hp(out, y, hparams):
      return objective(out, y, hparams) if takes_hp else objective(out, y)

    def init_state(key):
      return parts(key)[3]

    def train_loss(params, state, batch, key, hparams):
      model = merged(params, state)
      model.train()
      reseed_nnx(model, key)
      out = forward(model, batch[x_key], hparams)
      new_state = nnx.split(model, nnx.Param, nnx.RngState, ...)[3]
      return objective_hp(out, batch[y_key], hparams), new_state

    def eval_metrics(params, state, batch, hparams):
      model = merged(params, state)
      model.eval()
      out = forward(model, batch[x_key], hparams)
      return _eval_values(standard, objective, takes_hp, metrics, out, batch[y_key], hparams)

    def to_model(params, state=None, hparams=None):
      """The ``nnx.Module`` with these parameters and model state (training mode), and the
      config's model hyperparameters ``hparams`` set into its layers (see
      :func:`_restore_hparams`)."""
      model = merged(params, _state_or_refuse(fn, state, init_state))
      return _restore_hparams(fn, model, hparams, configure)

    def eval_apply(params, x):
      model = merged(params, init_state(jax.random.key(0)))
      model.eval()
      return model(x)

    def loss_fn(params, batch):
      return eval_metrics(params, init_state(jax.random.key(0)), batch, {})["loss"] if not (
          configure or takes_hp) else _needs_hparams(fn)

    def metrics_fn(params, batch):
      if configure is not None or takes_hp:
        return _needs_hparams(fn)
      return eval_metrics(params, init_state(jax.random.key(0)), batch, {})

    return cls(name=name, init=jax.jit(init), loss=jax.jit(loss_fn), metrics=jax.jit(metrics_fn),
               train=_own(train), eval=dict(eval or {}), info=base_info, apply=eval_apply,
               batch_keys=batch_keys,
               init_state=jax.jit(init_state), train_loss=train_loss, eval_metrics=eval_metrics,
               to_model=to_model)

  @classmethod
  def from_linen(
      cls,
      name: str,
      module: Any,
      loss: _objectives.LossSpec = "cross_entropy",
      *,
      train: Mapping[str, Any] | Callable[..., Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      rng_streams: Sequence[str] = (),
      train_kwargs: Mapping[str, Any] | None = None,
      eval_kwargs: Mapping[str, Any] | None = None,
      x_key: str = "x",
      y_key: str = "y",
      batch_keys: Sequence[str] | None = None,
  ) -> Task:
    """A task from a ``flax.linen`` module: ``params = module.init(key, x[:1])["params"]``.

    Collections other than ``"params"`` (``batch_stats``...) are the run's model state: in
    training the loss calls ``module.apply({"params": p, **state}, x, mutable=[...],
    rngs={s: stream_key(key, s)}, **train_kwargs)`` and carries the updated collections; the
    evaluation calls ``module.apply({"params": p, **state}, x, **eval_kwargs)``.

    Args: as :meth:`from_functions`, with ``module`` in place of ``init`` / ``apply``, and
      rng_streams: the RNG streams the module draws from in training (``("dropout",)``); each
        step's keys are :func:`stream_key` ``(model_key(key, seed, step), name)``.
      train_kwargs: keyword arguments of ``__call__`` in training (``{"train": True}``).
      eval_kwargs: keyword arguments of ``__call__`` in evaluation (``{"train": False}``).
    """
    fn = f"Task.from_linen({name!r})"
    train = _check_train(fn, train)
    if isinstance(rng_streams, str) or not all(isinstance(r, str) for r in rng_streams):
      raise ValueError(f"{fn}: rng_streams must be a sequence of stream names, got "
                       f"rng_streams={rng_streams!r}")
    streams = tuple(rng_streams)
    tkw, ekw = dict(train_kwargs or {}), dict(eval_kwargs or {})
    if callable(train) and not isinstance(train, Mapping):  # a batch factory: its first batch
      probe = cls(name=name, init=lambda key: None, loss=lambda p, b: 0.0,
                  metrics=lambda p, b: {}, train=train, info={"x_key": x_key, "y_key": y_key},
                  batch_keys=batch_keys)
      x0 = probe.first_batch(0)[x_key][:1]
    else:
      x0 = _as_batch(fn, "train", train, tuple(batch_keys or (x_key, y_key)))[x_key][:1]

    def rngs_for(key):  # "params" draws from the init key itself, as module.init(key, x)
      return {"params": key, **{s: stream_key(key, s) for s in streams}}

    def variables(key):
      return module.init(rngs_for(key), x0, **ekw)

    shapes = jax.eval_shape(variables, jax.random.key(0))
    extra = sorted(k for k in shapes if k != "params")
    if not extra and not streams and not tkw and not ekw:
      def init(key):
        return module.init(key, x0)["params"]

      def apply(params, x):
        return module.apply({"params": params}, x)

      task = cls.from_functions(name, init, apply, loss, train=train, eval=eval,
                                info={"framework": "flax.linen", **dict(info or {})},
                                metrics=metrics, x_key=x_key, y_key=y_key, batch_keys=batch_keys)
      return dataclasses.replace(task, to_model=lambda params, state=(): {"params": params})
    objective, standard = _objectives.resolve(loss, fn)
    takes_hp = _takes_hparams(loss)

    def init_p(key):
      return variables(key)["params"]

    def init_state(key):
      v = variables(key)
      return {k: v[k] for k in extra}

    def train_loss(params, state, batch, key, hparams):
      with _hparams_scope(hparams):
        out, new = module.apply({"params": params, **state}, batch[x_key], mutable=extra,
                                rngs={s: stream_key(key, s) for s in streams}, **tkw)
      y = batch[y_key]
      value = objective(out, y, hparams) if takes_hp else objective(out, y)
      return value, {k: new[k] for k in extra}

    def eval_metrics(params, state, batch, hparams):
      with _hparams_scope(hparams):
        out = module.apply({"params": params, **state}, batch[x_key], **ekw)
      return _eval_values(standard, objective, takes_hp, metrics, out, batch[y_key], hparams)

    def eval_apply(params, x):
      return module.apply({"params": params, **init_state(jax.random.key(0))}, x, **ekw)

    def loss_fn(params, batch):
      if takes_hp:
        return _needs_hparams(fn)
      return eval_metrics(params, init_state(jax.random.key(0)), batch, {})["loss"]

    def metrics_fn(params, batch):
      if takes_hp:
        return _needs_hparams(fn)
      return eval_metrics(params, init_state(jax.random.key(0)), batch, {})

    info = {"framework": "flax.linen", "x_key": x_key, "y_key": y_key,
            "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
            **({"labels": _LABELS[loss]} if isinstance(loss, str) and loss in _LABELS else {}),
            **({"rng_streams": list(streams)} if streams else {}), **dict(info or {})}
    return cls(name=name, init=jax.jit(init_p), loss=jax.jit(loss_fn), metrics=jax.jit(metrics_fn),
               train=_own(train), eval=dict(eval or {}), info=info, apply=eval_apply,
               batch_keys=batch_keys,
               init_state=jax.jit(init_state), train_loss=train_loss, eval_metrics=eval_metrics,
               to_model=lambda params, state=None, hparams=None: _linen_variables(
                   fn, params, _state_or_refuse(fn, state, init_state), hparams))


def _state_or_refuse(fn: str, state: Any, init_state: Callable[[jax.Array], Any]) -> Any:
  """``state``; when it is ``None``, the initial model state of a model that holds none (its
  RNG streams aside), and an error for one that holds some (BatchNorm's running statistics):
  the initial statistics would silently replace the run's."""
  if state is not None:
    return state
  initial = init_state(jax.random.key(0))
  if jax.tree.leaves(initial):
    raise ValueError(f"{fn}: to_model(params, state=None): this model holds state (e.g. "
                     "BatchNorm's running statistics) and a rebuilt model needs the run's; pass "
                     "it: task.to_model(res.params_of(i), res.model_state_of(i)) (sweep with "
                     "Execution(keep_params=True))")
  return initial


def _linen_variables(fn: str, params: Any, state: Any, hparams: Any) -> dict:
  """A linen run's variables ``{"params": ..., **state}``; linen variables hold no
  hyperparameters (a module reads them at apply time), so ``hparams`` is refused."""
  if hparams is not None:
    raise ValueError(f"{fn}: to_model(params, state, hparams=...): linen variables hold no "
                     "hyperparameters (a linen module reads them with optaxlr.tasks.hparam at "
                     "apply time, inside a sweep only); pass them to your module yourself "
                     "(e.g. as a call argument) and drop hparams=")
  return {"params": params, **state}


def _restore_hparams(fn: str, model: Any, hparams: Mapping[str, Any] | None,
                     configure: Callable | None) -> Any:
  """Sets a config's model hyperparameters into an ``nnx`` model handed back from a sweep.

  Every :class:`Dropout` with ``hparam=name`` gets ``rate = hparams[name]`` (the swept rate,
  not the constructor's), and ``configure(model, hparams)`` (the task's, if any) runs with the
  values as Python floats. Names the model does not read (the optimizer's ``lr``, ``wd``) are
  not the model's business and are left alone. A model that reads :func:`hparam` in its own
  code keeps reading the default it gives there, outside a sweep.

  Raises:
    ValueError: a Dropout reads a name ``hparams`` lacks, or a value is not a scalar.
  """
  if hparams is None:
    return model
  from flax import nnx

  if not isinstance(hparams, Mapping):
    raise TypeError(f"{fn}: to_model: hparams must be a dict of one config's values (e.g. "
                    f"res.config(i)), got {type(hparams).__name__}")
  values = {}
  for k, v in hparams.items():
    a = np.asarray(v)
    if a.shape != () or a.dtype.kind not in "biuf":
      raise ValueError(f"{fn}: to_model: hparams[{k!r}] must be one number (one config's "
                       f"value), got {v!r}")
    values[k] = a.item()
  drop_cls = __getattr__("Dropout") if "Dropout" not in globals() else globals()["Dropout"]
  for path, node in nnx.iter_graph(model):
    if isinstance(node, drop_cls) and node.hparam is not None:
      if node.hparam not in values:
        where = ".".join(str(p) for p in path) or "(the model)"
        raise ValueError(f"{fn}: to_model: the Dropout at {where} reads hyperparameter "
                         f"{node.hparam!r}, which hparams does not hold (its names: "
                         f"{sorted(values)})")
      node.rate = float(values[node.hparam])
  if configure is not None:
    configure(model, values)
  return model


_HPARAMS: contextvars.ContextVar = contextvars.ContextVar("optaxlr_hparams", default=None)


@contextlib.contextmanager
def _hparams_scope(hparams: Mapping[str, Any]):
  token = _HPARAMS.set(hparams)
  try:
    yield
  finally:
    _HPARAMS.reset(token)


def hparam(name: str, default: Any = None) -> Any:
  """The current config's hyperparameter ``name`` (a traced scalar) inside a sweep's forward
  pass of a flax task; outside one, ``default``.

  A model reads a swept hyperparameter with it (a dropout rate, label smoothing, a
  stochastic-depth rate): ``x = nnx.Dropout``-like code with ``rate = hparam("dropout", 0.1)``.
  Inside a sweep a name the space does not hold is a ``KeyError`` naming the available ones
  (never a silent default); the axis counts as read.
  """
  hp = _HPARAMS.get()
  if hp is None:
    if default is None:
      raise ValueError(f"hparam: {name!r} read outside a sweep's step and no default given")
    return default
  try:
    return hp[name]
  except KeyError:
    raise KeyError(f"hparam: the model reads hyperparameter {name!r}, which the space does not "
                   f"hold; available: {sorted(hp)}") from None


def _eval_values(standard, objective, takes_hp, metrics, out, y, hparams) -> dict:
  """The evaluation metrics of the adapters: the standard ones (the loss with ``hparams`` when
  the loss takes them) and the user's extra ``metrics``."""
  values = dict(standard(out, y))
  if takes_hp:
    values["loss"] = objective(out, y, hparams)
  if metrics is not None:
    values = {**values, **metrics(out, y)}
  return values


def _takes_hparams(loss: Any) -> bool:
  """Whether a callable loss takes ``(outputs, targets, hparams)``."""
  if not callable(loss):
    return False
  import inspect

  try:
    params = [p for p in inspect.signature(loss).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  except (TypeError, ValueError):
    return False
  return len(params) >= 3


def _needs_hparams(fn: str):
  raise ValueError(f"{fn}: this task's model reads hyperparameters (configure= or a loss taking "
                   "hparams); call task.step_loss / task.evaluate with hparams, or sweep it")


def stream_key(key: jax.Array, stream: str) -> jax.Array:
  """The key of RNG stream ``stream`` (``"dropout"``...) at one step:
  ``fold_in(key, crc32(stream))``, ``key`` being the step's :func:`optaxlr.engine.model_key`."""
  return jax.random.fold_in(key, zlib.crc32(stream.encode()) & 0x7FFFFFFF)


def reseed_nnx(model: Any, key: jax.Array) -> None:
  """Reseeds every RNG stream of an ``nnx`` model for one step: stream ``s`` gets
  :func:`stream_key` ``(key, s)`` (``nnx.reseed``). The sweep calls it before every training
  step with ``key = optaxlr.engine.model_key(sweep_key, seed, step)``; a standalone loop that
  does the same sees the same dropout masks."""
  from flax import nnx

  tags = sorted({v.tag for _, v in nnx.iter_graph(model) if isinstance(v, nnx.RngStream)})
  if tags:
    nnx.reseed(model, **{t: stream_key(key, t) for t in tags})


def _dropout_class():
  from flax import nnx

  class Dropout(nnx.Module):
    """Inverted dropout whose rate may be a swept hyperparameter (a traced scalar).

    ``nnx.Dropout`` decides in Python whether its rate is 0 or 1 and so cannot take a traced
    rate; this layer computes ``where(bernoulli(key, 1 - rate), x / (1 - rate), 0)`` for any
    rate in ``[0, 1)`` (``nnx.Dropout``'s formula, same key use: one ``bernoulli`` draw from
    the ``rng_collection`` stream). ``model.train()`` / ``model.eval()`` switch it like
    ``nnx.Dropout``. With ``hparam="dropout"`` a sweep's config sets the rate
    (:func:`hparam`); outside a sweep the layer uses ``rate``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> drop = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
      >>> drop.eval(); bool((drop(jnp.ones(4)) == 1).all())
      True
    """

    def __init__(self, rate: float = 0.5, *, hparam: str | None = None,
                 deterministic: bool = False, rng_collection: str = "dropout", rngs: Any = None):
      self.rate = rate
      self.hparam = hparam
      self.deterministic = deterministic
      self.rng_collection = rng_collection
      if isinstance(rngs, nnx.Rngs):
        self.rngs = rngs[rng_collection].fork()
      elif isinstance(rngs, nnx.RngStream):
        self.rngs = rngs.fork()
      else:
        self.rngs = nnx.data(None)

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
      det = self.deterministic if deterministic is None else deterministic
      if det:
        return x
      if self.rngs is None:
        raise ValueError("Dropout: deterministic is False but the layer has no rngs")
      rate = self.rate if self.hparam is None else hparam(self.hparam, self.rate)
      keep = 1.0 - jnp.asarray(rate, x.dtype)
      mask = jax.random.bernoulli(self.rngs(), p=keep, shape=x.shape)
      return jax.lax.select(mask, x / keep, jnp.zeros_like(x))

  return Dropout


def __getattr__(name: str):
  if name == "Dropout":  # built on first use: keeps `import optaxlr` free of flax
    cls = _dropout_class()
    cls.__module__ = __name__
    globals()["Dropout"] = cls
    return cls
  raise AttributeError(name)


def set_opt_state(optimizer: Any, opt_state: Any, step: int | None = None) -> None:
  """Puts an optax state (``SweepResult.opt_state_of(...)``) into an ``nnx.Optimizer`` built
  with the same transformation, so that training continues exactly where the sweep's run
  stopped (``nnx.Optimizer(model, optimizer(hparams), wrt=nnx.Param)``), and sets the
  optimizer's update counter ``optimizer.step`` to the updates the run made.

  Args:
    optimizer: the ``nnx.Optimizer``.
    opt_state: the run's optax state.
    step: the updates the run made (``res.info["steps"]`` for a run that was not stopped);
      default: read from the state's update counts (the ``count`` fields of optax's states:
      Adam's, a schedule's), which must exist and agree.

  Raises:
    ValueError: the state's structure or shapes differ from the optimizer's; no ``step`` and
      the state holds no (or disagreeing) update counts; ``step`` not an integer >= 0.
  """
  from flax import nnx
  from flax.nnx.training.optimizer import to_opt_state

  current = nnx.as_pure(optimizer.opt_state)
  new = nnx.as_pure(jax.tree.map(jnp.asarray, opt_state))
  if jax.tree.structure(current) != jax.tree.structure(new) or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(current), jax.tree.leaves(new))):
    raise ValueError("set_opt_state: the state does not fit this optimizer (another "
                     "transformation or model?): structure "
                     f"{jax.tree.structure(new)} vs {jax.tree.structure(current)}")
  if step is None:
    counts = sorted({int(np.asarray(leaf)) for path, leaf in
                     jax.tree_util.tree_flatten_with_path(new)[0]
                     if path and getattr(path[-1], "name", None) == "count"
                     and np.shape(leaf) == ()})
    if len(counts) != 1:
      what = "no update count" if not counts else f"update counts that disagree ({counts})"
      raise ValueError(f"set_opt_state: the state holds {what}, so optimizer.step cannot be "
                       "read from it; pass step= (the updates the run made, e.g. "
                       "res.info['steps'])")
    step = counts[0]
  elif isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise ValueError(f"set_opt_state: step must be an integer >= 0, got step={step!r}")
  optimizer.opt_state = nnx.data(to_opt_state(new))
  optimizer.step[...] = jnp.asarray(step, optimizer.step[...].dtype)
