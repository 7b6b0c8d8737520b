"""optaxlr: learning-rate schedules, weight decay, flooding and sweeps as vmappable optax pieces.

Every numeric hyperparameter may be a Python number or a JAX array (a tracer under ``jit`` and
``vmap`` included), so a whole grid of settings trains as one compiled program.
"""

from optaxlr import adapt
from optaxlr import plot
from optaxlr import schedules
from optaxlr import search
from optaxlr import tasks
from optaxlr import transforms
from optaxlr.engine import ChunkEvent
from optaxlr.engine import Control
from optaxlr.engine import EarlyStop
from optaxlr.engine import SweepResult
from optaxlr.engine import batch_indices
from optaxlr.engine import load
from optaxlr.engine import run_keys
from optaxlr.engine import sweep
from optaxlr.tasks import Task
from optaxlr.doctor import Diagnosis
from optaxlr.doctor import DoctorThresholds
from optaxlr.doctor import diagnose
from optaxlr.lr_find import LRFindResult
from optaxlr.lr_find import LRGridResult
from optaxlr.lr_find import lr_find
from optaxlr.lr_find import lr_find_grid
from optaxlr import losses as _losses
from optaxlr import monitor as _monitor  # before the star import: `monitor` is also a function
from optaxlr.losses import *  # noqa: F403
from optaxlr.monitor import *  # noqa: F403
from optaxlr.transforms import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "adapt",
    "plot",
    "schedules",
    "search",
    "tasks",
    "transforms",
    "Task",
    "Diagnosis",
    "DoctorThresholds",
    "diagnose",
    "LRFindResult",
    "LRGridResult",
    "lr_find",
    "lr_find_grid",
    "ChunkEvent",
    "Control",
    "EarlyStop",
    "SweepResult",
    "batch_indices",
    "load",
    "run_keys",
    "sweep",
    *_losses.__all__,
    *_monitor.__all__,
    *transforms.__all__,
]
