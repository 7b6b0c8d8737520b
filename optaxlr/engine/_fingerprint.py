"""What identifies a sweep's numbers: used by checkpoints to refuse a folder of another sweep,
and by the in-process program cache to compile again when the code changed.

A function is identified the way a user changes it: by its bytecode and constants, the names
it uses (``optax.adam`` vs ``optax.nadam``: the attribute names are part of the identity), the
values of the globals it reads, resolved through its ``__globals__`` (numbers, arrays, dicts,
class attributes, attributes of the user's own modules, other functions, recursively), its
closure cells, defaults and ``functools.partial`` arguments. Functions of installed libraries
(site-packages, the standard library, optaxlr itself) are identified by their qualified name
and their closure values, not by their code. ``jax.jit``-wrapped functions are followed to the
function they wrap. With ``local=True`` (the in-process program cache) a list is identified
by the object, not its contents (code appends to lists it closes over: trace counters, logs).

A value that cannot be hashed (an object of an unknown type that neither pickles nor has
fields, a tracer, recursion deeper than :data:`MAX_DEPTH`) makes the identity say so: it
starts with ``"unverified("`` followed by what could not be hashed. A checkpoint refuses to
resume on such an identity unless told to (``CheckpointStore(resume_unverified_code=True)``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["function_id", "code_id", "data_id", "structure_id", "UNVERIFIED", "MAX_DEPTH"]

MAX_DEPTH = 32
UNVERIFIED = "unverified("


def _h(*parts: Any) -> str:
  m = hashlib.sha256()
  for p in parts:
    m.update(p if isinstance(p, bytes) else repr(p).encode())
    m.update(b"\0")
  return m.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  roots = {paths.get("stdlib"), paths.get("platstdlib"), paths.get("purelib"), paths.get("platlib"),
           os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # optaxlr itself
  return tuple(sorted(os.path.abspath(r) + os.sep for r in roots if r))


def _is_library_file(filename: str) -> bool:
  if not filename or filename.startswith("<"):  # <string>, <stdin>, notebooks: the user's
    return False
  return os.path.abspath(filename).startswith(_library_roots())


def _is_library_module(name: str) -> bool:
  mod = sys.modules.get((name or "").partition(".")[0])
  if mod is None:
    return bool(name) and (name in sys.builtin_module_names or name.startswith(("jax", "numpy")))
  f = getattr(mod, "__file__", None)
  return f is None or _is_library_file(f)


class _Hasher:
  """One walk over a function (or value) and everything it reads."""

  def __init__(self, local: bool):
    self.local = local  # in-process identity: what cannot be hashed is identified by id()
    self.unverified: list[str] = []
    self.active: set[int] = set()  # functions on the current path (recursion)

  def missing(self, v: Any, why: str) -> str:
    what = f"{type(v).__qualname__} ({why})"
    if self.local:
      return f"id:{id(v)}"
    if what not in self.unverified:
      self.unverified.append(what)
    return f"?{what}"

  # -- values ------------------------------------------------------------------------------

  def value(self, v: Any, depth: int) -> str:
    if isinstance(v, (bool, int, float, complex, str, bytes, type(None), type(Ellipsis))):
      return repr(v)
    if isinstance(v, types.ModuleType):
      return f"module:{v.__name__}"
    if isinstance(v, type) and _is_library_module(v.__module__):
      return f"class:{v.__module__}.{v.__qualname__}"
    if depth > MAX_DEPTH:
      return self.missing(v, f"deeper than {MAX_DEPTH} levels")
    if isinstance(v, jax.core.Tracer):
      return self.missing(v, "a traced value")
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
      try:
        a = np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
                       else v)
        return _h(a.dtype.str, a.shape, a.tobytes())
      except Exception:  # noqa: BLE001 -- an array that cannot be read on this host
        return self.missing(v, "an array that cannot be read")
    if isinstance(v, list) and self.local:
      # In-process, a list is taken as a container the code appends to (a trace counter, a
      # log), not as settings: identified by the object, so that appending does not compile
      # again. Dicts, tuples and class attributes are read by value.
      return f"list:{id(v)}"
    if isinstance(v, (tuple, list)):
      return type(v).__name__ + "[" + ",".join(self.value(x, depth + 1) for x in v) + "]"
    if isinstance(v, (set, frozenset)):
      return "set[" + ",".join(sorted(self.value(x, depth + 1) for x in v)) + "]"
    if isinstance(v, Mapping):
      items = sorted(((self.value(k, depth + 1), x) for k, x in v.items()), key=lambda kv: kv[0])
      return "{" + ",".join(f"{k}:{self.value(x, depth + 1)}" for k, x in items) + "}"
    if isinstance(v, types.ModuleType):
      return f"module:{v.__name__}"
    if isinstance(v, type):
      return self.klass(v, depth)
    if callable(v) and not dataclasses.is_dataclass(v):
      return self.function(v, depth)
    return self.instance(v, depth)

  def klass(self, c: type, depth: int) -> str:
    name = f"{c.__module__}.{c.__qualname__}"
    if _is_library_module(c.__module__):
      return f"class:{name}"
    attrs = {k: a for k, a in vars(c).items()
             if not (k.startswith("__") and k.endswith("__")) and not isinstance(a, property)}
    bases = [self.klass(b, depth + 1) for b in c.__bases__ if b is not object]
    return _h("class", name, bases, self.value(attrs, depth + 1))

  def instance(self, v: Any, depth: int) -> str:
    cls = type(v)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if _is_library_module(cls.__module__) and not isinstance(v, functools.partial):
      try:  # a library's object (a flax graph definition, a generator...): its pickled state
        return _h("pickle", name, pickle.dumps(v, protocol=4))
      except Exception:  # noqa: BLE001 -- anything may fail to pickle
        pass
    if dataclasses.is_dataclass(v):
      fields = {f.name: getattr(v, f.name, None) for f in dataclasses.fields(v)
                if f.name not in ("parent", "name")}  # flax modules: where they sit, not what
      return _h("dataclass", name, self.value(fields, depth + 1),
                self.klass(cls, depth + 1))
    if isinstance(v, functools.partial):
      return self.function(v, depth)
    fields = getattr(v, "__dict__", None)
    if isinstance(fields, dict) and not _is_library_module(cls.__module__):
      return _h("object", name, self.value(fields, depth + 1), self.klass(cls, depth + 1))
    try:
      return _h("pickle", name, pickle.dumps(v, protocol=4))
    except Exception:  # noqa: BLE001 -- anything may fail to pickle
      pass
    if isinstance(fields, dict):
      return _h("object", name, self.value(fields, depth + 1))
    return self.missing(v, "neither fields nor pickle")

  # -- functions ---------------------------------------------------------------------------

  def function(self, f: Any, depth: int) -> str:
    if f is None:
      return "none"
    if depth > MAX_DEPTH:
      return self.missing(f, f"deeper than {MAX_DEPTH} levels")
    if isinstance(f, (tuple, list)):  # several functions: each hashed on its own
      return _h("functions", [self.function(x, depth + 1) for x in f])
    if isinstance(f, functools.partial):
      return _h("partial", self.function(f.func, depth + 1), self.value(f.args, depth + 1),
                self.value(f.keywords, depth + 1))
    if isinstance(f, types.MethodType):
      return _h("method", self.function(f.__func__, depth + 1), self.value(f.__self__, depth + 1))
    wrapped = getattr(f, "__wrapped__", None)
    if wrapped is not None and wrapped is not f and callable(wrapped):  # jax.jit, functools.wraps
      return _h("wraps", type(f).__qualname__, self.function(wrapped, depth + 1))
    code = getattr(f, "__code__", None)
    name = f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__name__)}"
    if code is None:
      call = getattr(type(f), "__call__", None)
      if getattr(call, "__code__", None) is not None and not _is_library_file(call.__code__.co_filename):
        # an object of the user's class with a Python __call__: its code and its fields
        return _h("callable", name, self.function(call, depth + 1), self.instance(f, depth + 1))
      return _h("library", name)  # builtins, ufuncs, a library's callable objects
    if id(f) in self.active:
      return f"recursion:{name}"
    self.active.add(id(f))
    try:
      closure = [self.value(c.cell_contents, depth + 1) if _cell_ok(c) else "empty"
                 for c in (f.__closure__ or ())]
      defaults = self.value(getattr(f, "__defaults__", None), depth + 1)
      kwdefaults = self.value(getattr(f, "__kwdefaults__", None), depth + 1)
      if _is_library_file(code.co_filename):
        # An installed library's function: its name says what it computes; closure values
        # and defaults are the user's (a factory's arguments).
        return _h("libfn", name, closure, defaults, kwdefaults)
      return _h("fn", name, self.code(code, getattr(f, "__globals__", {}), depth), closure,
                defaults, kwdefaults)
    finally:
      self.active.discard(id(f))

  def code(self, code: types.CodeType, glob: Mapping[str, Any], depth: int) -> str:
    """Bytecode, constants, the names used, and the globals those names resolve to (nested code
    objects -- lambdas, comprehensions, inner functions -- included)."""
    names = set()
    parts = []

    def walk(c: types.CodeType):
      names.update(c.co_names)
      parts.append((c.co_code, c.co_names, c.co_varnames, c.co_freevars,
                    repr([x for x in c.co_consts if not isinstance(x, types.CodeType)])))
      for x in c.co_consts:
        if isinstance(x, types.CodeType):
          walk(x)

    walk(code)
    read = []
    for n in sorted(names):
      if n not in glob:
        continue
      g = glob[n]
      if isinstance(g, types.ModuleType):
        # attributes of the user's own modules are values it reads (mymod.ACT); a library's
        # attributes are identified by their names (already in co_names)
        if not _is_library_module(g.__name__):
          attrs = {a: getattr(g, a) for a in sorted(names) if hasattr(g, a)}
          read.append((n, g.__name__, self.value(attrs, depth + 1)))
        else:
          read.append((n, f"module:{g.__name__}"))
      else:
        read.append((n, self.value(g, depth + 1)))
    return _h(parts, read)


def _cell_ok(cell) -> bool:
  try:
    cell.cell_contents  # noqa: B018
    return True
  except ValueError:
    return False


def _finish(h: _Hasher, digest: str) -> str:
  if h.unverified:
    return f"{UNVERIFIED}{'; '.join(h.unverified[:4])}):{digest}"
  return digest


def function_id(f: Any, depth: int = 0, *, local: bool = False) -> str:
  """A hash of what a function (or a tuple of functions, each hashed on its own) computes, as
  far as Python shows it (see the module docstring).

  Args:
    f: a function, a callable object, a ``functools.partial``, or a tuple/list of them.
    depth: the depth to start at (values deeper than :data:`MAX_DEPTH` cannot be hashed).
    local: for an in-process cache: what cannot be hashed is identified by its ``id()``
      instead of being reported.

  Returns:
    A hex digest; prefixed with ``"unverified(<what>):"`` when something it reads could not be
    hashed (never with ``local=True``).
  """
  h = _Hasher(local)
  return _finish(h, h.function(f, depth))


def code_id(task: Any, optimizer: Any, objective: Any, *, local: bool = False) -> str:
  """The identity of a sweep's code: the task's functions, each on its own, the optimizer
  function and the objective."""
  fns = tuple(getattr(task, n, None) for n in (
      "init", "loss", "metrics", "init_state", "train_loss", "eval_metrics"))
  return function_id((fns, optimizer, objective), local=local)


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
