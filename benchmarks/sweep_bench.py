"""Sweep benchmark: the engine against an independent hand-written program, in one process.

Trains a 3-layer ReLU MLP (d -> W -> W -> 10, softmax cross-entropy) with AdamW over a grid of
learning rate x weight decay, on synthetic data generated here (cpu preset: 60,000 training
examples x 64 features, 10 classes, an eval split of 1,000), with one evaluation on the whole
eval split after every ``eval_every`` steps. Every method does that same work on the same data:

  engine        optaxlr.sweep(update_ratio=False): the bare training program
  engine_ratio  optaxlr.sweep(update_ratio=True), the default: also records ||update||/||params||
                every step; the ratio engine_ratio / engine is what recording it costs
  handwritten   jax.jit(jax.vmap(train)) over the configs, lax.scan over the steps, written in
                benchmarks/handwritten.py with JAX and optax only: its own MLP, init, minibatch
                order (a permutation per epoch, cut in rows inside the program) and evaluation.
                It imports nothing from optaxlr (checked below before anything runs).
  cached_loop   a Python loop over configs calling one cached jax.jit(train)(lr, wd)
  naive_loop    the loop most users write: a fresh optax.adamw(lr, wd) and jitted step per
                config, a Python loop over steps (compilations included: its user pays them)
  torch_loop    the naive loop in PyTorch (torch.optim.AdamW), when torch is installed

Both engine runs use ``progress=False`` and ``sync_every=steps`` (one host sync per run, as the
hand-written program makes one call; the default would sync after every evaluation) and
``log_every=1`` (a loss per step, which the hand-written program also returns).

Timing. Compile time is reported apart from run time. The engine, engine_ratio and
hand-written runs of a row are warmed up once (the engine's first call compiles; later calls
reuse the compiled program, compile_s == 0.0), then run ``repeats`` times each, interleaved in
rotating order so that a change of load hits all three alike; the table gives the medians. The
engine's run time is its own ``info["run_s"]`` (the compiled program's calls, initialisation and
results to the host; not host-side validation); its wall time is the whole ``sweep()`` call.
The hand-written run time is one call of its compiled program, results to the host. The three
loops are timed once each, on at most ``loop_max`` configs, scaled linearly to the row's count
(``measured_configs`` in the JSON): a loop's cost per config does not depend on the count.

The engine and the hand-written program use the same key convention and minibatch order, so
each row also records the largest difference of their numbers (per-step losses, eval loss and
accuracy): evidence that both did the same work (float32 rounding: batched matmuls may sum in
another order).

On a GPU the script also measures the matmul peak and the copy bandwidth and reports the
fraction of the roofline floor max(FLOPs / peak, bytes / bandwidth) that the engine and the
hand-written program reach.

Usage:
  python benchmarks/sweep_bench.py                  # --preset cpu: BENCHMARKS.md's CPU table,
                                                    # written to benchmarks/results/cpu.json
  python benchmarks/sweep_bench.py --preset gpu     # the GPU table (-> results/gpu.json)
  python benchmarks/sweep_bench.py --preset gpu-wide
  python benchmarks/sweep_bench.py --quick          # smoke run at tiny sizes (< 1 min), no file
  python benchmarks/sweep_bench.py --configs 1 4 --repeats 3 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import handwritten as hw  # noqa: E402
from _common import versions  # noqa: E402
import optaxlr  # noqa: E402
from optaxlr import search  # noqa: E402

PRESETS = {
    # 60,000 examples, batch 128: 468 steps per epoch, so 500 steps cross one epoch boundary.
    "cpu": dict(n=60_000, n_eval=1_000, d=64, width=256, k=10, batch=128, steps=500,
                eval_every=250, configs=[1, 4, 16, 64], loop_max=4, repeats=5),
    "gpu": dict(n=60_000, n_eval=1_000, d=64, width=256, k=10, batch=128, steps=300,
                eval_every=150, configs=[1, 8, 64, 256, 1024, 4096], loop_max=8, repeats=5),
    "gpu-wide": dict(n=50_000, n_eval=1_000, d=1024, width=1024, k=10, batch=512, steps=300,
                     eval_every=150, configs=[256], loop_max=1, repeats=3),
}
# A smoke run: the full data size, a tiny model, a large batch so that 80 steps cross an epoch.
QUICK = dict(n=60_000, n_eval=256, d=64, width=32, k=10, batch=1024, steps=80, eval_every=40,
             configs=[4], loop_max=1, repeats=2)

_ALLOWED_IMPORTS = {"__future__", "time", "jax", "numpy", "optax", "torch"}  # top-level packages


def check_independent(path: pathlib.Path = HERE / "handwritten.py",
                      allowed: frozenset | set = frozenset(_ALLOWED_IMPORTS)) -> None:
  """Raises unless the hand-written baseline at ``path`` imports only ``allowed`` top-level
  packages (default: JAX, optax, NumPy, torch): it shares no code with optaxlr."""
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [node.module or ""]
    bad = [m for m in names if m.split(".")[0] not in allowed]
    if bad:
      raise RuntimeError(f"{path.name} must not import {bad}: the hand-written baseline shares "
                         f"no code with optaxlr (allowed: {sorted(allowed)})")


# ----------------------------------------------------------------------------------------
# Data, work and machine.


def make_data(n: int, n_eval: int, d: int, k: int, seed: int = 0):
  """``(x, y, x_eval, y_eval)``: Gaussian inputs, labels of a noisy random linear teacher."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((d, k)).astype(np.float32)

  def split(m):
    x = rng.standard_normal((m, d)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.standard_normal((m, k)), axis=1).astype(np.int32)
    return x, y

  return (*split(n), *split(n_eval))


