"""Pure train and eval steps: the training recipe as functions of (state, batch).

``make_train_step`` and ``make_eval_step`` close over the static pieces (model, optimizer,
augmentation settings) and return functions the trainer wraps in ``jax.jit``. The loss is
softmax cross-entropy on logits with optional label smoothing (Szegedy et al. 2016,
Sec. 7); BatchNorm uses batch statistics in training and running averages in evaluation.
An optional exponential moving average (EMA) of the weights is kept beside them (Polyak &
Juditsky 1992; as timm's ``ModelEmaV2``, which averages BatchNorm buffers too).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_jax import xla_cpu
from cnn_jax.data import augment


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (and is checkpointed).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: the ``'params'`` collection.
    batch_stats: the ``'batch_stats'`` collection (BatchNorm running mean/var); ``{}`` for
      models without BatchNorm.
    opt_state: optax state.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self, ema: bool = False) -> dict:
    """The variables dict for ``model.apply``: the trained weights, or with ``ema=True``
    their moving average.

    Raises:
      ValueError: ``ema=True`` on a state without an EMA (config key ``ema_decay`` = 0).
    """
    if ema:
      raise ValueError("this train state keeps no EMA of the weights (config key ema_decay "
                       "= 0); train with ema_decay > 0 to evaluate one")
    return _variables(self.params, self.batch_stats)


class EmaTrainState(TrainState):
  """:class:`TrainState` plus an exponential moving average of the weights.

  A separate class, not an optional field, so that a run without EMA checkpoints exactly
  the tree it did before EMA existed (orbax restores only into the saved structure).

  Attributes:
    ema: ``{'params': ..., 'batch_stats': ...}``, the same trees (shapes, float32) as
      ``params`` and ``batch_stats``, updated by :func:`update_ema` after every step.
  """
  ema: Any

  def variables(self, ema: bool = False) -> dict:
    """The variables dict for ``model.apply``; ``ema=True`` gives the averaged weights."""
    if ema:
      return _variables(self.ema["params"], self.ema["batch_stats"])
    return _variables(self.params, self.batch_stats)


def _variables(params, batch_stats) -> dict:
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               input_shape: tuple[int, ...], ema: bool = False) -> TrainState:
  """Initialises parameters on a dummy ``(1, H, W, C)`` input and the optimizer state.

  With ``ema=True`` returns an :class:`EmaTrainState` whose average starts at the initial
  weights.
  """
  variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape)),
                         train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                opt_state=tx.init(params))
  if not ema:
    return TrainState(**fields)
  # Copies: the step donates the state, and one buffer cannot be given twice.
  return EmaTrainState(**fields, ema=jax.tree.map(jnp.copy, {"params": params,
                                                             "batch_stats": batch_stats}))


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The EMA decay used for update number ``step`` (0-based): ``min(decay, (1 + step) /
  (10 + step))``, the warm-up of TensorFlow's ``tf.train.ExponentialMovingAverage`` with
  ``num_updates``, so that early averages are not dominated by the random initialisation.
  Returns a float32 scalar."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema, new, decay: jax.Array):
  """``decay * ema + (1 - decay) * new`` leaf by leaf; ``ema`` and ``new`` same trees."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, ``(N, K)`` float logits and ``(N,)`` int labels -> ``(N,)``.

  With smoothing ``eps`` the target is ``(1 - eps) * one_hot + eps / K``.
  """
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, num_classes: int,
                    mean, std, seed: int, crop_pad: int = 4, pad_mode: str = "reflect",
                    flip: bool = True, label_smoothing: float = 0.0,
                    dtype=jnp.float32, bn_groups: int = 1,
                    group_sharding=None, ema_decay: float = 0.0,
                    materialize_conv_inputs: bool = False, train_mode: bool = True,
                    keep_stats: Callable | None = None) -> Callable:
  """Returns ``train_step(state, images, labels) -> (state, metrics)``.

  ``bn_groups > 1`` is ghost batch norm (Hoffer et al. 2017): the batch is split into
  ``bn_groups`` equal groups (one per device when ``group_sharding`` shards the group axis
  over the mesh), each normalised with its own statistics, as ``pmap`` code without
  cross-replica BatchNorm did; the running statistics are the mean over groups. With 1
  group, statistics are over the whole (global) batch.

  ``images`` are uint8 ``(N, H, W, C)`` and ``labels`` int32 ``(N,)``: augmentation and
  normalisation happen inside the step. The augmentation and dropout key is
  ``fold_in(key(seed), step)``, so a resumed run draws the same randomness. ``metrics``
  holds device scalars ``loss`` and ``accuracy`` (means over the global batch); nothing is
  copied to the host here.

  ``ema_decay > 0`` (``state`` an :class:`EmaTrainState`) also moves the weight average
  toward the new parameters and BatchNorm statistics, with decay
  ``ema_decay_at(ema_decay, state.step)``.

  ``materialize_conv_inputs`` stores every ``nn.Conv`` input instead of letting XLA recompute
  it in the backward pass (:func:`cnn_jax.xla_cpu.materialized_conv_inputs`): the same
  results, a faster step on CPU.

  Transfer learning (:mod:`cnn_jax.transfer`): ``train_mode=False`` applies the model with
  ``train=False`` (BatchNorm with its running averages, which are not updated; no dropout),
  for a linear probe of a frozen backbone. ``keep_stats(step, old, new)`` returns the
  BatchNorm statistics to keep after the step from the state's and the step's (``step`` the
  int32 step being taken), for progressive unfreezing's still-frozen stages.
  """
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, images, labels):
    key = jax.random.fold_in(base_key, state.step)
    k_aug, k_drop = jax.random.split(key)
    images = augment.train_augment(k_aug, images, crop_pad=crop_pad, pad_mode=pad_mode,
                                   flip=flip)
    x = augment.normalize(images, mean, std, dtype)

    def forward(params, x, k_drop):
      variables = {"params": params}
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
      with (xla_cpu.materialized_conv_inputs(state.step >= 0) if materialize_conv_inputs
            else contextlib.nullcontext()):
        if not train_mode:
          return model.apply(variables, x, train=False), {}
        return model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": k_drop})

    def loss_fn(params):
      if bn_groups == 1:
        logits, updates = forward(params, x, k_drop)
      else:
        xg = x.reshape(bn_groups, -1, *x.shape[1:])
        if group_sharding is not None:
          xg = jax.lax.with_sharding_constraint(xg, group_sharding)
        keys = jax.random.split(k_drop, bn_groups)
        logits, updates = jax.vmap(forward, in_axes=(None, 0, 0))(params, xg, keys)
        logits = logits.reshape(-1, logits.shape[-1])
        updates = jax.tree.map(lambda u: u.mean(0), updates)
      loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    batch_stats = updates.get("batch_stats", state.batch_stats)
    if keep_stats is not None:
      batch_stats = keep_stats(state.step, state.batch_stats, batch_stats)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=batch_stats)
    if ema_decay:
      new = {"params": new_state.params, "batch_stats": new_state.batch_stats}
      new_state = new_state.replace(
          ema=update_ema(state.ema, new, ema_decay_at(ema_decay, state.step)))
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, *, num_classes: int, mean, std,
                   dtype=jnp.float32, flip_tta: bool = False, ema: bool = False) -> Callable:
  """Returns ``eval_step(state, images, labels, mask) -> sums``.

  ``images`` uint8 ``(N, H, W, C)``, ``labels`` int ``(N,)``. ``mask`` (float32 ``(N,)``, 1
  for real examples, 0 for padding) lets the last batch be padded to full size; the step
  returns *sums* (``loss_sum``, ``correct``, ``count``) so the caller divides totals once:
  every test example counts exactly once, never a mean of batch means.

  ``flip_tta``: test-time augmentation by horizontal flip, the logits being the mean of the
  image's and its mirror's (as airbench's TTA level 1: Jordan 2024, "94% on CIFAR-10 in
  3.29 Seconds on a Single GPU", arXiv:2404.00498). It doubles the evaluation cost and is
  not the plain single-view top-1 that training logs.

  ``ema``: score the state's weight average instead of its weights (``state`` must be an
  :class:`EmaTrainState`; :meth:`TrainState.variables` raises ``ValueError`` otherwise).
  """
  def eval_step(state: TrainState, images, labels, mask):
    x = augment.normalize(images, mean, std, dtype)
    variables = state.variables(ema=ema)
    logits = model.apply(variables, x, train=False)
    if flip_tta:
      logits = 0.5 * (logits + model.apply(variables, x[:, :, ::-1, :], train=False))
    loss = cross_entropy(logits, labels, num_classes)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  return eval_step
