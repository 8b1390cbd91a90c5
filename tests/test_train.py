"""End-to-end training on real CIFAR-10 images: steps, evaluation, logging, resume, errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import evaluate as cnn_evaluate
from cnn_jax import models, optim, provenance, report, steps, train, xla_cpu
from cnn_jax.config import base_config
from cnn_jax.data import DataError, loader
from cnn_jax.ops import cpu_conv
from cnn_jax.metric_writer import read_jsonl
from tests.conftest import kill_after, tiny_config, wrap_train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def _fixed_batch(n=64):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
          jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32)))


def test_train_step_lowers_loss_on_fixed_batch():
  model = models.create("cifar10_cnn")
  c = base_config().optim
  c.warmup_epochs, c.schedule, c.lr = 0.0, "constant", 0.05
  tx, _ = optim.create_optimizer(c, 10, 1)
  state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                       std=[64.0] * 3, seed=0, crop_pad=0, flip=False),
                 donate_argnums=0)
  x, y = _fixed_batch()
  losses = []
  for _ in range(15):
    state, m = step(state, x, y)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 15


def _one_step_compiled(model, materialize):
  tx, _ = optim.create_optimizer(base_config().optim, 100, 1)
  state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                       std=[64.0] * 3, seed=0,
                                       materialize_conv_inputs=materialize))
  x, y = _fixed_batch(8)
  compiled = step.lower(state, x, y).compile()
  new, metrics = compiled(state, x, y)
  return new, metrics, compiled.as_text()


def test_materialized_conv_inputs_change_the_program_not_the_step():
  """cnn_jax.xla_cpu.materialized_conv_inputs: conditionals in the compiled step, same step."""
  model = models.create("cifar10_cnn")
  plain, m_plain, hlo_plain = _one_step_compiled(model, False)
  kept, m_kept, hlo_kept = _one_step_compiled(model, True)
  n_convs = sum(path[-1] == "kernel" and v.ndim == 4
                for path, v in flax.traverse_util.flatten_dict(plain.params).items())
  # One conditional per conv call made it through XLA's optimizations (forward and backward).
  assert hlo_plain.count(" conditional(") == 0
  assert hlo_kept.count(" conditional(") >= n_convs > 0
  np.testing.assert_allclose(float(m_kept["loss"]), float(m_plain["loss"]), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               kept.params, plain.params)


def test_weight_ema_follows_the_warmed_up_decay():
  """EMA of params and BatchNorm statistics after each step, recomputed here in NumPy from
  the states the step returns: ``d_t = min(decay, (1 + t) / (10 + t))`` (TensorFlow's
  ``ExponentialMovingAverage`` with ``num_updates = t``), ``ema <- d_t ema + (1 - d_t) new``."""
  model = models.create("cifar10_cnn")
  c = base_config().optim
  c.warmup_epochs, c.schedule, c.lr = 0.0, "constant", 0.05
  tx, _ = optim.create_optimizer(c, 10, 1)
  plain = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  # Off by default: the checkpointed tree is exactly the pre-EMA one (old runs restore).
  assert type(plain) is steps.TrainState
  assert [f.name for f in dataclasses.fields(plain)] == ["step", "params", "batch_stats",
                                                         "opt_state"]
  with pytest.raises(ValueError, match="ema_decay"):
    plain.variables(ema=True)
  state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3), ema=True)
  assert isinstance(state, steps.EmaTrainState)
  decay = 0.2  # below the warm-up value from the third update on: both branches of the min
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                       std=[64.0] * 3, seed=0, crop_pad=0, flip=False,
                                       ema_decay=decay), donate_argnums=0)
  x, y = _fixed_batch()
  to_np = lambda tree: jax.tree.map(np.array, tree)
  expected = to_np({"params": state.params, "batch_stats": state.batch_stats})
  for t in range(4):
    state, _ = step(state, x, y)
    d = min(decay, (1 + t) / (10 + t))
    new = to_np({"params": state.params, "batch_stats": state.batch_stats})
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected, new)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7),
                 to_np(state.ema), expected)
  assert not np.allclose(expected["params"]["Dense_0"]["kernel"],
                         np.asarray(state.params["Dense_0"]["kernel"]))
  assert state.variables(ema=True)["batch_stats"] is state.ema["batch_stats"]


def test_label_smoothing_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
  target = np.array([0.9, 0.0, 0.0]) + 0.1 / 3
  expected = -(target * np.log(p)).sum()
  np.testing.assert_allclose(steps.cross_entropy(logits, jnp.array([0]), 3, 0.1), [expected],
                             rtol=1e-6)


def test_evaluation_counts_every_example_once():
  model = models.create("cifar10_cnn")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  state = steps.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                           variables["batch_stats"], None)
  x, y = _fixed_batch(37)
  mean, std = np.array([120.0] * 3), np.array([60.0] * 3)
  eval_step = jax.jit(steps.make_eval_step(model, num_classes=10, mean=mean, std=std))
  from cnn_jax import parallel
  sharding = parallel.batch_sharded(parallel.data_mesh())
  got = train.evaluate(eval_step, state, np.asarray(x), np.asarray(y), 16, sharding)
  # Reference: one forward pass over all 37 examples, in NumPy.
  logits = np.asarray(model.apply(variables, (np.asarray(x, np.float32) - mean) / std))
  logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                            keepdims=True)) \
      - logits.max(1, keepdims=True)
  assert got["test_count"] == 37
  np.testing.assert_allclose(got["test_accuracy"], np.mean(logits.argmax(1) == np.asarray(y)))
  np.testing.assert_allclose(got["test_loss"], -logp[np.arange(37), np.asarray(y)].mean(),
                             rtol=1e-5)
  # Flip TTA: the mean of the logits of each image and its mirror (flipped here in NumPy).
  tta_step = jax.jit(steps.make_eval_step(model, num_classes=10, mean=mean, std=std,
                                          flip_tta=True))
  tta = train.evaluate(tta_step, state, np.asarray(x), np.asarray(y), 16, sharding)
  mirrored = np.asarray(x, np.float32)[:, :, ::-1, :].copy()
  logits_tta = 0.5 * (logits + np.asarray(model.apply(variables, (mirrored - mean) / std)))
  np.testing.assert_allclose(tta["test_accuracy"],
                             np.mean(logits_tta.argmax(1) == np.asarray(y)))
  assert tta["test_count"] == 37 and tta["test_loss"] != got["test_loss"]


def test_epoch_permutation_is_fresh_and_reproducible():
  a, b = loader.epoch_permutation(0, 0, 100), loader.epoch_permutation(0, 1, 100)
  assert sorted(a) == list(range(100)) and not np.array_equal(a, b)
  np.testing.assert_array_equal(a, loader.epoch_permutation(0, 0, 100))


def _tensorboard_scalars(logdir) -> dict:
  """{tag: [(step, value), ...]} of every scalar in the event files under ``logdir``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for f in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    for e in tf.compat.v1.train.summary_iterator(str(f)):
      for v in e.summary.value:
        out.setdefault(v.tag, []).append((e.step, float(tf.make_ndarray(v.tensor))))
  return out


