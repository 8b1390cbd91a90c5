"""Train and evaluate a CNN: ``python -m cnn_jax.train --config configs/<x>.py --workdir <dir>``.

The same work is importable for notebooks::

    from cnn_jax.train import train_and_evaluate
    from configs.cifar10_resnet20 import get_config
    final = train_and_evaluate(get_config(), "/tmp/run")  # dict of final metrics

The workdir receives ``config.json``, ``metrics.jsonl`` (train records every
``log_every_steps``, one eval record per evaluation), the same scalars as TensorBoard
events in ``tensorboard/`` (``config.tensorboard``) and ``checkpoints/``. Running the
same command on the same workdir resumes from the newest checkpoint: step, parameters,
BatchNorm statistics, optimizer state, the weight EMA or lookahead state (config keys
``ema_decay``, section ``lookahead``), and data position (epoch ``step // steps_per_epoch``
with that epoch's permutation, which is a function of ``seed`` and the epoch only; with the
Grain loader also the iterator state saved in the checkpoint). A config that differs from
the workdir's ``config.json`` in a key that changes the trained weights is refused
(:func:`cnn_jax.config.check_resume`).

Faults: the first SIGTERM or SIGINT stops training after the current step with a checkpoint
of that step (:class:`Preempted`; the command line exits with 128 + the signal number); a
NaN or Inf train loss stops it without saving the bad state (:class:`NonFiniteError`).
A SIGKILL (or power loss) at any moment loses only the steps after the newest checkpoint:
orbax renames a save's directory only once it is complete, a checkpoint damaged later is
found by its checksums and the previous one resumed, and the records the rerun logs again
are moved to ``metrics.discarded.jsonl`` so that each step keeps one record.
``config.restart`` starts over in a used workdir (the old run is moved aside, never
deleted), ``config.init_from`` starts from another run's weights, with config section
``transfer`` choosing fine-tuning, a linear probe or progressive unfreezing and the head to
re-initialise (:mod:`cnn_jax.transfer`).

The loop only consumes batches: the data layer (:func:`cnn_jax.data.loader.open_data`, the
in-memory or the Grain loader of config key ``data.loader``) hands it an iterator of global
batches from the start step, and the loop is "next batch, step, periodic actions"
(:class:`Every`: progress, train records, evaluation, checkpoints, as the Flax examples'
``clu.periodic_actions``).
"""

from __future__ import annotations

import functools
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cnn_jax import (checkpoint, models, optim, parallel, provenance, speedrun, steps,
                     transfer, xla_cpu)
from cnn_jax.config import (check_resume, from_json, resolve_conv_backend, resolve_dtype,
                            validate)
# augment: the host-side alternating flip the loaders call (tests spy on train.augment).
from cnn_jax.data import augment, loader  # pylint: disable=unused-import
from cnn_jax.metric_writer import (DISCARDED, JsonlWriter, MultiWriter, TensorBoardWriter,
                                   rewind)