def mlp_weights(d, width, k):
  return d * width + width * width + width * k


def mlp_flops_per_step(d, width, k, batch):
  return 3 * 2 * batch * mlp_weights(d, width, k)  # forward + backward (2x forward)


def mlp_bytes_per_step(d, width, k, batch):
  weights = mlp_weights(d, width, k) + 2 * width + k
  # AdamW: read params, grads, m, v; write params, m, v (fp32) + activations written and read.
  opt_bytes = 7 * 4 * weights
  act_bytes = 2 * 4 * batch * (d + 2 * width + k) * 2
  return opt_bytes + act_bytes


def machine() -> dict:
  cpu_model = None
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {
      "platform": platform.platform(), "cpu_model": cpu_model or platform.processor(),
      "cpus": os.cpu_count(), "cpus_usable": usable, "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "xla_flags": os.environ.get("XLA_FLAGS"),
  }


def load_average() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


# ----------------------------------------------------------------------------------------
# The methods. Each timed method is a function () -> {"run_s": ..., ...}.


def optimizer(h):
  """The engine's optimizer: ONE function object, so every sweep reuses its compiled program."""
  return optax.adamw(h["lr"], weight_decay=h["wd"])


def make_task(data, sizes):
  x, y, x_eval, y_eval = data
  return optaxlr.Task.from_functions(
      "bench-mlp", init=lambda key: hw.init_mlp(key, sizes), apply=hw.apply_mlp,
      loss="cross_entropy", train={"x": x, "y": y}, eval={"val": {"x": x_eval, "y": y_eval}},
      info={"num_classes": sizes[-1]})


def engine_method(task, space, cfg, update_ratio: bool):
  last = {}

  def run():
    t0 = time.perf_counter()
    res = optaxlr.sweep(task, optimizer, space, steps=cfg["steps"], batch_size=cfg["batch"],
                        eval_every=cfg["eval_every"], sync_every=cfg["steps"],
                        key=0, execution=optaxlr.Execution(update_ratio=update_ratio, progress=False))
    wall = time.perf_counter() - t0
    last["result"] = res
    return {"compile_s": res.info["compile_s"], "run_s": res.info["run_s"], "wall_s": wall}

  return run, last


