"""Convnet benchmark: a CNN with BatchNorm and Dropout, host-fed data, mixed precision.

Three measurements, in one process, on scikit-learn's digits (8x8 images, the split and
standardisation of ``optaxlr.tasks.digits``: 1,077 training and 360 validation examples):

1. **CNN sweep against a loop.** ``conv3x3 (no bias) -> BatchNorm -> relu -> maxpool2`` twice,
   dropout (rate 0.1, a swept hyperparameter the engine reads through
   ``optaxlr.tasks.Dropout(hparam="dropout")``), linear head; AdamW over a grid of learning
   rate x weight decay, one seed, an evaluation on the validation split every ``eval_every``
   steps. Methods:

     sweep       optaxlr.sweep with its default vectorize="auto" (one config per block for a
                 conv model on the CPU, blocks under lax.map inside one program)
     sweep_vmap  optaxlr.sweep(vectorize=None): every config vmapped at once (XLA:CPU runs the
                 vmapped convolutions as grouped convolutions: why "auto" exists)
     loop        benchmarks/handwritten_cnn.py (JAX, optax and flax.nnx only; it imports
                 nothing from optaxlr, checked below before anything runs): its own model,
                 BatchNorm handling, dropout, batch order (a permutation per epoch) and
                 evaluation, one ``jax.jit(train)`` with ``lax.scan`` over the steps compiled
                 ONCE (compile time reported apart) and called in a Python loop over the configs.

   Both use the same key convention, so each row also records the largest difference of their
   numbers (per-step loss, val loss, val error) and the final val error of every config for
   every method: evidence that both trained the same models to the same error.

2. **Host-fed against in-memory data.** The MLP task ``optaxlr.tasks.digits()`` swept twice:
   once with its arrays in memory (the engine gathers the minibatches on the device), once
   with ``train`` a factory ``seed -> generator`` that yields the same minibatches as NumPy
   arrays (one ``optaxlr.engine.epoch_permutation`` per epoch, the order of
   ``batch_indices``; checked against ``batch_indices`` at a few steps). The numbers must be
   bitwise equal; the row gives the run-time ratio.

3. **Mixed precision.** The CNN (and a wider MLP) with ``compute_dtype="bfloat16"`` against
   float32: run time and final val error of both.

Timing. Compile time is reported apart from run time. Every method of a row is called once to
compile / warm up, then ``repeats`` times, interleaved in rotating order so that a change of
load hits all alike; the tables give the medians. A sweep's run time is its own
``info["run_s"]`` (the compiled program's calls, initialisation, host feeding and results to
the host), its wall time the whole ``sweep()`` call. The loop's run time is the Python loop
over the configs, results to the host. All sweeps use ``progress=False``,
``update_ratio=False`` (the loop does not compute it), ``log_every=1`` (a loss per step, which
the loop also returns) and, in part 1, ``sync_every=steps`` (one host sync per run, as the
loop's one call per config).

Usage:
  python benchmarks/cnn_bench.py                  # --preset cpu: BENCHMARKS.md's section,
                                                  # written to benchmarks/results/cnn_cpu.json
  python benchmarks/cnn_bench.py --preset gpu     # (-> results/cnn_gpu.json)
  python benchmarks/cnn_bench.py --quick          # smoke run (~3 min), no file
  python benchmarks/cnn_bench.py --parts cnn --configs 1 4 --repeats 2 --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import handwritten_cnn as hw  # noqa: E402
from _common import versions  # noqa: E402
import sweep_bench  # noqa: E402
from sweep_bench import interleaved, load_average, machine, max_diff  # noqa: E402
import optaxlr  # noqa: E402
from optaxlr import search  # noqa: E402
from optaxlr.engine import batch_indices, epoch_permutation, run_keys  # noqa: E402
from optaxlr.tasks import Dropout, Task  # noqa: E402

PRESETS = {
    # CPU: a small CNN, so that a 16-config row takes seconds per method on a 2-core machine.
    "cpu": dict(channels=(8, 16), steps=200, batch=64, eval_every=100, dropout=0.1,
                configs=[1, 4, 16], loop_max=16, repeats=3,
                fed_configs=[1, 16], fed_steps=500, fed_batch=64, fed_eval_every=100,
                mp_configs=4, mp_mlp_hidden=(512, 512), mp_mlp_steps=500),
    "gpu": dict(channels=(32, 64), steps=500, batch=128, eval_every=250, dropout=0.1,
                configs=[1, 4, 16, 64, 256], loop_max=16, repeats=3,
                fed_configs=[1, 64], fed_steps=1000, fed_batch=128, fed_eval_every=250,
                mp_configs=64, mp_mlp_hidden=(2048, 2048), mp_mlp_steps=1000),
}
QUICK = dict(channels=(4, 8), steps=40, batch=64, eval_every=20, dropout=0.1, configs=[1, 4],
             loop_max=4, repeats=1, fed_configs=[4], fed_steps=60, fed_batch=64,
             fed_eval_every=20, mp_configs=2, mp_mlp_hidden=(64,), mp_mlp_steps=60)

_ALLOWED_IMPORTS = {"__future__", "time", "zlib", "jax", "numpy", "optax", "flax"}


def check_independent(path: pathlib.Path = HERE / "handwritten_cnn.py") -> None:
  """Raises unless the loop baseline imports only JAX, optax, flax, NumPy and the stdlib's
  time / zlib: it shares no code with optaxlr."""
  sweep_bench.check_independent(path, _ALLOWED_IMPORTS)


# ----------------------------------------------------------------------------------------
# The engine's model and task (the loop's model is handwritten_cnn.CNN, written apart).


class BenchCNN(nnx.Module):
  """The engine's CNN: the layers of ``handwritten_cnn.CNN`` created in the same order (so the
  same key gives the same initial parameters), the dropout rate read from the sweep."""

  def __init__(self, rngs, channels=(8, 16), rate=0.1):
    c1, c2 = channels
    self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(c1, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(c2, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(4 * c2, 10, rngs=rngs)
    self.drop = Dropout(rate, hparam="dropout", rngs=rngs)  # last: draws no init key before

  @staticmethod
  def _pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

  def __call__(self, x):
    x = self._pool(jax.nn.relu(self.bn1(self.conv1(x))))
    x = self._pool(jax.nn.relu(self.bn2(self.conv2(x))))
    return self.head(self.drop(x.reshape(x.shape[0], -1)))


def optimizer(h):
  """ONE function object: every sweep of a row reuses its compiled program."""
  return optax.adamw(h["lr"], weight_decay=h["wd"])


def digits_arrays():
  d = optaxlr.tasks.digits(model="cnn")
  return d.train, d.eval["val"]


def cnn_task(train, val, channels):
  return Task.from_flax_nnx("bench-cnn", lambda rngs: BenchCNN(rngs, channels), "cross_entropy",
                            train=train, eval={"val": val})


def make_space(c: int, dropout: float):
  """``c`` configs of AdamW: a grid of lr in [3e-4, 3e-2] x wd in [1e-4, 1e-1] (log spaced)."""
  side = math.ceil(math.sqrt(c))
  lrs_axis = np.logspace(-3.5, -1.5, side) if side > 1 else np.array([3e-3])
  n_wd = math.ceil(c / side)
  wds_axis = np.logspace(-4, -1, n_wd) if n_wd > 1 else np.array([1e-2])
  lr = np.resize(lrs_axis, c)
  wd = np.resize(np.repeat(wds_axis, side), c)
  space = search.zip(lr=lr, wd=wd, dropout=np.full(c, dropout))
  return space, lr.astype(np.float32), wd.astype(np.float32)


def sweep_method(task, space, kw, last, name, **extra):
  def run():
    t0 = time.perf_counter()
    res = optaxlr.sweep(task, optimizer, space, key=0, **kw,
                        execution=optaxlr.Execution(progress=False, update_ratio=False, **extra))
    wall = time.perf_counter() - t0
    last[name] = res
    return {"compile_s": res.info["compile_s"], "run_s": res.info["run_s"], "wall_s": wall}

  return run


def sweep_record(rec) -> dict:
  return {
      "compile_s": rec["first"]["compile_s"], "run_s": rec["median"]["run_s"],
      "wall_s": rec["median"]["wall_s"], "first_wall_s": rec["first"]["wall_s"],
      "runs_s": [s["run_s"] for s in rec["runs"]],
      "recompiled": any(s["compile_s"] > 0 for s in rec["runs"]),
  }


def final_errors(res) -> list[float]:
  return [float(v) for v in res.metrics["val/error"][0, :, -1]]


# ----------------------------------------------------------------------------------------
# Part 1: CNN, sweep against the loop.


def cnn_rows(cfg, train, val, args) -> dict:
  task = cnn_task(train, val, cfg["channels"])
  steps, batch, ee = cfg["steps"], cfg["batch"], cfg["eval_every"]
  data = tuple(jnp.asarray(a) for a in (train["x"], train["y"], val["x"], val["y"]))
  keys = hw.seed_keys(0, 0)
  train_fn = hw.make_train(cfg["channels"], steps=steps, batch=batch, eval_every=ee)
  t0 = time.perf_counter()
  compiled = jax.jit(train_fn).lower(jnp.float32(1e-3), jnp.float32(0.0), jnp.float32(0.1), keys,
                                     data).compile()
  loop_compile = time.perf_counter() - t0
  print(f"loop compile {loop_compile:.2f}s", flush=True)
  kw = dict(steps=steps, batch_size=batch, eval_every=ee, sync_every=steps)
  rows = []
  for c in cfg["configs"]:
    space, lrs, wds = make_space(c, cfg["dropout"])
    m = min(c, cfg["loop_max"])
    rates = np.full(m, cfg["dropout"], np.float32)
    last = {}
    methods = {"sweep": sweep_method(task, space, kw, last, "sweep")}
    if not args.no_vmap:
      methods["sweep_vmap"] = sweep_method(task, space, kw, last, "sweep_vmap", vectorize=None)

    def loop_run():
      outs, s = hw.loop(compiled, lrs[:m], wds[:m], rates, keys, data)
      last["loop"] = outs
      return {"run_s": s * c / m}

    methods["loop"] = loop_run
    t = interleaved(methods, cfg["repeats"])
    row = {"configs": c, "hparams": {"lr": lrs.tolist(), "wd": wds.tolist()}}
    for name in methods:
      if name != "loop":
        row[name] = sweep_record(t[name])
        row[name]["vectorize"] = last[name].info["vectorize"]
        row[name]["val_error"] = final_errors(last[name])
    outs = last["loop"]
    row["loop"] = {"compile_s": loop_compile, "run_s": t["loop"]["median"]["run_s"],
                   "runs_s": [s["run_s"] for s in t["loop"]["runs"]], "measured_configs": m,
                   "val_error": [float(o[2][-1]) for o in outs]}
    res = last["sweep"]
    row["same_numbers"] = {
        "batch_loss": max(max_diff(res.batch_loss[0, i], o[0]) for i, o in enumerate(outs)),
        "val_loss": max(max_diff(res.metrics["val/loss"][0, i], o[1]) for i, o in enumerate(outs)),
        "val_error": max(max_diff(res.metrics["val/error"][0, i], o[2])
                         for i, o in enumerate(outs)),
    }
    row["sweep_over_loop"] = row["sweep"]["run_s"] / row["loop"]["run_s"]
    row["sweep_wall_over_loop"] = row["sweep"]["wall_s"] / row["loop"]["run_s"]
    if "sweep_vmap" in row:
      row["vmap_over_loop"] = row["sweep_vmap"]["run_s"] / row["loop"]["run_s"]
      row["vmap_over_sweep"] = row["sweep_vmap"]["run_s"] / row["sweep"]["run_s"]
    for name in ("sweep", "sweep_vmap", "loop"):
      if name in row:
        e = row[name]["val_error"]
        row[name]["val_error_mean"], row[name]["val_error_best"] = float(np.mean(e)), float(min(e))
    rows.append(row)
    v = row.get("sweep_vmap", {})
    print(f"cnn configs={c:>3}  compile sweep/vmap/loop {row['sweep']['compile_s']:.2f}/"
          f"{v.get('compile_s', float('nan')):.2f}/{loop_compile:.2f}s  run sweep "
          f"{row['sweep']['run_s']:.3g} (wall {row['sweep']['wall_s']:.3g}) vmap "
          f"{v.get('run_s', float('nan')):.3g} loop {row['loop']['run_s']:.3g}  sweep/loop "
          f"{row['sweep_over_loop']:.3f}  val err mean sweep/vmap/loop "
          f"{row['sweep']['val_error_mean']:.4f}/{v.get('val_error_mean', float('nan')):.4f}/"
          f"{row['loop']['val_error_mean']:.4f}  max|diff| loss "
          f"{row['same_numbers']['batch_loss']:.1e}"
          f" val err {row['same_numbers']['val_error']:.1e}", flush=True)
  return {"loop_compile_s": loop_compile, "rows": rows}


# ----------------------------------------------------------------------------------------
# Part 2: host-fed against in-memory.


def host_fed_task(task, batch, key=0):
  """``task`` with ``train`` a factory ``seed -> generator`` of the sweep's own minibatches."""
  tr = {k: np.asarray(v) for k, v in task.train.items()}
  n = len(tr["y"])
  per_epoch = n // batch

  def make(seed):
    _, data_key = run_keys(key, seed)

    def gen():
      e = 0
      while True:  # endless: the sweep takes what it needs
        perm = np.asarray(epoch_permutation(data_key, e, n))
        for p in range(per_epoch):
          idx = perm[p * batch:(p + 1) * batch]
          yield {k: v[idx] for k, v in tr.items()}
        e += 1
    return gen()

  # the generator's order is batch_indices'
  g = make(0)
  _, data_key = run_keys(key, 0)
  for t in range(per_epoch + 2):
    b = next(g)
    if t in (0, per_epoch - 1, per_epoch, per_epoch + 1):
      idx = np.asarray(batch_indices(data_key, t, n, batch))
      if not np.array_equal(b["y"], tr["y"][idx]) or not np.array_equal(b["x"], tr["x"][idx]):
        raise RuntimeError(f"host_fed_task: batch {t} differs from batch_indices")
  return Task(name=task.name + "-fed", init=task.init, loss=task.loss, metrics=task.metrics,
              train=make, eval=task.eval, info=task.info)


