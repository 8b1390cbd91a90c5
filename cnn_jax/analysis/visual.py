"""Shared pieces of the visual analyses (filters, feature maps, ERF, shift test, Grad-CAM).

* :func:`load_run`: a trained run rebuilt from its workdir, through
  :func:`cnn_jax.evaluate.restore_run` (the path ``python -m cnn_jax.evaluate`` scores);
* :func:`forward_capture`: ``model.apply(v, x, train=False)`` that also returns the outputs of
  chosen module calls, optionally with an array added to them (to take gradients w.r.t. an
  intermediate feature map), via ``flax.linen.intercept_methods``;
* :func:`spatial_layers` / :func:`check_layers`: the module paths (as in
  :func:`cnn_jax.summary.layer_table`) whose output is an ``(N, h, w, C)`` feature map, and a
  check of user-given names against them;
* :func:`load_image`, :func:`normalize` and :func:`save_figure`.

Everything is float32 and inference mode (BatchNorm with its running statistics).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.data import augment
from cnn_jax.data.image_folder import decode_images


@dataclasses.dataclass
class LoadedRun:
  """A finished ``cnn_jax.train`` run, rebuilt from its workdir.

  Attributes:
    workdir: the run folder.
    config: its config (``config.json``).
    ds: its data as the trainer opened it (:func:`cnn_jax.data.loader.open_data`: the
      in-memory or the Grain loader): ``test_images`` uint8 ``(N, H, W, C)`` as the model
      sees them in evaluation, ``test_labels`` int32 ``(N,)``, ``class_names``,
      ``mean``/``std`` float32 ``(C,)`` in 0-255 units.
    model: the unbound Flax module (NHWC, ``apply(v, x, train=False)``).
    variables: ``{'params': ..., 'batch_stats': ...}`` of the newest checkpoint.
    step: the checkpoint's step.
    init: PRNG key -> fresh train state of the same architecture (untrained weights).
  """
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  ds: Any  # cnn_jax.data.loader.MemoryData or the Grain loader
  model: nn.Module
  variables: Any
  step: int
  init: Any

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image in pixels and channels."""
    return tuple(int(d) for d in self.ds.test_images.shape[1:])

  def fresh_variables(self, seed: int | None = None) -> Any:
    """Variables of the same architecture freshly initialised (default: the run's seed), as
    :func:`cnn_jax.train.build_run` initialises them before the first step."""
    key = jax.random.key(self.config.seed if seed is None else seed)
    return self.init(key).variables()

  def normalize(self, images: np.ndarray) -> jax.Array:
    """uint8 ``(N, H, W, C)`` -> float32 ``(x - mean) / std`` with the run's statistics."""
    return normalize(images, self.ds.mean, self.ds.std)


def load_run(workdir: str | pathlib.Path, data_dir: str | None = None) -> LoadedRun:
  """Rebuilds ``workdir``'s model and data and restores its newest checkpoint.

  Raises:
    FileNotFoundError: no ``config.json``, ``checkpoints/`` or checkpoint in ``workdir``.
    KeyError / ValueError: the config does not validate; cnn_jax.data.DataError: bad data.
  """
  from cnn_jax.evaluate import restore_run  # pylint: disable=g-import-not-at-top
  r = restore_run(workdir, data_dir=data_dir)
  return LoadedRun(pathlib.Path(workdir), r.config, r.ds, r.run.model, r.state.variables(),
                   int(jax.device_get(r.state.step)), r.run.init)


def normalize(images: np.ndarray, mean, std) -> jax.Array:
  """``(x - mean) / std`` per channel (:func:`cnn_jax.data.augment.normalize`): uint8
  ``(N, H, W, C)`` in [0, 255], ``mean``/``std`` ``(C,)`` in 0-255 units -> float32."""
  return augment.normalize(jnp.asarray(images), mean, std, jnp.float32)


