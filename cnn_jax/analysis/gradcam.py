"""Grad-CAM heatmaps over real test images, saved as PNG overlays.

Selvaraju et al. 2017 (ICCV), "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", Sec. 3: for the class score ``y^c`` (the logit, before the
softmax) and a convolutional feature map ``A`` ``(h, w, K)``,

    alpha_k^c = (1 / (h w)) sum_ij d y^c / d A_ij^k                  (Eq. 1)
    L^c       = ReLU( sum_k alpha_k^c A^k )                           (Eq. 2)

and ``L^c`` ``(h, w)`` is upsampled bilinearly to the input size. ``A`` is the output of a
module call (:func:`cnn_jax.analysis.visual.forward_capture`); the default is the last one
(in return order) with an ``(N, h, w, C)`` output, i.e. the last feature map before global
pooling (``BasicBlock_8`` in ResNet-20). Inference mode (BatchNorm running statistics).

``python -m cnn_jax.analysis.gradcam --workdir <run> --n 8 --out <png> [--layer L]
[--indices i j ...] [--target pred|true]`` draws ``n`` test images (evenly spaced over the
test set, which the image-folder loader orders by class, so the classes vary; or the given
indices), each beside the heatmap of the predicted (or true) class over it; each caption
gives the predicted class with its softmax probability and the true class.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.analysis import visual


def last_feature_map(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
  """Path of the module call that *returns* last among those with an ``(N, h, w, C)``
  output (``h * w > 1``): the last convolutional feature map, Grad-CAM's usual layer.

  Raises:
    ValueError: the model has no such module call.
  """
  from cnn_jax.analysis.tracing import placeholders  # pylint: disable=g-import-not-at-top
  returned: list[str] = []

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if (context.method_name == "__call__" and path and hasattr(y, "ndim") and y.ndim == 4
        and y.shape[1] * y.shape[2] > 1):
      returned.append(path)
    return y

  variables, x = placeholders(model, tuple(input_shape), 1)

  def fwd(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  jax.eval_shape(fwd, variables, x)
  if not returned:
    raise ValueError(f"{type(model).__name__} has no module with an (N, h, w, C) output "
                     f"(h * w > 1) for input {tuple(input_shape)}: nothing for Grad-CAM")
  return returned[-1]


def gradcam(model: nn.Module, variables, x: jax.Array, layer: str,
            target: Sequence[int] | np.ndarray | None = None):
  """Grad-CAM (Selvaraju et al. 2017, Eqs. 1-2) of ``layer`` for images ``x``.

  Args:
    model: unbound Flax module, NHWC.
    variables: its variables.
    x: float32 ``(N, H, W, C)`` normalised images.
    layer: module path whose output ``(N, h, w, K)`` is the feature map ``A``.
    target: class index per image ``(N,)``; ``None`` = the predicted class (argmax logit).

  Returns:
    ``(cam, cam_small, logits, target)``: ``cam`` float32 ``(N, H, W)`` >= 0, ``L^c``
    bilinearly upsampled to the input size (not rescaled); ``cam_small`` ``(N, h, w)`` the
    map at the layer's resolution; ``logits`` ``(N, num_classes)``; ``target`` int ``(N,)``.

  Raises:
    ValueError: ``layer`` not called once by the forward pass, its output is not
      ``(N, h, w, K)``, or ``target`` has the wrong length or an index out of range.
  """
  x = jnp.asarray(x, jnp.float32)
  feat_shape = jax.eval_shape(
      lambda x: visual.forward_capture(model, variables, x, (layer,))[1][layer], x).shape
  if len(feat_shape) != 4:
    raise ValueError(f"Grad-CAM layer {layer!r} outputs shape {tuple(feat_shape)}, expected a "
                     f"feature map (N, h, w, K)")
  logits, a, grads = _cam_parts(model, layer, variables, x,
                                None if target is None else jnp.asarray(target, jnp.int32))
  logits = np.asarray(logits)
  tgt = np.asarray(np.argmax(logits, -1) if target is None else target, np.int64)
  if tgt.shape != (len(x),):
    raise ValueError(f"target must have one class per image, shape ({len(x)},), got "
                     f"{tgt.shape}")
  if tgt.min() < 0 or tgt.max() >= logits.shape[-1]:
    raise ValueError(f"target classes must be in [0, {logits.shape[-1]}), got "
                     f"{sorted(set(tgt.tolist()))}")
  alpha = np.asarray(grads).mean(axis=(1, 2))                        # Eq. 1: (N, K)
  small = np.maximum(np.einsum("nhwk,nk->nhw", np.asarray(a), alpha), 0.0)  # Eq. 2
  n, h, w = x.shape[0], x.shape[1], x.shape[2]
  cam = np.asarray(jax.image.resize(jnp.asarray(small), (n, h, w), "bilinear"))
  return np.maximum(cam, 0.0), small, logits, tgt


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def _cam_parts(model, layer, variables, x, target):
  """``(logits, A, dy^c/dA)`` in one forward and one backward pass; ``target`` ``None`` ->
  the argmax of the logits."""
  def f(delta):
    logits, caps = visual.forward_capture(model, variables, x, (layer,), add={layer: delta})
    return logits, caps[layer]
  zeros = jnp.zeros(jax.eval_shape(
      lambda: visual.forward_capture(model, variables, x, (layer,))[1][layer]).shape,
      jnp.float32)
  (logits, a), vjp = jax.vjp(f, zeros)
  cls = jnp.argmax(logits, -1) if target is None else target
  ct = jax.nn.one_hot(cls, logits.shape[-1], dtype=logits.dtype)   # d y^c: the logit of c
  (grads,) = vjp((ct, jnp.zeros_like(a)))
  return logits, a, grads


def plot_gradcam(images: np.ndarray, cams: np.ndarray, captions: Sequence[str], title: str,
                 ncols: int = 4, alpha: float = 0.45):
  """Figure of uint8 ``(N, H, W, 3)`` images with ``cams`` ``(N, H, W)`` (each scaled by its
  own maximum, jet colour map) overlaid, one caption per image."""
  plt = visual.pyplot()
  n = len(images)
  ncols = min(ncols, n)
  nrows = math.ceil(n / ncols)
  fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2 * ncols * 1.25, nrows * 1.55 + 0.5),
                           squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for i in range(n):
    r, c = divmod(i, ncols)
    a0, a1 = axes[r, 2 * c], axes[r, 2 * c + 1]
    a0.imshow(images[i], interpolation="nearest")
    m = cams[i]
    a1.imshow(images[i], interpolation="nearest")
    a1.imshow(m / m.max() if m.max() > 0 else m, cmap="jet", alpha=alpha, vmin=0, vmax=1,
              interpolation="bilinear")
    a0.set_title(captions[i], fontsize=6, loc="left")
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def main(argv: list[str] | None = None) -> int:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.gradcam",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--n", type=int, default=8, help="number of test images")
  p.add_argument("--indices", type=int, nargs="+", default=None,
                 help="test image indices (default: --n evenly spaced over the test set)")
  p.add_argument("--layer", default=None, help="module path of the feature map (default: the "
                                               "last one with an (N, h, w, C) output)")
  p.add_argument("--target", choices=("pred", "true"), default="pred",
                 help="explain the predicted (default) or the true class")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  a = p.parse_args(argv)
  run = visual.load_run(a.workdir, a.data_dir)
  n_test = len(run.ds.test_labels)
  if a.n < 1:
    p.error(f"--n must be >= 1, got {a.n}")
  idx = (np.asarray(a.indices) if a.indices
         else np.linspace(0, n_test - 1, min(a.n, n_test)).round().astype(int))
  if idx.min() < 0 or idx.max() >= n_test:
    p.error(f"--indices must be in [0, {n_test}), got {a.indices}")
  try:
    layer = a.layer or last_feature_map(run.model, run.input_shape)
    visual.check_layers([layer], visual.spatial_layers(run.model, run.input_shape))
  except ValueError as e:
    p.error(str(e))
  images, labels = run.ds.test_images[idx], run.ds.test_labels[idx]
  cam, _, logits, tgt = gradcam(run.model, run.variables, run.normalize(images), layer,
                                labels if a.target == "true" else None)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
  names = run.ds.class_names
  pred = logits.argmax(-1)
  captions = [f"#{idx[i]} pred {names[pred[i]]} ({probs[i, pred[i]]:.2f})\n"
              f"true {names[labels[i]]}{'' if pred[i] == labels[i] else '  x'}"
              for i in range(len(images))]
  what = "predicted" if a.target == "pred" else "true"
  title = (f"Grad-CAM (Selvaraju et al. 2017) of the {what} class at {layer}, "
           f"{run.config.model.name} step {run.step}; x = wrong prediction")
  out = visual.save_figure(plot_gradcam(images, cam, captions, title), a.out)
  print(f"wrote {out}: test images {idx.tolist()}, layer {layer}, "
        f"{int((pred == labels).sum())} of them predicted correctly")
  return 0


if __name__ == "__main__":
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_and_report("cnn_jax.analysis.gradcam")
  sys.exit(main())
