"""Checkpoints with orbax ``CheckpointManager``: save every N steps, keep the last k, resume.

Orbax writes each step to a temporary directory (``<step>.orbax-checkpoint-tmp``) and
renames it when complete, so an interrupted save never leaves a half-written checkpoint
that a resume would pick up (and a later save of that step replaces the leftover). Each
save also records a CRC32 of every array's bytes in the step's metadata
(``_CHECKPOINT_METADATA``, orbax's ``custom_metadata``, plain JSON): a checkpoint damaged
*after* it was written (a truncated, overwritten or deleted file) is found at restore, set
aside and the previous one used (:func:`restore_latest`). Orbax stores arrays with
TensorStore and metadata as JSON; nothing is ever unpickled. With the in-memory loader the
data position is not stored: it is a function of the step (:mod:`cnn_jax.data.loader`).
With the Grain loader each step also holds item ``data_iter``: the iterator state of each
process as JSON (``data_iter/process_<i>-of-<n>.json``, written by Grain's own orbax
``CheckpointHandler``), set again on resume (:class:`DataState`).

A checkpoint that does not fit the model it is restored into (another architecture, a
changed model definition) is refused naming the first mismatched array path and both
shapes (:func:`restore_latest`, :func:`restore_variables`), from the checkpoint's metadata,
before any array is read.
"""

from __future__ import annotations

import json
import pathlib
import re
import zlib
from typing import Any, Sequence

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

# The item name under which CheckpointManager stores a single-item checkpoint:
# <workdir>/checkpoints/<step>/default.
_ITEM = "default"
# Orbax's per-step metadata file (JSON; it always writes one) and our key in its
# custom_metadata: {array path: CRC32 of the array's bytes}.
_STEP_METADATA = "_CHECKPOINT_METADATA"
_CRC_KEY = "cnn_jax_crc32"
# Where restore_latest moves damaged steps: <workdir>/checkpoints.damaged/<step>.
DAMAGED_DIR = "checkpoints.damaged"


class DamagedCheckpointError(RuntimeError):
  """A checkpoint cannot be read back as it was written (missing or truncated files,
  arrays whose bytes differ from the CRC32 recorded at save), and no older one is intact.

  Attributes:
    directory: the checkpoints directory.
    damaged: ``{step directory: what is wrong}``, newest first.
  """

  def __init__(self, message: str, directory: pathlib.Path, damaged: dict):
    super().__init__(message)
    self.directory, self.damaged = directory, damaged


class _Damaged(Exception):
  """Internal: one step failed to restore or verify; the message says how."""


# The item holding the data iterator's state: <workdir>/checkpoints/<step>/data_iter.
DATA_ITEM = "data_iter"


class DataState:
  """Holder of a data iterator's state for Grain's orbax ``CheckpointHandler``, which saves
  ``item.get_state()`` (bytes, here JSON) and restores with ``item.set_state(bytes)``.

  Attributes:
    value: the state, a JSON-able dict (:meth:`cnn_jax.data.loader.TrainBatches.state`),
      or ``None`` (nothing restored, or a checkpoint without one).
  """

  def __init__(self, value: dict | None = None):
    self.value = value

  def get_state(self) -> bytes:
    return json.dumps(self.value).encode()

  def set_state(self, state: bytes) -> None:
    self.value = json.loads(state.decode() if isinstance(state, bytes) else state)

  def start_prefetch(self) -> None:  # called by Grain's handler after set_state
    pass


