"""Bridges to other tools; each imports its tool lazily, so optaxlr never requires it.

- :mod:`optaxlr.integrations.optuna`: Optuna's ask-and-tell interface, a batch of trials
  trained as one :func:`optaxlr.sweep` (``pip install 'optaxlr[optuna]'``).
- :mod:`optaxlr.integrations.trackers`: sweep callbacks writing one TensorBoard / W&B / MLflow
  run per config and seed (``pip install 'optaxlr[tensorboard]'``, ``'optaxlr[wandb]'``,
  ``'optaxlr[mlflow]'``).
"""
