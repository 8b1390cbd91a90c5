"""Shift test: top-1 accuracy on test images translated by 0..S pixels, and how many
predictions flip.

Convolutions are translation-equivariant, but strides, padding and the finite image make a
CNN's output only approximately invariant: Azulay & Weiss 2019 (JMLR, "Why do deep
convolutional networks generalize so poorly to small image transformations?") and Zhang 2019
(ICML, "Making Convolutional Networks Shift-Invariant Again") show that a shift of a few
pixels changes many predictions. For each shift ``s`` every test image is translated by
``s`` pixels (default: to the right; the vacated columns are filled with 0, i.e. black
pixels, or with the training mean colour, which is 0 after normalisation, with
``--fill mean``; the content pushed out is lost), normalised with the run's mean/std and
classified in inference mode. Reported per ``s``: top-1 accuracy (fraction) and the
fraction of test images whose predicted class differs from the prediction at ``s = 0``.

``python -m cnn_jax.analysis.shift_test --workdir <run> [<run2> ...] [--labels ...]
[--max-shift 8] --out <png>`` plots one curve per run (e.g. trained with and without
random-crop augmentation) and writes the numbers as JSON beside the PNG (``.json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.analysis import visual
from cnn_jax.data import augment

DIRECTIONS = {"right": (2, 1), "left": (2, -1), "down": (1, 1), "up": (1, -1)}


def shift_images(images: np.ndarray, s: int, direction: str = "right",
                 fill=0) -> np.ndarray:
  """Translates ``(N, H, W, C)`` images by ``s >= 0`` pixels; vacated pixels get ``fill``
  (a scalar or a ``(C,)`` colour, same dtype as ``images``).

  Raises:
    ValueError: ``s < 0``, ``s`` at least the image extent, or an unknown ``direction``.
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
  axis, sign = DIRECTIONS[direction]
  if not 0 <= s < images.shape[axis]:
    raise ValueError(f"shift must be in [0, {images.shape[axis]}) pixels for images "
                     f"{images.shape}, got {s}")
  if s == 0:
    return images
  out = np.empty_like(images)
  out[...] = np.asarray(fill, images.dtype)
  src = [slice(None)] * 4
  dst = [slice(None)] * 4
  src[axis] = slice(0, -s) if sign > 0 else slice(s, None)
  dst[axis] = slice(s, None) if sign > 0 else slice(0, -s)
  out[tuple(dst)] = images[tuple(src)]
  return out


@functools.partial(jax.jit, static_argnames=("model",))
def _predict(model: nn.Module, variables, images, mean, std):
  x = augment.normalize(images, mean, std, jnp.float32)
  return jnp.argmax(model.apply(variables, x, train=False), -1)


def predict(model: nn.Module, variables, images: np.ndarray, mean, std,
            batch_size: int = 500) -> np.ndarray:
  """Predicted classes (int ``(N,)``) of uint8 ``(N, H, W, C)`` images, in inference mode.
  The last batch is padded to ``batch_size`` (one compiled shape) and the padding dropped."""
  out = []
  for start in range(0, len(images), batch_size):
    b = images[start:start + batch_size]
    n = len(b)
    if n < batch_size:
      b = np.concatenate([b, np.repeat(b[-1:], batch_size - n, axis=0)])
    out.append(np.asarray(_predict(model, variables, jnp.asarray(b), jnp.asarray(mean),
                                   jnp.asarray(std)))[:n])
  return np.concatenate(out)


def shift_curve(model: nn.Module, variables, images: np.ndarray, labels: np.ndarray, mean,
                std, shifts: Sequence[int], direction: str = "right", fill: str = "zero",
                batch_size: int = 500) -> dict:
  """Accuracy and flip rate per shift.

  Args:
    model, variables: the network (inference mode).
    images: uint8 ``(N, H, W, C)``; labels: int ``(N,)``.
    mean, std: ``(C,)`` normalisation statistics in 0-255 units.
    shifts: pixel shifts; must contain 0 (the reference for flips).
    direction: ``'right'``, ``'left'``, ``'down'`` or ``'up'``.
    fill: ``'zero'`` (black, uint8 0) or ``'mean'`` (the mean colour, rounded to uint8).

  Returns:
    ``{'shifts', 'accuracy', 'flip_fraction', 'correct', 'flipped', 'n'}``: lists per shift
    (fractions; ``correct``/``flipped`` counts of images).

  Raises:
    ValueError: 0 not in ``shifts``, unknown ``fill``, bad shift (see :func:`shift_images`).
  """
  if 0 not in shifts:
    raise ValueError(f"shifts must include 0 (the unshifted reference), got {list(shifts)}")
  if fill not in ("zero", "mean"):
    raise ValueError(f"fill must be 'zero' or 'mean', got {fill!r}")
  fill_value = 0 if fill == "zero" else np.round(np.asarray(mean)).astype(images.dtype)
  preds = {s: predict(model, variables, shift_images(images, s, direction, fill_value), mean,
                      std, batch_size) for s in sorted(set(shifts))}
  n = len(labels)
  correct = [int((preds[s] == labels).sum()) for s in shifts]
  flipped = [int((preds[s] != preds[0]).sum()) for s in shifts]
  return {"shifts": list(shifts), "accuracy": [c / n for c in correct],
          "flip_fraction": [f / n for f in flipped], "correct": correct, "flipped": flipped,
          "n": n}


