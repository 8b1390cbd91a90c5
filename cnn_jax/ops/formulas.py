"""Closed-form convolution arithmetic: output sizes, 'SAME' padding, parameters, MACs.

Sources: Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep learning"
(arXiv:1603.07285), relationship 15 (dilated, strided, padded conv):
``o = floor((i + p_total - d(k-1) - 1) / s) + 1``; TensorFlow/XLA 'SAME' padding
(``tensorflow/core/framework/kernel_shape_util.cc``, ``GetWindowedOutputSize``).
"""

from __future__ import annotations

from typing import Sequence, Union

Padding = Union[str, int, Sequence[int]]


def _check_pos(name: str, v, minimum: int = 1) -> int:
  if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__"):
    raise TypeError(f"{name} must be an int, got {v!r}")
  v = int(v)
  if v < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {v}")
  return v


def same_padding(n: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
  """TF/XLA 'SAME' padding along one axis: output size ``ceil(n / stride)``.

  ``total = max((ceil(n/s) - 1) * s + d(k-1) + 1 - n, 0)``, split ``low = total // 2``,
  ``high = total - low`` (the extra pixel goes at the end, as in TF and
  ``jax.lax.padtype_to_pads``; PyTorch's ``padding='same'`` only exists for stride 1).

  Args:
    n: input size in pixels (>= 1).
    kernel: kernel size k in taps (>= 1).
    stride: s (>= 1).
    dilation: d (>= 1); the effective kernel spans ``d(k-1)+1`` pixels.

  Returns:
    ``(low, high)`` padding in pixels.

  Raises:
    ValueError / TypeError: a non-positive or non-integer argument.
  """
  n = _check_pos("n", n)
  k = _check_pos("kernel", kernel)
  s = _check_pos("stride", stride)
  d = _check_pos("dilation", dilation)
  out = -(-n // s)
  total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
  return total // 2, total - total // 2


def padding_pair(padding: Padding, n: int, kernel: int, stride: int = 1,
                 dilation: int = 1) -> tuple[int, int]:
  """One axis's padding as ``(low, high)`` pixels from 'VALID', 'SAME', an int or a pair.

  Raises:
    ValueError: an unknown padding string, a negative amount, or a sequence not of length 2.
  """
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      return 0, 0
    if p == "SAME":
      return same_padding(n, kernel, stride, dilation)
    raise ValueError(f"padding must be 'VALID', 'SAME', an int or a (low, high) pair, "
                     f"got {padding!r}")
  if isinstance(padding, (int,)) or hasattr(padding, "__index__"):
    lo = hi = int(padding)
  else:
    pair = tuple(padding)
    if len(pair) != 2:
      raise ValueError(f"padding for one axis must be an int or a (low, high) pair, "
                       f"got {padding!r}")
    lo, hi = int(pair[0]), int(pair[1])
  if lo < 0 or hi < 0:
    raise ValueError(f"padding must be >= 0, got {(lo, hi)}")
  return lo, hi


def conv_output_size(n: int, kernel: int, stride: int = 1, padding: Padding = 0,
                     dilation: int = 1) -> int:
  """Output length of a convolution or pooling window along one axis.

  ``floor((n + p_total - d(k-1) - 1) / s) + 1`` (Dumoulin & Visin relationship 15),
  where ``p_total`` is the sum of both sides' padding.

  Args:
    n: input size in pixels.
    kernel: k, taps.
    stride: s.
    padding: 'VALID', 'SAME', an int (each side) or ``(low, high)`` pixels.
    dilation: d (spacing between taps; 1 = dense kernel).

  Returns:
    The output size in pixels (>= 1).

  Raises:
    ValueError: the output would be empty (the dilated kernel ``d(k-1)+1`` is larger
      than the padded input ``n + p_total``); the message gives the values and formula.
  """
  n = _check_pos("n", n)
  k = _check_pos("kernel", kernel)
  s = _check_pos("stride", stride)
  d = _check_pos("dilation", dilation)
  lo, hi = padding_pair(padding, n, k, s, d)
  span = d * (k - 1) + 1
  if n + lo + hi < span:
    raise ValueError(
        f"empty output: padded input n + p_total = {n} + {lo + hi} = {n + lo + hi} is smaller "
        f"than the dilated kernel d(k-1)+1 = {d}*({k}-1)+1 = {span}; output size "
        f"floor((n + p_total - d(k-1) - 1)/s) + 1 must be >= 1")
  return (n + lo + hi - span) // s + 1


def conv_params(kh: int, kw: int, c_in: int, c_out: int, groups: int = 1,
                bias: bool = True) -> int:
  """Parameters of a 2-D conv layer: ``K_h*K_w*(C_in/groups)*C_out (+ C_out bias)``.

  Raises:
    ValueError: ``groups`` does not divide both ``c_in`` and ``c_out``.
  """
  _check_divisible(c_in, c_out, groups)
  return kh * kw * (c_in // groups) * c_out + (c_out if bias else 0)


def conv_macs(kh: int, kw: int, c_in: int, c_out: int, h_out: int, w_out: int,
              groups: int = 1) -> int:
  """Multiply-accumulates of one 2-D conv layer for one image (FLOPs = 2 * MACs):
  ``K_h*K_w*(C_in/groups)*C_out*H_out*W_out`` (bias adds not counted).

  Raises:
    ValueError: ``groups`` does not divide both ``c_in`` and ``c_out``.
  """
  _check_divisible(c_in, c_out, groups)
  return kh * kw * (c_in // groups) * c_out * h_out * w_out


def depthwise_separable_params(k: int, c_in: int, c_out: int, bias: bool = False) -> int:
  """Depthwise ``k x k`` (groups = C_in) + pointwise 1x1 conv parameters (MobileNet,
  Howard et al. 2017, Sec. 3.1): ``k*k*C_in + C_in*C_out`` (+ biases)."""
  return conv_params(k, k, c_in, c_in, groups=c_in, bias=bias) + conv_params(
      1, 1, c_in, c_out, bias=bias)


def _check_divisible(c_in: int, c_out: int, groups: int) -> None:
  if groups < 1 or c_in % groups or c_out % groups:
    raise ValueError(f"groups={groups} must divide C_in={c_in} and C_out={c_out}")


def fan_in(kh: int, kw: int, c_in: int, groups: int = 1) -> int:
  """Inputs feeding one output unit: ``K_h*K_w*C_in/groups`` (He-init's fan-in)."""
  return kh * kw * (c_in // groups)


__all__ = ["same_padding", "padding_pair", "conv_output_size", "conv_params", "conv_macs",
           "depthwise_separable_params", "fan_in"]
