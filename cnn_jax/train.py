"""Train and evaluate a CNN: ``python -m cnn_jax.train --config configs/<x>.py --workdir <dir>``.

The same work is importable for notebooks::

    from cnn_jax.train import train_and_evaluate
    from configs.cifar10_resnet20 import get_config
    final = train_and_evaluate(get_config(), "/tmp/run")  # dict of final metrics

The workdir receives ``config.json``, ``metrics.jsonl`` (train records every
``log_every_steps``, one eval record per evaluation), the same scalars as TensorBoard
events in ``tensorboard/`` (``config.tensorboard``) and ``checkpoints/``. Running the
same command on the same workdir resumes from the newest checkpoint: step, parameters,
BatchNorm statistics, optimizer state, and data position (epoch ``step // steps_per_epoch``
with that epoch's permutation, which is a function of ``seed`` and the epoch only). A
config that differs from the workdir's ``config.json`` in a key that changes the trained
weights is refused (:func:`cnn_jax.config.check_resume`).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cnn_jax import checkpoint, data, models, optim, parallel, provenance, steps, xla_cpu
from cnn_jax.config import check_resume, from_json, validate
from cnn_jax.data import augment
from cnn_jax.metric_writer import JsonlWriter, MultiWriter, TensorBoardWriter


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch ``epoch``: a fresh permutation of ``range(n)`` per epoch,
  a pure function of ``(seed, epoch)`` so that a resumed run continues the same order."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def evaluate(eval_step, state, images: np.ndarray, labels: np.ndarray, batch_size: int,
             sharding) -> dict:
  """Test loss and top-1 accuracy over *every* example exactly once.

  The last batch is padded to ``batch_size`` with masked rows; per-batch sums are added on
  device and divided once at the end. Returns ``{'test_loss', 'test_accuracy', 'test_count'}``.
  """
  n = len(labels)
  rows = parallel.process_rows(batch_size)
  totals = None
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)[rows]
    batch = parallel.global_batch(sharding, images[idx], labels[idx], mask[rows])
    sums = eval_step(state, *batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.to_host(totals)
  count = float(totals["count"])
  return {"test_loss": float(totals["loss_sum"]) / count,
          "test_accuracy": float(totals["correct"]) / count, "test_count": int(count)}


class RunSetup(NamedTuple):
  """What :func:`build_run` returns."""
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: Callable[[int], float]  # step -> learning rate
  steps_per_epoch: int
  init: Callable[[jax.Array], steps.TrainState]  # PRNG key -> fresh train state
  abstract_state: steps.TrainState  # its jax.ShapeDtypeStruct tree, carrying the sharding
  # num_classes, mean, std, dtype: what steps.make_train_step and make_eval_step share
  step_kwargs: dict


def build_run(config: ml_collections.ConfigDict, ds: data.Dataset, sharding) -> RunSetup:
  """The model, optimizer, schedule and train-state shape of ``config`` on ``ds``.

  Training and :mod:`cnn_jax.evaluate` both build them here, so that a checkpoint is
  restored into the very tree it was saved from. ``ds`` gives the input shape ``(H, W, C)``,
  the class count and the number of training examples; ``sharding`` is the state's
  (replicated).

  Raises:
    KeyError: unknown model name. TypeError: a ``model.kwargs`` key the model lacks.
    ValueError: ``batch_size`` exceeds the number of training examples.
  """
  n_train = len(ds.train_labels)
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config key batch_size = {config.batch_size} exceeds the "
                     f"{n_train} training examples")
  model = models.create(config.model.name, num_classes=ds.num_classes,
                        dtype=jnp.dtype(config.dtype), **config.model.kwargs.to_dict())
  tx, schedule = optim.create_optimizer(config.optim, steps_per_epoch, config.num_epochs)
  init = lambda key: steps.init_state(model, tx, key, ds.train_images.shape[1:],
                                      ema=config.ema_decay > 0)
  abstract = checkpoint.abstract_like(jax.eval_shape(init, jax.random.key(config.seed)), sharding)
  step_kwargs = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                     dtype=jnp.dtype(config.dtype))
  return RunSetup(model, tx, schedule, steps_per_epoch, init, abstract, step_kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.model.name`` on ``config.data.name``; returns the final metrics.

  Args:
    config: a config built from :func:`cnn_jax.config.base_config` (validated here).
    workdir: output folder (created); resumes from its newest checkpoint if any, when
      ``config`` is the run's (only ``cnn_jax.config.RESUME_MAY_CHANGE`` keys may differ).

  Returns:
    ``{'step', 'epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
    'test_count', 'wall_s'}`` of the final evaluation, plus ``'ema_test_loss'`` and
    ``'ema_test_accuracy'`` (the weight average's) when ``config.ema_decay > 0``.

  Raises:
    KeyError / ValueError: bad config (see :func:`cnn_jax.config.validate`), unknown model
      or dataset name, a batch size that does not divide by the device count or exceeds
      the training set, or ``workdir`` holds a checkpoint of a run with another config
      (see :func:`cnn_jax.config.check_resume`).
    cnn_jax.data.DataError: missing data folder, no images, unreadable image.
  """
  t_start = time.time()
  workdir, prov = _open_workdir(config, workdir)
  ds, mesh = _load_data(config)
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  run = build_run(config, ds, repl)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  state = checkpoint.restore_latest(mngr, run.abstract_state)
  if state is None:
    state = jax.jit(run.init, out_shardings=repl)(jax.random.key(config.seed))
  start_step = int(parallel.to_host(state.step))
  materialize = (config.materialize_conv_inputs == "on"
                 or (config.materialize_conv_inputs == "auto" and jax.default_backend() == "cpu"))
  writer = _start_logs(config, workdir, ds, mesh, run, state, start_step, materialize, prov)
  loop = _Loop(config, ds, run, writer, t_start, batch_sh,
               *_compile_steps(config, run, mesh, repl, batch_sh, materialize))
  try:
    state = loop.train(state, start_step, mngr)
    final = loop.evaluate(state, run.steps_per_epoch * config.num_epochs)
    if mngr.latest_step() != run.steps_per_epoch * config.num_epochs:
      checkpoint.save(mngr, run.steps_per_epoch * config.num_epochs, state)
  finally:
    # Let a save that is under way finish, even when training stopped with an error.
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  final.update(loop.last)
  if jax.process_index() == 0:
    print("final: " + json.dumps(final), flush=True)
  return final


