"""Adaptive search inside one compiled program: successive halving, Hyperband, PBT.

Each strategy is a host-side policy that :func:`optaxlr.sweep` calls after every chunk
(``sweep(..., adapt=...)``): it reads the chunk's :class:`optaxlr.ChunkEvent` and returns an
:class:`optaxlr.Control` (stop configs; copy one slot's parameters and optimizer state into
another; set a slot's hyperparameters). Nothing is recompiled for a decision; when runs stop,
the core moves the live runs into a smaller program (compiled once per size), so the compute
that stopped configs free is really saved (``res.info["slot_steps"]`` counts what was computed).

Every strategy reports what it did in ``res.info["adapt"]``: the rungs (which configs were kept
and stopped, when) or the PBT exploit/explore steps (who copied whom, the new values), and
``config_steps`` (the steps the configs trained, summed).

References:
  Jamieson & Talwalkar, `Non-stochastic Best Arm Identification and Hyperparameter
  Optimization <https://arxiv.org/abs/1502.07943>`_, AISTATS 2016 (successive halving).
  Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar, `Hyperband: A Novel Bandit-Based Approach to
  Hyperparameter Optimization <https://jmlr.org/papers/v18/16-558.html>`_, JMLR 2018.
  Jaderberg et al., `Population Based Training of Neural Networks
  <https://arxiv.org/abs/1711.09846>`_, 2017.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optaxlr import _validate
from optaxlr.engine import ChunkEvent, Control

__all__ = ["Adapt", "successive_halving", "hyperband", "pbt", "SuccessiveHalving", "PBT"]


class Adapt:
  """Base of the adaptive strategies (see the module docstring)."""

  metric: str
  mode: str
  # How the sweep sizes the smaller program it moves the live runs into when some stop:
  # "exact" (the fewest slots; for a strategy with few, known sizes such as successive
  # halving) or "pow2" (a power of two of the vectorised unit; for one whose live count takes
  # every value, such as a pruner: at most log2(configs) + 1 programs to compile).
  compact_sizes: str = "exact"

  def start(self, *, n_configs: int, steps: int, eval_every: int, sync_every: int,
            hparams: Mapping[str, np.ndarray],
            categories: Mapping[str, Sequence[str]] | None = None) -> None:
    """Checks the sweep's settings (a ``ValueError`` naming what does not fit) and resets.
    ``hparams`` holds a categorical axis as int indices into ``categories[name]``."""
    raise NotImplementedError

  def __call__(self, event: ChunkEvent) -> Control | None:
    raise NotImplementedError

  def report(self) -> dict:
    raise NotImplementedError

  def state_dict(self) -> dict:
    """What the strategy decided so far, JSON-able: committed with every checkpointed chunk, so
    that an adaptive sweep resumes after a kill with the same decisions."""
    raise NotImplementedError

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    raise NotImplementedError

  def _score(self, event: ChunkEvent) -> np.ndarray:
    """Mean over seeds of the metric at this evaluation, worst for NaN, sign so lower is better."""
    if self.metric not in event.metrics:
      raise ValueError(f"adapt: metric {self.metric!r} is not evaluated; available: "
                       f"{sorted(event.metrics)}")
    v = np.asarray(event.metrics[self.metric], np.float64)
    with np.errstate(invalid="ignore"):
      m = v.mean(axis=0)
    m = m if self.mode == "min" else -m
    return np.where(np.isfinite(m), m, np.inf)


def _check_mode(fn: str, mode: str | None, metric: str) -> str:
  """``mode``, or the one the metric's name implies (``"min"`` when it implies none); an
  explicit mode against the metric's name is an error."""
  if mode is not None and mode not in ("min", "max"):
    raise ValueError(f"{fn}: mode must be 'min', 'max' or None (from the metric's name), got"
                     f" mode={mode!r}")
  natural = _validate.natural_mode(str(metric))
  if mode is not None and natural is not None and mode != natural:
    word = {"min": "minimised", "max": "maximised"}
    raise ValueError(f"{fn}: mode={mode!r} conflicts with metric={metric!r}, which is to be"
                     f" {word[natural]}; drop mode or pass mode={natural!r}")
  return mode or natural or "min"


