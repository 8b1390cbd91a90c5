"""2-D convolution by oneDNN on CPU, called from inside XLA programs (an XLA FFI custom call).

Why: jaxlib 0.10's CPU backend runs convolutions through Eigen (or YNNPACK) and computes bf16
ones in fp32 (docs: ``experiments/performance_log.md``, entries 7 and 15). On the 2-core
Xeon of issue #24 its kernel gradient of a 16-channel 3x3 conv reaches 12-43 GFLOP/s where
oneDNN, the library PyTorch calls, reaches 150-200 in fp32, and with AMX about 1,000-1,900
in bf16. This module gives JAX the same kernels: :func:`conv` is a ``jax.custom_vjp``
whose forward, input gradient and kernel gradient are oneDNN primitives
(``convolution_forward``, ``convolution_backward_data``, ``convolution_backward_weights``;
oneDNN developer guide, "Convolution"), run as ``jax.ffi.ffi_call`` custom calls on the
buffers XLA already holds, in JAX's NHWC / HWIO layout (no transposes; oneDNN reorders only
the small kernel tensor to its blocked layout). Everything around the convolutions (BatchNorm,
activations, the optimizer) stays XLA's and fuses as before.

Requirements (checked by :func:`unavailable_reason`, which says what is missing): a C++17
compiler (``$CXX``, else ``g++`` or ``c++``), the headers that jaxlib ships for XLA FFI, and
oneDNN 3.x with OpenMP threading: ``pip install 'cnn_jax[onednn]'`` installs Intel's wheels
``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` (headers and ``libdnnl.so`` under
``sys.prefix``; ``$CNN_JAX_ONEDNN_ROOT`` names another prefix). On first use,
:func:`load` compiles ``onednn_conv.cc`` (shipped beside this file) into
``$CNN_JAX_CACHE_DIR`` (default ``~/.cache/cnn_jax``), keyed by a hash of the source, the
compiler and the jaxlib and oneDNN versions, written to a temporary name and renamed into
place (a killed build leaves no half-written library), and registers the three handlers
with XLA once per process.

Scope (:func:`supports`): NHWC / HWIO, float32 or bfloat16 (input and kernel of one dtype),
any stride, non-negative padding, kernel dilation (``rhs_dilation``) and
``feature_group_count`` (grouped and depthwise); not ``lhs_dilation`` (transposed conv),
``batch_group_count`` or a ``preferred_element_type`` other than the input dtype. The kernel
gradient is accumulated in float32 by oneDNN and returned in the kernel's dtype. One device
only: XLA's SPMD partitioner does not know how to split a custom call and would gather the
batch, so :func:`cnn_jax.ops.cpu_conv.conv_backend` refuses ``'onednn'`` on a multi-device
mesh.
"""

from __future__ import annotations

import ctypes
import functools
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
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops.conv import resolve_padding
from cnn_jax.ops.depthwise import is_nhwc, output_hw

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"fwd": "CnnJaxOnednnConvFwd", "bwd_data": "CnnJaxOnednnConvBwdData",
            "bwd_weights": "CnnJaxOnednnConvBwdWeights"}
_FFI_PREFIX = "cnn_jax_onednn_conv_"
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)

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
    return "no C++ compiler found ($CXX, g++ or c++) to build the oneDNN custom call"
  if not (pathlib.Path(jax.ffi.include_dir()) / "xla/ffi/api/ffi.h").is_file():
    return f"jaxlib's XLA FFI headers are missing under {jax.ffi.include_dir()}"
  return None


def available() -> bool:
  """Whether :func:`load` can provide the oneDNN convolution in this process."""
  return unavailable_reason() is None


def _cache_dir() -> pathlib.Path:
  base = os.environ.get("CNN_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "cnn_jax")
  return pathlib.Path(base) / "onednn_conv"


def _dist_version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return ""


def build(verbose: bool = False) -> pathlib.Path:
  """Compiles ``onednn_conv.cc`` into a shared library (once per source/toolchain hash).

  Returns:
    The library's path under ``$CNN_JAX_CACHE_DIR/onednn_conv/``.

  Raises:
    RuntimeError: :func:`unavailable_reason` names a missing piece, or the compiler failed
      (its command and output are in the message).
  """
  reason = unavailable_reason()
  if reason:
    raise RuntimeError(f"cnn_jax oneDNN convolution unavailable: {reason}")
  prefix, cxx = onednn_prefix(), _compiler()
  cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
         f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(SOURCE),
         f"-L{prefix / 'lib'}", "-ldnnl", f"-Wl,-rpath,{prefix / 'lib'}"]
  key = hashlib.sha256("\0".join([
      SOURCE.read_text(), " ".join(cmd[:-4]), str(prefix), _dist_version("jaxlib"),
      (prefix / "include/oneapi/dnnl/dnnl_version.h").read_text()]).encode()).hexdigest()[:16]
  out = _cache_dir() / f"libcnn_jax_onednn_conv-{key}.so"
  if out.is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"cnn_jax oneDNN convolution: compiling {SOURCE} failed "
                         f"(exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    if verbose:
      print(f"cnn_jax: built {out}", file=sys.stderr)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


