"""Where a run came from: code commit, library versions and hardware, for its logs.

Every number in a results table must be traceable to a logged run (config, commit, hardware,
wall time); :func:`run_provenance` is written into the ``start`` record of ``metrics.jsonl``
so that ``python -m cnn_jax.report`` can print it next to the accuracy.
"""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess

import jax

_REPO = pathlib.Path(__file__).resolve().parents[1]

# The keys of run_provenance(), in order; cnn_jax.report copies these from a start record.
KEYS = ("git_commit", "git_dirty", "git_dirty_files", "jax", "jaxlib", "python", "device_kind",
        "device_count", "cpu", "cpu_count", "xla_flags", "ld_preload")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True,
                         timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None  # not a git checkout (e.g. a wheel install) or git missing
  return out.stdout.rstrip("\n")  # not strip(): porcelain lines start with a status column


def parse_porcelain_z(status: str) -> list[str]:
  """The paths in ``git status --porcelain -z`` output (format v1: NUL-terminated
  ``'XY path'`` entries; a rename or copy entry ``'XY new'`` is followed by the old path,
  which is dropped). ``-z`` leaves paths unquoted, spaces and non-ASCII included."""
  entries, paths = iter(status.split("\0")), []
  for entry in entries:
    if entry:
      paths.append(entry[3:])
      if "R" in entry[:2] or "C" in entry[:2]:
        next(entries, None)  # the old path
  return paths


def git_state() -> dict:
  """``{'commit': 40-hex SHA of HEAD or None outside a git checkout, 'dirty_files': the
  repository paths of tracked files that differ from it ([] when clean), or None outside
  git}``, from read-only git commands."""
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "-z", "--untracked-files=no") if commit else None
  return {"commit": commit,
          "dirty_files": None if status is None else parse_porcelain_z(status)}


def cpu_model() -> str:
  """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run_provenance() -> dict:
  """Returns a JSON-serialisable dict describing this process's code and hardware.

  Keys (:data:`KEYS`): ``git_commit`` (40-hex SHA or None outside a git checkout),
  ``git_dirty`` (True when tracked files differ from that commit; None outside git),
  ``git_dirty_files`` (those files' repository paths, so a dirty mark can be checked: a
  README edit is not a code change; None outside git), ``jax``, ``jaxlib``,
  ``python`` (versions), ``device_kind`` (e.g. ``'cpu'``, ``'TPU v5 lite'``),
  ``device_count`` (global), ``cpu`` (host CPU model), ``cpu_count`` (logical CPUs visible to
  this process), ``xla_flags`` (the ``XLA_FLAGS`` environment variable, '' if unset),
  ``ld_preload`` (``LD_PRELOAD``, '' if unset: a preloaded allocator such as tcmalloc changes
  CPU step times, see docs/performance.md).
  """
  import jaxlib  # pylint: disable=g-import-not-at-top
  git = git_state()
  dirty_files = git["dirty_files"]
  try:
    n_cpu = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    n_cpu = os.cpu_count()
  return {
      "git_commit": git["commit"],
      "git_dirty": None if dirty_files is None else bool(dirty_files),
      "git_dirty_files": dirty_files,
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "python": platform.python_version(),
      "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "cpu": cpu_model(),
      "cpu_count": n_cpu,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "ld_preload": os.environ.get("LD_PRELOAD", ""),
  }
