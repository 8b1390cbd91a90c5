"""The airbench94 network (cnn_jax/models/airbench.py) and the speedrun recipe pieces
(cnn_jax/speedrun.py, steps.tta_logits): parameter count by hand, whitening kernel,
optimizer, lookahead, TTA; and the recipe through the trainer (config keys optim.name =
'airbench_sgd', optim.schedule = 'triangle', section lookahead, model.whitening_images,
eval_tta): validation, build_run, and a tiny run killed and resumed bit for bit.

Expected values are derived here by hand or by an independent numpy construction, never by
the functions under test. Inputs are tiny (batch 2; the trainer runs use 16x16 synthetic
images and a narrow airbench94) to keep the CPU time small.
"""

import json
import pathlib
import shutil
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn_jax import checkpoint, models, speedrun, steps, train
from cnn_jax import data as cnn_data
from cnn_jax.config import (RESUME_MAY_CHANGE, base_config, check_resume, from_json,
                            load_config_file, validate)
from cnn_jax.data import loader as data_loader
from cnn_jax.metric_writer import read_jsonl
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
    got = steps.tta_logits(_linear_apply, variables, jnp.asarray(x), level)
    assert got.shape == (2, 10) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expect[level], rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match="level"):
    steps.tta_logits(_linear_apply, variables, jnp.asarray(x), 3)


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
  got = np.asarray(steps.tta_logits(where, None, jnp.asarray(x), 2))[0]
  assert got[0] == pytest.approx(0.25 * (5 + 5) + 0.125 * (6 + 6 + 4 + 4))
  assert got[1] == pytest.approx(0.25 * (7 + 24) + 0.125 * (8 + 23 + 6 + 25))
  assert got[2] == pytest.approx(0.25 * (49 + 576) + 0.125 * (64 + 529 + 36 + 625))


def test_registry_and_config():
  assert "airbench94" in models.list_models()
  c = validate(load_config_file("configs/cifar10_speedrun.py"))
  assert c.model.name == "airbench94" and c.batch_size == 1024
  assert c.optim.lr == pytest.approx(1.5) and c.optim.momentum == 0.85
  assert c.label_smoothing == 0.2 and c.data.crop_pad == 2
  assert c.data.flip_mode == "alternating"
  # The full recipe, in the reference's values (airbench94.py hyp).
  ref = speedrun.reference_hyperparameters(1024)
  assert c.optim.name == "airbench_sgd" and c.optim.nesterov
  assert c.optim.lr == pytest.approx(ref["lr"])
  assert c.optim.weight_decay == pytest.approx(ref["weight_decay"])
  assert (c.optim.bias_scaler, c.optim.whiten_bias_epochs) == (speedrun.REF_BIAS_SCALER,
                                                              speedrun.REF_WHITEN_BIAS_EPOCHS)
  assert c.optim.schedule == "triangle" and tuple(c.optim.triangle) == speedrun.REF_TRIANGLE
  assert {k: c.lookahead[k] for k in speedrun.REF_LOOKAHEAD} == speedrun.REF_LOOKAHEAD
  assert (c.model.whitening_images, c.model.whitening_eps) == (5000, 5e-4)
  assert c.eval_tta == "flip_translate" and c.ema_decay == 0.0
  assert isinstance(c.num_epochs, int)


# --- The recipe through the trainer -------------------------------------------------------


def test_recipe_key_combinations_and_old_config_json():
  c = base_config()
  c.optim.schedule = "triangle"  # warm-up left at its default 1.0
  with pytest.raises(ValueError, match=r"optim.warmup_epochs = 1.0; expected 0 with "
                                       r"optim.schedule = 'triangle'"):
    validate(c)
  c.optim.warmup_epochs = 0.0
  validate(c)
  c = base_config()
  c.lookahead.every_n_steps, c.ema_decay = 5, 0.99
  with pytest.raises(ValueError, match=r"lookahead.every_n_steps = 5 and config key "
                                       r"ema_decay = 0.99: expected at most one"):
    validate(c)
  # A config.json logged before these keys existed loads with their defaults (off), validates
  # and resumes under today's base_config; eval_tta may change on resume, the rest may not.
  old = base_config().to_dict()
  for section, key in (("optim", "triangle"), ("optim", "bias_scaler"),
                       ("optim", "whiten_bias_epochs"), ("model", "whitening_images"),
                       ("model", "whitening_eps")):
    del old[section][key]
  del old["lookahead"], old["eval_tta"]
  logged = validate(from_json(json.dumps(old)))
  assert logged.lookahead.every_n_steps == 0 and logged.model.whitening_images == 0
  assert logged.eval_tta == "none" and logged.optim.name == "sgd"
  assert "eval_tta" in RESUME_MAY_CHANGE
  now = base_config()
  now.eval_tta = "flip_translate"
  check_resume(logged, now)
  now.lookahead.every_n_steps = 5
  with pytest.raises(ValueError, match=r"lookahead.every_n_steps: 0 in config.json, 5 now"):
    check_resume(logged, now)


