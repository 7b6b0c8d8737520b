"""The training core behind ``optaxlr.sweep``, ``lr_find`` and ``lr_find_grid``: one compiled,
vmapped, sharded program, driven from the host chunk by chunk."""

from optaxlr.engine._core import clear_cache
from optaxlr.engine._data import batch_indices
from optaxlr.engine._data import epoch_permutation
from optaxlr.engine._data import fold_split
from optaxlr.engine._data import model_key
from optaxlr.engine._data import run_keys
from optaxlr.engine._driver import ChunkEvent
from optaxlr.engine._driver import Control
from optaxlr.engine._engine import sweep
from optaxlr.engine._result import SweepResult
from optaxlr.engine._result import load
from optaxlr.engine._rules import STOP_REASONS
from optaxlr.engine._rules import EarlyStop
from optaxlr.engine._rules import PlateauDone
from optaxlr.engine._rules import RangeTest
from optaxlr.engine._rules import Rule

__all__ = [
    "STOP_REASONS",
    "ChunkEvent",
    "Control",
    "EarlyStop",
    "PlateauDone",
    "RangeTest",
    "Rule",
    "SweepResult",
    "batch_indices",
    "clear_cache",
    "epoch_permutation",
    "fold_split",
    "load",
    "model_key",
    "run_keys",
    "sweep",
]
