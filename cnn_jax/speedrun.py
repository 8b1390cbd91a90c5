"""The training-recipe pieces of airbench94 as pure functions: the reference's hyperparameters
in this project's parametrisation, its triangular learning-rate schedule, its optimizer (64x
learning rate on BatchNorm biases, frozen whitening layer) and lookahead. ``cnn_jax.train``
calls them through config keys ``optim.schedule = 'triangle'``, ``optim.name =
'airbench_sgd'`` (:func:`cnn_jax.optim.create_optimizer`) and section ``lookahead``
(``configs/cifar10_speedrun.py``); the flip + translate test-time augmentation is
:func:`cnn_jax.steps.tta_logits` (config key ``eval_tta``), the whitening initialisation
:func:`cnn_jax.models.airbench.init_whitening` (``model.whitening_images``).

Source: Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498
(Sec. 3); reference implementation github.com/KellerJordan/cifar10-airbench
``airbench94.py`` (``hyp``, ``main``, ``triangle``, ``LookaheadState``). The network is
:mod:`cnn_jax.models.airbench`.

Parametrisation. The reference sums the loss over the batch and states lr and weight decay
"per 1024 examples" in a decoupled form (``kilostep_scale = 1024 * (1 + 1 / (1 - momentum))``,
``lr_torch = 11.5 / kilostep_scale``, coupled decay ``wd_torch = 0.0153 * B / 11.5``). This
project averages the loss over the batch, so the same SGD trajectory has
``lr = lr_torch * B`` and coupled decay ``wd_torch / B``: :func:`reference_hyperparameters`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import steps

# The reference's hyperparameters (airbench94.py ``hyp``).
REF_LR = 11.5  # per 1024 examples, decoupled from momentum
REF_MOMENTUM = 0.85
REF_WEIGHT_DECAY = 0.0153  # per 1024 examples, decoupled from lr
REF_BIAS_SCALER = 64.0
REF_WHITEN_BIAS_EPOCHS = 3
REF_TRIANGLE = (0.2, 0.23, 0.07)  # start factor, peak position (fraction of steps), end factor
REF_LOOKAHEAD = dict(start_epochs=3, every_n_steps=5, decay_base=0.95, decay_pow=3.0)
NEVER = int(np.iinfo(np.int32).max)  # "frozen from" step of a leaf that always trains


def reference_hyperparameters(batch_size: int = 1024, lr: float = REF_LR,
                              momentum: float = REF_MOMENTUM,
                              weight_decay: float = REF_WEIGHT_DECAY) -> dict:
  """airbench94's decoupled ``lr`` / ``weight_decay`` converted to this project's Nesterov SGD
  on the batch-mean loss with coupled L2 decay (``optax.add_decayed_weights`` before
  ``optax.sgd``, as PyTorch's ``SGD(weight_decay=...)``).

  ``lr_ours = lr * batch_size / (1024 * (1 + 1 / (1 - momentum)))`` (peak learning rate; the
  reference's ``lr / kilostep_scale`` times ``batch_size`` for the sum-to-mean loss change) and
  ``weight_decay_ours = weight_decay / lr`` (the reference's ``wd / lr`` per-group coupling
  divided by ``batch_size``; independent of the batch size). For the reference
  (1024, 11.5, 0.85, 0.0153): lr 1.5, weight decay 0.0013304...

  Returns:
    ``{'lr': float, 'momentum': float, 'weight_decay': float}``.

  Raises:
    ValueError: ``momentum`` not in [0, 1), or ``batch_size`` or ``lr`` not positive.
  """
  if not 0.0 <= momentum < 1.0 or batch_size <= 0 or lr <= 0:
    raise ValueError(f"reference_hyperparameters: need 0 <= momentum < 1, batch_size > 0, "
                     f"lr > 0; got momentum={momentum}, batch_size={batch_size}, lr={lr}")
  kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
  return {"lr": lr * batch_size / kilostep_scale, "momentum": momentum,
          "weight_decay": weight_decay / lr}


def triangle_schedule(peak_lr: float, total_steps: int, start: float = REF_TRIANGLE[0],
                      peak: float = REF_TRIANGLE[1],
                      end: float = REF_TRIANGLE[2]) -> optax.Schedule:
  """Piecewise-linear learning rate: ``start * peak_lr`` at step 0, ``peak_lr`` at step
  ``int(peak * total_steps)``, ``end * peak_lr`` at ``total_steps`` (constant after).

  As the reference's ``triangle(total_train_steps, start=0.2, end=0.07, peak=0.23)`` driving
  ``LambdaLR``: optimizer step ``i`` (0-based, = optax's count) uses factor ``i``.

  Returns:
    step (int) -> float32 learning rate.

  Raises:
    ValueError: ``total_steps < 2`` or ``peak`` not in (0, 1).
  """
  if total_steps < 2 or not 0.0 < peak < 1.0:
    raise ValueError(f"triangle_schedule: need total_steps >= 2 and 0 < peak < 1, got "
                     f"total_steps={total_steps}, peak={peak}")
  xp = jnp.array([0.0, float(int(peak * total_steps)), float(total_steps)])
  fp = jnp.array([start, 1.0, end]) * peak_lr
  return lambda step: jnp.interp(jnp.asarray(step, jnp.float32), xp, fp)


def _path_keys(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_norm_bias(path) -> bool:
  """A BatchNorm bias of :class:`~cnn_jax.models.airbench.Airbench94` (a path through a module
  named ``norm*``), as the reference's ``'norm' in name`` parameter group."""
  return any(k.startswith("norm") for k in _path_keys(path))


def freeze_schedule(whiten_bias_epochs: float, steps_per_epoch: int) -> Callable:
  """``frozen_from(path) -> int``: the first optimizer step (0-based) at which a leaf stops
  moving. ``whiten/kernel`` 0 (never trains: the reference sets ``requires_grad = False``);
  ``whiten/bias`` ``round(whiten_bias_epochs * steps_per_epoch)`` (the reference trains it
  while ``epoch < whiten_bias_epochs``); every other leaf :data:`NEVER`."""
  bias_until = int(round(whiten_bias_epochs * steps_per_epoch))

  def frozen_from(path) -> int:
    keys = _path_keys(path)
    if keys[:1] == ["whiten"]:
      return 0 if keys[-1] == "kernel" else bias_until
    return NEVER
  return frozen_from


class FreezeState(NamedTuple):
  """State of :func:`freeze_leaves`: ``count``, int32 scalar, updates seen."""
  count: jax.Array


def freeze_leaves(frozen_from: Callable) -> optax.GradientTransformation:
  """Zeroes the update of every leaf whose ``frozen_from(path)`` step has been reached.

  Put last in a chain: the frozen leaf then never moves, whatever weight decay or momentum
  computed before (equal, for the parameters, to the reference's skipping of a parameter
  without gradient; its momentum buffer differs but is never used again).
  """
  def init(params):
    del params
    return FreezeState(jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del params
    new = jax.tree_util.tree_map_with_path(
        lambda p, u: jnp.where(state.count >= frozen_from(p), jnp.zeros_like(u), u), updates)
    return new, FreezeState(state.count + 1)

  return optax.GradientTransformation(init, update)


def airbench_optimizer(lr: float, momentum: float, weight_decay: float, total_steps: int,
                       steps_per_epoch: int, *, bias_scaler: float = REF_BIAS_SCALER,
                       whiten_bias_epochs: float = REF_WHITEN_BIAS_EPOCHS,
                       schedule: optax.Schedule | None = None, nesterov: bool = True
                       ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """airbench94's optimizer for :class:`~cnn_jax.models.airbench.Airbench94` params.

  Nesterov SGD (``momentum``; heavy-ball with ``nesterov=False``) with coupled L2 decay
  ``weight_decay`` on *every* trainable leaf (the reference decays all parameter groups,
  BatchNorm biases and the whitening bias included), the gradient of BatchNorm biases
  multiplied by ``bias_scaler`` before the decay is added (the reference's ``lr_biases =
  64 lr`` with ``weight_decay = wd / lr_biases``: the same decay per step, a 64x gradient
  step), the learning rate ``schedule`` (default :func:`triangle_schedule` of ``lr``), the
  whitening kernel frozen and its bias frozen after ``whiten_bias_epochs``
  (:func:`freeze_schedule`).

  Args:
    lr, momentum, weight_decay: in this project's parametrisation
      (:func:`reference_hyperparameters`).
    total_steps: optimizer steps of the run (for the default schedule).
    steps_per_epoch: for the whitening-bias freeze.
    bias_scaler: gradient factor of the BatchNorm biases (leaves under a module ``norm*``).
    whiten_bias_epochs: epochs (float) during which ``whiten/bias`` trains.
    schedule: step -> learning rate; ``None``: :func:`triangle_schedule` ``(lr, total_steps)``.
    nesterov: Nesterov momentum (the reference's) or heavy-ball.

  Returns:
    ``(tx, schedule)``, as :func:`cnn_jax.optim.create_optimizer`.

  Source: airbench94.py ``main`` (``param_configs``, ``torch.optim.SGD(..., nesterov=True)``,
  ``model[0].bias.requires_grad = (epoch < hyp['opt']['whiten_bias_epochs'])``).
  """
  schedule = schedule or triangle_schedule(lr, total_steps)
  tx = optax.chain(
      optax.masked(optax.scale(bias_scaler),
                   lambda params: jax.tree_util.tree_map_with_path(
                       lambda p, _: is_norm_bias(p), params)),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
      freeze_leaves(freeze_schedule(whiten_bias_epochs, steps_per_epoch)))
  return tx, schedule


# --------------------------------------------------------------------------------------------
# Lookahead


class LookaheadState(NamedTuple):
  """State of airbench94's lookahead.

  Attributes:
    slow: the averaged ("slow") weights, the same tree, shapes and dtypes as the weights
      (``{'params': ..., 'batch_stats': ...}``).
    active: bool scalar; False until the first synchronisation step copies the weights in.
  """
  slow: Any
  active: jax.Array


def lookahead_init(weights) -> LookaheadState:
  """An inactive :class:`LookaheadState` for ``weights`` (copies, so the train step may donate
  both)."""
  return LookaheadState(jax.tree.map(jnp.copy, weights), jnp.zeros((), bool))


def lookahead_decay(step, total_steps: int, every_n_steps: int = 5, decay_base: float = 0.95,
                    decay_pow: float = 3.0) -> jax.Array:
  """The decay ``rho = decay_base**every_n_steps * (step / total_steps)**decay_pow`` of a
  synchronisation after ``step`` optimizer steps (float32 scalar): small early (the slow
  weights follow the fast ones), up to ``0.95**5 = 0.774`` at the end
  (airbench94.py ``main``: ``base_rho * (current_steps / total_train_steps) ** decay_pow``)."""
  frac = jnp.asarray(step, jnp.float32) / jnp.float32(total_steps)
  return jnp.float32(decay_base ** every_n_steps) * frac ** jnp.float32(decay_pow)


def lookahead_step(weights, state: LookaheadState, step, *, steps_per_epoch: int,
                   total_steps: int, start_epochs: float = 3, every_n_steps: int = 5,
                   decay_base: float = 0.95, decay_pow: float = 3.0):
  """airbench94's lookahead after one optimizer step; jit-able, no Python branches on data.

  ``step`` (int, 1-based) is the number of optimizer steps taken, the step just taken
  included (``TrainState.step`` after the step). The step belongs to epoch
  ``(step - 1) // steps_per_epoch``. When that epoch is ``>= start_epochs`` and ``step`` is a
  multiple of ``every_n_steps``, this is a synchronisation: the first one copies the weights
  into ``slow`` and leaves them; later ones set ``slow = rho * slow + (1 - rho) * weights``
  (``rho`` = :func:`lookahead_decay`) and pull the weights back to ``slow``. After the last step
  of every epoch (``step % steps_per_epoch == 0`` or ``step == total_steps``) an active
  lookahead also pulls the weights back (the reference's ``update(model, decay=1.0)``).

  It acts on every float leaf of ``weights``, BatchNorm running statistics included (the
  reference averages ``net.state_dict()``, whose float entries are parameters and BN
  buffers); the optimizer state (momentum) is untouched, as in the reference.

  Why not ``optax.lookahead`` (Zhang et al. 2019): its slow step size is one constant and it
  syncs from step 0, while airbench's ``1 - rho`` follows a schedule, starts at epoch 3 and
  copies back at each epoch end; it sees only the parameters (not BN statistics), and it
  needs ``LookaheadParams`` (fast and slow) in place of the params tree, which changes the
  train state and checkpoints.

  Args:
    weights: e.g. ``{'params': state.params, 'batch_stats': state.batch_stats}``.
    state: :class:`LookaheadState` of the same tree.
    step: int scalar (Python or jax), >= 1.

  Returns:
    ``(weights, state)``, new trees of the same structure.

  Source: airbench94.py ``main`` (the ``hyp['opt']['ema']`` block) and ``LookaheadState``;
  Jordan 2024, Sec. 3, "Lookahead optimization".
  """
  step = jnp.asarray(step, jnp.int32)
  epoch = (step - 1) // steps_per_epoch
  sync = (epoch >= start_epochs) & (step % every_n_steps == 0)
  first, update = sync & ~state.active, sync & state.active
  rho = lookahead_decay(step, total_steps, every_n_steps, decay_base, decay_pow)
  averaged = steps.update_ema(state.slow, weights, rho)  # rho * slow + (1 - rho) * weights
  slow = jax.tree.map(
      lambda s, a, w: jnp.where(first, w, jnp.where(update, a.astype(s.dtype), s)),
      state.slow, averaged, weights)
  active = state.active | sync
  epoch_end = (step % steps_per_epoch == 0) | (step == total_steps)
  pull = update | (active & epoch_end)
  weights = jax.tree.map(lambda s, w: jnp.where(pull, s, w), slow, weights)
  return weights, LookaheadState(slow, active)
