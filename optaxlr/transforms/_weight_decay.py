"""Weight decay done right: L2 / L1 regularisation, decoupled weight decay, masks, AdamW and SGD.

Loshchilov & Hutter distinguish *L2 regularisation* (a term ``lambda * theta`` added to the
gradient, which an adaptive preconditioner such as Adam then rescales) from *decoupled weight
decay* (a term ``-eta_t * lambda * theta`` added to the update after the preconditioner). Frameworks
implement only some variants and disagree on how the decay is scaled:

==============  ===============================================  ==========================
``decay``       update added for parameter ``theta`` at step t   the same as
==============  ===============================================  ==========================
"decoupled"     ``-lr_t * wd * theta``                           ``torch.optim.AdamW``,
                                                                 ``optax.adamw``, Keras
"paper"         ``-(lr_t / base_lr) * wd * theta``               the paper's Algorithm 1/2
"independent"   ``-wd * theta``                                  the paper with eta_t = 1
"l2"            ``wd * theta`` added to the *gradient*           ``torch.optim.Adam`` /
                                                                 ``SGD(weight_decay=)``
"none"          nothing                                          ``torch.optim.Adam()``
==============  ===============================================  ==========================

Every numeric hyperparameter may be a Python number or a JAX array (a tracer under ``jit`` or
``vmap`` included); masks and mode strings are structure and stay static. Concrete values are
checked when a transform is built: NaN, ``inf`` and ``bool`` (``True`` is not a number here) are
refused with a ``ValueError`` naming the argument, NumPy scalars are accepted. Traced values
cannot be checked (a ``bool`` dtype is refused even then); the sweep engine checks grids on the
host before tracing.

Under ``optax.inject_hyperparams`` pass ``static_args=("mask",)`` when ``mask`` is a callable
(``inject_hyperparams`` would take it for a schedule), and give mode ``"paper"`` an explicit
``base_lr`` (the learning rate reaches the factory as a number each step).
"""

from __future__ import annotations

from collections.abc import Callable
import re
from typing import Any, Literal, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxlr import _validate
from optaxlr._paths import path_str

__all__ = [
    "DecoupledWeightDecayState",
    "adamw",
    "decoupled_weight_decay",
    "l1_regularization",
    "l2_regularization",
    "no_bias_norm_mask",
    "sgd",
]

DecayMode = Literal["decoupled", "paper", "independent", "l2", "none"]
_DECAY_MODES = ("decoupled", "paper", "independent", "l2", "none")

MaskOrFn = Union[None, str, Any, Callable[[Any], Any]]
ScheduleLike = Union[None, jax.typing.ArrayLike, Callable[[jax.Array], jax.typing.ArrayLike]]


# ----------------------------------------------------------------------------------------------
# Masks.
# ----------------------------------------------------------------------------------------------

# A path component naming a normalisation layer: linen "LayerNorm_0", "BatchNorm_1",
# "GroupNorm_0", "RMSNorm_0", nnx attributes "norm", "norm1", "layer_norm", and the short
# GPT/ResNet names "ln_f", "ln1", "bn1", "gn".
_NORM_COMPONENT = re.compile(r"norm|^(ln|bn|gn)(\d+|_.*)?$", re.IGNORECASE)
# A leaf name that is a bias or a normalisation scale/offset wherever it lives.
_NO_DECAY_LEAF = re.compile(r"^(bias|scale|offset)$|_bias$", re.IGNORECASE)


def _entries(path: tuple[Any, ...]) -> tuple[str, ...]:
  """Path components as strings, without the ``.value`` of an ``nnx.Variable`` box.

  ``nnx.state(model, nnx.Param)`` flattens to paths ``("linear", "bias", .value)`` while the
  pure state that ``nnx.Optimizer.update`` hands to optax flattens to ``("linear", "bias")``;
  dropping the trailing attribute makes both name the same parameter.
  """
  entries = list(path)
  while (
      entries
      and isinstance(entries[-1], jax.tree_util.GetAttrKey)
      and entries[-1].name == "value"
  ):
    entries.pop()
  return tuple(path_str((e,)) for e in entries)


