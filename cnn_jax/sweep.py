"""Sweeps: the runs of one comparison table as code, run one at a time, resumable.

A table under ``experiments/<table>/`` lists its runs as :class:`Run` records (a config file
plus ``--config.*`` overrides, the way a user would type them) and calls :func:`main`::

    python -m experiments.<table>.run            # run every missing run, in order
    python -m experiments.<table>.run --status   # what is done, resumable, stale or new
    python -m experiments.<table>.run --only resnet32 --dry-run

Each run trains with ``python -m cnn_jax.train`` in a subprocess, in
``experiments/<table>/runs/<name>/``, its stdout and stderr appended to ``stdout.log``
there. A finished run (its last evaluation is at ``num_epochs``) is skipped; a run with a
checkpoint is resumed by the same command (``cnn_jax.train``'s auto-resume); a run that
logged records but has no checkpoint (killed before its first save, or its checkpoints
were lost with the machine) is moved aside to ``runs/.aside/<name>-<time>/``, never
deleted, and started over, so that no table mixes two runs' records.

Runs share what the table fixes (epochs, batch, augmentation) through their overrides;
the logs (``config.json``, ``metrics.jsonl``, ``stdout.log``) are what the table's report
reads, and what is committed. ``checkpoints/`` is git-ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from cnn_jax import checkpoint, xla_cpu
from cnn_jax.metric_writer import read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
# Flags every sweep run gets: no progress bar in a log file; TensorBoard events are
# binary and duplicate metrics.jsonl, so they are not written into committed folders.
COMMON_OVERRIDES = {"progress_bar": False, "tensorboard": False}
PID_FILE = "sweep.pid"  # the training process of a run in progress (git-ignored)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a table.

  Attributes:
    name: the run folder's name under ``runs/`` (also the row label).
    config: config file, relative to the repository root (``configs/cifar10_resnet20.py``).
    overrides: ``{dotted config key: value}`` passed as ``--config.<key>=<value>``.
    data: folder under the data root holding the run's image folder
      (``cifar10-jpeg``); passed as ``--config.data.dir``, which a resume may change.
    home: the table folder (relative to the repository root) whose ``runs/`` holds the
      run, when another table owns it (the same run is trained once and read by both);
      ``None``: the table listing it.
  """
  name: str
  config: str
  overrides: dict = dataclasses.field(default_factory=dict)
  data: str = "cifar10-jpeg"
  home: str | None = None

  def workdir(self, table_dir: str | pathlib.Path) -> pathlib.Path:
    """``<home or table_dir>/runs/<name>``."""
    return (REPO / self.home if self.home else pathlib.Path(table_dir)) / "runs" / self.name

  def argv(self, workdir: pathlib.Path, data_root: pathlib.Path) -> list[str]:
    """The ``cnn_jax.train`` command line of this run (without the interpreter)."""
    over = {**COMMON_OVERRIDES, **self.overrides,
            "data.dir": str((data_root / self.data).resolve())}
    return (["-m", "cnn_jax.train", "--config", self.config, "--workdir", str(workdir)]
            + [f"--config.{k}={v}" for k, v in over.items()])


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def run_state(workdir: pathlib.Path) -> str:
  """``'running'`` (a sweep's training process for it is alive, per ``sweep.pid``),
  ``'done'`` (an evaluation record at the config's ``num_epochs``), ``'resumable'`` (a
  complete checkpoint exists), ``'stale'`` (records or config but no checkpoint) or
  ``'new'`` (nothing there)."""
  metrics, cfg, pid = workdir / "metrics.jsonl", workdir / "config.json", workdir / PID_FILE
  if pid.is_file() and _alive(int(pid.read_text())):
    return "running"
  if cfg.is_file() and metrics.is_file():
    epochs = json.loads(cfg.read_text())["num_epochs"]
    evals = [r for r in read_jsonl(metrics) if "test_accuracy" in r]
    if evals and evals[-1]["epoch"] >= epochs - 1e-9:
      return "done"
  if checkpoint.saved_steps(workdir):
    return "resumable"
  if metrics.is_file() or cfg.is_file():
    return "stale"
  return "new"


