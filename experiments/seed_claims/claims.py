"""The seed texts' checkable numeric claims, as data, each recomputed with cnn_jax's code.

Every :class:`Claim` quotes its seed file (``../shared/seeds/<file>``; the test checks the
quote occurs there, whitespace-normalised), states the claimed value, and carries a
zero-argument function that computes the same quantity with the project's own code:
``cnn_jax.ops.formulas`` (output sizes, 'SAME' padding, parameters, MACs),
``cnn_jax.ops.conv2d`` / ``cnn_jax.ops.pooling`` (shapes via ``jax.eval_shape``),
``cnn_jax.models.create`` + ``cnn_jax.summary`` (whole-model parameters and MACs) and
``cnn_jax.analysis`` (receptive fields, traced MACs). Published ImageNet accuracies cannot
be computed; those claims are compared with the original paper's number, cited in ``how``.

Verdicts (:func:`judge`):

* ``exact`` claims (integers, shapes, architectures) hold iff equal;
* rounded claims ("61M", "about 150 million") hold if the computed value rounds to the claim
  at the claim's own precision (``step``: within ``step / 2``), hold approximately if the
  claim is within 5% of the computed value (:data:`APPROX_REL`), else do not hold;
* bounds ("over 150,000", "140M+", "< 5%") and ranges ("8-9x") hold if satisfied, hold
  approximately if missed by at most 5%;
* published accuracies (``points``) hold within the claim's rounding, hold approximately
  within 0.5 percentage points (:data:`APPROX_POINTS`) of the paper's number;
* ``not_checked``: no number we are sure of to compare with (the reason is in ``how``).

The relative difference reported is ``claimed / computed - 1`` (how far the claim is from
the computed value). Run ``python -m experiments.seed_claims.report`` for the table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cnn_jax import models, ops, summary
from cnn_jax.analysis import jaxpr_macs, receptive_field, receptive_field_of_fn
from cnn_jax.analysis.tracing import placeholders
from cnn_jax.ops import formulas, pooling

S0 = "000_a025f6de9ba3ef46.txt"
S1 = "001_67b9213ef89ecedc.txt"
S2 = "002_871bc3207ed2852a.txt"
S3 = "003_f04f193e4f047366.txt"
S4 = "004_b4d0a21736dccc35.txt"
SEED_FILES = (S0, S1, S2, S3, S4)

APPROX_REL = 0.05  # "holds approximately": claim within 5% of the computed value
APPROX_POINTS = 0.5  # ... or, for published accuracies, within 0.5 percentage points

HOLDS, APPROX, FAILS, UNCHECKED = ("holds", "holds approximately", "does not hold",
                                   "not checked")
_ORDER = {HOLDS: 0, APPROX: 1, FAILS: 2}
IMAGENET = (224, 224, 3)


@dataclasses.dataclass(frozen=True)
class Value:
  """A computed value: ``value`` is what the verdict compares, ``text`` what the table shows."""
  value: Any
  text: str


@dataclasses.dataclass(frozen=True)
class Claim:
  """One numeric claim of a seed text.

  Attributes:
    id: ``'<seed prefix>-<nn>'``, e.g. ``'000-14'``.
    seed: seed file name (in ``../shared/seeds``).
    quote: the claim's words exactly as in the seed (whitespace may differ).
    claimed: the claimed value, in the form ``compute`` returns it.
    claimed_text: the claimed value as the table shows it.
    compute: zero-argument function returning the project's :class:`Value`.
    units: units of the value (pixels, parameters, MACs, %, ...).
    compare: 'exact', 'rounded', 'points', 'at_least', 'at_most', 'range', 'not_checked'.
    step: the claim's rounding unit ('rounded', 'points'; a tuple for tuple claims).
    how: which cnn_jax function (or, for published numbers, which paper and table).
    note: why a claim fails or what it assumes (shown in the README).
  """
  id: str
  seed: str
  quote: str
  claimed: Any
  claimed_text: str
  compute: Callable[[], Value]
  units: str
  compare: str
  step: Any = None
  how: str = ""
  note: str = ""


# ---------------------------------------------------------------------------------------
# Verdicts.


def _fmt_rel(r: float) -> str:
  if abs(r) < 1:
    return f"claim {r:+.1%}"
  return f"claim {r + 1:,.0f}x the computed value"


def _judge_scalar(mode: str, claimed, value, step) -> tuple[str, str]:
  if mode == "rounded":
    if abs(value - claimed) <= step / 2 * (1 + 1e-12):
      return HOLDS, ""
    r = claimed / value - 1
    return (APPROX if abs(r) <= APPROX_REL else FAILS), _fmt_rel(r)
  if mode == "points":
    d = claimed - value
    if abs(d) <= step / 2 + 1e-9:
      return HOLDS, ""
    return (APPROX if abs(d) <= APPROX_POINTS + 1e-9 else FAILS), f"claim {d:+.2f} points"
  if mode == "at_least":
    if value >= claimed:
      return HOLDS, ""
    r = claimed / value - 1
    return (APPROX if r <= APPROX_REL else FAILS), _fmt_rel(r)
  if mode == "at_most":
    if value <= claimed:
      return HOLDS, ""
    r = claimed / value - 1
    return (APPROX if -r <= APPROX_REL else FAILS), _fmt_rel(r)
  raise ValueError(f"unknown comparison {mode!r}")


def judge(claim: Claim, value: Value) -> tuple[str, str]:
  """Verdict of ``claim`` against the computed ``value`` (rules: module docstring).

  Returns:
    ``(verdict, detail)``: verdict one of 'holds', 'holds approximately', 'does not hold',
    'not checked'; detail the relative (or percentage-point) difference, '' when it holds.

  Raises:
    ValueError: an unknown ``claim.compare``.
  """
  mode, c, v = claim.compare, claim.claimed, value.value
  if mode == "not_checked":
    return UNCHECKED, ""
  if mode == "exact":
    if c == v:
      return HOLDS, ""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (c, v))
    return FAILS, (_fmt_rel(c / v - 1) if numbers and v else "")
  if mode == "range":
    (lo, hi), (vlo, vhi) = c, v
    if lo <= vlo and vhi <= hi:
      return HOLDS, ""
    # How far the claimed range misses the computed one, relative to the computed end.
    r = max(lo / vlo - 1 if vlo < lo else 0.0, 1 - hi / vhi if vhi > hi else 0.0)
    return (APPROX if r <= APPROX_REL else FAILS), f"range misses by {r:.1%}"
  if isinstance(c, tuple):
    steps = claim.step if isinstance(claim.step, tuple) else (claim.step,) * len(c)
    parts = [_judge_scalar(mode, ci, vi, si) for ci, vi, si in zip(c, v, steps)]
    worst = max(parts, key=lambda p: _ORDER[p[0]])
    return worst[0], "; ".join(d for _, d in parts if d)
  return _judge_scalar(mode, c, v, claim.step)


# ---------------------------------------------------------------------------------------
# Project-code helpers (all cached: a model is traced once per process).


def _n(x: int) -> str:
  return f"{x:,}"


class _DenseOnImage(nn.Module):
  """Flatten an ``(N, H, W, C)`` image and apply one ``nn.Dense(units)`` (the seeds' "fully
  connected layer on the image")."""
  units: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.units, use_bias=self.use_bias)(x.reshape((x.shape[0], -1)))


class _Conv(nn.Module):
  """One ``nn.Conv`` (``k x k``, ``groups`` channel groups), NHWC."""
  features: int
  k: int = 3
  groups: int = 1
  use_bias: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Conv(self.features, (self.k, self.k), feature_group_count=self.groups,
                   use_bias=self.use_bias)(x)


class _Separable(nn.Module):
  """MobileNet's depthwise ``k x k`` (groups = C_in) then pointwise 1x1 conv, no biases."""
  features: int
  k: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    c_in = x.shape[-1]
    x = nn.Conv(c_in, (self.k, self.k), feature_group_count=c_in, use_bias=False)(x)
    return nn.Conv(self.features, (1, 1), use_bias=False)(x)


