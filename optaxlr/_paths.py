"""Parameter paths ("Dense_0/kernel", "layers/1/bias") for flax linen, flax nnx and plain pytrees."""

from __future__ import annotations

from typing import Any

import jax


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: tuple[Any, ...]) -> str:
  """Joins a ``jax.tree_util`` key path into ``"a/b/0/c"``.

  Examples:
    >>> import jax
    >>> params = {"Dense_0": {"kernel": 1.0, "bias": 0.0}}
    >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    ['Dense_0/bias', 'Dense_0/kernel']
  """
  return "/".join(_key_name(k) for k in path)


def leaf_paths(tree: Any) -> Any:
  """A pytree of the same structure as ``tree`` whose leaves are their ``"a/b/c"`` paths.

  Works for nested dicts (flax linen ``params``), ``flax.nnx.State`` and any registered pytree.
  ``nnx.Variable`` boxes are pytrees in flax 0.12: their paths end in ``/value``.

  Examples:
    >>> leaf_paths({"a": {"b": 1, "c": [2, 3]}})
    {'a': {'b': 'a/b', 'c': ['a/c/0', 'a/c/1']}}
  """
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)
