"""XLA CPU speed workarounds: flag defaults for the command-line entry points
``cnn_jax.train`` and ``.evaluate``, and a materialization boundary for the train step.

**Flags.** jaxlib 0.10.x sends each CPU convolution to the YNNPACK library by default.
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` keeps them on XLA's own
(Eigen) convolutions, which ran a ResNet-20 train step faster, measured side by side: 1.15x on
the 2-core EPYC VM of the earlier runs, 2.5x on a 2-core AVX2-only EPYC VM
(``benchmarks/train_step_cpu.py``; README, "Speed on CPU"). The command-line entry points
add that flag to ``XLA_FLAGS`` before JAX creates its backends (XLA reads ``XLA_FLAGS`` once,
at the first computation, not at ``import jax``), print that they did, and record
``XLA_FLAGS`` in the run's provenance. They leave ``XLA_FLAGS`` alone when it already sets
``xla_cpu_experimental_ynn_fusion_type``, when ``CNN_JAX_KEEP_XLA_FLAGS=1``, and for any
other jaxlib, where the flag may not exist (XLA aborts on an unknown flag). Importing
:mod:`cnn_jax` never touches the environment: in a notebook, set ``XLA_FLAGS`` yourself
before the first JAX computation.

**Materialized conv inputs** (:func:`materialize`, :func:`materialized_conv_inputs`). The
weight gradient of an NHWC convolution is itself a convolution over the input laid out
channel-major, (C, H, W, N), so XLA CPU inserts a transpose of every conv input into the
backward pass, and fuses into that transpose a recomputation of the input's producers, the
BatchNorm/add/ReLU chain of the residual stage (seen in the optimized HLO: the fused
transpose of the last block of a stage reads the conv outputs and BN statistics of every
block before it). Recomputed element by element in transposed (strided) order, that chain
took 581 ms of thread time in a 1,235 ms ResNet-20 step on a 2-core AVX2 CPU.
``lax.optimization_barrier`` does not stop it: XLA CPU expands barriers away before fusion
(same fusions in the optimized HLO with and without). A ``lax.cond`` boundary does: XLA
never fuses across a conditional, so the conv input is stored once and the transpose reads
it. See README, "Speed on CPU", for the measured step times.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from typing import Iterator, MutableMapping

import flax.linen as nn
import jax
import jax.numpy as jnp

YNN_CONV_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
KEEP_ENV = "CNN_JAX_KEEP_XLA_FLAGS"
_TUNED_JAXLIB_PREFIX = "0.10."  # the jaxlib series the flag was measured on


def installed_jaxlib_version() -> str:
  """The installed jaxlib's version string (``importlib.metadata``), '' if none is installed."""
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def default_xla_flags(current: str, jaxlib_version: str | None = None) -> str:
  """``XLA_FLAGS`` with :data:`YNN_CONV_OFF` appended where it applies.

  Args:
    current: the present ``XLA_FLAGS`` value ('' if unset).
    jaxlib_version: e.g. ``'0.10.2'``; default: :func:`installed_jaxlib_version`.

  Returns:
    ``current`` unchanged unless ``jaxlib_version`` is 0.10.x and ``current`` does not set
    ``xla_cpu_experimental_ynn_fusion_type`` already; else ``current`` plus the flag.
  """
  if jaxlib_version is None:
    jaxlib_version = installed_jaxlib_version()
  if (not jaxlib_version.startswith(_TUNED_JAXLIB_PREFIX)
      or "xla_cpu_experimental_ynn_fusion_type" in current):
    return current
  return f"{current} {YNN_CONV_OFF}".strip()


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None,
                       jaxlib_version: str | None = None) -> bool:
  """Sets ``environ['XLA_FLAGS']`` to :func:`default_xla_flags` of it, unless
  ``environ[KEEP_ENV] == '1'``. Call before the first JAX computation of the process.

  Args:
    environ: the environment to edit (default ``os.environ``).
    jaxlib_version: as in :func:`default_xla_flags`.

  Returns:
    True if ``XLA_FLAGS`` was changed.
  """
  environ = os.environ if environ is None else environ
  if environ.get(KEEP_ENV) == "1":
    return False
  current = environ.get("XLA_FLAGS", "")
  new = default_xla_flags(current, jaxlib_version)
  if new == current:
    return False
  environ["XLA_FLAGS"] = new
  return True


def apply_and_report(prog: str) -> None:
  """:func:`apply_cpu_defaults` on ``os.environ``, printing one line to stderr (stdout may be
  JSON lines) naming the flag and the opt-out when it changed ``XLA_FLAGS``; ``prog`` names
  the entry point in that line."""
  if apply_cpu_defaults():
    print(f"{prog}: XLA_FLAGS += {YNN_CONV_OFF} (jaxlib 0.10 CPU convolutions on XLA's Eigen "
          f"path, faster train steps; {KEEP_ENV}=1 keeps XLA's default)", file=sys.stderr,
          flush=True)


def materialize(x: jax.Array, always_true: jax.Array) -> jax.Array:
  """Returns ``x`` unchanged, computed into memory at this point: XLA fuses none of its
  producers into its consumers (no recomputation downstream).

  Implemented as ``lax.cond(always_true, identity, zeros_like, x)``: XLA does not fuse across
  a conditional, and cannot simplify it away because the predicate is only known at run
  time. The result equals ``x`` exactly when ``always_true`` is True, which is the caller's
  contract (the train step passes ``state.step >= 0``); the gradient is the identity too.

  Args:
    x: any array, e.g. a conv input ``(N, H, W, C)``; any dtype.
    always_true: a traced boolean scalar that is True at run time.

  Returns:
    ``x``, same shape and dtype.
  """
  return jax.lax.cond(always_true, lambda a: a, jnp.zeros_like, x)


@contextlib.contextmanager
def materialized_conv_inputs(always_true: jax.Array) -> Iterator[None]:
  """Within the block, every ``flax.linen.Conv`` call gets its input through
  :func:`materialize` (a Flax method interceptor, ``nn.intercept_methods``; modules and
  their parameters are unchanged). For use around ``model.apply`` inside a jitted train step
  on CPU, where it removes the recomputation described in the module docstring."""

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.Conv) and args:
      args = (materialize(args[0], always_true), *args[1:])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
