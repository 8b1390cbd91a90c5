"""The airbench94 network (cnn_jax/models/airbench.py) and the speedrun recipe pieces
(cnn_jax/speedrun.py): parameter count by hand, whitening kernel, optimizer, lookahead, TTA.

Expected values are derived here by hand or by an independent numpy construction, never by
the functions under test. Inputs are tiny (batch 2) to keep the CPU time small.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models, speedrun
from cnn_jax.models import airbench


@pytest.fixture(scope="module")
def net_and_vars():
  model = models.create("airbench94")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  return model, model.init(jax.random.key(0), x, train=False), x


def test_param_count_by_hand(net_and_vars):
  _, variables, _ = net_and_vars
  whiten = 2 * 2 * 3 * 24 + 24  # frozen kernel + trainable bias
  block1 = 3 * 3 * 24 * 64 + 64 + 3 * 3 * 64 * 64 + 64  # convs + BN biases (no BN scales)
  block2 = 3 * 3 * 64 * 256 + 256 + 3 * 3 * 256 * 256 + 256
  block3 = 3 * 3 * 256 * 256 + 256 + 3 * 3 * 256 * 256 + 256
  head = 256 * 10  # no bias
  assert models.count_params(variables) == whiten + block1 + block2 + block3 + head
  assert models.count_params(variables) == 1_971_640
  # BN running statistics: mean and var for 2 * (64 + 256 + 256) channels.
  assert models.count_params(variables, "batch_stats") == 2 * 2 * (64 + 256 + 256)


def test_forward_shapes_and_train_updates_stats(net_and_vars):
  model, variables, x = net_and_vars
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  old = variables["batch_stats"]["block1"]["norm1"]["mean"]
  new = upd["batch_stats"]["block1"]["norm1"]["mean"]
  # momentum 0.6 (flax): new = 0.6 * old + 0.4 * batch mean; old starts at 0.
  assert np.all(np.abs(np.asarray(new)) > 0) and np.all(np.asarray(old) == 0)


def test_dirac_init_is_partial_identity():
  w = airbench.dirac_partial_init()(jax.random.key(1), (3, 3, 4, 6))
  w = np.asarray(w)
  for o in range(4):  # output channels below C_in: identity at the centre tap
    expect = np.zeros((3, 3, 4))
    expect[1, 1, o] = 1.0
    np.testing.assert_array_equal(w[..., o], expect)
  bound = 1 / np.sqrt(3 * 3 * 4)  # PyTorch default U(+-1/sqrt(fan_in)) for the rest
  assert np.all(np.abs(w[..., 4:]) <= bound) and np.any(w[..., 4:] != 0)


def test_whitening_kernel_whitens_patches():
  rng = np.random.default_rng(0)
  # Correlated channels so that whitening is not the identity.
  mix = np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 0.3]])
  images = (rng.normal(size=(6, 8, 8, 3)) @ mix).astype(np.float32)
  k = airbench.whitening_kernel(images, eps=0.0)
  assert k.shape == (2, 2, 3, 24) and k.dtype == np.float32
  np.testing.assert_array_equal(k[..., 12:], -k[..., :12])
  # Independent patch matrix: 2x2 windows flattened (dy, dx, c), by explicit loops.
  patches = np.stack([images[n, i:i + 2, j:j + 2, :].reshape(-1)
                      for n in range(6) for i in range(7) for j in range(7)])
  z = patches @ k[..., :12].reshape(12, 12)  # first 12 outputs of the conv on each patch
  np.testing.assert_allclose(z.T @ z / len(patches), np.eye(12), atol=2e-4)
  # Decreasing eigenvalue order: the first filter has the smallest norm (largest variance).
  norms = np.linalg.norm(k[..., :12].reshape(12, 12), axis=0)
  assert np.all(np.diff(norms) >= -1e-6)


def test_whitening_kernel_errors():
  with pytest.raises(ValueError, match="shape"):
    airbench.whitening_kernel(np.zeros((2, 1, 8, 3)))
  with pytest.raises(ValueError, match="NaN"):
    airbench.whitening_kernel(np.full((1, 4, 4, 3), np.nan))


def test_init_whitening_places_kernel_and_it_stays_frozen(net_and_vars):
  model, variables, x = net_and_vars
  params = airbench.init_whitening(variables["params"], np.asarray(x))
  np.testing.assert_array_equal(params["whiten"]["kernel"], airbench.whitening_kernel(x))
  assert params["block1"] is variables["params"]["block1"]  # the rest untouched
  with pytest.raises(KeyError, match="whiten"):
    airbench.init_whitening({"conv": {}}, x)

  def loss(p):
    return model.apply({**variables, "params": p}, x, train=True,
                       mutable=["batch_stats"])[0].sum()
  g = jax.grad(loss)(params)
  assert float(jnp.abs(g["whiten"]["kernel"]).sum()) == 0.0  # stop_gradient
  assert float(jnp.abs(g["whiten"]["bias"]).sum()) > 0.0  # the bias trains


def test_reference_hyperparameters_by_hand():
  h = speedrun.reference_hyperparameters(1024)
  # 11.5 / (1 + 1 / 0.15) = 11.5 / 7.6667 = 1.5; 0.0153 / 11.5.
  assert h["lr"] == pytest.approx(1.5)
  assert h["weight_decay"] == pytest.approx(0.0013304348, rel=1e-6)
  assert speedrun.reference_hyperparameters(512)["lr"] == pytest.approx(0.75)
  with pytest.raises(ValueError):
    speedrun.reference_hyperparameters(1024, momentum=1.0)


def test_triangle_schedule_by_hand():
  s = speedrun.triangle_schedule(1.5, 476)  # peak at int(0.23 * 476) = 109
  assert float(s(0)) == pytest.approx(0.3)
  assert float(s(109)) == pytest.approx(1.5)
  assert float(s(476)) == pytest.approx(0.105)
  assert float(s(54.5)) == pytest.approx(0.9)  # halfway up: (0.3 + 1.5) / 2
  assert float(s(109 + 367 / 2)) == pytest.approx((1.5 + 0.105) / 2, rel=1e-5)


def test_optimizer_bias_scale_decay_and_freezing():
  params = {"whiten": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
            "block1": {"norm1": {"bias": jnp.ones(2)}, "conv1": {"kernel": jnp.ones(2)}}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  lr, wd = 0.1, 0.01
  tx, _ = speedrun.airbench_optimizer(lr, 0.0, wd, total_steps=100, steps_per_epoch=1,
                                      whiten_bias_epochs=2, schedule=lambda _: lr)
  state = tx.init(params)
  ups = []
  for _ in range(3):
    u, state = tx.update(grads, state, params)
    ups.append(u)
  # No momentum: update = -lr * (scale * g + wd * p).
  conv = -lr * (0.5 + wd)
  norm = -lr * (64 * 0.5 + wd)
  for i, u in enumerate(ups):
    assert float(u["block1"]["conv1"]["kernel"][0]) == pytest.approx(conv)
    assert float(u["block1"]["norm1"]["bias"][0]) == pytest.approx(norm)
    assert float(u["whiten"]["kernel"][0]) == 0.0  # frozen from step 0
    # whiten bias trains in steps 0, 1 (epochs 0, 1) and is frozen from step 2.
    assert float(u["whiten"]["bias"][0]) == (pytest.approx(conv) if i < 2 else 0.0)


def test_lookahead_schedule_by_hand():
  # 4 steps per epoch, 20 steps, start at epoch 1, sync every 2 steps, decay_pow 1.
  kw = dict(steps_per_epoch=4, total_steps=20, start_epochs=1, every_n_steps=2,
            decay_base=0.5, decay_pow=1.0)
  w = {"a": jnp.zeros(())}
  la = speedrun.lookahead_init(w)
  seen = {}
  for step in range(1, 10):
    fast = {"a": jnp.asarray(float(step))}  # the optimizer moved the weight to `step`
    w, la = speedrun.lookahead_step(fast, la, step, **kw)
    seen[step] = (float(w["a"]), float(la.slow["a"]), bool(la.active))
  # Steps 1-4 are epoch 0: nothing. Step 6 (epoch 1, even) is the first sync: slow = 6,
  # weights untouched. Step 8: rho = 0.5**2 * 8/20 = 0.1, slow = 0.1*6 + 0.9*8 = 7.8,
  # weights pulled to 7.8; step 8 also ends epoch 1 (same pull).
  assert seen[4] == (4.0, 0.0, False)
  assert seen[5] == (5.0, 0.0, False)
  assert seen[6] == (6.0, 6.0, True)
  assert seen[7] == (7.0, 6.0, True)
  assert seen[8][0] == pytest.approx(7.8) and seen[8][1] == pytest.approx(7.8)
  assert seen[9] == (9.0, pytest.approx(7.8), True)
  # An epoch end that is not a sync step pulls the weights back to slow unchanged: with a
  # sync every 3 steps, step 6 (epoch 1) is the first sync (slow = 6, weights kept) and
  # step 8 ends epoch 1 without a sync (8 % 3 != 0): weights 11 -> 6.
  kw2 = dict(kw, every_n_steps=3)
  w, la = speedrun.lookahead_step({"a": jnp.asarray(6.0)}, speedrun.lookahead_init(w), 6, **kw2)
  assert bool(la.active) and float(la.slow["a"]) == 6.0 and float(w["a"]) == 6.0
  w, la = speedrun.lookahead_step({"a": jnp.asarray(11.0)}, la, 7, **kw2)
  assert float(w["a"]) == 11.0  # neither a sync nor an epoch end
  w, la = speedrun.lookahead_step({"a": jnp.asarray(11.0)}, la, 8, **kw2)
  assert float(w["a"]) == 6.0 and float(la.slow["a"]) == 6.0


def _linear_apply(variables, x):
  """A model whose logits are known: logits[n, k] = sum(x[n] * W[k])."""
  return jnp.einsum("nhwc,khwc->nk", x, variables["W"])


def test_tta_logits_weights_and_views():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = {"W": jnp.asarray(rng.normal(size=(10, 32, 32, 3)), jnp.float32)}
  f = lambda img: np.einsum("nhwc,khwc->nk", img, np.asarray(variables["W"]),
                            dtype=np.float64)
  flip = lambda img: img[:, :, ::-1, :]
  # Independent translated views by index maps: t_a[i] = x[|i - 1|] (reflect at the top/left),
  # t_b[i] = x[i + 1] with x[32] reflected to x[30].
  ia = np.abs(np.arange(32) - 1)
  ib = np.arange(32) + 1
  ib[ib == 32] = 30
  t_a = x[:, ia][:, :, ia]
  t_b = x[:, ib][:, :, ib]
  expect = {0: f(x), 1: 0.5 * (f(x) + f(flip(x))),
            2: 0.25 * (f(x) + f(flip(x)))
               + 0.125 * (f(t_a) + f(flip(t_a)) + f(t_b) + f(flip(t_b)))}
  for level in (0, 1, 2):
    got = speedrun.tta_logits(_linear_apply, variables, jnp.asarray(x), level)
    assert got.shape == (2, 10) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expect[level], rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match="level"):
    speedrun.tta_logits(_linear_apply, variables, jnp.asarray(x), 3)


def test_tta_translation_direction():
  # One bright pixel at (5, 7); the "model" reports its (row, col): the views put it at
  # (5, 7), (5, 24) flipped, (6, 8) and (6, 23) for t_a, (4, 6) and (4, 25) for t_b.
  x = np.zeros((1, 32, 32, 1), np.float32)
  x[0, 5, 7, 0] = 1.0
  rows = jnp.arange(32.0)[:, None] * jnp.ones((1, 32))
  cols = jnp.ones((32, 1)) * jnp.arange(32.0)[None, :]
  def where(variables, img):
    return jnp.stack([jnp.sum(img[..., 0] * rows, (1, 2)), jnp.sum(img[..., 0] * cols, (1, 2)),
                      jnp.sum(img[..., 0] * cols ** 2, (1, 2))], -1)
  got = np.asarray(speedrun.tta_logits(where, None, jnp.asarray(x), 2))[0]
  assert got[0] == pytest.approx(0.25 * (5 + 5) + 0.125 * (6 + 6 + 4 + 4))
  assert got[1] == pytest.approx(0.25 * (7 + 24) + 0.125 * (8 + 23 + 6 + 25))
  assert got[2] == pytest.approx(0.25 * (49 + 576) + 0.125 * (64 + 529 + 36 + 625))


def test_registry_and_config():
  from cnn_jax import config as cfg_lib
  assert "airbench94" in models.list_models()
  c = cfg_lib.validate(cfg_lib.load_config_file("configs/cifar10_speedrun.py"))
  assert c.model.name == "airbench94" and c.batch_size == 1024
  assert c.optim.lr == pytest.approx(1.5) and c.optim.momentum == 0.85
  assert c.label_smoothing == 0.2 and c.data.crop_pad == 2
  assert c.data.flip_mode == "alternating"
