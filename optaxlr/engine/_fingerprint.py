"""What identifies a sweep's numbers: used by checkpoints to refuse a folder of another sweep."""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["function_id", "data_id", "structure_id"]


def _h(*parts: Any) -> str:
  m = hashlib.sha256()
  for p in parts:
    m.update(p if isinstance(p, bytes) else repr(p).encode())
    m.update(b"\0")
  return m.hexdigest()[:16]


def _value_id(v: Any, depth: int) -> str:
  if isinstance(v, (bool, int, float, complex, str, bytes, type(None))):
    return repr(v)
  if isinstance(v, (np.ndarray, np.generic)) or isinstance(v, jax.Array):
    try:
      a = np.asarray(v)
      return _h(a.dtype.str, a.shape, a.tobytes())
    except Exception:  # noqa: BLE001 -- a tracer or a key: its type is all we can say
      return type(v).__name__
  if isinstance(v, (tuple, list)):
    return "[" + ",".join(_value_id(x, depth) for x in v) + "]"
  if isinstance(v, Mapping):
    return "{" + ",".join(f"{k!r}:{_value_id(x, depth)}" for k, x in sorted(v.items(), key=lambda kv: repr(kv[0]))) + "}"
  if callable(v):
    return function_id(v, depth + 1)
  if isinstance(v, types.ModuleType):
    return f"module:{v.__name__}"
  return type(v).__qualname__


def function_id(f: Any, depth: int = 0) -> str:
  """A hash of what a function computes, as far as Python shows it: its module and name, its
  bytecode and constants, the values it closes over and the plain globals it reads (numbers,
  strings, arrays; functions recursively, a few levels deep)."""
  if f is None:
    return "none"
  if depth > 4:
    return getattr(f, "__qualname__", type(f).__name__)
  if isinstance(f, __import__("functools").partial):
    return _h("partial", function_id(f.func, depth + 1), _value_id(f.args, depth), _value_id(f.keywords, depth))
  code = getattr(f, "__code__", None)
  name = f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__name__)}"
  if code is None:
    call = getattr(type(f), "__call__", None)
    if call is not None and hasattr(call, "__code__") and not inspect.isbuiltin(f):
      fields = getattr(f, "__dict__", {})
      return _h(name, function_id(call, depth + 1), _value_id(fields, depth + 1))
    return _h(name)
  closure = [_value_id(c.cell_contents, depth) if _cell_ok(c) else "?" for c in (f.__closure__ or ())]
  glob = getattr(f, "__globals__", {})
  read = [(n, _value_id(glob[n], depth)) for n in code.co_names if n in glob and _plain(glob[n])]
  defaults = _value_id(getattr(f, "__defaults__", None), depth)
  kwdefaults = _value_id(getattr(f, "__kwdefaults__", None), depth)
  consts = [c for c in code.co_consts if not isinstance(c, types.CodeType)]
  nested = [_h(c.co_code, repr([x for x in c.co_consts if not isinstance(x, types.CodeType)]))
            for c in code.co_consts if isinstance(c, types.CodeType)]
  return _h(name, code.co_code, repr(consts), nested, closure, read, defaults, kwdefaults)


def _cell_ok(cell) -> bool:
  try:
    cell.cell_contents  # noqa: B018
    return True
  except ValueError:
    return False


def _plain(v: Any) -> bool:
  return isinstance(v, (bool, int, float, str, np.ndarray, np.generic)) or (
      isinstance(v, types.FunctionType)
  )


def data_id(tree: Any) -> str:
  """A SHA-256 of the contents, shapes and dtypes of every array of ``tree``."""
  m = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    m.update(repr((jax.tree_util.keystr(path), a.dtype.str, a.shape)).encode())
    m.update(a.tobytes())
  return m.hexdigest()[:24]


def structure_id(tree_of_shapes: Any) -> str:
  """The tree structure, shapes and dtypes of a pytree of arrays or ShapeDtypeStructs."""
  leaves, treedef = jax.tree.flatten(tree_of_shapes)
  return _h(str(treedef), [(tuple(x.shape), str(x.dtype)) for x in leaves])