def _count(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
  return summary.count_params_of(module, input_shape)


@functools.lru_cache(maxsize=None)
def _params_of(name: str, input_shape=IMAGENET, num_classes: int = 1000, **kw) -> int:
  """Exact parameter count of registered model ``name`` (``summary.count_params_of``)."""
  return summary.count_params_of(models.create(name, num_classes=num_classes, **kw),
                                 input_shape)


@functools.lru_cache(maxsize=None)
def _params_tree(name: str, input_shape=IMAGENET, num_classes: int = 1000):
  variables, _ = placeholders(models.create(name, num_classes=num_classes), input_shape)
  return variables["params"]


def _kernels(name: str, input_shape=IMAGENET, num_classes: int = 1000):
  """``[(path tuple, kernel shape)]`` of every conv/dense kernel of ``name``."""
  flat = traverse_util.flatten_dict(_params_tree(name, input_shape, num_classes))
  return [(k, tuple(v.shape)) for k, v in flat.items() if k[-1] == "kernel"]


@functools.lru_cache(maxsize=None)
def _weight_layers(name: str, input_shape=IMAGENET, num_classes: int = 1000) -> int:
  """Depth as the papers count it: conv + dense layers on the longest path.

  Projection shortcuts (``downsample_*``) are not on it (He et al. 2016 count ResNet-50 as
  49 convs + 1 fc); an inception module counts 2 (1x1 reduce -> 3x3/5x5), as Szegedy et al.
  2015 Table 1 count GoogLeNet's 22.
  """
  ks = [k for k, _ in _kernels(name, input_shape, num_classes)]
  if name.startswith("googlenet"):
    modules = {k[0] for k in ks if k[0].startswith("inception")}
    return sum(1 for k in ks if not k[0].startswith("inception")) + 2 * len(modules)
  return sum(1 for k in ks if not any("downsample" in p for p in k))


def _subtree(params, path: str):
  for part in filter(None, path.split("/")):
    params = params[part]
  return params


@functools.lru_cache(maxsize=None)
def _layer_sequence(name: str, input_shape, num_classes: int) -> tuple[str, ...]:
  """The forward pass of ``name`` as readable layer strings, from the traced model.

  Convs and pools come from ``receptive_field(model).rows`` (kernel, stride, output shape),
  biases and BatchNorms from the parameter tree, dense layers from their kernels.
  """
  model = models.create(name, num_classes=num_classes)
  params = _params_tree(name, input_shape, num_classes)
  seq = []
  for row in receptive_field(model, input_shape).rows:
    shp = row.output_shape
    if row.op == "conv_general_dilated":
      p = _subtree(params, row.path)
      kh, kw, c_in, c_out = p["kernel"].shape
      bias = " +bias" if "bias" in p else ""
      seq.append(f"conv {kh}x{kw}/{row.stride[0]} {c_in}->{c_out}{bias} -> "
                 f"{shp[1]}x{shp[2]}x{shp[3]}")
      parent = _subtree(params, row.path.rpartition("/")[0])
      bns = [v for k, v in parent.items() if k.startswith("BatchNorm")]
      if bns:
        seq.append(f"BN {bns[0]['scale'].shape[0]}")
    elif row.op == "reduce_window_max":
      seq.append(f"maxpool {row.kernel[0]}x{row.kernel[1]}/{row.stride[0]} -> "
                 f"{shp[1]}x{shp[2]}x{shp[3]}")
    elif row.op == "reshape":
      seq.append(f"flatten -> {shp[1]}")
    elif row.field.is_global:  # the mean over H and W
      seq.append(f"global avg pool -> {shp[-1]}")
  for key in sorted(k for k in params if k.startswith("Dense")):
    d_in, d_out = params[key]["kernel"].shape
    seq.append(f"dense {d_in}->{d_out}" + (" +bias" if "bias" in params[key] else ""))
  return tuple(seq)


def _rf_stack(layers, n: int = 128) -> tuple[int, ...]:
  """Receptive field (pixels, H axis) after each layer of a stack built from ``ops.conv2d``
  ('VALID') and ``ops.max_pool2d``; ``layers`` items ``('conv', k, stride, dilation)`` or
  ``('pool', k, stride)``. Uses ``receptive_field_of_fn`` on an ``(1, n, n, 1)`` input."""
  def fn(x):
    for layer in layers:
      if layer[0] == "conv":
        _, k, s, d = layer
        x = ops.conv2d(x, jnp.ones((k, k, 1, 1)), stride=s, dilation=d)
      else:
        x = pooling.max_pool2d(x, layer[1], layer[2])
    return x
  rows = receptive_field_of_fn(fn, (1, n, n, 1)).rows
  return tuple(int(r.field.size[0]) for r in rows)


@functools.lru_cache(maxsize=1)
def _resnet50_rows():
  """``summary.layer_table`` of ResNet-50 at 224x224x3, 1000 classes (MACs per layer)."""
  return tuple(summary.layer_table(models.create("resnet50", num_classes=1000), IMAGENET))


def _shape(fn, *shapes) -> tuple[int, ...]:
  """Output shape of ``fn`` on float32 placeholders (``jax.eval_shape``, no compute)."""
  return tuple(jax.eval_shape(fn, *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
               .shape)


def _mobilenet_v1_separable() -> list[tuple[int, int]]:
  """``(C_in, C_out)`` of MobileNet v1's 13 depthwise-separable layers (its 1x1 kernels).

  Raises:
    AssertionError: the model does not have 13 pointwise convs (layout changed).
  """
  pw = [(s[2], s[3]) for _, s in _kernels("mobilenet_v1") if len(s) == 4 and s[:2] == (1, 1)]
  assert len(pw) == 13, pw
  return pw


def _separable_mac_ratios() -> tuple[float, float]:
  """(min, max) over MobileNet v1's layers of standard 3x3 MACs / separable MACs
  (``formulas.conv_macs``; H and W cancel, so 1x1 output)."""
  r = [formulas.conv_macs(3, 3, ci, co, 1, 1) /
       (formulas.conv_macs(3, 3, ci, ci, 1, 1, groups=ci) + formulas.conv_macs(1, 1, ci, co, 1, 1))
       for ci, co in _mobilenet_v1_separable()]
  return min(r), max(r)


def _separable_param_ratios() -> tuple[float, float]:
  """(min, max) over MobileNet v1's layers of 3x3 conv params / depthwise-separable params."""
  r = [formulas.conv_params(3, 3, ci, co, bias=False) /
       formulas.depthwise_separable_params(3, ci, co) for ci, co in _mobilenet_v1_separable()]
  return min(r), max(r)


# ---------------------------------------------------------------------------------------
# Compute functions shared by several claims.


@functools.lru_cache(maxsize=None)
def _fc_224(units: int = 1000, bias: bool = False, hwc=IMAGENET) -> int:
  """Parameters of flatten + ``nn.Dense(units)`` on an ``hwc`` image (224x224x3 default)."""
  return _count(_DenseOnImage(units, bias), hwc)


def _fc_224_value() -> Value:
  v = _fc_224()
  return Value(v, f"{_n(v)} weights (224x224x3 -> 1,000 units)")


def _params_value(name: str, input_shape=IMAGENET, num_classes: int = 1000) -> Callable:
  def f():
    v = _params_of(name, input_shape, num_classes)
    return Value(v, f"{_n(v)} (`{name}`)")
  return f


def _depth_value(name: str, input_shape=IMAGENET, num_classes: int = 1000) -> Callable:
  def f():
    v = _weight_layers(name, input_shape, num_classes)
    return Value(v, f"{v} weight layers (`{name}`)")
  return f


def _resnet_depths() -> Value:
  v = tuple(_weight_layers(f"resnet{d}") for d in (50, 101, 152))
  return Value(v, ", ".join(map(str, v)) + " weight layers (`resnet50/101/152`)")


def _two_3x3_vs_5x5() -> Value:
  c = 64  # any C: the ratio is per C^2
  rf2, rf5 = _rf_stack([("conv", 3, 1, 1)] * 2)[-1], _rf_stack([("conv", 5, 1, 1)])[-1]
  p2 = 2 * formulas.conv_params(3, 3, c, c, bias=False) // (c * c)
  p5 = formulas.conv_params(5, 5, c, c, bias=False) // (c * c)
  return Value((rf2, rf5, p2, p5),
               f"fields {rf2}x{rf2} and {rf5}x{rf5}; {p2}C^2 vs {p5}C^2 weights")


def _dilated_3x3() -> Value:
  rf = _rf_stack([("conv", 3, 1, 2)])[-1]
  w = formulas.conv_params(3, 3, 1, 1, bias=False)
  return Value((rf, w), f"field {rf}x{rf}, {w} weights")


def _paper(value, text: str) -> Callable[[], Value]:
  return lambda: Value(value, text)


# The seeds' two small CIFAR-10 models, transcribed layer by layer from their PyTorch code
# (Conv2d has a bias by default; padding=1 keeps 32x32; MaxPool2d(2, 2) halves).
CIFAR10NET_SEED = (
    "conv 3x3/1 3->32 +bias -> 32x32x32", "BN 32",
    "conv 3x3/1 32->32 +bias -> 32x32x32", "BN 32",
    "maxpool 2x2/2 -> 16x16x32",
    "conv 3x3/1 32->64 +bias -> 16x16x64", "BN 64",
    "conv 3x3/1 64->64 +bias -> 16x16x64", "BN 64",
    "maxpool 2x2/2 -> 8x8x64",
    "conv 3x3/1 64->128 +bias -> 8x8x128", "BN 128",
    "conv 3x3/1 128->128 +bias -> 8x8x128", "BN 128",
    "global avg pool -> 128",
    "dense 128->10 +bias")
SMALLCNN_SEED = (
    "conv 3x3/1 3->32 +bias -> 32x32x32", "maxpool 2x2/2 -> 16x16x32",
    "conv 3x3/1 32->64 +bias -> 16x16x64", "maxpool 2x2/2 -> 8x8x64",
    "flatten -> 4096", "dense 4096->128 +bias", "dense 128->10 +bias")


def _arch_value(name: str, expected: tuple[str, ...]) -> Callable[[], Value]:
  def f():
    seq = _layer_sequence(name, (32, 32, 3), 10)
    if seq == expected:
      return Value(seq, f"`{name}` matches layer for layer ({len(seq)} layers)")
    diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(expected, seq)) if a != b]
    return Value(seq, f"`{name}` differs: " + "; ".join(diff or [f"{len(seq)} layers"]))
  return f


