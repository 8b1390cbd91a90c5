"""JSONL metrics in the workdir (big_vision style): one JSON object per line, appended.

Only process 0 writes. Each line is flushed when written, so ``tail -f metrics.jsonl``
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
    """Appends one record (a flat dict of numbers and strings)."""
    if not self._active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """Reads every record of a metrics file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
