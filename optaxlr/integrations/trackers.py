"""Experiment trackers fed by a sweep: TensorBoard, Weights & Biases and MLflow.

Each factory returns a :class:`Tracker`, a callable for ``optaxlr.sweep(..., callback=...)``
that opens ONE tracker run per ``(config, seed)`` of the sweep, named
``f"{prefix}c{config}-s{seed_index}"``, with the config's hyperparameters (and ``config``,
``seed_index``), and feeds it after every chunk with what is new since the last chunk:

* ``train/loss``: the training (minibatch) loss of every step, or its means over ``log_every``
  steps, at the number of updates done when each window ended (:class:`optaxlr.ChunkEvent`'s
  ``train_loss`` and ``train_steps``);
* every evaluated metric (``val/loss``, ``val/error``, ``train/update_ratio``...) at its
  evaluation step.

A non-finite value (a diverged run, a stopped run's frozen steps) is not logged. A categorical
axis is logged as the index of its value (as the program sees it). When steering changes a
run's hyperparameters (population-based training), the new values are logged as scalars
``hparam/<name>`` at that step, since a tracker's run parameters cannot change.

Every run stays open until the tracker is closed (a TensorBoard writer holds a file and a
thread, a W&B run a stream): for sweeps of thousands of runs, track a subset (a smaller sweep,
or :func:`chain` with a callback of your own that logs what you choose).

A tracker never steers (it returns ``None``); :func:`chain` runs it beside a callback that does.
Close it when the sweep is done (``tracker.close()``, or ``with`` the tracker): that ends every
tracker run (W&B ``finish``, MLflow ``set_terminated``, TensorBoard writers closed) with its
``stop_reason`` recorded. Each backend is an optional dependency, imported when its factory is
called: ``pip install 'optaxlr[tensorboard]'`` (tensorboardX), ``'optaxlr[wandb]'``,
``'optaxlr[mlflow]'`` (mlflow-skinny).

Examples:
  >>> import tempfile, optaxlr
  >>> from optaxlr import search
  >>> from optaxlr.integrations import trackers
  >>> task = optaxlr.tasks.teacher_student(n_train=32, n_val=16, n_test=16)
  >>> logdir = tempfile.mkdtemp()
  >>> with trackers.tensorboard_callback(logdir) as tb:
  ...   res = optaxlr.sweep(task, lambda h: optaxlr.sgd(h["lr"]), search.grid(lr=[0.01, 0.1]),
  ...                       steps=8, batch_size=8, callback=tb,
  ...                       execution=optaxlr.Execution(progress=False))
  >>> sorted(tb.runs)
  ['c0-s0', 'c1-s0']
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["Tracker", "tensorboard_callback", "wandb_callback", "mlflow_callback", "chain"]


def _need(module: str, extra: str, fn: str):
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{fn}: needs {module.split('.')[0]}, which is not installed: pip install "
                      f"'optaxlr[{extra}]'") from e


def _check_prefix(fn: str, prefix: Any) -> str:
  if not isinstance(prefix, str):
    raise TypeError(f"{fn}: prefix must be a string, got prefix={prefix!r}")
  return prefix


def _scalar(v: Any) -> float | int:
  v = np.asarray(v).item()
  return v


class Tracker:
  """A sweep callback that writes every ``(config, seed)`` run to an experiment tracker.

  Subclasses supply ``_open(name, hparams) -> handle``, ``_log(handle, {tag: value}, step)``
  and ``_close(handle, stop_reason)``; this class keeps the bookkeeping (which evaluations and
  training losses each run has already logged) and is the same for every backend.

  Attributes:
    runs: run name -> the backend's run object (a ``tensorboardX.SummaryWriter``, a
      ``wandb.Run``, an MLflow run id).
  """

  _fn = "Tracker"

  def __init__(self, prefix: str = ""):
    self.prefix = _check_prefix(self._fn, prefix)
    self.runs: dict[str, Any] = {}
    self._logged_hp: dict[str, dict[str, float]] = {}
    self._n_train: dict[str, int] = {}
    self._n_eval: dict[str, int] = {}
    self._reason: dict[str, str] = {}
    self._closed = False

  # -- backend -------------------------------------------------------------------------------

  def _open(self, name: str, hparams: dict[str, Any]) -> Any:  # pragma: no cover - abstract
    raise NotImplementedError

  def _log(self, handle: Any, values: dict[str, float], step: int) -> None:  # pragma: no cover
    raise NotImplementedError

  def _close(self, handle: Any, stop_reason: str) -> None:  # pragma: no cover
    raise NotImplementedError

  # -- the callback --------------------------------------------------------------------------

  def __call__(self, event: Any) -> None:
    if self._closed:
      raise ValueError(f"{self._fn}: this tracker was closed; make a new one for another sweep")
    train = getattr(event, "train_loss", None)
    if train is None:
      raise ValueError(f"{self._fn}: the event carries no train_loss; pass the tracker as "
                       "optaxlr.sweep(..., callback=tracker)")
    n_s = event.alive.shape[0]
    for j, cfg in enumerate(event.configs):
      hp = {k: _scalar(v[j]) for k, v in event.hparams.items()}
      for s in range(n_s):
        name = f"{self.prefix}c{cfg}-s{s}"
        if name not in self.runs:
          self.runs[name] = self._open(name, {**hp, "config": int(cfg), "seed_index": s})
          self._logged_hp[name] = dict(hp)
          self._n_train[name] = 0
          self._n_eval[name] = 0
        handle = self.runs[name]
        per_step: dict[int, dict[str, float]] = {}
        changed = {k: v for k, v in hp.items() if self._logged_hp[name].get(k) != v}
        if changed:
          self._logged_hp[name].update(changed)
          per_step.setdefault(int(event.step), {}).update(
              {f"hparam/{k}": float(v) for k, v in changed.items()})
        loss = train[s, j]
        for i in range(self._n_train[name], loss.shape[-1]):
          if math.isfinite(loss[i]):
            per_step.setdefault(int(event.train_steps[i]), {})["train/loss"] = float(loss[i])
        self._n_train[name] = loss.shape[-1]
        n_e = len(event.eval_steps)
        for e in range(self._n_eval[name], n_e):
          for k, v in event.history.items():
            x = float(v[s, j, e])
            if math.isfinite(x):
              per_step.setdefault(int(event.eval_steps[e]), {})[k] = x
        self._n_eval[name] = n_e
        for step in sorted(per_step):
          self._log(handle, per_step[step], step)
        self._reason[name] = str(event.stop_reason[s, j])
    self._flush()
    return None

  def _flush(self) -> None:
    pass

  def close(self) -> None:
    """Ends every tracker run, recording its ``stop_reason``. Closing twice does nothing."""
    if self._closed:
      return
    self._closed = True
    for name, handle in self.runs.items():
      self._close(handle, self._reason.get(name, "completed"))

  def __enter__(self) -> Tracker:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class _TensorBoard(Tracker):
  _fn = "tensorboard"

  def __init__(self, logdir: str | os.PathLike, prefix: str = ""):
    self._tbx = _need("tensorboardX", "tensorboard", self._fn)
    if not isinstance(logdir, (str, os.PathLike)):
      raise TypeError(f"{self._fn}: logdir must be a path, got logdir={logdir!r}")
    super().__init__(prefix)
    self.logdir = os.fspath(logdir)

  def _open(self, name, hparams):
    from tensorboardX.summary import hparams as hparams_summary

    writer = self._tbx.SummaryWriter(os.path.join(self.logdir, name))
    exp, ssi, sei = hparams_summary(hparams, {"train/loss": float("nan")})
    for summary in (exp, ssi, sei):
      writer.file_writer.add_summary(summary)
    return writer

  def _log(self, handle, values, step):
    for tag, v in values.items():
      handle.add_scalar(tag, v, step)

  def _flush(self):
    for writer in self.runs.values():
      writer.flush()

  def _close(self, handle, stop_reason):
    handle.add_text("stop_reason", stop_reason)
    handle.close()


class _WandB(Tracker):
  _fn = "wandb"

  def __init__(self, project: str | None, prefix: str, init_kwargs: Mapping[str, Any]):
    self._wandb = _need("wandb", "wandb", self._fn)
    super().__init__(prefix)
    own = {"name", "config", "reinit", "project"}
    bad = sorted(own & set(init_kwargs))
    if bad:
      raise TypeError(f"{self._fn}: {bad} are set by the tracker itself (one run per config and "
                      "seed, named and configured from the sweep); pass project= and prefix=")
    self.project = project
    self.init_kwargs = dict(init_kwargs)

  def _open(self, name, hparams):
    return self._wandb.init(project=self.project, name=name, config=hparams,
                            reinit="create_new", **self.init_kwargs)

  def _log(self, handle, values, step):
    handle.log(values, step=step)

  def _close(self, handle, stop_reason):
    handle.summary["stop_reason"] = stop_reason
    handle.finish()


class _MLflow(Tracker):
  _fn = "mlflow"

  def __init__(self, experiment: str, tracking_uri: str | None, prefix: str):
    tracking = _need("mlflow.tracking", "mlflow", self._fn)
    if not isinstance(experiment, str) or not experiment:
      raise ValueError(f"{self._fn}: experiment must be a non-empty string, got "
                       f"experiment={experiment!r}")
    super().__init__(prefix)
    from mlflow.entities import Metric, Param

    self._Metric, self._Param = Metric, Param
    self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
    found = self.client.get_experiment_by_name(experiment)
    self.experiment_id = (found.experiment_id if found is not None
                          else self.client.create_experiment(experiment))

  def _open(self, name, hparams):
    run = self.client.create_run(self.experiment_id, run_name=name)
    params = [self._Param(k, str(v)) for k, v in hparams.items()]
    self.client.log_batch(run.info.run_id, params=params)
    return run.info.run_id

  def _log(self, handle, values, step):
    import time

    now = int(time.time() * 1000)
    self.client.log_batch(handle, metrics=[self._Metric(k, v, now, step)
                                           for k, v in values.items()])

  def _close(self, handle, stop_reason):
    self.client.set_tag(handle, "stop_reason", stop_reason)
    self.client.set_terminated(handle, "FAILED" if stop_reason == "diverged" else "FINISHED")


def tensorboard_callback(logdir: str | os.PathLike, *, prefix: str = "") -> Tracker:
  """TensorBoard event files, one folder ``logdir/<run name>`` per ``(config, seed)``.

  Scalars ``train/loss`` and every metric by step, the run's hyperparameters as TensorBoard's
  HParams (the ``hparams`` plugin), and ``stop_reason`` as text when closed. Written with
  tensorboardX (``pip install 'optaxlr[tensorboard]'``); ``tensorboard --logdir LOGDIR`` shows
  them.

  Args:
    logdir: the folder of the runs (created if missing).
    prefix: prepended to every run's name (``"adamw/"`` puts a sweep in a sub-folder).

  Returns:
    A :class:`Tracker` for ``sweep(callback=...)``.

  Examples:
    >>> import tempfile
    >>> tb = tensorboard_callback(tempfile.mkdtemp(), prefix="adamw/")
    >>> tb.runs  # opened by the first chunk of the sweep it is given to
    {}
  """
  return _TensorBoard(logdir, prefix)


def wandb_callback(project: str | None = None, *, prefix: str = "", **init_kwargs: Any) -> Tracker:
  """Weights & Biases, one run per ``(config, seed)`` with the config's hyperparameters.

  Each run is ``wandb.init(project=project, name=<run name>, config=<hparams>,
  reinit="create_new", **init_kwargs)``; ``mode="offline"`` and ``dir=`` work as in
  ``wandb.init`` (``wandb sync`` uploads offline runs later), and so do ``group=`` (e.g. the
  sweep's name) and ``tags=``. ``stop_reason`` goes to the run's summary when closed.

  Args:
    project: the W&B project.
    prefix: prepended to every run's name.
    **init_kwargs: more arguments of ``wandb.init`` (not ``name``, ``config``, ``reinit``,
      which the tracker sets).

  Returns:
    A :class:`Tracker` for ``sweep(callback=...)``.

  Examples:
    >>> import tempfile
    >>> tracker = wandb_callback("my-project", mode="offline", dir=tempfile.mkdtemp(),
    ...                          group="lr-grid")
    >>> tracker.runs, tracker.init_kwargs["group"]
    ({}, 'lr-grid')
  """
  return _WandB(project, prefix, init_kwargs)


def mlflow_callback(experiment: str = "optaxlr", *, tracking_uri: str | None = None,
           prefix: str = "") -> Tracker:
  """MLflow, one run per ``(config, seed)``: parameters = its hyperparameters, metrics by step.

  Runs are created with ``mlflow.tracking.MlflowClient(tracking_uri)`` in ``experiment``
  (created if missing), not through MLflow's global active run, so a sweep's runs never mix
  with the caller's own. Each run is ended with ``status="FINISHED"`` (``"FAILED"`` if it
  diverged) and a ``stop_reason`` tag.

  Args:
    experiment: the MLflow experiment's name.
    tracking_uri: where to write (``"sqlite:///mlflow.db"``, a server's URL; default MLflow's
      own default, ``MLFLOW_TRACKING_URI``).
    prefix: prepended to every run's name.

  Returns:
    A :class:`Tracker` for ``sweep(callback=...)``.

  Examples:
    In a database in the current folder (``mlflow ui --backend-store-uri
    sqlite:///mlflow.db`` shows it)::

      with mlflow_callback("lr-grid", tracking_uri="sqlite:///mlflow.db") as tracker:
        res = optaxlr.sweep(task, optimizer, space, steps=500, callback=tracker)
  """
  return _MLflow(experiment, tracking_uri, prefix)


def chain(*callbacks: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """One sweep callback that calls ``callbacks`` in order with each event.

  At most one of them may steer: the first :class:`optaxlr.Control` (or ``True``) returned is
  the result; a second one in the same chunk is a ``ValueError`` (two steerers would fight).

  Examples:
    >>> seen = []
    >>> cb = chain(seen.append, lambda e: None)
    >>> cb("event"), seen
    (None, ['event'])
  """
  for i, c in enumerate(callbacks):
    if not callable(c):
      raise TypeError(f"chain: callbacks[{i}] must be callable, got {c!r}")

  def run(event):
    out = None
    for c in callbacks:
      r = c(event)
      if r is None or r is False:
        continue
      if out is not None:
        raise ValueError("chain: two callbacks steered the same chunk; let one of them return "
                         "the Control")
      out = r
    return out

  return run