def plot_shift(results: list[dict], title: str):
  """Two panels: top-1 accuracy (%) and flipped predictions (%) vs shift, one line per run."""
  plt = visual.pyplot()
  fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.0, 3.3))
  for i, r in enumerate(results):
    a0.plot(r["shifts"], [100 * v for v in r["accuracy"]], "-o", ms=3, color=f"C{i}",
            label=r["label"])
    a1.plot(r["shifts"], [100 * v for v in r["flip_fraction"]], "-o", ms=3, color=f"C{i}",
            label=r["label"])
  a0.set_ylabel("test top-1 (%)")
  a1.set_ylabel("predictions changed vs s = 0 (%)")
  for a in (a0, a1):
    a.set_xlabel("shift s (pixels)")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def main(argv: list[str] | None = None) -> int:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.analysis.shift_test",
                              description=__doc__.splitlines()[0])
  p.add_argument("--workdir", nargs="+", required=True, help="one or more cnn_jax.train workdirs")
  p.add_argument("--labels", nargs="+", default=None,
                 help="legend label per workdir (default: model, crop_pad, step)")
  p.add_argument("--max-shift", type=int, default=8, help="largest shift in pixels")
  p.add_argument("--direction", choices=sorted(DIRECTIONS), default="right")
  p.add_argument("--fill", choices=("zero", "mean"), default="zero",
                 help="vacated pixels: black (zero) or the training mean colour")
  p.add_argument("--num-test", type=int, default=0, help="first N test images (0 = all)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="images per forward pass (default: the run's eval_batch_size)")
  p.add_argument("--out", required=True, help="PNG to write (numbers go to the .json beside)")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  a = p.parse_args(argv)
  if a.labels is not None and len(a.labels) != len(a.workdir):
    p.error(f"--labels needs one label per --workdir: {len(a.workdir)} workdirs, "
            f"{len(a.labels)} labels")
  if a.max_shift < 0:
    p.error(f"--max-shift must be >= 0, got {a.max_shift}")
  shifts = list(range(a.max_shift + 1))
  results = []
  for i, wd in enumerate(a.workdir):
    run = visual.load_run(wd, a.data_dir)
    n = a.num_test or len(run.ds.test_labels)
    c = run.config
    label = (a.labels[i] if a.labels else
             f"{c.model.name}, crop_pad {c.data.crop_pad}, step {run.step}")
    r = shift_curve(run.model, run.variables, run.ds.test_images[:n], run.ds.test_labels[:n],
                    run.ds.mean, run.ds.std, shifts, a.direction, a.fill,
                    a.batch_size or c.eval_batch_size)
    results.append({"workdir": str(wd), "label": label, "model": c.model.name,
                    "step": run.step, "crop_pad": c.data.crop_pad, "pad_mode": c.data.pad_mode,
                    "flip": c.data.flip, **r})
    for s, acc, fl in zip(shifts, r["accuracy"], r["flip_fraction"]):
      print(f"{label}: shift {s}: top-1 {100 * acc:.2f}%  changed {100 * fl:.2f}%")
  title = (f"Test images shifted {a.direction} by s pixels, vacated pixels "
           f"{'black' if a.fill == 'zero' else 'the mean colour'}; "
           f"{results[0]['n']} test images")
  out = visual.save_figure(plot_shift(results, title), a.out)
  rec = {"direction": a.direction, "fill": a.fill, "runs": results}
  out.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")
  print(f"wrote {out} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_and_report("cnn_jax.analysis.shift_test")
  sys.exit(main())