def _brief(paths: list[tuple[str, ...]], limit: int = 6) -> str:
  names = ["/".join(p) if p else "<root>" for p in paths]
  shown = ", ".join(repr(n) for n in names[:limit])
  more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
  return f"[{shown}{more}]"


def _ndim(leaf: Any) -> int:
  ndim = getattr(leaf, "ndim", None)
  return int(ndim) if ndim is not None else int(np.ndim(leaf))


def _decays(entries: tuple[str, ...], leaf: Any) -> bool:
  if _ndim(leaf) <= 1:
    return False
  if entries and _NO_DECAY_LEAF.search(entries[-1]):
    return False
  return not any(_NORM_COMPONENT.search(e) for e in entries[:-1])


def no_bias_norm_mask(params: Any) -> Any:
  """The usual weight-decay mask: decay weight matrices, not biases or normalisation params.

  A leaf is decayed (``True``) unless

  * it has ``ndim <= 1`` (biases, norm scales/offsets, per-channel vectors, scalars), or
  * its own name is ``bias``, ``scale`` or ``offset`` or ends in ``_bias`` (this catches the
    2-D bias of a ``DenseGeneral``/attention projection), or
  * a path component above it names a normalisation layer: it contains ``norm`` (any case:
    linen ``LayerNorm_0``, ``BatchNorm_0``, ``GroupNorm_0``, ``RMSNorm_0``; nnx attributes
    ``norm``, ``norm1``, ``layer_norm``) or is ``ln``/``bn``/``gn`` optionally followed by
    digits or ``_...`` (``ln_f``, ``bn1``).

  Paths are those of ``jax.tree_util`` key paths, so the rule works for linen ``params`` dicts,
  for ``nnx.state(model, nnx.Param)`` (with or without the ``nnx.Variable`` boxes) and for plain
  pytrees. PyTorch has no built-in equivalent (one builds two param groups by hand); optax's
  docs suggest ``lambda p: jax.tree.map(lambda x: x.ndim != 1, p)``, which decays scalars and
  2-D biases.

  Args:
    params: a pytree of arrays (or of anything with ``ndim``).

  Returns:
    A pytree with the structure of ``params`` whose leaves are Python bools.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
    ...           "LayerNorm_0": {"scale": jnp.ones(3)}}
    >>> no_bias_norm_mask(params)
    {'Dense_0': {'bias': False, 'kernel': True}, 'LayerNorm_0': {'scale': False}}
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree_util.tree_unflatten(
      treedef, [_decays(_entries(path), leaf) for path, leaf in leaves]
  )


def _mask_leaf(fn: str, entries: tuple[str, ...], value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  arr = _validate.concrete(value)
  if arr is not None and arr.ndim == 0 and arr.dtype == np.bool_:
    return bool(arr)
  name = "/".join(entries) or "<root>"
  raise ValueError(
      f"{fn}: mask leaves must be Python bools (True = decay), got mask[{name!r}]="
      f"{type(value).__name__} {getattr(value, 'shape', '')}".rstrip()
  )


def _match_mask(fn: str, mask_tree: Any, tree: Any) -> Any:
  """Broadcasts a mask (a prefix tree of bools) onto ``tree``, matching leaves by path."""
  mask_leaves = jax.tree_util.tree_flatten_with_path(mask_tree)[0]
  by_path = {_entries(p): _mask_leaf(fn, _entries(p), v) for p, v in mask_leaves}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  tree_paths = [_entries(p) for p, _ in leaves]
  out, used, missing = [], set(), []
  for entries in tree_paths:
    prefix = next((entries[:k] for k in range(len(entries) + 1) if entries[:k] in by_path), None)
    if prefix is None:
      missing.append(entries)
      continue
    used.add(prefix)
    out.append(by_path[prefix])
  unused = [p for p in by_path if p not in used]
  if missing or unused:
    what = (
        f"no mask entry for {_brief(missing, 3)}" if missing
        else f"mask entries {_brief(unused, 3)} name no parameter"
    )
    raise ValueError(
        f"{fn}: mask must be a pytree of bools with the params' structure (or a prefix of it), "
        f"got a mask that does not match ({what}); mask structure: "
        f"{_brief(list(by_path))}, params structure: {_brief(tree_paths)}"
    )
  return jax.tree_util.tree_unflatten(treedef, out)


def _mask_fn(fn: str, mask: MaskOrFn) -> Callable[[Any], Any] | None:
  """Turns any accepted ``mask`` into ``tree -> full tree of bools`` (or ``None``: no mask)."""
  if mask is None:
    return None
  if isinstance(mask, str):
    _validate.one_of(fn, "mask", mask, ("no_bias_norm",))
    return no_bias_norm_mask
  if callable(mask):
    return lambda tree: _match_mask(fn, mask(tree), tree)
  return lambda tree: _match_mask(fn, mask, tree)


def _masked(
    inner: optax.GradientTransformation, mask_fn: Callable[[Any], Any] | None
) -> optax.GradientTransformation:
  return inner if mask_fn is None else optax.masked(inner, mask_fn)


# ----------------------------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------------------------


def _no_params(fn: str) -> ValueError:
  return ValueError(
      f"{fn}: params must be passed to update (tx.update(grads, state, params)), got params=None"
  )


def l2_regularization(
    weight_decay: jax.typing.ArrayLike, mask: MaskOrFn = None
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * param`` to the gradient (L2 regularisation, "coupled" decay).

  The gradient of :math:`\tfrac{\lambda}{2}\lVert\theta\rVert^2`. Placed *before* a
  preconditioner it is "Adam + L2", i.e. ``torch.optim.Adam(weight_decay=)`` and
  ``torch.optim.SGD(weight_decay=)``; for plain SGD it equals decoupled decay scaled by the
  learning rate. It is ``optax.add_decayed_weights`` with this module's masks.

  Args:
    weight_decay: :math:`\lambda \ge 0`, a number or an array.
    mask: ``None`` (all leaves), a pytree of bools with the params' structure (or a prefix of
      it), a callable ``params -> such a pytree``, or ``"no_bias_norm"``
      (:func:`no_bias_norm_mask`). ``False`` leaves get no term.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = l2_regularization(0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> tx.update(jnp.zeros(2), tx.init(params), params)[0]
    Array([ 0.1, -0.2], dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """
  fn = "l2_regularization"
  _validate.nonnegative(fn, "weight_decay", weight_decay)
  return optax.add_decayed_weights(weight_decay, mask=_mask_fn(fn, mask))