def _receptive_rule_along_cifar10_cnn() -> Value:
  rows = receptive_field(models.create("cifar10_cnn"), (32, 32, 3)).rows
  v = tuple(int(r.field.size[0]) for r in rows if not r.field.is_global)
  return Value(v, ", ".join(map(str, v)) + " (3x3 convs add 2 x jump: 2, 2, 4, 4, 8, 8; "
               "each pool adds 1 x jump and doubles the jump)")


def _rf_by_seed_formula(layers) -> tuple[int, ...]:
  """The seed's formula RF_l = RF_(l-1) + (k_l - 1) * prod_(j<l) s_j, layer by layer."""
  rf, jump, out = 1, 1, []
  for layer in layers:
    k, s = layer[1], layer[2]
    rf += (k - 1) * jump
    jump *= s
    out.append(rf)
  return tuple(out)


_RF_STACK = [("conv", 3, 1, 1), ("conv", 3, 2, 1), ("pool", 2, 2), ("conv", 5, 1, 1),
             ("conv", 3, 2, 1), ("conv", 3, 1, 1)]


def _output_size_grid(seed_formula) -> tuple[int, int]:
  """``(mismatches, cases)`` of ``seed_formula(n, k, p, s)`` against
  ``formulas.conv_output_size`` over n 1..40, k in 1,2,3,5,7, p 0..3, s 1..4 (non-empty)."""
  bad = cases = 0
  for n in range(1, 41):
    for k in (1, 2, 3, 5, 7):
      for p in range(4):
        for s in range(1, 5):
          if n + 2 * p < k:
            continue
          cases += 1
          bad += seed_formula(n, k, p, s) != formulas.conv_output_size(n, k, s, p)
  return bad, cases


# ---------------------------------------------------------------------------------------
# The claims, seed by seed, in reading order.


