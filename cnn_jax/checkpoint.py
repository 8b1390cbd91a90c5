"""Checkpoints with orbax ``CheckpointManager``: save every N steps, keep the last k, resume.

Orbax writes each step to a temporary directory and renames it when complete, so an
interrupted save never leaves a half-written checkpoint that a resume would pick up. The
data position is not stored: it is a function of the step (see ``cnn_jax.train``).

A checkpoint that does not fit the model it is restored into (another architecture, a
changed model definition) is refused naming the first mismatched array path and both
shapes (:func:`restore_latest`, :func:`restore_variables`), from the checkpoint's metadata,
before any array is read.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import flax
import jax
import orbax.checkpoint as ocp

# The item name under which CheckpointManager stores a single-item checkpoint:
# <workdir>/checkpoints/<step>/default.
_ITEM = "default"


def manager(workdir: str | pathlib.Path, keep: int) -> ocp.CheckpointManager:
  """A manager over ``<workdir>/checkpoints`` keeping the newest ``keep`` steps."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
  """The steps of the complete checkpoints in ``<workdir>/checkpoints`` (ascending; ``[]``
  when there is none). Unfinished saves (orbax's temporary directories) are not listed."""
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves ``state`` (a pytree of ``jax.Array``) as ``step`` (asynchronously)."""
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """Restores the newest checkpoint into the structure, dtypes and shardings of
  ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with ``.sharding``, as from
  ``jax.eval_shape``). Returns ``None`` when there is no checkpoint.

  A checkpoint written on N devices restores onto whatever mesh ``abstract_state``
  names: orbax reads each array and lays it out by the target sharding.

  Raises:
    ValueError: the checkpoint's arrays do not fit ``abstract_state`` (a changed model):
      names the step directory, the first mismatched path (``params/Dense_0/kernel``) and
      both shapes. Orbax's own message names neither path nor step.
  """
  step = mngr.latest_step()
  if step is None:
    return None
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError as e:
    step_dir = pathlib.Path(mngr.directory) / str(step)
    problem = mismatch(saved_shapes(step_dir), _flat_shapes(abstract_state))
    if problem is None:
      raise  # not a shape or structure mismatch: orbax's message is all there is
    raise ValueError(f"cannot resume from checkpoint {step_dir}: it does not fit the model "
                     f"this config builds: {problem}") from e


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
  saved = {p: s for p, s in saved_shapes(step_dir).items()
           if p.split("/")[0] in fresh and not skipped(p)}
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
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(step_dir / _ITEM, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
    got = flax.traverse_util.flatten_dict(restored)
  out = {k: got.get(k, v) for p, (k, v) in flat.items()}
  return ({c: fresh[c] for c in fresh} | flax.traverse_util.unflatten_dict(out), found[-1],
          step_dir)
