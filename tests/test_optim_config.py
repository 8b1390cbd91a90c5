"""Optimizer factory, schedules, weight-decay mask, config validation and CLI overrides."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models, optim
from cnn_jax.config import (RESUME_MAY_CHANGE, base_config, check_overrides,
                            check_resume, from_json, validate)


def test_weight_decay_mask_only_kernels():
  model = models.create("cifar10_cnn")
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  mask = optim.weight_decay_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  names = {jax.tree_util.keystr(p): m for p, m in flat}
  assert names["['Dense_0']['kernel']"] is True
  assert names["['Dense_0']['bias']"] is False
  assert names["['ConvBNReLU_0']['Conv_0']['kernel']"] is True
  assert names["['ConvBNReLU_0']['Conv_0']['bias']"] is False
  assert names["['ConvBNReLU_0']['BatchNorm_0']['scale']"] is False
  assert names["['ConvBNReLU_0']['BatchNorm_0']['bias']"] is False


def test_sgd_decay_skips_masked_leaves():
  c = base_config().optim
  c.warmup_epochs = 0.0
  c.schedule = "constant"
  c.lr, c.momentum, c.weight_decay = 0.5, 0.0, 0.1
  tx, _ = optim.create_optimizer(c, 10, 1)
  params = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, tx.init(params), params)
  # kernel: -lr * wd * w = -0.05; bias: untouched.
  np.testing.assert_allclose(upd["kernel"], -0.05)
  np.testing.assert_allclose(upd["bias"], 0.0)


def test_nesterov_matches_formula():
  c = base_config().optim
  c.warmup_epochs, c.schedule, c.lr, c.momentum, c.weight_decay = 0.0, "constant", 0.1, 0.9, 0.0
  tx, _ = optim.create_optimizer(c, 10, 1)
  p = {"kernel": jnp.zeros(1)}
  state = tx.init(p)
  g = {"kernel": jnp.ones(1)}
  # Nesterov (Sutskever et al. 2013, PyTorch form): v = mu v + g; update = -lr (g + mu v).
  v = 0.0
  for _ in range(3):
    upd, state = tx.update(g, state, p)
    v = 0.9 * v + 1.0
    np.testing.assert_allclose(upd["kernel"], -0.1 * (1.0 + 0.9 * v), rtol=1e-6)


def test_warmup_then_cosine():
  c = base_config().optim
  c.lr, c.warmup_epochs, c.min_lr = 0.4, 2.0, 0.0
  sched = optim.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=12)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), 0.2, rtol=1e-6)  # half-way through warm-up
  np.testing.assert_allclose(float(sched(20)), 0.4, rtol=1e-6)  # peak
  # Cosine: lr(t) = lr/2 (1 + cos(pi t/T)), T = 100 steps after warm-up.
  np.testing.assert_allclose(float(sched(70)), 0.2 * (1 + math.cos(math.pi * 0.5)), atol=1e-6)
  assert float(sched(120)) < 1e-6


def test_piecewise():
  c = base_config().optim
  c.schedule, c.lr, c.warmup_epochs, c.boundaries_epochs = "piecewise", 0.1, 0.0, (0.5, 0.75)
  sched = optim.learning_rate_schedule(c, steps_per_epoch=10, num_epochs=10)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 49, 51, 76)],
                             [0.1, 0.1, 0.01, 0.001], rtol=1e-5)


def test_adamw_is_decoupled():
  c = base_config().optim
  c.name, c.warmup_epochs, c.schedule, c.lr, c.weight_decay = "adamw", 0.0, "constant", 0.1, 0.5
  tx, _ = optim.create_optimizer(c, 10, 1)
  p = {"kernel": jnp.full(1, 2.0), "bias": jnp.full(1, 2.0)}
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  np.testing.assert_allclose(upd["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(upd["bias"], 0.0)


def test_validate_errors_name_the_key():
  c = base_config()
  c.optim.name = "rmsprop"
  with pytest.raises(ValueError, match="optim.name.*rmsprop"):
    validate(c)
  c = base_config()
  c.batch_size = 0
  with pytest.raises(ValueError, match="batch_size = 0"):
    validate(c)
  c = base_config()
  c.optim.lrr = 0.1
  with pytest.raises(KeyError, match="optim.lrr.*optim.lr"):
    validate(c)
  c = base_config()
  c.data.flip_mode = "sometimes"
  with pytest.raises(ValueError, match="data.flip_mode.*sometimes"):
    validate(c)
  c = base_config()
  c.ema_decay = 1.0  # would never move from the initial weights
  with pytest.raises(ValueError, match=r"ema_decay = 1.0; expected \[0, 1\)"):
    validate(c)
  validate(base_config())


def test_validated_choices_are_what_the_code_accepts():
  """config.py lists choices without importing jax; they must stay the consumers' keys."""
  from cnn_jax import config, steps  # pylint: disable=g-import-not-at-top
  assert set(config._CHOICES["eval_tta"]) == set(steps.TTA_LEVELS)  # pylint: disable=protected-access
  for name in config._CHOICES["optim.name"]:  # pylint: disable=protected-access
    c = base_config()
    c.optim.name = name
    optim.create_optimizer(c.optim, steps_per_epoch=10, num_epochs=2)


