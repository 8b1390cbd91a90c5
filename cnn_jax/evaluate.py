"""Evaluate a run's newest checkpoint on the test set, optionally with test-time augmentation.

``python -m cnn_jax.evaluate --workdir <dir> [--tta none|flip|flip_translate] [--flip-tta]
[--ema] [--data-dir <dir>]`` prints one JSON line: ``workdir``, ``step``, ``test_accuracy``
(fraction), ``test_loss``, ``test_count``, ``tta``, ``flip_tta``, ``ema``, ``wall_s`` (seconds)
and the provenance of
:mod:`cnn_jax.provenance`. It rebuilds model, optimizer state and data from the workdir's
``config.json`` (as timm's ``validate.py`` does from a checkpoint), so a finished run can be
re-scored without training. :func:`restore_run` (the rebuild and restore alone) is shared
with the analyses of :mod:`cnn_jax.analysis` that look at a trained run.

The data comes through the trainer's own data layer (:func:`cnn_jax.data.loader.open_data`,
config key ``data.loader``: the in-memory or the Grain loader) and is scored on the same
test batches as the run's evaluations (``eval_batches(eval_batch_size)``, what
``cnn_jax.train._Loop.evaluate`` scores), so that a re-scored checkpoint gives the run's
logged ``test_accuracy`` whichever loader trained it; with ``data.augment = 'inception'``
that is the resized center crop of each test image
(:func:`cnn_jax.data.imagenet_augment.center_crop`), not the decoded image.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import ml_collections

from cnn_jax import checkpoint, parallel, provenance, steps, xla_cpu
from cnn_jax.config import from_json, validate
from cnn_jax.data import loader
from cnn_jax.ops import cpu_conv
from cnn_jax.train import RunSetup, build_run, evaluate_batches


class RestoredRun(NamedTuple):
  """What :func:`restore_run` returns: a finished run rebuilt from its workdir.

  Attributes:
    config: the run's config (``config.json``, validated).
    ds: its data as the trainer opened it (:func:`cnn_jax.data.loader.open_data` of
      ``config.data`` and ``config.seed``): a :class:`cnn_jax.data.loader.MemoryData`
      (which forwards a :class:`cnn_jax.data.Dataset`'s arrays) or the Grain loader; both
      have ``eval_batches``, ``test_images`` (uint8 ``(N, H, W, C)``, for the Grain loader
      the evaluation view, decoded on first use), ``test_labels`` (int32 ``(N,)``),
      ``mean``/``std`` (float32 ``(C,)``, 0-255 units), ``class_names`` and ``loader``.
    run: :func:`cnn_jax.train.build_run` of both (model, optimizer, ``step_kwargs``, ...).
    state: the newest checkpoint's train state, replicated over ``repl``.
    repl, batch_sharding: the replicated and batch-sharded shardings of the data mesh.
  """
  config: ml_collections.ConfigDict
  ds: Any  # loader.MemoryData or the Grain loader of loader.open_data
  run: RunSetup
  state: steps.TrainState
  repl: Any
  batch_sharding: Any


def load_run_config(workdir: str | pathlib.Path,
                    data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The validated config of the run in ``workdir`` (``data_dir`` overrides ``data.dir``).

  Raises:
    FileNotFoundError: no ``config.json`` or no ``checkpoints/`` in ``workdir``.
    KeyError / ValueError: the config does not validate.
  """
  workdir = pathlib.Path(workdir)
  cfg_path = workdir / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{cfg_path} does not exist: not a cnn_jax.train workdir")
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"{workdir / 'checkpoints'} does not exist: nothing to evaluate")
  config = from_json(cfg_path.read_text())
  if data_dir is not None:
    config.data.dir = data_dir
  validate(config)
  return config


def restore_run(workdir: str | pathlib.Path, *, data_dir: str | None = None,
                config: ml_collections.ConfigDict | None = None) -> RestoredRun:
  """Rebuilds the run in ``workdir`` from its ``config.json`` and restores its newest checkpoint.

  The data is opened as :func:`cnn_jax.train.train_and_evaluate` opens it
  (:func:`cnn_jax.data.loader.open_data`: the loader of config key ``data.loader``), so the
  model's input shape, class count and mean/std are the run's own for either loader. Only
  the train state is read (checkpoint item ``default``); the Grain loader's iterator state
  (item ``data_iter``), which scoring does not need, is left unread. Nothing in ``workdir``
  is written or moved.

  Args:
    workdir: a ``cnn_jax.train`` workdir (``config.json`` and ``checkpoints/``).
    data_dir: overrides the config's ``data.dir`` (unused when ``config`` is given).
    config: the run's config if already read with :func:`load_run_config`.

  Returns:
    A :class:`RestoredRun`; its ``state`` is replicated over the devices of
    :func:`cnn_jax.parallel.data_mesh`.

  Raises:
    FileNotFoundError: no ``config.json``, no ``checkpoints/`` or no checkpoint in it.
    KeyError / ValueError: the config does not validate, or the checkpoint does not fit the
      model it builds (names the array path and both shapes);
      cnn_jax.checkpoint.DamagedCheckpointError: every checkpoint is damaged;
      cnn_jax.data.DataError: bad data (names the folder or file).
  """
  workdir = pathlib.Path(workdir)
  if config is None:
    config = load_run_config(workdir, data_dir)
  ds = loader.open_data(config.data, config.seed)
  mesh = parallel.data_mesh()
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # The whole train state, optimizer state included, is what the checkpoint holds.
  run = build_run(config, ds, repl)
  # A single-item manager reads <step>/default whatever else the step holds: a Grain run's
  # data_iter item would need Grain's handler and the process count that wrote it.
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    # Read-only: a damaged newest checkpoint is skipped (one line), not moved.
    state = checkpoint.restore_latest(mngr, run.abstract_state, move_damaged=False)
  finally:
    mngr.close()
  if state is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint")
  return RestoredRun(config, ds, run, state, repl, batch_sh)


