"""Run metrics in the workdir: JSONL (big_vision style) and, optionally, TensorBoard.

``metrics.jsonl`` holds one JSON object per line, appended; it is the record every report
reads. ``tensorboard/`` holds the numeric fields of the same records as TensorBoard scalars
(clu's ``SummaryWriter``, as the Flax examples), for ``tensorboard --logdir <workdir>``.
Only process 0 writes. Each record is flushed when written, so ``tail -f metrics.jsonl``
follows a run and a killed run keeps every record it logged.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax


def _clean(v):
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf
  return v


class JsonlWriter:
  """Appends records to ``<workdir>/metrics.jsonl``."""

  def __init__(self, workdir: str | pathlib.Path, filename: str = "metrics.jsonl"):
    self.path = pathlib.Path(workdir) / filename
    self._active = jax.process_index() == 0

  def write(self, record: dict) -> None:
    """Appends one record (a flat dict of numbers and strings); NaN/inf become strings."""
    if not self._active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


class TensorBoardWriter:
  """Writes each record's numeric fields as scalars at its ``step`` to ``logdir``.

  Records without a ``step`` or with an ``event`` (the ``start`` record) are skipped; string
  and boolean fields are skipped. Uses ``clu.metric_writers.SummaryWriter`` (TF summaries);
  TensorFlow is told to see no GPU, so that it does not take accelerator memory from JAX.
  """

  def __init__(self, logdir: str | pathlib.Path):
    self._writer = None
    if jax.process_index() != 0:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self._writer = metric_writers.SummaryWriter(str(logdir))

  def write(self, record: dict) -> None:
    """Writes the numeric fields of one record (see the class docstring)."""
    if self._writer is None or "event" in record or "step" not in record:
      return
    scalars = {k: v for k, v in record.items() if k != "step" and
               isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._writer.write_scalars(int(record["step"]), scalars)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class MultiWriter:
  """Sends every record to each of ``writers`` (objects with ``write(record)``)."""

  def __init__(self, *writers):
    self.writers = writers

  def write(self, record: dict) -> None:
    for w in self.writers:
      w.write(record)

  def close(self) -> None:
    for w in self.writers:
      if hasattr(w, "close"):
        w.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """Reads every record of a metrics file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
