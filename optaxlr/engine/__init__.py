"""The sweep engine behind ``optaxlr.sweep``: a grid as one compiled, vmapped, sharded program."""

from optaxlr.engine._engine import EarlyStop
from optaxlr.engine._engine import batch_indices
from optaxlr.engine._engine import run_keys
from optaxlr.engine._engine import sweep
from optaxlr.engine._result import SweepResult
from optaxlr.engine._result import load

__all__ = [
    "EarlyStop",
    "SweepResult",
    "batch_indices",
    "load",
    "run_keys",
    "sweep",
]
