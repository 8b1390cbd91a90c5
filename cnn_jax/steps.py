"""Pure train and eval steps: the training recipe as functions of (state, batch).

``make_train_step`` and ``make_eval_step`` close over the static pieces (model, optimizer,
augmentation settings) and return functions the trainer wraps in ``jax.jit``. The loss is
softmax cross-entropy on logits with optional label smoothing (Szegedy et al. 2016,
Sec. 7); BatchNorm uses batch statistics in training and running averages in evaluation.
An optional exponential moving average (EMA) of the weights is kept beside them (Polyak &
Juditsky 1992; as timm's ``ModelEmaV2``, which averages BatchNorm buffers too), or the state
of a weight transformation applied after each step (airbench's lookahead,
:func:`cnn_jax.speedrun.lookahead_step`). Evaluation may average test-time augmented views
(:func:`tta_logits`).
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


class LookaheadTrainState(TrainState):
  """:class:`TrainState` plus the state of a lookahead applied after every step (config
  section ``lookahead``; :func:`cnn_jax.speedrun.lookahead_step`).

  A separate class, as :class:`EmaTrainState`, so that runs without lookahead checkpoint the
  tree they always did.

  Attributes:
    lookahead: the lookahead's state (:class:`cnn_jax.speedrun.LookaheadState`: slow
      weights ``{'params': ..., 'batch_stats': ...}`` of the weights' shapes and dtypes, and
      a bool scalar ``active``), checkpointed with the rest so a resumed run continues it.
  """
  lookahead: Any


def _variables(params, batch_stats) -> dict:
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               input_shape: tuple[int, ...], ema: bool = False,
               lookahead_init: Callable | None = None) -> TrainState:
  """Initialises parameters on a dummy ``(1, H, W, C)`` input and the optimizer state.

  With ``ema=True`` returns an :class:`EmaTrainState` whose average starts at the initial
  weights; with ``lookahead_init`` (``weights -> state``, e.g.
  :func:`cnn_jax.speedrun.lookahead_init`, called on ``{'params': ..., 'batch_stats':
  ...}``) a :class:`LookaheadTrainState`.

  Raises:
    ValueError: both ``ema`` and ``lookahead_init``.
  """
  if ema and lookahead_init is not None:
    raise ValueError("init_state: a train state keeps an EMA or a lookahead, not both")
  variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape)),
                         train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                opt_state=tx.init(params))
  if lookahead_init is not None:
    return LookaheadTrainState(**fields, lookahead=lookahead_init(
        {"params": params, "batch_stats": batch_stats}))
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
                    keep_stats: Callable | None = None,
                    lookahead: Callable | None = None) -> Callable:
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

  ``lookahead`` (``state`` a :class:`LookaheadTrainState`): ``(weights, lookahead_state,
  step) -> (weights, lookahead_state)``, applied after the optimizer update with ``weights``
  ``{'params': ..., 'batch_stats': ...}`` and ``step`` the int32 count of steps taken, this
  one included (e.g. ``functools.partial(cnn_jax.speedrun.lookahead_step, ...)``). Inside the
  jitted step, so its state is donated and updated in place like the rest.

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
    if lookahead is not None:
      weights, la_state = lookahead(
          {"params": new_state.params, "batch_stats": new_state.batch_stats},
          new_state.lookahead, new_state.step)
      new_state = new_state.replace(params=weights["params"],
                                    batch_stats=weights["batch_stats"], lookahead=la_state)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return new_state, metrics

  return train_step


# Config key eval_tta -> the level of tta_logits.
TTA_LEVELS = {"none": 0, "flip": 1, "flip_translate": 2}


def tta_logits(apply_fn: Callable, variables, images: jax.Array, level: int = 2) -> jax.Array:
  """airbench94's test-time augmentation, ``(N, H, W, C)`` float -> ``(N, K)`` float32 logits.

  ``f = apply_fn(variables, x)``; ``mirror(x) = (f(x) + f(flip_lr(x))) / 2``.

  * level 0: ``f(x)``.
  * level 1: ``mirror(x)``.
  * level 2: ``mirror(x) / 2 + (mirror(t_a) + mirror(t_b)) / 4``, where ``t_a`` and ``t_b``
    are ``x`` translated by one pixel in both axes: ``x`` reflect-padded by 1 and cropped at
    offset (0, 0) (``t_a[i, j] = x[i - 1, j - 1]``) and at offset (2, 2)
    (``t_b[i, j] = x[i + 1, j + 1]``), reflection (``'reflect'``, edge not repeated) filling
    the row and column shifted in. Six views with weights 1/4, 1/4 and four of 1/8.

  Calls ``apply_fn`` once per view on ``N`` images (not one call on ``6N``: the eval batch's
  activation memory stays that of one view). Costs 1, 2 or 6 forward passes. Config key
  ``eval_tta`` ('none', 'flip', 'flip_translate': :data:`TTA_LEVELS`) picks the level of
  the trainer's evaluations.

  Args:
    apply_fn: ``(variables, (N, H, W, C) float) -> (N, K)`` logits, e.g.
      ``lambda v, x: model.apply(v, x, train=False)``.
    variables: passed through to ``apply_fn``.
    images: ``(N, H, W, C)`` float, normalised as the model expects.
    level: 0, 1 or 2 (the reference's ``hyp['net']['tta_level']``, 2 by default).

  Raises:
    ValueError: ``level`` not in {0, 1, 2}, or ``images`` not 4-D.

  Source: Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
  arXiv:2404.00498, Sec. 3, "Multi-crop evaluation"; reference implementation
  github.com/KellerJordan/cifar10-airbench ``airbench94.py`` ``infer_basic``,
  ``infer_mirror``, ``infer_mirror_translate`` (NCHW there: ``flip(-1)`` is the width axis,
  axis 2 in NHWC).
  """
  if level not in (0, 1, 2):
    raise ValueError(f"tta_logits: level must be 0 (none), 1 (mirror) or 2 (mirror + "
                     f"translate), got {level!r}")
  if images.ndim != 4:
    raise ValueError(f"tta_logits: images must be (N, H, W, C), got shape {images.shape}")
  f = lambda x: apply_fn(variables, x).astype(jnp.float32)
  if level == 0:
    return f(images)
  mirror = lambda x: 0.5 * f(x) + 0.5 * f(x[:, :, ::-1, :])
  logits = mirror(images)
  if level == 1:
    return logits
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  t_a = padded[:, 0:h, 0:w]
  t_b = padded[:, 2:h + 2, 2:w + 2]
  return 0.5 * logits + 0.25 * (mirror(t_a) + mirror(t_b))


def make_eval_step(model: nn.Module, *, num_classes: int, mean, std,
                   dtype=jnp.float32, flip_tta: bool = False, ema: bool = False,
                   tta_level: int | None = None) -> Callable:
  """Returns ``eval_step(state, images, labels, mask) -> sums``.

  ``images`` uint8 ``(N, H, W, C)``, ``labels`` int ``(N,)``. ``mask`` (float32 ``(N,)``, 1
  for real examples, 0 for padding) lets the last batch be padded to full size; the step
  returns *sums* (``loss_sum``, ``correct``, ``count``) so the caller divides totals once:
  every test example counts exactly once, never a mean of batch means.

  ``tta_level``: test-time augmentation, :func:`tta_logits` of that level (0 none, 1
  horizontal flip, 2 flip + one-pixel translations; Jordan 2024, "94% on CIFAR-10 in 3.29
  Seconds on a Single GPU", arXiv:2404.00498). ``flip_tta=True`` is level 1 (the logits
  being the mean of the image's and its mirror's). TTA multiplies the evaluation cost (2x,
  6x) and is not the plain single-view top-1 that training logs.

  ``ema``: score the state's weight average instead of its weights (``state`` must be an
  :class:`EmaTrainState`; :meth:`TrainState.variables` raises ``ValueError`` otherwise).

  Raises:
    ValueError: both ``flip_tta=True`` and a ``tta_level``, or a level not in {0, 1, 2}.
  """
  if tta_level is None:
    tta_level = 1 if flip_tta else 0
  elif flip_tta:
    raise ValueError(f"make_eval_step: give flip_tta=True or tta_level={tta_level}, not both")
  if tta_level not in (0, 1, 2):
    raise ValueError(f"make_eval_step: tta_level must be 0, 1 or 2, got {tta_level!r}")
  apply_fn = lambda variables, x: model.apply(variables, x, train=False)

  def eval_step(state: TrainState, images, labels, mask):
    x = augment.normalize(images, mean, std, dtype)
    logits = tta_logits(apply_fn, state.variables(ema=ema), x, tta_level)
    loss = cross_entropy(logits, labels, num_classes)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  return eval_step
