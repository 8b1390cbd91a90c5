"""Data parallelism with today's JAX API: a 1-D ``('data',)`` mesh over every device.

What ``jax.pmap`` meant, without ``pmap`` (in maintenance mode since JAX 0.8): parameters
and optimizer state are replicated (``PartitionSpec()``), the global batch is sharded on
its leading axis (``PartitionSpec('data')``), and ``jax.jit`` inserts the gradient
all-reduce. On one device every sharding is trivial and the same code runs unchanged.
Each process feeds only its own rows; ``jax.make_array_from_process_local_data`` stitches
them into one global array without any host seeing the whole batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Calls ``jax.distributed.initialize()`` when the environment asks for a multi-process run.

  Triggers: ``JAX_COORDINATOR_ADDRESS`` set (with ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``), or a TPU pod slice (``TPU_WORKER_HOSTNAMES`` naming several hosts),
  where JAX auto-detects the rest. Must run before any other JAX call.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    jax.distributed.initialize()


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading (example) axis split over the ``'data'`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "batch_size") -> int:
  """Returns the per-process batch size of global ``batch_size``.

  Raises:
    ValueError: ``batch_size`` does not divide by the number of devices (names ``key``).
  """
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"config key {key} = {batch_size} must divide by the number of devices "
                     f"({n}); use e.g. {max(n, batch_size // n * n)}")
  return batch_size // jax.process_count()


def process_rows(global_rows: int) -> slice:
  """This process's contiguous share of ``global_rows`` rows of a global batch.

  Every process owns equally many devices, and ``jax.devices()`` lists them process by
  process, so rows ``[i * B/p, (i+1) * B/p)`` are the rows process ``i``'s devices hold.
  """
  per = global_rows // jax.process_count()
  i = jax.process_index()
  return slice(i * per, (i + 1) * per)


def to_host(tree):
  """Copies a tree of replicated ``jax.Array`` to NumPy on every process.

  ``jax.device_get`` refuses arrays that span other processes' devices; a replicated
  array's local shard is the whole value, so it is read from there.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def global_batch(sharding: NamedSharding, *local_arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Stitches each process's local rows into global arrays sharded by ``sharding``."""
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in local_arrays)
