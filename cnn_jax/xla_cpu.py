"""XLA CPU speed workarounds: flag defaults for the command-line entry points
``cnn_jax.train`` and ``.evaluate``, and a materialization boundary for the train step.

**Flags.** jaxlib 0.10.x sends each CPU convolution to the YNNPACK library by default.
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` keeps them on XLA's own
(Eigen) convolutions, which ran a ResNet-20 train step faster, measured side by side: 1.15x on
the 2-core EPYC VM of the earlier runs, 2.5x on a 2-core AVX2-only EPYC VM
(``benchmarks/train_step_cpu.py``; docs/performance.md). The command-line entry points
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
it. See docs/performance.md for the measured step times.

**Memory allocator** (:func:`find_tcmalloc`, :func:`allocator_hint`). XLA CPU allocates each
step's temporary buffers anew; glibc's ``malloc`` serves blocks that large with fresh
``mmap`` pages and unmaps them on ``free``, so every step page-faults its working set in again
(about 99,000 minor faults/s and 20% of a ResNet-20 training process's CPU samples in the
kernel at batch 256 on a 2-core EPYC, ``perf``). tcmalloc keeps freed pages for reuse (about
500 faults/s in the same run). It has to be loaded before the process starts
(``LD_PRELOAD``), so ``cnn_jax.train`` only advises it, in one stderr line, when it runs on
CPU under Linux with no allocator preloaded. Measured step times: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from typing import Iterator, Mapping, MutableMapping, Sequence

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


TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                "/usr/lib", "/usr/local/lib")
_PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def find_tcmalloc(dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
  """Path of the first tcmalloc shared library (:data:`TCMALLOC_NAMES`) found in ``dirs``, or
  None. Debian/Ubuntu install it with ``apt install libtcmalloc-minimal4``."""
  for d in dirs:
    for name in TCMALLOC_NAMES:
      path = os.path.join(d, name)
      if os.path.isfile(path):
        return path
  return None


def allocator_hint(environ: Mapping[str, str] | None = None, platform: str | None = None,
                   dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
  """The advice ``cnn_jax.train`` prints on CPU (see the module docstring), or None.

  Args:
    environ: the process environment (default ``os.environ``); its ``LD_PRELOAD`` is checked.
    platform: ``sys.platform`` by default; the advice is for ``'linux'`` (glibc) only.
    dirs: where to look for the library to suggest (:func:`find_tcmalloc`); when none is
      there, the advice says how to install it.

  Returns:
    None when not on Linux or when ``LD_PRELOAD`` already names tcmalloc, jemalloc or
    mimalloc; else one line with the ``LD_PRELOAD`` to use.
  """
  environ = os.environ if environ is None else environ
  platform = sys.platform if platform is None else platform
  preload = environ.get("LD_PRELOAD", "")
  if platform != "linux" or any(a in preload for a in _PRELOADED_ALLOCATORS):
    return None
  tcmalloc = find_tcmalloc(dirs)
  how = (f"LD_PRELOAD={tcmalloc}" if tcmalloc else
         "LD_PRELOAD=<libtcmalloc_minimal.so.4> (apt install libtcmalloc-minimal4)")
  return (f"CPU train steps run faster with tcmalloc, which reuses XLA's per-step buffers "
          f"instead of page-faulting them in again (docs/performance.md): start with {how}")


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


def resolve_materialize(setting: str, conv_backend: str, platform: str | None = None) -> bool:
  """What config key ``materialize_conv_inputs`` means for a run: ``'on'`` True, ``'off'``
  False, ``'auto'`` True only on the CPU backend with XLA's convolutions (``conv_backend ==
  'xla'``, resolved). Under oneDNN's convolutions (:mod:`cnn_jax.ops.onednn_conv`) no
  weight-gradient transpose exists to recompute into, and the boundaries only cost: ResNet-20's
  train step, batch 128, ran at 641 images/s with them and 717 without (2-core Intel Xeon,
  2026-12-07; experiments/performance_log.md, entry 16).

  Args:
    setting: ``'auto'``, ``'on'`` or ``'off'``.
    conv_backend: ``'xla'`` or ``'onednn'`` (:func:`cnn_jax.ops.cpu_conv.resolve_backend`).
    platform: JAX's backend name; default ``jax.default_backend()``.
  """
  if setting != "auto":
    return setting == "on"
  return (platform or jax.default_backend()) == "cpu" and conv_backend == "xla"


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
