"""The Grain streaming loader against the in-memory one, its resume, and the loader choice."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from cnn_jax import checkpoint, parallel, train
from cnn_jax.config import validate
from cnn_jax.data import loader
from cnn_jax.metric_writer import read_jsonl
from tests.conftest import tiny_config, wrap_train_step


def _batches(data_config, seed, *, batch_size, steps_per_epoch, num_epochs, start_step=0):
  """Every (step, images, labels) of a run, as host arrays, and the test batches."""
  sharding = parallel.batch_sharded(parallel.data_mesh())
  ds = loader.open_data(data_config, seed)
  it = ds.train_batches(batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                        num_epochs=num_epochs, start_step=start_step, sharding=sharding)
  got = [(s, np.asarray(x), np.asarray(y)) for s, x, y in it]
  evals = [tuple(np.asarray(a) for a in b) for b in ds.eval_batches(40, sharding)]
  return ds, got, evals


def test_memory_and_grain_give_the_same_cifar10_batches(cifar10_dir, cache_dir):
  """Same seed, same batches (and test batches), byte for byte, across two epochs with
  alternating flip (decided on the host by example index and epoch in both loaders)."""
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=96, num_test=70)
  cfg.seed = 3
  cfg.data.flip_mode = "alternating"
  cfg.data.loader, cfg.data.num_workers = "memory", 0
  kw = dict(batch_size=32, steps_per_epoch=3, num_epochs=2)
  mem, mem_batches, mem_evals = _batches(cfg.data, cfg.seed, **kw)
  assert mem.loader == "memory"
  cfg.data.loader = "grain"
  grn, grain_batches, grain_evals = _batches(cfg.data, cfg.seed, **kw)
  assert grn.loader == "grain" and grn.num_train == 96 and grn.num_test == 70
  assert [s for s, _, _ in grain_batches] == list(range(6))
  for (s1, x1, y1), (s2, x2, y2) in zip(mem_batches, grain_batches, strict=True):
    assert s1 == s2 and x1.dtype == x2.dtype == np.uint8 and x1.shape == (32, 32, 32, 3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  # Each epoch is a permutation of the 96 examples; the two epochs differ in order.
  epoch0 = np.concatenate([x for s, x, _ in mem_batches if s < 3])
  epoch1 = np.concatenate([x for s, x, _ in mem_batches if s >= 3])
  assert len({a.tobytes() for a in epoch0}) == 96
  assert not np.array_equal(epoch0, epoch1)
  for a, b in zip(mem_evals, grain_evals, strict=True):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
  assert sum(float(m.sum()) for _, _, m in grain_evals) == 70
  # Starting mid-run (random access) gives the tail of the same stream.
  _, tail, _ = _batches(cfg.data, cfg.seed, **kw, start_step=4)
  assert [s for s, _, _ in tail] == [4, 5]
  np.testing.assert_array_equal(tail[0][1], grain_batches[4][1])


def test_device_resident_memory_batches_equal_host_batches(cifar10_dir, cache_dir):
  """data.device_resident: the epoch's data on the device, batches gathered there."""
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=64, num_test=40)
  cfg.data.flip_mode, cfg.data.loader = "alternating", "memory"
  kw = dict(batch_size=16, steps_per_epoch=4, num_epochs=2)
  cfg.data.device_resident = "off"
  _, host, _ = _batches(cfg.data, 1, **kw)
  cfg.data.device_resident = "on"
  ds, dev, _ = _batches(cfg.data, 1, **kw)
  assert ds.device_resident()
  for (s1, x1, y1), (s2, x2, y2) in zip(host, dev, strict=True):
    assert s1 == s2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def _small_cifar_folder(cifar10_dir: pathlib.Path, dst: pathlib.Path, train=8, test=4):
  """A 10-class folder of links to real CIFAR-10 JPEGs (so the mean/std pass is short)."""
  for split, k in (("train", train), ("test", test)):
    for c in sorted(p.name for p in (cifar10_dir / split).iterdir()):
      (dst / split / c).mkdir(parents=True)
      for f in sorted((cifar10_dir / split / c).iterdir())[:k]:
        (dst / split / c / f.name).symlink_to(f)
  return dst


