"""Feature maps of chosen layers of a trained run for one real image, as a PNG.

``python -m cnn_jax.analysis.feature_maps --workdir <run> --image <path> [--layers A B ...]
--out <png>`` decodes the image as the data loader does (RGB uint8), normalises it with the
run's training mean/std, runs the restored model in inference mode (BatchNorm with running
statistics) and records the outputs of the chosen module calls
(:func:`cnn_jax.analysis.visual.forward_capture`, ``flax.linen.intercept_methods``). Layer
names are module paths as :func:`cnn_jax.summary.layer_table` prints them (``Conv_0``,
``BasicBlock_2``, ``BasicBlock_5/Conv_1``); default: the stem and the output of each stage
(:func:`cnn_jax.analysis.visual.stage_outputs`). Each layer gets a grid of its channels (at
most ``--max-channels``), each channel min-max normalised on its own (viridis, bright =
high); the per-layer value range is printed in the title. Zeiler & Fergus 2014 (ECCV) show
such maps going from edge/colour responses early to sparse, coarse, class-specific ones
late.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import jax
import numpy as np

from cnn_jax.analysis import visual


def feature_maps(model, variables, x, layers: Sequence[str]) -> dict[str, np.ndarray]:
  """Outputs of the module calls ``layers`` for normalised images ``x`` ``(N, H, W, C)``
  float32: ``{path: float32 (N, h, w, C_l)}``, in inference mode.

  Raises:
    ValueError: see :func:`cnn_jax.analysis.visual.forward_capture`.
  """
  fn = jax.jit(lambda v, x: visual.forward_capture(model, v, x, tuple(layers))[1])
  got = fn(variables, x)  # a dict comes back with sorted keys: restore the requested order
  return {k: np.asarray(got[k], np.float32) for k in layers}


def plot_feature_maps(image: np.ndarray, maps: dict[str, np.ndarray], title: str,
                      max_channels: int = 64, ncols: int = 16):
  """Figure: the input image, then for each layer a grid of its first ``max_channels``
  channels (``maps[path]`` ``(h, w, C)``), each min-max normalised to its own range.

  Returns:
    The matplotlib figure.
  """
  plt = visual.pyplot()
  shown = {k: v[..., :max_channels] for k, v in maps.items()}
  rows_per = {k: math.ceil(v.shape[-1] / ncols) for k, v in shown.items()}
  tile = 0.55
  heights_of = {k: tile * r + 0.35 for k, r in rows_per.items()}
  heights = [2.2] + list(heights_of.values())
  fig = plt.figure(figsize=(tile * ncols + 0.3, sum(heights) + 0.3))
  subfigs = fig.subfigures(len(heights), 1, height_ratios=heights)
  ax = subfigs[0].subplots(gridspec_kw=dict(top=0.78, bottom=0.02))
  ax.imshow(image, interpolation="nearest")
  ax.set_axis_off()
  subfigs[0].suptitle(title, fontsize=8)
  for sf, (path, m) in zip(subfigs[1:], shown.items()):
    c = m.shape[-1]
    axes = sf.subplots(rows_per[path], ncols, squeeze=False,
                       gridspec_kw=dict(wspace=0.06, hspace=0.06, left=0.02, right=0.98,
                                        bottom=0.02, top=1.0 - 0.3 / heights_of[path]))
    for i, a in enumerate(axes.flat):
      a.set_axis_off()
      if i < c:
        ch = m[..., i]
        lo, hi = float(ch.min()), float(ch.max())
        a.imshow((ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch), cmap="viridis",
                 vmin=0.0, vmax=1.0, interpolation="nearest")
    full = maps[path]
    sf.suptitle(f"{path}: {full.shape[0]}x{full.shape[1]}x{full.shape[2]}"
                f"{'' if c == full.shape[2] else f' (first {c} channels)'}, values "
                f"[{full.min():.2f}, {full.max():.2f}]", fontsize=7)
  return fig


def main(argv: list[str] | None = None) -> int:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.feature_maps",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--image", required=True, help="an image file (e.g. a CIFAR-10 test JPEG)")
  p.add_argument("--layers", nargs="+", default=None,
                 help="module paths as in cnn_jax.summary.layer_table (default: the stem and "
                      "each stage's output)")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--max-channels", type=int, default=64, help="channels drawn per layer")
  p.add_argument("--resize", action="store_true",
                 help="resize an image of another size to the model's input size")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  a = p.parse_args(argv)
  run = visual.load_run(a.workdir, a.data_dir)
  layers = visual.spatial_layers(run.model, run.input_shape)
  try:
    chosen = (visual.check_layers(a.layers, layers) if a.layers
              else visual.stage_outputs(layers))
  except ValueError as e:
    p.error(str(e))
  img = visual.load_image(a.image, run.input_shape, a.resize)
  x = run.normalize(img[None])
  maps = feature_maps(run.model, run.variables, x, [l.path for l in chosen])
  title = (f"{run.config.model.name} step {run.step}: {a.image}\n"
           f"normalised with the run's mean/std; each channel min-max normalised")
  fig = plot_feature_maps(img, {k: v[0] for k, v in maps.items()}, title, a.max_channels)
  out = visual.save_figure(fig, a.out)
  print(f"wrote {out}: layers {', '.join(maps)}")
  return 0


if __name__ == "__main__":
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_and_report("cnn_jax.analysis.feature_maps")
  sys.exit(main())