def handwritten_method(train, data_d, lrs, wds, init_key, data_key):
  """jit(vmap(train)) compiled ahead; returns (compile seconds, timed method, last output)."""
  f = jax.jit(jax.vmap(train, in_axes=(0, 0, None, None, None)))
  t0 = time.perf_counter()
  compiled = f.lower(jnp.asarray(lrs), jnp.asarray(wds), init_key, data_key, data_d).compile()
  compile_s = time.perf_counter() - t0
  last = {}

  def run():
    t0 = time.perf_counter()
    out = compiled(jnp.asarray(lrs), jnp.asarray(wds), init_key, data_key, data_d)
    last["out"] = jax.tree.map(np.asarray, out)
    return {"run_s": time.perf_counter() - t0}

  return compile_s, run, last


def cached_loop(train, data_d, lrs, wds, init_key, data_key):
  """One ``jax.jit(train)`` compiled once, called per config; returns compile and loop seconds."""
  f = jax.jit(train)
  t0 = time.perf_counter()
  compiled = f.lower(jnp.float32(lrs[0]), jnp.float32(wds[0]), init_key, data_key, data_d).compile()
  compile_s = time.perf_counter() - t0

  def loop(m):
    outs = [compiled(jnp.float32(a), jnp.float32(b), init_key, data_key, data_d)
            for a, b in zip(lrs[:m], wds[:m])]
    return jax.tree.map(np.asarray, outs)

  loop(1)  # warm-up
  t0 = time.perf_counter()
  loop(len(lrs))
  return compile_s, time.perf_counter() - t0


def interleaved(methods: dict, repeats: int) -> dict:
  """Warm-up call of each method, then ``repeats`` rounds in rotating order; per method the
  warm-up's numbers, every repeat's numbers, and their medians."""
  names = list(methods)
  out = {name: {"first": methods[name](), "runs": []} for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[: r % len(names)]:
      out[name]["runs"].append(methods[name]())
  for rec in out.values():
    rec["median"] = {k: statistics.median(s[k] for s in rec["runs"]) for k in rec["runs"][0]}
  return out


def max_diff(a, b) -> float:
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return float(np.nanmax(d)) if d.size else 0.0


def same_numbers(res, hw_out) -> dict:
  """The largest differences between the engine's numbers (seed 0) and the hand-written's."""
  losses, val_loss, val_acc = hw_out
  return {
      "batch_loss": max_diff(res.batch_loss[0], losses),
      "val_loss": max_diff(res.metrics["val/loss"][0], val_loss),
      "val_accuracy": max_diff(res.metrics["val/accuracy"][0], val_acc),
  }


def make_space(c: int):
  side = math.ceil(math.sqrt(c))
  lrs_axis = np.logspace(-4, -2, side)
  wds_axis = np.logspace(-5, -1, math.ceil(c / side))
  space = search.grid(lr=lrs_axis, wd=wds_axis)
  if len(space) != c:
    space = search.zip(lr=np.resize(lrs_axis, c), wd=np.resize(np.repeat(wds_axis, side), c))
  return space, np.asarray(space.columns["lr"], np.float32), np.asarray(space.columns["wd"], np.float32)


# ----------------------------------------------------------------------------------------
# Roofline (GPU).


def time_call(fn, repeats):
  jax.block_until_ready(fn())
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs)


def measure_peaks():
  """Measured matmul peak (FLOP/s, float32 and bf16) and copy bandwidth (bytes/s)."""
  out = {}
  n = 8192
  for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda a: a @ a)
    out[f"matmul_{name}_flops"] = 2 * n**3 / time_call(lambda: f(a), 5)
  big = jnp.ones((256 * 2**20,), jnp.float32)  # 1 GiB
  g = jax.jit(lambda a: a * 1.0001)
  out["bandwidth_bytes"] = 2 * big.nbytes / time_call(lambda: g(big), 5)
  return out


# ----------------------------------------------------------------------------------------