@dataclasses.dataclass
class SuccessiveHalving(Adapt):
  """Successive halving over brackets of configs (one bracket: plain SH; several: Hyperband).

  Bracket ``b`` holds ``sizes[b]`` consecutive configs of the space and starts with
  ``min_steps[b]`` steps; at each rung ``r_k = min_steps[b] * eta**k`` (below the sweep's
  ``steps``) it keeps the best ``max(1, floor(n / eta))`` of its ``n`` live configs by the mean
  over seeds of ``metric`` and stops the others (``stop_reason="host"``); the survivors of the
  last rung train to the end. Use :func:`successive_halving` or :func:`hyperband`.
  """

  metric: str
  eta: int
  min_steps: tuple[int, ...]
  sizes: tuple[int, ...] | None
  mode: str = "min"
  name: str = "successive_halving"
  rungs: list = dataclasses.field(default_factory=list)

  def start(self, *, n_configs, steps, eval_every, sync_every, hparams, categories=None):
    del categories  # halving reads no hyperparameter values
    fn = self.name
    sizes = self.sizes if self.sizes is not None else (n_configs,)
    max_steps = getattr(self, "_max_steps", None)
    if max_steps is not None and max_steps != steps:
      raise ValueError(f"{fn}: max_steps={max_steps} must equal the sweep's steps={steps}")
    if sum(sizes) != n_configs:
      raise ValueError(f"{fn}: the brackets hold {sum(sizes)} configs ({list(sizes)}), the space"
                       f" has {n_configs}; give the space exactly that many configs")
    self._brackets = []
    lo = 0
    for n, r in zip(sizes, self.min_steps):
      if r >= steps and self.sizes is None:
        raise ValueError(f"{fn}: min_steps={r} must be below steps={steps} (the first rung)")
      rungs = []
      k = 0
      while r * self.eta ** k < steps:
        rungs.append(r * self.eta ** k)
        k += 1
      for rung in rungs:
        if rung % sync_every:
          raise ValueError(
              f"{fn}: the rung at step {rung} is not a host sync point; make sync_every (and "
              f"eval_every) divide every rung step, e.g. sync_every=eval_every={math.gcd(*rungs)}"
              f" (now sync_every={sync_every})")
      self._brackets.append({"configs": list(range(lo, lo + n)), "rungs": rungs})
      lo += n
    self._steps = steps
    self.rungs = []

  def __call__(self, event):
    score = dict(zip(event.configs, self._score(event)))
    alive = dict(zip(event.configs, np.asarray(event.alive).any(axis=0)))
    stop = []
    for b, br in enumerate(self._brackets):
      if event.step not in br["rungs"]:
        continue
      live = [c for c in br["configs"] if alive.get(c, False)]
      if len(live) <= 1:
        continue
      keep_n = max(1, len(live) // self.eta)
      order = sorted(live, key=lambda c: (score[c], c))
      kept, dropped = order[:keep_n], order[keep_n:]
      stop += dropped
      self.rungs.append({"bracket": b, "rung": br["rungs"].index(event.step), "step": event.step,
                         "kept": kept, "stopped": dropped,
                         "scores": {int(c): float(score[c]) for c in live}})
    return Control(stop=stop) if stop else None

  def state_dict(self) -> dict:
    """The decisions so far (JSON-able), committed with every checkpointed chunk."""
    return {"rungs": self.rungs}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores :meth:`state_dict` after :meth:`start` (a sweep resumed from a checkpoint)."""
    self.rungs = [dict(r, scores={int(k): v for k, v in r["scores"].items()}) for r in state["rungs"]]

  def report(self) -> dict:
    return {"strategy": self.name, "metric": self.metric, "eta": self.eta,
            "brackets": [{"configs": [b["configs"][0], b["configs"][-1] + 1], "rungs": b["rungs"]}
                         for b in self._brackets],
            "rungs": self.rungs}


def successive_halving(metric: str, eta: int = 3, min_steps: int = 1,
                       mode: str | None = None) -> SuccessiveHalving:
  """Successive halving (Jamieson & Talwalkar 2016) inside one program.

  Every config trains ``min_steps`` steps; then the best ``1/eta`` of the live configs (mean
  over seeds of ``metric``) go on to ``min_steps * eta`` steps, and so on; the others stop
  there and the program shrinks to the live runs, so their compute is saved. The rungs must be
  host sync points (``sync_every`` divides them).

  Args:
    metric: an evaluated metric (``"val/error"``, ``"val/loss"``).
    eta: the reduction factor, an int ``>= 2``.
    min_steps: the steps of the first rung.
    mode: ``"min"`` or ``"max"``; ``None`` (the default) takes it from the metric's name the
      way :meth:`optaxlr.SweepResult.best` does (``"max"`` for an accuracy, else ``"min"``);
      an explicit mode against the name (``mode="min"`` on ``"val/acc"``) is an error.

  Examples:
    >>> sh = successive_halving("val/loss", eta=3, min_steps=10)
    >>> sh.eta, sh.min_steps
    (3, (10,))
  """
  fn = "successive_halving"
  mode = _check_mode(fn, mode, metric)
  eta = _validate.check_int(fn, "eta", eta, 2)
  min_steps = _validate.check_int(fn, "min_steps", min_steps, 1)
  return SuccessiveHalving(metric=metric, eta=eta, min_steps=(min_steps,), sizes=None, mode=mode)


def hyperband(metric: str, eta: int = 3, min_steps: int = 1, max_steps: int | None = None,
              mode: str | None = None) -> SuccessiveHalving:
  """Hyperband (Li et al. 2018): its brackets of successive halving side by side in one program.

  With ``R = max_steps / min_steps`` and ``s_max = floor(log_eta(R))``, bracket
  ``s = s_max .. 0`` starts ``n_s = ceil((s_max + 1) / (s + 1) * eta**s)`` configs at
  ``r_s = max_steps * eta**-s`` steps; the space must hold ``sum(n_s)`` configs (a random space
  of that size: :func:`hyperband_size` says how many), taken in order, bracket by bracket.
  ``max_steps`` must equal the sweep's ``steps``.

  Examples:
    >>> hb = hyperband("val/loss", eta=3, min_steps=1, max_steps=27)
    >>> hb.sizes, hb.min_steps
    ((27, 12, 6, 4), (1, 3, 9, 27))
  """
  fn = "hyperband"
  mode = _check_mode(fn, mode, metric)
  eta = _validate.check_int(fn, "eta", eta, 2)
  min_steps = _validate.check_int(fn, "min_steps", min_steps, 1)
  if max_steps is None:
    raise ValueError(f"{fn}: max_steps is required (the sweep's steps)")
  max_steps = _validate.check_int(fn, "max_steps", max_steps, min_steps)
  sizes, starts = hyperband_brackets(eta, min_steps, max_steps)
  sh = SuccessiveHalving(metric=metric, eta=eta, min_steps=starts, sizes=sizes, mode=mode,
                         name="hyperband")
  sh._max_steps = max_steps  # noqa: SLF001 -- checked in start
  return sh


def hyperband_brackets(eta: int, min_steps: int, max_steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(configs per bracket, first-rung steps per bracket)`` of Hyperband, most aggressive first."""
  s_max = 0
  while min_steps * eta ** (s_max + 1) <= max_steps:
    s_max += 1
  sizes, starts = [], []
  for s in range(s_max, -1, -1):
    sizes.append(math.ceil((s_max + 1) / (s + 1) * eta ** s))
    starts.append(max(min_steps, max_steps // eta ** s))
  return tuple(sizes), tuple(starts)


def hyperband_size(eta: int, min_steps: int, max_steps: int) -> int:
  """How many configs :func:`hyperband` needs."""
  return sum(hyperband_brackets(eta, min_steps, max_steps)[0])


@dataclasses.dataclass
class PBT(Adapt):
  """Population-based training (Jaderberg et al. 2017); use :func:`pbt`."""

  metric: str
  interval: int
  quantile: float
  perturb: dict
  resample: dict
  resample_probability: float
  mode: str
  seed: int
  events: list = dataclasses.field(default_factory=list)

  def start(self, *, n_configs, steps, eval_every, sync_every, hparams, categories=None):
    fn = "pbt"
    if self.interval % sync_every:
      raise ValueError(f"{fn}: interval={self.interval} must be a multiple of sync_every="
                       f"{sync_every} (decisions happen at host syncs)")
    names = set(self.perturb) | set(self.resample)
    unknown = sorted(names - set(hparams))
    if unknown:
      raise ValueError(f"{fn}: perturb/resample name {unknown} not in the space's hyperparameters "
                       f"{sorted(hparams)}")
    if n_configs < 2:
      raise ValueError(f"{fn}: a population needs at least 2 configs, got {n_configs}")
    # An integer column is a categorical axis (held as an index) or a count: multiplying it
    # would give an index that the traced switch silently clips.
    ints = sorted(n for n in self.perturb if np.asarray(hparams[n]).dtype.kind in "iub")
    if ints:
      raise ValueError(f"{fn}: perturb names {ints}, integer or categorical axes, which cannot be"
                       " multiplied; put them in resample (search.choice of their values) instead")
    self._ints = {n for n in hparams if np.asarray(hparams[n]).dtype.kind in "iub"}
    # A categorical axis is resampled by its values' names (search.choice of a subset of the
    # axis's categories), each drawn name set as its index into the axis's categories.
    self._categories = {n: tuple(c) for n, c in dict(categories or {}).items()}
    for name, dist in self.resample.items():
      if name not in self._categories:
        continue
      cats = self._categories[name]
      drawn = getattr(dist, "values", None)
      if drawn is None or not all(isinstance(v, str) and v in cats for v in drawn):
        raise ValueError(f"{fn}: resample[{name!r}] must be search.choice of the categorical "
                         f"axis's values {list(cats)} (by name), got {dist!r}")
    # The declared bounds of a hyperparameter: those of its resample distribution.
    self._bounds = {n: (float(d.lo), float(d.hi)) for n, d in self.resample.items()
                    if hasattr(d, "lo") and hasattr(d, "hi")}
    self._rng = np.random.default_rng(self.seed)
    self._steps = steps
    self.events = []
    self.trajectory = {c: [(0, {k: float(v[c]) for k, v in hparams.items()})] for c in range(n_configs)}

  def __call__(self, event):
    if event.step % self.interval or event.step >= self._steps:
      return None
    alive = np.asarray(event.alive).any(axis=0)
    ids = [c for c, a in zip(event.configs, alive) if a]
    # A member whose every seed diverged is replaced like the worst (Jaderberg et al.): it is
    # a copy target, never a source; its slot would otherwise compute a frozen run for nothing.
    reasons = np.asarray(event.stop_reason)
    dead = [c for j, c in enumerate(event.configs)
            if not alive[j] and (reasons[:, j] == "diverged").all()]
    if len(ids) < 2 and not (dead and ids):
      return None
    score = dict(zip(event.configs, self._score(event)))
    order = sorted(ids, key=lambda c: (score[c], c))
    k = max(1, int(math.floor((len(order) + len(dead)) * self.quantile)))
    top = order[:k]
    n_worst = max(0, k - len(dead))
    bottom = dead + [c for c in order[len(order) - n_worst:] if c not in top]
    hp = {name: dict(zip(event.configs, v)) for name, v in event.hparams.items()}
    copy, new = {}, {}
    for dst in bottom:
      if dst in top:
        continue
      src = int(self._rng.choice(top))
      values, names = {}, {}
      for name in self.perturb:
        low, high = self.perturb[name]
        values[name] = float(hp[name][src]) * float(self._rng.choice([low, high]))
        if name in self._bounds:  # kept inside its declared range
          values[name] = float(np.clip(values[name], *self._bounds[name]))
      for name, dist in self.resample.items():
        if name in values and self._rng.random() >= self.resample_probability:
          continue
        import jax

        key = jax.random.PRNGKey(int(self._rng.integers(2**31)))
        drawn = np.asarray(dist.sample(key, 1))[0]
        if name in self._categories:  # a name: set as its index into the axis's categories
          names[name] = str(drawn)
          values[name] = self._categories[name].index(str(drawn))
        elif name in self._ints:  # a count: an integer, never a float
          values[name] = int(drawn)
        else:
          values[name] = float(drawn)
      copy[dst] = src
      new[dst] = values
      self.events.append({"step": event.step, "dst": int(dst), "src": src,
                          "hparams": {**values, **names},
                          "score_dst": float(score[dst]), "score_src": float(score[src]),
                          **({"dst_diverged": True} if dst in dead else {})})
      traj = [(s, dict(h)) for s, h in self.trajectory[src]]
      merged = {**{n: float(hp[n][src]) for n in hp}, **values}
      self.trajectory[dst] = traj + [(event.step, merged)]
    return Control(copy=copy, set_hparams=new) if copy else None

  def state_dict(self) -> dict:
    """The exploits, trajectories and random state so far (JSON-able), committed with every
    checkpointed chunk."""
    return {"events": self.events, "rng": self._rng.bit_generator.state,
            "trajectory": {str(c): [[int(s), h] for s, h in t] for c, t in self.trajectory.items()}}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores :meth:`state_dict` after :meth:`start` (a sweep resumed from a checkpoint)."""
    self.events = [dict(e) for e in state["events"]]
    self._rng.bit_generator.state = state["rng"]
    self.trajectory = {int(c): [(int(s), dict(h)) for s, h in t]
                       for c, t in state["trajectory"].items()}

  def report(self) -> dict:
    return {"strategy": "pbt", "metric": self.metric, "interval": self.interval,
            "quantile": self.quantile, "exploits": self.events,
            "trajectory": {int(c): [(int(s), h) for s, h in t] for c, t in self.trajectory.items()}}

  def schedule(self, config: int, name: str):
    """The piecewise-constant trajectory of hyperparameter ``name`` that config ``config``'s
    lineage trained with, as ``(boundaries, values)`` and an optax schedule
    ``step -> value`` (inherited from the configs it copied), to replay it in a fixed sweep."""
    import jax.numpy as jnp

    traj = self.trajectory[config]
    bounds = np.asarray([s for s, _ in traj[1:]], np.int32)
    values = np.asarray([h[name] for _, h in traj], np.float64)

    def sched(count):
      return jnp.asarray(values)[jnp.searchsorted(jnp.asarray(bounds), count, side="right")]

    return bounds, values, sched


def pbt(metric: str, interval: int, *, quantile: float = 0.25,
        perturb: Mapping[str, tuple[float, float]] | None = None,
        resample: Mapping[str, Any] | None = None, resample_probability: float = 0.25,
        mode: str | None = None, seed: int = 0) -> PBT:
  """Population-based training (Jaderberg et al. 2017) inside one program.

  Every ``interval`` steps the configs are ranked by the mean over seeds of ``metric``; each of
  the worst ``quantile`` *exploits* a config drawn from the best ``quantile`` (copies its
  parameters, optimizer state and hyperparameters: one :class:`optaxlr.Control`) and
  *explores*: every hyperparameter in ``perturb`` is multiplied by ``low`` or ``high`` (drawn
  with equal chance; Jaderberg et al. use 0.8 and 1.2) and kept inside the range of its
  ``resample`` distribution when it has one (an integer or categorical axis cannot be
  perturbed: an error), and every one in ``resample`` is drawn
  anew from its :mod:`optaxlr.search` distribution (with probability ``resample_probability``
  when it is also perturbed). A categorical axis (``search.grid(opt=["sgd", "adam"])``) is
  resampled by name: ``resample={"opt": search.choice(["sgd", "adam"])}`` (a subset of the
  axis's values; the exploit record shows the name drawn, the trajectory its index into
  ``space.categories["opt"]``). The trajectory of every config is in ``res.info["adapt"]`` and
  :meth:`PBT.schedule` turns it into a schedule to replay.

  Examples:
    >>> p = pbt("val/loss", interval=50, perturb={"lr": (0.8, 1.2)})
    >>> p.quantile
    0.25
  """
  fn = "pbt"
  mode = _check_mode(fn, mode, metric)
  interval = _validate.check_int(fn, "interval", interval, 1)
  if isinstance(quantile, bool) or not 0 < float(quantile) <= 0.5:
    raise ValueError(f"{fn}: quantile must be in (0, 0.5], got quantile={quantile!r}")
  perturb = dict(perturb or {})
  resample = dict(resample or {})
  if not perturb and not resample:
    raise ValueError(f"{fn}: give perturb={{name: (low, high)}} and/or resample={{name: distribution}}")
  for name, f in perturb.items():
    try:
      low, high = (float(x) for x in f)
    except (TypeError, ValueError):
      raise ValueError(f"{fn}: perturb[{name!r}] must be (low_factor, high_factor), got {f!r}") from None
    if not (0 < low and 0 < high and np.isfinite(low) and np.isfinite(high)):
      raise ValueError(f"{fn}: perturb[{name!r}] factors must be finite and > 0, got {f!r}")
    perturb[name] = (low, high)
  for name, d in resample.items():
    if not hasattr(d, "sample"):
      raise ValueError(f"{fn}: resample[{name!r}] must be an optaxlr.search distribution, got {d!r}")
  if not 0 <= float(resample_probability) <= 1:
    raise ValueError(f"{fn}: resample_probability must be in [0, 1], got {resample_probability!r}")
  return PBT(metric=metric, interval=interval, quantile=float(quantile), perturb=perturb,
             resample=resample, resample_probability=float(resample_probability), mode=mode,
             seed=int(seed))
