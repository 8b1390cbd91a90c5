"""The first convolution's kernels of a trained run as a PNG grid of RGB tiles.

``python -m cnn_jax.analysis.filters --workdir <run> --out <png>`` rebuilds the run from its
workdir (:func:`cnn_jax.analysis.visual.load_run`), finds the first module call whose own
parameters hold a rank-4 ``kernel`` ``(kh, kw, C_in, F)`` (Flax ``nn.Conv`` layout), and draws
its ``F`` kernels as ``kh x kw`` RGB tiles (input channel c -> colour c), each min-max
normalised to [0, 1] on its own, as in Krizhevsky et al. 2012 (NeurIPS, Fig. 3) and
Zeiler & Fergus 2014 (ECCV, Fig. 2): trained first-layer filters show oriented edges and
colour blobs, untrained ones noise.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import flax.linen as nn
import numpy as np

from cnn_jax.analysis import visual


def first_conv(model: nn.Module, variables, input_shape: tuple[int, int, int]
               ) -> tuple[str, np.ndarray]:
  """``(module path, kernel)`` of the first module call owning a rank-4 ``kernel`` param.

  Returns:
    The path (e.g. ``'Conv_0'``) and the kernel as float32 numpy ``(kh, kw, C_in, F)``.

  Raises:
    ValueError: the model has no such parameter.
  """
  from cnn_jax.analysis.tracing import trace_model  # pylint: disable=g-import-not-at-top
  params = variables["params"]
  for call in trace_model(model, tuple(input_shape)).calls:
    node: Any = params
    for part in (call.path.split("/") if call.path else []):
      node = node.get(part, {}) if hasattr(node, "get") else {}
    k = node.get("kernel") if hasattr(node, "get") else None
    if k is not None and np.ndim(k) == 4:
      return call.path, np.asarray(k, np.float32)
  raise ValueError(f"{type(model).__name__} has no module with a rank-4 'kernel' parameter "
                   f"(kh, kw, C_in, F): no convolution to show")


def kernel_tiles(kernel: np.ndarray) -> np.ndarray:
  """``(kh, kw, C_in, F)`` kernel -> ``(F, kh, kw, C_in)`` float32 tiles, each min-max
  normalised to [0, 1] (a constant kernel becomes 0.5 everywhere).

  Raises:
    ValueError: ``kernel`` is not rank 4, or ``C_in`` is not 1 or 3 (not displayable as
      grey or RGB).
  """
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim != 4:
    raise ValueError(f"kernel must be (kh, kw, C_in, F), got shape {kernel.shape}")
  if kernel.shape[2] not in (1, 3):
    raise ValueError(f"kernel {kernel.shape} has C_in = {kernel.shape[2]}: only 1 (grey) or "
                     f"3 (RGB) input channels can be drawn")
  tiles = np.moveaxis(kernel, 3, 0)
  lo = tiles.min(axis=(1, 2, 3), keepdims=True)
  span = tiles.max(axis=(1, 2, 3), keepdims=True) - lo
  return np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1.0), 0.5)


def plot_filters(kernel: np.ndarray, title: str, ncols: int | None = None):
  """A figure with one axis per kernel (``F`` tiles, ``ceil(sqrt(F))`` per row by default).

  Returns:
    The matplotlib figure; ``[ax for ax in fig.axes if ax.images]`` are the ``F`` tiles.
  """
  plt = visual.pyplot()
  tiles = kernel_tiles(kernel)
  f = len(tiles)
  ncols = ncols or math.ceil(math.sqrt(f))
  nrows = math.ceil(f / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(max(0.6 * ncols + 0.4, 3.6), 0.6 * nrows + 0.9),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.set_axis_off()
    if i < f:
      t = tiles[i]
      ax.imshow(t[..., 0] if t.shape[-1] == 1 else t, cmap="gray" if t.shape[-1] == 1 else None,
                vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def main(argv: list[str] | None = None) -> int:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.filters",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--untrained", action="store_true",
                 help="draw the freshly initialised kernels of the same architecture instead")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  a = p.parse_args(argv)
  run = visual.load_run(a.workdir, a.data_dir)
  variables = run.fresh_variables() if a.untrained else run.variables
  path, kernel = first_conv(run.model, variables, run.input_shape)
  what = "untrained" if a.untrained else f"step {run.step}"
  title = (f"{run.config.model.name} {path} kernel {tuple(kernel.shape)}\n(kh, kw, C_in, F), "
           f"{what}; each tile min-max normalised")
  out = visual.save_figure(plot_filters(kernel, title), a.out)
  print(f"wrote {out}: {kernel.shape[3]} kernels of {path}")
  return 0


if __name__ == "__main__":
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_and_report("cnn_jax.analysis.filters")
  sys.exit(main())