def _synthetic(n_train=96, n_test=20, size=16, seed=0) -> cnn_data.Dataset:
  """A tiny in-memory dataset: uint8 ``(N, size, size, 3)`` noise, labels cycling 0..9."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  labels = lambda n: (np.arange(n) % 10).astype(np.int32)
  return cnn_data.Dataset(images(n_train), labels(n_train), images(n_test), labels(n_test),
                          tuple(f"c{i}" for i in range(10)), np.array([125.0, 123.0, 114.0],
                                                                      np.float32),
                          np.array([63.0, 62.0, 66.0], np.float32), "synthetic")


SYNTHETIC = _synthetic()


def _recipe_config(**overrides):
  """The speedrun recipe's keys on a narrow airbench94, 16x16 synthetic data: 3 steps of 32
  per epoch, 2 epochs; lookahead from epoch 1 every 2 steps (syncs after steps 4 and 6)."""
  c = base_config()
  c.model.name = "airbench94"
  c.model.kwargs.widths = (8, 16, 16)
  c.model.whitening_images = 40
  c.data.name = "synthetic"
  c.data.loader = "memory"  # 'auto' would look the name up in the datasets table
  c.batch_size, c.eval_batch_size, c.num_epochs = 32, 10, 2
  c.label_smoothing = 0.2
  c.optim.name, c.optim.lr, c.optim.momentum = "airbench_sgd", 0.5, 0.85
  c.optim.weight_decay = 1e-3
  c.optim.schedule, c.optim.warmup_epochs = "triangle", 0.0
  c.optim.whiten_bias_epochs = 1.0
  c.lookahead.every_n_steps, c.lookahead.start_epochs = 2, 1.0
  c.eval_tta = "flip_translate"
  c.eval_every_epochs = 2  # one evaluation, at the end
  c.log_every_steps = 2
  c.progress_bar = c.tensorboard = False
  for k, v in overrides.items():
    section, _, leaf = k.rpartition(".")
    (c[section] if section else c)[leaf] = v
  return validate(c)


_SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_build_run_gives_the_triangle_schedule_and_airbench_optimizer():
  c = _recipe_config()
  run = train.build_run(c, SYNTHETIC, _SHARDING)
  total = 3 * 2
  peak = int(0.23 * total)  # step 1
  assert run.steps_per_epoch == 3
  # 0.2 lr at step 0, lr at the peak, then linear to 0.07 lr at the last step.
  np.testing.assert_allclose([float(run.schedule(s)) for s in (0, peak, 3.5, total)],
                             [0.1, 0.5, 0.5 + (0.035 - 0.5) * 2.5 / 5, 0.035], rtol=1e-6)
  assert isinstance(run.abstract_state, steps.LookaheadTrainState)
  assert run.lookahead is not None
  assert jax.tree.structure(run.abstract_state.lookahead.slow) == jax.tree.structure(
      {"params": run.abstract_state.params, "batch_stats": run.abstract_state.batch_stats})
  # One update on all-ones gradients at step 0 (lr 0.1; Nesterov's first step is
  # -lr (1 + m) g): kernels -0.1 * 1.85 (1 + wd w), BatchNorm biases -0.1 * 1.85 (64 + wd w),
  # the whitening kernel frozen, its bias trains (epoch 0 < whiten_bias_epochs).
  params = jax.tree.map(lambda a: jnp.full(a.shape, 0.5, a.dtype), run.abstract_state.params)
  upd = jax.jit(lambda p: run.tx.update(jax.tree.map(jnp.ones_like, p), run.tx.init(p), p)[0])(
      params)
  lr1 = -0.1 * 1.85
  for path, want in ((("block1", "conv1", "kernel"), lr1 * (1 + 1e-3 * 0.5)),
                     (("block2", "norm1", "bias"), lr1 * (64 + 1e-3 * 0.5)),
                     (("whiten", "kernel"), 0.0),
                     (("whiten", "bias"), lr1 * (1 + 1e-3 * 0.5))):
    got = upd
    for k in path:
      got = got[k]
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg="/".join(path))
  # Off: the plain TrainState, as before lookahead existed.
  plain = train.build_run(_recipe_config(**{"lookahead.every_n_steps": 0}), SYNTHETIC,
                          _SHARDING)
  assert type(plain.abstract_state) is steps.TrainState and plain.lookahead is None
  # Keys that would act on nothing in another model are refused, naming the key.
  with pytest.raises(ValueError, match=r"model.whitening_images = 40 .* 'cifar10_cnn' has no "
                                       r"'whiten/kernel'"):
    train.build_run(_recipe_config(**{"model.name": "cifar10_cnn", "model.kwargs": {}}),
                    SYNTHETIC, _SHARDING)
  with pytest.raises(ValueError, match=r"optim.bias_scaler = 64.0 .* 'cifar10_cnn' has none"):
    train.build_run(_recipe_config(**{"model.name": "cifar10_cnn", "model.kwargs": {},
                                      "model.whitening_images": 0}), SYNTHETIC, _SHARDING)


class _Toy(nn.Module):
  """logits[n, k] = sum(x[n] * W[k]): every pixel position matters, so translations and
  mirrors change the logits."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("W", nn.initializers.normal(1.0), (10, *x.shape[1:]))
    return jnp.einsum("nhwc,khwc->nk", x, w)


