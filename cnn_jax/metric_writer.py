"""Run metrics in the workdir: JSONL (big_vision style) and, optionally, TensorBoard.

``metrics.jsonl`` holds one JSON object per line, appended; it is the record every report
reads. ``tensorboard/`` holds the numeric fields of the same records as TensorBoard scalars
(clu's ``SummaryWriter``, as the Flax examples), for ``tensorboard --logdir <workdir>``.
Only process 0 writes. Each record is flushed when written, so ``tail -f metrics.jsonl``
follows a run and a killed run keeps every record it logged. A run resumed from an older
step than it had logged first moves the records it will log again to
``metrics.discarded.jsonl`` (:func:`rewind`), so that each step has one record; its
TensorBoard events are then rebuilt from the rewound file (``TensorBoardWriter(...,
rebuild_from=)``), so that TensorBoard too shows one value per step.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

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

  Args:
    logdir: the event files' folder (created if missing).
    rebuild_from: a ``metrics.jsonl`` path, or None. Given, the event files already in
      ``logdir`` are deleted and every record of that file is written again first. For a
      resumed run after :func:`rewind`: TensorBoard has no rewind of its own, and the old
      events of the steps the run trains again would plot beside the new ones (two values
      per step). The events only copy the JSONL's numeric fields, so nothing is lost: the
      discarded records stay in ``metrics.discarded.jsonl``.
  """

  def __init__(self, logdir: str | pathlib.Path,
               rebuild_from: str | pathlib.Path | None = None):
    self._writer = None
    if jax.process_index() != 0:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    logdir = pathlib.Path(logdir)
    if rebuild_from is not None:
      for f in logdir.glob("events.out.tfevents.*"):
        f.unlink()
    self._writer = metric_writers.SummaryWriter(str(logdir))
    if rebuild_from is not None:
      for record in read_jsonl(rebuild_from):
        self.write(record, flush=False)
      self._writer.flush()

  def write(self, record: dict, flush: bool = True) -> None:
    """Writes the numeric fields of one record (see the class docstring)."""
    if self._writer is None or "event" in record or "step" not in record:
      return
    scalars = {k: v for k, v in record.items() if k != "step" and
               isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._writer.write_scalars(int(record["step"]), scalars)
    if flush:
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


DISCARDED = "metrics.discarded.jsonl"


def _is_after(record: dict, step: int, redo_eval: bool) -> bool:
  """Whether a train or eval record is one a run resumed at ``step`` logs again."""
  s = record.get("step")
  if not isinstance(s, (int, float)) or isinstance(s, bool):
    return False
  return s > step or (redo_eval and s == step and "test_loss" in record)


def rewind(workdir: str | pathlib.Path, step: int, *, redo_eval: bool = False,
           filename: str = "metrics.jsonl") -> int:
  """Prepares ``<workdir>/<filename>`` for a run that (re)starts at ``step``.

  A run killed after its newest checkpoint logged train and eval records past it; the
  resumed run logs those steps again. Before it does, every train or eval record (no
  ``event`` key) whose ``step`` is greater than ``step`` (and, with ``redo_eval``, each
  eval record at ``step`` itself: the final evaluation, which a resume at the last step
  repeats) is moved to ``<workdir>/metrics.discarded.jsonl``, appended there with
  ``discarded_when_resuming_at: step``. A line that is not JSON (the last line of a run
  killed mid-write) is moved there too, as ``{"unparsable_line": text, ...}``. Event
  records (``start``) stay, those with a later ``step`` marked ``rolled_back_to_step``.

  The side file is written (and synced) first, then the metrics file is replaced
  atomically (a temporary file and ``os.replace``): a kill in between leaves a record in
  both files, never in neither. Call on process 0 only, before the run writes.

  Returns:
    How many lines were moved (0 when the file is missing or has nothing past ``step``).
  """
  path = pathlib.Path(workdir) / filename
  if not path.is_file():
    return 0
  kept, moved, changed = [], [], False
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      moved.append({"unparsable_line": line})
      continue
    if not isinstance(record, dict):
      kept.append(line)
    elif "event" in record:
      s = record.get("step")
      if isinstance(s, (int, float)) and s > step and "rolled_back_to_step" not in record:
        record["rolled_back_to_step"] = step
        line, changed = json.dumps(record), True
      kept.append(line)
    elif _is_after(record, step, redo_eval):
      moved.append(record)
    else:
      kept.append(line)
  if not moved and not changed:
    return 0
  if moved:
    with (path.parent / DISCARDED).open("a") as f:
      for record in moved:
        f.write(json.dumps({**record, "discarded_when_resuming_at": step}) + "\n")
      f.flush()
      os.fsync(f.fileno())
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{filename}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write("".join(line + "\n" for line in kept))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return len(moved)
