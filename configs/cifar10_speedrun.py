"""CIFAR-10 speedrun: airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single
GPU", arXiv:2404.00498; reference github.com/KellerJordan/cifar10-airbench ``airbench94.py``)
in this project's trainer. Target (issue 24, item 3): >= 94.0% mean test top-1 over 2 seeds
in <= 30 minutes wall clock on the 2-core CPU, decoding and compilation counted.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \\
    python -m cnn_jax.train --config configs/cifar10_speedrun.py --workdir runs/speedrun

Expected (logged runs, experiments/cifar10_speedrun): with oneDNN's convolutions and
BatchNorm (``conv_backend = 'onednn'``, the default where the ``onednn`` extra is installed;
2-core Intel Xeon, 2026-12-07) 90.73% and 90.81% test top-1 with the flip + translate TTA
(mean 90.77%) in 22.8 and 21.7 minutes of ``wall_s`` (decoded-image cache warm; compilation
and the final 6-view evaluation counted; median 380-400 train images/s); with XLA's
convolutions (2-core AMD EPYC, 2026-12-03)
90.61% and 90.80% in 50.0 and 48.7 minutes. The time target is met with oneDNN, the
accuracy target is not: the reference's 94.01% mean (TTA level 2, 3.83 s on one A100, its
README) is on the original CIFAR-10, these runs on the JPEG copy (PSNR ~30 dB), where the
reference recipe itself, in PyTorch on the same images (``benchmarks/airbench94_torch.py``),
reached 90.49%: the gap is the data, not the port.

The reference's recipe, key by key (the reference's ``hyp`` in brackets):

* ``model.name = 'airbench94'`` (:mod:`cnn_jax.models.airbench`), its whitening kernel
  computed before step 0 from the 2x2 patches of ``model.whitening_images = 5000``
  normalised training images (a seeded random subset; the reference takes the first 5000),
  ``model.whitening_eps = 5e-4`` (:func:`cnn_jax.models.airbench.init_whitening`).
* ``optim.name = 'airbench_sgd'`` (:func:`cnn_jax.speedrun.airbench_optimizer`): Nesterov
  SGD, momentum 0.85, batch 1024, peak lr 1.5 and coupled weight decay 0.0153 / 11.5 =
  1.33e-3 on every parameter, the reference's lr 11.5 and wd 0.0153 "per 1024 examples"
  converted to this project's batch-mean loss
  (:func:`cnn_jax.speedrun.reference_hyperparameters`); BatchNorm-bias gradients x64
  (``optim.bias_scaler``), whitening kernel frozen, whitening bias frozen after 3 epochs
  (``optim.whiten_bias_epochs``) [``opt: lr, momentum, weight_decay, bias_scaler,
  whiten_bias_epochs``].
* ``optim.schedule = 'triangle'``, ``optim.triangle = (0.2, 0.23, 0.07)``: linear from
  0.2 x lr to lr at 23% of the steps, then to 0.07 x lr [``triangle(start=0.2, peak=0.23,
  end=0.07)``].
* Lookahead every 5 steps from epoch 3, decay ``0.95**5 * (step / total)**3``, weights
  pulled back to the slow ones at each epoch end (section ``lookahead``) [``opt.ema``].
* Label smoothing 0.2, alternating flip, translate by up to 2 pixels (random crop of the
  reflect-padded image, pad 2) [``aug = {flip: True, translate: 2}``].
* Evaluation with TTA level 2, mirror + one-pixel translations (``eval_tta =
  'flip_translate'``) [``net.tta_level = 2``].
* 10 epochs [``train_epochs = 9.9``: ``num_epochs`` is an int here; 480 steps instead of
  476 (48 steps of batch 1024 per epoch, the partial last batch dropped)].
* One evaluation at the end (``eval_every_epochs = 10``): the wall clock counts evaluation.

Differences that remain: the whitening images are a random subset, not the file order's
first 5000; the whitening kernel's columns may differ from the reference's by sign and order
(the conv computes the same features up to a permutation); float32 on CPU (the reference
trains in half precision on a GPU).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "airbench94"
  c.model.whitening_images = 5000
  c.model.whitening_eps = 5e-4
  c.batch_size = 1024
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.label_smoothing = 0.2
  c.ema_decay = 0.0  # airbench uses lookahead instead (section lookahead)

  # cnn_jax.speedrun.reference_hyperparameters(1024): lr 11.5 * 1024 / (1024 * (1 + 1 /
  # (1 - 0.85))) = 1.5, weight decay 0.0153 / 11.5.
  c.optim.name = "airbench_sgd"
  c.optim.nesterov = True
  c.optim.momentum = 0.85
  c.optim.lr = 1.5
  c.optim.weight_decay = 0.0153 / 11.5
  c.optim.bias_scaler = 64.0
  c.optim.whiten_bias_epochs = 3.0
  c.optim.schedule = "triangle"
  c.optim.triangle = (0.2, 0.23, 0.07)
  c.optim.warmup_epochs = 0.0  # the triangle's rise is the warm-up

  c.lookahead.every_n_steps = 5
  c.lookahead.start_epochs = 3.0
  c.lookahead.decay_base = 0.95
  c.lookahead.decay_pow = 3.0

  c.data.flip = True
  c.data.flip_mode = "alternating"
  c.data.crop_pad = 2
  c.data.pad_mode = "reflect"

  c.eval_tta = "flip_translate"
  c.eval_every_epochs = 10  # evaluate once, at the end: evaluation counts in the wall clock
  c.log_every_steps = 16
  return c
