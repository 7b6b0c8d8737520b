"""PBT's replayed schedule follows a lineage through several copies: a member that inherited
parameters and momentum from a member that had itself copied another is reproduced, every seed,
by one fresh run with the lineage's piecewise-constant rate (what benchmarks/adapt_bench.py's
``pbt_schedule`` part relies on; tests/test_adapt.py checks one copy of plain SGD, one seed)."""

from __future__ import annotations

import numpy as np
import optax

from optaxlr import adapt, search
from test_sweep import make_task, run

STEPS, EVERY = 30, 5


def momentum(h):
  return optax.sgd(h["lr"], momentum=0.9)


def test_replay_follows_a_lineage_of_several_copies_with_momentum(x64):
  task = make_task()
  space = search.zip(lr=[0.002, 0.01, 0.05, 0.2, 0.5, 1.0])
  p = adapt.pbt("val/loss", interval=EVERY, quantile=0.5, perturb={"lr": (0.8, 1.25)}, seed=0)
  res = run(task, momentum, space, seeds=[0, 1], steps=STEPS, eval_every=EVERY, adapt=p)
  traj = res.info["adapt"]["trajectory"]
  member = max(traj, key=lambda c: (len(traj[c]), -c))
  bounds, values, sched = p.schedule(member, "lr")
  assert len(bounds) >= 2, traj  # the lineage went through at least two copies
  assert bounds.tolist() == sorted(bounds.tolist()) and all(b % EVERY == 0 for b in bounds)
  # The rate set at step b (after b updates) is the one of update b + 1, i.e. count b.
  assert float(sched(bounds[0] - 1)) == values[0] and float(sched(bounds[0])) == values[1]
  assert float(sched(STEPS)) == values[-1]

  replay = run(task, lambda h: optax.sgd(sched, momentum=h["m"]), search.zip(m=[0.9]),
               seeds=[0, 1], steps=STEPS, eval_every=EVERY)
  # The lineage, walked back through the exploits: (slot, first step, end) of each segment.
  segments, cur, end = [], member, STEPS
  while True:
    before = [e for e in res.info["adapt"]["exploits"] if e["dst"] == cur and e["step"] < end]
    if not before:
      segments.append((cur, 0, end))
      break
    last = max(before, key=lambda e: e["step"])
    segments.append((cur, last["step"], end))
    cur, end = last["src"], last["step"]
  assert [start for _, start, _ in segments[:-1]] == bounds[::-1].tolist()
  # Every segment of the replay is the run of the slot that carried the lineage then, every seed.
  for slot, start, stop in segments:
    np.testing.assert_allclose(replay.batch_loss[:, 0, start:stop],
                               res.batch_loss[:, slot, start:stop], rtol=1e-12)
  e = list(res.eval_steps).index(int(bounds[-1]))
  np.testing.assert_allclose(replay.metrics["val/loss"][:, 0, e + 1:],
                             res.metrics["val/loss"][:, member, e + 1:], rtol=1e-12)