def bench_row(c, cfg, task, train, data, data_d, sizes, keys, args) -> dict:
  space, lrs, wds = make_space(c)
  init_key, data_key = keys
  eng, eng_last = engine_method(task, space, cfg, update_ratio=False)
  eng_r, _ = engine_method(task, space, cfg, update_ratio=True)
  hw_compile, hw_run, hw_last = handwritten_method(train, data_d, lrs, wds, init_key, data_key)
  t = interleaved({"engine": eng, "engine_ratio": eng_r, "handwritten": hw_run}, cfg["repeats"])
  row = {"configs": c}
  for name in ("engine", "engine_ratio"):
    rec = t[name]
    row[name] = {
        "compile_s": rec["first"]["compile_s"],
        "run_s": rec["median"]["run_s"],
        "wall_s": rec["median"]["wall_s"],
        "first_wall_s": rec["first"]["wall_s"],  # the compiling call, as its user waits for it
        "runs_s": [s["run_s"] for s in rec["runs"]],
        "recompiled": any(s["compile_s"] > 0 for s in rec["runs"]),
    }
  row["handwritten"] = {"compile_s": hw_compile, "run_s": t["handwritten"]["median"]["run_s"],
                        "runs_s": [s["run_s"] for s in t["handwritten"]["runs"]]}
  row["same_numbers"] = same_numbers(eng_last["result"], hw_last["out"])
  if not args.no_loops:
    m = min(c, cfg["loop_max"])
    compile_s, s = cached_loop(train, data_d, lrs[:m], wds[:m], init_key, data_key)
    row["cached_loop"] = {"compile_s": compile_s, "run_s": s * c / m, "measured_configs": m}
    kw = dict(steps=cfg["steps"], batch=cfg["batch"], eval_every=cfg["eval_every"])
    s = hw.naive_loop(sizes, data_d, lrs[:m], wds[:m], init_key, data_key, **kw)
    row["naive_loop"] = {"run_s": s * c / m, "measured_configs": m}
    if not args.no_torch:
      try:
        s = hw.torch_loop(sizes, data, lrs[:m], wds[:m], **kw)
        row["torch_loop"] = {"run_s": s * c / m, "measured_configs": m}
      except ImportError:
        pass
  return row


def summarise(row, c, cfg, work_flops, flops, bytes_, peaks):
  eng, hw_s = row["engine"]["run_s"], row["handwritten"]["run_s"]
  row["engine_over_handwritten"] = eng / hw_s
  row["engine_wall_over_handwritten"] = row["engine"]["wall_s"] / hw_s
  row["engine_ratio_over_handwritten"] = row["engine_ratio"]["run_s"] / hw_s
  row["update_ratio_cost"] = row["engine_ratio"]["run_s"] / eng
  row["config_steps_per_s"] = c * cfg["steps"] / eng
  row["model_gflops"] = c * work_flops / eng / 1e9
  for other in ("cached_loop", "naive_loop", "torch_loop"):
    if other in row:
      row[f"{other}_over_engine"] = row[other]["run_s"] / eng
  if peaks:
    floor = max(c * cfg["steps"] * flops / peaks["matmul_f32_flops"],
                c * cfg["steps"] * bytes_ / peaks["bandwidth_bytes"])
    row["roofline_floor_s"] = floor
    row["engine_roofline_fraction"] = floor / eng
    row["handwritten_roofline_fraction"] = floor / hw_s


