"""Effective receptive field (ERF) vs theoretical receptive field, trained vs untrained.

Luo, Li, Urtasun & Zemel 2016 (NeurIPS), "Understanding the Effective Receptive Field in
Deep Convolutional Neural Networks", Sec. 2 and 4: put a gradient of 1 on the central unit
of a layer's output (every channel), 0 elsewhere, back-propagate to the input, and look at
the input-gradient magnitude. Here, for a feature map ``y`` ``(N, h, w, C)`` and its central
unit ``(i0, j0) = (h // 2, w // 2)``::

    ERF(p, q) = mean_n  sum_c' | d (sum_c y[n, i0, j0, c]) / d x[n, p, q, c'] |

over real test images ``x`` normalised with the run's mean/std, in inference mode
(BatchNorm with running statistics). The theoretical receptive field of the same unit
(:func:`cnn_jax.analysis.receptive_field`, Araujo et al. 2019, Distill) bounds where the ERF
can be nonzero; Luo et al. find the ERF Gaussian-like and a small fraction of it, growing
like sqrt(depth) at initialisation and widening with training.

Radii reported per layer, in input pixels, measured from the centre of the unit's
theoretical field: ``r95_chebyshev``, the half-width of the smallest centred square holding
95% of the ERF's mass (comparable to the theoretical half-width ``(size - 1) / 2``), and
``r95_euclidean``, the radius of the smallest centred disc holding 95%.

``python -m cnn_jax.analysis.erf --workdir <run> --out <png> [--images 64] [--layers ...]``
writes the maps (trained and freshly initialised), a radius-vs-depth plot, and the numbers
as JSON beside the PNG (same name, ``.json``). Default layers: every child of the model with
a feature-map output whose theoretical field differs from the previous one's (for ResNet-20
the stem conv and the nine blocks).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.analysis import visual
from cnn_jax.analysis.receptive_field import RFResult, receptive_field


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def _erf_sums(model: nn.Module, layers: tuple[str, ...], variables, x):
  """``(L, H, W)`` float32: per layer, sum over the batch of ``sum_c' |dy_centre/dx|``."""
  def feats(x):
    return visual.forward_capture(model, variables, x, layers)[1]
  ys, vjp = jax.vjp(feats, x)
  out = []
  for name in layers:
    y = ys[name]
    ct = {k: jnp.zeros_like(v) for k, v in ys.items()}
    ct[name] = ct[name].at[:, y.shape[1] // 2, y.shape[2] // 2, :].set(1.0)
    (g,) = vjp(ct)
    out.append(jnp.abs(g).sum(axis=(0, 3)))
  return jnp.stack(out)


def erf_maps(model: nn.Module, variables, x: jax.Array, layers: Sequence[str],
             batch_size: int = 32) -> dict[str, np.ndarray]:
  """Luo et al.'s ERF of the central unit of each layer, averaged over images.

  Args:
    model: unbound Flax module, NHWC.
    variables: its variables.
    x: float32 ``(N, H, W, C)`` normalised images.
    layers: module paths with ``(N, h, w, C)`` outputs.
    batch_size: images per backward pass (a last partial batch is run as is).

  Returns:
    ``{path: float64 (H, W)}``: mean over the N images of ``sum_c' |grad|``.

  Raises:
    ValueError: see :func:`cnn_jax.analysis.visual.forward_capture`; ``x`` empty.
  """
  if len(x) == 0:
    raise ValueError("erf_maps needs at least one image, got x of shape "
                     f"{tuple(x.shape)}")
  layers = tuple(layers)
  total = np.zeros((len(layers), *x.shape[1:3]), np.float64)
  for s in range(0, len(x), batch_size):
    total += np.asarray(_erf_sums(model, layers, variables, x[s:s + batch_size]), np.float64)
  return {name: total[i] / len(x) for i, name in enumerate(layers)}


def radius(erf: np.ndarray, centre: tuple[float, float], frac: float = 0.95,
           metric: str = "chebyshev") -> float:
  """Smallest distance ``r`` from ``centre`` (pixel coordinates ``(row, col)``) such that the
  pixels within ``r`` hold at least ``frac`` of ``erf``'s total mass.

  Args:
    erf: ``(H, W)`` nonnegative map.
    centre: ``(row, col)`` in pixels (may be fractional).
    frac: mass fraction in (0, 1].
    metric: ``'chebyshev'`` (centred squares, ``max(|di|, |dj|)``) or ``'euclidean'``.

  Returns:
    ``r`` in pixels (0.0 for an all-zero map).

  Raises:
    ValueError: ``frac`` outside (0, 1], unknown ``metric``, negative entries in ``erf``.
  """
  if not 0.0 < frac <= 1.0:
    raise ValueError(f"frac must be in (0, 1], got {frac}")
  erf = np.asarray(erf, np.float64)
  if (erf < 0).any():
    raise ValueError("erf must be nonnegative (a map of gradient magnitudes)")
  ii, jj = np.meshgrid(np.arange(erf.shape[0]), np.arange(erf.shape[1]), indexing="ij")
  di, dj = np.abs(ii - centre[0]), np.abs(jj - centre[1])
  if metric == "chebyshev":
    d = np.maximum(di, dj)
  elif metric == "euclidean":
    d = np.hypot(di, dj)
  else:
    raise ValueError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")
  total = erf.sum()
  if total == 0:
    return 0.0
  order = np.argsort(d, axis=None, kind="stable")
  cum = np.cumsum(erf.ravel()[order])
  k = int(np.searchsorted(cum, frac * total * (1 - 1e-12)))
  return float(d.ravel()[order][min(k, cum.size - 1)])


@dataclasses.dataclass
class ErfRow:
  """Numbers of one layer (pixels are input pixels).

  Attributes:
    layer: module path. shape: ``(h, w, C)`` of its output. unit: the central unit ``(i, j)``.
    theoretical_size: the theoretical field's size per axis (unclipped; may exceed the image).
    theoretical_region: ``[[row_lo, row_hi], [col_lo, col_hi]]`` the unit's field clipped to
      the image (inclusive).
    centre: ``(row, col)`` of the field's centre.
    r95_chebyshev, r95_euclidean: 95%-mass radii of the trained ERF (see module docstring).
    r95_chebyshev_untrained, r95_euclidean_untrained: the same for fresh weights.
    mass_outside_theoretical: fraction of the trained ERF's mass outside the theoretical
      region (0 up to float rounding); ``..._untrained`` the same for fresh weights.
  """
  layer: str
  shape: tuple
  unit: tuple
  theoretical_size: tuple
  theoretical_region: list
  centre: tuple
  r95_chebyshev: float
  r95_euclidean: float
  r95_chebyshev_untrained: float
  r95_euclidean_untrained: float
  mass_outside_theoretical: float
  mass_outside_theoretical_untrained: float


def theoretical_unit_field(rf: RFResult, layer: str, unit: tuple[int, int],
                           image_hw: tuple[int, int]):
  """``(size, region, centre)`` of ``layer``'s unit ``unit`` in ``rf`` (a
  :func:`cnn_jax.analysis.receptive_field` result): size per axis (unclipped), the pixel
  ranges clipped to ``image_hw``, and the field's centre ``(row, col)`` in input pixels.

  Raises:
    ValueError: ``layer`` has no spatial field in the trace (global or not a module output).
  """
  f = rf.modules.get(layer)
  if f is None or f.is_global:
    raise ValueError(f"layer {layer!r} has no spatial receptive field "
                     f"({'global' if f is not None else 'not a traced module output'})")
  region = f.region(unit, tuple(image_hw))
  centre = tuple(float(s + u * j) for s, u, j in zip(f.start, unit, f.jump))
  return f.size, region, centre


def default_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
  """Children of the model with a feature-map output, dropping one whose theoretical field
  size equals the previous kept one's (e.g. a BatchNorm right after the stem conv)."""
  rf = receptive_field(model, tuple(input_shape))
  out, last = [], None
  for l in visual.spatial_layers(model, input_shape):
    f = rf.modules.get(l.path)
    if l.depth != 1 or f is None or f.is_global:
      continue
    if f.size != last:
      out.append(l.path)
      last = f.size
  return out


def analyse(model: nn.Module, trained, untrained, x: jax.Array, layers: Sequence[str],
            input_shape: tuple[int, int, int], batch_size: int = 32):
  """ERF maps of both weight sets and one :class:`ErfRow` per layer.

  Returns:
    ``(rows, maps_trained, maps_untrained)``.
  """
  spatial = visual.spatial_layers(model, input_shape)
  visual.check_layers(layers, spatial)
  shapes = {l.path: l.shape for l in spatial}
  rf = receptive_field(model, tuple(input_shape))
  m_t = erf_maps(model, trained, x, layers, batch_size)
  m_u = erf_maps(model, untrained, x, layers, batch_size)
  rows = []
  for name in layers:
    h, w = shapes[name][:2]
    unit = (h // 2, w // 2)
    size, region, centre = theoretical_unit_field(rf, name, unit, input_shape[:2])
    inside = np.zeros(input_shape[:2], bool)
    inside[region[0].start:region[0].stop, region[1].start:region[1].stop] = True
    out_frac = lambda m: float(m[~inside].sum() / m.sum()) if m.sum() > 0 else 0.0  # noqa: E731
    rows.append(ErfRow(
        name, tuple(shapes[name]), unit, tuple(size),
        [[region[0].start, region[0].stop - 1], [region[1].start, region[1].stop - 1]],
        centre, radius(m_t[name], centre), radius(m_t[name], centre, metric="euclidean"),
        radius(m_u[name], centre), radius(m_u[name], centre, metric="euclidean"),
        out_frac(m_t[name]), out_frac(m_u[name])))
  return rows, m_t, m_u


def plot_erf(rows: list[ErfRow], m_t: dict, m_u: dict, title: str,
             image_hw: tuple[int, int] | None = None):
  """Figure: ERF maps (row 1 trained, row 2 untrained; each scaled to its own maximum, the
  theoretical field as a white box) and the radius-vs-depth curves; with ``image_hw`` also
  the largest square radius that fits in the image (grey)."""
  plt = visual.pyplot()
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  n = len(rows)
  fig = plt.figure(figsize=(max(1.25 * n, 7.0), 5.6))
  gs = fig.add_gridspec(3, n, height_ratios=[1, 1, 1.9], hspace=0.3, left=0.06, right=0.98,
                        top=0.86, bottom=0.1)
  for i, r in enumerate(rows):
    for k, (maps, label) in enumerate(((m_t, "trained"), (m_u, "untrained"))):
      ax = fig.add_subplot(gs[k, i])
      m = maps[r.layer]
      ax.imshow(m / m.max() if m.max() > 0 else m, cmap="inferno", vmin=0, vmax=1,
                interpolation="nearest")
      (r0, r1), (c0, c1) = r.theoretical_region
      ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False,
                             edgecolor="white", linewidth=0.8, linestyle="--"))
      ax.set_xticks([])
      ax.set_yticks([])
      if k == 0:
        ax.set_title(r.layer.replace("BasicBlock_", "Block_"), fontsize=7)
      if i == 0:
        ax.set_ylabel(label, fontsize=8)
  ax = fig.add_subplot(gs[2, :])
  xs = np.arange(n)
  ax.plot(xs, [(r.theoretical_size[0] - 1) / 2 for r in rows], "k--o", ms=3,
          label="theoretical half-width (size-1)/2")
  ax.plot(xs, [r.r95_chebyshev for r in rows], "-o", ms=3, color="C3",
          label="ERF r95 (square), trained")
  ax.plot(xs, [r.r95_chebyshev_untrained for r in rows], "-o", ms=3, color="C0",
          label="ERF r95 (square), untrained")
  ax.plot(xs, [r.r95_euclidean for r in rows], ":", color="C3", label="ERF r95 (disc), trained")
  ax.plot(xs, [r.r95_euclidean_untrained for r in rows], ":", color="C0",
          label="ERF r95 (disc), untrained")
  if image_hw is not None:
    edge = [max(max(c, h - 1 - c) for c, h in zip(r.centre, image_hw)) for r in rows]
    ax.plot(xs, edge, color="0.6", lw=1, label="largest square radius inside the image")
  ax.set_xticks(xs, [f"{r.layer.replace('BasicBlock_', 'Block_')}\nRF {r.theoretical_size[0]}"
                     for r in rows], fontsize=6)
  ax.set_ylabel("input pixels")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, loc="upper left")
  fig.suptitle(title, fontsize=8)
  return fig


