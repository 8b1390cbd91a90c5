"""airbench94's training recipe in PyTorch, on this project's data: the reference to check the
JAX port (``cnn_jax/models/airbench.py``, ``configs/cifar10_speedrun.py``,
``cnn_jax/speedrun.py``) against, on the same images.

    python benchmarks/airbench94_torch.py --workdir runs/airbench94_torch \\
        [--data-dir ../shared/data/cifar10-jpeg] [--seed 0] [--threads 2] [--epochs 9.9]

What it is for: the JAX port reached 90.61% test top-1 (TTA level 2) on the JPEG copy of
CIFAR-10 (``../shared/data/cifar10-jpeg``, quality-75 JPEGs), the reference 94.01% on the
original CIFAR-10. Training the PyTorch recipe on the same decoded images (read through
``cnn_jax.data.loader.open_data``, so they are byte for byte those of the JAX runs) tells
whether the gap comes from the data or from the port.

Source: K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498
(Sec. 3), and its reference implementation github.com/KellerJordan/cifar10-airbench
``airbench94.py``. Written from the paper and the recipe as ``configs/cifar10_speedrun.py``
and ``cnn_jax/speedrun.py`` document it (see :data:`HYP`); the network is
:class:`torch_twins.Airbench94Twin` (``benchmarks/torch_twins.py``), layer for layer the
Flax ``Airbench94``:

* inputs ``(x - mean) / std`` with CIFAR-10's published statistics (``--normalize data``: the
  loader's statistics of these training images instead, as the JAX trainer uses);
* whitening conv from the 2x2-patch second moments of 5000 training images
  (:func:`whitening_weight`), kernel frozen, bias trained for the first 3 epochs;
* Nesterov SGD, momentum 0.85, batch 1024, label-smoothed (0.2) cross-entropy summed over the
  batch, ``lr = 11.5 / (1024 (1 + 1 / (1 - 0.85)))``, ``wd = 0.0153 * batch / (that scale)``,
  BatchNorm biases at 64 lr, each group's ``weight_decay = wd / group_lr``
  (:func:`make_optimizer`), triangle schedule 0.2 -> 1 (23% of the steps) -> 0.07 per step;
* ``ceil(9.9 * steps_per_epoch)`` steps of full batches (476 on 50,000 images);
* alternating flip and translation by up to 2 pixels (:class:`TrainAugment`);
* lookahead from epoch 3 (:class:`Lookahead`);
* evaluation with test-time augmentation levels 0, 1 and 2 (:func:`tta_logits`).

Differences from the reference, all deliberate: float32 on CPU (the reference: float16 on a
GPU, BatchNorm in float32); the whitening images are the seeded random subset the JAX trainer
takes (``cnn_jax.train.whitening_indices``), not the first 5000 of the file, because this
loader's order is sorted by class (the first 5000 would all be airplanes); flip, padding and
crop act on the uint8 images and normalisation per batch (the same values: those are pixel
copies and the normalisation is per channel).

Outputs under ``--workdir``: ``config.json`` (every hyperparameter, torch version, threads, CPU
model and core count, git commit, data source and statistics) and ``metrics.jsonl`` (one record per epoch: epoch, step,
train_loss, train_acc, lr, images_per_s, wall_s; then a final record with ``test_acc_tta0``,
``test_acc_tta1``, ``test_acc_tta2``, their losses, eval_s, wall_s). ``train_loss`` and
``train_acc`` are means over the epoch's examples (label-smoothed loss per example);
``lr`` is the last step's (non-BatchNorm group); ``images_per_s`` is the epoch's images over
its seconds, the epoch's crop included. ``wall_s`` counts from the whitening init (data
loading excluded; it is ``data_load_s`` in config.json).

``--train-subset N``, ``--test-subset N`` (class-balanced prefixes, as config keys
``data.num_train`` / ``data.num_test``), ``--max-steps N`` (stop early; the schedules keep the
full run's length) and ``--batch-size`` are for smoke tests only.

torch is an optional extra (``pip install -e .[torch]``); cnn_jax is imported only for its
data loader and whitening-image choice.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnn_jax import provenance

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def _load_twins():
  """``benchmarks/torch_twins.py`` as a module (``benchmarks`` is not a package)."""
  spec = importlib.util.spec_from_file_location("torch_twins", HERE / "torch_twins.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


twins = _load_twins()

# The recipe (airbench94.py ``hyp``; configs/cifar10_speedrun.py lists the same values).
HYP = {
    "batch_size": 1024,
    "epochs": 9.9,
    "lr": 11.5,  # per 1024 examples, decoupled from momentum
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 0.0153,  # per 1024 examples, decoupled from lr
    "bias_scaler": 64.0,  # lr factor of BatchNorm biases (their decay per step unchanged)
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,
    "whitening_images": 5000,
    "whitening_eps": 5e-4,
    "whitening_kernel": 2,
    "triangle": {"start": 0.2, "peak": 0.23, "end": 0.07},
    "lookahead": {"start_epochs": 3, "every_n_steps": 5, "decay_base": 0.95,
                  "decay_pow": 3.0},
    "aug": {"flip": "alternating", "translate": 2, "pad_mode": "reflect"},
    "net": {"widths": [64, 256, 256], "batchnorm_momentum_torch": 0.4, "batchnorm_eps": 1e-12,
            "scaling_factor": 1 / 9},
    "tta_level": 2,
    "eval_batch_size": 2000,
}

# CIFAR-10's published per-channel statistics (the reference's CIFAR_MEAN / CIFAR_STD), in
# 0-255 units.
CIFAR_MEAN = tuple(255 * v for v in (0.4914, 0.4822, 0.4465))
CIFAR_STD = tuple(255 * v for v in (0.2470, 0.2435, 0.2616))


# ---------------------------------------------------------------------------------- data


def load_data(data_dir: str, seed: int, train_subset: int = 0, test_subset: int = 0) -> dict:
  """The image folder ``data_dir`` through cnn_jax's in-memory loader
  (``cnn_jax.data.loader.open_data``, config section ``data`` of ``base_config()``), so the
  images are those the JAX trainer sees.

  Returns:
    ``{'train_images': (N, H, W, C) uint8, 'train_labels': (N,) int64, 'test_images',
    'test_labels'`` (torch tensors, NHWC as stored), ``'mean', 'std'``: the loader's ``(C,)``
    statistics of the full training split (0-255 units, lists), ``'source'``: the folder.
    ``train_subset`` / ``test_subset`` > 0 keep class-balanced prefixes of that size.
  """
  from cnn_jax.config import base_config  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import loader  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.data.dir = str(data_dir)
  c.data.loader = "memory"
  c.data.num_train = int(train_subset)
  c.data.num_test = int(test_subset)
  d = loader.open_data(c.data, seed)
  as_t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a).astype(dt, copy=False))
  return {"train_images": as_t(d.train_images, np.uint8),
          "train_labels": as_t(d.train_labels, np.int64),
          "test_images": as_t(d.test_images, np.uint8),
          "test_labels": as_t(d.test_labels, np.int64),
          "mean": [float(v) for v in d.mean], "std": [float(v) for v in d.std],
          "source": str(d.source)}


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
  """uint8 ``(N, C, H, W)`` -> float32 ``(N, C, H, W)`` in channels_last memory,
  ``(x - mean) / std`` with ``mean``, ``std`` ``(C,)`` in 0-255 units."""
  x = (images.float() - mean[:, None, None]) / std[:, None, None]
  return x.contiguous(memory_format=torch.channels_last)


def _reflect_index(n: int, pad: int) -> torch.Tensor:
  """Source indices of a reflect-padded axis of length ``n + 2 pad`` (edge not repeated, as
  ``F.pad(..., 'reflect')`` and ``np.pad(mode='reflect')``): ``(n + 2 pad,)`` int64."""
  i = (torch.arange(n + 2 * pad) - pad).abs()
  return torch.where(i > n - 1, 2 * (n - 1) - i, i)


class TrainAugment:
  """airbench94's training augmentation of the whole training set, epoch by epoch.

  Before epoch 0 each image is mirrored with probability 1/2 and reflect-padded by
  ``translate`` pixels (kept, uint8 ``(N, C, H + 2t, W + 2t)``). Epoch ``e`` crops every
  image at its own random offset in ``[0, 2t]^2`` (a translation by up to ``t`` pixels, each
  offset equally likely) and mirrors the whole set when ``e`` is odd (alternating flip:
  Jordan 2024, Sec. 3.6).
  """

  def __init__(self, images_nhwc: torch.Tensor, gen: torch.Generator, flip: bool = True,
               translate: int = 2):
    """``images_nhwc`` uint8 ``(N, H, W, C)``; ``gen`` draws the flips and offsets."""
    x = images_nhwc.permute(0, 3, 1, 2)  # (N, C, H, W)
    n, _, h, w = x.shape
    self.h, self.w, self.t, self.flip, self.gen = h, w, translate, flip, gen
    if flip:
      mirror = torch.rand(n, generator=gen) < 0.5
      x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    if translate:
      x = x[:, :, _reflect_index(h, translate)][:, :, :, _reflect_index(w, translate)]
    self.padded = x.contiguous()

  def epoch(self, epoch: int) -> torch.Tensor:
    """The training images of ``epoch``: uint8 ``(N, C, H, W)``."""
    t, h, w = self.t, self.h, self.w
    if t:
      n = self.padded.shape[0]
      off = torch.randint(0, 2 * t + 1, (n, 2), generator=self.gen)
      out = torch.empty((n, self.padded.shape[1], h, w), dtype=self.padded.dtype)
      for oy in range(2 * t + 1):
        for ox in range(2 * t + 1):
          m = (off[:, 0] == oy) & (off[:, 1] == ox)
          out[m] = self.padded[m, :, oy:oy + h, ox:ox + w]
    else:
      out = self.padded
    if self.flip and epoch % 2 == 1:
      out = out.flip(-1)
    return out


# --------------------------------------------------------------------------- whitening


def whitening_weight(images: torch.Tensor, patch: int = 2, eps: float = 5e-4,
                     chunk: int = 500) -> torch.Tensor:
  """The whitening conv's weight from normalised images ``(N, C, H, W)`` float.

  With ``P`` the ``(M, D)`` matrix of every stride-1 ``patch x patch`` patch (``D = C patch^2``,
  flattened in (C, kh, kw) order: a conv filter's), ``S = P^T P / M`` (uncentred) has
  eigenpairs ``(lambda_i, v_i)``, decreasing; filter ``i < D`` is ``v_i / sqrt(lambda_i +
  eps)`` and filter ``D + i`` its negative. Computed in float64.

  Returns:
    float32 ``(2 D, C, patch, patch)`` (``(24, 3, 2, 2)`` for RGB).
  """
  n, c = images.shape[:2]
  d = c * patch * patch
  second = torch.zeros(d, d, dtype=torch.float64)
  count = 0
  for s in range(0, n, chunk):
    x = images[s:s + chunk].double()
    p = x.unfold(2, patch, 1).unfold(3, patch, 1)  # (B, C, H', W', kh, kw)
    p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
    second += p.T @ p
    count += p.shape[0]
  second /= count
  evals, evecs = torch.linalg.eigh(second)  # ascending
  evals, evecs = evals.flip(0), evecs.flip(1)
  scaled = (evecs / torch.sqrt(evals + eps)).T.reshape(d, c, patch, patch)
  return torch.cat([scaled, -scaled]).float()


def whitening_indices(seed: int, num_train: int, count: int) -> np.ndarray:
  """The training examples of the whitening init: cnn_jax's own choice
  (``cnn_jax.train.whitening_indices``, a seeded random subset), so that both frameworks
  whiten with the same images. ``(min(count, num_train),)`` int64, sorted."""
  from cnn_jax.train import whitening_indices as jax_choice  # pylint: disable=g-import-not-at-top
  return jax_choice(seed, num_train, count)


# ---------------------------------------------------------------------------- optimizer


def triangle(total_steps: int, start: float, peak: float, end: float) -> np.ndarray:
  """Learning-rate factors ``(total_steps + 1,)``: linear from ``start`` at step 0 to 1 at step
  ``int(peak * total_steps)``, then to ``end`` at ``total_steps`` (step ``i`` uses factor
  ``i``, as ``LambdaLR``)."""
  return np.interp(np.arange(total_steps + 1), [0, int(peak * total_steps), total_steps],
                   [start, 1.0, end])


def make_optimizer(model: nn.Module, batch_size: int, total_steps: int, hyp: dict = HYP):
  """Nesterov SGD with airbench's two parameter groups and the triangle schedule.

  ``scale = 1024 (1 + 1 / (1 - momentum))``; ``lr = hyp.lr / scale`` (the loss is summed over
  the batch); ``wd = hyp.weight_decay * batch_size / scale``; BatchNorm biases (``'norm'`` in
  the name) at ``bias_scaler * lr``; each group's ``weight_decay = wd / group_lr``, so that
  every parameter decays by ``factor * wd * p`` per step. Frozen parameters (the whitening
  weight) are left out.

  Returns:
    ``(optimizer, LambdaLR scheduler, {'lr', 'lr_biases', 'wd'})``.
  """
  scale = 1024 * (1 + 1 / (1 - hyp["momentum"]))
  lr = hyp["lr"] / scale
  wd = hyp["weight_decay"] * batch_size / scale
  lr_biases = lr * hyp["bias_scaler"]
  named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
  norm_biases = [p for k, p in named if "norm" in k]
  others = [p for k, p in named if "norm" not in k]
  opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                         dict(params=others, lr=lr, weight_decay=wd / lr)],
                        momentum=hyp["momentum"], nesterov=hyp["nesterov"])
  factors = triangle(total_steps, **hyp["triangle"])
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(factors[min(i, total_steps)]))
  return opt, sched, {"lr": lr, "lr_biases": lr_biases, "wd": wd}


class Lookahead:
  """airbench94's lookahead: slow copies of every ``state_dict()`` entry (parameters and
  BatchNorm buffers), taken when created."""

  def __init__(self, model: nn.Module):
    self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}

  @torch.no_grad()
  def update(self, model: nn.Module, decay: float) -> None:
    """Every float entry: ``slow = decay * slow + (1 - decay) * weight``, then ``weight =
    slow`` (in place; ``decay = 1`` only copies the slow weights back). Integer buffers
    (``num_batches_tracked``) are left alone."""
    for k, w in model.state_dict().items():
      if w.dtype.is_floating_point:
        s = self.slow[k]
        s.lerp_(w, 1.0 - decay)
        w.copy_(s)


# --------------------------------------------------------------------------- evaluation


def tta_logits(model: nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
  """Logits of every test-time augmentation level, ``(N, C, H, W)`` normalised ->
  ``{0, 1, 2: (N, K)}`` float32, from 6 forward passes in eval mode.

  ``f(x)`` the model; ``mirror(x) = (f(x) + f(flip_w(x))) / 2``. Level 0: ``f(x)``; level 1:
  ``mirror(x)``; level 2: ``mirror(x) / 2 + (mirror(t_a) + mirror(t_b)) / 4`` with ``t_a``,
  ``t_b`` the crops at offsets (0, 0) and (2, 2) of ``x`` reflect-padded by 1 (one-pixel
  diagonal translations). Jordan 2024, Sec. 3 "Multi-crop evaluation".
  """
  h, w = x.shape[2:]
  f = lambda v: model(v.contiguous(memory_format=torch.channels_last)).float()
  mirror = lambda v, fv: 0.5 * fv + 0.5 * f(v.flip(-1))
  f0 = f(x)
  level1 = mirror(x, f0)
  padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
  t_a, t_b = padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]
  level2 = 0.5 * level1 + 0.25 * (mirror(t_a, f(t_a)) + mirror(t_b, f(t_b)))
  return {0: f0, 1: level1, 2: level2}


@torch.no_grad()
def evaluate(model: nn.Module, images_nhwc: torch.Tensor, labels: torch.Tensor,
             mean: torch.Tensor, std: torch.Tensor, batch: int = 2000) -> dict:
  """Test accuracy and mean cross-entropy (no smoothing) at TTA levels 0, 1, 2 of uint8
  ``(N, H, W, C)`` images, ``batch`` at a time. Returns ``{'test_acc_tta{l}': float,
  'test_loss_tta{l}': float}``."""
  model.eval()
  correct, loss = np.zeros(3), np.zeros(3)
  for s in range(0, len(labels), batch):
    x = to_input(images_nhwc[s:s + batch].permute(0, 3, 1, 2), mean, std)
    y = labels[s:s + batch]
    for level, logits in tta_logits(model, x).items():
      correct[level] += (logits.argmax(1) == y).sum().item()
      loss[level] += F.cross_entropy(logits, y, reduction="sum").item()
  n = len(labels)
  out = {}
  for level in range(3):
    out[f"test_acc_tta{level}"] = correct[level] / n
    out[f"test_loss_tta{level}"] = loss[level] / n
  return out


# ----------------------------------------------------------------------------- training


def train(args: argparse.Namespace) -> dict:
  """One run of the recipe (see the module docstring); writes ``config.json`` and
  ``metrics.jsonl`` under ``args.workdir``.

  Returns:
    ``{'model': the trained Airbench94Twin, 'records': the metrics records (list of dicts),
    'config': the config.json dict, 'whitening_images': float32 (n, C, H, W) normalised
    images the whitening weight came from}``.
  """
  hyp = dict(HYP, batch_size=args.batch_size, epochs=args.epochs)
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  gen = torch.Generator().manual_seed(args.seed)
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  t_load = time.perf_counter()
  data = load_data(args.data_dir, args.seed, args.train_subset, args.test_subset)
  data_load_s = time.perf_counter() - t_load
  stats = (CIFAR_MEAN, CIFAR_STD) if args.normalize == "cifar" else (data["mean"], data["std"])
  mean, std = (torch.tensor(v, dtype=torch.float32) for v in stats)
  train_x, train_y = data["train_images"], data["train_labels"]
  n, b = len(train_y), hyp["batch_size"]
  steps_per_epoch = n // b
  if steps_per_epoch == 0:
    raise ValueError(f"--batch-size {b} exceeds the {n} training images")
  total_steps = math.ceil(hyp["epochs"] * steps_per_epoch)
  stop_at = min(total_steps, args.max_steps) if args.max_steps else total_steps

  model = twins.Airbench94Twin(num_classes=int(train_y.max()) + 1,
                               in_ch=train_x.shape[-1]).to(memory_format=torch.channels_last)
  opt, sched, rates = make_optimizer(model, b, total_steps, hyp)
  config = {
      "hyp": hyp, "derived": {**rates, "steps_per_epoch": steps_per_epoch,
                              "total_steps": total_steps, "stop_at_step": stop_at},
      "args": vars(args), "normalize": {"kind": args.normalize, "mean": list(stats[0]),
                                        "std": list(stats[1])},
      "data": {"source": data["source"], "num_train": n, "num_test": len(data["test_labels"]),
               "loader_mean": data["mean"], "loader_std": data["std"]},
      "n_params": twins.count_params(model), "torch": torch.__version__,
      "threads": torch.get_num_threads(), "cpu": provenance.cpu_model(),
      "cpu_count": os.cpu_count(), "git": provenance.git_state(),
      "python": platform.python_version(), "data_load_s": data_load_s,
      "script": "benchmarks/airbench94_torch.py",
  }
  (workdir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
  metrics = open(workdir / "metrics.jsonl", "w")  # pylint: disable=consider-using-with
  records = []

  def write(rec):
    records.append(rec)
    metrics.write(json.dumps(rec) + "\n")
    metrics.flush()
    print(json.dumps(rec), flush=True)

  t0 = time.perf_counter()
  idx = torch.from_numpy(whitening_indices(args.seed, n, hyp["whitening_images"]))
  white_x = to_input(train_x[idx].permute(0, 3, 1, 2), mean, std)
  with torch.no_grad():
    model.whiten.weight.copy_(whitening_weight(white_x, hyp["whitening_kernel"],
                                               hyp["whitening_eps"]))
  aug = TrainAugment(train_x, gen, flip=True, translate=hyp["aug"]["translate"])
  loss_fn = nn.CrossEntropyLoss(label_smoothing=hyp["label_smoothing"], reduction="none")
  la = hyp["lookahead"]
  lookahead, step = None, 0
  for epoch in range(math.ceil(hyp["epochs"])):
    model.whiten.bias.requires_grad_(epoch < hyp["whiten_bias_epochs"])
    t_epoch = time.perf_counter()
    model.train()
    images = aug.epoch(epoch)
    order = torch.randperm(n, generator=gen)
    loss_sum, correct, seen, lr = 0.0, 0, 0, None
    for i in range(steps_per_epoch):
      batch = order[i * b:(i + 1) * b]
      x, y = to_input(images[batch], mean, std), train_y[batch]
      out = model(x)
      loss = loss_fn(out, y).sum()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      lr = opt.param_groups[1]["lr"]  # the lr of this step (not the BN-bias group's)
      opt.step()
      sched.step()
      step += 1
      loss_sum += loss.item()
      correct += (out.detach().argmax(1) == y).sum().item()
      seen += len(y)
      if epoch >= la["start_epochs"] and step % la["every_n_steps"] == 0:
        if lookahead is None:
          lookahead = Lookahead(model)
        else:
          rho = la["decay_base"] ** la["every_n_steps"] * (step / total_steps) ** la["decay_pow"]
          lookahead.update(model, rho)
      if step >= stop_at:
        break
    if lookahead is not None:
      lookahead.update(model, 1.0)  # the slow weights back at each epoch end
    epoch_s = time.perf_counter() - t_epoch
    write({"epoch": epoch, "step": step, "train_loss": loss_sum / seen,
           "train_acc": correct / seen, "lr": lr, "images_per_s": seen / epoch_s,
           "wall_s": time.perf_counter() - t0})
    if step >= stop_at:
      break

  t_eval = time.perf_counter()
  result = evaluate(model, data["test_images"], data["test_labels"], mean, std,
                    hyp["eval_batch_size"])
  write({"final": True, "epoch": epoch, "step": step, **result,
         "eval_s": time.perf_counter() - t_eval, "wall_s": time.perf_counter() - t0})
  metrics.close()
  return {"model": model, "records": records, "config": config, "whitening_images": white_x}


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg"),
                  help="CIFAR-10 image folder (default ../shared/data/cifar10-jpeg)")
  ap.add_argument("--workdir", required=True, help="writes config.json and metrics.jsonl")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--epochs", type=float, default=HYP["epochs"])
  ap.add_argument("--normalize", choices=("cifar", "data"), default="cifar",
                  help="cifar: CIFAR-10's published mean/std (the reference); data: the "
                       "loader's statistics of these training images (the JAX trainer's)")
  ap.add_argument("--batch-size", type=int, default=HYP["batch_size"],
                  help="smoke tests only (the recipe is 1024)")
  ap.add_argument("--train-subset", type=int, default=0, help="smoke tests only")
  ap.add_argument("--test-subset", type=int, default=0, help="smoke tests only")
  ap.add_argument("--max-steps", type=int, default=0, help="smoke tests only")
  a = ap.parse_args(argv)
  if a.epochs <= 0 or a.batch_size <= 0 or a.threads <= 0:
    ap.error("--epochs, --batch-size and --threads must be positive")
  return a


def main(argv=None) -> int:
  """Runs :func:`train` on the command line ``argv``; returns the exit status (0)."""
  train(parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main())
