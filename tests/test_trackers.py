"""Tracker callbacks (optaxlr.integrations.trackers) against the real packages: what a sweep
writes is read back with each tool's own reader (TensorBoard's EventAccumulator, MLflow's
client) or, for W&B's offline run files, with an independent reader of their record format,
and compared with the SweepResult's own arrays (which the driver assembles apart from the
events the trackers see)."""

from __future__ import annotations

import glob
import os
import struct
import time

import numpy as np
import pytest

import optaxlr
from optaxlr import search
from optaxlr.engine import ChunkEvent
from optaxlr.integrations import trackers

STEPS, EVAL_EVERY, BATCH = 20, 5, 8
SPACE = search.grid(lr=[0.01, 0.1], wd=[0.0, 1e-3])


@pytest.fixture(scope="module")
def task():
  return optaxlr.tasks.teacher_student(n_train=64, n_val=32, n_test=16)


def optimizer(h):
  return optaxlr.adamw(h["lr"], weight_decay=h["wd"])


def run(task, callback, **kw):
  kw = {"steps": STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY, "sync_every": 10,
        "seeds": 1, "execution": optaxlr.Execution(progress=False), **kw}
  return optaxlr.sweep(task, optimizer, SPACE, callback=callback, **kw)


def test_chunk_event_carries_the_training_loss(task):
  """ChunkEvent.train_loss grows chunk by chunk and ends equal to the result's batch_loss; with
  log_every=5 it holds the means of the per-step losses over each window of 5 steps."""
  events = []
  res = run(task, events.append, seeds=2)
  assert [e.train_loss.shape for e in events] == [(2, 4, 10), (2, 4, 20)]
  np.testing.assert_array_equal(events[-1].train_loss, res.batch_loss)
  np.testing.assert_array_equal(events[0].train_steps, np.arange(1, 11))
  events = []
  res5 = run(task, events.append, log_every=5)  # seed 0 alone: the same runs as above
  assert [e.train_loss.shape for e in events] == [(1, 4, 2), (1, 4, 4)]
  np.testing.assert_array_equal(events[-1].train_steps, [5, 10, 15, 20])
  want = res.batch_loss[:1].reshape(1, 4, 4, 5).mean(-1)
  np.testing.assert_allclose(events[-1].train_loss, want, rtol=1e-5)
  np.testing.assert_array_equal(events[-1].train_loss, res5.batch_loss)


