"""The model registry: one explicit name -> constructor table you can grep.

Every architecture module registers its variants with :func:`register`, usually on a
``functools.partial`` of one general module per family (timm's ``create_model`` and
scenic's registries are the models for this). ``cnn_jax.models`` imports every
architecture module, so ``create`` and ``list_models`` see all of them.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import flax.linen as nn
import jax

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, constructor: Callable[..., nn.Module] | None = None):
  """Registers ``constructor`` (a Linen module class or partial) under ``name``.

  Usable as ``register('resnet20', functools.partial(CifarResNet, depth=20))`` or as a
  decorator on a function returning a module.

  Raises:
    ValueError: ``name`` is already registered (two modules claiming one name is a bug).
  """
  def _add(fn):
    if name in _REGISTRY:
      raise ValueError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn

  if constructor is not None:
    return _add(constructor)
  return _add


def list_models() -> list[str]:
  """Returns every registered model name, sorted."""
  return sorted(_REGISTRY)


def create(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
  """Builds the model registered under ``name``.

  Args:
    name: a name from :func:`list_models`, e.g. ``'resnet20'``.
    num_classes: size of the classifier output (logits), default 10 (CIFAR-10).
    **kwargs: forwarded to the module constructor (e.g. ``shortcut='B'``, ``dtype``).

  Returns:
    An unbound Flax Linen module; call ``model.init(rng, x, train=False)`` and
    ``model.apply(variables, x, train=...)`` on NHWC float inputs ``(N, H, W, C)``.

  Raises:
    KeyError: unknown ``name``; the message lists the closest registered names.
    TypeError: a keyword the module does not accept (names the model and the keyword).
  """
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(
        f"unknown model {name!r} (config key model.name).{hint} "
        f"Registered ({len(_REGISTRY)}, cnn_jax.models.list_models()): "
        f"{', '.join(sorted(_REGISTRY))}")
  try:
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise TypeError(f"model {name!r}: {e}") from e


def count_params(variables: Any, collection: str | None = "params") -> int:
  """Counts scalar entries of a variables tree (exact integer, not millions).

  Args:
    variables: the dict returned by ``model.init`` (``{'params': ..., 'batch_stats': ...}``),
      a bare params tree, or a tree of ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``).
    collection: which top-level collection to count; ``None`` counts every leaf. When the
      tree has no such top-level key it is treated as a bare params tree.

  Returns:
    The number of parameters (BatchNorm running statistics are *not* parameters: they sit
    in ``batch_stats``, as in PyTorch's ``sum(p.numel() for p in model.parameters())``).
  """
  tree = variables
  if collection is not None and hasattr(variables, "keys") and collection in variables:
    tree = variables[collection]
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    n = 1
    for d in leaf.shape:
      n *= int(d)
    total += n
  return total