def fed_rows(cfg) -> list[dict]:
  mem_task = optaxlr.tasks.digits()
  fed_task = host_fed_task(mem_task, cfg["fed_batch"])
  kw = dict(steps=cfg["fed_steps"], batch_size=cfg["fed_batch"], eval_every=cfg["fed_eval_every"])
  rows = []
  for c in cfg["fed_configs"]:
    space, _, _ = make_space(c, 0.0)
    space = search.zip(lr=space.columns["lr"], wd=space.columns["wd"])
    last = {}
    t = interleaved({"in_memory": sweep_method(mem_task, space, kw, last, "in_memory"),
                     "host_fed": sweep_method(fed_task, space, kw, last, "host_fed")},
                    cfg["repeats"])
    mem, fed = last["in_memory"], last["host_fed"]
    equal = bool(np.array_equal(mem.batch_loss, fed.batch_loss) and all(
        np.array_equal(v, fed.metrics[k]) for k, v in mem.metrics.items()))
    row = {"configs": c, "in_memory": sweep_record(t["in_memory"]),
           "host_fed": sweep_record(t["host_fed"]), "bitwise_equal": equal,
           "max_diff": {"batch_loss": max_diff(mem.batch_loss, fed.batch_loss),
                        **{k: max_diff(v, fed.metrics[k]) for k, v in mem.metrics.items()}},
           "sync_every": mem.info["sync_every"], "host_fed_flag": bool(fed.info["host_fed"])}
    row["fed_over_memory"] = row["host_fed"]["run_s"] / row["in_memory"]["run_s"]
    row["fed_wall_over_memory"] = row["host_fed"]["wall_s"] / row["in_memory"]["wall_s"]
    row["fed_cost_per_step_ms"] = 1e3 * (row["host_fed"]["run_s"] - row["in_memory"]["run_s"]) / \
        cfg["fed_steps"]
    rows.append(row)
    print(f"host-fed configs={c:>3}  run in-memory {row['in_memory']['run_s']:.3g} host-fed "
          f"{row['host_fed']['run_s']:.3g}  ratio {row['fed_over_memory']:.3f} (wall "
          f"{row['fed_wall_over_memory']:.3f})  compile {row['in_memory']['compile_s']:.2f}/"
          f"{row['host_fed']['compile_s']:.2f}s  bitwise equal {equal}", flush=True)
  return rows