def _open_workdir(config, workdir) -> tuple[pathlib.Path, dict]:
  """Validates ``config``, records the code's provenance, creates ``workdir`` and refuses
  to resume a checkpointed run with a different config."""
  validate(config)
  # Now, not after data loading: git status must describe the code this process started from.
  prov = provenance.run_provenance()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if checkpoint.saved_steps(workdir) and (workdir / "config.json").is_file():
    check_resume(from_json((workdir / "config.json").read_text()), config,
                 str(workdir / "config.json"))
  return workdir, prov


def _load_data(config):
  """The dataset and the data mesh, after the cheap checks (model name, batch sizes)."""
  if config.model.name not in models.list_models():
    models.create(config.model.name)  # raises KeyError naming close names, before any I/O
  ds = data.load(config.data)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  return ds, mesh


def _start_logs(config, workdir, ds, mesh, run, state, start_step, materialize, prov):
  """Opens the metric writers, writes ``config.json``, prints the one-line banner and logs
  the ``start`` record (run facts and provenance). Returns the writer."""
  is_main = jax.process_index() == 0
  extra = [TensorBoardWriter(workdir / "tensorboard")] if config.tensorboard else []
  writer = MultiWriter(JsonlWriter(workdir), *extra)
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  n_params = models.count_params(state.params, None)
  if is_main:
    print(f"cnn_jax: {config.model.name} ({n_params:,} params) on {config.data.name} "
          f"[{ds.source}]: {len(ds.train_labels)} train / {len(ds.test_labels)} test, "
          f"{run.steps_per_epoch} steps/epoch x {config.num_epochs} epochs, "
          f"{mesh.devices.size} device(s) of {jax.devices()[0].platform}, "
          f"{'resuming at step %d' % start_step if start_step else 'from scratch'}", flush=True)
  writer.write({"event": "start", "step": start_step, "model": config.model.name,
                "num_params": n_params, "data_source": ds.source, "devices": mesh.devices.size,
                "platform": jax.devices()[0].platform, "process_count": jax.process_count(),
                "materialize_conv_inputs": materialize, **prov})
  return writer