from cnn_jax.models import airbench, geometry
from cnn_jax.ops import cpu_conv, onednn_library


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a complete checkpoint of the step it
  reached; running the same command again resumes from it.

  Attributes:
    step: the step of that checkpoint (train steps done).
    path: its directory, ``<workdir>/checkpoints/<step>``.
    signum: the signal received.
    exit_code: ``128 + signum`` (the shell's convention: 143 for SIGTERM, 130 for SIGINT),
      the command line's exit status.
  """

  def __init__(self, message: str, step: int, path: pathlib.Path, signum: int):
    super().__init__(message)
    self.step, self.path, self.signum = step, path, signum
    self.exit_code = 128 + signum


class NonFiniteError(FloatingPointError):
  """Training stopped on a NaN or Inf train loss, or on non-finite parameters about to be
  checkpointed; nothing of the bad state was saved.

  Attributes:
    step: the step whose train loss was first non-finite (the record numbering: the step
      that took the state from ``step - 1`` to ``step``), or the step of the parameters.
    leaf: path of the first non-finite parameter or BatchNorm statistic when training
      stopped (``'params/Dense_0/kernel'``), or ``None`` if they were all finite.
  """

  def __init__(self, message: str, step: int, leaf: str | None):
    super().__init__(message)
    self.step, self.leaf = step, leaf


class _StopOnSignal:
  """Context manager: while active, the first SIGTERM or SIGINT is only recorded in
  ``signum`` (the train loop stops at the end of the current step); a second one restores
  the previous handlers and is delivered to them (Ctrl-C twice aborts at once).

  Handlers are installed only in the main thread (Python allows no other) of a
  single-process run (processes of a multi-process run would stop at different steps), and
  not over a signal that is ignored (``SIG_IGN``, e.g. SIGINT of a background job) or whose
  handler is not Python's. The previous handlers are restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      for s in self.SIGNALS:
        if signal.getsignal(s) not in (signal.SIG_IGN, None):
          self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum  # no printing here: the main thread may be inside a print
      return
    self._restore()
    signal.raise_signal(signum)

  def _restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of ``tree`` is finite (a bool scalar on device)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def first_nonfinite_leaf(trees: dict) -> str | None:
  """Path (``'params/Dense_0/kernel'``) of the first leaf holding a NaN or Inf in
  ``trees`` (``{name: tree}``, searched in that order, each in flattening order), or
  ``None``. Reads the leaves to the host one by one (for after a stop, not for the loop)."""
  for name, tree in trees.items():
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      if not np.all(np.isfinite(parallel.to_host(x))):
        return checkpoint.key_path_str((name, *path))
  return None


class Every:
  """A periodic action of the train loop: ``action(step, state)`` calls ``fn(step, state)``
  when ``step % every == 0`` (``every`` in steps, ``0`` = never) or ``step in also``, unless
  ``step in skip``; returns whether it did. The pattern of ``clu.periodic_actions`` (Flax
  examples), without its TensorFlow import and without its time-based triggers."""

  def __init__(self, every: int, fn: Callable, *, also=(), skip=()):
    self.every, self.fn, self.also, self.skip = every, fn, frozenset(also), frozenset(skip)

  def __call__(self, step: int, state) -> bool:
    due = (self.every and step % self.every == 0) or step in self.also
    if not due or step in self.skip:
      return False
    self.fn(step, state)
    return True


def evaluate_batches(eval_step, state, batches) -> dict:
  """Test loss and top-1 accuracy over ``batches``, an iterable of global ``(images (B, H,
  W, C) uint8, labels (B,) int32, mask (B,) float32)`` covering every example once (padding
  rows masked 0). Per-batch sums are added on device and divided once at the end. Returns
  ``{'test_loss', 'test_accuracy', 'test_count'}``."""
  totals = None
  for batch in batches:
    sums = eval_step(state, *batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.to_host(totals)
  count = float(totals["count"])
  return {"test_loss": float(totals["loss_sum"]) / count,
          "test_accuracy": float(totals["correct"]) / count, "test_count": int(count)}


def evaluate(eval_step, state, images: np.ndarray, labels: np.ndarray, batch_size: int,
             sharding) -> dict:
  """Test loss and top-1 accuracy over *every* example of in-memory arrays exactly once
  (``images`` ``(N, H, W, C)`` uint8, ``labels`` ``(N,)`` int32): the last batch is padded
  to ``batch_size`` with masked rows (:func:`cnn_jax.data.loader.array_eval_batches`).
  Returns ``{'test_loss', 'test_accuracy', 'test_count'}``."""
  return evaluate_batches(eval_step, state,
                          loader.array_eval_batches(images, labels, batch_size, sharding))


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
  # What a run with init_from freezes and re-initialises (config section transfer), else None
  transfer_plan: transfer.Plan | None = None
  # (weights, state, step) -> (weights, state) after each step (config section lookahead;
  # steps.make_train_step's lookahead), else None
  lookahead: Callable | None = None


def build_run(config: ml_collections.ConfigDict, ds, sharding) -> RunSetup:
  """The model, optimizer, schedule and train-state shape of ``config`` on ``ds``.

  Training and :mod:`cnn_jax.evaluate` both build them here, so that a checkpoint is
  restored into the very tree it was saved from. ``ds`` (a :class:`cnn_jax.data.Dataset`
  or what :func:`cnn_jax.data.loader.open_data` returns) gives the input shape
  ``(H, W, C)``, the class count, the number of training examples and the mean/std;
  ``sharding`` is the state's (replicated). With ``config.init_from`` the optimizer freezes
  what config section ``transfer`` says (:func:`cnn_jax.transfer.wrap_optimizer`). With
  ``lookahead.every_n_steps > 0`` the state is a :class:`cnn_jax.steps.LookaheadTrainState`
  and ``RunSetup.lookahead`` the function the train step applies
  (:func:`cnn_jax.speedrun.lookahead_step` with section ``lookahead``'s values).

  Raises:
    KeyError: unknown model name. TypeError: a ``model.kwargs`` key the model lacks.
    ValueError: ``batch_size`` exceeds the number of training examples; a
      ``transfer.head`` that names no parameter, or no head for a linear_probe /
      progressive run (:func:`cnn_jax.transfer.make_plan`); ``model.whitening_images > 0``
      for a model without a ``whiten/kernel`` parameter; ``optim.name = 'airbench_sgd'``
      with ``optim.bias_scaler != 1`` for a model without BatchNorm biases under a module
      named ``norm*`` (the scale would act on nothing); a ``'triangle'`` schedule of fewer
      than 2 steps.
    cnn_jax.models.geometry.GeometryError: a layer whose kernel, stride, dilation or
      channels do not fit the dataset's image size (names the layer and the values).
  """
  config = resolve_dtype(config)  # 'auto': bfloat16 on TPU, float32 elsewhere
  n_train = ds.num_train
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config key batch_size = {config.batch_size} exceeds the "
                     f"{n_train} training examples")
  model = models.create(config.model.name, num_classes=ds.num_classes,
                        dtype=jnp.dtype(config.dtype), **config.model.kwargs.to_dict())
  tx, schedule = optim.create_optimizer(config.optim, steps_per_epoch, config.num_epochs)
  plan = None
  with geometry.checked():  # the model's first trace: a layer that does not fit fails here
    if config.init_from:  # also when resuming: the optimizer state's tree depends on the mode
      plan = transfer.make_plan(config.transfer, model, ds.input_shape,
                                ds.num_classes, steps_per_epoch)
      tx = transfer.wrap_optimizer(tx, plan)
    la = config.lookahead
    lookahead = None
    if la.every_n_steps:
      lookahead = functools.partial(
          speedrun.lookahead_step, steps_per_epoch=steps_per_epoch,
          total_steps=steps_per_epoch * config.num_epochs, start_epochs=la.start_epochs,
          every_n_steps=la.every_n_steps, decay_base=la.decay_base, decay_pow=la.decay_pow)
    init = lambda key: steps.init_state(
        model, tx, key, ds.input_shape, ema=config.ema_decay > 0,
        lookahead_init=speedrun.lookahead_init if lookahead is not None else None)
    shapes = jax.eval_shape(init, jax.random.key(config.seed))
  _check_recipe_fits(config, shapes.params)
  abstract = checkpoint.abstract_like(shapes, sharding)
  step_kwargs = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                     dtype=jnp.dtype(config.dtype))
  return RunSetup(model, tx, schedule, steps_per_epoch, init, abstract, step_kwargs, plan,
                  lookahead)


