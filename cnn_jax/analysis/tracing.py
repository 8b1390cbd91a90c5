"""Trace a Flax model's forward pass to a jaxpr, tagging every module call.

Shared by :mod:`cnn_jax.summary` (params/MACs per layer) and
:mod:`cnn_jax.analysis.receptive_field`. Each module method call is intercepted with
``flax.linen.intercept_methods`` and run under ``jax.named_scope('cnnjaxL<k>')``; the tag
ends up in the name stack of every jaxpr equation traced inside that call, so analyses of
the jaxpr can attribute equations to module calls. Nothing is computed: the variables come
from ``jax.eval_shape`` and the forward pass from ``jax.make_jaxpr``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.ops import depthwise

TAG = re.compile(r"cnnjaxL(\d+)")


@dataclasses.dataclass
class ModuleCall:
  """One intercepted module method call.

  Attributes:
    path: module path joined by '/', '' for the root model.
    type: class name (``'Conv'``; ``'Conv.encode'`` for a method other than ``__call__``).
    depth: nesting depth (root 0).
    parent: index of the enclosing call, ``None`` for the root.
    output_shape: output shape (a tuple of shapes for several outputs).
    params: the module's own ``params`` entries (0 on a shared module's later calls).
  """
  path: str
  type: str
  depth: int
  parent: int | None
  output_shape: Any = None
  params: int = 0


@dataclasses.dataclass
class TracedModel:
  """Result of :func:`trace_model`: the jaxpr, the module calls and the placeholders.

  ``closed_jaxpr.jaxpr.invars[-1]`` is the image batch ``(N, H, W, C)``; the others are
  the flattened variables.
  """
  closed_jaxpr: Any
  calls: list[ModuleCall]
  variables: Any
  x: jax.ShapeDtypeStruct


def tags_of(name_stack) -> tuple[int, ...]:
  """The module-call indices in a jaxpr equation's name stack, outermost first."""
  return tuple(int(t) for t in TAG.findall(str(name_stack)))


def _shape_of(tree):
  leaves = [l for l in jax.tree_util.tree_leaves(tree) if hasattr(l, "shape")]
  if len(leaves) == 1:
    return tuple(int(d) for d in leaves[0].shape)
  return tuple(tuple(int(d) for d in l.shape) for l in leaves)


def _own_params(module) -> int:
  try:
    variables = module.variables
  except Exception:  # unbound or no scope: nothing owned
    return 0
  params = variables.get("params", {})
  # Leaves directly in this scope; dict entries belong to child modules.
  return sum(math.prod(v.shape) for v in params.values() if hasattr(v, "shape"))


def placeholders(model: nn.Module, input_shape, batch: int = 1, dtype=jnp.float32):
  """``(variables, x)`` as ``jax.ShapeDtypeStruct`` trees for an ``(H, W, C)`` image.

  Raises:
    ValueError: ``input_shape`` not of length 3 or ``batch < 1``.
  """
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  x = jax.ShapeDtypeStruct((batch, *[int(d) for d in input_shape]), dtype)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return variables, x


def conv_jaxpr(fn: Callable, *args, **kwargs):
  """``jax.make_jaxpr(fn)(*args, **kwargs)`` with every convolution as one
  ``conv_general_dilated`` op, whatever the backend.

  Analysis (MACs, receptive fields, layer tables) is about the mathematical convolution:
  the trace runs inside :func:`cnn_jax.ops.depthwise.xla_convs`, so the CPU tap path for
  depthwise convs does not show up as ``K*K`` multiplies and adds.

  Returns:
    The ``ClosedJaxpr``.
  """
  with depthwise.xla_convs():
    return jax.make_jaxpr(fn)(*args, **kwargs)


def trace_model(model: nn.Module, input_shape=(32, 32, 3), batch: int = 1,
                dtype=jnp.float32) -> TracedModel:
  """Traces ``model.apply(v, x, train=False)`` with every module call tagged.

  Args:
    model: unbound Flax Linen module taking NHWC ``(N, H, W, C)`` input.
    input_shape: ``(H, W, C)`` of one image.
    batch: N.
    dtype: input dtype.

  Returns:
    A :class:`TracedModel`.

  Raises:
    ValueError: bad ``input_shape``/``batch``; whatever the model raises for the shape.
  """
  variables, x = placeholders(model, input_shape, batch, dtype)
  calls: list[ModuleCall] = []
  stack: list[int] = []
  seen: set[str] = set()

  def interceptor(next_fun, args, kwargs, context):
    name = context.method_name
    if name == "setup" or (name.startswith("_") and name != "__call__"):
      return next_fun(*args, **kwargs)
    mod = context.module
    idx = len(calls)
    path = "/".join(mod.path) if hasattr(mod, "path") else (mod.name or "")
    typ = type(mod).__name__ + ("" if name == "__call__" else f".{name}")
    calls.append(ModuleCall(path, typ, len(stack), stack[-1] if stack else None))
    stack.append(idx)
    try:
      with jax.named_scope(f"cnnjaxL{idx}"):
        y = next_fun(*args, **kwargs)
    finally:
      stack.pop()
    calls[idx].output_shape = _shape_of(y)
    if path not in seen:  # a shared module's params are counted on its first call only
      seen.add(path)
      calls[idx].params = _own_params(mod)
    return y

  def fwd(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  return TracedModel(conv_jaxpr(fwd, variables, x), calls, variables, x)
