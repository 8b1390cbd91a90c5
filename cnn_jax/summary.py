"""Per-layer summary of a model: output shapes, parameters and MACs, derived from the model.

``python -m cnn_jax.summary resnet20 --input 32x32x3 --num-classes 10`` prints a
torchinfo-like table. Everything comes from tracing the model itself (``jax.eval_shape``
for the variables, ``jax.make_jaxpr`` for the forward pass, so no real compute happens):

* rows: every Flax module call, intercepted with ``flax.linen.intercept_methods``;
* params: the module's own ``params`` leaves (BatchNorm statistics are not parameters);
* MACs: each ``conv_general_dilated`` / ``dot_general`` in the jaxpr, attributed to the
  innermost module whose call it was traced in (a name-stack tag pushed by the
  interceptor). So ``nn.Conv``, ``nn.ConvTranspose``, ``nn.Dense``, ``nn.DenseGeneral``,
  ``nn.Einsum`` and the attention ``einsum``s of any module are all counted.

Not counted: normalisation, activations, residual adds, pooling, softmax (see
:mod:`cnn_jax.analysis.counting`). FLOPs = 2 * MACs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.analysis.counting import macs_by_tag
from cnn_jax.analysis.tracing import placeholders, trace_model
from cnn_jax.ops import depthwise


@dataclasses.dataclass
class LayerRow:
  """One module call of the forward pass.

  Attributes:
    path: module path, e.g. ``'BasicBlock_0/Conv_0'`` (``''`` for the root model).
    type: module class name, e.g. ``'Conv'`` (``'Conv.encode'`` for a non-call method).
    depth: nesting depth (root = 0).
    output_shape: shape of the output for the whole batch, e.g. ``(1, 32, 32, 16)``;
      a tuple of shapes when the module returns several arrays.
    params: the module's *own* parameters (not its children's); 0 on repeated calls of
      a shared module so that the column sums to the model's total.
    macs: MACs of the conv/dot_general ops traced directly in this call, per image.
    params_total: params including all children (torchinfo's "recursive" count).
    macs_total: MACs including all children, per image.
  """
  path: str
  type: str
  depth: int
  output_shape: Any
  params: int
  macs: int
  params_total: int = 0
  macs_total: int = 0


def _placeholders(model, input_shape, batch, dtype):
  return placeholders(model, input_shape, batch, dtype)


def layer_table(model: nn.Module, input_shape=(32, 32, 3), batch: int = 1,
                dtype=jnp.float32) -> list[LayerRow]:
  """Per-layer rows (path, type, output shape, params, MACs) of ``model``'s forward pass.

  Args:
    model: an unbound Flax Linen module called as ``model.apply(v, x, train=False)``.
    input_shape: one image, ``(H, W, C)`` in pixels/channels (NHWC without N).
    batch: batch size to trace with; MACs are reported per image (divided by it).
    dtype: input dtype (float32 by default).

  Returns:
    Rows in call order (root first). ``sum(r.params)`` equals
    ``cnn_jax.models.count_params`` of the initialised variables, and ``sum(r.macs)``
    equals :func:`count_macs`.

  Raises:
    ValueError: ``input_shape`` is not ``(H, W, C)`` or ``batch < 1``.
    Whatever the model raises for an input it cannot take (e.g. too small an image).
  """
  traced = trace_model(model, input_shape, batch, dtype)
  rows = [LayerRow(path=c.path, type=c.type, depth=c.depth, output_shape=c.output_shape,
                   params=c.params, macs=0) for c in traced.calls]
  parents = [c.parent for c in traced.calls]
  closed = traced.closed_jaxpr
  counts = macs_by_tag(closed.jaxpr)
  untagged = counts.pop(None, 0)
  for tag, m in counts.items():
    rows[tag].macs += m
  if rows:
    rows[0].macs += untagged  # ops outside every module belong to the model
  for r in rows:
    if r.macs % batch:
      raise AssertionError(f"MACs {r.macs} of {r.path!r} not divisible by batch {batch}")
    r.macs //= batch
  # Recursive totals: add each row into all of its ancestors.
  for r in rows:
    r.params_total, r.macs_total = r.params, r.macs
  for i in range(len(rows) - 1, -1, -1):
    p = parents[i]
    if p is not None:
      rows[p].params_total += rows[i].params_total
      rows[p].macs_total += rows[i].macs_total
  return rows


def count_macs(model: nn.Module, input_shape=(32, 32, 3), batch: int = 1,
               dtype=jnp.float32) -> int:
  """Multiply-accumulates of one forward pass for ONE image (FLOPs = 2 * MACs).

  Counts convolutions (``K_h*K_w*C_in/groups*C_out*H_out*W_out``, padding taps included),
  dense layers (``in*out`` per position) and every other ``dot_general``/``einsum``
  (attention ``QK^T`` and ``AV``). Normalisation, activations, pooling, softmax and
  residual adds are not counted.

  Args:
    model: unbound Flax module, NHWC, called with ``train=False``.
    input_shape: ``(H, W, C)`` of one image, pixels and channels.
    batch: batch traced with (the result is divided by it).
    dtype: input dtype.

  Returns:
    MACs per image, a Python int. Published check: CIFAR ResNet-20 at 32x32 = 40.55M.

  Raises:
    ValueError: bad ``input_shape`` or ``batch`` (see :func:`layer_table`).
  """
  return sum(r.macs for r in layer_table(model, input_shape, batch, dtype))


def count_params_of(model: nn.Module, input_shape=(32, 32, 3)) -> int:
  """Exact number of entries in the ``params`` collection (no BatchNorm statistics)."""
  from cnn_jax.models import count_params
  variables, _ = _placeholders(model, input_shape, 1, jnp.float32)
  return count_params(variables)


def xla_flops(model: nn.Module, input_shape=(32, 32, 3), batch: int = 1) -> float:
  """FLOPs of the compiled forward pass according to XLA's ``cost_analysis()``, per image.

  XLA counts a convolution as 2 FLOPs per MAC but only for taps that land inside the
  input (not on zero padding), and it adds elementwise FLOPs (BatchNorm, ReLU, adds), so
  it differs from ``2 * count_macs`` by a few percent; see ``tests/test_summary.py``.

  Raises:
    RuntimeError: the backend returns no cost analysis.
  """
  variables, x = _placeholders(model, input_shape, batch, jnp.float32)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  with depthwise.xla_convs():  # the convolution as XLA's conv op, as count_macs sees it
    cost = fwd.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    raise RuntimeError(f"backend {jax.default_backend()} gave no cost analysis: {cost!r}")
  return float(cost["flops"]) / batch


def _human(n: float, unit: str) -> str:
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {prefix}{unit}"
  return f"{n:.0f} {unit}"


def format_table(rows: list[LayerRow], max_depth: int | None = None) -> str:
  """Renders rows as a fixed-width text table with totals (params exact, MACs/FLOPs)."""
  # Helper-method calls that return no array and own nothing are noise in the table.
  shown = [r for r in rows if (max_depth is None or r.depth <= max_depth)
           and (r.output_shape != () or r.params_total or r.macs_total)]
  def label(r):
    name = r.path.split("/")[-1] if r.path else "(model)"
    return "  " * r.depth + f"{name} ({r.type})"
  def cell(own, total, r):
    leafish = max_depth is not None and r.depth == max_depth
    v = total if leafish else own
    return f"{v:,}" if v else "--"
  w0 = max([len(label(r)) for r in shown] + [20]) + 2
  lines = [f"{'Layer (type)':<{w0}}{'Output shape':<24}{'Params':>14}{'MACs':>18}"]
  lines.append("=" * len(lines[0]))
  for r in shown:
    shape = str(r.output_shape).replace(" ", "")
    lines.append(f"{label(r):<{w0}}{shape:<24}{cell(r.params, r.params_total, r):>14}"
                 f"{cell(r.macs, r.macs_total, r):>18}")
  lines.append("=" * len(lines[0]))
  params = sum(r.params for r in rows)
  macs = sum(r.macs for r in rows)
  lines.append(f"Total params: {params:,}")
  lines.append(f"Total MACs per image: {macs:,} ({_human(macs, 'MACs')})")
  lines.append(f"FLOPs per image (2 x MACs): {2 * macs:,} ({_human(2 * macs, 'FLOPs')})")
  lines.append("MACs count conv + dense + einsum/dot_general; normalisation, activations, "
               "pooling and adds are not counted.")
  return "\n".join(lines)


def _parse_input(s: str) -> tuple[int, int, int]:
  try:
    dims = tuple(int(v) for v in s.lower().split("x"))
  except ValueError:
    dims = ()
  if len(dims) != 3 or min(dims) < 1:
    raise argparse.ArgumentTypeError(f"--input must be HxWxC like 32x32x3, got {s!r}")
  return dims


def main(argv=None) -> int:
  """CLI: ``python -m cnn_jax.summary <model> --input 32x32x3 [--num-classes 10]``."""
  from cnn_jax import models
  p = argparse.ArgumentParser(prog="python -m cnn_jax.summary", description=__doc__.split("\n")[0])
  p.add_argument("model", help="registered model name, e.g. resnet20")
  p.add_argument("--input", type=_parse_input, default=(32, 32, 3), help="HxWxC, e.g. 224x224x3")
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--depth", type=int, default=None,
                 help="show modules up to this nesting depth (deeper counts rolled up)")
  p.add_argument("--xla", action="store_true",
                 help="also compile the forward pass and print XLA's cost_analysis FLOPs")
  a = p.parse_args(argv)
  try:
    model = models.create(a.model, num_classes=a.num_classes)
  except KeyError as e:
    p.error(str(e))
  rows = layer_table(model, a.input)
  print(f"{a.model}  input {a.input[0]}x{a.input[1]}x{a.input[2]}  classes {a.num_classes}")
  print(format_table(rows, a.depth))
  if a.xla:
    f = xla_flops(model, a.input)
    print(f"XLA cost_analysis FLOPs per image: {f:,.0f} ({_human(f, 'FLOPs')}; includes "
          "elementwise ops, excludes zero-padding taps)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