def manager(workdir: str | pathlib.Path, keep: int,
            data_state: bool = False) -> ocp.CheckpointManager:
  """A manager over ``<workdir>/checkpoints`` keeping the newest ``keep`` steps; with
  ``data_state``, of two items, the train state (``default``) and the data iterator's state
  (``data_iter``, Grain's ``CheckpointHandler``)."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  if not data_state:
    return ocp.CheckpointManager(directory, options=options)
  import grain  # pylint: disable=g-import-not-at-top
  mngr = ocp.CheckpointManager(
      directory, options=options,
      item_handlers={_ITEM: ocp.StandardCheckpointHandler(),
                     DATA_ITEM: grain.checkpoint.CheckpointHandler()})
  mngr.cnn_jax_data_state = True  # a two-item manager: save and restore Composite args
  return mngr


def _multi_item(mngr: ocp.CheckpointManager) -> bool:
  """Whether ``mngr`` was made by :func:`manager` with ``data_state=True``."""
  return getattr(mngr, "cnn_jax_data_state", False)


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
  """The steps of the complete checkpoints in ``<workdir>/checkpoints`` (ascending; ``[]``
  when there is none). Unfinished saves (orbax's temporary directories) are not listed."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def _host_bytes(x) -> bytes:
  """The bytes of one array leaf as saved (a typed PRNG key as its key data)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # replicated: the local shard is the whole value
  return np.ascontiguousarray(np.asarray(x)).tobytes()


def checksums(tree) -> dict[str, int]:
  """``{path: CRC32}`` of the bytes of every array leaf of ``tree`` (``'params/Dense_0/kernel'``
  paths as :func:`key_path_str`). Reads each leaf to the host; for a train state that is
  what a save copies anyway."""
  return {key_path_str(p): zlib.crc32(_host_bytes(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict | None = None) -> None:
  """Saves ``state`` (a pytree of ``jax.Array``) as ``step`` (asynchronously), with the
  CRC32 of each array in the step's metadata (see :func:`checksums`), and on a manager
  made with ``data_state=True`` the data iterator's state ``data_state`` (a JSON-able dict)
  as item ``data_iter``."""
  sums = {_CRC_KEY: checksums(state)}
  if not _multi_item(mngr):
    mngr.save(step, args=ocp.args.StandardSave(state), force=True, custom_metadata=sums)
    return
  import grain  # pylint: disable=g-import-not-at-top
  mngr.save(step, args=ocp.args.Composite(**{
      _ITEM: ocp.args.StandardSave(state),
      DATA_ITEM: grain.checkpoint.CheckpointSave(DataState(data_state))}),
            force=True, custom_metadata=sums)


def recorded_checksums(step_dir: str | pathlib.Path) -> dict[str, int] | None:
  """The ``{path: CRC32}`` that :func:`save` recorded for the checkpoint in ``step_dir``, or
  ``None`` for a checkpoint written before checksums were recorded.

  Raises:
    OSError / ValueError: the step's metadata file is missing or not JSON.
  """
  meta = json.loads((pathlib.Path(step_dir) / _STEP_METADATA).read_text())
  sums = (meta.get("custom_metadata") or {}).get(_CRC_KEY)
  return None if sums is None else {k: int(v) for k, v in sums.items()}


def _first_line(e: BaseException, limit: int = 200) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


# TensorStore names the array it failed on by its OCDBT key: "params.Conv_0.kernel/0.0.0.0".
_TS_KEY = re.compile(r'Error reading "([^"/]+)/')


def _unreadable(e: BaseException) -> str:
  """Why a checkpoint's arrays cannot be read: the array TensorStore names (as a
  ``params/Conv_0/kernel`` path) and the innermost error, whose first line says what
  (``ZSTD_decompressStream() failed``, a short read); orbax wraps it in a bare ``Exception``."""
  chain = [e]
  while chain[-1].__cause__ is not None and len(chain) < 16:
    chain.append(chain[-1].__cause__)
  for x in chain:
    found = _TS_KEY.search(str(x))
    if found:
      return (f"its arrays cannot be read ({found.group(1).replace('.', '/')}: "
              f"{_first_line(chain[-1])})")
  return f"its arrays cannot be read ({_first_line(e)})"


def _is_transient(e: BaseException) -> bool:
  """Errors that say nothing about the files (out of memory): not a damaged checkpoint."""
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


def _verify(tree, sums: dict[str, int] | None) -> None:
  """Raises :class:`_Damaged` when an array of ``tree`` differs from its recorded CRC32."""
  if sums is None:
    return  # written before checksums were recorded: restored unverified
  got = checksums(tree)
  bad = [p for p in got if p in sums and got[p] != sums[p]]
  if bad:
    more = f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else ""
    raise _Damaged(f"{bad[0]} does not match the CRC32 recorded when it was saved "
                   f"({got[bad[0]]:#010x} read, {sums[bad[0]]:#010x} saved){more}")


def _restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state,
                  data_state: DataState | None = None):
  """Restores and verifies checkpoint ``step`` (and into ``data_state`` its data iterator
  state, when it has one and the manager is a two-item one).

  Raises:
    ValueError: it does not fit ``abstract_state`` (not damage: another model).
    _Damaged: its metadata or arrays cannot be read, or an array fails its CRC32.
  """
  step_dir = pathlib.Path(mngr.directory) / str(step)
  try:
    sums = recorded_checksums(step_dir)
    saved = saved_shapes(step_dir)
  except Exception as e:  # missing or truncated JSON files: orbax raises several types
    if _is_transient(e):
      raise
    raise _Damaged(f"its metadata cannot be read ({_first_line(e)})") from e
  problem = mismatch(saved, _flat_shapes(abstract_state))
  if problem is not None:
    raise ValueError(f"cannot resume from checkpoint {step_dir}: it does not fit the model "
                     f"this config builds: {problem}")
  try:
    if _multi_item(mngr):
      import grain  # pylint: disable=g-import-not-at-top
      items = {_ITEM: ocp.args.StandardRestore(abstract_state)}
      holder = data_state if data_state is not None else DataState()
      holder.value = None
      if (step_dir / DATA_ITEM).is_dir():  # absent: written by the in-memory loader
        items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(holder)
      state = mngr.restore(step, args=ocp.args.Composite(**items))[_ITEM]
    else:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # TensorStore reports a truncated file as a bare Exception
    if _is_transient(e):
      raise
    raise _Damaged(_unreadable(e)) from e
  _verify(state, sums)
  return state


def _move_damaged(step_dir: pathlib.Path) -> pathlib.Path:
  """Moves ``<workdir>/checkpoints/<step>`` to ``<workdir>/checkpoints.damaged/<step>``
  (``-2``, ``-3``... appended if taken); returns where. Nothing is deleted."""
  dest_dir = step_dir.parent.with_name(DAMAGED_DIR)
  dest_dir.mkdir(exist_ok=True)
  dest, k = dest_dir / step_dir.name, 1
  while dest.exists():
    k += 1
    dest = dest_dir / f"{step_dir.name}-{k}"
  step_dir.rename(dest)
  return dest


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, move_damaged: bool = True,
                   data_state: DataState | None = None):
  """Restores the newest intact checkpoint into the structure, dtypes and shardings of
  ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with ``.sharding``, as from
  ``jax.eval_shape``). Returns ``None`` when there is no checkpoint.

  On a manager made with ``data_state=True`` (:func:`manager`), ``data_state.value`` is set
  to that checkpoint's data iterator state, or ``None`` when it has none (written by the
  in-memory loader, or before the state was stored).

  A checkpoint written on N devices restores onto whatever mesh ``abstract_state``
  names: orbax reads each array and lays it out by the target sharding.

  A damaged checkpoint (metadata or array files missing or truncated, or an array whose
  bytes differ from the CRC32 recorded at save) is skipped for the next older one, with
  one printed line naming it; when an older one is intact, the damaged newer ones are
  moved to ``<workdir>/checkpoints.damaged/`` (``move_damaged``; never deleted), so that
  training can write those steps again. With ``move_damaged=False`` (read-only use, e.g.
  re-scoring) nothing is moved. Checkpoints written before checksums were recorded are
  restored unverified.

  Raises:
    ValueError: the checkpoint's arrays do not fit ``abstract_state`` (a changed model):
      names the step directory, the first mismatched path (``params/Dense_0/kernel``) and
      both shapes. Orbax's own message names neither path nor step.
    DamagedCheckpointError: every checkpoint is damaged; names the checkpoints directory
      and each problem, and moves nothing (a rerun must not start over on top of them).
  """
  directory = pathlib.Path(mngr.directory)
  damaged = {}
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = _restore_step(mngr, step, abstract_state, data_state)
    except _Damaged as e:
      damaged[directory / str(step)] = str(e)
      continue
    _set_aside(mngr, damaged, step, move_damaged)
    return state
  if not damaged:
    return None
  problems = "; ".join(f"{d}: {why}" for d, why in damaged.items())
  raise DamagedCheckpointError(
      f"no intact checkpoint in {directory}: {problems}. Nothing was moved or overwritten; "
      f"to start over, train with restart = True (moves the run, these checkpoints included, "
      f"to <workdir>/previous-<time>/) or in a new workdir", directory, damaged)


def _set_aside(mngr: ocp.CheckpointManager, damaged: dict, good_step: int,
               move: bool) -> None:
  """Prints one line per damaged step (newer than ``good_step``, which was restored) and,
  if ``move``, moves them aside (process 0, the others wait) and reloads ``mngr``."""
  if not damaged:
    return
  main = jax.process_index() == 0
  for step_dir, why in damaged.items():
    where = "left in place"
    if move:
      dest = _move_damaged(step_dir) if main else step_dir.parent.with_name(DAMAGED_DIR)
      where = f"moved to {dest}"
    if main:
      print(f"cnn_jax: checkpoint {step_dir} is damaged ({why}); {where}; falling back to "
            f"step {good_step}", flush=True)
  if move:
    if jax.process_count() > 1:  # no process may reload before the move is done
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("cnn_jax.checkpoint damaged")
    mngr.reload()


def abstract_like(tree, sharding):
  """``jax.ShapeDtypeStruct`` leaves of ``tree`` carrying ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def key_path_str(path: Sequence[Any]) -> str:
  """A jax key path (or a tuple of dict keys) as ``'params/Dense_0/kernel'``: dict keys,
  attribute names and sequence indices joined by ``/``."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        k = getattr(k, attr)
        break
    parts.append(str(k))
  return "/".join(parts)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{path: shape}`` of the array leaves of ``tree``, in its flattening order."""
  return {key_path_str(p): tuple(getattr(x, "shape", ()))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_shapes(step_dir: str | pathlib.Path) -> dict[str, tuple[int, ...]]:
  """``{path: shape}`` of every array of the checkpoint in ``step_dir``
  (``<workdir>/checkpoints/<step>``), read from its metadata (no array is read)."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return _flat_shapes(handler.metadata(pathlib.Path(step_dir) / _ITEM).tree)
  finally:
    handler.close()


def mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
  """The first difference between a checkpoint's ``{path: shape}`` and a model's, in words
  (``'params/Dense_0/kernel has shape (128, 10) in the checkpoint, (128, 100) in the
  model'``), counting all of them; ``None`` when the two agree."""
  problems = []
  for path, shape in wanted.items():
    if path not in saved:
      problems.append(f"{path} (shape {shape} in the model) is not in the checkpoint")
    elif saved[path] != shape:
      problems.append(f"{path} has shape {saved[path]} in the checkpoint, {shape} in the model")
  problems += [f"{path} (shape {shape} in the checkpoint) is not in the model"
               for path, shape in saved.items() if path not in wanted]
  if not problems:
    return None
  more = f" (and {len(problems) - 1} more mismatched arrays)" if len(problems) > 1 else ""
  return problems[0] + more


def restore_variables(workdir: str | pathlib.Path, fresh: dict,
                      skip: Sequence[str] = ()) -> tuple[dict, int, pathlib.Path]:
  """The model variables of the newest checkpoint of another run, to start a new run from.

  Args:
    workdir: a ``cnn_jax.train`` workdir whose ``checkpoints/`` holds a complete checkpoint.
    fresh: the new run's collections, e.g. ``{'params': ..., 'batch_stats': ...}`` (dicts
      of ``jax.Array``): what is restored, and the shape, dtype and sharding each leaf gets.
      Only these collections are read (not the optimizer state, step or EMA).
    skip: paths (``'params/Dense_0'``, a prefix of whole path components) that keep their
      ``fresh`` value and are neither read nor compared (e.g. a new classifier head).

  Returns:
    ``(variables, step, step_dir)``: ``fresh`` with every leaf not in ``skip`` replaced by
    the checkpoint's, the checkpoint's step and its directory.

  Raises:
    FileNotFoundError: no complete checkpoint in ``<workdir>/checkpoints``.
    ValueError: the checkpoint's arrays in these collections do not match ``fresh`` (another
      architecture): names the first mismatched path and both shapes.
    DamagedCheckpointError: that checkpoint's files cannot be read, or an array read differs
      from the CRC32 recorded at save (names the step directory and the array).
  """
  found = saved_steps(workdir)
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  if not found:
    raise FileNotFoundError(f"{directory} holds no complete checkpoint")
  step_dir = directory / str(found[-1])

  def skipped(path: str) -> bool:
    return any(path == s.rstrip("/") or path.startswith(s.rstrip("/") + "/") for s in skip)

  # {'params/Dense_0/kernel': (('params', 'Dense_0', 'kernel'), leaf)}: the collections in
  # the order given (parameters first), each in jax's (sorted) order, as restore_latest's.
  flat = {key_path_str((c, *path)): ((c, *(k.key for k in path)), v) for c in fresh
          for path, v in jax.tree_util.tree_flatten_with_path(fresh[c])[0]}
  wanted = {p: tuple(v.shape) for p, (_, v) in flat.items() if not skipped(p)}

  def damaged(why: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"cannot initialise from checkpoint {step_dir}: it is "
                                  f"damaged ({why})", directory, {step_dir: why})

  try:
    sums, saved = recorded_checksums(step_dir), saved_shapes(step_dir)
  except Exception as e:  # missing or truncated JSON files: orbax raises several types
    if _is_transient(e):
      raise
    raise damaged(f"its metadata cannot be read ({_first_line(e)})") from e
  saved = {p: s for p, s in saved.items() if p.split("/")[0] in fresh and not skipped(p)}
  problem = mismatch(saved, wanted)
  if problem is not None:
    raise ValueError(f"cannot initialise from checkpoint {step_dir}: it does not fit the "
                     f"model this config builds: {problem}")
  item = flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
       for p, (k, v) in flat.items() if not skipped(p)})
  got = {}
  if item:
    # A partial restore: only these leaves are read, whatever else the checkpoint holds.
    try:
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(step_dir / _ITEM, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
    except Exception as e:  # TensorStore reports a truncated file as a bare Exception
      if _is_transient(e):
        raise
      raise damaged(_unreadable(e)) from e
    got = flax.traverse_util.flatten_dict(restored)
    try:
      _verify({"/".join(k): v for k, v in got.items()}, sums)
    except _Damaged as e:
      raise damaged(str(e)) from e
  out = {k: got.get(k, v) for p, (k, v) in flat.items()}
  return ({c: fresh[c] for c in fresh} | flax.traverse_util.unflatten_dict(out), found[-1],
          step_dir)
