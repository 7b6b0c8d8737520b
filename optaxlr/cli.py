"""The ``optaxlr`` command: sweeps, schedules, plots and diagnoses from the shell.

Exit codes: 0 success; 1 the run failed (every config diverged, a file could not be read);
2 bad usage (unknown option, bad value) — argparse's convention.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import tomllib
from collections.abc import Callable, Sequence

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# ----------------------------------------------------------------------------------------
# Tasks and optimizers the command knows by name.

TASKS = ("digits", "digits-cnn", "sinusoid", "two_gaussians", "spiral", "teacher_student")


def make_task(name: str, *, quick: bool = False):
  from optaxlr import tasks

  if name == "digits":
    return tasks.digits("mlp", hidden=(128,))
  if name == "digits-cnn":
    return tasks.digits("cnn")
  hidden = (100, 100) if quick else (500, 500, 500, 500)
  if name == "teacher_student":
    return tasks.teacher_student()
  builder = {"sinusoid": tasks.sinusoid, "two_gaussians": tasks.two_gaussians,
             "spiral": tasks.spiral}[name]
  return builder(n_train=500, label_noise=0.1, hidden=hidden)


OPTIMIZERS = {
    # name: (label, decay mode, base optimizer)
    "adam_l2": ("Adam + L2 (torch Adam weight_decay)", "l2", "adam"),
    "adamw": ("AdamW (decoupled, torch AdamW)", "decoupled", "adam"),
    "adamw_paper": ("AdamW (paper: decay x schedule multiplier)", "paper", "adam"),
    "sgd_l2": ("SGD momentum + L2 (torch SGD weight_decay)", "l2", "sgd"),
    "sgdw": ("SGDW (decoupled)", "decoupled", "sgd"),
}
SCHEDULES = ("constant", "cosine", "one_cycle", "warmup_cosine")


def make_optimizer(name: str, schedule: str, steps: int) -> Callable:
  """``hparams -> optax transform`` for a named optimizer; hparams has lr, wd (and momentum)."""
  import optaxlr
  from optaxlr import schedules as s

  _, decay, base = OPTIMIZERS[name]

  def lr_of(h):
    if schedule == "constant":
      return s.constant(h["lr"])
    if schedule == "cosine":
      return s.cosine(h["lr"], steps)
    if schedule == "one_cycle":
      return s.one_cycle(h["lr"], steps)
    return s.warmup(s.cosine(h["lr"], steps), max(1, steps // 20))

  def build(h):
    kw = {} if decay != "paper" else {"base_lr": h["lr"]}
    if base == "adam":
      return optaxlr.adamw(lr_of(h), h["wd"], decay=decay, **kw)
    return optaxlr.sgd(lr_of(h), h.get("momentum", 0.9), weight_decay=h["wd"], decay=decay, **kw)

  return build


# ----------------------------------------------------------------------------------------
# Parsing helpers.


def _values(text: str) -> list[float]:
  """"1e-4,3e-4" (a list), "1e-4:1e-1:7" (log-spaced), or "1e-4:1e-1:1-3" (the 1-3-10 grid)."""
  from optaxlr import search

  try:
    if ":" in text:
      lo, hi, n = text.split(":")
      if n == "1-3":
        return search.one_three(float(lo), float(hi)).tolist()
      return search.logspace(float(lo), float(hi), int(n)).tolist()
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"expected 'a,b,c', 'lo:hi:n' or 'lo:hi:1-3', got {text!r} ({e})"
    ) from e


def _load_space_file(path: str) -> dict[str, list[float]]:
  """A TOML or YAML file: ``lr = [1e-4, 1e-3]`` / ``wd = "1e-5:1e-1:5"``."""
  p = pathlib.Path(path)
  text = p.read_text()
  if p.suffix in (".yaml", ".yml"):
    try:
      import yaml
    except ImportError as e:
      raise SystemExit(f"optaxlr: reading {path} needs PyYAML (pip install pyyaml), or use TOML") from e
    raw = yaml.safe_load(text)
  else:
    raw = tomllib.loads(text)
  raw = raw.get("space", raw)
  return {k: (_values(v) if isinstance(v, str) else [float(x) for x in np.atleast_1d(v)])
          for k, v in raw.items()}


# ----------------------------------------------------------------------------------------
# optaxlr sweep


def _fmt_pm(mean: float, std: float, pct: bool) -> str:
  if not np.isfinite(mean):
    return "diverged"
  return f"{100 * mean:5.2f} ± {100 * std:4.2f} %" if pct else f"{mean:.4f} ± {std:.4f}"


def _summary_rows(name, res) -> dict:
  metric = "val/error" if "val/error" in res.metrics else "val/loss"
  best = res.best(metric)
  i = best["index"]
  row = {
      "optimizer": name,
      "best": {k: v for k, v in best["hparams"].items()},
      "metric": metric,
      "val": (best[metric], best[f"{metric}_std"]),
      "configs": res.num_configs,
      "seeds": int(len(res.seeds)),
      "diverged_runs": int(res.diverged.sum()),
      "diverged_configs": int(res.diverged.any(axis=0).sum()),
  }
  test = metric.replace("val/", "test/")
  if test in res.metrics:
    v = res.final(test)[:, i]
    row["test"] = (float(v.mean()), float(v.std()))
  if "val/loss" in res.metrics and metric != "val/loss":
    v = res.final("val/loss")[:, i]
    row["val_loss"] = (float(v.mean()), float(v.std()))
  return row


def _diagnoses(res) -> dict[str, int]:
  from optaxlr import doctor

  return dict(doctor.diagnose(res).counts())


def cmd_sweep(args: argparse.Namespace) -> int:
  import jax

  import optaxlr
  from optaxlr import plot, search

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  axes = {"lr": args.lr, "wd": args.wd}
  if args.space:
    axes.update(_load_space_file(args.space))
  task = make_task(args.task, quick=args.quick)
  space = search.grid(**axes)
  devices = jax.devices()[: args.devices] if args.devices else None
  print(f"optaxlr sweep: task={args.task} ({task.info.get('n_train', len(task.train['y']))} train"
        f" examples), {len(space)} configs x {args.seeds} seeds x {len(args.optimizers)} optimizers,"
        f" {args.steps} steps, batch {args.batch_size}, schedule {args.schedule},"
        f" {len(devices) if devices else len(jax.devices())} device(s) [{jax.default_backend()}]")
  results, rows = {}, []
  t0 = time.perf_counter()
  for name in args.optimizers:
    res = optaxlr.sweep(
        task, make_optimizer(name, args.schedule, args.steps), space,
        steps=args.steps, batch_size=args.batch_size, seeds=args.seeds,
        eval_every=args.eval_every, progress=not args.no_progress, devices=devices,
        key=args.key,
    )
    path = res.save(out / f"sweep_{name}.npz")
    results[name] = res
    try:
      rows.append(_summary_rows(name, res))
    except ValueError:
      rows.append({"optimizer": name, "all_diverged": True})
    rows[-1]["file"] = str(path)
    rows[-1]["compile_s"] = res.info["compile_s"]
    rows[-1]["run_s"] = res.info["run_s"]
    rows[-1]["diagnoses"] = _diagnoses(res)
  total = time.perf_counter() - t0

  print()
  pct = any(r.get("metric") == "val/error" for r in rows)
  head = f"{'optimizer':<12} {'best lr':>9} {'best wd':>9}  {'val error' if pct else 'val loss':<18}"
  head += f" {'test error' if pct else 'test loss':<18} {'val loss':<16} {'diverged':>9}  compile/run"
  print(head)
  print("-" * len(head))
  for r in rows:
    if r.get("all_diverged"):
      print(f"{r['optimizer']:<12} every config diverged")
      continue
    b = r["best"]
    line = f"{r['optimizer']:<12} {b['lr']:>9.1e} {b['wd']:>9.1e}  {_fmt_pm(*r['val'], pct):<18}"
    line += f" {_fmt_pm(*r['test'], pct) if 'test' in r else '-':<18}"
    line += f" {_fmt_pm(*r['val_loss'], False) if 'val_loss' in r else '-':<16}"
    line += f" {r['diverged_configs']:>3}/{r['configs']:<5}  {r['compile_s']:.1f}s/{r['run_s']:.1f}s"
    print(line)
  for r in rows:
    if r.get("diagnoses"):
      found = {k: v for k, v in r["diagnoses"].items() if v}
      print(f"  diagnoses ({r['optimizer']}, runs): " + ", ".join(f"{k} {v}" for k, v in found.items()))
  print(f"\n(mean ± std over {args.seeds} seeds at the best config; 'diverged' counts configs with"
        f" any diverged seed; total {total:.1f}s)")

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axs = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.3),
                          constrained_layout=True, squeeze=False)
  metric = "val/error" if pct else "val/loss"
  finals = [r.summary(metric).mean(axis=0) for r in results.values()]
  finite = np.concatenate([f[np.isfinite(f)] for f in finals]) if finals else np.array([])
  lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
  for ax, (name, res) in zip(axs[0], results.items()):
    plot.heatmap(res, "lr", "wd", metric, ax=ax, title=OPTIMIZERS[name][0], vmin=lo, vmax=hi)
  fig.suptitle(f"{args.task}: {metric} over learning rate x weight decay "
               f"({args.schedule} schedule, {args.steps} steps, mean of {args.seeds} seeds)")
  fig_path = out / "heatmaps.png"
  fig.savefig(fig_path, dpi=110)
  from optaxlr import doctor

  fig, axs = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.3),
                          constrained_layout=True, squeeze=False)
  for ax, (name, res) in zip(axs[0], results.items()):
    plot.atlas(doctor.diagnose(res), "lr", "wd", ax=ax, title=OPTIMIZERS[name][0])
  fig.savefig(out / "atlas.png", dpi=110)
  (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
  print(f"wrote {fig_path}, {out / 'atlas.png'}, {out / 'summary.json'} and {', '.join(str(r['file']) for r in rows)}")
  return EXIT_FAILED if all(r.get("all_diverged") for r in rows) else EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr schedules


def _demo_schedules(steps: int) -> dict:
  from optaxlr import schedules as s

  lr = 0.1
  return {
      "step(5 epochs, x0.5)": s.epochs(s.step(lr, 5, 0.5), max(1, steps // 30)),
      "exponential (0.98/epoch)": s.epochs(s.exponential(lr, 0.98), max(1, steps // 30)),
      "inverse_time (k=0.01)": s.inverse_time(lr, 0.01),
      "cosine": s.cosine(lr, steps),
      "cosine_restarts (SGDR)": s.cosine_restarts(lr, max(1, steps // 7), 2),
      "cyclic (triangular2)": s.cyclic(lr / 4, lr, max(1, steps // 8), mode="triangular2"),
      "one_cycle": s.one_cycle(lr, steps),
      "warmup + multistep (Goyal)": s.warmup(
          s.multistep(lr, [steps // 2, 3 * steps // 4]), max(1, steps // 20), 0.1
      ),
      "warmup_stable_decay": s.warmup_stable_decay(lr, steps, steps // 20),
      "rsqrt": s.rsqrt(lr, max(1, steps // 20)),
  }


def _torch_curves(steps: int) -> dict[str, np.ndarray]:
  """PyTorch's schedulers for the demo schedules that have one (same settings)."""
  import torch
  from torch.optim import lr_scheduler as L

  lr = 0.1
  spe = max(1, steps // 30)
  makers = {
      "cosine": lambda o: L.CosineAnnealingLR(o, steps),
      "cosine_restarts (SGDR)": lambda o: L.CosineAnnealingWarmRestarts(o, max(1, steps // 7), 2),
      "cyclic (triangular2)": lambda o: L.CyclicLR(o, lr / 4, lr, max(1, steps // 8),
                                                   mode="triangular2", cycle_momentum=False),
      "one_cycle": lambda o: L.OneCycleLR(o, lr, total_steps=steps, cycle_momentum=False),
  }
  out = {}
  for name, make in makers.items():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    vals = []
    for _ in range(steps + 1):
      vals.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step() if len(vals) <= steps else None
    out[name] = np.asarray(vals)
  # per-epoch schedulers, stepped once per epoch and repeated over its steps
  for name, make in {
      "step(5 epochs, x0.5)": lambda o: L.StepLR(o, 5, 0.5),
      "exponential (0.98/epoch)": lambda o: L.ExponentialLR(o, 0.98),
  }.items():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    per_epoch = []
    for _ in range(steps // spe + 1):
      per_epoch.append(opt.param_groups[0]["lr"])
      opt.step()
      sched.step()
    out[name] = np.repeat(per_epoch, spe)[: steps + 1]
  return out


def cmd_schedules(args: argparse.Namespace) -> int:
  """Prints a table of the built-in schedules and draws them (beside PyTorch's with --torch)."""
  import jax.numpy as jnp

  scheds = _demo_schedules(args.steps)
  t = jnp.arange(args.steps + 1)
  cols = np.linspace(0, args.steps, 6).astype(int)
  name_w = max(len(n) for n in scheds)
  print(f"{'schedule':<{name_w}}  " + "  ".join(f"t={c:<7d}" for c in cols))
  curves = {}
  for name, sched in scheds.items():
    vals = np.asarray(sched(t))
    curves[name] = vals
    print(f"{name:<{name_w}}  " + "  ".join(f"{vals[c]:<9.3g}" for c in cols))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  torch_curves = {}
  if args.torch:
    try:
      torch_curves = _torch_curves(args.steps)
    except ImportError:
      print("optaxlr schedules: --torch needs PyTorch (pip install torch); drawing optaxlr only",
            file=sys.stderr)
  fig, axes = plt.subplots(2, 5, figsize=(18, 6), sharex=True, constrained_layout=True)
  for ax, (name, vals) in zip(axes.flat, curves.items()):
    ax.plot(np.asarray(t), vals, label="optaxlr")
    if name in torch_curves:
      ref = torch_curves[name]
      ax.plot(np.asarray(t), ref, "--", color="k", lw=1, label="PyTorch")
      diff = float(np.max(np.abs(ref - vals)))
      print(f"  {name}: max |optaxlr - PyTorch| = {diff:.2e}")
      ax.legend(fontsize=7)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
  axes[0, 0].set_ylabel("learning rate")
  path = out / "schedules.png"
  fig.savefig(path, dpi=100)
  print(f"wrote {path}")
  return EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr lr-find


def cmd_lr_find(args: argparse.Namespace) -> int:
  import optaxlr
  from optaxlr import search

  task = make_task(args.task, quick=True)
  _, decay, base = OPTIMIZERS[args.optimizer]
  space = search.grid(wd=args.wd)

  def build(h):
    if base == "adam":
      return optaxlr.adamw(h["lr"], h["wd"], decay=decay, **({"base_lr": h["lr"]} if decay == "paper" else {}))
    return optaxlr.sgd(h["lr"], 0.9, weight_decay=h["wd"], decay=decay,
                       **({"base_lr": h["lr"]} if decay == "paper" else {}))

  res = optaxlr.lr_find(task, build, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                        seeds=args.seeds, space=space, batch_size=args.batch_size)
  print(f"optaxlr lr-find: task={args.task}, optimizer={args.optimizer}, {args.steps} steps from"
        f" {args.min_lr:g} to {args.max_lr:g}, {args.seeds} seeds, weight decays {args.wd}")
  print(f"{'wd':>9}  {'minimum/10':>10}  {'steep':>9}  {'valley':>9}  {'cyclic base':>11}  {'cyclic max':>10}")
  for c in range(len(space)):
    sug = res.suggest(c)
    print(f"{space[c]['wd']:>9.1e}  {sug['minimum']:>10.2e}  {sug['steep']:>9.2e}  {sug['valley']:>9.2e}"
          f"  {sug['base_lr']:>11.2e}  {sug['max_lr']:>10.2e}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  fig = res.plot()
  fig.savefig(out / "lr_find.png", dpi=110)
  print(f"wrote {out / 'lr_find.png'}")
  return EXIT_OK


# ----------------------------------------------------------------------------------------
# optaxlr plot / diagnose


def _load_result(path: str):
  import optaxlr

  try:
    return optaxlr.load(path)
  except (OSError, ValueError, KeyError) as e:
    print(f"optaxlr: cannot read sweep result {path!r}: {e}", file=sys.stderr)
    return None


def cmd_plot(args: argparse.Namespace) -> int:
  from optaxlr import plot

  res = _load_result(args.result)
  if res is None:
    return EXIT_FAILED
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = pathlib.Path(args.result).stem
  metric = args.metric or ("val/error" if "val/error" in res.metrics else "val/loss")
  if metric not in res.metrics:
    print(f"optaxlr plot: no metric {metric!r}; available: {sorted(res.metrics)}", file=sys.stderr)
    return EXIT_USAGE
  names = list(res.hparams)
  written = []
  if len(names) >= 2:
    x, y = args.x or names[0], args.y or names[1]
    fig = plot.heatmap(res, x, y, metric)
    written.append(out / f"{stem}_heatmap.png")
    fig.savefig(written[-1], dpi=110)
  fig = plot.curves(res, metric)
  written.append(out / f"{stem}_curves.png")
  fig.savefig(written[-1], dpi=110)
  print("wrote " + ", ".join(map(str, written)))
  return EXIT_OK


def cmd_diagnose(args: argparse.Namespace) -> int:
  res = _load_result(args.result)
  if res is None:
    return EXIT_FAILED
  from optaxlr import doctor

  print(doctor.format_table(doctor.diagnose(res)))
  return EXIT_OK


# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="optaxlr",
      description="Learning-rate schedules, weight decay and whole-grid sweeps as vmappable "
      "optax pieces. With no command, runs 'optaxlr sweep' (a real sweep on built-in data).",
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")

  p = sub.add_parser(
      "sweep", help="sweep lr x weight decay on built-in data, one compiled program per optimizer",
      description="Trains every (lr, wd) config x seed of each optimizer as ONE compiled, vmapped "
      "program; prints the best settings, writes results (.npz) and heatmaps of validation error "
      "over (lr, wd) side by side (as Figure 2 of the AdamW paper).",
  )
  p.add_argument("--task", choices=TASKS, default="digits", help="built-in task (default digits)")
  p.add_argument("--optimizers", type=lambda s: s.split(","), default=["adam_l2", "adamw"],
                 help=f"comma-separated, from {', '.join(OPTIMIZERS)} (default adam_l2,adamw)")
  p.add_argument("--lr", type=_values, default=_values("1e-4:1e-1:1-3"),
                 help="learning rates: 'a,b,c', 'lo:hi:n' (log-spaced) or 'lo:hi:1-3' "
                 "(default 1e-4:1e-1:1-3)")
  p.add_argument("--wd", type=_values, default=_values("1e-5:1:6"),
                 help="weight decays, same forms (default 1e-5:1:6)")
  p.add_argument("--space", help="TOML/YAML file of extra or overriding axes, e.g. lr = '1e-4:1e-2:5'")
  p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="lr schedule (default cosine)")
  p.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
  p.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
  p.add_argument("--seeds", type=int, default=5, help="seeds per config (default 5)")
  p.add_argument("--eval-every", type=int, default=50, help="evaluate every N steps (default 50)")
  p.add_argument("--devices", type=int, default=None, help="use the first N devices (default all)")
  p.add_argument("--key", type=int, default=0, help="base PRNG seed (default 0)")
  p.add_argument("--quick", action="store_true", help="smaller models for the synthetic tasks")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_sweep)

  p = sub.add_parser("lr-find", help="the LR range test (Smith 2017), seeds x weight decays at once")
  p.add_argument("--task", choices=TASKS, default="digits", help="built-in task (default digits)")
  p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw", help="default adamw")
  p.add_argument("--wd", type=_values, default=[0.0, 1e-2], help="weight decays (default 0,1e-2)")
  p.add_argument("--min-lr", type=float, default=1e-6, help="default 1e-6")
  p.add_argument("--max-lr", type=float, default=10.0, help="default 10")
  p.add_argument("--steps", type=int, default=200, help="default 200")
  p.add_argument("--seeds", type=int, default=3, help="default 3")
  p.add_argument("--batch-size", type=int, default=64, help="default 64")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_lr_find)

  p = sub.add_parser("schedules", help="tabulate and plot the built-in schedules")
  p.add_argument("--steps", type=int, default=300, help="number of steps to draw (default 300)")
  p.add_argument("--torch", action="store_true",
                 help="draw PyTorch's scheduler of the same name beside each (needs torch)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_schedules)

  p = sub.add_parser("plot", help="heatmap and curves of a saved sweep result")
  p.add_argument("result", help="a .npz written by a sweep")
  p.add_argument("--metric", help="metric to plot (default val/error or val/loss)")
  p.add_argument("--x", help="hyperparameter on the x axis (default: the first)")
  p.add_argument("--y", help="hyperparameter on the y axis (default: the second)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_plot)

  p = sub.add_parser("diagnose", help="classify every run of a saved sweep and say what to do")
  p.add_argument("result", help="a .npz written by a sweep")
  p.set_defaults(func=cmd_diagnose)
  return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Value checks argparse cannot express; errors exit with code 2 before any compute."""
  if args.command == "sweep":
    unknown = [o for o in args.optimizers if o not in OPTIMIZERS]
    if unknown or not args.optimizers:
      parser.error(f"--optimizers: unknown {unknown}; choose from {', '.join(OPTIMIZERS)}")
    for name in ("steps", "batch_size", "seeds", "eval_every"):
      if getattr(args, name) < 1:
        parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.devices is not None and args.devices < 1:
      parser.error(f"--devices must be >= 1, got {args.devices}")
    for name in ("lr", "wd"):
      vals = getattr(args, name)
      if not vals:
        parser.error(f"--{name} is empty")
    if min(args.lr) <= 0:
      parser.error(f"--lr values must be > 0, got {args.lr}")
    if min(args.wd) < 0:
      parser.error(f"--wd values must be >= 0, got {args.wd}")
    if args.space and not pathlib.Path(args.space).is_file():
      parser.error(f"--space: no such file {args.space!r}")
  if args.command == "lr-find":
    if not 0 < args.min_lr < args.max_lr:
      parser.error(f"--min-lr and --max-lr must satisfy 0 < min < max, got {args.min_lr}, {args.max_lr}")
    for name in ("steps", "seeds", "batch_size"):
      if getattr(args, name) < 1:
        parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.command == "schedules" and args.steps < 30:
    parser.error(f"--steps must be >= 30, got {args.steps}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
    argv = ["sweep", *argv]
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return EXIT_USAGE
  _check(parser, args)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