def evaluate_checkpoint(workdir: str | pathlib.Path, *, flip_tta: bool = False,
                        ema: bool = False, data_dir: str | None = None,
                        tta: str | None = None) -> dict:
  """Scores the newest checkpoint in ``<workdir>/checkpoints`` on every test image once.

  Args:
    workdir: a ``cnn_jax.train`` workdir (``config.json`` and ``checkpoints/``); config keys
      that :func:`cnn_jax.config.base_config` gained after the run take their defaults.
    flip_tta: average the logits of each image and its horizontal mirror (``tta='flip'``).
    tta: ``'none'``, ``'flip'`` or ``'flip_translate'`` (:data:`cnn_jax.steps.TTA_LEVELS`,
      :func:`cnn_jax.steps.tta_logits`); ``None``: ``'flip'`` with ``flip_tta``, else the
      run's own config key ``eval_tta`` (what its logged evaluations used).
    ema: score the exponential moving average of the weights that a run with
      ``ema_decay > 0`` keeps, instead of the weights.
    data_dir: overrides the config's ``data.dir`` (e.g. the run was made on another machine).

  The test set is read through the run's loader in the run's evaluation batches
  (``config.eval_batch_size``, the last one padded and masked), exactly as the trainer's
  evaluations read it, so without ``tta`` and ``flip_tta`` the result is the run's logged final
  ``test_accuracy`` (and ``ema_test_accuracy`` with ``ema``), for the in-memory and the
  Grain loader alike.

  Returns:
    ``{'step': int (train steps of the checkpoint), 'test_accuracy': float (fraction of
    the test images whose top-1 class is right), 'test_loss': float (mean cross-entropy,
    nats), 'test_count': int (test images scored), 'tta': str, 'flip_tta': bool (``tta ==
    'flip'``), 'ema': bool}``.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
    KeyError / ValueError: the config does not validate; ``ema=True`` for a run trained
      without EMA; config key ``eval_batch_size`` does not divide by this machine's device
      count; ``tta`` not a :data:`cnn_jax.steps.TTA_LEVELS` name, or ``flip_tta`` with
      another ``tta``; cnn_jax.data.DataError: bad data.
    RuntimeError: the run trained with ``conv_backend = 'onednn'`` and oneDNN's convolution
      cannot run here (the message says why; set ``conv_backend`` to ``'xla'`` in its
      ``config.json`` to score it with XLA's).
  """
  if tta is not None and tta not in steps.TTA_LEVELS:
    raise ValueError(f"evaluate: tta must be one of {sorted(steps.TTA_LEVELS)}, got {tta!r}")
  if flip_tta and tta not in (None, "flip"):
    raise ValueError(f"evaluate: flip_tta=True is tta='flip', and tta={tta!r} was given")
  config = load_run_config(workdir, data_dir)
  tta = tta or ("flip" if flip_tta else config.eval_tta)
  if ema and not config.ema_decay:
    cfg_path = pathlib.Path(workdir) / "config.json"
    raise ValueError(f"{cfg_path}: ema_decay = {config.ema_decay}, so the run kept no EMA of "
                     f"the weights to evaluate")
  # The run's convolution backend ('auto' for runs logged before the key existed).
  with cpu_conv.conv_backend(config.get("conv_backend", "auto")):
    r = restore_run(workdir, config=config)
    run, state = r.run, r.state
    parallel.check_batch_size(config.eval_batch_size, r.batch_sharding.mesh, "eval_batch_size")
    eval_step = jax.jit(steps.make_eval_step(run.model, **run.step_kwargs,
                                             tta_level=steps.TTA_LEVELS[tta], ema=ema),
                        out_shardings=r.repl)
    # The trainer's evaluation (cnn_jax.train._Loop.evaluate): the loader's test batches.
    rec = evaluate_batches(eval_step, state,
                           r.ds.eval_batches(config.eval_batch_size, r.batch_sharding))
  return {"step": int(parallel.to_host(state.step)), **rec, "tta": tta,
          "flip_tta": tta == "flip", "ema": ema}


def main(argv: list[str] | None = None) -> None:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--tta", choices=sorted(steps.TTA_LEVELS), default=None,
                 help="test-time augmentation (default: the run's config key eval_tta)")
  p.add_argument("--flip-tta", action="store_true", help="the same as --tta flip")
  p.add_argument("--ema", action="store_true",
                 help="score the EMA of the weights (runs trained with ema_decay > 0)")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  args = p.parse_args(argv)
  t0 = time.time()
  rec = evaluate_checkpoint(args.workdir, flip_tta=args.flip_tta, ema=args.ema,
                            data_dir=args.data_dir, tta=args.tta)
  # Code and hardware of this evaluation, so a re-scored number is traceable like a run's.
  print(json.dumps({"workdir": str(args.workdir), **rec, "wall_s": time.time() - t0,
                    **provenance.run_provenance()}))


if __name__ == "__main__":
  xla_cpu.apply_and_report("cnn_jax.evaluate")  # before the first computation reads XLA_FLAGS
  main()
