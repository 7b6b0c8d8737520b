"""Per-parameter-group learning rates: path patterns (Caffe's 2x bias rate), layer-wise decay.

A parameter's *path* is its ``"a/b/c"`` key path (``optaxlr._paths.path_str``), e.g.
``"Dense_0/kernel"`` for flax linen ``params``, ``"layers/1/bias"`` for a flax nnx
``nnx.state(model, nnx.Param)``. ``nnx.Variable`` boxes count as leaves here, so the same
parameter has the same path whether the tree holds boxes (what ``nnx.Optimizer`` passes to
``init``) or raw arrays (what it passes to ``update``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from optaxlr import _validate as v
from optaxlr._paths import path_str
from optaxlr.schedules._common import as_float

try:  # flax is a dependency, but keep this module importable without it.
  from flax import nnx as _nnx
except ImportError:  # pragma: no cover
  _nnx = None

__all__ = [
    "param_group_lr",
    "param_group_multipliers",
    "layerwise_lr",
    "layerwise_multipliers",
]

Pattern = str | re.Pattern


def is_variable(x: Any) -> bool:
  """True for a flax ``nnx.Variable`` box (treated as a leaf when naming parameters)."""
  return _nnx is not None and isinstance(x, _nnx.Variable)


def flat_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
  """``([(path, leaf), ...], treedef)`` in flatten order, ``nnx.Variable`` boxes as leaves."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)
  return [(path_str(p), x) for p, x in flat], treedef


def leaf_path_list(tree: Any) -> list[str]:
  """The ``"a/b/c"`` path of every leaf of ``tree``, in ``jax.tree.leaves`` order."""
  return [p for p, _ in flat_with_paths(tree)[0]]


def _compile(fn: str, patterns: Sequence[Pattern]) -> list[re.Pattern]:
  out = []
  for pat in patterns:
    try:
      out.append(pat if isinstance(pat, re.Pattern) else re.compile(pat))
    except (re.error, TypeError) as e:
      raise ValueError(f"{fn}: invalid pattern {pat!r}: {e}") from None
  return out


def _match(paths: Sequence[str], regexes: Sequence[re.Pattern]) -> list[int]:
  """Index of the first regex that ``re.search``-matches each path, ``-1`` when none does."""
  return [next((i for i, r in enumerate(regexes) if r.search(p)), -1) for p in paths]


def _label(pat: Pattern) -> str:
  return pat.pattern if isinstance(pat, re.Pattern) else pat


def _scale_tree(updates: Any, mults: Any) -> Any:
  return jax.tree.map(lambda u, m: (u * jnp.asarray(m)).astype(u.dtype), updates, mults)


def param_group_multipliers(params: Any, multipliers: Mapping[Pattern, ArrayLike]) -> Any:
  """The pytree of per-leaf multipliers that ``param_group_lr(multipliers)`` applies.

  Pattern semantics: each key is a regular expression matched with ``re.search`` against the
  leaf's ``"a/b/c"`` path (so ``"bias"`` matches ``"Dense_0/bias"``; anchor with ``^``/``$``
  for exact matches). Patterns are tried in the mapping's order and the **first match wins**;
  a leaf that no pattern matches gets ``1.0``.

  Args:
    params: the parameters (or updates: same structure), a dict, ``nnx.State`` or any pytree.
    multipliers: ``{pattern: multiplier}``; multipliers are numbers or (traced) arrays ``>= 0``.

  Returns:
    A pytree with the structure of ``params`` whose leaves are scalar float arrays.

  Examples:
    >>> params = {"Dense_0": {"kernel": 0.0, "bias": 0.0}, "Dense_1": {"kernel": 0.0}}
    >>> m = param_group_multipliers(params, {"bias": 2.0, "^Dense_0/": 0.1})
    >>> {k: {n: float(x) for n, x in d.items()} for k, d in m.items()}
    {'Dense_0': {'bias': 2.0, 'kernel': 0.1}, 'Dense_1': {'kernel': 1.0}}
  """
  items = list(multipliers.items())
  regexes = _compile("param_group_multipliers", [p for p, _ in items])
  flat, treedef = flat_with_paths(params)
  idx = _match([p for p, _ in flat], regexes)
  one = as_float(1.0)
  vals = [as_float(items[i][1]) if i >= 0 else one for i in idx]
  return jax.tree_util.tree_unflatten(treedef, vals)


