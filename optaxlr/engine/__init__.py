"""The training core behind ``optaxlr.sweep``: one compiled, vmapped, sharded program, driven
from the host chunk by chunk. ``sweep`` is its one driver; ``lr_find``, ``lr_find_grid``, the
adaptive strategies and the Optuna bridge are views of it built on these public names only."""

from optaxlr.engine._core import clear_cache
from optaxlr.engine._data import as_key
from optaxlr.engine._data import batch_indices
from optaxlr.engine._data import epoch_permutation
from optaxlr.engine._data import fold_split
from optaxlr.engine._data import key_data
from optaxlr.engine._data import model_key
from optaxlr.engine._data import run_keys
from optaxlr.engine._driver import ChunkEvent
from optaxlr.engine._driver import Control
from optaxlr.engine._engine import sweep
from optaxlr.engine._execution import Execution
from optaxlr.engine._noise import micro_batch_stats
from optaxlr.engine._noise import noise_parts
from optaxlr.engine._noise import two_batch_estimate
from optaxlr.engine._result import GridEdgeWarning
from optaxlr.engine._result import RunSettings
from optaxlr.engine._result import SweepResult
from optaxlr.engine._result import Timings
from optaxlr.engine._result import grid_edges
from optaxlr.engine._result import load
from optaxlr.engine._rules import STOP_REASONS
from optaxlr.engine._rules import EarlyStop
from optaxlr.engine._rules import PlateauDone
from optaxlr.engine._rules import RangeTest
from optaxlr.engine._rules import Rule
from optaxlr.engine._rules import reason_code
from optaxlr.engine._rules import stop_reasons

__all__ = [
    "STOP_REASONS",
    "ChunkEvent",
    "Control",
    "EarlyStop",
    "Execution",
    "GridEdgeWarning",
    "PlateauDone",
    "RangeTest",
    "Rule",
    "RunSettings",
    "SweepResult",
    "Timings",
    "as_key",
    "batch_indices",
    "clear_cache",
    "epoch_permutation",
    "fold_split",
    "grid_edges",
    "key_data",
    "load",
    "micro_batch_stats",
    "model_key",
    "noise_parts",
    "reason_code",
    "run_keys",
    "stop_reasons",
    "sweep",
    "two_batch_estimate",
]