def test_end_to_end_logs_checkpoints_and_resumes(cifar10_dir, cache_dir, tmp_path,
                                                 monkeypatch):
  """Uninterrupted run vs the same run killed mid-epoch-2 then restarted: identical."""
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=96, num_test=70,
                    batch_size=32, num_epochs=2)
  cfg.tensorboard = True
  full = train.train_and_evaluate(cfg, str(tmp_path / "a"))
  cfg.tensorboard = False
  recs = read_jsonl(tmp_path / "a" / "metrics.jsonl")
  evals = [r for r in recs if "test_accuracy" in r]
  assert [r["step"] for r in evals] == [3, 6] and all(r["test_count"] == 70 for r in evals)
  trains = [r for r in recs if "train_loss" in r]
  assert trains and all(np.isfinite(r["train_loss"]) for r in trains)
  assert {"step", "epoch", "train_loss", "images_per_s", "wall_s", "lr"} <= set(trains[0])
  assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["name"] == "cifar10_cnn"
  assert full["step"] == 6 and 0.0 <= full["test_accuracy"] <= 1.0
  start = recs[0]
  assert start["event"] == "start" and start["jax"] == jax.__version__
  assert start["device_count"] == jax.device_count() and start["cpu_count"] >= 1
  # conv_backend='auto' resolves to oneDNN's convs on one CPU device where installed, and
  # materialize_conv_inputs='auto' then to off (only XLA's CPU convs need it; xla_cpu.py).
  backend = cpu_conv.resolve_backend("auto")
  assert start["conv_backend"] == backend
  assert json.loads((tmp_path / "a" / "config.json").read_text())["conv_backend"] == backend
  assert start["materialize_conv_inputs"] is (jax.default_backend() == "cpu"
                                              and backend == "xla")
  git_head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
  assert start["git_commit"] == (git_head or None)
  if git_head:  # the dirty list, checked against a different git command
    changed = subprocess.run(["git", "-C", str(REPO), "diff", "--name-only", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(start["git_dirty_files"]) == sorted(changed)
    assert start["git_dirty"] == bool(changed)
  assert set(start) >= set(provenance.KEYS)
  assert start["ld_preload"] == os.environ.get("LD_PRELOAD", "")
  summary = report.summarize(tmp_path / "a" / "metrics.jsonl")
  assert summary["final_test_accuracy"] == evals[-1]["test_accuracy"]
  assert summary["test_count"] == 70 and summary["git_commit"] == start["git_commit"]
  tb = _tensorboard_scalars(tmp_path / "a" / "tensorboard")
  assert sorted(tb["test_accuracy"]) == [(r["step"], pytest.approx(r["test_accuracy"]))
                                         for r in evals]
  assert [s for s, _ in sorted(tb["train_loss"])] == [r["step"] for r in trains]
  table = report.comparison_table([tmp_path / "a"]).splitlines()
  assert len(table) == 3 and "| `cifar10_cnn` | 289,194 |" in table[2]
  assert f"| {100 * evals[-1]['test_accuracy']:.2f} |" in table[2]

  # Interrupted run: raise after 4 steps (the epoch-1 checkpoint at step 3 exists).
  cfg.tensorboard = True
  wrap_train_step(monkeypatch, kill_after(4))
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(cfg, str(tmp_path / "b"))
  monkeypatch.undo()
  killed_steps = [s for s, _ in _tensorboard_scalars(tmp_path / "b" / "tensorboard")["train_loss"]]
  assert max(killed_steps) > 3  # past the checkpoint: the resumed run logs that step again
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"))
  cfg.tensorboard = False
  recs_b = read_jsonl(tmp_path / "b" / "metrics.jsonl")
  starts = [r for r in recs_b if r.get("event") == "start"]
  assert [s["step"] for s in starts] == [0, 3]
  # TensorBoard, like metrics.jsonl, holds each step once: the killed run's step 4 is gone.
  tb_b = _tensorboard_scalars(tmp_path / "b" / "tensorboard")
  assert sorted(tb_b["train_loss"]) == [(r["step"], pytest.approx(r["train_loss"]))
                                        for r in recs_b if "train_loss" in r]
  assert [s for s, _ in sorted(tb_b["test_accuracy"])] == [3, 6]
  np.testing.assert_allclose(resumed["test_loss"], full["test_loss"], rtol=1e-5)
  assert resumed["test_accuracy"] == full["test_accuracy"]
  np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-5)

  # Running again on a finished workdir does not train again.
  again = train.train_and_evaluate(cfg, str(tmp_path / "b"))
  assert again["step"] == 6
  np.testing.assert_allclose(again["test_loss"], full["test_loss"], rtol=1e-5)

  # Resuming under another config is refused before any work and changes nothing; keys
  # that do not change the weights may differ.
  before = {f: (tmp_path / "b" / f).read_bytes() for f in ("config.json", "metrics.jsonl")}
  changed = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=96, num_test=70,
                        batch_size=32, num_epochs=3)
  changed.optim.lr = 0.05
  with pytest.raises(ValueError, match=r"num_epochs: 2 in .*config.json, 3 now; "
                                       r"optim.lr: 0.1 in .*config.json, 0.05 now"):
    train.train_and_evaluate(changed, str(tmp_path / "b"))
  assert before == {f: (tmp_path / "b" / f).read_bytes() for f in before}
  cfg.log_every_steps, cfg.eval_batch_size = 1, 35
  assert train.train_and_evaluate(cfg, str(tmp_path / "b"))["step"] == 6

  # Re-scoring the newest checkpoint from the workdir alone gives the final evaluation.
  scored = cnn_evaluate.evaluate_checkpoint(tmp_path / "b")
  assert scored["step"] == 6 and scored["test_count"] == 70
  assert scored["test_accuracy"] == full["test_accuracy"]
  np.testing.assert_allclose(scored["test_loss"], full["test_loss"], rtol=1e-5)
  # A config.json from before a key joined base_config still loads (the key's default).
  logged = json.loads((tmp_path / "b" / "config.json").read_text())
  del logged["tensorboard"]
  (tmp_path / "b" / "config.json").write_text(json.dumps(logged))
  assert cnn_evaluate.evaluate_checkpoint(tmp_path / "b")["test_accuracy"] == full["test_accuracy"]
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    cnn_evaluate.evaluate_checkpoint(tmp_path / "no_run")


