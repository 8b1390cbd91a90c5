"""Shared test fixtures: where the real data is, a tiny training config, and a hook into the
trainer's train step."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

from cnn_jax import xla_cpu
from cnn_jax.config import base_config

# The suite runs with the XLA CPU flags of the command-line entry points (2.5x faster
# convolutions on an AVX2 CPU); set here, before any test's first JAX computation.
xla_cpu.apply_cpu_defaults()


def _persistent_compilation_cache() -> None:
  """Shares compiled programs between tests and pytest-xdist workers through JAX's disk
  cache (the same tiny train step is compiled by dozens of tests). Where: the directory
  ``$CNN_JAX_TEST_JIT_CACHE`` (``off`` disables it), default ``<tmp>/cnn_jax_test_jit_cache``.
  In this process only: the subprocesses that tests launch compile for themselves."""
  where = os.environ.get("CNN_JAX_TEST_JIT_CACHE",
                         str(pathlib.Path(tempfile.gettempdir()) / "cnn_jax_test_jit_cache"))
  if where == "off":
    return
  import jax  # pylint: disable=g-import-not-at-top  (after the XLA flags above)
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  # A size limit turns on JAX's file lock, so that two workers never write one entry at once.
  jax.config.update("jax_compilation_cache_max_size", 4 << 30)


_persistent_compilation_cache()

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


def wrap_train_step(monkeypatch, around):
  """Routes every call of the train step that :func:`cnn_jax.train.train_and_evaluate`
  builds through ``around(n, step, state, x, y) -> (state, metrics)``: ``n`` counts the
  calls from 1 (anew for each run), ``step`` is the real step, jitted with the state donated
  as the trainer does. ``around`` may record the state or batch, alter the state it returns,
  or raise (``KeyboardInterrupt`` simulates a kill). The wrapper itself runs eagerly: the
  trainer's ``jax.jit`` of it is bypassed. ``monkeypatch.undo()`` restores the trainer."""
  import jax  # pylint: disable=g-import-not-at-top  (after the XLA flags above)
  from cnn_jax import steps  # pylint: disable=g-import-not-at-top
  real, real_jit = steps.make_train_step, jax.jit

  def make(*args, **kwargs):
    step = real_jit(real(*args, **kwargs), donate_argnums=0)
    calls = [0]

    def wrapped_train_step(state, x, y):
      calls[0] += 1
      return around(calls[0], step, state, x, y)
    return wrapped_train_step

  monkeypatch.setattr(steps, "make_train_step", make)
  monkeypatch.setattr(jax, "jit", lambda f, **kw: f if f.__name__ == "wrapped_train_step"
                      else real_jit(f, **kw))


def kill_after(n_calls: int):
  """An ``around`` for :func:`wrap_train_step` that runs ``n_calls`` steps, then raises
  ``KeyboardInterrupt`` (a simulated kill, no checkpoint of the unfinished step)."""
  def around(n, step, state, x, y):
    if n > n_calls:
      raise KeyboardInterrupt("simulated kill")
    return step(state, x, y)
  return around
