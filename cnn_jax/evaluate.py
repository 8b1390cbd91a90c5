"""Evaluate a run's newest checkpoint on the test set, optionally with flip TTA.

``python -m cnn_jax.evaluate --workdir <dir> [--flip-tta] [--data-dir <dir>]`` prints one JSON
line: ``workdir``, ``step``, ``test_accuracy`` (fraction), ``test_loss``, ``test_count``,
``flip_tta``, ``wall_s`` (seconds) and the provenance of :mod:`cnn_jax.provenance`. It
rebuilds model, optimizer state and data from the workdir's ``config.json`` (as timm's
``validate.py`` does from a checkpoint), so a finished run can be re-scored without training.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections

from cnn_jax import checkpoint, data, models, optim, parallel, provenance, steps
from cnn_jax.config import base_config, validate
from cnn_jax.train import evaluate


def _merge(defaults: dict, logged: dict) -> dict:
  """``logged`` over ``defaults``, recursively (nested dicts merge, other values replace)."""
  out = dict(defaults)
  for k, v in logged.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def evaluate_checkpoint(workdir: str | pathlib.Path, *, flip_tta: bool = False,
                        data_dir: str | None = None) -> dict:
  """Scores the newest checkpoint in ``<workdir>/checkpoints`` on every test image once.

  Args:
    workdir: a ``cnn_jax.train`` workdir (``config.json`` and ``checkpoints/``); config keys
      that :func:`cnn_jax.config.base_config` gained after the run take their defaults.
    flip_tta: average the logits of each image and its horizontal mirror (see
      :func:`cnn_jax.steps.make_eval_step`).
    data_dir: overrides the config's ``data.dir`` (e.g. the run was made on another machine).

  Returns:
    ``{'step', 'test_accuracy', 'test_loss', 'test_count', 'flip_tta'}``.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
    KeyError / ValueError: the config does not validate; cnn_jax.data.DataError: bad data.
  """
  workdir = pathlib.Path(workdir)
  cfg_path = workdir / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{cfg_path} does not exist: not a cnn_jax.train workdir")
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"{workdir / 'checkpoints'} does not exist: nothing to evaluate")
  # Keys added to base_config after the run was made take their defaults.
  config = validate(ml_collections.ConfigDict(
      _merge(base_config().to_dict(), json.loads(cfg_path.read_text()))))
  if data_dir is not None:
    config.data.dir = data_dir
  ds = data.load(config.data)
  mesh = parallel.data_mesh()
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  dtype = jnp.dtype(config.dtype)
  model = models.create(config.model.name, num_classes=ds.num_classes, dtype=dtype,
                        **config.model.kwargs.to_dict())
  # The optimizer state is restored too (it is part of the checkpoint), so build its shape.
  tx, _ = optim.create_optimizer(config.optim, len(ds.train_labels) // config.batch_size,
                                 config.num_epochs)
  init = lambda key: steps.init_state(model, tx, key, ds.train_images.shape[1:])
  abstract = checkpoint.abstract_like(jax.eval_shape(init, jax.random.key(0)), repl)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    state = checkpoint.restore_latest(mngr, abstract)
  finally:
    mngr.close()
  if state is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint")
  eval_step = jax.jit(steps.make_eval_step(model, num_classes=ds.num_classes, mean=ds.mean,
                                           std=ds.std, dtype=dtype, flip_tta=flip_tta),
                      out_shardings=repl)
  rec = evaluate(eval_step, state, ds.test_images, ds.test_labels, config.eval_batch_size,
                 batch_sh)
  return {"step": int(parallel.to_host(state.step)), **rec, "flip_tta": flip_tta}


def main(argv: list[str] | None = None) -> None:
  """Command line: see the module docstring."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a cnn_jax.train workdir")
  p.add_argument("--flip-tta", action="store_true", help="average logits with the mirror image")
  p.add_argument("--data-dir", default=None, help="override the config's data.dir")
  args = p.parse_args(argv)
  t0 = time.time()
  rec = evaluate_checkpoint(args.workdir, flip_tta=args.flip_tta, data_dir=args.data_dir)
  # Code and hardware of this evaluation, so a re-scored number is traceable like a run's.
  print(json.dumps({"workdir": str(args.workdir), **rec, "wall_s": time.time() - t0,
                    **provenance.run_provenance()}))


if __name__ == "__main__":
  main()