def load_image(path: str | pathlib.Path, shape: tuple[int, int, int],
               resize: bool = False) -> np.ndarray:
  """Decodes one image file to uint8 ``(H, W, 3)`` RGB, as the data loader decodes.

  Args:
    path: an image file (JPEG, PNG, ...).
    shape: ``(H, W, C)`` the model takes.
    resize: resize (bilinear, Pillow) to ``(H, W)`` instead of refusing another size.

  Raises:
    FileNotFoundError: no such file. cnn_jax.data.DataError: not a readable image.
    ValueError: its size differs from ``shape`` and ``resize`` is false.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image {str(path)!r} does not exist")
  img = decode_images([path], num_threads=1)[0]
  h, w = int(shape[0]), int(shape[1])
  if img.shape[:2] != (h, w):
    if not resize:
      raise ValueError(f"image {str(path)!r} is {img.shape[0]}x{img.shape[1]} pixels, the "
                       f"model takes {h}x{w}: pass --resize to resize it")
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.uint8)
  if img.shape[-1] != shape[2]:
    raise ValueError(f"image {str(path)!r} has {img.shape[-1]} channels, the model takes "
                     f"{shape[2]}")
  return img


def forward_capture(model: nn.Module, variables, x: jax.Array, layers: Sequence[str],
                    add: dict[str, jax.Array] | None = None) -> tuple[Any, dict[str, jax.Array]]:
  """``model.apply(variables, x, train=False)`` plus the outputs of the module calls ``layers``.

  Each module's ``__call__`` is intercepted (``flax.linen.intercept_methods``); the output
  of a listed module path (``'BasicBlock_8'``, ``'BasicBlock_0/Conv_0'``; ``''`` is the
  model) is recorded and, when ``add`` names it, replaced by ``output + add[path]`` before
  the rest of the network sees it: ``jax.grad`` w.r.t. a zero ``add`` is the gradient of the
  output w.r.t. that feature map (what Grad-CAM needs).

  Args:
    model: unbound Flax module, NHWC.
    variables: its variables.
    x: float ``(N, H, W, C)`` normalised images.
    layers: module paths to record.
    add: ``{path: array}`` added to those outputs (same shape as the output).

  Returns:
    ``(model output, {path: output of that module call})``.

  Raises:
    ValueError: a path in ``layers`` (or ``add``) was not called, or was called more than
      once (a shared module: which call is meant is ambiguous).
  """
  add = dict(add or {})
  wanted = set(layers) | set(add)
  seen: dict[str, Any] = {}
  counts: dict[str, int] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    y = next_fun(*args, **kwargs)
    if path in wanted:
      counts[path] = counts.get(path, 0) + 1
      if path in add:
        y = y + add[path]
      seen[path] = y
    return y

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, train=False)
  missing = sorted(wanted - set(seen))
  if missing:
    raise ValueError(f"module path(s) {missing} were not called by the forward pass of "
                     f"{type(model).__name__}")
  shared = sorted(p for p, n in counts.items() if n > 1)
  if shared:
    raise ValueError(f"module path(s) {shared} are called more than once per forward pass "
                     f"(shared modules): pick a layer that is called once")
  return out, {p: seen[p] for p in layers}


@dataclasses.dataclass(frozen=True)
class SpatialLayer:
  """A module call whose output is a feature map.

  Attributes:
    path: module path as in :func:`cnn_jax.summary.layer_table` (e.g. ``'BasicBlock_8'``).
    type: module class name (``'Conv'``, ``'BasicBlock'``).
    depth: nesting depth (1 = child of the model).
    shape: ``(h, w, C)`` of the output for one image.
  """
  path: str
  type: str
  depth: int
  shape: tuple[int, int, int]


def spatial_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[SpatialLayer]:
  """Module calls (in call order) whose output is one ``(N, h, w, C)`` array, from
  :func:`cnn_jax.summary.layer_table`; the model itself (path ``''``) is left out."""
  from cnn_jax.summary import layer_table  # pylint: disable=g-import-not-at-top
  out = []
  for r in layer_table(model, tuple(input_shape)):
    shape = r.output_shape
    if r.path and len(shape) == 4 and all(isinstance(d, int) for d in shape):
      out.append(SpatialLayer(r.path, r.type, r.depth, tuple(shape[1:])))
  return out


def check_layers(names: Sequence[str], layers: Sequence[SpatialLayer]) -> list[SpatialLayer]:
  """The :class:`SpatialLayer` of each name, in the order given.

  Raises:
    ValueError: a name that is no module path with a feature-map output; the message
      lists the valid names.
  """
  by_path = {l.path: l for l in layers}
  bad = [n for n in names if n not in by_path]
  if bad:
    raise ValueError(f"unknown layer(s) {bad}: valid layers (module paths with an (N, h, w, "
                     f"C) output, as in cnn_jax.summary.layer_table) are "
                     f"{', '.join(by_path)}")
  return [by_path[n] for n in names]


def stage_outputs(layers: Sequence[SpatialLayer]) -> list[SpatialLayer]:
  """Default layers to look at: the first child of the model with a feature-map output
  (the stem) and the last child at each spatial resolution (the output of each stage).
  For ResNet-20: ``Conv_0``, ``BasicBlock_2``, ``BasicBlock_5``, ``BasicBlock_8``."""
  top = [l for l in layers if l.depth == 1]
  if not top:
    return []
  out = [top[0]]
  for a, b in zip(top, top[1:] + [None]):
    if b is None or b.shape[:2] != a.shape[:2]:
      if a not in out:
        out.append(a)
  return out


def save_figure(fig, out: str | pathlib.Path, dpi: int = 100) -> pathlib.Path:
  """Writes a matplotlib figure as PNG (creating the folder) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  return out


def pyplot():
  """``matplotlib.pyplot`` with the non-interactive Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
