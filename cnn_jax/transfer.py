"""Transfer learning: which leaves a run started from another run's checkpoint
(``init_from``) re-initialises, which it trains at which step, and the optimizer that
enforces it. Config section ``transfer`` (checked by :func:`cnn_jax.config.validate`; it acts
only with ``init_from``).

Modes (``transfer.mode``):

* ``'finetune'`` (default): every parameter trains from the restored values, as
  ``init_from`` did before this module: the "fine-tuned" setting of Kornblith, Shlens & Le
  2019, "Do Better ImageNet Models Transfer Better?" (CVPR; arXiv:1805.08974).
* ``'linear_probe'``: only the head trains; the backbone is frozen and runs in inference
  mode, i.e. the model is applied with ``train=False`` during training (BatchNorm normalises
  with its restored running averages, which are never updated; no dropout): a linear
  classifier on fixed features, Kornblith et al. 2019's logistic-regression setting (they
  fit it with L-BFGS; here it is the config's optimizer and schedule).
* ``'progressive'``: gradual unfreezing (Howard & Ruder 2018, "Universal Language Model
  Fine-tuning for Text Classification" (ULMFiT), ACL, Sec. 3.3): the head trains from step
  0, then every ``transfer.unfreeze_every_epochs`` epochs the next lower stage joins, top
  down; stage ``j`` below the head (``j = 1, 2, ...``) trains from step
  ``j * unfreeze_every_epochs * steps_per_epoch`` (rounded, halves up); a stage whose step
  falls after the last step stays frozen. The forward pass is in training mode for every stage
  (BatchNorm normalises with the batch's statistics in frozen stages too; dropout on), and
  the running averages of the stages still frozen are put back after each step, so they stay
  the source run's until their stage unfreezes. Evaluation uses the running averages: a
  stage still frozen at the end is evaluated with the source data's statistics although
  training normalised it with the batch's.

Stages are the model's top-level parameter groups (the keys of ``params``, which
``batch_stats`` shares) in the order the forward pass first calls them, recorded by tracing
``model.init`` under :func:`flax.linen.intercept_methods`, so every model family has them
without a table: ``resnet20`` has ``Conv_0, BatchNorm_0, BasicBlock_0 ... BasicBlock_8,
Dense_0`` (one stage per residual block), ``cifar10_cnn`` ``ConvBNReLU_0 ... ConvBNReLU_5,
Dense_0``. Parameters of the root module itself (a ViT's ``cls_token`` and ``pos_embed``)
are stages below the first called module.

The head (``transfer.head``): path prefixes under ``params`` (``('Dense_0',)``), trainable
from step 0 in every mode and re-initialised, not restored, whatever their shapes. ``()``
(default) finds the classifier: the last top-level module whose output has ``num_classes``
features (``Dense_0`` in ``resnet20``, ``cifar10_cnn``, ``densenet*``; ``head`` in the ViT,
Mixer, ConvNeXt V2 and MLP; ``classifier`` in MobileNetV2 and EfficientNet; ``fc`` in the
pre-activation ResNet, GoogLeNet and DRN; ``Dense_2`` in VGG, AlexNet and LeNet-5); it is
re-initialised only when the checkpoint's shapes differ from the model's in the class axis
alone (a new class count), and restored when they are equal. Name it when the classes
differ but not their number (CIFAR-10 -> Tiny-ImageNet-10).

Frozen parameters get no update, no weight decay and no optimizer-state change:
``optax.multi_transform`` with ``optax.set_to_zero()`` for the linear probe, and
:func:`unfreeze_on_schedule`, a mask that depends on the step, for progressive unfreezing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.checkpoint import key_path_str

MODES = ("finetune", "linear_probe", "progressive")
# The unfreeze step of a leaf that never trains (linear probe): no int32 step reaches it.
NEVER = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run initialised from a checkpoint re-initialises and trains when.

  Paths are relative to a collection and joined by ``/`` (``'BasicBlock_8/Conv_0/kernel'``):
  ``params`` and ``batch_stats`` share the module names.

  Attributes:
    mode: ``'finetune'``, ``'linear_probe'`` or ``'progressive'``.
    head: path prefixes of the head (``('Dense_0',)``); they train from step 0.
    head_explicit: ``True`` when config key ``transfer.head`` named them (re-initialised
      whatever the shapes); ``False`` when found as the classifier (re-initialised only for a
      new class count).
    num_classes: the model's class count.
    stages: the top-level parameter groups, bottom to top (forward order).
    unfreeze_at: ``{group: first step it trains}`` for each group not wholly in the head:
      0 (finetune), :data:`NEVER` (linear_probe), or the progressive schedule.
  """
  mode: str
  head: tuple[str, ...]
  head_explicit: bool
  num_classes: int
  stages: tuple[str, ...]
  unfreeze_at: Mapping[str, int]

  def is_head(self, path: str) -> bool:
    """Whether ``path`` (``'Dense_0/kernel'``) is in the head."""
    return any(path == h or path.startswith(h + "/") for h in self.head)

  def unfreeze_step(self, path: str) -> int:
    """The first step (0-based) at which the leaf at ``path`` trains."""
    return 0 if self.is_head(path) else self.unfreeze_at[path.split("/")[0]]

  def trainable(self, tree, step) -> Any:
    """``tree``'s structure with a bool per leaf: whether it trains at ``step`` (an int or
    an int32 scalar, traced or not)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: jnp.asarray(step) >= self.unfreeze_step(key_path_str(p)), tree)

  def keep_frozen_stats(self, step, old, new):
    """``new`` batch statistics, except the leaves frozen at ``step``, which keep ``old``."""
    return jax.tree.map(lambda t, o, n: jnp.where(t, n, o), self.trainable(old, step), old, new)

  def step_kwargs(self) -> dict:
    """Keyword arguments of :func:`cnn_jax.steps.make_train_step` for this mode."""
    return {"train_mode": self.mode != "linear_probe",
            "keep_stats": self.keep_frozen_stats if self.mode == "progressive" else None}

  def describe(self, steps_per_epoch: int, total_steps: int) -> str:
    """One line: what trains when (for the run's log)."""
    head = ", ".join(self.head) or "none"
    if self.mode == "finetune":
      return f"transfer.mode = 'finetune': every parameter trains, the head ({head}) too"
    if self.mode == "linear_probe":
      return (f"transfer.mode = 'linear_probe': only the head ({head}) trains; the rest is "
              f"frozen and applied in inference mode (BatchNorm running averages, kept)")
    order = sorted(self.unfreeze_at.items(), key=lambda kv: kv[1])
    parts = [f"{g} at step {s} (epoch {s / steps_per_epoch:g})" for g, s in order
             if s < total_steps]
    never = [g for g, s in order if s >= total_steps]
    return (f"transfer.mode = 'progressive': the head ({head}) trains from step 0, then, top "
            f"down, " + "; ".join(parts or ["nothing else"])
            + (f"; frozen to the end ({total_steps} steps): {', '.join(never)}" if never
               else ""))


def forward_stages(model: nn.Module, input_shape: tuple[int, ...],
                   num_classes: int) -> tuple[tuple[str, ...], str | None, dict]:
  """The top-level parameter groups of ``model`` in forward order and its classifier.

  Traces ``model.init`` on a ``(1, *input_shape)`` input (shapes only, nothing computed),
  recording the order in which the root's submodules are first called.

  Returns:
    ``(stages, classifier, params)``: the keys of ``params`` bottom to top (root-module
    parameters and groups never called first, in name order); the last called group whose
    output has ``num_classes`` features, or ``None``; and the ``params`` tree of
    ``jax.ShapeDtypeStruct``.
  """
  first, classifiers = {}, set()

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path
    if len(path) == 1:
      first.setdefault(path[0], len(first))
      shape = getattr(out, "shape", ())
      if len(shape) and shape[-1] == num_classes:
        classifiers.add(path[0])
    return out

  key = jax.random.key(0)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda: model.init({"params": key, "dropout": key},
                                                  jnp.zeros((1, *input_shape)), train=False))
  params = variables["params"]
  called = sorted((g for g in params if g in first), key=first.get)
  stages = tuple(sorted(g for g in params if g not in first)) + tuple(called)
  heads = [g for g in called if g in classifiers]
  return stages, (heads[-1] if heads else None), params


