"""`Task`: what the sweep engine trains: init, loss, metrics and the data arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxlr.tasks import _objectives

__all__ = ["Task", "Batch"]

PyTree = Any
_LABELS = {"cross_entropy": "classes", "logistic": "binary"}  # built-in loss -> label kind
Batch = dict[str, jax.Array]
"""A dict of arrays sharing a leading example axis, e.g. ``{"x": (N, d), "y": (N,)}``."""


def _as_batch(fn: str, split: str, batch: Any) -> dict[str, jax.Array]:
  if not isinstance(batch, Mapping) or not batch:
    raise TypeError(f"{fn}: split {split!r} must be a non-empty dict of arrays, got "
                    f"{type(batch).__name__}")
  out = {}
  for k, v in batch.items():
    if not isinstance(k, str):
      raise TypeError(f"{fn}: split {split!r} has a non-string key {k!r}")
    out[k] = jnp.asarray(v)
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A supervised training problem in pure functions, the sweep engine's input.

  Attributes:
    name: a short label.
    init: ``key -> params`` (any pytree).
    loss: ``(params, batch) -> scalar`` mean training loss; pure, jit/vmap-safe.
    metrics: ``(params, batch) -> {name: scalar}``, e.g. ``loss``, ``accuracy``, ``error``.
    train: the training split; the engine takes minibatches by indexing every array with an
      index array along the leading axis.
    eval: held-out splits by name (``"val"``, ``"test"``), each a batch like ``train``.
    info: free-form description; keys the library reads: ``num_classes`` (labels checked
      by :meth:`validate`), ``y_key`` (the label key, default ``"y"``), ``x_key``, and
      ``labels``: ``"classes"`` (integers in ``[0, K)``) or ``"binary"`` (``{0, 1}`` or
      ``{-1, +1}``), which :meth:`from_functions` sets for its built-in classification losses.
    apply: ``(params, inputs) -> outputs``, the model, when the task was built from one
      (:meth:`from_functions` and the flax adapters set it), else ``None``; :meth:`validate`
      reads the number of classes from its output's shape.

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

  def __post_init__(self):
    object.__setattr__(self, "train", _as_batch("Task", "train", self.train))
    if not isinstance(self.eval, Mapping):
      raise TypeError(f"Task: eval must be a dict of splits, got {type(self.eval).__name__}")
    object.__setattr__(self, "eval", {s: _as_batch("Task", s, b) for s, b in self.eval.items()})
    object.__setattr__(self, "info", dict(self.info))

  @property
  def n_train(self) -> int:
    """Number of training examples."""
    return int(next(iter(self.train.values())).shape[0])

  # ------------------------------------------------------------------ validation
  def validate(self) -> None:
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

    Raises:
      ValueError: naming the task, split, key and problem.
    """
    where = f"Task.validate: task {self.name!r}"
    splits = {"train": self.train, **self.eval}
    classes = self._num_classes()
    train_sig = {k: (v.shape[1:], v.dtype) for k, v in self.train.items()}
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
        if set(batch) != set(self.train):
          raise ValueError(f"{where}, split {split!r}: keys {sorted(batch)} differ from the "
                           f"training split's keys {sorted(self.train)}")
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
    self._validate_functions(where, splits)

  def _num_classes(self) -> tuple[int | None, str]:
    """``(K, where K comes from)``: ``info["num_classes"]``, else the last axis of ``apply``'s
    output for a cross-entropy task, else ``(None, "")``. A failing ``init`` or ``apply`` gives
    ``None`` here; :meth:`_validate_functions` reports it by name."""
    if self.info.get("num_classes") is not None:
      return self.info["num_classes"], "num_classes"
    if self.apply is None or self.info.get("labels") != "classes":
      return None, ""
    x = self.train.get(self.info.get("x_key", "x"))
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

  def _validate_functions(self, where: str, splits: dict[str, Batch]) -> None:
    key = jax.random.key(0)
    try:
      params = jax.eval_shape(self.init, key)
    except Exception as e:  # noqa: BLE001  (re-raised with context)
      raise ValueError(f"{where}: init(key) failed: {type(e).__name__}: {e}") from e
    probe = {k: v[:2] for k, v in self.train.items()}
    try:
      value = jax.eval_shape(self.loss, params, probe)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{where}: loss(params, batch) failed on 2 training examples: "
                       f"{type(e).__name__}: {e}") from e
    if not (hasattr(value, "shape") and value.shape == ()
            and jnp.issubdtype(value.dtype, jnp.floating)):
      raise ValueError(f"{where}: loss(params, batch) must return a float scalar, got {value}")
    try:
      jax.eval_shape(jax.grad(self.loss), params, probe)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{where}: loss(params, batch) is not differentiable in params: "
                       f"{type(e).__name__}: {e}") from e
    for split, batch in splits.items():
      probe = {k: v[:2] for k, v in batch.items()}
      try:
        out = jax.eval_shape(self.metrics, params, probe)
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
      train: Mapping[str, Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      x_key: str = "x",
      y_key: str = "y",
  ) -> Task:
    """A task from ``init(key) -> params`` and ``apply(params, x) -> outputs``.

    Args:
      name: the task's label.
      init: ``key -> params``.
      apply: ``(params, inputs) -> outputs`` for a batch of inputs.
      loss: ``"cross_entropy"`` (integer labels, logits ``(B, K)``), ``"logistic"`` (binary,
        labels in ``{0, 1}`` or ``{-1, +1}``, one score per example), ``"mse"``, or a callable
        ``(outputs, targets) -> scalar``.
      train: the training batch, e.g. ``{"x": ..., "y": ...}``.
      eval: held-out splits.
      info: free-form description. With ``loss="cross_entropy"`` :meth:`validate` checks the
        labels against ``num_classes`` if given, else against the number of outputs of
        ``apply``; with ``"logistic"`` it checks that they are in ``{0, 1}`` or ``{-1, +1}``.
      metrics: extra ``(outputs, targets) -> {name: scalar}`` merged into the standard ones.
      x_key: the inputs' key in a batch.
      y_key: the targets' key in a batch.
    """
    objective, standard = _objectives.resolve(loss, f"Task.from_functions({name!r})")

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
               metrics=jax.jit(metrics_fn), train=dict(train), eval=dict(eval or {}),
               info=info, apply=apply)

  @classmethod
  def from_flax_nnx(
      cls,
      name: str,
      model_fn: Callable[[Any], Any],
      loss: _objectives.LossSpec = "cross_entropy",
      *,
      train: Mapping[str, Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      x_key: str = "x",
      y_key: str = "y",
  ) -> Task:
    """A task from a ``flax.nnx`` model factory ``model_fn(rngs) -> nnx.Module``.

    ``init(key)`` builds ``model_fn(nnx.Rngs(key))`` and returns its ``nnx.Param`` state
    (an ``nnx.State``, a pytree that optax and ``nnx.Optimizer`` accept); ``loss`` merges
    the params back into the model (``nnx.merge``) and calls it on ``batch[x_key]``.

    Only ``nnx.Param`` variables are allowed: the task's functions carry no mutable state and
    take no PRNG key, so a model with ``BatchStat`` (BatchNorm), RNG streams (Dropout with
    ``rngs``) or other variables is refused with a ``ValueError``.

    Args: as :meth:`from_functions`, with ``model_fn`` in place of ``init`` / ``apply``.
    """
    from flax import nnx  # local: keep `import optaxlr` light

    fn = f"Task.from_flax_nnx({name!r})"
    abstract = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    leaves = jax.tree_util.tree_leaves_with_path(
        rest, is_leaf=lambda v: isinstance(v, nnx.Variable))
    if leaves:
      from optaxlr._paths import path_str
      desc = ", ".join(f"{path_str(p)} ({type(v).__name__})" for p, v in leaves[:5])
      raise ValueError(f"{fn}: the model may hold only nnx.Param variables (the task carries no "
                       f"mutable state and no PRNG key), got {desc}")

    def init(key):
      return nnx.split(model_fn(nnx.Rngs(key)), nnx.Param, ...)[1]

    def apply(params, x):
      return nnx.merge(graphdef, params)(x)

    return cls.from_functions(name, init, apply, loss, train=train, eval=eval,
                              info={"framework": "flax.nnx", **dict(info or {})},
                              metrics=metrics, x_key=x_key, y_key=y_key)

  @classmethod
  def from_linen(
      cls,
      name: str,
      module: Any,
      loss: _objectives.LossSpec = "cross_entropy",
      *,
      train: Mapping[str, Any],
      eval: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
      info: Mapping[str, Any] | None = None,
      metrics: Callable[[jax.Array, jax.Array], dict[str, jax.Array]] | None = None,
      x_key: str = "x",
      y_key: str = "y",
  ) -> Task:
    """A task from a ``flax.linen`` module: ``params = module.init(key, x[:1])["params"]``.

    The loss calls ``module.apply({"params": params}, batch[x_key])``. A module with other
    variable collections (``batch_stats``, ...) is refused with a ``ValueError``; so is one that
    needs RNGs in ``apply`` (it fails when called without them).

    Args: as :meth:`from_functions`, with ``module`` in place of ``init`` / ``apply``.
    """
    fn = f"Task.from_linen({name!r})"
    x0 = jnp.asarray(train[x_key])[:1]
    shapes = jax.eval_shape(module.init, jax.random.key(0), x0)
    extra = sorted(k for k in shapes if k != "params")
    if extra:
      raise ValueError(f"{fn}: the module may hold only 'params', got collections {extra} "
                       "(the task carries no mutable state)")

    def init(key):
      return module.init(key, x0)["params"]

    def apply(params, x):
      return module.apply({"params": params}, x)

    return cls.from_functions(name, init, apply, loss, train=train, eval=eval,
                              info={"framework": "flax.linen", **dict(info or {})},
                              metrics=metrics, x_key=x_key, y_key=y_key)