def test_check_resume_names_changed_keys_and_allows_display_keys():
  saved = base_config()
  saved.model.kwargs.shortcut = "A"
  logged = from_json(saved.to_json_best_effort())  # what train writes and reads back
  check_resume(logged, saved)
  watched = base_config()
  watched.model.kwargs.shortcut = "A"
  for key in RESUME_MAY_CHANGE:  # every allowed key at once, to a value of its type
    section, _, leaf = key.rpartition(".")
    node = watched[section] if section else watched
    node[leaf] = {bool: lambda v: not v, int: lambda v: v + 7,
                  str: lambda v: v + "/elsewhere"}[type(node[leaf])](node[leaf])
  check_resume(logged, watched)
  other = base_config()
  other.model.kwargs.shortcut = "B"
  other.optim.boundaries_epochs = (0.5, 0.9)
  with pytest.raises(ValueError) as e:
    check_resume(logged, other)
  assert ("model.kwargs.shortcut: 'A' in config.json, 'B' now; "
          "optim.boundaries_epochs: [0.5, 0.75] in config.json, [0.5, 0.9] now") in str(e.value)
  # A config.json written before a key joined base_config compares as that key's default.
  old = saved.to_dict()
  del old["label_smoothing"]
  check_resume(from_json(json.dumps(old)), saved)


def test_check_overrides(tmp_path):
  check_overrides(["--config", "configs/cifar10_resnet20.py", "--config.optim.lr=0.05",
                   "--config.model.name=cifar10_cnn",
                   "--config.model.kwargs.zero_init_last_bn=True"])
  with pytest.raises(SystemExit, match="'optim.lrr'.*optim.lr"):
    check_overrides(["--config=configs/cifar10_resnet20.py", "--config.optim.lrr=0.05"])


def test_cli_unknown_key_is_one_clear_line():
  r = subprocess.run([sys.executable, "-m", "cnn_jax.train", "--config",
                      "configs/cifar10_resnet20.py", "--workdir", "/tmp/unused",
                      "--config.num_epoch=2"], capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "unknown config key 'num_epoch'" in r.stderr and "num_epochs" in r.stderr
  assert "Traceback" not in r.stderr


_CONFIGS = sorted(pathlib.Path(__file__).resolve().parents[1].glob("configs/*.py"))


@pytest.mark.parametrize("path", [str(p) for p in _CONFIGS], ids=[p.stem for p in _CONFIGS])
def test_config_files_validate(path):
  from cnn_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  c = validate(load_config_file(path))
  # Model kwargs are not in base_config, so only the model can reject a misspelt one.
  models.create(c.model.name, num_classes=10, **c.model.kwargs.to_dict())
