"""Optimizer factory: learning-rate schedules, weight-decay mask, SGD/AdamW/airbench SGD (optax).

Recipe sources: SGD with Nesterov momentum (Sutskever et al. 2013) and coupled L2 weight
decay as in PyTorch's ``SGD(weight_decay=...)``; AdamW with decoupled decay (Loshchilov &
Hutter 2019); linear warm-up (Goyal et al. 2017) then cosine decay (Loshchilov & Hutter
2017, SGDR without restarts) or piecewise-constant steps (He et al. 2015); airbench94's
triangular schedule and optimizer (Jordan 2024, arXiv:2404.00498, Sec. 3; built by
:mod:`cnn_jax.speedrun`).
"""

from __future__ import annotations

import jax
import optax

from cnn_jax import speedrun


def learning_rate_schedule(optim_config, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``optim.lr`` over ``optim.warmup_epochs``, then the decay
  named by ``optim.schedule``; or, for ``'triangle'``,
  :func:`cnn_jax.speedrun.triangle_schedule` of ``optim.lr`` with ``optim.triangle``
  (``(start, peak_position, end)``) over the ``num_epochs * steps_per_epoch`` steps.
  Returns a function step (int, 0-based optimizer step) -> learning rate (float32).

  Raises:
    ValueError: ``'triangle'`` with fewer than 2 steps in all (names the keys).
  """
  c = optim_config
  total = max(1, int(num_epochs * steps_per_epoch))
  if c.schedule == "triangle":
    if total < 2:
      raise ValueError(f"config key optim.schedule = 'triangle' needs at least 2 steps, got "
                       f"{total} (num_epochs x steps per epoch)")
    start, peak, end = c.triangle
    return speedrun.triangle_schedule(c.lr, total, start=start, peak=peak, end=end)
  warmup = min(int(round(c.warmup_epochs * steps_per_epoch)), total - 1)
  if c.schedule == "cosine":
    after = optax.cosine_decay_schedule(c.lr, max(1, total - warmup), alpha=c.min_lr / c.lr)
  elif c.schedule == "piecewise":
    bounds = [b * total if b <= 1 else b * steps_per_epoch for b in c.boundaries_epochs]
    after = optax.piecewise_constant_schedule(
        c.lr, {max(1, int(b) - warmup): c.decay_factor for b in bounds})
  else:
    after = optax.constant_schedule(c.lr)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), after], [warmup])


def weight_decay_mask(params):
  """True for leaves named ``kernel`` (conv and dense weights), False for everything else:
  biases, BatchNorm/LayerNorm scales and offsets, GRN gamma/beta, embeddings, tokens."""
  def is_kernel(path, _):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(optim_config, steps_per_epoch: int,
                     num_epochs: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax optimizer of config section ``optim``; returns ``(tx, schedule)``.

  ``optim.name``: ``'sgd'`` (coupled decay on kernels only), ``'adamw'`` (decoupled decay
  on kernels only), ``'airbench_sgd'`` (:func:`cnn_jax.speedrun.airbench_optimizer`: coupled
  decay on every parameter, BatchNorm-bias gradients times ``optim.bias_scaler``, the
  ``whiten`` kernel frozen and its bias frozen after ``optim.whiten_bias_epochs``, with the
  schedule of :func:`learning_rate_schedule`). ``optim.grad_clip_norm`` clips first.

  Raises:
    ValueError: unknown ``optim.name``; see :func:`learning_rate_schedule`.
  """
  c = optim_config
  schedule = learning_rate_schedule(c, steps_per_epoch, num_epochs)
  parts = []
  if c.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.name == "sgd":
    if c.weight_decay:
      parts.append(optax.add_decayed_weights(c.weight_decay, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
  elif c.name == "airbench_sgd":
    tx, _ = speedrun.airbench_optimizer(
        c.lr, c.momentum, c.weight_decay, max(1, int(num_epochs * steps_per_epoch)),
        steps_per_epoch, bias_scaler=c.bias_scaler, whiten_bias_epochs=c.whiten_bias_epochs,
        schedule=schedule, nesterov=c.nesterov)
    parts.append(tx)
  elif c.name == "adamw":
    parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                             mask=weight_decay_mask))
  else:
    raise ValueError(f"config key optim.name = {c.name!r}; expected 'sgd', 'adamw' or "
                     f"'airbench_sgd'")
  return optax.chain(*parts), schedule