def _claims_000() -> list[Claim]:
  c = []

  def add(quote, claimed, claimed_text, compute, units, compare, step=None, how="", note=""):
    c.append(Claim(f"000-{len(c) + 1:02d}", S0, quote, claimed, claimed_text, compute, units,
                   compare, step, how, note))

  add("The kernel has 9 learnable parameters plus 1 bias.", 10, "9 + 1 = 10",
      lambda: Value(formulas.conv_params(3, 3, 1, 1), f"{formulas.conv_params(3, 3, 1, 1)}"),
      "parameters", "exact", how="`formulas.conv_params(3, 3, 1, 1)`")
  add("It slides across all valid positions, producing a 4x4 feature map.", 4, "4x4",
      lambda: Value(formulas.conv_output_size(6, 3), f"{formulas.conv_output_size(6, 3)}x"
                    f"{formulas.conv_output_size(6, 3)}"),
      "pixels", "exact", how="`formulas.conv_output_size(6, 3)` (6x6 input, 'VALID')")
  add("A fully connected layer processing a 224x224 image would need 150 billion parameters "
      "for a single layer.", 150e9, "150 billion",
      lambda: Value(_fc_224(), f"{_n(_fc_224())} (1,000 units); "
                    f"{_n(_fc_224(150528))} even with 150,528 units"),
      "parameters", "rounded", 10e9,
      how="`summary.count_params_of` of flatten + `nn.Dense` on 224x224x3",
      note="A 224x224x3 -> 1,000-unit dense layer has 150,528,000 weights: 150 *million*. "
           "Even a layer with as many units as inputs has 22.7 billion.")
  add("A 3x3 conv layer needs just 9 weights.", 9, "9",
      lambda: Value(formulas.conv_params(3, 3, 1, 1, bias=False), "9 (one filter, one channel)"),
      "weights", "exact", how="`formulas.conv_params(3, 3, 1, 1, bias=False)`")
  add("For a 3x3 kernel, same padding adds 1 pixel on each side.", (1, 1), "(1, 1)",
      lambda: Value(formulas.same_padding(32, 3), f"{formulas.same_padding(32, 3)}"),
      "pixels (low, high)", "exact", how="`formulas.same_padding(32, 3)`")
  add("A 3x3 kernel with dilation 2 covers a 5x5 area but still uses only 9 weights.", (5, 9),
      "5x5 area, 9 weights", _dilated_3x3, "pixels, weights", "exact",
      how="`receptive_field_of_fn` of `ops.conv2d(dilation=2)`; `formulas.conv_params`")
  for pad_txt, s, p, d, out in (("| Stride 1, pad 0 | Valid convolution | 30x30 |", 1, 0, 1, 30),
                                ("| Stride 1, pad 1 | Same convolution | 32x32 |", 1, 1, 1, 32),
                                ("| Stride 2, pad 1 | Downsampling | 16x16 |", 2, 1, 1, 16),
                                ("| Stride 1, pad 2, dilation 2 | Dilated convolution | 32x32 |",
                                 1, 2, 2, 32)):
    add(pad_txt, out, f"{out}x{out}",
        functools.partial(lambda s, p, d: Value(
            formulas.conv_output_size(32, 3, s, p, d),
            f"{formulas.conv_output_size(32, 3, s, p, d)}x"
            f"{formulas.conv_output_size(32, 3, s, p, d)}"), s, p, d),
        "pixels", "exact", how=f"`formulas.conv_output_size(32, 3, {s}, {p}, {d})`")
  add("A 2x2 max pool with stride 2 halves both spatial dimensions", (16, 16), "32x32 -> 16x16",
      lambda: Value(_shape(lambda x: pooling.max_pool2d(x, 2, 2), (1, 32, 32, 1))[1:3],
                    "32x32 -> 16x16"),
      "pixels", "exact", how="`pooling.max_pool2d` (`jax.eval_shape`)")
  add("A network with 512 feature maps of size 7x7 would need 25,088 inputs to a dense layer. "
      "GAP reduces that to 512 values", (25088, 512), "25,088; 512",
      lambda: Value((formulas.fan_in(7, 7, 512),
                     _shape(pooling.global_avg_pool, (1, 7, 7, 512))[-1]),
                    f"{_n(formulas.fan_in(7, 7, 512))}; 512"),
      "values", "exact", how="`formulas.fan_in(7, 7, 512)`; `pooling.global_avg_pool`")
  add("class CIFAR10Net(nn.Module):", CIFAR10NET_SEED,
      "6 conv 3x3 (+bias) each with BN; max-pool after blocks 1, 2; GAP; linear 128->10",
      _arch_value("cifar10_cnn", CIFAR10NET_SEED), "layers", "exact",
      how="`analysis.receptive_field(create('cifar10_cnn')).rows` + the parameter tree")
  add("# Total parameters: 309,738", 309738, "309,738",
      lambda: Value(_params_of("cifar10_cnn", (32, 32, 3), 10),
                    f"{_n(_params_of('cifar10_cnn', (32, 32, 3), 10))} (convs 287,008 + "
                    f"BN 896 + linear 1,290)"),
      "parameters", "exact", how="`summary.count_params_of(create('cifar10_cnn'), (32, 32, 3))`",
      note="The seed's own CIFAR10Net code has 289,194 parameters (6 convs with biases "
           "287,008, BatchNorm scales and offsets 896, linear 1,290; running statistics are "
           "buffers, not parameters); the printed total does not follow from the code shown.")
  add("This model has roughly 310K parameters.", 310e3, "310K",
      lambda: Value(_params_of("cifar10_cnn", (32, 32, 3), 10),
                    _n(_params_of("cifar10_cnn", (32, 32, 3), 10))),
      "parameters", "rounded", 10e3, how="`summary.count_params_of`",
      note="Follows from the wrong 309,738 above; the model has about 289K.")
  add("a fully connected network on the same 32x32x3 input, which would need over 3 million "
      "parameters in the first layer alone", 3e6, "> 3,000,000",
      lambda: Value(_fc_224(1000, True, (32, 32, 3)),
                    f"{_n(_fc_224(1000, True, (32, 32, 3)))} with 1,000 units"),
      "parameters", "at_least",
      how="`summary.count_params_of` of flatten + `nn.Dense(1000)` on 32x32x3",
      note="The seed gives no width; with the 1,000 units of the other seeds' example it holds "
           "(it needs at least 977 units).")
  # The timeline table: depth, parameters and top-1 per row.
  lenet = "| LeNet-5 | 1998 | 5 | 60K | N/A (MNIST) |"
  add(lenet, 5, "depth 5", _depth_value("lenet5", (32, 32, 1), 10), "layers", "exact",
      how="conv + dense kernels of `lenet5`")
  add(lenet, 60e3, "60K", _params_value("lenet5", (32, 32, 1), 10), "parameters", "rounded",
      10e3, how="`count_params_of(create('lenet5'), (32, 32, 1))` (ReLU/max-pool LeNet-5)")
  alex = "| AlexNet | 2012 | 8 | 61M | 63.3% |"
  add(alex, 8, "depth 8", _depth_value("alexnet"), "layers", "exact",
      how="conv + dense kernels of `alexnet`")
  add(alex, 61e6, "61M", _params_value("alexnet"), "parameters", "rounded", 1e6,
      how="`count_params_of(create('alexnet', num_classes=1000), (224, 224, 3))`")
  add(alex, 63.3, "63.3% top-1",
      _paper(63.3, "paper: 63.3% (7-CNN ensemble); one CNN 59.3%"), "% top-1", "points", 0.1,
      how="Krizhevsky et al. 2012, Table 2: '7 CNNs*' top-1 val error 36.7% (ensemble of "
          "7 nets, 2 pre-trained on ImageNet Fall 2011; 10-patch averaging); '1 CNN' 40.7%")
  vgg = "| VGG-16 | 2014 | 16 | 138M | 74.4% |"
  add(vgg, 16, "depth 16", _depth_value("vgg16"), "layers", "exact",
      how="conv + dense kernels of `vgg16`")
  add(vgg, 138e6, "138M", _params_value("vgg16"), "parameters", "rounded", 1e6,
      how="`count_params_of(create('vgg16', num_classes=1000), (224, 224, 3))`")
  add(vgg, 74.4, "74.4% top-1", _paper(74.4, "paper: 74.4%"), "% top-1", "points", 0.1,
      how="Simonyan & Zisserman 2015, Table 3: config D, train scale jittered [256;512], "
          "single test scale 384 (dense evaluation): top-1 val error 25.6%")
  goog = "| GoogLeNet | 2014 | 22 | 4M | 74.8% |"
  add(goog, 22, "depth 22", _depth_value("googlenet"), "layers", "exact",
      how="kernels of `googlenet`, 2 per inception module (Szegedy et al. 2015, Table 1)")
  add(goog, 4e6, "4M",
      lambda: Value(_params_of("googlenet"),
                    f"{_n(_params_of('googlenet'))} (`googlenet`, torchvision layout); "
                    f"{_n(_params_of('googlenet', branch3_kernel=5))} with the paper's 5x5"),
      "parameters", "rounded", 1e6, how="`count_params_of(create('googlenet', ...))`",
      note="GoogLeNet (no auxiliary heads) has 6.6M parameters in torchvision's layout, "
           "7.0M with the paper's 5x5 branches; 4M is 40% low.")
  add(goog, 74.8, "74.8% top-1",
      _paper(None, "paper gives no top-1 (top-5 only: 6.67%, 7 models x 144 crops)"),
      "% top-1", "not_checked",
      how="Szegedy et al. 2015 report top-5 error only (Table 3); no top-1 to compare with")
  res = "| ResNet-50 | 2015 | 50 | 25.6M | 76.0% |"
  add(res, 50, "depth 50", _depth_value("resnet50"), "layers", "exact",
      how="conv + dense kernels of `resnet50` without projection shortcuts")
  add(res, 25.6e6, "25.6M", _params_value("resnet50"), "parameters", "rounded", 0.1e6,
      how="`count_params_of(create('resnet50', num_classes=1000), (224, 224, 3))`")
  add(res, 76.0, "76.0% top-1",
      _paper(77.15, "paper: 77.15% (10-crop); torchvision single-crop 76.13%"), "% top-1",
      "points", 0.1,
      how="He et al. 2016, Table 3 (10-crop testing): ResNet-50 top-1 error 22.85%; the paper "
          "gives no single-crop figure; torchvision docs, ResNet50_Weights.IMAGENET1K_V1: 76.13",
      note="The paper's ResNet-50 number is 77.15% (10-crop, Table 3); 76.0% is close to "
           "torchvision's single-crop reproduction (76.13%), not to the paper.")
  eff = "| EfficientNet-B0 | 2019 | N/A | 5.3M | 77.1% |"
  add(eff, 5.3e6, "5.3M", _params_value("efficientnet_b0"), "parameters", "rounded", 0.1e6,
      how="`count_params_of(create('efficientnet_b0', num_classes=1000), (224, 224, 3))`")
  add(eff, 77.1, "77.1% top-1", _paper(77.1, "paper: 77.1%"), "% top-1", "points", 0.1,
      how="Tan & Le 2019 (arXiv:1905.11946v5), Table 2: EfficientNet-B0 77.1% top-1 "
          "(224 px, single crop)")
  cnx = "| ConvNeXt V2 | 2023 | N/A | 28.6M (Tiny) | 83.0% |"
  add(cnx, 28.6e6, "28.6M", _params_value("convnextv2_tiny"), "parameters", "rounded", 0.1e6,
      how="`count_params_of(create('convnextv2_tiny', num_classes=1000), (224, 224, 3))`")
  add(cnx, 83.0, "83.0% top-1", _paper(83.0, "paper: 83.0%"), "% top-1", "points", 0.1,
      how="Woo et al. 2023; facebookresearch/ConvNeXt-V2 README, ImageNet-1K fine-tuned "
          "models: V2-T 83.0 (FCMAE pre-training, IN-1K fine-tuning, 224 px)")
  add("dropping the top-5 error from 26% to 15.3%", (26.0, 15.3), "26% -> 15.3% top-5 error",
      _paper((26.2, 15.3), "paper: 26.2% (second-best entry) -> 15.3%"), "% top-5 error",
      "points", (1, 0.1),
      how="Krizhevsky et al. 2012, abstract and Table 2 (ILSVRC-2012 test set)")
  add("Two stacked 3x3 convolutions cover the same receptive field as a single 5x5 but use "
      "fewer parameters (18 vs. 25)", (5, 5, 18, 25), "same 5x5 field; 18 vs 25 (x C^2)",
      _two_3x3_vs_5x5, "pixels, weights / C^2", "exact",
      how="`receptive_field_of_fn` of `ops.conv2d` stacks; `formulas.conv_params(k, k, C, C)`")
  add("ResNet-152 achieved 78.3% top-1 accuracy on ImageNet.", 78.3, "78.3% top-1",
      _paper(78.57, "paper: 78.57% (10-crop); torchvision single-crop 78.31%"), "% top-1",
      "points", 0.1,
      how="He et al. 2016, Table 3 (10-crop): ResNet-152 top-1 error 21.43%; torchvision docs, "
          "ResNet152_Weights.IMAGENET1K_V1: 78.312")
  add("This insight enabled networks with 50, 101, even 152 layers.", (50, 101, 152),
      "50, 101, 152", _resnet_depths, "layers", "exact",
      how="conv + dense kernels of `resnet50/101/152` without projection shortcuts")
  add("The result: 88.9% top-1 accuracy on ImageNet with the 650M-parameter Huge variant",
      650e6, "650M", _params_value("convnextv2_huge"), "parameters", "rounded", 10e6,
      how="`count_params_of(create('convnextv2_huge', num_classes=1000), (224, 224, 3))`")
  add("The result: 88.9% top-1 accuracy on ImageNet with the 650M-parameter Huge variant",
      88.9, "88.9% top-1", _paper(88.9, "paper: 88.9% (IN-22K, 512 px)"), "% top-1", "points",
      0.1, how="Woo et al. 2023; facebookresearch/ConvNeXt-V2 README, ImageNet-22K fine-tuned "
               "models: V2-H 512x512 88.9, 660M params")
  add("85.7% top-1 accuracy on ImageNet while training 5 to 11 times faster than previous "
      "EfficientNet models", 85.7, "85.7% top-1; 5-11x faster",
      _paper(None, "no EfficientNetV2 in cnn_jax"), "% top-1", "not_checked",
      how="Tan & Le 2021's abstract gives 87.3% (ImageNet-21k pre-training) and 5x-11x faster "
          "training than ViT, not than EfficientNet; 85.7% not verified here")
  add("a fully connected layer connecting to a 224x224 image needs over 150,000 parameters per "
      "neuron", 150000, "> 150,000",
      lambda: Value(_fc_224(1, True), f"{_n(_fc_224(1, True))} (224x224x3 + bias)"),
      "parameters", "at_least", how="`summary.count_params_of` of flatten + `nn.Dense(1)`",
      note="Holds for an RGB image; a grayscale 224x224 image gives 50,177.")
  add("The exception is first-layer kernels (AlexNet 11x11, ResNet 7x7)", (11, 7), "11, 7",
      lambda: Value(tuple(next(r.kernel[0] for r in receptive_field(
          models.create(m, num_classes=1000), IMAGENET).rows if r.op == "conv_general_dilated")
          for m in ("alexnet", "resnet50")), "11x11 (`alexnet`), 7x7 (`resnet50`)"),
      "pixels", "exact", how="first conv row of `analysis.receptive_field`")
  add("Each 3x3 conv layer adds 2 pixels to the receptive field. Pooling layers multiply it.",
      (3, 5, 10, 12, 14, 28, 30, 32),
      "3, 5, 10, 12, 14, 28, 30, 32 (+2 per conv, x2 per pool, along `cifar10_cnn`)",
      _receptive_rule_along_cifar10_cnn, "pixels", "exact",
      how="`analysis.receptive_field(create('cifar10_cnn'))` (conv and pool rows)",
      note="A 3x3 conv adds 2 x (product of the earlier strides), not 2; a 2x2/2 pool adds 1 x "
           "that product and doubles it for later layers, it does not multiply the field. "
           "Along cifar10_cnn the field is 3, 5, 6, 10, 14, 16, 24, 32 (the rule gives 3, 5, 10, "
           "12, 14, 28, 30, 32; both end at 32 by coincidence).")
  add('After three 3x3 conv layers with one 2x2 pool, a neuron "sees" a much larger input '
      'region than the 3x3 kernel suggests.', 4, "> 3x3",
      lambda: Value(min(_rf_stack(s)[-1] for s in _POOL_ORDERS),
                    "8, 10, 12, 14 px (pool 4th, 3rd, 2nd, 1st)"),
      "pixels", "at_least", how="`receptive_field_of_fn` of `ops.conv2d` + `max_pool2d` stacks")
  add("ending with a trained model that hits over 90% accuracy", 90, "> 90% (CIFAR-10)",
      _paper(None, "no logged `cifar10_cnn` run"), "% top-1", "not_checked",
      how="needs a training run of `cifar10_cnn`; none is logged under experiments/")
  return c


