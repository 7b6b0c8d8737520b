"""The README's "Real models and real data" block, run verbatim on the CPU at its own sizes
(8 configs x 5 folds, 200 steps, batch sizes 32 and 128, bfloat16), so that the README cannot
drift from the library: it used to fail with the default ``vectorize="auto"``.

(The block's sizes were 32 configs x 5 folds x 500 steps: on a 2-core CPU a tenth of it, 10
runs x 10 steps, compiled in 135 s and stepped at 0.3 s per step under load, so the whole would
have taken most of an hour; the block now shows the same axes at a size a CPU runs.)"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
  """The first ```python block after the README's ``heading`` line."""
  text = README.read_text()
  start = text.index(heading + "\n")
  m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
  assert m is not None, f"no python block after {heading!r}"
  return m.group(1)


def test_the_block_is_found_and_reads_what_the_setup_defines():
  code = readme_block("### Real models and real data")
  assert "class Net(nnx.Module)" in code and "search.folds(5)" in code
  names = set(re.findall(r"\b(x|y|val|optimizer)\b", code))
  assert names == {"x", "y", "val", "optimizer"}, names


@pytest.mark.slow
def test_real_models_block_runs_verbatim():
  """The setup the block assumes (digits as 8x8x1 images, a validation split, the README's
  first ``optimizer``: AdamW with a cosine schedule over 500 steps), then the block as written.
  Its numbers are checked for sense: every run finite, the fold summary over 5 folds, the
  handed-off model's predictions those of the kept parameters."""
  import jax
  import jax.numpy as jnp
  from sklearn.datasets import load_digits

  import optaxlr
  from optaxlr import schedules, search

  d = load_digits()
  images = (d.images / 16.0).astype(np.float32)[..., None]
  x, y = images[:1400], d.target[:1400]
  val = {"x": images[1400:], "y": d.target[1400:]}

  def optimizer(h):  # the README's first block
    return optaxlr.adamw(schedules.cosine(h["lr"], 500), weight_decay=h["wd"])

  scope = dict(jax=jax, optaxlr=optaxlr, search=search, x=x, y=y, val=val, optimizer=optimizer)
  code = readme_block("### Real models and real data")
  # With a batch_size (or fold) axis, vectorize="auto" trains every config at once and says so.
  with pytest.warns(UserWarning, match="vectoriz"):
    exec(compile(code, str(README) + ":real-models", "exec"), scope)
  res, model = scope["res"], scope["model"]
  assert res.num_configs == 8 * 5 and not res.diverged.any()
  assert np.isfinite(res.batch_loss).all()
  summary = scope["res"].fold_summary("fold/error")
  assert summary is not None
  # The handed-off nnx model (evaluation mode) predicts what the kept run's evaluation gives.
  model.eval()
  logits = model(jnp.asarray(val["x"]))
  err = float((np.asarray(logits).argmax(-1) != val["y"]).mean())
  assert 0.0 <= err < 0.5, err
