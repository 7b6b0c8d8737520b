"""Checkpoints that can be killed at any instant: one atomic commit per chunk.

A checkpoint folder holds:

* ``manifest.json``: the fingerprint of the sweep (every setting that changes numbers, the
  optimizer's state structure, the model's parameter structure, a content hash of the data,
  the objective...), the chunks committed so far (file name, size and SHA-256 of each), and
  the state file to resume from. It is the commit point: written to a temporary file,
  flushed to disk and renamed over the old one (``os.replace`` is atomic).
* ``chunk-<g>-<c>.npz``: the new numbers of one chunk (losses, metrics, records): results are
  appended chunk by chunk, never rewritten.
* ``state-<g>-<c>.npz``: the carried state (parameters, optimizer state, rule states,
  hyperparameters as steered) after the last committed chunk.

Every file is written under a temporary name and renamed once complete, and the manifest
names only complete files with their hashes: a process killed anywhere leaves either the old
commit or the new one. Files that no commit names (leftovers of a killed write) are removed
when the folder is opened. A manifest that does not parse, a file whose hash does not match,
or a fingerprint that differs is a ``ValueError`` naming the folder and what differs. A
fingerprint that could not hash some of the code's values (``"unverified(...)"``, see
:mod:`optaxlr.engine._fingerprint`) refuses to resume unless ``resume_unverified_code=True``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from optaxlr.engine._fingerprint import UNVERIFIED

__all__ = ["CheckpointStore", "CheckpointError"]

FORMAT = "optaxlr.checkpoint/2"
MANIFEST = "manifest.json"
LOCK = ".lock"
_HELD: dict[str, Any] = {}  # folder -> the open lock file of this process


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be trusted or belongs to another sweep."""


