"""Sweep benchmark: the engine against the loops users write today, in one process.

Trains a 3-layer MLP (ReLU, width W, batch B, T steps) with AdamW over a grid of learning rate x
weight decay, five ways, on the same data:

  engine      optaxlr.sweep (one compiled program for all configs)
  handwritten a hand-written jax.jit(jax.vmap(train)) with lax.scan over steps
  cached_loop a Python loop over configs calling one cached jax.jit(train)(lr, wd)
  naive_loop  the loop most users write: a fresh optax.adamw(lr, wd) and jitted step per config
  torch_loop  the same loop in PyTorch (torch.optim.AdamW), when torch is installed

Compile time is reported separately from steady run time (the median of `--repeats` runs after
a warm-up). The naive and torch loops are timed on at most `--loop-max` configs per size and
their per-config cost is scaled to the size (recorded as such). On a GPU the script also
measures the matmul peak and the memory bandwidth and reports the fraction of the roofline floor
max(FLOPs / peak, bytes / bandwidth) that the engine and the hand-written program reach.

Usage:
  python benchmarks/sweep_bench.py                      # CPU defaults (small)
  python benchmarks/sweep_bench.py --preset gpu         # the GPU table of BENCHMARKS.md
  python benchmarks/sweep_bench.py --out benchmarks/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optaxlr
from optaxlr import search

# ----------------------------------------------------------------------------------------
# The model and the data, shared by every method.


def make_data(n: int, d: int, k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  w = rng.standard_normal((d, k)).astype(np.float32)
  y = np.argmax(x @ w + 0.5 * rng.standard_normal((n, k)), axis=1).astype(np.int32)
  return x, y


def init_mlp(key, d: int, width: int, k: int, dtype=jnp.float32):
  sizes = [d, width, width, k]
  params = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    kk = jax.random.fold_in(key, i)
    params.append({
        "w": (jax.random.normal(kk, (a, b)) * jnp.sqrt(2.0 / a)).astype(dtype),
        "b": jnp.zeros((b,), dtype),
    })
  return params


def apply_mlp(params, x):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return h @ params[-1]["w"] + params[-1]["b"]


def ce_loss(params, x, y):
  logits = apply_mlp(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def mlp_flops_per_step(d, width, k, batch):
  weights = d * width + width * width + width * k
  return 3 * 2 * batch * weights  # forward + backward (2x forward)


def mlp_bytes_per_step(d, width, k, batch):
  weights = d * width + width * width + width * k + 2 * width + k
  # AdamW: read params, grads, m, v; write params, m, v (fp32) + activations written and read.
  opt_bytes = 7 * 4 * weights
  act_bytes = 2 * 4 * batch * (d + 2 * width + k) * 2
  return opt_bytes + act_bytes


# ----------------------------------------------------------------------------------------
# The methods.


def batch_at(key, t, n, b):
  return optaxlr.batch_indices(key, t, n, b)


def make_train(x, y, d, width, k, steps, batch):
  """The hand-written run of one config: ``train(lr, wd, key) -> final loss``."""
  n = x.shape[0]
  xj, yj = jnp.asarray(x), jnp.asarray(y)

  def train(lr, wd, init_key, data_key):
    params = init_mlp(init_key, d, width, k)
    tx = optax.adamw(lr, weight_decay=wd)
    opt_state = tx.init(params)

    def body(carry, t):
      params, opt_state = carry
      idx = batch_at(data_key, t, n, batch)
      loss, g = jax.value_and_grad(ce_loss)(params, xj[idx], yj[idx])
      upd, opt_state = tx.update(g, opt_state, params)
      return (optax.apply_updates(params, upd), opt_state), loss

    (params, _), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(steps))
    return losses[-1]

  return train


def time_call(fn, repeats):
  """Returns (first-call seconds, median steady seconds) of ``fn()``, blocking on its output."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - t0)
  return first, statistics.median(runs)


def bench_handwritten(train, lrs, wds, init_key, data_key, repeats):
  f = jax.jit(jax.vmap(train, in_axes=(0, 0, None, None)))
  lr, wd = jnp.asarray(lrs), jnp.asarray(wds)
  t0 = time.perf_counter()
  compiled = f.lower(lr, wd, init_key, data_key).compile()
  compile_s = time.perf_counter() - t0
  _, steady = time_call(lambda: compiled(lr, wd, init_key, data_key), repeats)
  return {"compile_s": compile_s, "run_s": steady}


