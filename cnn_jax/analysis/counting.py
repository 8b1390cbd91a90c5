"""MAC counting by walking a jaxpr: every ``conv_general_dilated`` and ``dot_general``.

One multiply-accumulate (MAC) is one ``a * b + c``; FLOPs = 2 * MACs (the convention of
the ResNet paper's "FLOPs" column is MACs; fvcore and ptflops also report MACs).

Counted (per equation, including inside ``jit``/``custom_jvp``/``remat`` sub-jaxprs; a
``scan`` body is multiplied by its length, a ``cond`` takes its most expensive branch):

* ``conv_general_dilated``: ``out.size * prod(kernel spatial) * kernel_in_features`` --
  the standard ``K_h*K_w*C_in/groups*C_out*H_out*W_out*N`` (taps that land on zero
  padding are counted too, as every published count does). Transposed convolutions
  (``lhs_dilation > 1``) count only taps on real input: ``K_h*K_w*C_in*C_out*H_in*W_in``.
* ``dot_general`` (``Dense``, ``DenseGeneral``, ``jnp.einsum``/``@`` in attention):
  ``out.size * prod(contracting dims)``.

Not counted: elementwise ops (normalisation, activations, residual adds), pooling
(``reduce_window``), reductions (global pooling), ``while`` loop bodies beyond one trip.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from jax.extend import core as jax_core

from cnn_jax.analysis.tracing import conv_jaxpr, tags_of


def _valid_taps(n: int, k: int, out: int, stride: int, pad_lo: int, rhs_dil: int,
                lhs_dil: int) -> int:
  """Sum over output positions of the kernel taps that land on a real (non-padding,
  non-hole) input element, along one spatial dimension."""
  span = (n - 1) * lhs_dil + 1  # input length after lhs (transposed-conv) dilation
  total = 0
  for i in range(out):
    for m in range(k):
      p = i * stride + m * rhs_dil - pad_lo
      if 0 <= p < span and p % lhs_dil == 0:
        total += 1
  return total


def eqn_macs(eqn, count_padding: bool = True) -> int:
  """MACs of one jaxpr equation (0 for anything but a convolution or a dot_general).

  Args:
    eqn: a ``jax.core.JaxprEqn``.
    count_padding: count convolution taps that multiply zero padding (the published
      convention, default). ``False`` counts only taps on real input, which is what
      XLA's ``HloCostAnalysis`` does (used to cross-check against ``cost_analysis()``).

  Returns:
    Multiply-accumulates as a Python int, for the whole batch the equation runs on.

  Source: the standard counts, e.g. Molchanov et al. 2017 (arXiv:1611.06440) Eq. 9 and
  fvcore's ``conv_flop_jit`` / ``matmul_flop_jit`` (which also count MACs).
  """
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    out = eqn.outvars[0].aval
    rhs = eqn.invars[1].aval
    dn = eqn.params["dimension_numbers"]
    # rhs_spec = (out_feature_dim, in_feature_dim, *spatial_dims) of the kernel.
    rhs_spec = dn.rhs_spec
    c_in_per_group = rhs.shape[rhs_spec[1]]
    p = eqn.params
    nd = len(rhs_spec) - 2
    lhs_dil = p.get("lhs_dilation") or (1,) * nd
    # A transposed conv (lhs_dilation > 1) never counts taps on the inserted holes: that
    # gives the usual H_in*W_in*K_h*K_w*C_in*C_out (fvcore's conv-transpose count).
    if count_padding and all(d == 1 for d in lhs_dil):
      taps = math.prod(rhs.shape[d] for d in rhs_spec[2:])
      return int(math.prod(out.shape)) * int(taps) * int(c_in_per_group)
    lhs = eqn.invars[0].aval
    lhs_spec, out_spec = dn.lhs_spec, dn.out_spec
    rhs_dil = p.get("rhs_dilation") or (1,) * nd
    valid = 1
    for a in range(nd):
      valid *= _valid_taps(lhs.shape[lhs_spec[2 + a]], rhs.shape[rhs_spec[2 + a]],
                           out.shape[out_spec[2 + a]], p["window_strides"][a],
                           p["padding"][a][0], rhs_dil[a], lhs_dil[a])
    per_pos = math.prod(out.shape[d] for d in out_spec[:2])  # batch * C_out
    return int(per_pos) * int(valid) * int(c_in_per_group)
  if name == "dot_general":
    out = eqn.outvars[0].aval
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    k = math.prod(lhs.shape[d] for d in lhs_contract)
    return int(math.prod(out.shape)) * int(k)
  return 0


def _sub_jaxprs(eqn):
  """Yields (jaxpr, multiplier, is_branch) for the sub-jaxprs held in ``eqn.params``."""
  name = eqn.primitive.name
  if name == "cond":
    for br in eqn.params["branches"]:
      yield _as_jaxpr(br), 1, True
    return
  mult = int(eqn.params.get("length", 1)) if name == "scan" else 1
  for key, val in eqn.params.items():
    if key == "jvp_jaxpr_fun" or key == "jvp_jaxpr_thunk":
      continue  # derivative rules, not run in the primal computation
    j = _as_jaxpr(val)
    if j is not None:
      yield j, mult, False
    elif isinstance(val, (tuple, list)):
      for v in val:
        j = _as_jaxpr(v)
        if j is not None:
          yield j, mult, False


def _as_jaxpr(val):
  if isinstance(val, jax_core.ClosedJaxpr):
    return val.jaxpr
  if isinstance(val, jax_core.Jaxpr):
    return val
  return None


def macs_by_tag(jaxpr, prefix: tuple[int, ...] = (), mult: int = 1,
                count_padding: bool = True) -> dict[int | None, int]:
  """MACs of a jaxpr grouped by the innermost ``cnnjaxL<k>`` name-stack tag.

  Args:
    jaxpr: a ``jax.core.Jaxpr`` or ``ClosedJaxpr`` (e.g. from ``jax.make_jaxpr``).
    prefix: tags of the enclosing equation (sub-jaxpr name stacks are relative).
    mult: repetition factor of this jaxpr (scan length).
    count_padding: see :func:`eqn_macs`.

  Returns:
    ``{tag or None: MACs}``; ``None`` collects equations outside any tagged module.
  """
  jaxpr = _as_jaxpr(jaxpr) or jaxpr
  out: dict[int | None, int] = {}

  def add(d, k, v):
    if v:
      d[k] = d.get(k, 0) + v

  for eqn in jaxpr.eqns:
    tags = prefix + tags_of(eqn.source_info.name_stack)
    key = tags[-1] if tags else None
    add(out, key, mult * eqn_macs(eqn, count_padding))
    branches = []
    for sub, m, is_branch in _sub_jaxprs(eqn):
      sub_counts = macs_by_tag(sub, tags, mult * m, count_padding)
      if is_branch:
        branches.append(sub_counts)
      else:
        for k, v in sub_counts.items():
          add(out, k, v)
    if branches:  # cond: the most expensive branch (an upper bound for one execution)
      best = max(branches, key=lambda d: sum(d.values()))
      for k, v in best.items():
        add(out, k, v)
  return out


def jaxpr_macs(fn: Callable, *args, count_padding: bool = True, **kwargs) -> int:
  """Total MACs of ``fn(*args, **kwargs)`` (traced with ``jax.make_jaxpr``, no compute).

  Args:
    fn: a JAX-traceable function.
    *args, **kwargs: arrays or ``jax.ShapeDtypeStruct`` placeholders.
    count_padding: see :func:`eqn_macs`.

  Returns:
    Total conv + dot_general MACs of one call (whole batch), a Python int.
  """
  closed = conv_jaxpr(fn, *args, **kwargs)
  return sum(macs_by_tag(closed.jaxpr, count_padding=count_padding).values())
