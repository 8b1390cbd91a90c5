"""Apply a hand-designed kernel to a real image and plot the feature map.

``python -m cnn_jax.demos.kernels --image <path> --kernel sobel_x --out <dir>`` writes
``input.png`` (grayscale), ``feature.png`` (the 'SAME' cross-correlation, diverging
colormap with symmetric limits so the sign is visible), ``pooled.png`` (2x2 max-pool of
the feature map) and ``panel.png`` (all three side by side).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.demos._images import CIFAR10_DIR, load_gray  # noqa: E402
from cnn_jax.ops import conv2d, kernels, max_pool2d  # noqa: E402

DEFAULT_IMAGE = CIFAR10_DIR / "test" / "cat" / "0000.jpg"


def feature_maps(img: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(feature, pooled)``: 'SAME' conv of a ``(H, W)`` image and its 2x2 max-pool
  (``(H, W)`` and ``(H//2, W//2)`` float32)."""
  x = np.asarray(img, np.float32)[None, :, :, None]
  f = conv2d(x, kernels.as_hwio(kernel), padding="SAME")
  return np.asarray(f)[0, :, :, 0], np.asarray(max_pool2d(f, 2))[0, :, :, 0]


def _show(ax, a, title, diverging):
  if diverging:
    m = float(np.abs(a).max()) or 1.0
    im = ax.imshow(a, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
  else:
    im = ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  ax.set_title(title, fontsize=9)
  ax.axis("off")
  plt.colorbar(im, ax=ax, fraction=0.046)


def run(image, kernel_name: str, out) -> dict:
  """Writes the PNGs; returns ``{'input', 'feature', 'pooled', 'panel'}`` paths.

  Raises:
    KeyError: unknown kernel name. FileNotFoundError: missing image.
  """
  k = kernels.get(kernel_name)
  img = load_gray(image)
  feat, pooled = feature_maps(img, k)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  items = [("input", img, f"input {img.shape[0]}x{img.shape[1]}", False),
           ("feature", feat, f"{kernel_name} feature map (SAME)", True),
           ("pooled", pooled, "2x2 max-pool of the feature map", True)]
  paths = {}
  for name, a, title, div in items:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    _show(ax, a, title, div)
    paths[name] = out / f"{name}.png"
    fig.savefig(paths[name], dpi=100, bbox_inches="tight")
    plt.close(fig)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  for ax, (_, a, title, div) in zip(axes, items):
    _show(ax, a, title, div)
  paths["panel"] = out / "panel.png"
  fig.savefig(paths["panel"], dpi=100, bbox_inches="tight")
  plt.close(fig)
  return paths


def main(argv=None) -> int:
  """CLI entry point (see module docstring)."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.demos.kernels", description=__doc__)
  p.add_argument("--image", default=str(DEFAULT_IMAGE), help=f"default {DEFAULT_IMAGE}")
  p.add_argument("--kernel", default="sobel_x", choices=sorted(kernels.KERNELS))
  p.add_argument("--out", required=True, help="output folder for the PNGs")
  a = p.parse_args(argv)
  paths = run(a.image, a.kernel, a.out)
  for name, path in paths.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