def test_tensorboard_event_files(task, tmp_path):
  """One folder per (config, seed); scalars by step and HParams read back with TensorBoard's
  own EventAccumulator."""
  pytest.importorskip("tensorboardX")
  ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  from tensorboard.plugins.hparams import plugin_data_pb2

  with trackers.tensorboard_callback(tmp_path, prefix="adamw/") as tb:
    res = run(task, tb, seeds=2)
  names = sorted(os.listdir(tmp_path / "adamw"))
  assert names == sorted(f"c{c}-s{s}" for c in range(4) for s in range(2))
  for c in range(4):
    for s in range(2):
      acc = ea.EventAccumulator(str(tmp_path / "adamw" / f"c{c}-s{s}"),
                                size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
      acc.Reload()
      tr = acc.Scalars("train/loss")
      assert [e.step for e in tr] == list(range(1, STEPS + 1))
      np.testing.assert_allclose([e.value for e in tr], res.batch_loss[s, c], rtol=1e-6)
      val = acc.Scalars("val/loss")
      assert [e.step for e in val] == res.eval_steps.tolist() == [5, 10, 15, 20]
      np.testing.assert_allclose([e.value for e in val], res.metrics["val/loss"][s, c],
                                 rtol=1e-6)
      content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
      info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
      got = {k: v.number_value for k, v in info.hparams.items()}
      assert got == pytest.approx({**res.config(c), "config": c, "seed_index": s})


def _wandb_records(path):
  """The protobuf records of a W&B run file (``run-*.wandb``), read with a restatement of its
  LevelDB-style log format: a 7-byte header (':W&B', magic 0xBEE1, version 0), then 32 KiB
  blocks of chunks (crc32 4 bytes, length 2, type 1: full/first/middle/last)."""
  from wandb.proto import wandb_internal_pb2 as pb

  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
  pos, block, out, part = 7, 32768, [], b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # the rest of a block too short for a header is padding
      pos += block - pos % block
      continue
    _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if n == 0 and kind == 0:
      break
    part += data[pos + 7:pos + 7 + n]
    pos += 7 + n
    if kind in (1, 4):  # full or last
      rec = pb.Record()
      rec.ParseFromString(part)
      out.append(rec)
      part = b""
  return out


def test_wandb_offline_runs(task, tmp_path):
  """One offline run folder per config, its config = the hyperparameters, its history the
  training loss and the metrics by step."""
  wandb = pytest.importorskip("wandb")
  import json

  quiet = wandb.Settings(silent=True, console="off", x_disable_stats=True)
  with trackers.wandb_callback("optaxlr-test", mode="offline", dir=str(tmp_path),
                               settings=quiet) as wb:
    res = run(task, wb, log_every=5)
  files = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
  assert len(files) == 4
  seen = set()
  for f in files:
    # wandb's service may still be writing a finished run's file for a moment.
    deadline = time.monotonic() + 30
    while True:
      recs = _wandb_records(f)
      kinds = [r.WhichOneof("record_type") for r in recs]
      if "exit" in kinds or time.monotonic() > deadline:
        break
      time.sleep(0.2)
    assert "run" in kinds and "exit" in kinds, (f, kinds)
    run_rec = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    c = int(run_rec.display_name.split("-")[0][1:])
    seen.add(run_rec.display_name)
    config = {}
    for r in recs:
      if r.WhichOneof("record_type") == "config":
        config.update({u.key: json.loads(u.value_json) for u in r.config.update})
      if r.WhichOneof("record_type") == "run":
        config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
    assert {k: config[k] for k in ("lr", "wd", "config")} == pytest.approx(
        {**res.config(c), "config": c})
    hist = {}
    for r in recs:
      if r.WhichOneof("record_type") == "history":
        row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        hist[row["_step"]] = row
    assert sorted(hist) == [5, 10, 15, 20]
    np.testing.assert_allclose([hist[t]["train/loss"] for t in (5, 10, 15, 20)],
                               res.batch_loss[0, c], rtol=1e-6)
    np.testing.assert_allclose([hist[t]["val/loss"] for t in (5, 10, 15, 20)],
                               res.metrics["val/loss"][0, c], rtol=1e-6)
  assert seen == {f"c{c}-s0" for c in range(4)}


def test_mlflow_file_store_runs(task, tmp_path, monkeypatch):
  """One MLflow run per config in a file store: params = hyperparameters, metrics by step
  (log_every=5: window means), status and stop_reason."""
  pytest.importorskip("mlflow")
  from mlflow.tracking import MlflowClient

  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a switch
  uri = (tmp_path / "mlruns").as_uri()
  with trackers.mlflow_callback("grid", tracking_uri=uri) as ml:
    res = run(task, ml, log_every=5)
  client = MlflowClient(tracking_uri=uri)
  exp = client.get_experiment_by_name("grid")
  found = client.search_runs([exp.experiment_id])
  assert sorted(r.info.run_name for r in found) == [f"c{c}-s0" for c in range(4)]
  for r in found:
    c = int(r.info.run_name[1])
    assert r.info.status == "FINISHED" and r.data.tags["stop_reason"] == "completed"
    assert {k: float(r.data.params[k]) for k in ("lr", "wd")} == pytest.approx(res.config(c))
    hist = client.get_metric_history(r.info.run_id, "train/loss")
    assert [m.step for m in hist] == [5, 10, 15, 20]
    np.testing.assert_allclose([m.value for m in hist], res.batch_loss[0, c], rtol=1e-6)
    err = client.get_metric_history(r.info.run_id, "val/loss")
    np.testing.assert_allclose([m.value for m in sorted(err, key=lambda m: m.step)],
                               res.metrics["val/loss"][0, c], rtol=1e-6)


def _event(step, loss, lr, reason="completed"):
  """A hand-made one-config, one-seed event."""
  n = len(loss)
  return ChunkEvent(
      group=0, chunk=0, step=step, configs=(0,), hparams={"lr": np.array([lr])},
      metrics={}, history={"val/loss": np.full((1, 1, 1), np.nan)}, eval_steps=np.array([step]),
      alive=np.array([[reason == "completed"]]), stopped_at=np.array([[-1]]),
      diverged_at=np.array([[-1]]), stop_reason=np.array([[reason]], object),
      train_loss=np.asarray(loss, float)[None, None], train_steps=np.arange(1, n + 1))


def test_tracker_skips_non_finite_and_logs_changed_hparams():
  """A diverged run's NaN is not logged; a steered hyperparameter is logged as hparam/<name>;
  the run is closed with its stop reason; a closed tracker refuses more events."""
  logged, closed = [], []

  class Memory(trackers.Tracker):
    def _open(self, name, hparams):
      return name

    def _log(self, handle, values, step):
      logged.append((handle, step, values))

    def _close(self, handle, stop_reason):
      closed.append((handle, stop_reason))

  t = Memory()
  t(_event(2, [1.0, 0.5], 0.1))
  t(_event(4, [1.0, 0.5, np.nan, np.nan], 0.2, reason="diverged"))
  t.close()
  assert logged == [("c0-s0", 1, {"train/loss": 1.0}), ("c0-s0", 2, {"train/loss": 0.5}),
                    ("c0-s0", 4, {"hparam/lr": 0.2})]
  assert closed == [("c0-s0", "diverged")]
  with pytest.raises(ValueError, match="Tracker: this tracker was closed"):
    t(_event(6, [1.0] * 6, 0.2))


def test_chain_and_bad_arguments(tmp_path):
  calls = []
  stop = optaxlr.Control(stop_sweep=True)
  cb = trackers.chain(lambda e: calls.append(e), lambda e: stop)
  assert cb("e") is stop and calls == ["e"]
  with pytest.raises(ValueError, match="chain: two callbacks steered"):
    trackers.chain(lambda e: stop, lambda e: stop)("e")
  with pytest.raises(TypeError, match=r"chain: callbacks\[1\] must be callable"):
    trackers.chain(print, 3)
  pytest.importorskip("tensorboardX")
  with pytest.raises(TypeError, match="tensorboard: logdir must be a path, got logdir=3"):
    trackers.tensorboard_callback(3)
  with pytest.raises(TypeError, match="tensorboard: prefix must be a string"):
    trackers.tensorboard_callback(tmp_path, prefix=1)