def _check_recipe_fits(config, params) -> None:
  """Refuses airbench-recipe keys that would act on nothing in this model's ``params``
  (shapes): see :func:`build_run`'s ``ValueError``."""
  if config.model.whitening_images and "kernel" not in params.get("whiten", {}):
    raise ValueError(f"config key model.whitening_images = {config.model.whitening_images} "
                     f"initialises the kernel of a first conv named 'whiten' (airbench94), "
                     f"and model {config.model.name!r} has no 'whiten/kernel' parameter; set "
                     f"it to 0")
  if config.optim.name == "airbench_sgd" and config.optim.bias_scaler != 1:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not any(speedrun.is_norm_bias(path) for path, _ in flat):
      raise ValueError(f"config key optim.bias_scaler = {config.optim.bias_scaler} scales the "
                       f"gradient of BatchNorm biases under modules named norm*, and model "
                       f"{config.model.name!r} has none; set it to 1.0")


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

  A fresh run (no checkpoint in ``workdir``, or ``config.restart``) starts from random
  weights, or from those of ``config.init_from``'s newest checkpoint.

  Raises:
    KeyError / ValueError: bad config (see :func:`cnn_jax.config.validate`), unknown model
      or dataset name, a batch size that does not divide by the device count or exceeds
      the training set, or ``workdir`` holds a checkpoint of a run with another config
      (see :func:`cnn_jax.config.check_resume`); a checkpoint (this run's, or
      ``init_from``'s) that does not fit the model (names the first mismatched array path
      and both shapes).
    FileNotFoundError: ``config.init_from`` holds no checkpoint.
    cnn_jax.checkpoint.DamagedCheckpointError: every checkpoint in ``workdir`` is damaged
      (a damaged newest one alone is set aside and the previous one resumed, with a line).
    cnn_jax.models.geometry.GeometryError: a layer's window or channels do not fit the
      input (names the layer and the output-size formula's values).
    cnn_jax.data.DataError: missing data folder, no images, unreadable image.
    Preempted: SIGTERM or SIGINT during training; a checkpoint of the step reached is saved.
    NonFiniteError: a NaN or Inf train loss (or parameters before a save); no checkpoint
      of the bad state is written.
    RuntimeError: ``conv_backend = 'onednn'`` where oneDNN's convolution cannot be built or
      loaded (the message says what is missing); ``'onednn'`` on several devices is a
      ValueError (:func:`cnn_jax.ops.cpu_conv.conv_backend`).
  """
  config = resolve_dtype(config)  # 'auto': bfloat16 on TPU, float32 elsewhere
  asked = config.get("conv_backend")
  config = resolve_conv_backend(config)  # 'auto': oneDNN on one CPU device if installed
  if (asked == "auto" and config.conv_backend == "xla" and jax.default_backend() == "cpu"
      and jax.process_index() == 0):
    why = onednn_library.unavailable_reason()  # None: several devices, not a missing piece
    if why:
      print(f"cnn_jax.train: XLA's convolutions, not oneDNN's: {why}", file=sys.stderr,
            flush=True)
  # Every conv the steps trace from here on uses this backend (a jitted step keeps the
  # backend it was traced with).
  with cpu_conv.conv_backend(config.conv_backend):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  t_start = time.time()
  workdir, prov, moved = _open_workdir(config, workdir)
  ds, mesh = _load_data(config)
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  run = build_run(config, ds, repl)
  # The Grain loader's iterator state is checkpointed beside the train state.
  mngr = checkpoint.manager(workdir, config.keep_checkpoints,
                            data_state=ds.loader == "grain")
  data_state = checkpoint.DataState()
  try:
    state, origin = _initial_state(config, ds, run, mngr, repl, moved, data_state)
  except BaseException:  # e.g. every checkpoint damaged: release orbax's threads first
    mngr.close()
    raise
  start_step = int(parallel.to_host(state.step))
  materialize = xla_cpu.resolve_materialize(config.materialize_conv_inputs, config.conv_backend)
  writer = _start_logs(config, workdir, ds, mesh, run, state, start_step, materialize,
                       {**prov, **origin})
  loop = _Loop(config, ds, run, writer, t_start, batch_sh,
               *_compile_steps(config, run, mesh, repl, batch_sh, materialize))
  total_steps = run.steps_per_epoch * config.num_epochs
  batches = ds.train_batches(batch_size=config.batch_size,
                             steps_per_epoch=run.steps_per_epoch, num_epochs=config.num_epochs,
                             start_step=start_step, sharding=batch_sh, saved=data_state.value)
  try:
    with _StopOnSignal() as stop:
      state = loop.train(state, start_step, batches, mngr, stop)
    # Saved before the final evaluation, which then overlaps the asynchronous write: a
    # run killed during that evaluation keeps its last epoch.
    if mngr.latest_step() != total_steps:
      loop.save(mngr, total_steps, state, batches.state())
    final = loop.evaluate(state, total_steps)
  finally:
    batches.close()  # stops Grain's worker processes
    # Let a save that is under way finish, even when training stopped with an error.
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  final.update(loop.last)
  if jax.process_index() == 0:
    print("final: " + json.dumps(final), flush=True)
  return final


def _initial_state(config, ds, run, mngr, repl, moved, data_state=None):
  """The state to train from: the newest checkpoint, else a fresh initialisation (with
  ``config.init_from``'s parameters and BatchNorm statistics when set, else with the
  whitening kernel of ``model.whitening_images`` images of ``ds`` when set). Also returns
  the start-record fields of a restart / init_from / whitening (``{}`` for a plain run). The
  checkpoint's data iterator state, if any, goes to ``data_state``
  (:class:`checkpoint.DataState`)."""
  state = checkpoint.restore_latest(mngr, run.abstract_state, data_state=data_state)
  origin = {} if moved is None else {"previous_run": str(moved)}
  if state is None:
    state = jax.jit(run.init, out_shardings=repl)(jax.random.key(config.seed))
    if config.init_from:  # its checkpoint holds the whitening kernel it trained with
      state, source_step, source_dir = _init_from(config.init_from, run, state, repl)
      origin.update(init_from=str(source_dir), init_from_step=source_step)
    elif config.model.whitening_images:
      state, count = _init_whitening(config, ds, run, state, repl)
      origin.update(whitening_images=count)
  return state, origin


# Stream of np.random.default_rng([seed, WHITENING_STREAM]) that picks the whitening images:
# apart from the epoch orders (default_rng([seed, epoch]), epoch < 2**31).
WHITENING_STREAM = 2**32 - 1


def whitening_indices(seed: int, num_train: int, count: int) -> np.ndarray:
  """The training examples whose patches give the whitening kernel: ``min(count,
  num_train)`` distinct indices in ``[0, num_train)``, int64, sorted, a pure function of
  ``seed`` (a random subset; the reference takes the first 5000 of its training set,
  airbench94.py ``train_images = loader.normalize(loader.images[:5000])``)."""
  rng = np.random.default_rng([seed, WHITENING_STREAM])
  return np.sort(rng.permutation(num_train)[:min(count, num_train)])


def _init_whitening(config, ds, run, state, repl):
  """``state`` (fresh, step 0) with ``params['whiten']['kernel']`` computed from
  :func:`whitening_indices` training images, normalised as the train step does
  (:func:`cnn_jax.models.airbench.init_whitening`, eps ``model.whitening_eps``), through
  :func:`_with_weights`. Returns ``(state, images used)``.

  Raises:
    ValueError: the data has no in-memory training split (``data.loader = 'grain'``).
  """
  images = getattr(ds, "train_images", None)
  if images is None:
    raise ValueError(f"config key model.whitening_images = {config.model.whitening_images} "
                     f"reads training images from memory, and data.loader = {ds.loader!r} "
                     f"streams them; use data.loader = 'memory' (or 'auto' for a dataset "
                     f"that fits)")
  idx = whitening_indices(config.seed, ds.num_train, config.model.whitening_images)
  x = (images[idx].astype(np.float32) - np.asarray(ds.mean, np.float32)) / np.asarray(
      ds.std, np.float32)
  params = airbench.init_whitening(parallel.to_host(state.params), x,
                                   eps=config.model.whitening_eps)
  state = _with_weights(run, state, {"params": params, "batch_stats": state.batch_stats},
                        repl)
  if jax.process_index() == 0:
    print(f"cnn_jax: whitening kernel from the patches of {len(idx)} training images "
          f"(model.whitening_images, eps {config.model.whitening_eps})", flush=True)
  return state, len(idx)


def _with_weights(run: RunSetup, state, variables, repl):
  """A fresh (step 0) ``state`` with ``variables`` (``{'params', 'batch_stats'}``) as its
  weights; what depends on them starts anew: the optimizer state, an EMA (at them) and a
  lookahead state (inactive)."""
  def place(state, variables):
    new = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                        opt_state=run.tx.init(variables["params"]))
    if isinstance(new, steps.EmaTrainState):  # copies: the step donates the state
      new = new.replace(ema=jax.tree.map(jnp.copy, variables))
    if isinstance(new, steps.LookaheadTrainState):
      new = new.replace(lookahead=speedrun.lookahead_init(variables))
    return new

  return jax.jit(place, out_shardings=repl)(state, variables)


def _open_workdir(config, workdir) -> tuple[pathlib.Path, dict, pathlib.Path | None]:
  """Validates ``config``, records the code's provenance, creates ``workdir``, checks
  ``config.init_from`` (before anything is moved), moves a previous run aside when
  ``config.restart`` and otherwise refuses to resume a checkpointed run with a different
  config. Returns ``(workdir, provenance, where the previous run went or None)``."""
  validate(config)
  # Now, not after data loading: git status must describe the code this process started from.
  prov = provenance.run_provenance()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  resuming = bool(checkpoint.saved_steps(workdir)) and not config.restart
  if config.init_from and not resuming:
    _check_init_from(config.init_from, workdir)
  moved = None
  if config.restart:
    moved = move_aside(workdir) if jax.process_index() == 0 else None
    if jax.process_count() > 1:  # no process may open checkpoints/ before it has moved
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("cnn_jax.train restart")
  elif resuming and (workdir / "config.json").is_file():
    check_resume(from_json((workdir / "config.json").read_text()), config,
                 str(workdir / "config.json"))
  return workdir, prov, moved


# What a run writes to its workdir, and what config key restart moves aside.
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "tensorboard",
             checkpoint.DAMAGED_DIR, DISCARDED)


def move_aside(workdir: pathlib.Path) -> pathlib.Path | None:
  """Moves the :data:`RUN_FILES` present in ``workdir`` into a new
  ``<workdir>/previous-<YYYYmmdd-HHMMSS>/`` (local time; ``-2``, ``-3``... appended if that
  exists) and returns it, or ``None`` when there is nothing to move. Nothing is deleted;
  other files (notes, READMEs) stay."""
  names = [n for n in RUN_FILES if (workdir / n).exists()]
  if not names:
    return None
  base = workdir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
  dest, k = base, 1
  while dest.exists():
    k += 1
    dest = base.with_name(f"{base.name}-{k}")
  dest.mkdir()
  for n in names:
    (workdir / n).rename(dest / n)
  print(f"cnn_jax: restart = True: moved {', '.join(names)} of the previous run to {dest}",
        flush=True)
  return dest


def _check_init_from(source: str, workdir: pathlib.Path) -> None:
  """Refuses an ``init_from`` that holds no checkpoint or is this run's own workdir."""
  src = pathlib.Path(source)
  if src.absolute().resolve() == workdir.absolute().resolve():
    raise ValueError(f"config key init_from = {source!r} is this run's own workdir; to "
                     f"continue the run, resume it (init_from = '', restart = False); to "
                     f"start over from its weights, move it elsewhere first and name that")
  if not checkpoint.saved_steps(src):
    raise FileNotFoundError(f"config key init_from = {source!r}: "
                            f"{src.absolute() / 'checkpoints'} holds no complete checkpoint")


def _init_from(source: str, run: RunSetup, state, repl):
  """``state`` (fresh, step 0) with the parameters and BatchNorm statistics of the newest
  checkpoint in workdir ``source``; the optimizer state is initialised for them and an EMA
  starts at them (:func:`_with_weights`). Returns ``(state, source step, source checkpoint
  directory)``.

  The head that config section ``transfer`` re-initialises
  (:func:`cnn_jax.transfer.reinit_leaves`) keeps its fresh values; one line names its
  paths with their shapes in the checkpoint and in the model.

  Raises:
    ValueError: outside that head, the checkpoint does not fit the model (first mismatched
      path, both shapes).
  """
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  reinit, found = [], checkpoint.saved_steps(source)
  if run.transfer_plan is not None and found:  # (none found: restore_variables raises)
    try:
      saved = checkpoint.saved_shapes(pathlib.Path(source).absolute() / "checkpoints"
                                      / str(found[-1]))
    except Exception:  # pylint: disable=broad-except
      saved = {}  # unreadable metadata: restore_variables refuses the checkpoint by name
    reinit = transfer.reinit_leaves(run.transfer_plan, saved, fresh)
  variables, step, step_dir = checkpoint.restore_variables(
      source, fresh, skip=[path for path, _, _ in reinit])

  state = _with_weights(run, state, variables, repl)
  if jax.process_index() == 0:
    print(f"cnn_jax: init_from: parameters and BatchNorm statistics of {step_dir} "
          f"(step {step})", flush=True)
    if reinit:
      why = ("named by config key transfer.head" if run.transfer_plan.head_explicit else
             "the classifier, whose class count changed")
      shapes = ", ".join(f"{path} {'absent' if old is None else old} in the checkpoint -> "
                         f"{new}" for path, old, new in reinit)
      print(f"cnn_jax: init_from: re-initialised, not restored ({why}): {shapes}", flush=True)
  return state, step, step_dir


def _load_data(config):
  """The data (:func:`cnn_jax.data.loader.open_data`: in memory or streamed by Grain) and
  the data mesh, after the cheap checks (model name, batch sizes)."""
  if config.model.name not in models.list_models():
    models.create(config.model.name)  # raises KeyError naming close names, before any I/O
  ds = loader.open_data(config.data, config.seed)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  return ds, mesh


def _start_logs(config, workdir, ds, mesh, run, state, start_step, materialize, prov):
  """Opens the metric writers, writes ``config.json``, moves the records of steps this run
  logs again aside (:func:`cnn_jax.metric_writer.rewind`), prints the one-line banner and
  logs the ``start`` record (run facts, ``discarded_records``, the data's ``data_report``,
  and ``prov``: provenance, plus ``previous_run``, ``init_from`` and ``init_from_step`` when
  those options acted). Returns the writer."""
  is_main = jax.process_index() == 0
  # A run killed after its newest checkpoint logged steps it now trains again: their records
  # move to metrics.discarded.jsonl (a resume at the last step redoes the final evaluation),
  # and the TensorBoard events, a copy of the records, are rebuilt from what stays.
  total_steps = run.steps_per_epoch * config.num_epochs
  discarded = rewind(workdir, start_step, redo_eval=start_step == total_steps) if is_main else 0
  tb_dir = workdir / "tensorboard"
  rebuild = workdir / "metrics.jsonl" if discarded and tb_dir.is_dir() else None
  extra = [TensorBoardWriter(tb_dir, rebuild_from=rebuild)] if config.tensorboard else []
  writer = MultiWriter(JsonlWriter(workdir), *extra)
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  if discarded:
    print(f"cnn_jax: moved {discarded} metrics records past step {start_step} (logged before "
          f"the run stopped; logged again now) to {workdir / DISCARDED}",
          flush=True)
  n_params = models.count_params(state.params, None)
  if is_main:
    print(f"cnn_jax: {config.model.name} ({n_params:,} params) on {config.data.name} "
          f"[{ds.source}, {ds.loader} loader]: {ds.num_train} train / {ds.num_test} test, "
          f"{run.steps_per_epoch} steps/epoch x {config.num_epochs} epochs, "
          f"{mesh.devices.size} device(s) of {jax.devices()[0].platform} "
          f"({config.conv_backend} convolutions), "
          f"{'resuming at step %d' % start_step if start_step else 'from scratch'}"
          f"{' (weights of %s)' % prov['init_from'] if 'init_from' in prov else ''}", flush=True)
  writer.write({"event": "start", "step": start_step, "model": config.model.name,
                "num_params": n_params, "data_source": ds.source, "data_loader": ds.loader,
                "devices": mesh.devices.size,
                "platform": jax.devices()[0].platform, "process_count": jax.process_count(),
                "materialize_conv_inputs": materialize, "conv_backend": config.conv_backend,
                "discarded_records": discarded,
                "eval_tta": config.eval_tta,
                "data_report": ds.report, **prov})
  return writer


def _compile_steps(config, run, mesh, repl, batch_sh, materialize):
  """The jitted train step (state donated; with the lookahead of ``run.lookahead``) and eval
  steps (the EMA's too, or ``None``), both with the test-time augmentation of config key
  ``eval_tta``. A transfer run's step freezes what its plan says; one line says what trains
  when."""
  ghost = config.batchnorm_stats == "per_device"
  # Inception crops and flips happen on the host (cnn_jax/data/imagenet_augment.py).
  inception = config.data.augment == "inception"
  random_flip = config.data.flip and config.data.flip_mode == "random" and not inception
  plan = run.transfer_plan
  if plan is not None and jax.process_index() == 0:
    print("cnn_jax: " + plan.describe(run.steps_per_epoch,
                                      run.steps_per_epoch * config.num_epochs), flush=True)
  train_step = jax.jit(
      steps.make_train_step(run.model, run.tx, seed=config.seed,
                            crop_pad=0 if inception else config.data.crop_pad,
                            pad_mode=config.data.pad_mode, flip=random_flip,
                            label_smoothing=config.label_smoothing,
                            bn_groups=mesh.devices.size if ghost else 1,
                            group_sharding=batch_sh if ghost else None,
                            ema_decay=config.ema_decay,
                            materialize_conv_inputs=materialize, lookahead=run.lookahead,
                            **run.step_kwargs,
                            **(plan.step_kwargs() if plan is not None else {})),
      donate_argnums=0, out_shardings=(repl, repl))
  tta_level = steps.TTA_LEVELS[config.eval_tta]
  eval_step = jax.jit(steps.make_eval_step(run.model, **run.step_kwargs, tta_level=tta_level),
                      out_shardings=repl)
  ema_eval_step = (jax.jit(steps.make_eval_step(run.model, **run.step_kwargs, ema=True,
                                                tta_level=tta_level),
                           out_shardings=repl) if config.ema_decay else None)
  return train_step, eval_step, ema_eval_step


class _Loop:
  """The train loop's periodic work around the jitted steps: train records every
  ``log_every_steps`` (the only host transfer of the loop), an evaluation every
  ``eval_every_epochs``, a checkpoint every ``checkpoint_every_steps`` (0: each epoch).

  Numerical faults are found without a sync per step: the train losses are read where the
  loop reads its metrics anyway (each train record) and before each evaluation and save;
  a NaN or Inf loss at step s is thus detected at the first of those after s, and nothing
  is saved or evaluated in between. Before each evaluation and save the parameters and
  BatchNorm statistics must be finite too (an update can overflow while its loss was
  finite): one reduction on device and a scalar read, no per-step cost.
  """

  def __init__(self, config, ds, run, writer, t_start, batch_sh, train_step, eval_step,
               ema_eval_step):
    self.config, self.ds, self.run, self.writer = config, ds, run, writer
    self.t_start, self.batch_sh = t_start, batch_sh
    self.train_step, self.eval_step, self.ema_eval_step = train_step, eval_step, ema_eval_step
    self.last = {}  # the last logged train_loss / train_accuracy
    self.saved_step = None  # the newest step saved (or being saved)
    # The train metrics not yet logged, of steps step_log + 1, step_log + 2, ...
    self.pending, self.step_log = [], 0

  def evaluate(self, state, step: int) -> dict:
    """Evaluates ``state`` (and its EMA) on the whole test set and logs the record."""
    jax.block_until_ready(state)  # finish queued train steps: they are not evaluation time
    t0 = time.time()
    c, ds = self.config, self.ds
    rec = evaluate_batches(self.eval_step, state,
                           ds.eval_batches(c.eval_batch_size, self.batch_sh))
    if self.ema_eval_step is not None:
      ema = evaluate_batches(self.ema_eval_step, state,
                             ds.eval_batches(c.eval_batch_size, self.batch_sh))
      rec.update(ema_test_loss=ema["test_loss"], ema_test_accuracy=ema["test_accuracy"])
    rec.update(step=step, epoch=step / self.run.steps_per_epoch, eval_s=time.time() - t0,
               wall_s=time.time() - self.t_start)
    self.writer.write(rec)
    return rec

  def _log_train(self, done: int, t_log: float, state, mngr) -> float:
    """Writes the train record of the pending steps (up to ``done``), then checks their
    losses (:meth:`_check_losses`); returns the time of the record."""
    fetched = parallel.to_host(self.pending)
    now = time.time()
    self.last = {"train_loss": float(np.mean([m["loss"] for m in fetched])),
                 "train_accuracy": float(np.mean([m["accuracy"] for m in fetched]))}
    ips = (done - self.step_log) * self.config.batch_size / (now - t_log)
    self.writer.write({"step": done, "epoch": done / self.run.steps_per_epoch, **self.last,
                       "lr": float(self.run.schedule(done - 1)), "images_per_s": ips,
                       "wall_s": now - self.t_start})
    self.pbar.set_postfix(loss=f"{self.last['train_loss']:.3f}",
                          acc=f"{self.last['train_accuracy']:.3f}", img_s=f"{ips:.0f}")
    self._check_losses([m["loss"] for m in fetched], done, state, mngr)
    self.pending, self.step_log = [], done
    return now

  def _check_losses(self, losses, done: int, state, mngr) -> None:
    """Raises :class:`NonFiniteError` at the first non-finite loss among ``losses`` (host
    floats of steps ``step_log + 1, ...``; ``None``: fetch the pending ones)."""
    if losses is None:
      losses = parallel.to_host([m["loss"] for m in self.pending])
    for i, loss in enumerate(losses):
      if not np.isfinite(loss):
        bad = self.step_log + i + 1
        raise self._fault(f"train loss is {float(loss)} at step {bad} (detected at step "
                          f"{done}, where the loop reads its metrics)", bad, state, mngr)

  def _fault(self, what: str, step: int, state, mngr) -> NonFiniteError:
    """The error for a numerical fault: ``what`` happened, the first non-finite parameter or
    BatchNorm statistic now, and which checkpoint is the last good one."""
    self.pbar.close()
    mngr.wait_until_finished()  # a save under way is of an earlier, checked step
    leaf = first_nonfinite_leaf({"params": state.params, "batch_stats": state.batch_stats})
    newest = mngr.latest_step()
    kept = (f"the newest checkpoint, step {newest} in "
            f"{pathlib.Path(mngr.directory) / str(newest)}, is intact" if newest is not None
            else "no checkpoint had been written")
    return NonFiniteError(
        f"{what}; first non-finite parameter or BatchNorm statistic: "
        f"{leaf or 'none, all finite'}. Training stopped and saved nothing of this state; "
        f"{kept}. Lower optim.lr, set optim.grad_clip_norm (e.g. 1.0), or look at that "
        f"step's batch", step, leaf)

  def _check(self, step: int, state, mngr, purpose: str) -> None:
    """Checks the pending losses, then that the parameters and BatchNorm statistics of
    ``state`` (at ``step``, about to be ``purpose``) are finite.

    Raises:
      NonFiniteError: either is not.
    """
    self._check_losses(None, step, state, mngr)
    if not bool(parallel.to_host(_all_finite((state.params, state.batch_stats)))):
      raise self._fault(f"the parameters to be {purpose} at step {step} are not finite "
                        f"although every train loss up to it was (an update overflowed)",
                        step, state, mngr)

  def save(self, mngr, step: int, state, data_state: dict | None = None) -> None:
    """Saves ``state`` as checkpoint ``step`` (asynchronously) after :meth:`_check`, with
    the data iterator's state after that step (Grain loader; ``None`` otherwise).

    Raises:
      NonFiniteError: see :meth:`_check`; nothing is saved.
    """
    self._check(step, state, mngr, "saved")
    checkpoint.save(mngr, step, state, data_state)
    self.saved_step = step

  def _preempt(self, mngr, done: int, state, signum: int, t_log: float, data_state=None):
    """Logs the pending steps, saves step ``done`` and waits for the save to be complete,
    prints where it is and raises :class:`Preempted`."""
    if self.pending:
      self._log_train(done, t_log, state, mngr)
    if self.saved_step != done:
      self.save(mngr, done, state, data_state)
    mngr.wait_until_finished()
    self.pbar.close()
    path = pathlib.Path(mngr.directory) / str(done)
    name = signal.Signals(signum).name
    message = (f"{name}: checkpoint saved at step {done} in {path}; rerun the same command "
               f"to resume" + (" with restart = False (True would move this run aside)"
                               if self.config.restart else ""))
    if jax.process_index() == 0:
      print(message, flush=True)
    raise Preempted(message, done, path, signum)

  def _evaluate_and_print(self, done: int, state, mngr) -> None:
    """The periodic evaluation: checks the state, evaluates, prints one line and keeps the
    evaluation's time out of the training images/s."""
    self._check(done, state, mngr, "evaluated")  # and then saved: fail before both
    rec = self.evaluate(state, done)
    self.pbar.write(f"epoch {done // self.run.steps_per_epoch}: test_accuracy "
                    f"{rec['test_accuracy']:.4f} test_loss {rec['test_loss']:.4f}" + (
                        f" ema_test_accuracy {rec['ema_test_accuracy']:.4f}"
                        if "ema_test_accuracy" in rec else ""))
    self.t_log += rec["eval_s"]

  def train(self, state, start_step: int, batches, mngr, stop: _StopOnSignal):
    """Runs the train steps on ``batches`` (``(step, images, labels)`` from ``start_step``
    to the end, :meth:`cnn_jax.data.loader.TrainBatches`); returns the final state.

    Raises:
      Preempted: ``stop`` recorded a signal; the step reached is saved first.
      NonFiniteError: see the class docstring.
    """
    c, spe = self.config, self.run.steps_per_epoch
    total_steps = spe * c.num_epochs
    self.pbar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                          dynamic_ncols=True,
                          disable=not (jax.process_index() == 0 and c.progress_bar))
    self.pending, self.step_log, self.t_log = [], start_step, time.time()
    self.saved_step = mngr.latest_step()

    def log(done, state):
      self.t_log = self._log_train(done, self.t_log, state, mngr)

    # In this order after each step; the last step's evaluation and save are the caller's.
    actions = [
        Every(1, lambda done, state: self.pbar.update(1)),
        Every(c.log_every_steps, log, also=(total_steps,)),
        Every(spe * c.eval_every_epochs, lambda done, state: self._evaluate_and_print(
            done, state, mngr), skip=(total_steps,)),
        Every(c.checkpoint_every_steps or spe,
              lambda done, state: self.save(mngr, done, state, batches.state()),
              skip=(total_steps,)),
    ]
    for step, images, labels in batches:
      state, metrics = self.train_step(state, images, labels)
      self.pending.append(metrics)
      for action in actions:
        action(step + 1, state)
      if stop.signum is not None:
        self._preempt(mngr, step + 1, state, stop.signum, self.t_log, batches.state())
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
  try:
    train_and_evaluate(cfg, flags.FLAGS.workdir)
  except Preempted as e:  # its line saying where the checkpoint is was printed
    sys.exit(e.exit_code)


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