def param_group_lr(
    multipliers: Mapping[Pattern, ArrayLike] | Callable[[Any], Any],
    *,
    strict: bool = True,
) -> optax.GradientTransformation:
  """Scales the updates of each parameter group by its own factor (per-group learning rates).

  The optax counterpart of PyTorch's optimizer parameter groups with their own ``lr``: place
  it **after** the learning rate (and after any weight decay, which PyTorch also scales by the
  group's ``lr``), e.g. ``optax.chain(optax.adamw(lr, wd), param_group_lr({"bias": 2.0}))``.
  Placed before an adaptive optimizer such as Adam it would be normalised away.

  ``multipliers`` is either

  * a mapping ``{pattern: multiplier}``: a regular expression searched (``re.search``) in each
    leaf's ``"a/b/c"`` path (see ``optaxlr._paths``); patterns are tried in order, **the first
    match wins**, unmatched leaves keep ``1.0``. ``{"bias": 2.0}`` is the Caffe habit of twice
    the learning rate for biases; ``{"^Dense_0/": 0.1}`` fine-tunes the first layer slowly;
    ``0.0`` freezes a group (its update is exactly zero).
  * a callable returning a pytree of multipliers with the structure of the parameters (leaves
    broadcastable to the parameter: a scalar or an array of its shape). It is called inside
    ``update`` with ``params``, or with the updates when ``params`` is not passed (same
    structure and shapes).

  Multipliers may be Python numbers or (traced) JAX arrays, so ``jax.vmap`` over them sweeps
  them in one compiled program. Concrete mapping values are checked to be ``>= 0``.

  Args:
    multipliers: the mapping or callable described above.
    strict: with a mapping, raise ``ValueError`` at ``init`` when a pattern matches no
      parameter (almost always a typo such as ``"biases"``).

  Returns:
    A stateless ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones(2), "bias": jnp.ones(1)}
    >>> tx = optax.chain(optax.sgd(0.1), param_group_lr({"bias": 2.0}))
    >>> updates, _ = tx.update(params, tx.init(params))   # gradient = ones
    >>> print(updates["w"], updates["bias"])
    [-0.1 -0.1] [-0.2]

  References:
    Jia et al., `Caffe: Convolutional Architecture for Fast Feature Embedding
    <https://arxiv.org/abs/1408.5093>`_, 2014 (``lr_mult: 2`` for biases in its model zoo).
  """
  fn = "param_group_lr"
  if callable(multipliers):
    mult_fn = multipliers
    patterns = None
  elif isinstance(multipliers, Mapping):
    patterns = list(multipliers)
    regexes = _compile(fn, patterns)
    for pat, m in multipliers.items():
      v.nonnegative(fn, f"multipliers[{_label(pat)!r}]", m)

    def mult_fn(tree):
      return param_group_multipliers(tree, multipliers)

  else:
    raise TypeError(
        f"{fn}: multipliers must be a mapping {{pattern: multiplier}} or a callable, "
        f"got {type(multipliers).__name__}"
    )

  def init_fn(params):
    if patterns is not None and strict:
      paths = leaf_path_list(params)
      used = set(_match(paths, regexes))
      unused = [_label(p) for i, p in enumerate(patterns) if i not in used]
      if unused:
        raise ValueError(
            f"{fn}: pattern(s) {unused} match no parameter (first match wins, so a pattern "
            f"shadowed by an earlier one also counts); parameter paths are {paths[:20]}"
            + (" ..." if len(paths) > 20 else "")
            + ". Pass strict=False to allow this."
        )
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    mults = mult_fn(params if params is not None else updates)
    return _scale_tree(updates, mults), state

  return optax.GradientTransformation(init_fn, update_fn)


def _natural_key(name: str) -> tuple:
  return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def _default_groups(paths: Sequence[str]) -> tuple[list[int], list[str]]:
  """Groups by the first path level with more than one name, in natural order.

  A single-name level is descended into unless the level below it holds leaves, so a
  one-layer model stays one group instead of splitting into its kernel and bias.
  """
  parts = [p.split("/") for p in paths]
  d = 0
  while all(len(p) > d + 2 for p in parts) and len({p[d] for p in parts}) == 1:
    d += 1
  names = sorted({p[d] for p in parts}, key=_natural_key)
  pos = {n: i for i, n in enumerate(names)}
  return [pos[p[d]] for p in parts], names


def _assign_layers(
    fn: str, paths: Sequence[str], groups: Sequence[Pattern] | None
) -> tuple[list[int], int]:
  if groups is None:
    idx, names = _default_groups(paths)
    return idx, len(names)
  if len(groups) == 0:
    raise ValueError(f"{fn}: groups must be a non-empty list of patterns, got groups=[]")
  idx = _match(paths, _compile(fn, groups))
  missing = [p for p, i in zip(paths, idx) if i < 0]
  if missing:
    raise ValueError(
        f"{fn}: parameter(s) {missing[:10]} match none of groups "
        f"{[_label(g) for g in groups]}; add a catch-all pattern such as '.*' as the last group"
    )
  return idx, len(groups)


