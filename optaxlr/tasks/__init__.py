"""Built-in training problems and the :class:`Task` interface the sweep engine consumes.

A :class:`Task` is ``init(key) -> params``, ``loss(params, batch) -> scalar``,
``metrics(params, batch) -> dict`` and the data (``train`` and held-out ``eval`` splits),
all pure and jit/vmap-safe. Build one from flax.nnx, flax.linen or plain functions, or use a
built-in task: :func:`digits`, :func:`two_gaussians`, :func:`sinusoid`, :func:`spiral`,
:func:`teacher_student`.
"""

from optaxlr.tasks._datasets import *  # noqa: F403
from optaxlr.tasks._models import *  # noqa: F403
from optaxlr.tasks._objectives import *  # noqa: F403
from optaxlr.tasks._task import *  # noqa: F403
from optaxlr.tasks import _datasets, _models, _objectives, _task

__all__ = [
    *_task.__all__,
    *_objectives.__all__,
    *_models.__all__,
    *_datasets.__all__,
]