def _fsync_write(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  try:  # make the rename itself durable
    fd = os.open(path.parent, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:  # pragma: no cover -- platforms without directory fsync
    pass


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  return buf.getvalue()


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class CheckpointStore:
  """The checkpoint folder of one sweep (see the module docstring)."""

  def __init__(self, folder: str | os.PathLike, fingerprint: Mapping[str, Any], *, writer: bool = True,
               resume_unverified_code: bool = False):
    if not isinstance(resume_unverified_code, bool):
      raise TypeError(f"sweep: resume_unverified_code must be True or False, got"
                      f" {resume_unverified_code!r}")
    self.resume_unverified_code = resume_unverified_code
    self.folder = pathlib.Path(folder)
    self.fingerprint = json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))
    self.writer = writer
    self.chunks: list[dict] = []
    self.state: dict | None = None
    self.position = (0, 0)  # the next (group, chunk) to run
    self.finished = False

  def _error(self, what: str) -> CheckpointError:
    return CheckpointError(f"sweep: checkpoint_dir={str(self.folder)!r}: {what}")

  # -- opening -----------------------------------------------------------------------------

  def open(self) -> None:
    """Reads and verifies the folder (creating it when new). Raises :class:`CheckpointError`."""
    if self.folder.exists() and not self.folder.is_dir():
      raise self._error("exists and is not a folder")
    if self.writer:
      self.folder.mkdir(parents=True, exist_ok=True)
      self._lock()
    path = self.folder / MANIFEST
    if not path.exists():
      others = [p.name for p in self.folder.iterdir()] if self.folder.exists() else []
      others = [n for n in others
                if n != LOCK and not n.endswith(".tmp") and not n.startswith(("chunk-", "state-"))]
      if others:
        raise self._error(
            f"is not an optaxlr checkpoint (no {MANIFEST}) and is not empty ({sorted(others)[:5]});"
            " use an empty or new folder"
        )
      return
    try:
      manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise self._error(f"{MANIFEST} is damaged ({type(e).__name__}: {e}); delete the folder to start over") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
      raise self._error(f"{MANIFEST} has an unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
    theirs = manifest.get("fingerprint", {})
    diff = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
    if diff:
      details = "; ".join(
          f"{k}: checkpoint {_short(theirs.get(k))} vs now {_short(self.fingerprint.get(k))}" for k in diff[:6]
      )
      raise self._error(
          f"holds a different sweep ({', '.join(diff)} differ: {details}); use another folder or delete it"
      )
    unverified = {k: v for k, v in self.fingerprint.items()
                  if isinstance(v, str) and v.startswith(UNVERIFIED)}
    if unverified and not self.resume_unverified_code:
      what = "; ".join(f"{k} reads {v[len(UNVERIFIED):v.rindex('):')]}" for k, v in sorted(unverified.items()))
      raise self._error(
          f"cannot tell whether this sweep's code is the checkpoint's: {what}, which cannot be"
          " hashed; pass execution=optaxlr.Execution(resume_unverified_code=True) to resume anyway (you vouch that the code is"
          " unchanged), or use another folder")
    try:
      self.chunks = list(manifest["chunks"])
      self.state = manifest["state"]
      self.position = tuple(manifest["position"])
      self.finished = bool(manifest["finished"])
    except (KeyError, TypeError, ValueError) as e:
      raise self._error(f"{MANIFEST} is damaged (missing {e}); delete the folder to start over") from e
    for entry in self.chunks + ([self.state] if self.state else []):
      self._verify(entry)
    if self.writer:
      keep = {MANIFEST} | {c["file"] for c in self.chunks} | ({self.state["file"]} if self.state else set())
      for p in self.folder.iterdir():
        if p.name not in keep and (p.name.endswith(".tmp") or p.name.startswith(("chunk-", "state-"))):
          p.unlink()

  def _lock(self) -> None:
    """One writer per folder: a second process (or a second sweep in this one) that opens a
    folder in use gets a clear error instead of interleaving commits."""
    key = str(self.folder.resolve())
    old = _HELD.pop(key, None)
    if old is not None:
      old.close()  # a previous sweep of this process that ended (or was interrupted)
    f = open(self.folder / LOCK, "a+")  # noqa: SIM115 -- held until close() or exit
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.close()
      raise self._error("is in use by another running sweep (its lock is held); wait for it or"
                        " use another folder") from e
    _HELD[key] = f

  def close(self) -> None:
    """Releases the folder's lock."""
    f = _HELD.pop(str(self.folder.resolve()), None)
    if f is not None:
      f.close()

  def _verify(self, entry: Mapping[str, Any]) -> None:
    path = self.folder / entry["file"]
    try:
      data = path.read_bytes()
    except OSError as e:
      raise self._error(f"{entry['file']} is missing or unreadable ({e}); delete the folder to start over") from e
    if len(data) != entry["size"] or _sha(data) != entry["sha256"]:
      raise self._error(f"{entry['file']} is damaged (size or SHA-256 differs from the manifest);"
                        " delete the folder to start over")

  def read(self, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
    path = self.folder / entry["file"]
    data = path.read_bytes()
    if _sha(data) != entry["sha256"]:
      raise self._error(f"{entry['file']} changed after it was verified")
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # pragma: no cover -- hash matched
      raise self._error(f"{entry['file']} cannot be read ({e})") from e

  # -- committing --------------------------------------------------------------------------

  def commit(
      self, group: int, chunk: int, chunk_arrays: Mapping[str, np.ndarray],
      state_arrays: Mapping[str, np.ndarray] | None, position: tuple[int, int], finished: bool,
  ) -> None:
    """Appends one chunk's numbers and (unless the group ended) the state to resume from,
    then commits both atomically by replacing the manifest."""
    if not self.writer:
      return
    name = f"chunk-{group}-{chunk}.npz"
    data = _npz_bytes(chunk_arrays)
    _fsync_write(self.folder / name, data)
    entry = {"file": name, "group": group, "chunk": chunk, "size": len(data), "sha256": _sha(data)}
    old_state = self.state
    new_state = None
    if state_arrays is not None:
      sname = f"state-{group}-{chunk}.npz"
      sdata = _npz_bytes(state_arrays)
      _fsync_write(self.folder / sname, sdata)
      new_state = {"file": sname, "size": len(sdata), "sha256": _sha(sdata)}
    chunks = [c for c in self.chunks if (c["group"], c["chunk"]) != (group, chunk)] + [entry]
    manifest = {
        "format": FORMAT, "fingerprint": self.fingerprint, "chunks": chunks, "state": new_state,
        "position": list(position), "finished": finished,
    }
    _fsync_write(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    self.chunks, self.state, self.position, self.finished = chunks, new_state, position, finished
    if old_state is not None and (new_state is None or old_state["file"] != new_state["file"]):
      try:
        (self.folder / old_state["file"]).unlink()
      except OSError:  # pragma: no cover -- removed already
        pass


def _short(v: Any) -> str:
  s = json.dumps(v, default=str)
  return s if len(s) <= 60 else s[:57] + "..."