def _compile_steps(config, run, mesh, repl, batch_sh, materialize):
  """The jitted train step (state donated) and eval steps (the EMA's too, or ``None``)."""
  ghost = config.batchnorm_stats == "per_device"
  random_flip = config.data.flip and config.data.flip_mode == "random"
  train_step = jax.jit(
      steps.make_train_step(run.model, run.tx, seed=config.seed, crop_pad=config.data.crop_pad,
                            pad_mode=config.data.pad_mode, flip=random_flip,
                            label_smoothing=config.label_smoothing,
                            bn_groups=mesh.devices.size if ghost else 1,
                            group_sharding=batch_sh if ghost else None,
                            ema_decay=config.ema_decay,
                            materialize_conv_inputs=materialize, **run.step_kwargs),
      donate_argnums=0, out_shardings=(repl, repl))
  eval_step = jax.jit(steps.make_eval_step(run.model, **run.step_kwargs), out_shardings=repl)
  ema_eval_step = (jax.jit(steps.make_eval_step(run.model, **run.step_kwargs, ema=True),
                           out_shardings=repl) if config.ema_decay else None)
  return train_step, eval_step, ema_eval_step


def train_batches(config, ds: data.Dataset, start_step: int, steps_per_epoch: int, sharding):
  """Yields ``(step, images, labels)`` global batches from ``start_step`` to the end of
  training: epoch ``e``'s order is :func:`epoch_permutation` ``(seed, e)``, each process
  takes its own rows of each batch, and the alternating flip (which depends on the example
  index) is applied here on the host. ``images`` ``(B, H, W, C)`` uint8, ``labels`` ``(B,)``
  int32, both sharded on the batch axis by ``sharding``."""
  n_train = len(ds.train_labels)
  rows = parallel.process_rows(config.batch_size)
  flips0 = (augment.first_epoch_flips(config.seed, n_train)
            if config.data.flip and config.data.flip_mode == "alternating" else None)
  perm_epoch, perm = -1, None
  for step in range(start_step, steps_per_epoch * config.num_epochs):
    epoch, k = divmod(step, steps_per_epoch)
    if epoch != perm_epoch:
      perm_epoch, perm = epoch, epoch_permutation(config.seed, epoch, n_train)
    idx = perm[k * config.batch_size:(k + 1) * config.batch_size][rows]
    host_images = ds.train_images[idx]
    if flips0 is not None:
      host_images = augment.alternating_flip(host_images, flips0[idx], epoch)
    yield (step, *parallel.global_batch(sharding, host_images, ds.train_labels[idx]))


