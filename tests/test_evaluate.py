"""``cnn_jax.evaluate`` re-scores a run trained through the Grain loader to its own logged
numbers (the in-memory loader's case: tests/test_train.py, end-to-end test)."""

import json

import numpy as np
import pytest

from cnn_jax import checkpoint, evaluate, train
from cnn_jax.metric_writer import read_jsonl
from tests.conftest import TINY_IMAGENET_DIR, tiny_config


def test_grain_inception_run_rescored_to_its_logged_accuracy(tmp_path, cache_dir, capsys):
  """A 2-step Grain run with ImageNet-style evaluation (each 64x64 Tiny-ImageNet-10 test
  image resized to 73x73 and center-cropped to 64x64, as experiments/tiny_imagenet10_resnet18):
  the command line's score equals the run's final logged test accuracy and loss, and the
  analyses' test arrays are that evaluation view.

  Scoring the decoded test images instead (what ``cnn_jax.evaluate`` did before it read the
  data through the run's loader: same shape, other pixels) gives another loss. A small MLP
  keeps the test's compile time short."""
  assert TINY_IMAGENET_DIR.is_dir(), f"real Tiny-ImageNet-10 expected at {TINY_IMAGENET_DIR}"
  cfg = tiny_config("mlp", TINY_IMAGENET_DIR, cache_dir, num_train=16, num_test=12,
                    batch_size=8)
  cfg.model.kwargs.hidden_dims = (32,)
  cfg.data.name = "tiny_imagenet_10"
  cfg.data.loader, cfg.data.augment, cfg.data.image_size = "grain", "inception", 64
  cfg.data.num_workers, cfg.data.read_threads = 0, 0
  cfg.eval_batch_size = 8  # 12 test images: the second batch is padded and masked
  wd = tmp_path / "run"
  final = train.train_and_evaluate(cfg, str(wd))
  logged = [r for r in read_jsonl(wd / "metrics.jsonl") if "test_accuracy" in r][-1]
  assert logged["step"] == final["step"] == 2 and logged["test_count"] == 12
  # The checkpoint carries the Grain iterator's state beside the train state.
  assert (wd / "checkpoints" / "2" / checkpoint.DATA_ITEM).is_dir()

  capsys.readouterr()
  evaluate.main(["--workdir", str(wd)])
  scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert scored["step"] == 2 and scored["test_count"] == 12
  assert scored["test_accuracy"] == logged["test_accuracy"]
  np.testing.assert_allclose(scored["test_loss"], logged["test_loss"], rtol=1e-6)

  # restore_run (the analyses' entry): the run's loader; its test arrays are the batches
  # just scored (padding dropped), the center crops.
  r = evaluate.restore_run(wd)
  assert r.ds.loader == "grain" and int(r.state.step) == 2
  assert r.ds.test_images.shape == (12, 64, 64, 3) and r.ds.test_images.dtype == np.uint8
  scored_batches = list(r.ds.eval_batches(cfg.eval_batch_size, r.batch_sharding))
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(x) for x, _, _ in scored_batches])[:12], r.ds.test_images)
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(y) for _, y, _ in scored_batches])[:12], r.ds.test_labels)

  # Test-time augmentation: by default the run's own eval_tta (what its logs used); --tta
  # overrides it, and --flip-tta is --tta flip.
  flip = evaluate.evaluate_checkpoint(wd, tta="flip")
  assert flip["tta"] == "flip" and flip["flip_tta"]
  assert flip["test_loss"] != scored["test_loss"]  # another view of the same images
  assert evaluate.evaluate_checkpoint(wd, flip_tta=True)["test_loss"] == flip["test_loss"]
  cfg_file = wd / "config.json"
  cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "eval_tta": "flip"}))
  assert evaluate.evaluate_checkpoint(wd)["test_loss"] == flip["test_loss"]
  with pytest.raises(ValueError, match="tta must be one of"):
    evaluate.evaluate_checkpoint(wd, tta="mirror")