def l1_regularization(
    weight_decay: jax.typing.ArrayLike, mask: MaskOrFn = None
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * sign(param)`` to the gradient (L1 regularisation).

  The (sub)gradient of :math:`\lambda\lVert\theta\rVert_1`, with ``sign(0) = 0``. This is a
  plain subgradient step: it does not set weights exactly to zero (no proximal step), as in
  Keras' ``regularizers.L1`` added to a loss. Neither optax nor PyTorch has an L1 transform.

  Args:
    weight_decay: :math:`\lambda \ge 0`, a number or an array.
    mask: as in :func:`l2_regularization`.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = l1_regularization(0.1)
    >>> params = jnp.array([3.0, 0.0, -2.0])
    >>> tx.update(jnp.ones(3), tx.init(params), params)[0]
    Array([1.1, 1. , 0.9], dtype=float32)

  References:
    Tibshirani, `Regression Shrinkage and Selection via the Lasso
    <https://doi.org/10.1111/j.2517-6161.1996.tb02080.x>`_, 1996.
  """
  fn = "l1_regularization"
  _validate.nonnegative(fn, "weight_decay", weight_decay)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise _no_params(fn)
    updates = jax.tree.map(
        lambda g, p: None if g is None else (g + weight_decay * jnp.sign(p)).astype(g.dtype),
        updates,
        params,
        is_leaf=lambda x: x is None,
    )
    return updates, state

  return _masked(optax.GradientTransformation(init_fn, update_fn), _mask_fn(fn, mask))


class DecoupledWeightDecayState(NamedTuple):
  """State of :func:`decoupled_weight_decay`."""

  count: jax.Array  # int32, shape (): updates done so far, the argument of ``schedule``.


def decoupled_weight_decay(
    weight_decay: jax.typing.ArrayLike,
    *,
    schedule: ScheduleLike = None,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Adds ``-weight_decay * s(t) * param`` to the update: decoupled weight decay.

  Place it *after* the learning rate has been applied (after ``optax.scale_by_learning_rate``):
  it works on the final update, so the decay does not pass through momentum or a
  preconditioner. With :math:`t` this transform's own step count (0 on the first update),

  .. math:: u_t \leftarrow u_t - \lambda\, s(t)\, \theta_t .

  Choosing ``schedule``:

  * ``None``: :math:`s = 1`, decay independent of the learning rate.
  * the learning-rate schedule (or the constant lr): PyTorch ``AdamW`` / ``optax.adamw`` /
    Keras ``weight_decay``, whose decay is multiplied by the full learning rate.
  * the schedule *multiplier* :math:`\eta_t = \text{lr}_t / \text{lr}_0`: the paper's AdamW and
    SGDW (Algorithms 1 and 2), where :math:`\lambda` is not multiplied by the base rate.

  Unlike ``optax.add_decayed_weights`` (which adds :math:`+\lambda\theta` *before* the
  learning rate), this transform carries its own sign and scale. ``schedule`` and ``mask`` are
  keyword-only (``optax.add_decayed_weights``' second positional argument is the mask).

  Args:
    weight_decay: :math:`\lambda \ge 0`, a number or an array.
    schedule: ``None``, a number/array (a constant factor, ``>= 0``), or a callable
      ``count -> factor`` (an ``optax.Schedule``).
    mask: as in :func:`l2_regularization`.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = decoupled_weight_decay(0.1, schedule=lambda t: 0.5 ** t)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> u, state = tx.update(jnp.zeros(2), state, params)
    >>> u
    Array([-0.1,  0.2], dtype=float32)
    >>> tx.update(jnp.zeros(2), state, params)[0]  # s(1) = 0.5
    Array([-0.05,  0.1 ], dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """
  fn = "decoupled_weight_decay"
  _validate.nonnegative(fn, "weight_decay", weight_decay)
  if schedule is not None and not callable(schedule):
    _validate.nonnegative(fn, "schedule", schedule)

  def init_fn(params):
    del params
    return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise _no_params(fn)
    if schedule is None:
      factor = weight_decay
    elif callable(schedule):
      factor = weight_decay * schedule(state.count)
    else:
      factor = weight_decay * schedule
    updates = jax.tree.map(
        lambda u, p: None if u is None else (u - factor * p).astype(u.dtype),
        updates,
        params,
        is_leaf=lambda x: x is None,
    )
    return updates, DecoupledWeightDecayState(count=optax.safe_increment(state.count))

  return _masked(optax.GradientTransformation(init_fn, update_fn), _mask_fn(fn, mask))


# ----------------------------------------------------------------------------------------------
# Optimisers.
# ----------------------------------------------------------------------------------------------


def _check_lr(fn: str, learning_rate: Any, base_lr: Any, decay: str) -> None:
  if not callable(learning_rate):
    _validate.positive(fn, "learning_rate", learning_rate)
  if base_lr is not None:
    _validate.positive(fn, "base_lr", base_lr)
  elif decay == "paper" and callable(learning_rate):
    # The default base is the schedule's first value: check it when it is concrete (a warmup
    # that starts at 0 needs an explicit base_lr).
    _validate.check(
        fn,
        "base_lr",
        learning_rate(0),
        lambda v: v > 0,
        "> 0 (it defaults to learning_rate(0); pass base_lr, e.g. the peak rate, for a schedule "
        "that starts at 0)",
        finite=True,
    )


def _decayed(
    fn: str,
    core: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: jax.typing.ArrayLike,
    decay: str,
    mask: MaskOrFn,
    base_lr: jax.typing.ArrayLike | None,
) -> optax.GradientTransformationExtraArgs:
  """``core`` (momentum / Adam) with the learning rate and the chosen kind of decay around it."""
  mask_fn = _mask_fn(fn, mask)
  scale_lr = optax.scale_by_learning_rate(learning_rate)
  if decay == "l2":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask_fn), core, scale_lr)
  if decay == "decoupled":  # exactly optax.adamw's chain: -lr_t * (core + wd * theta)
    return optax.chain(core, optax.add_decayed_weights(weight_decay, mask_fn), scale_lr)
  if decay == "none":
    return optax.chain(core, scale_lr)
  if decay == "independent":
    multiplier = None
  elif callable(learning_rate):  # "paper": eta_t = lr_t / base_lr
    multiplier = lambda count: learning_rate(count) / (
        learning_rate(0) if base_lr is None else base_lr
    )
  else:
    multiplier = 1.0 if base_lr is None else learning_rate / base_lr
  decoupled = _masked(decoupled_weight_decay(weight_decay, schedule=multiplier), mask_fn)
  return optax.chain(core, scale_lr, decoupled)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: jax.typing.ArrayLike = 1e-2,
    decay: DecayMode = "decoupled",
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    mask: MaskOrFn = None,
    base_lr: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with the weight decay of your choice: PyTorch's, the paper's, L2, or none.

  With :math:`g_t` the gradient, :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments,
  :math:`a_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)` and :math:`\text{lr}_t` the learning rate
  at update :math:`t` (counted from 0), the parameter update :math:`u_t` is

  * ``"decoupled"``: :math:`-\text{lr}_t (a_t + \lambda\theta_t)`; ``torch.optim.AdamW``,
    ``optax.adamw`` (same chain of optax transforms), Keras ``AdamW``.
  * ``"paper"``: :math:`-\eta_t(\alpha\, a_t + \lambda\theta_t)` with :math:`\alpha` =
    ``base_lr`` (default: the learning rate at step 0) and the schedule multiplier
    :math:`\eta_t = \text{lr}_t / \alpha`: Algorithm 2 of the paper, where :math:`\lambda` is
    *not* multiplied by the base rate :math:`\alpha`, so the best :math:`\lambda` does not move
    when :math:`\alpha` is tuned.
  * ``"independent"``: :math:`-\text{lr}_t a_t - \lambda\theta_t` (no learning-rate factor).
  * ``"l2"``: Adam on :math:`g_t + \lambda\theta_t`; ``torch.optim.Adam(weight_decay=)``.
  * ``"none"``: plain Adam.

  Every argument after ``learning_rate`` is keyword-only: ``optax.adamw(lr, 0.9)`` sets ``b1``
  and ``torch.optim.AdamW(params, lr, (0.9, 0.999))`` sets ``betas``, so a positional second
  argument could be read either way.

  Departures: the default ``weight_decay=1e-2`` is PyTorch ``AdamW``'s (``optax.adamw`` uses
  ``1e-4``, Keras ``AdamW`` ``4e-3``); ``eps`` is added to :math:`\sqrt{\hat v_t}` as in PyTorch
  and optax (Keras adds it to the uncorrected root); ``amsgrad``, ``maximize``, ``eps_root``,
  ``nesterov`` and ``mu_dtype`` are not offered. With ``optax.inject_hyperparams`` the learning
  rate reaches this function as a number each step, so mode ``"paper"`` then needs an explicit
  ``base_lr`` (otherwise :math:`\eta_t = 1`).

  Args:
    learning_rate: a number, an array or a schedule ``count -> lr``; ``> 0`` when concrete.
    weight_decay: :math:`\lambda \ge 0`.
    decay: ``"decoupled"``, ``"paper"``, ``"independent"``, ``"l2"`` or ``"none"``.
    b1: first-moment decay, in ``[0, 1)``.
    b2: second-moment decay, in ``[0, 1)``.
    eps: ``>= 0``, added to the denominator.
    mask: which leaves are decayed, as in :func:`l2_regularization` (``"no_bias_norm"`` for the
      usual rule). Adam itself runs on every leaf.
    base_lr: ``> 0``, the base rate of mode ``"paper"`` (ignored by the other modes).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` unless
    ``decay="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = adamw(0.1, weight_decay=0.5)
    >>> params = jnp.array([1.0, -1.0])
    >>> tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)[0]  # -0.1 * (1 + 0.5 theta)
    Array([-0.15, -0.05], dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2015.
  """
  fn = "adamw"
  _validate.one_of(fn, "decay", decay, _DECAY_MODES)
  _check_lr(fn, learning_rate, base_lr, decay)
  _validate.nonnegative(fn, "weight_decay", weight_decay)
  _validate.in_range(fn, "b1", b1, 0.0, 1.0, closed="left")
  _validate.in_range(fn, "b2", b2, 0.0, 1.0, closed="left")
  _validate.nonnegative(fn, "eps", eps)
  core = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  return _decayed(fn, core, learning_rate, weight_decay, decay, mask, base_lr)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    decay: DecayMode = "l2",
    mask: MaskOrFn = None,
    base_lr: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with (Nesterov) momentum and the weight decay of your choice; PyTorch's by default.

  The momentum buffer is PyTorch's: :math:`b_t = \mu b_{t-1} + d_t` (:math:`b_1 = d_1`) with
  :math:`d_t` the gradient (plus :math:`\lambda\theta_t` in mode ``"l2"``); the step direction is
  :math:`b_t`, or :math:`d_t + \mu b_t` with ``nesterov``. The update is then

  * ``"l2"`` (default): :math:`-\text{lr}_t\, b_t`; ``torch.optim.SGD(weight_decay=)``.
  * ``"decoupled"``: :math:`-\text{lr}_t (b_t + \lambda\theta_t)`.
  * ``"paper"``: :math:`-\text{lr}_t b_t - \eta_t\lambda\theta_t`,
    :math:`\eta_t = \text{lr}_t / \text{base\_lr}` (SGDW, Algorithm 1 of the paper).
  * ``"independent"``: :math:`-\text{lr}_t b_t - \lambda\theta_t`.
  * ``"none"``: :math:`-\text{lr}_t b_t`.

  Every argument after ``learning_rate`` is keyword-only (``torch.optim.SGD``'s third
  positional argument is ``dampening``, its fourth ``weight_decay``).

  Departures: the paper's SGDW puts the learning rate *inside* the momentum buffer
  (:math:`m_t = \beta m_{t-1} + \eta_t \alpha g_t`); this buffer is PyTorch's and optax's (rate
  applied after it), which is the same while the rate is constant. ``dampening`` is not
  offered. The momentum buffer is kept even when ``momentum`` is 0, so that a sweep over
  ``momentum`` has one state structure. PyTorch allows ``momentum >= 1``; this function wants
  ``[0, 1)``. With ``optax.inject_hyperparams``, mode ``"paper"`` needs an explicit ``base_lr``.

  Args:
    learning_rate: a number, an array or a schedule ``count -> lr``; ``> 0`` when concrete.
    momentum: :math:`\mu`, in ``[0, 1)``; ``> 0`` when ``nesterov``.
    nesterov: use Nesterov momentum (structure, a Python bool).
    weight_decay: :math:`\lambda \ge 0`; PyTorch's default 0.
    decay: ``"l2"``, ``"decoupled"``, ``"paper"``, ``"independent"`` or ``"none"``.
    mask: which leaves are decayed, as in :func:`l2_regularization`.
    base_lr: ``> 0``, the base rate of mode ``"paper"`` (ignored by the other modes).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` unless
    ``decay="none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = sgd(0.1, momentum=0.9, weight_decay=0.5)
    >>> params = jnp.array([1.0, -1.0])
    >>> tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)[0]  # -0.1 * (g + 0.5 theta)
    Array([-0.15, -0.05], dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.

    Sutskever, Martens, Dahl & Hinton, `On the importance of initialization and momentum in
    deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, 2013.
  """
  fn = "sgd"
  _validate.one_of(fn, "decay", decay, _DECAY_MODES)
  _check_lr(fn, learning_rate, base_lr, decay)
  _validate.nonnegative(fn, "weight_decay", weight_decay)
  _validate.in_range(fn, "momentum", momentum, 0.0, 1.0, closed="left")
  if nesterov:
    _validate.check(
        fn, "momentum", momentum, lambda v: v > 0, "> 0 when nesterov=True (as in torch.optim.SGD)"
    )
  core = optax.trace(decay=momentum, nesterov=nesterov)
  return _decayed(fn, core, learning_rate, weight_decay, decay, mask, base_lr)