def main(argv: list[str] | None = None) -> int:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.erf",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--out", required=True, help="PNG to write (numbers go to the .json beside)")
  p.add_argument("--images", type=int, default=64, help="test images averaged over")
  p.add_argument("--layers", nargs="+", default=None,
                 help="module paths as in cnn_jax.summary.layer_table (default: see module "
                      "docstring)")
  p.add_argument("--batch-size", type=int, default=32, help="images per backward pass")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  a = p.parse_args(argv)
  if a.images < 1:
    p.error(f"--images must be >= 1, got {a.images}")
  run = visual.load_run(a.workdir, a.data_dir)
  shape = run.input_shape
  try:
    layers = a.layers or default_layers(run.model, shape)
    visual.check_layers(layers, visual.spatial_layers(run.model, shape))
  except ValueError as e:
    p.error(str(e))
  n = min(a.images, len(run.ds.test_labels))
  x = run.normalize(run.ds.test_images[:n])
  rows, m_t, m_u = analyse(run.model, run.variables, run.fresh_variables(), x, layers, shape,
                           a.batch_size)
  title = (f"Effective receptive field (Luo et al. 2016) of each layer's central unit, "
           f"{run.config.model.name} step {run.step} vs fresh init (seed {run.config.seed})\n"
           f"|d y_centre / d x| summed over channels, mean over the first {n} test images, "
           f"each map scaled to its max; dashed box = theoretical field")
  out = visual.save_figure(plot_erf(rows, m_t, m_u, title, shape[:2]), a.out)
  rec = {"workdir": str(a.workdir), "step": run.step, "model": run.config.model.name,
         "images": n, "input_shape": list(shape),
         "definition": "mean over images of sum over input channels of |d sum_c "
                       "y[centre, c] / dx|; radii in input pixels from the field centre",
         "layers": [dataclasses.asdict(r) for r in rows]}
  out.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")
  for r in rows:
    print(f"{r.layer:<16} RF {r.theoretical_size[0]:>3}  r95 square trained "
          f"{r.r95_chebyshev:5.1f} untrained {r.r95_chebyshev_untrained:5.1f}  disc trained "
          f"{r.r95_euclidean:5.1f} untrained {r.r95_euclidean_untrained:5.1f}")
  print(f"wrote {out} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_and_report("cnn_jax.analysis.erf")
  sys.exit(main())
