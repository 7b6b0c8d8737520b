"""``SweepResult``: a sweep's numbers, labelled by hyperparameter values."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

__all__ = ["SweepResult", "load"]


@dataclasses.dataclass
class SweepResult:
  """The numbers of a sweep, with leading axes ``(seed, config)``.

  Attributes:
    space: the :class:`optaxlr.search.Space` of the configs (without its seed axis).
    seeds: the seed values, shape ``(S,)``.
    batch_loss: the training minibatch loss at every step, ``(S, C, steps)``; NaN after a run
      diverged or stopped.
    metrics: ``"split/name" -> (S, C, E)`` evaluations at ``eval_steps``; NaN from a run's
      divergence on.
    eval_steps: the step after which each evaluation was taken, ``(E,)``.
    diverged_at: the step at which a run's loss or parameters turned non-finite, -1 if never.
    stopped_at: the step at which early stopping froze a run, -1 if never.
    params: the final parameters (leaves ``(S, C, ...)``) when the sweep kept them.
    info: settings and timings (``compile_s``, ``run_s``...).
  """

  space: Any
  seeds: np.ndarray
  batch_loss: np.ndarray
  metrics: dict[str, np.ndarray]
  eval_steps: np.ndarray
  diverged_at: np.ndarray
  stopped_at: np.ndarray
  params: Any = None
  info: dict = dataclasses.field(default_factory=dict)

  # -- shape -------------------------------------------------------------------------------

  @property
  def hparams(self) -> dict[str, np.ndarray]:
    """Hyperparameter name -> its value in each config, shape ``(C,)``."""
    return {k: np.asarray(v) for k, v in self.space.columns.items()}

  @property
  def num_configs(self) -> int:
    return int(self.diverged_at.shape[1])

  @property
  def diverged(self) -> np.ndarray:
    """``(S, C)`` bool: the run diverged."""
    return self.diverged_at >= 0

  def config(self, i: int) -> dict[str, Any]:
    """The hyperparameters of config ``i`` as Python values."""
    return {k: v[i].item() if np.ndim(v[i]) == 0 else v[i] for k, v in self.hparams.items()}

  def _metric(self, metric: str) -> np.ndarray:
    if metric == "batch_loss":
      return self.batch_loss
    if metric not in self.metrics:
      raise KeyError(f"SweepResult: no metric {metric!r}; available: {sorted(self.metrics)}")
    return self.metrics[metric]

  def final(self, metric: str) -> np.ndarray:
    """``(S, C)``: the metric at the last evaluation (NaN for diverged runs)."""
    return self._metric(metric)[..., -1]

  def summary(self, metric: str, *, at: str = "final", mode: str = "min") -> np.ndarray:
    """``(S, C)``: the metric at the last evaluation (``at="final"``) or its best over the
    evaluations (``at="best"``, min or max by ``mode``)."""
    if at not in ("final", "best"):
      raise ValueError(f"SweepResult.summary: at must be 'final' or 'best', got {at!r}")
    if mode not in ("min", "max"):
      raise ValueError(f"SweepResult.summary: mode must be 'min' or 'max', got {mode!r}")
    vals = self._metric(metric)
    if at == "final":
      return vals[..., -1]
    with np.errstate(all="ignore"):
      red = np.fmin.reduce if mode == "min" else np.fmax.reduce
      out = red(vals, axis=-1)
    return np.where(self.diverged, np.nan, out)

  def best(self, metric: str, *, mode: str | None = None, at: str = "final") -> dict[str, Any]:
    """The config with the best mean (over seeds) of ``metric``.

    ``mode`` defaults to "max" for metrics named like accuracy, "min" otherwise. A config with a
    diverged seed is never chosen.

    Returns:
      ``{"index": i, "hparams": {...}, metric: mean, metric + "_std": std over seeds}``.
    """
    if mode is None:
      mode = "max" if "acc" in metric.split("/")[-1] else "min"
    vals = self.summary(metric, at=at, mode=mode)
    mean = vals.mean(axis=0)  # NaN if any seed diverged
    if np.all(np.isnan(mean)):
      raise ValueError(f"SweepResult.best: every config diverged or has no {metric!r}")
    i = int(np.nanargmin(mean) if mode == "min" else np.nanargmax(mean))
    return {
        "index": i,
        "hparams": self.config(i),
        metric: float(mean[i]),
        f"{metric}_std": float(vals[:, i].std()),
    }

  # -- conversions -------------------------------------------------------------------------

  def to_pandas(self, *, at: str = "final"):
    """A long table: one row per (config, seed) with the hyperparameters, the final (or best)
    value of every metric, the divergence and stopping steps."""
    import pandas as pd

    rows = []
    hp = self.hparams
    summaries = {
        m: self.summary(m, at=at, mode="max" if "acc" in m.split("/")[-1] else "min")
        for m in self.metrics
    }
    for c in range(self.num_configs):
      for s_i, seed in enumerate(self.seeds):
        row = {"config": c, "seed": int(seed)}
        row.update({k: (v[c].item() if np.ndim(v[c]) == 0 else v[c]) for k, v in hp.items()})
        row.update({m: float(v[s_i, c]) for m, v in summaries.items()})
        row["diverged_at"] = int(self.diverged_at[s_i, c])
        row["stopped_at"] = int(self.stopped_at[s_i, c])
        rows.append(row)
    return pd.DataFrame(rows)

  def to_xarray(self):
    """An ``xarray.Dataset`` with dims ``(seed, *space.dims, eval_step)``.

    The config axis is unfolded into the space's axes, labelled by hyperparameter values, so a
    grid gives ``ds["val/loss"].sel(lr=1e-3)``; a zipped or random axis keeps one dimension
    with its hyperparameters as coordinates along it.
    """
    import xarray as xr

    dims, shape = tuple(self.space.dims), tuple(self.space.shape)

    def unfold(a, tail):
      return (("seed", *dims, *tail), a.reshape(a.shape[:1] + shape + a.shape[2:]))

    data_vars = {m: unfold(v, ("eval_step",)) for m, v in self.metrics.items()}
    data_vars["batch_loss"] = unfold(self.batch_loss, ("step",))
    data_vars["diverged_at"] = unfold(self.diverged_at, ())
    data_vars["stopped_at"] = unfold(self.stopped_at, ())
    coords = {
        "seed": self.seeds,
        "eval_step": self.eval_steps,
        "step": np.arange(self.batch_loss.shape[-1]),
    }
    for name, (dim, values) in self.space.coords.items():
      coords[name] = (dim, np.asarray(values)) if dim != () else np.asarray(values)
    return xr.Dataset(data_vars, coords=coords, attrs={k: str(v) for k, v in self.info.items()})

  # -- persistence -------------------------------------------------------------------------

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes the result to ``path`` (a ``.npz`` file with a JSON header); see :func:`load`."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
      path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": "optaxlr.SweepResult/1",
        "axes": [
            {"dim": a.dim, "names": list(a.names)} for a in self.space.axes
        ],
        "fixed": self.space.fixed,
        "metrics": list(self.metrics),
        "info": self.info,
    }
    arrays = {
        "seeds": self.seeds,
        "batch_loss": self.batch_loss,
        "eval_steps": self.eval_steps,
        "diverged_at": self.diverged_at,
        "stopped_at": self.stopped_at,
        "header": np.frombuffer(json.dumps(header, default=str).encode(), np.uint8),
    }
    for i, axis in enumerate(self.space.axes):
      arrays.update({f"axis{i}:{k}": np.asarray(v) for k, v in axis.values.items()})
    arrays.update({f"metric:{k}": v for k, v in self.metrics.items()})
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path

  # -- plots -------------------------------------------------------------------------------

  def plot_heatmap(self, x: str, y: str, metric: str, **kwargs):
    """A heatmap of ``metric`` (mean over seeds) over two hyperparameters; see
    :func:`optaxlr.plot.heatmap`."""
    from optaxlr.plot import heatmap

    return heatmap(self, x, y, metric, **kwargs)


def load(path: str | os.PathLike) -> SweepResult:
  """Reads a :class:`SweepResult` written by :meth:`SweepResult.save`.

  Raises:
    ValueError: the file is not a saved sweep result.
  """
  path = pathlib.Path(path)
  with np.load(path, allow_pickle=False) as data:
    if "header" not in data:
      raise ValueError(f"load: {str(path)!r} is not an optaxlr sweep result (no header)")
    header = json.loads(bytes(data["header"]).decode())
    if header.get("format") != "optaxlr.SweepResult/1":
      raise ValueError(f"load: {str(path)!r} has unknown format {header.get('format')!r}")
    from optaxlr import search

    axes = [
        search.Axis(a["dim"], tuple(a["names"]), {k: data[f"axis{i}:{k}"] for k in a["names"]})
        for i, a in enumerate(header["axes"])
    ]
    return SweepResult(
        space=search.Space(axes, header.get("fixed") or {}),
        seeds=data["seeds"],
        batch_loss=data["batch_loss"],
        metrics={k: data[f"metric:{k}"] for k in header["metrics"]},
        eval_steps=data["eval_steps"],
        diverged_at=data["diverged_at"],
        stopped_at=data["stopped_at"],
        info=header.get("info", {}),
    )
