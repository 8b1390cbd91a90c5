"""PyTorch twins of cnn_jax models, and their timed train/inference steps, for
``python -m cnn_jax.benchmark --compare-torch`` (which runs this file in a child process).

    python benchmarks/torch_twins.py --model resnet20 --batch 128 [--input 32x32x3]
        [--dtype float32|bfloat16] [--windows 5] [--steps-per-window N] [--threads 2]
        [--expect-params N] [--check]

A twin is the same architecture, layer for layer, as the cnn_jax model of the same name:
``resnet20`` ... ``resnet110`` (``cnn_jax/models/resnet_cifar.py``, option A shortcuts: the
identity subsampled with ``x[:, ::2, ::2]`` and zero-padded in channels, ``extra // 2``
channels before and ``extra - extra // 2`` after, exactly as the Flax block does),
``cifar10_cnn`` (``cnn_jax/models/cifar_cnn.py``) and ``airbench94``
(``cnn_jax/models/airbench.py``, :class:`Airbench94Twin`; trained with its own recipe by
``benchmarks/airbench94_torch.py``). :func:`copy_jax_variables` loads a Flax variables tree
into a twin, so a test can check that both give the same logits (the parameter count alone
does not prove the same architecture). BatchNorm has PyTorch's momentum 0.1 and eps 1e-5, as
``cnn_jax.models.layers.batch_norm`` (airbench94's: 0.4 and 1e-12, scale fixed at 1); one
difference that does not change the work done: PyTorch updates the running variance with the
unbiased batch variance, Flax with the biased one.

The timed step is what ``cnn_jax.steps.make_train_step`` does, in eager PyTorch: random crop
(4 pixels, reflect padding) and horizontal flip of the uint8 batch as tensor indexing,
normalisation, forward in channels_last, cross-entropy, backward, SGD with Nesterov momentum
0.9 and weight decay 5e-4 on conv/linear weights only (``cnn_jax.optim.weight_decay_mask``),
BatchNorm in training mode. ``--dtype bfloat16`` runs forward and loss under
``torch.autocast('cpu', dtype=torch.bfloat16)`` (parameters and optimizer state stay fp32).
Inference is normalisation, forward in eval mode and the summed loss/correct count, as
``cnn_jax.steps.make_eval_step``.

The process prints one line ``BENCHMARK_RESULT {json}`` (see :func:`benchmark`). It never
imports JAX, and cnn_jax never imports this file except in this child process (torch is an
optional extra: ``pip install -e .[torch]``). Exit status 3 with a message on stderr: unknown
model or a parameter count that differs from ``--expect-params``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RESULT_PREFIX = "BENCHMARK_RESULT "


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class BasicBlockTwin(nn.Module):
  """``cnn_jax.models.resnet_cifar.BasicBlock`` with shortcut 'A', dilation 1."""

  def __init__(self, in_ch: int, out_ch: int, stride: int):
    super().__init__()
    self.stride, self.in_ch, self.out_ch = stride, in_ch, out_ch
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    self.bn1 = _bn(out_ch)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
    self.bn2 = _bn(out_ch)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.stride != 1 or self.in_ch != self.out_ch:
      x = x[:, :, ::self.stride, ::self.stride]
      extra = self.out_ch - self.in_ch
      x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
    return F.relu(x + y)

  def jax_layers(self, prefix):
    return [((*prefix, "Conv_0"), self.conv1), ((*prefix, "BatchNorm_0"), self.bn1),
            ((*prefix, "Conv_1"), self.conv2), ((*prefix, "BatchNorm_1"), self.bn2)]


class CifarResNetTwin(nn.Module):
  """``cnn_jax.models.resnet_cifar.CifarResNet`` (shortcut 'A', widths 16/32/64)."""

  def __init__(self, depth: int = 20, num_classes: int = 10, in_ch: int = 3,
               widths=(16, 32, 64)):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f"depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    self.conv = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
    self.bn = _bn(widths[0])
    blocks, prev = [], widths[0]
    for stage, w in enumerate(widths):
      for b in range(n):
        blocks.append(BasicBlockTwin(prev, w, 2 if stage > 0 and b == 0 else 1))
        prev = w
    self.blocks = nn.ModuleList(blocks)
    self.fc = nn.Linear(widths[-1], num_classes)

  def forward(self, x):
    x = F.relu(self.bn(self.conv(x)))
    for block in self.blocks:
      x = block(x)
    return self.fc(x.mean((2, 3))).float()

  def jax_layers(self):
    layers = [(("Conv_0",), self.conv), (("BatchNorm_0",), self.bn)]
    for i, block in enumerate(self.blocks):
      layers += block.jax_layers((f"BasicBlock_{i}",))
    return layers + [(("Dense_0",), self.fc)]


class StackedCNNTwin(nn.Module):
  """``cnn_jax.models.cifar_cnn.StackedCNN``: blocks of 3x3 conv(bias)-BN-ReLU, 2x2 max-pool
  after the blocks in ``pool_after``, global average pool, linear."""

  def __init__(self, num_classes: int = 10, in_ch: int = 3, widths=(32, 64, 128),
               convs_per_block: int = 2, pool_after=(0, 1)):
    super().__init__()
    self.convs, self.bns, self.pool_after_layer = nn.ModuleList(), nn.ModuleList(), set()
    prev = in_ch
    for i, w in enumerate(widths):
      for _ in range(convs_per_block):
        self.convs.append(nn.Conv2d(prev, w, 3, 1, 1, bias=True))
        self.bns.append(_bn(w))
        prev = w
      if i in pool_after:
        self.pool_after_layer.add(len(self.convs) - 1)
    self.fc = nn.Linear(prev, num_classes)

  def forward(self, x):
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      x = F.relu(bn(conv(x)))
      if i in self.pool_after_layer:
        x = F.max_pool2d(x, 2, 2)
    return self.fc(x.mean((2, 3))).float()

  def jax_layers(self):
    layers = []
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      layers += [((f"ConvBNReLU_{i}", "Conv_0"), conv), ((f"ConvBNReLU_{i}", "BatchNorm_0"), bn)]
    return layers + [(("Dense_0",), self.fc)]


class FrozenScaleBatchNorm(nn.BatchNorm2d):
  """airbench94's ``BatchNorm`` (``cnn_jax.models.airbench.ConvGroup``'s ``norm1``/``norm2``,
  flax ``nn.BatchNorm(use_scale=False, epsilon=1e-12, momentum=0.6)``): eps 1e-12, PyTorch
  momentum 0.4 (running stats ``0.6 * old + 0.4 * batch``), bias learned, scale fixed at 1.

  The fixed scale is a *buffer* named ``weight`` (ones), not a parameter: the reference keeps
  an ``nn.Parameter`` of ones with ``requires_grad = False``, which computes the same thing but
  would put 1,152 constants into ``model.parameters()``; as a buffer the twin has no more
  parameters than the Flax model (which has no scale), :func:`count_params` agrees with
  ``cnn_jax.models.count_params``, and ``state_dict()`` still lists ``weight`` (airbench's
  lookahead averages it; it stays ones). ``(N, C, H, W) -> (N, C, H, W)``."""

  def __init__(self, c: int, eps: float = 1e-12, momentum: float = 0.4):
    super().__init__(c, eps=eps, momentum=momentum)
    del self.weight  # the Parameter nn.BatchNorm2d made; a constant buffer of ones instead
    self.register_buffer("weight", torch.ones(c))


def _airbench_conv(in_ch: int, out_ch: int, k: int = 3, padding=1, bias: bool = False
                   ) -> nn.Conv2d:
  """airbench94's ``Conv``: PyTorch's default init (U(+-1/sqrt(fan_in))), bias zeroed, then
  ``dirac_`` on the first ``in_ch`` output filters (an identity map through the conv). Odd
  ``k`` for the dirac; the 2x2 whitening conv gets it too, as the reference's (its weight is
  replaced by the whitening init)."""
  conv = nn.Conv2d(in_ch, out_ch, k, 1, padding, bias=bias)
  with torch.no_grad():
    if conv.bias is not None:
      conv.bias.zero_()
    nn.init.dirac_(conv.weight[:min(in_ch, out_ch)])
  return conv


class ConvGroupTwin(nn.Module):
  """``cnn_jax.models.airbench.ConvGroup``: conv 3x3 (no bias) -> max pool 2 (floor) -> BN ->
  GELU -> conv 3x3 -> BN -> GELU; ``(N, C_in, H, W) -> (N, C_out, H // 2, W // 2)``."""

  def __init__(self, in_ch: int, out_ch: int):
    super().__init__()
    self.conv1 = _airbench_conv(in_ch, out_ch)
    self.norm1 = FrozenScaleBatchNorm(out_ch)
    self.conv2 = _airbench_conv(out_ch, out_ch)
    self.norm2 = FrozenScaleBatchNorm(out_ch)

  def forward(self, x):
    x = F.max_pool2d(self.conv1(x), 2, 2)
    x = F.gelu(self.norm1(x))  # exact (erf) GELU, PyTorch's default
    return F.gelu(self.norm2(self.conv2(x)))

  def jax_layers(self, prefix):
    return [((*prefix, "conv1"), self.conv1), ((*prefix, "norm1"), self.norm1),
            ((*prefix, "conv2"), self.conv2), ((*prefix, "norm2"), self.norm2)]


class Airbench94Twin(nn.Module):
  """``cnn_jax.models.airbench.Airbench94`` (Jordan 2024, arXiv:2404.00498; the reference's
  ``make_net``): ``(N, 3, 32, 32)`` normalised images -> ``(N, num_classes)`` float32 logits.

  ``whiten``: 2x2 conv, no padding, 24 filters with a bias, weight frozen
  (``requires_grad = False``; its values come from the whitening init of the trainer,
  ``benchmarks/airbench94_torch.py``), GELU; ``block1..3``: :class:`ConvGroupTwin` of widths
  64 / 256 / 256 (32 -> 31 -> 15 -> 7 -> 3); global max pool (the reference's
  ``MaxPool2d(3)`` on the 3x3 map; ``amax`` over H, W as the Flax model, for any size);
  ``head``: linear 256 -> 10 without bias; logits x ``1/9``. Initialised as the reference
  (:func:`_airbench_conv`, ``nn.Linear``'s default, BN bias 0). 1,971,640 parameters for 10
  classes (the frozen whitening kernel included, the fixed BN scales not: they are buffers,
  see :class:`FrozenScaleBatchNorm`).
  """

  def __init__(self, num_classes: int = 10, in_ch: int = 3, widths=(64, 256, 256),
               whiten_kernel: int = 2, scale: float = 1.0 / 9.0):
    super().__init__()
    self.scale = scale
    whiten_width = 2 * in_ch * whiten_kernel ** 2
    self.whiten = _airbench_conv(in_ch, whiten_width, whiten_kernel, padding=0, bias=True)
    self.whiten.weight.requires_grad_(False)
    self.block1 = ConvGroupTwin(whiten_width, widths[0])
    self.block2 = ConvGroupTwin(widths[0], widths[1])
    self.block3 = ConvGroupTwin(widths[1], widths[2])
    self.head = nn.Linear(widths[2], num_classes, bias=False)

  def forward(self, x):
    x = F.gelu(self.whiten(x))
    x = self.block3(self.block2(self.block1(x)))
    x = x.amax(dim=(2, 3))
    return (self.head(x) * self.scale).float()

  def jax_layers(self):
    layers = [(("whiten",), self.whiten)]
    for name in ("block1", "block2", "block3"):
      layers += getattr(self, name).jax_layers((name,))
    return layers + [(("head",), self.head)]


TWINS = {f"resnet{d}": (lambda d: lambda nc, c: CifarResNetTwin(d, nc, c))(d)
         for d in (20, 32, 44, 56, 110)}
TWINS["cifar10_cnn"] = lambda nc, c: StackedCNNTwin(nc, c)
TWINS["airbench94"] = lambda nc, c: Airbench94Twin(nc, c)


def create(name: str, num_classes: int = 10, in_ch: int = 3) -> nn.Module:
  """The twin of cnn_jax model ``name``. Raises KeyError naming the models that have one."""
  if name not in TWINS:
    raise KeyError(f"no PyTorch twin of {name!r} in benchmarks/torch_twins.py; twins exist "
                   f"for: {', '.join(sorted(TWINS))}")
  return TWINS[name](num_classes, in_ch)


def count_params(model: nn.Module) -> int:
  """``sum(p.numel() for p in model.parameters())``: BatchNorm running statistics excluded,
  as ``cnn_jax.models.count_params``."""
  return sum(p.numel() for p in model.parameters())


def copy_jax_variables(twin: nn.Module, variables) -> None:
  """Loads a Flax variables tree into ``twin`` in place.

  Args:
    twin: a model from :func:`create`.
    variables: ``{'params': ..., 'batch_stats': ...}`` of the cnn_jax model of the same name,
      nested dicts of arrays (anything ``np.asarray`` takes: jax arrays work). Conv kernels
      HWIO become OIHW weights, Dense kernels (in, out) become (out, in) weights, BatchNorm
      scale/bias/mean/var become weight/bias/running_mean/running_var. Layers without a bias
      (airbench94's convs and head) take none; a :class:`FrozenScaleBatchNorm` (Flax
      ``use_scale=False``) takes no scale: its weight stays the buffer of ones.

  Raises:
    ValueError: a parameter or statistic of ``variables`` that no twin layer took, one that
      a twin layer needs but ``variables`` lacks, or a shape mismatch (not the same
      architecture).
  """
  params, stats = variables["params"], variables.get("batch_stats", {})
  used = set()

  def get(tree, path, leaf, kind):
    node = tree
    try:
      for p in path:
        node = node[p]
      node[leaf]
    except (KeyError, TypeError):
      raise ValueError(f"the JAX {kind} have no {'/'.join((*path, leaf))}: "
                       "not the twin's architecture") from None
    used.add((kind, *path, leaf))
    return torch.from_numpy(np.array(node[leaf], dtype=np.float32))

  def put(dst, src, what):
    if tuple(dst.shape) != tuple(src.shape):
      raise ValueError(f"{what}: twin shape {tuple(dst.shape)} != JAX shape {tuple(src.shape)}")
    with torch.no_grad():
      dst.copy_(src)

  for path, m in twin.jax_layers():
    name = "/".join(path)
    if isinstance(m, nn.Conv2d):
      put(m.weight, get(params, path, "kernel", "params").permute(3, 2, 0, 1), name)
      if m.bias is not None:
        put(m.bias, get(params, path, "bias", "params"), name + "/bias")
    elif isinstance(m, nn.Linear):
      put(m.weight, get(params, path, "kernel", "params").T, name)
      if m.bias is not None:
        put(m.bias, get(params, path, "bias", "params"), name + "/bias")
    elif isinstance(m, nn.BatchNorm2d):
      if isinstance(m.weight, nn.Parameter):  # FrozenScaleBatchNorm: no scale in JAX either
        put(m.weight, get(params, path, "scale", "params"), name + "/scale")
      put(m.bias, get(params, path, "bias", "params"), name + "/bias")
      put(m.running_mean, get(stats, path, "mean", "batch_stats"), name + "/mean")
      put(m.running_var, get(stats, path, "var", "batch_stats"), name + "/var")
    else:
      raise TypeError(f"{name}: no copy rule for {type(m).__name__}")

  def leaves(tree, kind, prefix=()):
    for k, v in tree.items():
      if hasattr(v, "items"):
        yield from leaves(v, kind, (*prefix, k))
      else:
        yield (kind, *prefix, k)

  every = set(leaves(params, "params")) | set(leaves(stats, "batch_stats"))
  left = sorted(x for x in every if x not in used)
  if left:
    raise ValueError(f"JAX variables with no twin layer: {['/'.join(x) for x in left]}")


def augment(images: torch.Tensor, gen: torch.Generator, mean: torch.Tensor, std: torch.Tensor,
            pad: int = 4) -> torch.Tensor:
  """Random crop (``pad`` pixels, reflect padding, as ``cnn_jax.data.augment.random_crop``)
  and horizontal flip with probability 1/2, then ``(x - mean) / std``: uint8 ``(N, H, W, C)``
  -> float32 ``(N, C, H, W)`` in channels_last memory. One gather, no padded copy."""
  n, h, w, _ = images.shape
  oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen)
  ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen)
  flip = torch.rand(n, 1, generator=gen) < 0.5

  def reflect(i, size):  # numpy/jnp 'reflect': -1 -> 1, size -> size - 2
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)

  rows = reflect(oy + torch.arange(h) - pad, h)
  cols = reflect(ox + torch.arange(w) - pad, w)
  cols = torch.where(flip, cols.flip(1), cols)
  out = images[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  return ((out.float() - mean) / std).permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
  """uint8 ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` channels_last, ``(x - mean) / std``."""
  return ((images.float() - mean) / std).permute(0, 3, 1, 2)


def _windows(fn, windows: int, steps_per_window: int | None, warmup: int = 3,
             target_s: float = 2.0) -> tuple[list[float], int, float]:
  """Runs ``fn`` ``warmup`` times, then ``windows`` timed windows of ``steps_per_window``
  calls (None: about ``target_s`` seconds each, from the last warm-up call's time).
  Returns (seconds per window, steps per window, first call's seconds)."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  last = first
  for _ in range(warmup - 1):
    t = time.perf_counter()
    fn()
    last = time.perf_counter() - t
  n = steps_per_window or max(1, round(target_s / max(last, 1e-6)))
  out = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(n):
      fn()
    out.append(time.perf_counter() - t)
  return out, n, first


def benchmark(name: str, batch: int, input_shape=(32, 32, 3), dtype: str = "float32",
              windows: int = 5, steps_per_window: int | None = None, threads: int = 2,
              num_classes: int = 10) -> dict:
  """Times the twin's train and inference steps; returns a JSON-ready dict: ``n_params``,
  ``first_step_s``, ``train_images_per_s`` and ``inference_images_per_s`` (medians over
  windows), the per-window values, ``steps_per_window``, ``peak_rss_mib`` (process max RSS),
  ``torch``, ``threads``, ``mkldnn`` (oneDNN available), ``cpu_capability``."""
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  h, w, c = input_shape
  model = create(name, num_classes, c).to(memory_format=torch.channels_last)
  decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
  rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
  opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                         {"params": rest, "weight_decay": 0.0}],
                        lr=0.1, momentum=0.9, nesterov=True)
  gen = torch.Generator().manual_seed(0)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.integers(0, 256, (batch, h, w, c), dtype=np.uint8))
  labels = torch.from_numpy(rng.integers(0, num_classes, (batch,)).astype(np.int64))
  mean, std = torch.full((c,), 128.0), torch.full((c,), 64.0)
  bf16 = dtype == "bfloat16"

  def train_step():
    model.train()
    x = augment(images, gen, mean, std)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      logits = model(x)
      loss = F.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def eval_step():
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      logits = model(normalize(images, mean, std)).float()
      loss = F.cross_entropy(logits, labels, reduction="sum")
      correct = (logits.argmax(-1) == labels).sum()
    return loss, correct

  train_s, n_train, first = _windows(train_step, windows, steps_per_window)
  eval_s, n_eval, _ = _windows(eval_step, windows, steps_per_window)
  train_ips = [batch * n_train / s for s in train_s]
  eval_ips = [batch * n_eval / s for s in eval_s]
  return {
      "framework": "torch", "model": name, "batch": batch, "input": list(input_shape),
      "dtype": dtype, "n_params": count_params(model), "first_step_s": first,
      "train_images_per_s": statistics.median(train_ips), "train_windows": train_ips,
      "train_steps_per_window": n_train,
      "inference_images_per_s": statistics.median(eval_ips), "inference_windows": eval_ips,
      "inference_steps_per_window": n_eval,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "torch": torch.__version__, "threads": torch.get_num_threads(),
      "mkldnn": torch.backends.mkldnn.is_available(),
      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
      "python": platform.python_version(),
  }


def _parse_input(s: str) -> tuple[int, int, int]:
  dims = tuple(int(v) for v in s.lower().split("x"))
  if len(dims) != 3 or min(dims) < 1:
    raise argparse.ArgumentTypeError(f"--input must be HxWxC like 32x32x3, got {s!r}")
  return dims


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", required=True)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--input", type=_parse_input, default=(32, 32, 3))
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--num-classes", type=int, default=10)
  ap.add_argument("--windows", type=int, default=5)
  ap.add_argument("--steps-per-window", type=int, default=None)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--expect-params", type=int, default=None,
                  help="the JAX model's parameter count; exit 3 if the twin's differs")
  ap.add_argument("--check", action="store_true",
                  help="only build the twin and check its parameter count")
  a = ap.parse_args(argv)
  try:
    twin = create(a.model, a.num_classes, a.input[2])
  except KeyError as e:
    print(e.args[0], file=sys.stderr)
    return 3
  n = count_params(twin)
  if a.expect_params is not None and n != a.expect_params:
    print(f"PyTorch twin of {a.model} has {n:,} parameters, the JAX model {a.expect_params:,}: "
          "not the same architecture", file=sys.stderr)
    return 3
  if a.check:
    print(RESULT_PREFIX + json.dumps({"n_params": n}), flush=True)
    return 0
  res = benchmark(a.model, a.batch, a.input, a.dtype, a.windows, a.steps_per_window,
                  a.threads, a.num_classes)
  print(RESULT_PREFIX + json.dumps(res), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
