"""The ``optaxlr`` command."""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax.numpy as jnp
import numpy as np


def _demo_schedules(steps: int) -> dict:
  from optaxlr import schedules as s

  lr = 0.1
  return {
      "step(5 epochs, x0.5)": s.epochs(s.step(lr, 5, 0.5), steps // 30),
      "exponential (0.98/epoch)": s.epochs(s.exponential(lr, 0.98), steps // 30),
      "inverse_time (k=0.01)": s.inverse_time(lr, 0.01),
      "cosine": s.cosine(lr, steps),
      "cosine_restarts (SGDR)": s.cosine_restarts(lr, steps // 7, 2),
      "cyclic (triangular2)": s.cyclic(lr / 4, lr, steps // 8, mode="triangular2"),
      "one_cycle": s.one_cycle(lr, steps),
      "warmup + multistep (Goyal)": s.warmup(
          s.multistep(lr, [steps // 2, 3 * steps // 4]), steps // 20, 0.1
      ),
      "warmup_stable_decay": s.warmup_stable_decay(lr, steps, steps // 20),
      "rsqrt": s.rsqrt(lr, steps // 20),
  }


def cmd_schedules(args: argparse.Namespace) -> int:
  """Prints a table of the built-in schedules and draws them."""
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

  fig, axes = plt.subplots(2, 5, figsize=(18, 6), sharex=True, constrained_layout=True)
  for ax, (name, vals) in zip(axes.flat, curves.items()):
    ax.plot(np.asarray(t), vals)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
  axes[0, 0].set_ylabel("learning rate")
  path = out / "schedules.png"
  fig.savefig(path, dpi=100)
  print(f"wrote {path}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="optaxlr",
      description="Learning-rate schedules, weight decay and sweeps as vmappable optax pieces.",
  )
  sub = parser.add_subparsers(dest="command")
  p = sub.add_parser("schedules", help="tabulate and plot the built-in schedules")
  p.add_argument("--steps", type=int, default=300, help="number of steps to draw (default 300)")
  p.add_argument("--out", default="optaxlr_out", help="output folder (default optaxlr_out)")
  p.set_defaults(func=cmd_schedules)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args(["schedules", *(argv or [])])
  if args.steps < 30:
    parser.error(f"--steps must be >= 30, got {args.steps}")
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