def print_row(row):
  def s(name):
    return f"{row[name]['run_s']:.3g}" if name in row else "-"

  sn = row["same_numbers"]
  print(f"configs={row['configs']:>5}  compile eng/eng+r/hw {row['engine']['compile_s']:.2f}/"
        f"{row['engine_ratio']['compile_s']:.2f}/{row['handwritten']['compile_s']:.2f}s  "
        f"run eng {s('engine')} eng+ratio {s('engine_ratio')} hw {s('handwritten')}  "
        f"eng/hw {row['engine_over_handwritten']:.3f} (wall {row['engine_wall_over_handwritten']:.3f},"
        f" +ratio {row['engine_ratio_over_handwritten']:.3f})  cached {s('cached_loop')} naive "
        f"{s('naive_loop')} torch {s('torch_loop')}  max|diff| loss {sn['batch_loss']:.1e} val "
        f"{sn['val_loss']:.1e}", flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                  help="default: gpu on a GPU backend, else cpu")
  ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (< 1 min)")
  ap.add_argument("--configs", type=int, nargs="*")
  ap.add_argument("--steps", type=int)
  ap.add_argument("--eval-every", type=int)
  ap.add_argument("--width", type=int)
  ap.add_argument("--repeats", type=int)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--no-loops", action="store_true", help="skip the cached, naive and torch loops")
  ap.add_argument("--out", default=None,
                  help="write the JSON here (default: benchmarks/results/<preset>.json for a full "
                       "preset run on its own backend; none for --quick)")
  args = ap.parse_args(argv)
  check_independent()
  load_start = load_average()
  backend = jax.default_backend()
  preset = args.preset or ("gpu" if backend == "gpu" else "cpu")
  cfg = dict(QUICK if args.quick else PRESETS[preset])
  for name in ("configs", "steps", "eval_every", "width", "repeats"):
    if getattr(args, name):
      cfg[name] = getattr(args, name)
  if cfg["steps"] % cfg["eval_every"]:
    ap.error(f"--steps={cfg['steps']} must be a multiple of eval_every={cfg['eval_every']}")
  out_path = args.out
  if out_path is None and not args.quick and (preset == "cpu") == (backend == "cpu"):
    out_path = str(HERE / "results" / f"{preset}.json")

  d, width, k, batch, steps = (cfg[x] for x in ("d", "width", "k", "batch", "steps"))
  sizes = (d, width, width, k)
  data = make_data(cfg["n"], cfg["n_eval"], d, k)
  data_d = tuple(jnp.asarray(a) for a in data)
  keys = hw.seed_keys(0, 0)
  train = hw.make_train(sizes, steps=steps, batch=batch, eval_every=cfg["eval_every"])
  task = make_task(data, sizes)
  flops = mlp_flops_per_step(d, width, k, batch)
  bytes_ = mlp_bytes_per_step(d, width, k, batch)
  n_evals = steps // cfg["eval_every"]
  work_flops = steps * flops + n_evals * 2 * cfg["n_eval"] * mlp_weights(d, width, k)
  peaks = measure_peaks() if backend == "gpu" else {}
  print(f"{'quick (smoke) ' if args.quick else ''}preset={preset} backend={backend} "
        f"device={jax.devices()[0].device_kind} n={cfg['n']} n_eval={cfg['n_eval']} d={d} "
        f"width={width} batch={batch} steps={steps} eval_every={cfg['eval_every']} "
        f"epochs={steps * batch / cfg['n']:.2f} repeats={cfg['repeats']} load={load_start}",
        flush=True)
  rows = []
  for c in cfg["configs"]:
    row = bench_row(c, cfg, task, train, data, data_d, sizes, keys, args)
    summarise(row, c, cfg, work_flops, flops, bytes_, peaks)
    rows.append(row)
    print_row(row)
  result = {
      "backend": backend,
      "device": jax.devices()[0].device_kind,
      "cpu": platform.processor() or platform.machine(),
      "jax": jax.__version__,
      "preset": "quick" if args.quick else preset,
      "machine": machine(),
      "versions": versions(("jax", "jaxlib", "optax", "numpy", "torch")),
      "load_average_start": load_start,
      "load_average_end": load_average(),
      "settings": cfg,
      "engine_settings": {"sync_every": steps, "log_every": 1, "progress": False, "key": 0,
                          "update_ratio": {"engine": False, "engine_ratio": True}},
      "flops_per_config_step": flops,
      "flops_per_config_run": work_flops,
      "bytes_per_config_step": bytes_,
      "peaks": peaks,
      "rows": rows,
  }
  print(f"load average start {load_start} end {result['load_average_end']}")
  if out_path:
    p = pathlib.Path(out_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1))
    print(f"wrote {p}")
  return result


if __name__ == "__main__":
  main()
