"""Shared test fixtures: where the real data is, and a tiny training config."""

from __future__ import annotations

import os
import pathlib

import pytest

from cnn_jax import xla_cpu
from cnn_jax.config import base_config

# The suite runs with the XLA CPU flags of the command-line entry points (2.5x faster
# convolutions on an AVX2 CPU); set here, before any test's first JAX computation.
xla_cpu.apply_cpu_defaults()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("CNN_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10_DIR = SHARED_DATA / "cifar10-jpeg"
TINY_IMAGENET_DIR = SHARED_DATA / "tiny-imagenet-10"


@pytest.fixture(scope="session")
def cifar10_dir() -> pathlib.Path:
  """The real CIFAR-10 JPEG folder (../shared/data/cifar10-jpeg). Tests need it: fail, not skip."""
  assert CIFAR10_DIR.is_dir(), f"real CIFAR-10 images expected at {CIFAR10_DIR}"
  return CIFAR10_DIR


@pytest.fixture(scope="session")
def cache_dir() -> pathlib.Path:
  """The user-level decoded-image cache ($CNN_JAX_CACHE or ~/.cache/cnn_jax): the 60,000
  CIFAR-10 JPEGs are decoded once per machine, not once per test session."""
  from cnn_jax.data.image_folder import default_cache_dir
  return default_cache_dir()


def tiny_config(model_name: str, data_dir, cache_dir, *, num_train: int = 256,
                num_test: int = 100, batch_size: int = 32, num_epochs: int = 1):
  """A config that trains ``model_name`` for a few steps on a real CIFAR-10 slice."""
  c = base_config()
  c.model.name = model_name
  c.data.dir = str(data_dir)
  c.data.cache_dir = str(cache_dir)
  c.data.num_train = num_train
  c.data.num_test = num_test
  c.batch_size = batch_size
  c.eval_batch_size = 50
  c.num_epochs = num_epochs
  c.optim.warmup_epochs = 0.0
  c.log_every_steps = 2
  c.progress_bar = False
  c.tensorboard = False  # one test turns it on; the TF import costs seconds per process
  return c
