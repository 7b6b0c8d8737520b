"""optaxlr: learning-rate schedules, weight decay, flooding and sweeps as vmappable optax pieces.

Every numeric hyperparameter may be a Python number or a JAX array (a tracer under ``jit`` and
``vmap`` included), so a whole grid of settings trains as one compiled program.
"""

from optaxlr import adapt
from optaxlr.branch import Horizons
from optaxlr.branch import horizons
from optaxlr import plot
from optaxlr import schedules
from optaxlr import search
from optaxlr import stats
from optaxlr import noise
from optaxlr.noise import NoiseScale
from optaxlr.noise import noise_scale
from optaxlr.batch_size import CriticalBatchSize
from optaxlr.batch_size import critical_batch_size
from optaxlr import tasks
from optaxlr import transforms
from optaxlr.engine import ChunkEvent
from optaxlr.engine import Control
from optaxlr.engine import EarlyStop
from optaxlr.engine import Execution
from optaxlr.engine import RunSettings
from optaxlr.engine import SweepResult
from optaxlr.engine import batch_indices
from optaxlr.engine import load
from optaxlr.engine import run_keys
from optaxlr.engine import sweep
from optaxlr.tasks import Task
from optaxlr.doctor import Diagnosis
from optaxlr.doctor import DoctorThresholds
from optaxlr.doctor import diagnose
from optaxlr._lr_find import LRFindResult
from optaxlr._lr_find import LRGridResult
from optaxlr._lr_find import lr_find
from optaxlr._lr_find import lr_find_grid
from optaxlr._lr_find import range_test_lrs
from optaxlr import losses as _losses
from optaxlr import _monitor
from optaxlr.losses import flood
from optaxlr.losses import flooded
from optaxlr._monitor import MonitorState
from optaxlr._monitor import monitor
from optaxlr._monitor import update_ratio_report
from optaxlr._monitor import dead_relu_fraction
from optaxlr._monitor import BatchCheck
from optaxlr._monitor import check_batch
from optaxlr._monitor import assert_clean_data
from optaxlr.transforms import SkipNonfiniteState
from optaxlr.transforms import skip_nonfinite
from optaxlr.transforms import nonfinite_leaf_name
from optaxlr.transforms import param_group_lr
from optaxlr.transforms import param_group_multipliers
from optaxlr.transforms import layerwise_lr
from optaxlr.transforms import layerwise_multipliers
from optaxlr.transforms import ReduceOnPlateauState
from optaxlr.transforms import reduce_on_plateau
from optaxlr.transforms import EarlyStoppingState
from optaxlr.transforms import EarlyStopping
from optaxlr.transforms import early_stopping
from optaxlr.transforms import keep_best
from optaxlr.transforms import DecoupledWeightDecayState
from optaxlr.transforms import adamw
from optaxlr.transforms import decoupled_weight_decay
from optaxlr.transforms import l1_regularization
from optaxlr.transforms import l2_regularization
from optaxlr.transforms import no_bias_norm_mask
from optaxlr.transforms import sgd

__version__ = "0.1.0"

__all__ = [
    "adapt",
    "Horizons",
    "horizons",
    "plot",
    "schedules",
    "search",
    "stats",
    "noise",
    "NoiseScale",
    "noise_scale",
    "CriticalBatchSize",
    "critical_batch_size",
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
    "Execution",
    "RunSettings",
    "range_test_lrs",
    "SweepResult",
    "batch_indices",
    "load",
    "run_keys",
    "sweep",
    *_losses.__all__,
    *_monitor.__all__,
    *transforms.__all__,
]