@pytest.mark.parametrize("key,value,error,match", [
    ("model.name", "resnet21", KeyError, "unknown model 'resnet21'"),
    ("data.name", "cifar11", KeyError, "unknown dataset 'cifar11'"),
    ("data.dir", "/no/such/dir", DataError, "/no/such/dir.*does not exist"),
    ("batch_size", 100000, ValueError, "batch_size = 100000 exceeds"),
])
def test_bad_input_stops_with_a_named_error(cifar10_dir, cache_dir, tmp_path, key, value, error,
                                            match):
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir)
  section, _, leaf = key.rpartition(".")
  (cfg[section] if section else cfg)[leaf] = value
  with pytest.raises(error, match=match):
    train.train_and_evaluate(cfg, str(tmp_path))


def test_cli_override_reaches_the_run(cifar10_dir, cache_dir, tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "cnn_jax.train", "--config", "configs/cifar10_cnn.py",
       "--workdir", str(tmp_path), f"--config.data.dir={cifar10_dir}",
       f"--config.data.cache_dir={cache_dir}", "--config.data.num_train=64",
       "--config.data.num_test=50", "--config.batch_size=32", "--config.eval_batch_size=50",
       "--config.num_epochs=1", "--config.optim.lr=0.0123", "--config.progress_bar=False"],
      capture_output=True, text=True, timeout=600, env={**os.environ, "XLA_FLAGS": ""})
  assert r.returncode == 0, r.stderr[-3000:]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["optim"]["lr"] == 0.0123 and saved["num_epochs"] == 1
  assert "final:" in r.stdout
  # The entry point sets its XLA CPU default before the backend starts (cnn_jax/xla_cpu.py).
  start = read_jsonl(tmp_path / "metrics.jsonl")[0]
  want = xla_cpu.default_xla_flags("")
  if os.environ.get(xla_cpu.KEEP_ENV) != "1":
    assert start["xla_flags"] == want
    assert (xla_cpu.YNN_CONV_OFF in r.stderr) == (want != "")
  # The allocator advice appears exactly when it applies to this process's environment.
  assert ("tcmalloc" in r.stderr) == (xla_cpu.allocator_hint() is not None)