def _run(cfg, workdir, monkeypatch, crash_after=None):
  """Trains ``cfg`` in ``workdir``, recording (step, image bytes) of every train batch;
  a simulated kill after ``crash_after`` steps if given. Returns (result, records)."""
  seen = []

  def record(n, step, state, x, y):
    if crash_after is not None and n > crash_after:
      raise KeyboardInterrupt("simulated kill")
    seen.append((int(state.step), np.asarray(x).tobytes()))
    return step(state, x, y)

  wrap_train_step(monkeypatch, record)
  try:
    return train.train_and_evaluate(cfg, str(workdir)), seen
  finally:
    monkeypatch.undo()


def test_grain_run_killed_and_resumed_sees_the_same_batches(cifar10_dir, tmp_path,
                                                            monkeypatch):
  """A Grain run (one worker process) killed mid-epoch 2 and resumed from the checkpoint's
  iterator state trains on exactly the batches of the uninterrupted run."""
  root = _small_cifar_folder(cifar10_dir, tmp_path / "data")
  cfg = tiny_config("cifar10_cnn", root, tmp_path / "cache", num_train=0, num_test=0,
                    batch_size=16, num_epochs=2)
  cfg.data.loader, cfg.data.num_workers, cfg.data.read_threads = "grain", 1, 0
  cfg.eval_batch_size = 20
  full, seen_full = _run(cfg, tmp_path / "a", monkeypatch)
  assert [s for s, _ in seen_full] == list(range(10))  # 80 images / 16 = 5 steps an epoch
  start = read_jsonl(tmp_path / "a" / "metrics.jsonl")[0]
  assert start["data_loader"] == "grain"

  with pytest.raises(KeyboardInterrupt):
    _run(cfg, tmp_path / "b", monkeypatch, crash_after=7)
  shutil.copytree(tmp_path / "b", tmp_path / "c")  # for the bad-state case below
  saved = json.loads((tmp_path / "b" / "checkpoints" / "5" / checkpoint.DATA_ITEM /
                      "process_0-of-1.json").read_text())
  assert saved["loader"] == "grain" and saved["num_workers"] == 1 and saved["grain"]
  resumed, seen_resumed = _run(cfg, tmp_path / "b", monkeypatch)
  assert [s for s, _ in seen_resumed] == list(range(5, 10))
  assert seen_resumed == seen_full[5:]  # the same images, in the same order
  assert resumed["test_accuracy"] == full["test_accuracy"]
  np.testing.assert_allclose(resumed["test_loss"], full["test_loss"], rtol=1e-5)
  np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-5)

  # A data state that does not lead to the checkpoint's step is refused, not trained on.
  path = (tmp_path / "c" / "checkpoints" / "5" / checkpoint.DATA_ITEM / "process_0-of-1.json")
  bad = json.loads(path.read_text())
  bad["start_batch"] = 2
  path.write_text(json.dumps(bad))
  with pytest.raises(RuntimeError, match="data iterator .* at step 7, the train state at step 5"):
    _run(cfg, tmp_path / "c", monkeypatch)


def test_auto_loader_choice_and_config_errors(cifar10_dir, cache_dir):
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir)
  assert cfg.data.loader == "auto" and loader.choose_loader(cfg.data) == "memory"
  cfg.data.memory_limit_mb = 100  # CIFAR-10 decoded: 60,000 x 3,072 bytes = 176 MiB
  assert loader.choose_loader(cfg.data) == "grain"
  cfg.data.memory_limit_mb = 4096
  cfg.data.augment = "inception"
  assert loader.choose_loader(cfg.data) == "grain"
  cfg.data.loader = "memory"
  with pytest.raises(ValueError, match="data.augment = 'inception'.*data.loader = 'grain'"):
    validate(cfg)
  cfg.data.loader, cfg.data.augment, cfg.data.skip_corrupt = "grain", "pad_crop", True
  with pytest.raises(ValueError, match="data.skip_corrupt = True needs data.loader = 'memory'"):
    validate(cfg)
  cfg.data.skip_corrupt = False
  cfg.data.rrc_scale = (0.5, 0.1)
  with pytest.raises(ValueError, match=r"data.rrc_scale = \(0.5, 0.1\)"):
    validate(cfg)