_POOL_ORDERS = [[("conv", 3, 1, 1)] * i + [("pool", 2, 2)] + [("conv", 3, 1, 1)] * (3 - i)
                for i in (3, 2, 1, 0)]


def _claims_001() -> list[Claim]:
  c = []

  def add(quote, claimed, claimed_text, compute, units, compare, step=None, how="", note=""):
    c.append(Claim(f"001-{len(c) + 1:02d}", S1, quote, claimed, claimed_text, compute, units,
                   compare, step, how, note))

  def conv_formula():
    pairs = [(ci, co) for ci in (1, 3, 16, 64, 128) for co in (1, 10, 32, 64, 128)]
    bad = sum(formulas.conv_params(3, 3, ci, co) != 9 * ci * co + co for ci, co in pairs)
    return Value(bad, f"{bad} mismatches in {len(pairs)} (C_in, C_out) pairs, e.g. 64->128: "
                      f"{_n(formulas.conv_params(3, 3, 64, 128))}")

  add("3×3 conv params9·Cin·Cout + Cout", 0, "9·Cin·Cout + Cout (0 mismatches)", conv_formula,
      "mismatches", "exact", how="`formulas.conv_params(3, 3, C_in, C_out)`")

  def seed_out(n, k, p, s):
    return math.floor((n - k + 2 * p) / s) + 1

  def out_formula():
    bad, cases = _output_size_grid(seed_out)
    return Value(bad, f"{bad} mismatches in {_n(cases)} cases")

  add("Output size⌊(W − K + 2P)/S⌋ + 1", 0, "floor((W-K+2P)/S)+1 (0 mismatches)", out_formula,
      "mismatches", "exact", how="`formulas.conv_output_size` on a grid of n, k, p, s")
  add("cutting compute fourfold per layer", 4, "4x",
      lambda: Value(formulas.conv_macs(3, 3, 64, 64, 32, 32) //
                    formulas.conv_macs(3, 3, 64, 64, 16, 16), "4x (32x32 -> 16x16 map)"),
      "ratio", "exact", how="`formulas.conv_macs` at 32x32 vs 16x16")
  add("Huge (≈150M into one dense layer)", 150e6, "≈150M", _fc_224_value, "parameters",
      "rounded", 10e6, how="`summary.count_params_of` of flatten + `nn.Dense(1000)`")
  add("A dense layer mapping a 224×224×3 image to 1,000 units needs about 150 million weights.",
      150e6, "about 150 million", _fc_224_value, "weights", "rounded", 10e6,
      how="`summary.count_params_of` of flatten + `nn.Dense(1000, use_bias=False)`")
  add("A 3×3 conv with 3 input and 64 output channels needs 3·9·64 + 64 = 1,792 weights", 1792,
      "1,792", lambda: Value(formulas.conv_params(3, 3, 3, 64),
                             _n(formulas.conv_params(3, 3, 3, 64))),
      "parameters", "exact", how="`formulas.conv_params(3, 3, 3, 64)`")
  add("five orders of magnitude fewer", 5, "10^5",
      lambda: Value(math.log10(_fc_224() / formulas.conv_params(3, 3, 3, 64)),
                    f"10^{math.log10(_fc_224() / formulas.conv_params(3, 3, 3, 64)):.2f} "
                    f"({_fc_224() / formulas.conv_params(3, 3, 3, 64):,.0f}x)"),
      "orders of magnitude", "rounded", 1, how="dense / conv counts above")
  add("reused across all 50,176 spatial positions", 50176, "50,176",
      lambda: Value(formulas.conv_output_size(224, 3, 1, "SAME") ** 2,
                    _n(formulas.conv_output_size(224, 3, 1, "SAME") ** 2) + " (224 x 224)"),
      "positions", "exact", how="`formulas.conv_output_size(224, 3, 1, 'SAME')` squared")

  def two_small():
    v = _two_3x3_vs_5x5().value
    saving = 100 * (v[3] - v[2]) // v[3]
    return Value((v[0], v[2], v[3], saving), f"field {v[0]}x{v[0]}; {v[2]}C^2 vs {v[3]}C^2; "
                                             f"{saving}% fewer")

  add("Stacking two 3×3 convs gives the same 5×5 receptive field with 2·(9C²) = 18C² parameters "
      "versus 25C² for a single 5×5 — 28% fewer params", (5, 18, 25, 28),
      "5x5; 18C^2 vs 25C^2; 28% fewer", two_small, "pixels, weights / C^2, %", "exact",
      how="`receptive_field_of_fn`; `formulas.conv_params(k, k, C, C, bias=False)`")
  def traced_conv_macs():
    v = jaxpr_macs(lambda x, w: ops.conv2d(x, w, padding="SAME"),
                   jax.ShapeDtypeStruct((1, 56, 56, 64), jnp.float32),
                   jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32))
    return Value(v, _n(v))

  add("A single conv layer costs roughly K²·Cin·Cout·H·W multiply-adds.",
      3 * 3 * 64 * 128 * 56 * 56, "K^2·Cin·Cout·H·W = 231,211,008 (3x3, 64->128, 56x56)",
      traced_conv_macs, "MACs", "exact",
      how="`analysis.jaxpr_macs` of the traced `ops.conv2d` (3x3, 'SAME', 56x56x64 -> 128)")

  def resnet50_macs():
    v = sum(r.macs for r in _resnet50_rows())
    return Value(v, f"{_n(v)} MACs ({v / 1e9:.2f} G multiply-adds; {2 * v / 1e9:.2f} G if a "
                    f"FLOP is one multiply or one add)")

  add("its ≈4 billion FLOPs per image", 4e9, "≈4 G", resnet50_macs, "multiply-adds",
      "rounded", 1e9,
      how="MACs of `summary.layer_table(create('resnet50', num_classes=1000), (224, 224, 3))` "
          "(their sum is `summary.count_macs`); He et al. 2016 count FLOPs as multiply-adds",
      note="Holds with FLOPs counted as multiply-adds, as He et al. 2016 (Table 1) do.")

  def conv_share():
    rows = _resnet50_rows()
    conv = sum(r.macs for r in rows if r.type == "Conv")
    dense = sum(r.macs for r in rows if r.type == "Dense")
    share = conv / (conv + dense)
    return Value(share, f"conv {share:.2%}, dense classifier {dense / (conv + dense):.2%} "
                        f"of MACs")

  add("the conv layers account for the overwhelming majority of its ≈4 billion FLOPs per "
      "image, while the final dense classifier is a rounding error", 0.99,
      "conv >= 99% of MACs", conv_share, "fraction of MACs", "at_least",
      how="`summary.layer_table(...)` MACs of Conv vs Dense rows")
  add("Depthwise separable convolutions cut cost ≈8–9×.", (8, 9), "8-9x",
      lambda: Value(_separable_mac_ratios(), "{:.1f}x-{:.1f}x over `mobilenet_v1`'s 13 "
                    "layers".format(*_separable_mac_ratios())),
      "x fewer MACs", "range", how="`formulas.conv_macs` (groups=C_in) per MobileNet v1 layer",
      note="1/C_out + 1/9 of the cost: 7.9x for C_out = 64, 8.9x for 1,024.")

  def separable_counts():
    std = _count(_Conv(128, 3), (32, 32, 64))
    sep = _count(_Separable(128, 3), (32, 32, 64))
    return Value((std, sep), f"{_n(std)} vs {_n(sep)} (3x3, 64->128 `nn.Conv` layers)")

  add("replacing K²·Cin·Cout with K²·Cin + Cin·Cout", (9 * 64 * 128, 9 * 64 + 64 * 128),
      "73,728 vs 8,768 (K=3, Cin=64, Cout=128)", separable_counts, "parameters", "exact",
      how="`summary.count_params_of` of `nn.Conv` vs depthwise + pointwise `nn.Conv`")
  add("A single 3×3 filter is 9 numbers, whether the image is 28×28 or 4000×3000.", (9, 9),
      "9, 9",
      lambda: Value((_count(_Conv(1, 3), (28, 28, 1)), _count(_Conv(1, 3), (4000, 3000, 1))),
                    "9 at 28x28, 9 at 4000x3000"),
      "weights", "exact", how="`summary.count_params_of` of one `nn.Conv(1, (3, 3))`")
  add("the output is smaller than the input by K−1 on each axis", (0, 2, 4, 6),
      "K-1 = 0, 2, 4, 6 for K = 1, 3, 5, 7",
      lambda: Value(tuple(32 - formulas.conv_output_size(32, k) for k in (1, 3, 5, 7)),
                    "shrinks by 0, 2, 4, 6 (32x32 input)"),
      "pixels", "exact", how="`formulas.conv_output_size(32, K)`")
  add("To keep the size, pad the image with (K−1)/2 zeros first.",
      ((0, 0), (1, 1), (2, 2), (3, 3)), "(K-1)/2 = 0, 1, 2, 3 per side",
      lambda: Value(tuple(formulas.same_padding(32, k) for k in (1, 3, 5, 7)),
                    "same_padding: 0, 1, 2, 3 per side (K = 1, 3, 5, 7)"),
      "pixels (low, high)", "exact", how="`formulas.same_padding(32, K)` (odd K, stride 1)")
  add("# ~545k — tiny for an image model", 545e3, "~545k", _params_value(
      "small_cnn", (32, 32, 3), 10), "parameters", "rounded", 1e3,
      how="`summary.count_params_of(create('small_cnn'), (32, 32, 3))`")
  add("class SmallCNN(nn.Module):", SMALLCNN_SEED,
      "conv 3->32, pool, conv 32->64, pool, flatten 4096, linear 128, linear 10",
      _arch_value("small_cnn", SMALLCNN_SEED), "layers", "exact",
      how="`analysis.receptive_field(create('small_cnn')).rows` + the parameter tree")
  add("Won ImageNet by a 10-point margin", 10, ">= 10 points",
      _paper(26.2 - 15.3, "paper: 10.9 points (26.2% vs 15.3% top-5)"), "points of top-5 error",
      "at_least", how="Krizhevsky et al. 2012, abstract and Table 2 (ILSVRC-2012 test set)")
  return c