def test_alternating_flip_shows_each_image_mirrored_once_per_two_epochs(
    cifar10_dir, cache_dir, tmp_path, monkeypatch):
  """The train loop hands alternating flip each row's own example index and the epoch."""
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=64, num_test=50,
                    batch_size=32, num_epochs=2)
  cfg.data.flip_mode = "alternating"
  mirrored = {}  # image bytes -> times it reached the step mirrored
  real = train.augment.alternating_flip

  def spy(images, flipped_in_epoch0, epoch):
    out = real(images, flipped_in_epoch0, epoch)
    for a, o in zip(images, out):
      mirrored[a.tobytes()] = mirrored.get(a.tobytes(), 0) + int(not np.array_equal(a, o))
    return out

  monkeypatch.setattr(train.augment, "alternating_flip", spy)
  train.train_and_evaluate(cfg, str(tmp_path))
  assert len(mirrored) == 64
  assert set(mirrored.values()) == {1}


@pytest.mark.slow  # CI time; the EMA update itself: test_weight_ema_follows_the_warmed_up_decay
def test_ema_run_logs_and_restores_the_average(cifar10_dir, cache_dir, tmp_path):
  """ema_decay > 0: each evaluation also scores the average; the checkpoint holds it."""
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=64, num_test=50,
                    batch_size=32, num_epochs=2)
  cfg.ema_decay = 0.5
  final = train.train_and_evaluate(cfg, str(tmp_path))
  evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "test_accuracy" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(0.0 <= r["ema_test_accuracy"] <= 1.0 and np.isfinite(r["ema_test_loss"])
             for r in evals)
  assert final["ema_test_loss"] == evals[-1]["ema_test_loss"] != final["test_loss"]
  summary = report.summarize(tmp_path / "metrics.jsonl")
  assert summary["final_ema_test_accuracy"] == evals[-1]["ema_test_accuracy"]
  scored = cnn_evaluate.evaluate_checkpoint(tmp_path, ema=True)
  assert scored["ema"] and scored["test_accuracy"] == final["ema_test_accuracy"]
  np.testing.assert_allclose(scored["test_loss"], final["ema_test_loss"], rtol=1e-5)
  raw = cnn_evaluate.evaluate_checkpoint(tmp_path)
  np.testing.assert_allclose(raw["test_loss"], final["test_loss"], rtol=1e-5)
  # A run without EMA has none to score: refused from its config.json, before any work.
  plain = tmp_path / "plain"
  (plain / "checkpoints").mkdir(parents=True)
  logged = json.loads((tmp_path / "config.json").read_text())
  (plain / "config.json").write_text(json.dumps({**logged, "ema_decay": 0.0}))
  with pytest.raises(ValueError, match="ema_decay = 0.0, so the run kept no EMA"):
    cnn_evaluate.evaluate_checkpoint(plain, ema=True)