# ----------------------------------------------------------------------------------------
# Part 3: mixed precision.


def mp_rows(cfg, train, val) -> list[dict]:
  c = cfg["mp_configs"]
  cases = [
      ("cnn", cnn_task(train, val, cfg["channels"]), make_space(c, cfg["dropout"])[0],
       dict(steps=cfg["steps"], batch_size=cfg["batch"], eval_every=cfg["eval_every"],
            sync_every=cfg["steps"])),
      (f"mlp {'-'.join(map(str, (64, *cfg['mp_mlp_hidden'], 10)))}",
       optaxlr.tasks.digits(hidden=cfg["mp_mlp_hidden"]), None,
       dict(steps=cfg["mp_mlp_steps"], batch_size=cfg["batch"], eval_every=cfg["mp_mlp_steps"] // 2,
            sync_every=cfg["mp_mlp_steps"])),
  ]
  rows = []
  for name, task, space, kw in cases:
    if space is None:
      s, _, _ = make_space(c, 0.0)
      space = search.zip(lr=s.columns["lr"], wd=s.columns["wd"])
    last = {}
    t = interleaved({"float32": sweep_method(task, space, kw, last, "float32"),
                     "bfloat16": sweep_method(task, space, kw, last, "bfloat16",
                                              compute_dtype="bfloat16")}, cfg["repeats"])
    row = {"model": name, "configs": c, "steps": kw["steps"]}
    for p in ("float32", "bfloat16"):
      row[p] = sweep_record(t[p])
      row[p]["vectorize"] = last[p].info["vectorize"]
      row[p]["val_error"] = final_errors(last[p])
      row[p]["val_error_mean"] = float(np.mean(row[p]["val_error"]))
      row[p]["val_loss_mean"] = float(np.mean(last[p].metrics["val/loss"][0, :, -1]))
    row["bf16_over_f32"] = row["bfloat16"]["run_s"] / row["float32"]["run_s"]
    rows.append(row)
    print(f"mixed precision {name} configs={c}  run f32 {row['float32']['run_s']:.3g} bf16 "
          f"{row['bfloat16']['run_s']:.3g}  bf16/f32 {row['bf16_over_f32']:.3f}  compile "
          f"{row['float32']['compile_s']:.2f}/{row['bfloat16']['compile_s']:.2f}s  val err mean "
          f"f32 {row['float32']['val_error_mean']:.4f} bf16 "
          f"{row['bfloat16']['val_error_mean']:.4f}",
          flush=True)
  return rows