def test_eval_step_flip_translate_is_the_reference_level_2():
  """make_eval_step(tta_level=2) (what eval_tta = 'flip_translate' builds) scores the
  reference's six views: 1/4 each for the image and its mirror, 1/8 each for the image
  shifted one pixel down-right and one up-left (reflect fill) and their mirrors."""
  rng = np.random.default_rng(1)
  h = w = 8
  images = rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (5,)).astype(np.int32)
  mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
  model = _Toy()
  variables = model.init(jax.random.key(0), jnp.zeros((1, h, w, 3)))
  weight = np.asarray(variables["params"]["W"], np.float64)
  state = steps.TrainState(jnp.zeros((), jnp.int32), variables["params"], {}, None)
  x = (images.astype(np.float64) - mean) / std
  f = lambda v: np.einsum("nhwc,khwc->nk", v, weight)
  flip = lambda v: v[:, :, ::-1]
  # The reference's translate: pad 1 by reflection, crop at (0, 0) and at (2, 2); here by
  # explicit loops over output pixels, reflection written out.
  refl = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
  shifted = lambda d: np.stack([[[x[k, refl(i + d, h), refl(j + d, w)] for j in range(w)]
                                 for i in range(h)] for k in range(len(x))])
  t_down, t_up = shifted(-1), shifted(+1)
  views = {0: [(1.0, x)], 1: [(0.5, x), (0.5, flip(x))],
           2: [(0.25, x), (0.25, flip(x)), (0.125, t_down), (0.125, flip(t_down)),
               (0.125, t_up), (0.125, flip(t_up))]}
  mask = np.array([1, 1, 1, 1, 0], np.float32)  # the last row is padding
  for level in (0, 1, 2):
    logits = sum(c * f(v) for c, v in views[level])
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    eval_step = steps.make_eval_step(model, num_classes=10, mean=mean, std=std,
                                     tta_level=level)  # eager: cheaper than 3 compiles
    got = eval_step(state, images, labels, mask)
    np.testing.assert_allclose(float(got["loss_sum"]),
                               -(logp[np.arange(5), labels] * mask).sum(), rtol=1e-5)
    assert float(got["correct"]) == ((logits.argmax(1) == labels) * mask).sum()
  # The views differ (else the level-2 check could not fail): each changes the logits.
  assert all(not np.allclose(f(x), f(v)) for _, v in views[2][1:])
  flip_step = steps.make_eval_step(model, num_classes=10, mean=mean, std=std, flip_tta=True)
  level1 = steps.make_eval_step(model, num_classes=10, mean=mean, std=std, tta_level=1)
  assert flip_step(state, images, labels, mask) == level1(state, images, labels, mask)
  with pytest.raises(ValueError, match="not both"):
    steps.make_eval_step(model, num_classes=10, mean=mean, std=std, flip_tta=True,
                         tta_level=2)