def bench_cached_loop(train, lrs, wds, init_key, data_key, repeats):
  f = jax.jit(train)
  t0 = time.perf_counter()
  compiled = f.lower(jnp.float32(lrs[0]), jnp.float32(wds[0]), init_key, data_key).compile()
  compile_s = time.perf_counter() - t0

  def loop():
    return [compiled(jnp.float32(a), jnp.float32(b), init_key, data_key) for a, b in zip(lrs, wds)]

  _, steady = time_call(loop, repeats)
  return {"compile_s": compile_s, "run_s": steady}


def bench_naive_loop(x, y, d, width, k, steps, batch, lrs, wds, init_key, data_key):
  """A fresh optimizer and jitted step per config, a Python loop over steps (compile included:
  that is what this loop costs its user)."""
  n = x.shape[0]
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  t0 = time.perf_counter()
  for lr, wd in zip(lrs, wds):
    tx = optax.adamw(float(lr), weight_decay=float(wd))
    params = init_mlp(init_key, d, width, k)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, t):
      idx = batch_at(data_key, t, n, batch)
      loss, g = jax.value_and_grad(ce_loss)(params, xj[idx], yj[idx])
      upd, opt_state = tx.update(g, opt_state, params)
      return optax.apply_updates(params, upd), opt_state, loss

    for t in range(steps):
      params, opt_state, loss = step(params, opt_state, t)
    jax.block_until_ready(loss)
  return {"run_s": time.perf_counter() - t0}


def bench_torch_loop(x, y, d, width, k, steps, batch, lrs, wds, seed=0):
  import torch

  torch.set_num_threads(max(1, torch.get_num_threads()))
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  xt, yt = torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev, dtype=torch.long)
  n = x.shape[0]
  gen = torch.Generator(device="cpu").manual_seed(seed)
  order = [torch.randperm(n, generator=gen)[:batch].to(dev) for _ in range(min(steps, 64))]
  t0 = time.perf_counter()
  for lr, wd in zip(lrs, wds):
    model = torch.nn.Sequential(
        torch.nn.Linear(d, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
        torch.nn.ReLU(), torch.nn.Linear(width, k),
    ).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=float(wd))
    for t in range(steps):
      idx = order[t % len(order)]
      loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    float(loss.detach())
  if dev == "cuda":
    torch.cuda.synchronize()
  return {"run_s": time.perf_counter() - t0}


def bench_engine(x, y, d, width, k, steps, batch, space, repeats):
  n_val = max(batch, 256)
  task = optaxlr.Task(
      name="bench-mlp",
      init=lambda key: init_mlp(key, d, width, k),
      loss=lambda p, b: ce_loss(p, b["x"], b["y"]),
      metrics=lambda p, b: {"loss": ce_loss(p, b["x"], b["y"])},
      train={"x": x, "y": y},
      eval={"val": {"x": x[:n_val], "y": y[:n_val]}},
      info={"num_classes": k},
  )

  def optimizer(h):
    return optax.adamw(h["lr"], weight_decay=h["wd"])

  def run():
    return optaxlr.sweep(task, optimizer, space, steps=steps, batch_size=batch,
                         eval_every=steps, progress=False)

  first = run()
  runs = [run() for _ in range(repeats)]
  return {
      "compile_s": first.info["compile_s"],
      "run_s": statistics.median(r.info["run_s"] for r in runs),
      "total_s": statistics.median(r.info["total_s"] for r in runs),
  }


# ----------------------------------------------------------------------------------------
# Roofline (GPU).


def measure_peaks():
  """Measured matmul peak (FLOP/s, float32 and bf16) and copy bandwidth (bytes/s)."""
  out = {}
  n = 8192
  for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    a = jnp.ones((n, n), dt)
    f = jax.jit(lambda a: a @ a)
    _, s = time_call(lambda: f(a), 5)
    out[f"matmul_{name}_flops"] = 2 * n**3 / s
  big = jnp.ones((256 * 2**20,), jnp.float32)  # 1 GiB
  g = jax.jit(lambda a: a * 1.0001)
  _, s = time_call(lambda: g(big), 5)
  out["bandwidth_bytes"] = 2 * big.nbytes / s
  return out


