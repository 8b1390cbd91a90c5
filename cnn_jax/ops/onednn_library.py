"""The oneDNN custom-call library of :mod:`cnn_jax.ops`: finding oneDNN, compiling the C++
handlers once, loading them and registering them with XLA.

The handlers (XLA FFI, ``jax.ffi``) are ``onednn_conv.cc`` (convolution forward, input
gradient, kernel gradient: :mod:`cnn_jax.ops.onednn_conv`) and ``onednn_batch_norm.cc``
(batch normalization forward and backward: :mod:`cnn_jax.ops.onednn_batch_norm`), shipped
beside this file with their shared header ``onednn_common.h``.

Requirements (checked by :func:`unavailable_reason`, which says what is missing): a C++17
compiler (``$CXX``, else ``g++`` or ``c++``), the headers that jaxlib ships for XLA FFI, and
oneDNN 3.x with OpenMP threading: ``pip install 'cnn_jax[onednn]'`` installs Intel's wheels
``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` (headers and ``libdnnl.so`` under
``sys.prefix``; ``$CNN_JAX_ONEDNN_ROOT`` names another prefix). On first use, :func:`load`
compiles the sources into ``$CNN_JAX_CACHE_DIR/onednn/`` (default ``~/.cache/cnn_jax``), keyed
by a hash of the sources, the compiler and the jaxlib and oneDNN versions, written to a
temporary name and renamed into place (a killed build leaves no half-written library), and
registers the handlers with XLA once per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import jax

_HERE = pathlib.Path(__file__).parent
SOURCES = (_HERE / "onednn_conv.cc", _HERE / "onednn_batch_norm.cc")
HEADER = _HERE / "onednn_common.h"
# Registered name (after FFI_PREFIX) -> the library's handler symbol.
TARGETS = {"conv_fwd": "CnnJaxOnednnConvFwd", "conv_bwd_data": "CnnJaxOnednnConvBwdData",
           "conv_bwd_weights": "CnnJaxOnednnConvBwdWeights",
           "conv_fwd_bias": "CnnJaxOnednnConvFwdBias",
           "conv_bwd_weights_bias": "CnnJaxOnednnConvBwdWeightsBias",
           "batch_norm_fwd": "CnnJaxOnednnBatchNormFwd",
           "batch_norm_bwd": "CnnJaxOnednnBatchNormBwd"}
FFI_PREFIX = "cnn_jax_onednn_"

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # the one registered library of this process (XLA's registry is global)


def onednn_prefix() -> pathlib.Path | None:
  """The install prefix holding ``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so``:
  ``$CNN_JAX_ONEDNN_ROOT`` if set, else the first of ``sys.prefix`` and the user base
  (``pip install --user``) that holds both; ``None`` if none does."""
  env = os.environ.get("CNN_JAX_ONEDNN_ROOT")
  candidates = [pathlib.Path(env)] if env else [pathlib.Path(sys.prefix)]
  if not env:
    import site
    candidates.append(pathlib.Path(site.getuserbase()))
  for root in candidates:
    if (root / "include/oneapi/dnnl/dnnl.hpp").is_file() and (root / "lib/libdnnl.so").exists():
      return root
  return None


def _compiler() -> str | None:
  cxx = os.environ.get("CXX")
  if cxx:
    return shutil.which(cxx)
  return shutil.which("g++") or shutil.which("c++")


def unavailable_reason() -> str | None:
  """Why :func:`load` cannot work here, in one sentence; ``None`` when it can (a compiler,
  oneDNN's headers and library, and jaxlib's FFI headers are present, or the library is
  already loaded)."""
  if _loaded:
    return None
  if jax.default_backend() != "cpu":
    return f"the default JAX backend is {jax.default_backend()!r}, not 'cpu'"
  if onednn_prefix() is None:
    return ("oneDNN not found: `pip install 'cnn_jax[onednn]'` (Intel's onednn-cpu-gomp and "
            "onednn-devel-cpu-gomp wheels) or set CNN_JAX_ONEDNN_ROOT to a prefix holding "
            "include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so")
  if _compiler() is None:
    return "no C++ compiler found ($CXX, g++ or c++) to build the oneDNN custom calls"
  if not (pathlib.Path(jax.ffi.include_dir()) / "xla/ffi/api/ffi.h").is_file():
    return f"jaxlib's XLA FFI headers are missing under {jax.ffi.include_dir()}"
  return None


def available() -> bool:
  """Whether :func:`load` can provide the oneDNN kernels in this process."""
  return unavailable_reason() is None


def _cache_dir() -> pathlib.Path:
  base = os.environ.get("CNN_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "cnn_jax")
  return pathlib.Path(base) / "onednn"


def _dist_version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return ""


def build(verbose: bool = False) -> pathlib.Path:
  """Compiles :data:`SOURCES` (with ``onednn_common.h``) into one shared library, once per
  hash of the sources, the compiler command and the jaxlib and oneDNN versions.

  Returns:
    The library's path under ``$CNN_JAX_CACHE_DIR/onednn/``.

  Raises:
    RuntimeError: :func:`unavailable_reason` names a missing piece, or the compiler failed
      (its command and output are in the message).
  """
  reason = unavailable_reason()
  if reason:
    raise RuntimeError(f"cnn_jax oneDNN kernels unavailable: {reason}")
  prefix, cxx = onednn_prefix(), _compiler()
  cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
         f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", *map(str, SOURCES),
         f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}"]
  key = hashlib.sha256("\0".join([
      *(f.read_text() for f in (*SOURCES, HEADER)), " ".join(cmd[:-3 - len(SOURCES)]),
      str(prefix), _dist_version("jaxlib"),
      (prefix / "include/oneapi/dnnl/dnnl_version.h").read_text()]).encode()).hexdigest()[:16]
  out = _cache_dir() / f"libcnn_jax_onednn-{key}.so"
  if out.is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"cnn_jax oneDNN kernels: compiling {', '.join(map(str, SOURCES))} failed "
                         f"(exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    if verbose:
      print(f"cnn_jax: built {out}", file=sys.stderr)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


def load() -> str:
  """Builds (if needed) and loads the library, and registers its FFI targets (:data:`TARGETS`)
  with XLA under the names ``'cnn_jax_onednn_' + key``.

  Idempotent and thread-safe. Returns the oneDNN version string the library runs on
  (e.g. ``'3.2.0'``).

  Raises:
    RuntimeError: as :func:`build`.
  """
  with _lock:
    if not _loaded:
      lib = ctypes.cdll.LoadLibrary(str(build()))
      for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(FFI_PREFIX + name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      v = lib.CnnJaxOnednnVersion()
      _loaded["lib"] = lib
      _loaded["version"] = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return str(_loaded["version"])


def library() -> ctypes.CDLL:
  """The loaded library (:func:`load` first), for its plain C helpers (e.g.
  ``CnnJaxOnednnBatchNormWorkspaceBytes``).

  Raises:
    RuntimeError: as :func:`build`.
  """
  load()
  return _loaded["lib"]  # type: ignore[return-value]