# ----------------------------------------------------------------------------------------


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                  help="default: gpu on a GPU backend, else cpu")
  ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
  ap.add_argument("--parts", nargs="*", choices=("cnn", "fed", "mp"), default=["cnn", "fed", "mp"])
  ap.add_argument("--configs", type=int, nargs="*")
  ap.add_argument("--steps", type=int)
  ap.add_argument("--repeats", type=int)
  ap.add_argument("--no-vmap", action="store_true", help="skip sweep(vectorize=None) in part 1")
  ap.add_argument("--out", default=None,
                  help="write the JSON here (default: benchmarks/results/cnn_<preset>.json for a "
                       "full preset run on its own backend; none for --quick)")
  args = ap.parse_args(argv)
  check_independent()
  t_start = time.perf_counter()
  load_start = load_average()
  backend = jax.default_backend()
  preset = args.preset or ("gpu" if backend == "gpu" else "cpu")
  cfg = dict(QUICK if args.quick else PRESETS[preset])
  for name in ("configs", "steps", "repeats"):
    if getattr(args, name):
      cfg[name] = getattr(args, name)
  if cfg["steps"] % cfg["eval_every"]:
    ap.error(f"--steps={cfg['steps']} must be a multiple of eval_every={cfg['eval_every']}")
  out_path = args.out
  if (out_path is None and not args.quick and (preset == "cpu") == (backend == "cpu")
      and args.parts == ["cnn", "fed", "mp"]):
    out_path = str(HERE / "results" / f"cnn_{preset}.json")
  train, val = digits_arrays()
  print(f"{'quick (smoke) ' if args.quick else ''}preset={preset} backend={backend} "
        f"device={jax.devices()[0].device_kind} n_train={len(train['y'])} n_val={len(val['y'])} "
        f"channels={cfg['channels']} batch={cfg['batch']} steps={cfg['steps']} "
        f"eval_every={cfg['eval_every']} repeats={cfg['repeats']} load={load_start}", flush=True)
  result = {
      "backend": backend, "device": jax.devices()[0].device_kind,
      "preset": "quick" if args.quick else preset, "machine": machine(),
      "versions": versions(("jax", "jaxlib", "optax", "numpy", "flax")),
      "load_average_start": load_start, "settings": {**cfg, "channels": list(cfg["channels"])},
      "engine_settings": {"progress": False, "update_ratio": False, "log_every": 1, "key": 0,
                          "sync_every": {"cnn": "steps", "mixed_precision": "steps",
                                         "host_fed": "eval_every (the default)"}},
      "data": {"source": "optaxlr.tasks.digits split", "n_train": len(train["y"]),
               "n_val": len(val["y"])},
  }
  if "cnn" in args.parts:
    result["cnn"] = cnn_rows(cfg, train, val, args)
  if "fed" in args.parts:
    result["host_fed"] = fed_rows(cfg)
  if "mp" in args.parts:
    result["mixed_precision"] = mp_rows(cfg, train, val)
  result["load_average_end"] = load_average()
  result["total_s"] = time.perf_counter() - t_start
  print(f"load average start {load_start} end {result['load_average_end']}; "
        f"total {result['total_s']:.0f}s")
  if out_path:
    p = pathlib.Path(out_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1))
    print(f"wrote {p}")
  return result


if __name__ == "__main__":
  main()
