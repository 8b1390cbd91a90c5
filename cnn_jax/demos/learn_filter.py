"""Learn a 3x3 kernel by gradient descent to reproduce a hand-designed filter's output.

``python -m cnn_jax.demos.learn_filter --target sobel_x --out <dir>``: real grayscale
images (CIFAR-10 JPEGs) are filtered with the target kernel ('VALID' cross-correlation);
a randomly initialised 3x3 kernel is trained with optax (L-BFGS by default, or Adam) on
the mean squared error between
its feature maps and the target's. The loss is a convex quadratic in the 9 weights whose
minimum is the target, so the kernel converges to it; we report the max abs error.
Writes ``learn_filter.png`` (loss on a log scale, the 9 weights over steps, learned vs
target kernel) and prints the final error.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnn_jax.demos._images import CIFAR10_DIR, load_gray_folder  # noqa: E402
from cnn_jax.ops import conv2d, kernels  # noqa: E402

DEFAULT_DATA = CIFAR10_DIR / "train"


@dataclasses.dataclass
class FitResult:
  """Outcome of :func:`fit`.

  Attributes:
    kernel: learned ``(3, 3)`` float32 kernel.
    target: the target ``(3, 3)`` kernel.
    max_abs_error: ``max |kernel - target|``.
    losses: MSE per step, ``(steps,)``.
    history: kernel per step, ``(steps, 3, 3)``.
  """
  kernel: np.ndarray
  target: np.ndarray
  max_abs_error: float
  losses: np.ndarray
  history: np.ndarray


def fit(images: np.ndarray, target: np.ndarray, steps: int = 100, lr: float = 0.05,
        seed: int = 0, optimizer: str = "lbfgs") -> FitResult:
  """Trains a random kernel (same shape as ``target``) to match ``target``'s feature maps.

  Args:
    images: ``(N, H, W)`` float grayscale in [0, 1].
    target: ``(K_h, K_w)`` kernel to recover.
    steps: optimizer steps (full batch).
    lr: Adam's peak learning rate (cosine-decayed to 1% over ``steps``); unused by L-BFGS
      (it line-searches).
    seed: initialisation seed (``N(0, 1)`` weights).
    optimizer: 'lbfgs' (``optax.lbfgs``, default) or 'adam' (``optax.adam``). Natural image
      patches are strongly correlated: the quadratic's Hessian (the patch autocorrelation)
      has a condition number of ~750 on CIFAR-10, so Adam needs thousands of steps to get
      below 1e-3 while L-BFGS, which builds a curvature model, needs a few dozen.

  Returns:
    :class:`FitResult`.

  Raises:
    ValueError: unknown ``optimizer``.
  """
  # Per-image mean removal: the kernel's sum is then learned from edges, not from the
  # (nearly constant) brightness, which makes the quadratic much better conditioned.
  x = np.asarray(images, np.float32)
  x = (x - x.mean(axis=(1, 2), keepdims=True))[..., None]
  t = np.asarray(target, np.float32)
  y = conv2d(x, t[:, :, None, None])
  w0 = jax.random.normal(jax.random.PRNGKey(seed), t.shape)
  if optimizer == "adam":
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
  elif optimizer == "lbfgs":
    opt = optax.lbfgs()
  else:
    raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")

  def loss_fn(w):
    return jnp.mean((conv2d(x, w[:, :, None, None]) - y) ** 2)

  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  @jax.jit
  def run(w):
    def step(carry, _):
      w, s = carry
      if optimizer == "lbfgs":
        loss, g = value_and_grad(w, state=s)
        u, s = opt.update(g, s, w, value=loss, grad=g, value_fn=loss_fn)
      else:
        loss, g = jax.value_and_grad(loss_fn)(w)
        u, s = opt.update(g, s, w)
      w = optax.apply_updates(w, u)
      return (w, s), (loss, w)
    (w, _), (losses, hist) = jax.lax.scan(step, (w, opt.init(w)), None, length=steps)
    return w, losses, hist

  w, losses, hist = run(w0)
  w = np.asarray(w)
  return FitResult(w, t, float(np.abs(w - t).max()), np.asarray(losses), np.asarray(hist))


def plot(res: FitResult, path, title: str) -> None:
  """Loss curve, weight trajectories, and learned vs target kernel, to one PNG."""
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
  axes[0].semilogy(res.losses)
  axes[0].set(title="MSE loss", xlabel="step")
  for k in range(res.history.shape[1] * res.history.shape[2]):
    i, j = divmod(k, res.history.shape[2])
    line, = axes[1].plot(res.history[:, i, j], lw=1)
    axes[1].axhline(res.target[i, j], color=line.get_color(), ls=":", lw=0.8)
  axes[1].set(title="kernel weights (dotted: target)", xlabel="step")
  m = float(np.abs(res.target).max()) or 1.0
  for ax, a, name in ((axes[2], res.kernel, "learned"), (axes[3], res.target, "target")):
    ax.imshow(a, cmap="RdBu_r", vmin=-m, vmax=m)
    for (i, j), v in np.ndenumerate(a):
      ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8)
    ax.set_title(name)
    ax.axis("off")
  fig.suptitle(f"{title}: max |learned - target| = {res.max_abs_error:.2e}")
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def main(argv=None) -> int:
  """CLI entry point (see module docstring)."""
  p = argparse.ArgumentParser(prog="python -m cnn_jax.demos.learn_filter", description=__doc__)
  p.add_argument("--target", default="sobel_x",
                 choices=[k for k in sorted(kernels.KERNELS) if kernels.get(k).shape == (3, 3)])
  p.add_argument("--data", default=str(DEFAULT_DATA),
                 help=f"folder of <class>/*.jpg images (default {DEFAULT_DATA})")
  p.add_argument("--num-images", type=int, default=64)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "adam"])
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  images = load_gray_folder(a.data, a.num_images)
  res = fit(images, kernels.get(a.target), a.steps, a.lr, a.seed, a.optimizer)
  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  plot(res, out / "learn_filter.png",
       f"learning {a.target} on {len(images)} images ({a.optimizer}, {a.steps} steps)")
  np.set_printoptions(precision=4, suppress=True)
  print(f"images: {images.shape} from {a.data}")
  print(f"final loss {res.losses[-1]:.3e}; learned kernel:\n{res.kernel}")
  print(f"max abs error vs {a.target}: {res.max_abs_error:.2e}")
  print(f"plot: {out / 'learn_filter.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