def _geometric(low: ArrayLike, high: ArrayLike, n: int) -> jax.Array:
  """``low * (high / low) ** (i / (n - 1))`` for ``i = 0..n-1`` (``[high]`` when ``n == 1``)."""
  lo, hi = as_float(low), as_float(high)
  if n == 1:  # structure, not a value: fastai's even_mults also returns ``stop``
    return hi[None]
  frac = jnp.arange(n, dtype=lo.dtype) / (n - 1)
  return lo * (hi / lo) ** frac


def layerwise_multipliers(
    params: Any,
    low: ArrayLike,
    high: ArrayLike,
    groups: Sequence[Pattern] | None = None,
) -> Any:
  """The pytree of per-leaf multipliers that ``layerwise_lr(low, high, groups)`` applies.

  Group ``i`` of ``n`` gets ``low * (high / low) ** (i / (n - 1))`` (``high`` when ``n == 1``).

  Default groups (``groups=None``): the keys of the first level of ``params`` that has more
  than one key (single-key wrappers such as linen's ``{"params": ...}`` or an nnx
  ``layers`` list are descended into, but never down to a layer's own kernel/bias), sorted in
  *natural* order, so ``"Dense_2"`` comes before ``"Dense_10"`` and nnx ``layers/2`` before
  ``layers/10``. Natural order is not definition order: for names like
  ``embed``/``blocks``/``head`` pass ``groups`` explicitly.

  With ``groups``, a list of regular expressions from the first (slowest) group to the last:
  each leaf goes to the first pattern that ``re.search``-matches its path; a leaf that matches
  none raises ``ValueError`` (end the list with ``".*"`` for a catch-all).

  Args:
    params: the parameters (or updates: same structure).
    low: multiplier of the first group, ``> 0``.
    high: multiplier of the last group, ``> 0``.
    groups: optional ordered list of path patterns.

  Returns:
    A pytree with the structure of ``params`` whose leaves are scalar float arrays.

  Examples:
    >>> params = {f"Dense_{i}": {"kernel": 0.0} for i in (0, 1, 2, 10)}
    >>> m = layerwise_multipliers(params, 0.01, 1.0)
    >>> [round(float(m[k]["kernel"]), 4) for k in ("Dense_0", "Dense_1", "Dense_2", "Dense_10")]
    [0.01, 0.0464, 0.2154, 1.0]
  """
  fn = "layerwise_multipliers"
  v.positive(fn, "low", low)
  v.positive(fn, "high", high)
  flat, treedef = flat_with_paths(params)
  idx, n = _assign_layers(fn, [p for p, _ in flat], groups)
  mults = _geometric(low, high, n)
  return jax.tree_util.tree_unflatten(treedef, [mults[i] for i in idx])


def layerwise_lr(
    low: ArrayLike,
    high: ArrayLike,
    groups: Sequence[Pattern] | None = None,
) -> optax.GradientTransformation:
  """Discriminative (layer-wise) learning rates: geometric multipliers from first to last group.

  fastai's ``lr=slice(low, high)``: group ``i`` of ``n`` is scaled by
  ``low * (high / low) ** (i / (n - 1))``, so early layers (generic features) move slowly and
  the head quickly. The values are *multipliers* of the updates: with ``optax.sgd(1.0)`` (or
  ``optax.adam(1.0)``) they are the learning rates themselves, as in fastai; with
  ``optax.adam(1e-3)`` they scale that rate. ULMFiT's "divide by 2.6 per layer" is
  ``low = high / 2.6 ** (n - 1)``. Group semantics are those of ``layerwise_multipliers``.

  Like ``param_group_lr``, place it after the learning rate (and weight decay) in the chain.
  ``low`` and ``high`` may be traced, so ``jax.vmap`` sweeps them.

  Args:
    low: multiplier of the first group, ``> 0``.
    high: multiplier of the last group, ``> 0``.
    groups: optional ordered list of path patterns, first (slowest) group first.

  Returns:
    A stateless ``optax.GradientTransformation``; the group assignment is checked at ``init``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"Dense_0": jnp.ones(1), "Dense_1": jnp.ones(1), "Dense_2": jnp.ones(1)}
    >>> tx = optax.chain(optax.sgd(1.0), layerwise_lr(1e-3, 1e-1))
    >>> updates, _ = tx.update(params, tx.init(params))
    >>> print([float(updates[k][0]) for k in ("Dense_0", "Dense_1", "Dense_2")])
    [-0.001, -0.01..., -0.1...]

  References:
    Howard & Ruder, `Universal Language Model Fine-tuning for Text Classification
    <https://arxiv.org/abs/1801.06146>`_, 2018 (discriminative fine-tuning).
  """
  fn = "layerwise_lr"
  v.positive(fn, "low", low)
  v.positive(fn, "high", high)

  def init_fn(params):
    _assign_layers(fn, leaf_path_list(params), groups)  # raises on unmatched leaves
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return _scale_tree(updates, layerwise_multipliers(updates, low, high, groups)), state

  return optax.GradientTransformation(init_fn, update_fn)