PRESETS = {
    "cpu": dict(width=256, batch=128, steps=100, d=64, k=10, n=4096,
                configs=[1, 4, 16, 64], loop_max=4, repeats=5),
    "gpu": dict(width=256, batch=128, steps=300, d=64, k=10, n=8192,
                configs=[1, 8, 64, 256, 1024, 4096], loop_max=8, repeats=5),
    "gpu-wide": dict(width=1024, batch=512, steps=300, d=1024, k=10, n=16384,
                     configs=[256], loop_max=1, repeats=3),
}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
  ap.add_argument("--configs", type=int, nargs="*")
  ap.add_argument("--steps", type=int)
  ap.add_argument("--width", type=int)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--no-loops", action="store_true", help="skip the naive and torch loops")
  ap.add_argument("--out", default=None, help="write the results as JSON here")
  args = ap.parse_args(argv)
  backend = jax.default_backend()
  cfg = dict(PRESETS[args.preset or ("gpu" if backend == "gpu" else "cpu")])
  if args.configs:
    cfg["configs"] = args.configs
  if args.steps:
    cfg["steps"] = args.steps
  if args.width:
    cfg["width"] = args.width
  d, width, k, n, steps, batch = (cfg[x] for x in ("d", "width", "k", "n", "steps", "batch"))
  x, y = make_data(n, d, k)
  init_key, data_key = optaxlr.run_keys(0, 0)
  train = make_train(x, y, d, width, k, steps, batch)
  flops = mlp_flops_per_step(d, width, k, batch)
  bytes_ = mlp_bytes_per_step(d, width, k, batch)
  peaks = measure_peaks() if backend == "gpu" else {}
  rows = []
  print(f"backend={backend} device={jax.devices()[0].device_kind} width={width} batch={batch}"
        f" steps={steps} jax={jax.__version__}")
  for c in cfg["configs"]:
    side = math.ceil(math.sqrt(c))
    lrs_axis = np.logspace(-4, -2, side)
    wds_axis = np.logspace(-5, -1, math.ceil(c / side))
    space = search.grid(lr=lrs_axis, wd=wds_axis)
    if len(space) != c:
      space = search.zip(lr=np.resize(lrs_axis, c), wd=np.resize(np.repeat(wds_axis, side), c))
    lrs = np.asarray(space.columns["lr"], np.float32)
    wds = np.asarray(space.columns["wd"], np.float32)
    row = {"configs": c}
    row["engine"] = bench_engine(x, y, d, width, k, steps, batch, space, cfg["repeats"])
    row["handwritten"] = bench_handwritten(train, lrs, wds, init_key, data_key, cfg["repeats"])
    row["cached_loop"] = bench_cached_loop(train, lrs, wds, init_key, data_key, 1)
    if not args.no_loops:
      m = min(c, cfg["loop_max"])
      r = bench_naive_loop(x, y, d, width, k, steps, batch, lrs[:m], wds[:m], init_key, data_key)
      row["naive_loop"] = {"run_s": r["run_s"] * c / m, "measured_configs": m}
      if not args.no_torch:
        try:
          r = bench_torch_loop(x, y, d, width, k, steps, batch, lrs[:m], wds[:m])
          row["torch_loop"] = {"run_s": r["run_s"] * c / m, "measured_configs": m}
        except ImportError:
          pass
    eng = row["engine"]["run_s"]
    row["config_steps_per_s"] = c * steps / eng
    row["model_gflops"] = c * steps * flops / eng / 1e9
    row["engine_over_handwritten"] = eng / row["handwritten"]["run_s"]
    for other in ("cached_loop", "naive_loop", "torch_loop"):
      if other in row:
        row[f"{other}_over_engine"] = row[other]["run_s"] / eng
    if peaks:
      floor = max(c * steps * flops / peaks["matmul_f32_flops"], c * steps * bytes_ / peaks["bandwidth_bytes"])
      row["roofline_floor_s"] = floor
      row["engine_roofline_fraction"] = floor / eng
      row["handwritten_roofline_fraction"] = floor / row["handwritten"]["run_s"]
    rows.append(row)
    print(json.dumps(row))
    sys.stdout.flush()
  result = {
      "backend": backend,
      "device": jax.devices()[0].device_kind,
      "cpu": platform.processor() or platform.machine(),
      "jax": jax.__version__,
      "settings": cfg,
      "flops_per_config_step": flops,
      "bytes_per_config_step": bytes_,
      "peaks": peaks,
      "rows": rows,
  }
  if args.out:
    p = pathlib.Path(args.out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1))
    print(f"wrote {p}")
  return result


if __name__ == "__main__":
  main()