def _claims_002() -> list[Claim]:
  c = []

  def add(quote, claimed, claimed_text, compute, units, compare, step=None, how="", note=""):
    c.append(Claim(f"002-{len(c) + 1:02d}", S2, quote, claimed, claimed_text, compute, units,
                   compare, step, how, note))

  add("Filter · 3×3 = 9 weights applied at every position Feature map · 22×22", (9, 22),
      "9 weights; 22x22 (24x24 input)",
      lambda: Value((formulas.conv_params(3, 3, 1, 1, bias=False),
                     formulas.conv_output_size(24, 3)), "9 weights; 22x22"),
      "weights, pixels", "exact", how="`formulas.conv_params`; `formulas.conv_output_size(24, 3)`")
  add("Feature map · 22×22 each 2×2 block becomes one output cell Pooled · 11×11", 11, "11x11",
      lambda: Value(_shape(lambda x: pooling.max_pool2d(x, 2), (1, 22, 22, 1))[1], "11x11"),
      "pixels", "exact", how="`pooling.max_pool2d(x, 2)` (`jax.eval_shape`)")
  add("a 224×224 RGB image becomes a 150,528-dim vector", 150528, "150,528",
      lambda: Value(formulas.fan_in(224, 224, 3), _n(formulas.fan_in(224, 224, 3))),
      "values", "exact", how="`formulas.fan_in(224, 224, 3)`")
  add("a single hidden unit with 1,024 neurons already burns 150 million parameters", 150e6,
      "150 million", lambda: Value(_fc_224(1024, True), f"{_n(_fc_224(1024, True))} (1,024 "
                                                        f"units with biases)"),
      "parameters", "rounded", 10e6, how="`summary.count_params_of` of flatten + "
                                         "`nn.Dense(1024)`")
  add("A 3×3 conv with 64 output channels has 9·Cin·64 weights regardless of image size.",
      (9 * 3 * 64, 9 * 3 * 64), "9·3·64 = 1,728 at any size (Cin = 3)",
      lambda: Value((_count(_Conv(64, 3), (32, 32, 3)), _count(_Conv(64, 3), (224, 224, 3))),
                    f"{_n(_count(_Conv(64, 3), (32, 32, 3)))} at 32x32, "
                    f"{_n(_count(_Conv(64, 3), (224, 224, 3)))} at 224x224"),
      "weights", "exact", how="`summary.count_params_of` of `nn.Conv(64, (3, 3), use_bias=False)`")

  def five_pools():
    x = (1, 224, 224, 1)
    return Value(_shape(lambda x: functools.reduce(lambda y, _: pooling.max_pool2d(y, 2),
                                                   range(5), x), x)[1],
                 "7x7 after 5 rounds of 2x2/2 max-pool")

  add("After a few rounds, what was a 224×224 image is a 7×7 grid of high-level features", 7,
      "7x7", five_pools, "pixels", "exact", how="`pooling.max_pool2d` five times")
  add("A single 3×3 kernel can only see three pixels in any direction. But two stacked 3×3 "
      "convs see a 5×5 patch, three see a 7×7", (3, 5, 7), "3, 5, 7",
      lambda: Value(_rf_stack([("conv", 3, 1, 1)] * 3), "3, 5, 7"), "pixels", "exact",
      how="`receptive_field_of_fn` of three `ops.conv2d` 3x3")
  add("With padding=1 and a 3×3 kernel, the spatial dimensions are preserved; without padding, "
      "every conv shrinks the map by 2.", (0, 2), "shrinks by 0 (padding 1), 2 (no padding)",
      lambda: Value((24 - formulas.conv_output_size(24, 3, 1, 1),
                     24 - formulas.conv_output_size(24, 3, 1, 0)), "0, 2"),
      "pixels", "exact", how="`formulas.conv_output_size(24, 3, 1, p)`")
  add("a 3×3 dilated-by-2 kernel covers a 5×5 patch with the same 9 weights", (5, 9),
      "5x5 patch, 9 weights", _dilated_3x3, "pixels, weights", "exact",
      how="`receptive_field_of_fn` of `ops.conv2d(dilation=2)`; `formulas.conv_params`")
  add(r"\text{RF}^{(\ell)} \;=\; \text{RF}^{(\ell-1)} \;+\; \big(k^{(\ell)} - 1\big)\,"
      r"\prod_{j<\ell} s^{(j)}", _rf_by_seed_formula(_RF_STACK),
      "3, 5, 7, 23, 31, 47 (formula on conv3, conv3/2, pool2/2, conv5, conv3/2, conv3)",
      lambda: Value(_rf_stack(_RF_STACK), ", ".join(map(str, _rf_stack(_RF_STACK)))),
      "pixels", "exact", how="`receptive_field_of_fn` of the same `ops.conv2d`/`max_pool2d` "
                             "stack")
  add("A stride-2 layer means each subsequent pixel covers a 2× wider piece of the original; a "
      "3×3 kernel after that sees a 6-pixel-wide patch of the input.", 6, "6 px",
      lambda: Value(_rf_stack([("pool", 2, 2), ("conv", 3, 1, 1)])[-1],
                    f"{_rf_stack([('pool', 2, 2), ('conv', 3, 1, 1)])[-1]} after a 2x2/2 pool "
                    f"({_rf_stack([('conv', 3, 2, 1), ('conv', 3, 1, 1)])[-1]} after a 3x3/2 "
                    f"conv, {_rf_stack([('conv', 1, 2, 1), ('conv', 3, 1, 1)])[-1]} after 1x1/2)"),
      "pixels", "exact", how="`receptive_field_of_fn` of `max_pool2d` + `ops.conv2d`",
      note="Holds when the stride-2 layer is 2 wide (a 2x2/2 pool, as the seed's '2x wider "
           "piece' says); in general the field is k_1 + 2 x 2.")
  add("the cost drops to 9 · C_in + C_in · C_out — often a 5-10× reduction", (5, 10), "5-10x",
      lambda: Value(_separable_param_ratios(), "{:.1f}x-{:.1f}x over `mobilenet_v1`'s 13 "
                    "layers".format(*_separable_param_ratios())),
      "x fewer parameters", "range",
      how="`formulas.conv_params` / `formulas.depthwise_separable_params` per MobileNet v1 layer")
  return c


