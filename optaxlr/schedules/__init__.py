"""Learning-rate schedules as pure, vmappable ``optax.Schedule`` functions.

Every schedule returns ``schedule(step) -> value``, is branch-free, works on a scalar or an
array of steps, and accepts Python numbers or JAX arrays (tracers under ``jit``/``vmap``
included) for every numeric argument. Where PyTorch has a scheduler of the same name the values
equal its closed form at every step (step ``t`` here is PyTorch's ``last_epoch`` ``t``); the one
departure is ``one_cycle``, which holds its final rate from step ``T - 1`` on where PyTorch's
step ``T`` overshoots. A schedule with an end (``linear``, ``polynomial``, ``one_cycle``,
``warmup_stable_decay``, ``constant_factor``, ``warmup``) holds its final value after it;
``cosine`` is periodic past ``t_max``, as PyTorch's.

Precision: computed in float32, every schedule is within ``1e-5`` relative of a float64
reference at every step, tails included (tests/test_schedules_float32.py): interpolations run
from the nearer end, cosines are written as ``cos**2``/``sin**2`` of small arguments, and cycle
positions are exact integer arithmetic (``cosine_restarts`` with a fractional ``t_mult``, an
extension, restarts between steps, at positions float32 holds to about an ulp of the step).
Concrete hyperparameters are validated (NaN, ``inf`` and
``bool`` refused, NumPy scalars accepted); traced ones cannot be.
"""

from optaxlr.schedules._compose import chained
from optaxlr.schedules._compose import epochs
from optaxlr.schedules._compose import linear_scaling
from optaxlr.schedules._compose import sequential
from optaxlr.schedules._compose import warmup
from optaxlr.schedules._cyclic import cosine_restarts
from optaxlr.schedules._cyclic import cyclic
from optaxlr.schedules._cyclic import cyclic_momentum
from optaxlr.schedules._cyclic import one_cycle
from optaxlr.schedules._cyclic import one_cycle_momentum
from optaxlr.schedules._decay import constant
from optaxlr.schedules._decay import constant_factor
from optaxlr.schedules._decay import cosine
from optaxlr.schedules._decay import exponential
from optaxlr.schedules._decay import exponential_decay
from optaxlr.schedules._decay import inverse_time
from optaxlr.schedules._decay import linear
from optaxlr.schedules._decay import multistep
from optaxlr.schedules._decay import polynomial
from optaxlr.schedules._decay import rsqrt
from optaxlr.schedules._decay import step
from optaxlr.schedules._decay import warmup_stable_decay

__all__ = [
    "chained",
    "constant",
    "constant_factor",
    "cosine",
    "cosine_restarts",
    "cyclic",
    "cyclic_momentum",
    "epochs",
    "exponential",
    "exponential_decay",
    "inverse_time",
    "linear",
    "linear_scaling",
    "multistep",
    "one_cycle",
    "one_cycle_momentum",
    "polynomial",
    "rsqrt",
    "sequential",
    "step",
    "warmup",
    "warmup_stable_decay",
]