def _checkpoint_arrays(workdir, step) -> dict:
  """``{path: array}`` of checkpoint ``step`` in ``workdir``, as saved."""
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "default"
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr, warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": NumPy wanted
    tree = ckptr.restore(path)
  return {checkpoint.key_path_str(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_recipe_run_whitens_once_and_resumes_lookahead_bit_identical(tmp_path, monkeypatch):
  """The recipe through train_and_evaluate (checkpoint every step): the whitening kernel is
  computed on the fresh run (from the seeded subset, normalised as the step does) and kept
  frozen; step 5's checkpoint holds an active lookahead (synced after step 4). A run killed
  right after that save (its workdir without checkpoint 6) resumes without whitening
  again and ends with every array equal to the uninterrupted run's: step 6's lookahead
  update uses the restored slow weights. Evaluation uses TTA level 2."""
  fake = lambda data_config: SYNTHETIC
  monkeypatch.setattr(cnn_data, "load", fake)
  monkeypatch.setattr(data_loader, "load", fake)
  calls = {"whiten": 0, "tta": []}
  real_init_whitening, real_eval = airbench.init_whitening, steps.make_eval_step

  def spy_whiten(*args, **kwargs):
    calls["whiten"] += 1
    return real_init_whitening(*args, **kwargs)

  def spy_eval(*args, **kwargs):
    calls["tta"].append(kwargs.get("tta_level"))
    return real_eval(*args, **kwargs)

  monkeypatch.setattr(airbench, "init_whitening", spy_whiten)
  monkeypatch.setattr(steps, "make_eval_step", spy_eval)
  # Checkpoints at steps 5 and 6; fewer ops to compile without the CPU conv-input option.
  cfg = _recipe_config(checkpoint_every_steps=5, materialize_conv_inputs="off")
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  ref_final = train.train_and_evaluate(cfg, str(ref_dir))
  assert calls == {"whiten": 1, "tta": [2]}
  assert checkpoint.saved_steps(ref_dir) == [5, 6]

  # The kernel: the whitening of the seeded subset's patches (normalised pixels), frozen.
  idx = train.whitening_indices(cfg.seed, 96, 40)
  assert len(set(idx.tolist())) == 40 and idx.min() >= 0 and idx.max() < 96
  x = (SYNTHETIC.train_images[idx].astype(np.float32) - SYNTHETIC.mean) / SYNTHETIC.std
  want = airbench.whitening_kernel(x, eps=cfg.model.whitening_eps)
  at5, ref6 = _checkpoint_arrays(ref_dir, 5), _checkpoint_arrays(ref_dir, 6)
  np.testing.assert_allclose(at5["params/whiten/kernel"], want, rtol=1e-6)
  np.testing.assert_array_equal(ref6["params/whiten/kernel"], at5["params/whiten/kernel"])
  # Lookahead: active since the sync after step 4, its slow weights apart from the weights.
  assert at5["lookahead/active"]
  assert not np.array_equal(at5["lookahead/slow/params/block1/conv1/kernel"],
                            at5["params/block1/conv1/kernel"])

  # Killed after step 5's save: the workdir as it was then.
  shutil.copytree(ref_dir, run_dir)
  shutil.rmtree(run_dir / "checkpoints" / "6")
  resumed = train.train_and_evaluate(cfg, str(run_dir))
  assert calls == {"whiten": 1, "tta": [2, 2]}  # not whitened again
  got6 = _checkpoint_arrays(run_dir, 6)
  assert list(got6) == list(ref6)
  for path, want_arr in ref6.items():
    np.testing.assert_array_equal(got6[path], want_arr, err_msg=path)
  assert resumed["test_loss"] == ref_final["test_loss"]
  starts = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event")]
  assert [(s["step"], s.get("whitening_images"), s["eval_tta"]) for s in starts] == [
      (0, 40, "flip_translate"), (5, None, "flip_translate")]