def _claims_003() -> list[Claim]:
  c = []

  def add(quote, claimed, claimed_text, compute, units, compare, step=None, how="", note=""):
    c.append(Claim(f"003-{len(c) + 1:02d}", S3, quote, claimed, claimed_text, compute, units,
                   compare, step, how, note))

  def no_floor():
    bad, cases = _output_size_grid(lambda n, k, p, s: (n - k + 2 * p) / s + 1)
    v = formulas.conv_output_size(32, 3, 2, 0)
    return Value(v, f"{v} (floor); the unfloored formula is wrong in {_n(bad)} of {_n(cases)} "
                    f"grid cases")

  add("Output size = (H - F + 2P) / S + 1", (32 - 3 + 0) / 2 + 1,
      "15.5 for H=32, F=3, P=0, S=2", no_floor, "pixels", "exact",
      how="`formulas.conv_output_size(32, 3, 2, 0)`; grid of n, k, p, s",
      note="The formula needs a floor: it gives 15.5 for a 3x3/2 conv on 32 pixels, whose "
           "output is 15; it is right only when S divides H - F + 2P (repeated later as "
           "Output_H = (H + 2P - K) / S + 1).")

  def lenet_structure():
    seq = _layer_sequence("lenet5", (32, 32, 1), 10)
    v = (sum(s.startswith("conv") for s in seq), sum(s.startswith("dense") for s in seq))
    return Value(v, f"{v[0]} conv, {v[1]} dense (`lenet5`)")

  add("Two convolutional layers followed by three fully connected layers", (2, 3),
      "2 conv, 3 FC", lenet_structure, "layers", "exact",
      how="`analysis.receptive_field` rows + kernels of `lenet5`")
  add("achieved ~99% accuracy on MNIST handwritten digits", 99, "~99%",
      _paper(99.05, "paper: 99.05% (0.95% test error)"), "% accuracy", "points", 1,
      how="LeCun et al. 1998, Sec. III: LeNet-5 test error 0.95% on MNIST (0.8% with "
          "distorted training data)")

  def alexnet_structure():
    ks = [s for _, s in _kernels("alexnet")]
    v = (sum(len(s) == 4 for s in ks), sum(len(s) == 2 for s in ks))
    return Value(v, f"{v[0]} conv, {v[1]} dense (`alexnet`)")

  add("The architecture had five convolutional layers and three fully connected layers.",
      (5, 3), "5 conv, 3 FC", alexnet_structure, "layers", "exact", how="kernels of `alexnet`")
  add("VGG-16 and VGG-19 achieved state-of-art results but used many parameters (140M+).",
      140e6, ">= 140M",
      lambda: Value(min(_params_of("vgg16"), _params_of("vgg19")),
                    f"VGG-16 {_n(_params_of('vgg16'))}, VGG-19 {_n(_params_of('vgg19'))}"),
      "parameters", "at_least", how="`count_params_of(create('vgg16'/'vgg19', ...))`",
      note="VGG-19 has 143.7M; VGG-16 138.4M, 1.2% short of 140M.")
  add("This enables training of very deep networks (50, 101, 152 layers) without degradation.",
      (50, 101, 152), "50, 101, 152", _resnet_depths, "layers", "exact",
      how="conv + dense kernels of `resnet50/101/152` without projection shortcuts")
  add("This requires fewer parameters than ResNet while achieving comparable performance.",
      1.0, "DenseNet < ResNet",
      lambda: Value(_params_of("densenet121") / _params_of("resnet50"),
                    f"DenseNet-121 {_n(_params_of('densenet121'))} vs ResNet-50 "
                    f"{_n(_params_of('resnet50'))} "
                    f"({_params_of('densenet121') / _params_of('resnet50'):.2f}x)"),
      "ratio of parameters", "at_most", how="`count_params_of(create('densenet121'/'resnet50'))`")
  add("EfficientNet-B7 reached state-of-art accuracy with 10x fewer parameters than earlier "
      "models.", 10, "10x",
      lambda: Value(round(556e6 / _params_of("efficientnet_b7"), 1),
                    f"{556e6 / _params_of('efficientnet_b7'):.1f}x (GPipe 556M / "
                    f"`efficientnet_b7` {_n(_params_of('efficientnet_b7'))})"),
      "x fewer parameters", "rounded", 1,
      how="`count_params_of(create('efficientnet_b7'))`; Tan & Le 2019, Table 2 (GPipe 556M) "
          "and abstract ('8.4x smaller')",
      note="Tan & Le 2019 say 8.4x smaller than the best previous ConvNet (GPipe, 556M); "
           "cnn_jax's B7 count (66.3M) gives the same 8.4x.")
  add("This reduces computation by 8-9x with minimal accuracy loss.", (8, 9), "8-9x",
      lambda: Value(_separable_mac_ratios(), "{:.1f}x-{:.1f}x over `mobilenet_v1`'s 13 "
                    "layers".format(*_separable_mac_ratios())),
      "x fewer MACs", "range", how="`formulas.conv_macs` (groups=C_in) per MobileNet v1 layer",
      note="1/C_out + 1/9 of the cost: 7.9x for C_out = 64, 8.9x for 1,024.")
  add("Modern classifiers achieve superhuman accuracy on ImageNet (top-5 error < 5%).", 5,
      "< 5% top-5 error", _paper(3.57, "paper: 3.57% (ResNet ensemble)"), "% top-5 error",
      "at_most", how="He et al. 2016, Table 5: ensemble top-5 test error 3.57% (ILSVRC 2015)")
  add("Standard: 3 x 3 x 64 x 128 = 73,728 parameters", 73728, "73,728",
      lambda: Value(formulas.conv_params(3, 3, 64, 128, bias=False),
                    _n(formulas.conv_params(3, 3, 64, 128, bias=False))),
      "parameters", "exact", how="`formulas.conv_params(3, 3, 64, 128, bias=False)`")
  add("Separable: 3 x 3 x 64 + 64 x 128 = 576 + 8,192 = 8,768 parameters", (576, 8192, 8768),
      "576 + 8,192 = 8,768",
      lambda: Value((formulas.conv_params(3, 3, 64, 64, groups=64, bias=False),
                     formulas.conv_params(1, 1, 64, 128, bias=False),
                     formulas.depthwise_separable_params(3, 64, 128)), "576 + 8,192 = 8,768"),
      "parameters", "exact", how="`formulas.conv_params(groups=64)`, "
                                 "`formulas.depthwise_separable_params(3, 64, 128)`")
  add("8,768 parameters (8.4x fewer)", 8.4, "8.4x",
      lambda: Value(formulas.conv_params(3, 3, 64, 128, bias=False) /
                    formulas.depthwise_separable_params(3, 64, 128),
                    f"{73728 / formulas.depthwise_separable_params(3, 64, 128):.2f}x"),
      "ratio", "rounded", 0.1, how="the two counts above")
  add("# Dilated conv: 3x3 kernel with dilation 2 (effective 5x5 receptive field)", (5, 32),
      "5x5 field (padding=2 keeps the size)",
      lambda: Value((_rf_stack([("conv", 3, 1, 2)])[-1],
                     formulas.conv_output_size(32, 3, 1, 2, 2)), "5x5; 32 -> 32"),
      "pixels", "exact", how="`receptive_field_of_fn`; `formulas.conv_output_size(32, 3, 1, 2, 2)`")
  add("Same padding (P=(K-1)/2): Output matches input size", (32, 32, 32, 32),
      "output 32 for K = 1, 3, 5, 7",
      lambda: Value(tuple(formulas.conv_output_size(32, k, 1, (k - 1) // 2) for k in (1, 3, 5, 7)),
                    "32, 32, 32, 32"),
      "pixels", "exact", how="`formulas.conv_output_size(32, K, 1, (K-1)/2)` (odd K, stride 1)")

  def inception_kernels():
    def sizes(**kw):
      variables, _ = placeholders(models.create("googlenet", num_classes=1000, **kw), IMAGENET)
      flat = traverse_util.flatten_dict(variables["params"])
      return tuple(sorted({v.shape[0] for k, v in flat.items()
                           if k[0].startswith("inception") and k[-1] == "kernel"}))
    paper, tv = sizes(branch3_kernel=5), sizes()
    return Value(paper, f"{paper} with `branch3_kernel=5`; torchvision layout (default): {tv}")

  add("parallel convolutions of different sizes (1x1, 3x3, 5x5) concatenated", (1, 3, 5),
      "1x1, 3x3, 5x5", inception_kernels, "kernel sizes", "exact",
      how="inception kernels of `create('googlenet', branch3_kernel=5)`",
      note="The paper's layout; the default (torchvision-compatible) googlenet has 3x3 in the "
           "'5x5' branch, as torchvision does.")
  return c


def _claims_004() -> list[Claim]:
  c = []

  def add(quote, claimed, claimed_text, compute, units, compare, step=None, how="", note=""):
    c.append(Claim(f"004-{len(c) + 1:02d}", S4, quote, claimed, claimed_text, compute, units,
                   compare, step, how, note))

  add("256 × 256 × 3 = 196,608 input weights per neuron", 196608, "196,608",
      lambda: Value(formulas.fan_in(256, 256, 3), _n(formulas.fan_in(256, 256, 3))),
      "weights", "exact", how="`formulas.fan_in(256, 256, 3)`")
  add("With 1,000 neurons in that layer, you're looking at ~200 million parameters.", 200e6,
      "~200 million",
      lambda: Value(_fc_224(1000, True, (256, 256, 3)),
                    _n(_fc_224(1000, True, (256, 256, 3))) + " (with biases)"),
      "parameters", "rounded", 10e6,
      how="`summary.count_params_of` of flatten + `nn.Dense(1000)` on 256x256x3")
  add("a 3×3 kernel on a 5×5 input only fits in 3×3 positions — the output shrinks. With one "
      "pixel of zero-padding, the input becomes 7×7, and the output stays 5×5", (3, 7, 5),
      "3x3; 7x7 padded; 5x5",
      lambda: Value((formulas.conv_output_size(5, 3), 5 + sum(formulas.padding_pair(1, 5, 3)),
                     formulas.conv_output_size(5, 3, 1, 1)), "3; 7; 5"),
      "pixels", "exact", how="`formulas.conv_output_size(5, 3, 1, p)`, `formulas.padding_pair`")
  add("a 2×2 max pool with stride 2 halves both width and height, cutting the number of values "
      "by 75%", (16, 75), "halves (32 -> 16); 75% fewer values",
      lambda: Value((_shape(lambda x: pooling.max_pool2d(x, 2, 2), (1, 32, 32, 1))[1],
                     100 - 100 * 16 * 16 // (32 * 32)), "32 -> 16; 75% fewer"),
      "pixels, %", "exact", how="`pooling.max_pool2d(x, 2, 2)` (`jax.eval_shape`)")
  add("A 4×4 grid reduced to 2×2 by 2×2 max pooling.", (2, 2), "2x2",
      lambda: Value(_shape(lambda x: pooling.max_pool2d(x, 2), (1, 4, 4, 1))[1:3], "2x2"),
      "pixels", "exact", how="`pooling.max_pool2d(x, 2)`")
  add("128 × (3 × 3 × 64 + 1) = 73,856 parameters", 73856, "73,856",
      lambda: Value(formulas.conv_params(3, 3, 64, 128),
                    _n(formulas.conv_params(3, 3, 64, 128))),
      "parameters", "exact", how="`formulas.conv_params(3, 3, 64, 128)`")

  def flatten():
    def fn(x, w1, w2):
      x = pooling.max_pool2d(ops.conv2d(x, w1, padding=1), 2)
      x = pooling.max_pool2d(ops.conv2d(x, w2, padding=1), 2)
      return x.reshape((x.shape[0], -1))
    v = _shape(fn, (1, 32, 32, 3), (3, 3, 3, 32), (3, 3, 32, 64))[1]
    return Value(v, _n(v))

  add("nn.Flatten(), # 8*8*64 = 4096", 4096, "4,096", flatten, "values", "exact",
      how="`ops.conv2d` + `pooling.max_pool2d` stack of the seed's Sequential (`jax.eval_shape`)")

  def lenet_structure():
    seq = _layer_sequence("lenet5", (32, 32, 1), 10)
    v = tuple(sum(s.startswith(p) for s in seq) for p in ("conv", "maxpool", "dense"))
    return Value(v, f"{v[0]} conv, {v[1]} pool, {v[2]} dense on 32x32x1 (`lenet5`)")

  add("Two conv layers, two pooling layers, three FC layers. Designed for 32×32 grayscale "
      "handwritten digits.", (2, 2, 3), "2 conv, 2 pool, 3 FC", lenet_structure, "layers",
      "exact", how="`analysis.receptive_field` rows + kernels of `lenet5`")
  add("stacked very deep (16-19 layers)", (16, 19), "16, 19",
      lambda: Value((_weight_layers("vgg16"), _weight_layers("vgg19")), "16, 19 (`vgg16`, "
                                                                       "`vgg19`)"),
      "layers", "exact", how="conv + dense kernels of `vgg16`, `vgg19`")
  add("Two 3×3 layers have the same receptive field as one 5×5 but with fewer parameters",
      (5, 5, 18, 25), "same field, fewer parameters", _two_3x3_vs_5x5,
      "pixels, weights / C^2", "exact",
      how="`receptive_field_of_fn` of `ops.conv2d` stacks; `formulas.conv_params`")
  add("With skip connections, networks of 50, 101, even 152 layers trained easily.",
      (50, 101, 152), "50, 101, 152", _resnet_depths, "layers", "exact",
      how="conv + dense kernels of `resnet50/101/152` without projection shortcuts")
  rows = (("| LeNet-5 | 1998 | 5 | 60K |", "lenet5", 5, 60e3, "60K", 10e3, (32, 32, 1), 10),
          ("| AlexNet | 2012 | 8 | 60M |", "alexnet", 8, 60e6, "60M", 1e6, IMAGENET, 1000),
          ("| VGG-16 | 2014 | 16 | 138M |", "vgg16", 16, 138e6, "138M", 1e6, IMAGENET, 1000),
          ("| GoogLeNet | 2014 | 22 | 6.8M |", "googlenet", 22, 6.8e6, "6.8M", 0.1e6, IMAGENET,
           1000),
          ("| ResNet-50 | 2015 | 50 | 25M |", "resnet50", 50, 25e6, "25M", 1e6, IMAGENET, 1000))
  for quote, name, depth, params, ptxt, step, shp, ncls in rows:
    add(quote, depth, f"{depth} layers", _depth_value(name, shp, ncls), "layers", "exact",
        how=f"conv + dense kernels of `{name}`" + {
            "googlenet": ", 2 per inception module (Szegedy et al. 2015, Table 1)",
            "resnet50": " without projection shortcuts"}.get(name, ""))
    add(quote, params, ptxt, _params_value(name, shp, ncls), "parameters", "rounded", step,
        how=f"`count_params_of(create('{name}', num_classes={ncls}), {shp})`",
        note={"alexnet": "Krizhevsky et al. themselves write '60 million'; torchvision's "
                         "single-GPU AlexNet has 61.1M.",
              "googlenet": "torchvision's layout (3x3 in the '5x5' branch) has 6.62M.",
              "resnet50": "25.56M rounds to 26M."}.get(name, ""))
  return c


@functools.lru_cache(maxsize=1)
def all_claims() -> tuple[Claim, ...]:
  """Every claim, seed file by seed file, in reading order (ids ``'000-01'`` ...)."""
  return tuple(_claims_000() + _claims_001() + _claims_002() + _claims_003() + _claims_004())


def check_all() -> list[dict]:
  """Computes every claim with cnn_jax and judges it.

  Returns:
    One dict per claim, in :func:`all_claims` order, with keys ``id``, ``seed``, ``quote``,
    ``claimed`` (text), ``computed`` (text), ``units``, ``verdict`` ('holds', 'holds
    approximately', 'does not hold', 'not checked'), ``detail`` (relative or point
    difference), ``how``, ``note`` and ``value`` (the raw computed value).

  Raises:
    Whatever a compute function raises (a model that cannot be built, an empty output):
    nothing is caught, so a broken computation cannot pass as a verdict.
  """
  out = []
  for cl in all_claims():
    v = cl.compute()
    verdict, detail = judge(cl, v)
    out.append(dict(id=cl.id, seed=cl.seed, quote=cl.quote, claimed=cl.claimed_text,
                    computed=v.text, units=cl.units, verdict=verdict, detail=detail,
                    how=cl.how, note=cl.note, value=v.value))
  return out


__all__ = ["Claim", "Value", "judge", "all_claims", "check_all", "SEED_FILES", "APPROX_REL",
           "APPROX_POINTS", "CIFAR10NET_SEED", "SMALLCNN_SEED"]