def make_plan(transfer_config, model: nn.Module, input_shape: tuple[int, ...],
              num_classes: int, steps_per_epoch: int) -> Plan:
  """The :class:`Plan` of config section ``transfer`` for ``model``.

  Args:
    transfer_config: the ``transfer`` config section (``mode``, ``head``,
      ``unfreeze_every_epochs``), already validated.
    model: the new run's model (with its ``num_classes``).
    input_shape: ``(H, W, C)`` of one example.
    num_classes: the model's class count.
    steps_per_epoch: train steps per epoch (for the progressive schedule).

  Raises:
    ValueError: a ``transfer.head`` prefix names no parameter of the model, or a
      linear_probe / progressive run has no head (none named, no classifier found); both name
      the config key and list the model's top-level groups.
  """
  t = transfer_config
  stages, classifier, params = forward_stages(model, input_shape, num_classes)
  paths = [key_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  groups = f"{type(model).__name__}'s top-level parameter groups, bottom to top: " + ", ".join(
      stages)
  for h in t.head:
    if not any(p == h or p.startswith(h + "/") for p in paths):
      raise ValueError(f"config key transfer.head = {tuple(t.head)!r}: {h!r} names no "
                       f"parameter of the model ({groups})")
  head = tuple(t.head) or ((classifier,) if classifier else ())
  if not head and t.mode != "finetune":
    raise ValueError(f"config key transfer.mode = {t.mode!r} trains a head, but the model "
                     f"has no top-level module with {num_classes} (num_classes) output "
                     f"features to take for one; name it in config key transfer.head "
                     f"({groups})")
  plan = Plan(t.mode, head, bool(t.head), num_classes, stages, {})
  below = [g for g in stages if not all(plan.is_head(p) for p in paths
                                        if p == g or p.startswith(g + "/"))]
  if t.mode == "finetune":
    at = {g: 0 for g in below}
  elif t.mode == "linear_probe":
    at = {g: NEVER for g in below}
  else:  # the j-th group below the head, counted from the top, joins after j intervals
    at = {g: int(j * t.unfreeze_every_epochs * steps_per_epoch + 0.5)  # halves round up
          for j, g in enumerate(reversed(below), start=1)}
  return dataclasses.replace(plan, unfreeze_at=at)


def reinit_leaves(plan: Plan, saved: dict[str, tuple[int, ...]],
                  fresh: dict) -> list[tuple[str, tuple[int, ...] | None, tuple[int, ...]]]:
  """The leaves a run initialised from a checkpoint keeps at their fresh values.

  Args:
    plan: the run's :class:`Plan`.
    saved: ``{path: shape}`` of the checkpoint (``'params/Dense_0/kernel': (64, 10)``;
      :func:`cnn_jax.checkpoint.saved_shapes`).
    fresh: the new run's collections, ``{'params': ..., 'batch_stats': ...}``.

  Returns:
    ``[(path, shape in the checkpoint or None if absent, shape in the model)]`` of every head
    leaf in ``fresh`` when the head was named, or when it was found and differs from the
    checkpoint in the class axis (the last) alone; otherwise ``[]`` (the head is restored,
    and any other difference is left for the restore to refuse by name).
  """
  head = []
  for c, tree in fresh.items():
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = key_path_str(p)
      if plan.is_head(path):
        head.append((f"{c}/{path}", saved.get(f"{c}/{path}"), tuple(x.shape)))
  if plan.head_explicit:
    return head
  changed = [(old, new) for _, old, new in head if old != new]
  class_axis_only = all(old is not None and len(old) == len(new) and old[:-1] == new[:-1]
                        and new[-1] == plan.num_classes for old, new in changed)
  return head if changed and class_axis_only else []


class UnfreezeState(NamedTuple):
  """State of :func:`unfreeze_on_schedule`: ``count``, the updates done (int32 scalar; the
  train step, both starting at 0 when a run is initialised), and the inner optimizer's."""
  count: jax.Array
  inner: optax.OptState


def unfreeze_on_schedule(inner: optax.GradientTransformation,
                         unfreeze_step: Callable[[str], int]) -> optax.GradientTransformation:
  """``inner`` restricted, at each update, to the leaves whose ``unfreeze_step(path)``
  (path relative to the parameters, ``'Dense_0/kernel'``) is at most the update's count.

  A leaf not yet trainable gets a zero gradient into ``inner`` (so gradient clipping
  measures the trainable leaves only), a zero update (no weight decay either), and keeps its
  parameter-shaped optimizer state (momentum, Adam moments) at its initial value, so it
  starts from a fresh state when it unfreezes, not from one that decay terms fed while it
  was frozen. Counts (the schedule's, Adam's) are shared and advance every step, as the
  learning-rate schedule is global: with AdamW, a leaf unfreezing at a late step gets a
  first update about ``(1 - b1) / sqrt(1 - b2)`` (3.2 at the defaults) times the usual.

  The trainable set is a ``jnp.where`` mask of the step inside the one compiled update, not
  an ``optax.multi_transform`` per stage: the partition of a ``multi_transform`` is static,
  so each unfreezing would recompile the train step and change the optimizer-state tree
  the checkpoints hold.
  """
  def trainable(tree, count):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: count >= unfreeze_step(key_path_str(p)), tree)

  def init(params):
    return UnfreezeState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    train = trainable(updates, state.count)
    zero_frozen = lambda t, u: jnp.where(t, u, jnp.zeros_like(u))
    grads = jax.tree.map(zero_frozen, train, updates)
    new_updates, new_inner = inner.update(grads, state.inner, params)
    # `train` laid over the optimizer state: the mask for parameter-shaped parts, True for
    # counts and other non-parameter fields.
    mask = optax.tree_utils.tree_map_params(
        inner, lambda _, t: t, new_inner, train,
        transform_non_params=lambda v: jax.tree.map(lambda _: True, v))
    new_inner = jax.tree.map(lambda t, n, o: jnp.where(t, n, o), mask, new_inner, state.inner)
    return (jax.tree.map(zero_frozen, train, new_updates),
            UnfreezeState(state.count + 1, new_inner))

  return optax.GradientTransformation(init, update)


def wrap_optimizer(tx: optax.GradientTransformation, plan: Plan) -> optax.GradientTransformation:
  """``tx`` with ``plan``'s frozen leaves: unchanged for finetune; the head alone through
  ``tx`` and ``optax.set_to_zero()`` for the rest (no optimizer state) for linear_probe;
  :func:`unfreeze_on_schedule` for progressive."""
  if plan.mode == "finetune":
    return tx
  if plan.mode == "linear_probe":
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda p, _: "head" if plan.is_head(key_path_str(p)) else "frozen", params)
    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)
  return unfreeze_on_schedule(tx, plan.unfreeze_step)
