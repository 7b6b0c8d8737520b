"""Gradient transformations: weight decay, per-group learning rates, plateau, guards."""

from optaxlr.transforms._guards import *  # noqa: F403
from optaxlr.transforms._param_groups import *  # noqa: F403
from optaxlr.transforms._plateau import *  # noqa: F403
from optaxlr.transforms._weight_decay import *  # noqa: F403
from optaxlr.transforms import _guards, _param_groups, _plateau, _weight_decay

__all__ = [
    *_guards.__all__,
    *_param_groups.__all__,
    *_plateau.__all__,
    *_weight_decay.__all__,
]