def move_aside(workdir: pathlib.Path) -> pathlib.Path:
  """Moves ``workdir`` to ``<parent>/.aside/<name>-<YYYYmmdd-HHMMSS>`` and returns the
  new path (the old records are kept, never deleted)."""
  dest = workdir.parent / ".aside" / f"{workdir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
  dest.parent.mkdir(parents=True, exist_ok=True)
  workdir.rename(dest)
  return dest


def run_env() -> dict:
  """The environment of a run: this one, plus tcmalloc in ``LD_PRELOAD`` on Linux when it
  is installed and nothing is preloaded (1.3x faster CPU steps, see
  docs/performance.md); the start record logs ``LD_PRELOAD`` either way."""
  env = dict(os.environ)
  if sys.platform.startswith("linux") and not env.get("LD_PRELOAD"):
    found = xla_cpu.find_tcmalloc()
    if found:
      env["LD_PRELOAD"] = found
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  return env


def run_all(runs: list[Run], table_dir: pathlib.Path, data_root: pathlib.Path, *,
            only: list[str] | None = None, dry_run: bool = False) -> int:
  """Runs every run of ``runs`` that is not done, one at a time, in list order.

  Returns the number of runs that failed (non-zero exit); the others still run.

  Raises:
    ValueError: ``only`` names a run that is not in ``runs`` (lists the names).
  """
  names = [r.name for r in runs]
  if only:
    unknown = sorted(set(only) - set(names))
    if unknown:
      raise ValueError(f"unknown run(s) {unknown}; this table has {names}")
    runs = [r for r in runs if r.name in only]
  failed = 0
  for r in runs:
    workdir = r.workdir(table_dir)
    state = run_state(workdir)
    cmd = [sys.executable, *r.argv(workdir, data_root)]
    print(f"[sweep] {r.name}: {state}", flush=True)
    if state in ("done", "running"):
      continue
    if dry_run:
      print("  " + shlex.join(cmd), flush=True)
      continue
    if state == "stale":
      print(f"[sweep] {r.name}: records without a checkpoint moved to {move_aside(workdir)}",
            flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "stdout.log").open("a") as log:
      log.write(f"$ {shlex.join(cmd)}\n")
      log.flush()
      proc = subprocess.Popen(cmd, cwd=REPO, env=run_env(), stdout=log,
                              stderr=subprocess.STDOUT)
      (workdir / PID_FILE).write_text(str(proc.pid))
      try:
        rc = proc.wait()
      finally:
        (workdir / PID_FILE).unlink(missing_ok=True)
    print(f"[sweep] {r.name}: exit {rc}, now {run_state(workdir)}", flush=True)
    failed += rc != 0
  return failed


def main(runs: list[Run], table_dir: str | pathlib.Path, argv: list[str] | None = None) -> int:
  """Command line of a table's ``run.py``: ``[--status] [--only NAME ...] [--dry-run]
  [--data-root DIR]``. Returns the process exit status (0, or 1 if a run failed)."""
  table_dir = pathlib.Path(table_dir)
  ap = argparse.ArgumentParser(description=f"Runs the missing runs of {table_dir.name}.")
  ap.add_argument("--status", action="store_true", help="print each run's state and stop")
  ap.add_argument("--only", nargs="+", default=None, metavar="NAME")
  ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  ap.add_argument("--data-root", type=pathlib.Path,
                  default=pathlib.Path(os.environ.get("CNN_JAX_SHARED_DATA",
                                                      REPO.parent / "shared" / "data")),
                  help="folder holding the image folders (default ../shared/data)")
  args = ap.parse_args(argv)
  if args.status:
    for r in runs:
      print(f"{r.name:32s} {run_state(r.workdir(table_dir)):10s} {r.workdir(table_dir)}")
    return 0
  return 1 if run_all(runs, table_dir, args.data_root, only=args.only,
                      dry_run=args.dry_run) else 0
