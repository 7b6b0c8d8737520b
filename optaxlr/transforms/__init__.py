"""Gradient transformations: weight decay, per-group learning rates, plateau, guards."""

from optaxlr.transforms._guards import SkipNonfiniteState
from optaxlr.transforms._guards import skip_nonfinite
from optaxlr.transforms._guards import nonfinite_leaf_name
from optaxlr.transforms._param_groups import param_group_lr
from optaxlr.transforms._param_groups import param_group_multipliers
from optaxlr.transforms._param_groups import layerwise_lr
from optaxlr.transforms._param_groups import layerwise_multipliers
from optaxlr.transforms._plateau import ReduceOnPlateauState
from optaxlr.transforms._plateau import reduce_on_plateau
from optaxlr.transforms._plateau import EarlyStoppingState
from optaxlr.transforms._plateau import EarlyStopping
from optaxlr.transforms._plateau import early_stopping
from optaxlr.transforms._plateau import keep_best
from optaxlr.transforms._weight_decay import DecoupledWeightDecayState
from optaxlr.transforms._weight_decay import adamw
from optaxlr.transforms._weight_decay import decoupled_weight_decay
from optaxlr.transforms._weight_decay import l1_regularization
from optaxlr.transforms._weight_decay import l2_regularization
from optaxlr.transforms._weight_decay import no_bias_norm_mask
from optaxlr.transforms._weight_decay import sgd
from optaxlr.transforms import _guards, _param_groups, _plateau, _weight_decay

__all__ = [
    *_guards.__all__,
    *_param_groups.__all__,
    *_plateau.__all__,
    *_weight_decay.__all__,
]
