"""Checkpoints with orbax ``CheckpointManager``: save every N steps, keep the last k, resume.

Orbax writes each step to a temporary directory and renames it when complete, so an
interrupted save never leaves a half-written checkpoint that a resume would pick up. The
data position is not stored: it is a function of the step (see ``cnn_jax.train``).
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


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
  """
  step = mngr.latest_step()
  if step is None:
    return None
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_like(tree, sharding):
  """``jax.ShapeDtypeStruct`` leaves of ``tree`` carrying ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
