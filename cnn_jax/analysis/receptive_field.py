"""Receptive fields of any model, derived from its jaxpr (not from a hand-written list).

For every feature map we track, per spatial axis, the input-pixel interval
``[left, right]`` seen by output unit 0 and the ``jump`` (input pixels between adjacent
units); unit ``u`` sees ``[left + u*jump, right + u*jump]``. Through a window op with
kernel ``k``, stride ``s``, dilation ``d`` and low padding ``p`` (Araujo, Norris & Sim,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019, Eqs. 1-3):

    left'  = left  - p * jump
    right' = right + ((k - 1) * d - p) * jump
    jump'  = jump * s

so ``size = right - left + 1`` obeys ``RF_l = RF_{l-1} + (k_l - 1) d_l prod_{j<l} s_j``
and ``start = (left + right) / 2`` is the centre of unit 0's field. Where branches merge
(residual adds, concatenation along channels) the field is the union of the branches'
intervals, i.e. the max over branches. Reductions over a spatial axis (global pooling),
flattening into a Dense layer, attention and gathers make the field *global* (the whole
input). Propagated primitives: ``conv_general_dilated``, ``reduce_window*`` (pooling),
``slice``, ``pad``, ``transpose``, ``reshape``, ``broadcast_in_dim``, ``squeeze``,
``dot_general``, reductions, elementwise ops, and nested jaxprs (jit, custom_jvp, remat).

Usage::

    rf = receptive_field(models.create('resnet20'), (32, 32, 3))
    rf.final.size   # (81, 81): the last spatial feature map before global pooling
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from cnn_jax.analysis.tracing import conv_jaxpr, tags_of, trace_model


@dataclasses.dataclass(frozen=True)
class Field:
  """Receptive field of a feature map (one entry per spatial axis, H then W).

  Attributes:
    axes: array axes holding the spatial dims (``(1, 2)`` for NHWC); ``None`` if global.
    left, right: input-pixel interval of unit 0 (may be negative: padding).
    jump: input pixels between adjacent units (product of strides so far).
  """
  axes: Optional[tuple[int, ...]]
  left: tuple[float, ...] = ()
  right: tuple[float, ...] = ()
  jump: tuple[float, ...] = ()

  @property
  def is_global(self) -> bool:
    """True when every output unit depends on the whole input."""
    return self.axes is None

  @property
  def size(self) -> tuple:
    """Receptive field size in input pixels per axis (``right - left + 1``)."""
    return tuple(_num(r - l + 1) for l, r in zip(self.left, self.right))

  @property
  def start(self) -> tuple:
    """Centre of unit 0's field in input pixel coordinates (Distill's ``u_L``)."""
    return tuple(_num((l + r) / 2) for l, r in zip(self.left, self.right))

  def region(self, index: tuple[int, ...], image_shape: tuple[int, ...]) -> tuple[range, ...]:
    """Input pixels seen by the unit at spatial ``index``, clipped to ``image_shape``.

    Exact (equal to the pixels its gradient reaches) unless an intermediate map dropped
    input rows, e.g. a 'VALID' window that does not tile its input: units whose window
    reaches such a dropped edge see less than their clipped field.

    Args:
      index: spatial position of the unit, e.g. ``(i, j)``.
      image_shape: input spatial size ``(H, W)`` in pixels.

    Returns:
      One ``range`` of pixel indices per axis.

    Raises:
      ValueError: the field is global (use the whole image) or ``index`` has wrong length.
    """
    if self.is_global:
      raise ValueError("global field: every unit sees the whole input")
    if len(index) != len(self.left):
      raise ValueError(f"index {index} must have {len(self.left)} entries")
    out = []
    for u, l, r, j, n in zip(index, self.left, self.right, self.jump, image_shape):
      lo = max(int(-(-(l + u * j) // 1)), 0)  # ceil: fractional edges come from holes
      hi = min(int((r + u * j) // 1), n - 1)
      out.append(range(lo, hi + 1))
    return tuple(out)


GLOBAL = Field(None)


def _num(v):
  return int(v) if float(v).is_integer() else float(v)


@dataclasses.dataclass
class RFRow:
  """One field-changing step: a conv, a pooling window, a shortcut slice, a merge, ...

  Attributes:
    path: module path of the innermost module the op was traced in ('' = model).
    op: primitive name, e.g. ``'conv_general_dilated'``, ``'reduce_window_max'``, ``'add'``.
    kernel, stride, dilation: per spatial axis (``()`` for merges and global steps).
    output_shape: shape of the op's output.
    field: the output's :class:`Field`.
  """
  path: str
  op: str
  kernel: tuple
  stride: tuple
  dilation: tuple
  output_shape: tuple
  field: Field


@dataclasses.dataclass
class RFResult:
  """Result of :func:`receptive_field`.

  Attributes:
    rows: field-changing steps in trace order.
    modules: ``{module path: Field}`` of each module call's output (last call wins).
    final: field of the last spatial (non-global) feature map, e.g. before global pooling.
    output: field of the model output (``GLOBAL`` for models with global pooling).
  """
  rows: list[RFRow]
  modules: dict[str, Field]
  final: Field
  output: Field


def _union(fields: list[Field]) -> Field:
  """Field of a merge (add, concat along channels, ...): the union of the intervals."""
  if any(f.is_global for f in fields):
    return GLOBAL
  axes = fields[0].axes
  if any(f.axes != axes for f in fields):
    return GLOBAL  # spatial axes do not line up: be conservative
  left = tuple(min(f.left[i] for f in fields) for i in range(len(axes)))
  right = tuple(max(f.right[i] for f in fields) for i in range(len(axes)))
  # Branches of one feature map share the jump; a size-1 broadcast map may not.
  jump = tuple(max(f.jump[i] for f in fields) for i in range(len(axes)))
  return Field(axes, left, right, jump)


def _window(f: Field, axes_in, axes_out, k, s, d, lo, lhs_dil=None) -> Field:
  """Distill Eqs. 1-3 along each spatial axis; ``lhs_dil`` > 1 for transposed convs."""
  left, right, jump = list(f.left), list(f.right), list(f.jump)
  for r, a in enumerate(f.axes):
    t = axes_in.index(a)
    # Holes inserted between input units (transposed conv) shrink the jump.
    j = jump[r] if not lhs_dil or lhs_dil[t] == 1 else jump[r] / lhs_dil[t]
    left[r] = left[r] - lo[t] * j
    right[r] = right[r] + ((k[t] - 1) * d[t] - lo[t]) * j
    jump[r] = j * s[t]
  new_axes = tuple(axes_out[axes_in.index(a)] for a in f.axes)
  return Field(new_axes, tuple(left), tuple(right), tuple(jump))


def _remap(f: Field, mapping: dict[int, Optional[int]]) -> Field:
  """Moves spatial axes; any spatial axis mapped to None makes the field global."""
  if f.is_global:
    return f
  new = tuple(mapping.get(a) for a in f.axes)
  if any(a is None for a in new):
    return GLOBAL
  return Field(new, f.left, f.right, f.jump)


def _reshape_map(old: tuple[int, ...], new: tuple[int, ...]) -> dict[int, Optional[int]]:
  """Axis ``a`` survives a reshape if some new axis has its size and the same prefix size."""
  out = {}
  for a, n in enumerate(old):
    pre = 1
    for v in old[:a]:
      pre *= v
    out[a] = None
    p2 = 1
    for b, m in enumerate(new):
      if m == n and p2 == pre:
        out[a] = b
        break
      p2 *= m
  return out


def _sub_jaxpr(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    v = eqn.params.get(key)
    if isinstance(v, jax_core.ClosedJaxpr):
      return v.jaxpr
    if isinstance(v, jax_core.Jaxpr):
      return v
  return None


_WINDOW_OPS = ("reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window",
               "cumsum", "cummax", "cummin", "cumprod", "cumlogsumexp")
_REDUCE_OPS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
               "reduce_or", "argmax", "argmin", "reduce_precision")
# Primitives that mix positions in ways a window cannot describe: the field becomes global.
_GLOBAL_OPS = ("gather", "scatter", "scatter-add", "scatter_add", "dynamic_slice",
               "dynamic_update_slice", "rev", "sort", "scan", "while", "cond", "fft", "top_k",
               "expand_dims")
# The _Walker method that maps the field through each other primitive it knows.
_HANDLERS = {
    "conv_general_dilated": "_conv", "slice": "_slice", "pad": "_pad",
    "transpose": "_transpose", "broadcast_in_dim": "_broadcast_in_dim",
    "reshape": "_reshape", "squeeze": "_squeeze", "dot_general": "_dot_general",
    "concatenate": "_concatenate",
}


class _Walker:
  """Propagates :class:`Field`s through a jaxpr, recording rows."""

  def __init__(self, paths: list[str]):
    self.paths = paths
    self.rows: list[RFRow] = []
    self.modules: dict[str, Field] = {}
    self.last_spatial: Optional[Field] = None

  def run(self, jaxpr, in_fields: list[Optional[Field]], prefix=()) -> list[Optional[Field]]:
    env: dict[Any, Optional[Field]] = {}
    for v, f in zip(jaxpr.invars, in_fields):
      env[v] = f
    get = lambda v: None if isinstance(v, jax_core.Literal) else env.get(v)  # noqa: E731
    for eqn in jaxpr.eqns:
      tags = prefix + tags_of(eqn.source_info.name_stack)
      fin = [get(v) for v in eqn.invars]
      if all(f is None for f in fin):
        continue
      outs = self.eqn(eqn, fin, tags)
      for v, f in zip(eqn.outvars, outs):
        env[v] = f
        if f is not None and not f.is_global:
          self.last_spatial = f
      if outs and outs[0] is not None:
        for t in tags:  # the module's output is the last equation traced inside it
          self.modules[self.paths[t]] = outs[0]
    return [get(v) for v in jaxpr.outvars]

  def row(self, eqn, tags, field, k=(), s=(), d=()):
    path = self.paths[tags[-1]] if tags else ""
    shape = tuple(eqn.outvars[0].aval.shape)
    self.rows.append(RFRow(path, eqn.primitive.name, tuple(k), tuple(s), tuple(d), shape,
                           field))

  def eqn(self, eqn, fin, tags) -> list[Optional[Field]]:
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    sub = _sub_jaxpr(eqn)
    if sub is not None and name not in ("scan", "while", "cond"):
      return self.run(sub, fin, tags)
    live = [f for f in fin if f is not None]
    if any(f.is_global for f in live):
      return [GLOBAL] * n_out
    if name in _GLOBAL_OPS:
      return self.global_row(eqn, tags, n_out)
    if name in _WINDOW_OPS:
      return self._window_op(eqn, fin, live, tags, n_out)
    if name in _REDUCE_OPS:
      return self._reduce(eqn, fin, live, tags, n_out)
    if name in _HANDLERS:
      return getattr(self, _HANDLERS[name])(eqn, fin, live, tags, n_out)
    # Everything else is treated as elementwise: same spatial layout in and out.
    out_rank = len(eqn.outvars[0].aval.shape)
    if any(len(eqn.invars[i].aval.shape) != out_rank for i, f in enumerate(fin)
           if f is not None):
      return self.global_row(eqn, tags, n_out)
    return [self.merge(eqn, tags, live)] * n_out

  def _conv(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    if fin[1] is not None:  # a kernel computed from the input: dynamic filters
      return self.global_row(eqn, tags, n_out)
    f = fin[0]
    dn = p["dimension_numbers"]
    rhs = eqn.invars[1].aval.shape
    axes_in, axes_out = tuple(dn.lhs_spec[2:]), tuple(dn.out_spec[2:])
    if any(a not in axes_in for a in f.axes):
      return self.global_row(eqn, tags, n_out)
    nd = len(axes_in)
    k = tuple(rhs[a] for a in dn.rhs_spec[2:])
    s = tuple(p["window_strides"])
    d = tuple(p.get("rhs_dilation") or (1,) * nd)
    lo = tuple(pp[0] for pp in p["padding"])
    ld = tuple(p.get("lhs_dilation") or (1,) * nd)
    out = _window(f, axes_in, axes_out, k, s, d, lo, ld)
    self.row(eqn, tags, out, k, s, d)
    return [out]

  def _window_op(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    f = live[0]
    if eqn.primitive.name.startswith("cum"):  # prefix sums along a spatial axis: unbounded window
      return self.global_row(eqn, tags, n_out) if p["axis"] in f.axes else [f] * n_out
    nd = len(p["window_dimensions"])
    axes = tuple(range(nd))
    k, s = p["window_dimensions"], p["window_strides"]
    d = p.get("window_dilation") or (1,) * nd
    lo = tuple(pp[0] for pp in p["padding"])
    bd = p.get("base_dilation") or (1,) * nd
    out = _window(f, axes, axes, k, s, d, lo, bd)
    self.row(eqn, tags, out, [k[a] for a in f.axes], [s[a] for a in f.axes],
             [d[a] for a in f.axes])
    return [out] * n_out

  def _slice(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    f = fin[0]
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    left, right, jump = list(f.left), list(f.right), list(f.jump)
    for r, a in enumerate(f.axes):
      st = p["start_indices"][a]
      left[r] += st * jump[r]
      right[r] += st * jump[r]
      jump[r] *= strides[a]
    out = Field(f.axes, tuple(left), tuple(right), tuple(jump))
    if out != f:
      self.row(eqn, tags, out, s=[strides[a] for a in f.axes])
    return [out]

  def _pad(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    f = fin[0]
    if f is None:  # padding value carries the field? (never for images)
      return [GLOBAL]
    left, right, jump = list(f.left), list(f.right), list(f.jump)
    for r, a in enumerate(f.axes):
      lo, _, interior = p["padding_config"][a]
      jump[r] = jump[r] / (interior + 1) if interior else jump[r]
      left[r] -= lo * jump[r]
      right[r] -= lo * jump[r]
    out = Field(f.axes, tuple(left), tuple(right), tuple(jump))
    if out != f:
      self.row(eqn, tags, out)
    return [out]

  def _transpose(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    perm = p["permutation"]
    return [_remap(fin[0], {a: list(perm).index(a) for a in range(len(perm))})]

  def _broadcast_in_dim(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    return [_remap(fin[0], {a: b for a, b in enumerate(p["broadcast_dimensions"])})]

  def _reshape(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    old = tuple(eqn.invars[0].aval.shape)
    out = _remap(fin[0], _reshape_map(old, tuple(p["new_sizes"])))
    if out.is_global:
      self.row(eqn, tags, out)
    return [out]

  def _squeeze(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    dims = set(p["dimensions"])
    old_rank = len(eqn.invars[0].aval.shape)
    keep = [a for a in range(old_rank) if a not in dims]
    return [_remap(fin[0], {a: keep.index(a) if a in keep else None
                            for a in range(old_rank)})]

  def _reduce(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    f = live[0]
    red = set(p.get("axes", ()))
    if red & set(f.axes):
      return self.global_row(eqn, tags, n_out)
    rank = len(eqn.invars[0].aval.shape)
    keep = [a for a in range(rank) if a not in red]
    return [_remap(f, {a: keep.index(a) for a in keep})] * n_out

  def _dot_general(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    if fin[0] is not None and fin[1] is not None:  # e.g. attention: mixes positions
      return self.global_row(eqn, tags, n_out)
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    side = 0 if fin[0] is not None else 1
    f = fin[side]
    contract, batch = (lc, lb) if side == 0 else (rc, rb)
    rank_l = len(eqn.invars[0].aval.shape)
    rank_r = len(eqn.invars[1].aval.shape)
    free_l = [a for a in range(rank_l) if a not in lc and a not in lb]
    free_r = [a for a in range(rank_r) if a not in rc and a not in rb]
    mapping = {a: i for i, a in enumerate(batch)}
    free = free_l if side == 0 else free_r
    offset = len(batch) + (0 if side == 0 else len(free_l))
    mapping.update({a: offset + i for i, a in enumerate(free)})
    for a in contract:
      mapping[a] = None
    out = _remap(f, mapping)
    if out.is_global:
      self.row(eqn, tags, out)
    return [out]

  def _concatenate(self, eqn, fin, live, tags, n_out):
    p = eqn.params
    dim = p["dimension"]
    if any(dim in f.axes for f in live):
      return self.global_row(eqn, tags, n_out)
    return [self.merge(eqn, tags, live)]

  def merge(self, eqn, tags, live: list[Field]) -> Field:
    out = _union(live)
    if len(live) > 1 and any(f != out for f in live):
      self.row(eqn, tags, out)  # a merge that widens the field (e.g. residual add)
    return out

  def global_row(self, eqn, tags, n_out):
    self.row(eqn, tags, GLOBAL)
    return [GLOBAL] * n_out


def _identity_field(rank: int, spatial_axes: tuple[int, ...]) -> Field:
  z = tuple(0 for _ in spatial_axes)
  return Field(tuple(spatial_axes), z, z, tuple(1 for _ in spatial_axes))


def _result(walker: _Walker, outs, in_field: Field) -> RFResult:
  out = outs[0] if outs and outs[0] is not None else GLOBAL
  final = walker.last_spatial or in_field
  return RFResult(walker.rows, walker.modules, final, out)


def receptive_field(model: nn.Module, input_shape=(32, 32, 3)) -> RFResult:
  """Layer-by-layer receptive field of ``model`` (NHWC, ``apply(v, x, train=False)``).

  Args:
    model: unbound Flax Linen module (e.g. ``cnn_jax.models.create('resnet20')``).
    input_shape: ``(H, W, C)`` of one image in pixels.

  Returns:
    :class:`RFResult`: rows for each conv / pooling / shortcut / merge step with the
    field (size, jump, start in input pixels) after it, per-module output fields, the
    field of the last spatial feature map (``final``) and of the model output.

  Raises:
    ValueError: ``input_shape`` is not ``(H, W, C)``.
  """
  traced = trace_model(model, input_shape, 1)
  jaxpr = traced.closed_jaxpr.jaxpr
  walker = _Walker([c.path for c in traced.calls])
  in_field = _identity_field(4, (1, 2))
  fields = [None] * (len(jaxpr.invars) - 1) + [in_field]
  return _result(walker, walker.run(jaxpr, fields), in_field)


def receptive_field_of_fn(fn: Callable, x_shape: tuple[int, ...],
                          spatial_axes: tuple[int, ...] = (1, 2)) -> RFResult:
  """Receptive field of a plain function ``fn(x)`` (e.g. a stack of ``ops.conv2d``).

  Args:
    fn: JAX-traceable function of one array.
    x_shape: full input shape, e.g. ``(1, 64, 64, 1)``.
    spatial_axes: axes of ``x`` that are spatial.

  Returns:
    :class:`RFResult` (``modules`` is empty; rows have path '').
  """
  closed = conv_jaxpr(fn, jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32))
  walker = _Walker([])
  in_field = _identity_field(len(x_shape), tuple(spatial_axes))
  return _result(walker, walker.run(closed.jaxpr, [in_field]), in_field)


def format_rows(result: RFResult) -> str:
  """Text table: op, module, kernel, stride, dilation, output shape, size, jump, start."""
  head = (f"{'op':<22}{'module':<28}{'k':<8}{'s':<8}{'d':<8}{'output':<18}"
          f"{'size':<12}{'jump':<10}{'start':<12}")
  lines = [head, "-" * len(head)]
  fmt = lambda t: "x".join(str(_num(v)) for v in t) if t else "-"  # noqa: E731
  for r in result.rows:
    f = r.field
    size, jump, start = ("global", "-", "-") if f.is_global else (
        fmt(f.size), fmt(f.jump), ",".join(str(v) for v in f.start))
    lines.append(f"{r.op:<22}{(r.path or '(model)')[-27:]:<28}{fmt(r.kernel):<8}"
                 f"{fmt(r.stride):<8}{fmt(r.dilation):<8}"
                 f"{str(r.output_shape).replace(' ', ''):<18}{size:<12}{jump:<10}{start:<12}")
  f = result.final
  lines.append(f"last spatial feature map: size {fmt(f.size)}, jump {fmt(f.jump)}, "
               f"start {f.start} (input pixels)")
  lines.append("model output: " + ("global (sees the whole input)" if result.output.is_global
                                   else f"size {fmt(result.output.size)}"))
  return "\n".join(lines)


def main(argv=None) -> int:
  """CLI: ``python -m cnn_jax.analysis.receptive_field resnet20 --input 32x32x3``."""
  from cnn_jax import models
  from cnn_jax.summary import _parse_input
  ap = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.receptive_field")
  ap.add_argument("model")
  ap.add_argument("--input", type=_parse_input, default=(32, 32, 3))
  ap.add_argument("--num-classes", type=int, default=10)
  a = ap.parse_args(argv)
  print(format_rows(receptive_field(models.create(a.model, num_classes=a.num_classes),
                                    a.input)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