class _Loop:
  """The train loop's periodic work around the jitted steps: train records every
  ``log_every_steps`` (the only host transfer of the loop), an evaluation every
  ``eval_every_epochs``, a checkpoint every ``checkpoint_every_steps`` (0: each epoch)."""

  def __init__(self, config, ds, run, writer, t_start, batch_sh, train_step, eval_step,
               ema_eval_step):
    self.config, self.ds, self.run, self.writer = config, ds, run, writer
    self.t_start, self.batch_sh = t_start, batch_sh
    self.train_step, self.eval_step, self.ema_eval_step = train_step, eval_step, ema_eval_step
    self.last = {}  # the last logged train_loss / train_accuracy

  def evaluate(self, state, step: int) -> dict:
    """Evaluates ``state`` (and its EMA) on the whole test set and logs the record."""
    jax.block_until_ready(state)  # finish queued train steps: they are not evaluation time
    t0 = time.time()
    c, ds = self.config, self.ds
    rec = evaluate(self.eval_step, state, ds.test_images, ds.test_labels, c.eval_batch_size,
                   self.batch_sh)
    if self.ema_eval_step is not None:
      ema = evaluate(self.ema_eval_step, state, ds.test_images, ds.test_labels,
                     c.eval_batch_size, self.batch_sh)
      rec.update(ema_test_loss=ema["test_loss"], ema_test_accuracy=ema["test_accuracy"])
    rec.update(step=step, epoch=step / self.run.steps_per_epoch, eval_s=time.time() - t0,
               wall_s=time.time() - self.t_start)
    self.writer.write(rec)
    return rec

  def _log_train(self, pending, done: int, step_log: int, t_log: float) -> float:
    fetched = parallel.to_host(pending)
    now = time.time()
    self.last = {"train_loss": float(np.mean([m["loss"] for m in fetched])),
                 "train_accuracy": float(np.mean([m["accuracy"] for m in fetched]))}
    ips = (done - step_log) * self.config.batch_size / (now - t_log)
    self.writer.write({"step": done, "epoch": done / self.run.steps_per_epoch, **self.last,
                       "lr": float(self.run.schedule(done - 1)), "images_per_s": ips,
                       "wall_s": now - self.t_start})
    self.pbar.set_postfix(loss=f"{self.last['train_loss']:.3f}",
                          acc=f"{self.last['train_accuracy']:.3f}", img_s=f"{ips:.0f}")
    return now

  def train(self, state, start_step: int, mngr):
    """Runs the train steps from ``start_step`` to the end; returns the final state."""
    c, spe = self.config, self.run.steps_per_epoch
    total_steps = spe * c.num_epochs
    ckpt_every = c.checkpoint_every_steps or spe
    self.pbar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                          dynamic_ncols=True,
                          disable=not (jax.process_index() == 0 and c.progress_bar))
    pending, t_log, step_log = [], time.time(), start_step
    for step, images, labels in train_batches(c, self.ds, start_step, spe, self.batch_sh):
      state, metrics = self.train_step(state, images, labels)
      pending.append(metrics)
      done = step + 1
      self.pbar.update(1)
      if done % c.log_every_steps == 0 or done == total_steps:
        t_log, step_log, pending = self._log_train(pending, done, step_log, t_log), done, []
      if done % spe == 0 and (done // spe) % c.eval_every_epochs == 0 and done != total_steps:
        rec = self.evaluate(state, done)
        self.pbar.write(f"epoch {done // spe}: test_accuracy {rec['test_accuracy']:.4f} "
                        f"test_loss {rec['test_loss']:.4f}" + (
                            f" ema_test_accuracy {rec['ema_test_accuracy']:.4f}"
                            if "ema_test_accuracy" in rec else ""))
        t_log += rec["eval_s"]  # keep evaluation out of the training images/s
      if done % ckpt_every == 0 and done != total_steps:
        checkpoint.save(mngr, done, state)
    self.pbar.close()
    return state


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  parallel.maybe_initialize_distributed()
  if jax.default_backend() == "cpu" and jax.process_index() == 0:
    hint = xla_cpu.allocator_hint()
    if hint:
      print(f"cnn_jax.train: {hint}", file=sys.stderr, flush=True)
  cfg = flags.FLAGS.config
  train_and_evaluate(cfg, flags.FLAGS.workdir)


def _cli():
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from cnn_jax.config import check_overrides  # pylint: disable=g-import-not-at-top

  check_overrides(sys.argv[1:])
  xla_cpu.apply_and_report("cnn_jax.train")  # before the first computation reads XLA_FLAGS
  config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Output folder: config.json, metrics.jsonl, checkpoints.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  _cli()