def load() -> str:
  """Builds (if needed) and loads the library, and registers its three FFI targets with XLA.

  Idempotent and thread-safe. Returns the oneDNN version string the library runs on
  (e.g. ``'3.2.0'``).

  Raises:
    RuntimeError: as :func:`build`.
  """
  with _lock:
    if not _loaded:
      lib = ctypes.cdll.LoadLibrary(str(build()))
      for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(_FFI_PREFIX + name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      v = lib.CnnJaxOnednnVersion()
      _loaded["lib"] = lib
      _loaded["version"] = f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return str(_loaded["version"])


def supports(lhs_shape, rhs_shape, dtype, rhs_dtype, padding, lhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             preferred_element_type=None) -> bool:
  """Whether :func:`conv` computes this ``lax.conv_general_dilated`` call (see the module
  docstring's scope): 2-D NHWC/HWIO, float32 or bfloat16 operands of one dtype, no
  ``lhs_dilation`` or ``batch_group_count``, non-negative padding, no empty dimension."""
  return (len(lhs_shape) == 4 and len(rhs_shape) == 4
          and is_nhwc(lhs_shape, rhs_shape, dimension_numbers)
          and jnp.dtype(dtype) == jnp.dtype(rhs_dtype)
          and any(jnp.dtype(dtype) == jnp.dtype(d) for d in _SUPPORTED_DTYPES)
          and (preferred_element_type is None
               or jnp.dtype(preferred_element_type) == jnp.dtype(dtype))
          and batch_group_count == 1 and all(v == 1 for v in (lhs_dilation or (1, 1)))
          and feature_group_count >= 1 and lhs_shape[3] == rhs_shape[2] * feature_group_count
          and rhs_shape[3] % feature_group_count == 0
          and (isinstance(padding, str) or all(p >= 0 for pair in padding for p in pair))
          and all(d > 0 for d in (*lhs_shape, *rhs_shape)))


def _attrs(strides, pads, dilation, groups):
  return dict(strides=np.asarray(strides, np.int64),
              padding=np.asarray([p for pair in pads for p in pair], np.int64),
              dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))


def _call(direction, out_shape, out_dtype, a, b, attrs):
  return jax.ffi.ffi_call(_FFI_PREFIX + direction, jax.ShapeDtypeStruct(out_shape, out_dtype),
                          vmap_method="sequential")(a, b, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, dilation, groups):
  ho, wo = output_hw(x.shape, w.shape, strides, pads, dilation)
  return _call("fwd", (x.shape[0], ho, wo, w.shape[3]), x.dtype, x, w,
               _attrs(strides, pads, dilation, groups))


def _conv_fwd(x, w, strides, pads, dilation, groups):
  return _conv(x, w, strides, pads, dilation, groups), (x, w)


def _conv_bwd(strides, pads, dilation, groups, res, g):
  x, w = res
  attrs = _attrs(strides, pads, dilation, groups)
  g = g.astype(x.dtype)
  dx = _call("bwd_data", x.shape, x.dtype, g, w, attrs)
  dw = _call("bwd_weights", w.shape, jnp.float32, x, g, attrs).astype(w.dtype)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x: jax.Array, w: jax.Array, strides=(1, 1), padding="VALID", dilation=(1, 1),
         feature_group_count: int = 1) -> jax.Array:
  """``lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=...)`` computed by oneDNN,
  differentiable (first order; ``jax.custom_vjp``).

  Args:
    x: ``(N, H, W, C_in)``, float32 or bfloat16.
    w: ``(K_h, K_w, C_in / G, C_out)``, HWIO, the dtype of ``x``; ``C_out`` divisible by G.
    strides: ``(s_h, s_w)`` pixels.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))`` pixels, >= 0.
    dilation: ``(d_h, d_w)`` kernel dilation (``rhs_dilation``), pixels.
    feature_group_count: G (``C_in`` for depthwise).

  Returns:
    ``(N, H_out, W_out, C_out)`` in the dtype of ``x`` (oneDNN accumulates in float32).

  Raises:
    ValueError: shapes, dtypes or padding outside :func:`supports`.
    RuntimeError: the library cannot be built or loaded (:func:`load`); a oneDNN failure at
      run time surfaces as XLA's error carrying oneDNN's message.
  """
  strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
  if not supports(x.shape, w.shape, x.dtype, w.dtype, padding,
                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                  feature_group_count=feature_group_count):
    raise ValueError(f"onednn_conv.conv: unsupported convolution x {x.shape} {x.dtype}, "
                     f"w {w.shape} {w.dtype}, padding {padding}, groups {feature_group_count} "
                     "(needs NHWC/HWIO float32 or bfloat16 of one dtype, padding >= 0)")
  load()
  pads = resolve_padding(padding, tuple(x.shape[1:3]), tuple(w.shape[:2]), strides, dilation)
  pads = tuple(tuple(int(p) for p in pair) for pair in pads)
  return _conv(x, w, strides, pads, dilation, int(feature_group_count))
