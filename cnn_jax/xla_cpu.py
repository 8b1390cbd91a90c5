"""XLA CPU flag defaults for the command-line entry points ``cnn_jax.train`` and ``.evaluate``.

jaxlib 0.10.x sends each CPU convolution to the YNNPACK library by default.
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
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import MutableMapping

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
