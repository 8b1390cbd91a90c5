"""Geometry checks of a model on an input size: the first layer that cannot work, by name.

A convolution or pooling window larger than its padded input leaves an empty feature map
(``floor((n + p_total - d(k-1) - 1) / s) + 1 < 1``, :func:`cnn_jax.ops.formulas.conv_output_size`).
XLA computes it without complaint; the failure, if any, comes layers later and names none
(a Dense initialiser dividing by a fan-in of 0, a NaN from a mean over nothing). Likewise a
channel mismatch (a residual add of 16 and 32 channels, a group count that does not divide
the input channels) fails inside JAX with shapes but no layer.

:func:`checked` is a context manager under which every Flax module call
(``flax.linen.intercept_methods``) and every ``flax.linen`` pooling call is checked while the
model is traced (``jax.eval_shape`` of its ``init``: no compute), raising
:class:`GeometryError` at the first layer whose window does not fit (with the formula's
values), that receives or returns an empty feature map, or inside which JAX rejects the
shapes (naming the innermost layer). :func:`check` runs one model on one input size.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import flax.linen.pooling as flax_pooling
import jax
import jax.numpy as jnp

from cnn_jax.ops import formulas


class GeometryError(ValueError, TypeError):
  """A layer whose window or channels do not fit its input; the message names the layer
  path (``'BasicBlock_3/Conv_1'``), its type, its input shape and the values at fault.

  A ``ValueError`` and a ``TypeError``: what JAX raised inside the layer was either.
  """


def _shapes(tree) -> list[tuple[int, ...]]:
  return [tuple(x.shape) for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


def _fmt(shapes: list[tuple[int, ...]]) -> str:
  return ", ".join(str(s) for s in shapes) if shapes else "no arrays"


def _as_tuple(v, n: int, default: int = 1) -> tuple:
  if v is None:
    return (default,) * n
  if isinstance(v, int):
    return (v,) * n
  return tuple(v)


def _axis_paddings(padding, n: int) -> list | None:
  """Each spatial axis's padding as :func:`formulas.padding_pair` takes it, or ``None`` for
  a padding this check does not model (``'CIRCULAR'``, ``'CAUSAL'``: never empty)."""
  if isinstance(padding, str):
    return [padding] * n if padding.upper() in ("SAME", "VALID") else None
  if isinstance(padding, int):
    return [padding] * n
  pads = list(padding)
  return pads if len(pads) == n else None


def _window_problem(what: str, spatial: Sequence[int], kernel: Sequence[int], strides,
                    padding, dilation) -> str | None:
  """Why a window leaves an empty output on ``spatial`` (formula values), or ``None``."""
  n = len(kernel)
  pads = _axis_paddings(padding, n)
  if pads is None or len(spatial) != n:
    return None
  strides, dilation = _as_tuple(strides, n), _as_tuple(dilation, n)
  for axis, (size, k, s, p, d) in enumerate(zip(spatial, kernel, strides, pads, dilation)):
    try:
      formulas.conv_output_size(size, k, s, p, d)
    except ValueError as e:
      return (f"{what} {tuple(kernel)}, strides {strides}, dilation {dilation}, padding "
              f"{padding!r} on spatial axis {axis} of size {size}: {e}")
  return None


def _conv_problem(module: nn.Module, x) -> str | None:
  """The window or channel problem of an ``nn.Conv``-like module on input ``x``."""
  kernel = _as_tuple(module.kernel_size, 1)
  n = len(kernel)
  if not hasattr(x, "shape") or len(x.shape) < n + 1:
    return None
  spatial = tuple(x.shape[-n - 1:-1])
  dilation_in = _as_tuple(getattr(module, "input_dilation", 1), n)
  spatial = tuple((m - 1) * di + 1 if m > 0 else 0 for m, di in zip(spatial, dilation_in))
  if 0 in spatial:
    return None  # an empty input: reported as such by the caller
  channels, groups = x.shape[-1], getattr(module, "feature_group_count", 1) or 1
  if channels % groups:
    return (f"the input's {channels} channels do not divide by feature_group_count = "
            f"{groups}")
  return _window_problem("kernel", spatial, kernel, module.strides, module.padding,
                         getattr(module, "kernel_dilation", 1))


def _is_conv(module: nn.Module) -> bool:
  return (isinstance(module, (nn.Conv, nn.ConvLocal))
          and not isinstance(module, nn.ConvTranspose))


@contextlib.contextmanager
def checked() -> Iterator[None]:
  """While active, module and pooling calls of Flax models traced in this thread are
  checked (see the module docstring).

  Raises:
    GeometryError: on entering a layer whose kernel, stride, dilation or padding leaves an
      empty output (the layer path, type and the output-size formula's values), that is
      given an empty feature map or a channel count its groups do not divide, or on any
      ``ValueError``, ``TypeError`` or ``ZeroDivisionError`` raised inside a layer (the
      innermost layer's path and input shapes, then the original message); also a pooling
      window that leaves an empty output (the enclosing layer's path).
  """
  stack: list[str] = []  # the module calls under way, innermost last, as 'path (Type)'
  last: dict[str, Any] = {}  # the last call that returned: its name and output shapes

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    module = context.module
    path = "/".join(module.path) if getattr(module, "path", None) else "<model>"
    name = f"layer {path} ({type(module).__name__})"
    inputs = _shapes(args)
    empty = [s for s in inputs if math.prod(s) == 0 and len(s) > 1]
    if empty:
      after = (f" after {last['name']} returned {_fmt(last['shapes'])}" if last else "")
      raise GeometryError(f"{name} receives an empty feature map of shape {empty[0]}{after}: "
                          f"an operation between the two (pooling, slicing, reshape) left "
                          f"nothing; use a larger input or smaller strides/windows")
    problem = _conv_problem(module, args[0]) if _is_conv(module) and args else None
    if problem:
      raise GeometryError(f"{name} with input shape {_fmt(inputs)}: {problem}")
    stack.append(name)
    try:
      out = next_fun(*args, **kwargs)
    except GeometryError:
      raise
    except (ValueError, TypeError, ZeroDivisionError) as e:
      raise GeometryError(f"{name} with input shape {_fmt(inputs)}: "
                          f"{type(e).__name__}: {e}") from e
    finally:
      stack.pop()
    outputs = _shapes(out)
    empty = [s for s in outputs if math.prod(s) == 0 and len(s) > 1]
    if empty:
      raise GeometryError(f"{name} returns an empty feature map of shape {empty[0]} from "
                          f"input shape {_fmt(inputs)}")
    last.update(name=name, shapes=outputs)
    return out

  real_pool = flax_pooling.pool

  def pool(inputs, init, reduce_fn, window_shape, strides, padding):
    n = len(window_shape)
    spatial = tuple(inputs.shape[-n - 1:-1]) if inputs.ndim >= n + 1 else ()
    problem = (_window_problem("pooling window", spatial, window_shape, strides, padding, 1)
               if spatial and 0 not in spatial else None)
    if problem:
      where = stack[-1] if stack else "the model"
      raise GeometryError(f"pooling in {where} on input shape {tuple(inputs.shape)}: {problem}")
    return real_pool(inputs, init, reduce_fn, window_shape, strides, padding)

  flax_pooling.pool = pool  # max_pool, avg_pool and min_pool call the module-level pool
  try:
    with nn.intercept_methods(interceptor):
      yield
  finally:
    flax_pooling.pool = real_pool


def check(model: nn.Module, input_shape: Sequence[int], dtype=jnp.float32) -> Any:
  """Traces ``model.init`` on one ``input_shape`` ``(H, W, C)`` image under :func:`checked`;
  returns the variables' ``jax.ShapeDtypeStruct`` tree. Nothing is computed.

  Raises:
    GeometryError: see :func:`checked`.
  """
  x = jax.ShapeDtypeStruct((1, *[int(d) for d in input_shape]), dtype)
  with checked():
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
