"""Built-in training problems and the :class:`Task` interface the sweep engine consumes.

A :class:`Task` is ``init(key) -> params``, ``loss(params, batch) -> scalar``,
``metrics(params, batch) -> dict`` and the data (``train`` and held-out ``eval`` splits),
all pure and jit/vmap-safe. Build one from flax.nnx, flax.linen or plain functions, or use a
built-in task: :func:`digits`, :func:`two_gaussians`, :func:`sinusoid`, :func:`spiral`,
:func:`teacher_student`, :func:`noisy_teacher`.
"""

from optaxlr.tasks._task import Task
from optaxlr.tasks._task import Batch
from optaxlr.tasks._task import reseed_nnx
from optaxlr.tasks._task import stream_key
from optaxlr.tasks._task import set_opt_state
from optaxlr.tasks._task import hparam
from optaxlr.tasks._task import Dropout
from optaxlr.tasks._objectives import cross_entropy
from optaxlr.tasks._objectives import accuracy
from optaxlr.tasks._objectives import mse
from optaxlr.tasks._objectives import logistic
from optaxlr.tasks._objectives import binary_accuracy
from optaxlr.tasks._models import MLP
from optaxlr.tasks._models import CNN
from optaxlr.tasks._datasets import digits
from optaxlr.tasks._datasets import two_gaussians
from optaxlr.tasks._datasets import sinusoid
from optaxlr.tasks._datasets import spiral
from optaxlr.tasks._datasets import teacher_student
from optaxlr.tasks._datasets import noisy_teacher
from optaxlr.tasks import _datasets, _models, _objectives, _task

__all__ = [
    *_task.__all__,
    *_objectives.__all__,
    *_models.__all__,
    *_datasets.__all__,
]
