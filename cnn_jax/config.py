"""The base training config and its validation.

Every config file in ``configs/`` starts from :func:`base_config` and overrides fields;
``validate`` runs before any work, so a bad value stops the run with the config key, the
value and what was expected. Override from the command line with
``--config.optim.lr=0.05`` (ml_collections ``config_flags``).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import numbers
import os
import pathlib

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The defaults: CIFAR-10, SGD + Nesterov, linear warm-up then cosine decay.

  Fields other tools rely on: ``model.name``, ``data.name``, ``data.dir``, ``batch_size``
  (global, summed over all devices and processes), ``num_epochs``, ``seed``.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet20"
  # Extra keyword arguments of the model constructor, e.g. {'shortcut': 'B'}.
  c.model.kwargs = ml_collections.ConfigDict()
  # Patch-whitening initialisation of a first 2x2 conv named 'whiten' (airbench94; Jordan 2024,
  # arXiv:2404.00498, Sec. 3): on a fresh run (not on resume, not with init_from) its kernel
  # is computed from this many training images (a seeded random subset, at most the training
  # set) before step 0 (cnn_jax.models.airbench.init_whitening); 0 = off. whitening_eps is
  # added to each eigenvalue (normalised pixels squared) before the inverse square root.
  c.model.whitening_images = 0
  c.model.whitening_eps = 5e-4

  c.data = _data_defaults()

  c.batch_size = 128  # global
  c.eval_batch_size = 1000  # global; the last batch is padded and masked
  c.num_epochs = 30

  c.optim = _optim_defaults()

  c.lookahead = _lookahead_defaults()

  c.label_smoothing = 0.0
  # Exponential moving average of the weights and BatchNorm statistics, evaluated beside
  # them (ema_test_accuracy); 0 = off. Per-step decay, e.g. 0.999 averages over ~1,000 steps.
  c.ema_decay = 0.0
  # BatchNorm statistics in training: 'global' (over the whole global batch, what jit
  # sharding computes) or 'per_device' ("ghost" batch norm over each device's shard, as
  # pmap-era code without cross-replica sync had).
  c.batchnorm_stats = "global"
  # Compute dtype (parameters and optimizer state stay float32): 'float32', 'bfloat16', or
  # 'auto' = bfloat16 on TPU, float32 elsewhere, resolved when training starts
  # (resolve_dtype; the logged config.json holds the resolved value).
  c.dtype = "auto"
  # Store every conv input for the backward pass instead of letting XLA recompute it inside
  # the weight-gradient transposes (cnn_jax/xla_cpu.py): same results, a faster CPU step.
  # 'auto' = on when JAX's default backend is CPU and conv_backend resolves to 'xla' (oneDNN's
  # convs have no such transposes; xla_cpu.resolve_materialize); 'on'; 'off'.
  c.materialize_conv_inputs = "auto"
  # Who computes the convolutions on CPU (cnn_jax/ops/cpu_conv.py): 'onednn' (oneDNN's
  # kernels as XLA custom calls, cnn_jax/ops/onednn_conv.py, and with them the training-mode
  # BatchNorm, cnn_jax/ops/onednn_batch_norm.py: pip install 'cnn_jax[onednn]'),
  # 'xla', or 'auto' = 'onednn' on a one-device CPU run where oneDNN is installed, else 'xla';
  # resolved when training starts (resolve_conv_backend; config.json holds the result).
  c.conv_backend = "auto"

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  # Test-time augmentation of the periodic and final evaluation (the logged test_accuracy /
  # test_loss): 'none' (one view), 'flip' (mean logits of the image and its mirror: 2
  # forward passes) or 'flip_translate' (airbench's level 2: also the image translated by
  # one pixel both ways, each with its mirror: 6 passes). cnn_jax.steps.tta_logits.
  c.eval_tta = "none"
  c.checkpoint_every_steps = 0  # 0 = once per epoch
  c.keep_checkpoints = 2
  c.progress_bar = True
  c.tensorboard = True  # also write the metrics as TensorBoard events to <workdir>/tensorboard
  # Start over in a used workdir: its checkpoints/, metrics.jsonl, config.json and
  # tensorboard/ are moved (never deleted) to <workdir>/previous-<YYYYmmdd-HHMMSS>/.
  # Leave it False to resume: a rerun with True moves the run aside again.
  c.restart = False
  # Workdir of another run whose newest checkpoint gives a fresh run its parameters and
  # BatchNorm statistics (not its optimizer state or step); '' = random initialisation.
  # Ignored when this workdir holds a checkpoint (the run resumes from that).
  c.init_from = ""
  c.transfer = _transfer_defaults()
  return c


def _data_defaults() -> ml_collections.ConfigDict:
  """The ``data`` section of :func:`base_config`."""
  d = ml_collections.ConfigDict()
  d.name = "cifar10"
  # Local image folder <dir>/{train,test}/<class>/*; when set, TFDS is never touched.
  d.dir = os.environ.get("CNN_JAX_CIFAR10_DIR", "")
  d.cache_dir = ""  # decoded-image cache; '' -> $CNN_JAX_CACHE or ~/.cache/cnn_jax
  d.num_train = 0  # 0 = all; else a class-balanced subset (quick runs, tests)
  d.num_test = 0
  d.crop_pad = 4  # random-crop padding in pixels; 0 disables the crop
  d.pad_mode = "reflect"  # 'reflect' or 'constant' (zeros)
  d.flip = True
  # 'random': a coin per image and step (He et al. 2015); 'alternating': each image mirrored
  # every other epoch (Jordan 2024, arXiv:2404.00498, Sec. 3.6). Only used when flip is True.
  d.flip_mode = "random"
  # An image folder's files that do not decode (truncated or corrupt JPEGs, stray non-image
  # files): False stops the load naming the first; True skips them, counted and named in
  # the run's start record (data_report).
  d.skip_corrupt = False
  # Images of another size than the dataset's: False stops the load naming the file and
  # both sizes; True resizes them (bilinear), counted in the start record.
  d.resize = False
  # Input pipeline (cnn_jax/data/loader.py). 'memory': every image decoded into host memory
  # once (uint8 NHWC), one index gather per step; 'grain': streamed by Grain, decoded and
  # augmented in worker processes, each process reading only its shard, resumable from the
  # iterator state saved in the checkpoint; 'auto': 'memory' when the decoded train + test
  # images fit in memory_limit_mb and augment is 'pad_crop', else 'grain'. Both give the
  # same batches for the same seed.
  d.loader = "auto"
  d.memory_limit_mb = 4096  # 'auto' threshold, MiB of decoded uint8 images
  # 'pad_crop': the CIFAR recipe (random crop after crop_pad padding, flip), on device;
  # 'inception': random-resized crop to image_size and flip on the host (Szegedy et al.
  # 2015), evaluation on the center crop of the image resized to image_size /
  # eval_crop_fraction (256 -> 224); needs loader 'grain' (or 'auto').
  d.augment = "pad_crop"
  d.image_size = 0  # inception: the model's input side in pixels; 0 = the dataset's
  d.rrc_scale = (0.08, 1.0)  # inception crop: range of area fractions
  d.rrc_ratio = (0.75, 4.0 / 3.0)  # inception crop: range of aspect ratios (w / h)
  d.eval_crop_fraction = 0.875  # inception evaluation: crop side / resized shorter side
  # grain: decoding worker processes (-1 = auto: CPUs - 1, at most 16; 0 = decode in this
  # process's threads), read threads per process, and batches buffered ahead per worker.
  d.num_workers = -1
  d.read_threads = 4
  d.prefetch_batches = 2
  # memory loader: keep the training split on the accelerator and gather each batch there
  # (no host-to-device copy per step). 'auto' = on for a single-process GPU/TPU run whose
  # training images take at most a quarter of the device's memory; 'on'; 'off'.
  d.device_resident = "auto"
  return d


def _optim_defaults() -> ml_collections.ConfigDict:
  """The ``optim`` section of :func:`base_config`."""
  o = ml_collections.ConfigDict()
  o.name = "sgd"  # 'sgd' (momentum, optional Nesterov), 'adamw' or 'airbench_sgd' (below)
  o.lr = 0.1  # peak learning rate
  o.momentum = 0.9
  o.nesterov = True
  o.b1 = 0.9  # adamw
  o.b2 = 0.999  # adamw
  o.weight_decay = 5e-4  # on conv/dense kernels only (airbench_sgd: on every parameter)
  o.schedule = "cosine"  # 'cosine', 'piecewise' or 'constant' after warm-up, or 'triangle'
  o.warmup_epochs = 1.0
  o.min_lr = 0.0  # cosine end value
  o.boundaries_epochs = (0.5, 0.75)  # piecewise: fractions of training, or epochs if > 1
  o.decay_factor = 0.1  # piecewise
  o.grad_clip_norm = 0.0  # 0 = off
  # schedule 'triangle' (airbench; Jordan 2024): linear from start * lr at step 0 to lr at
  # step int(peak_position * total_steps), then linear to end * lr at the last step; its own
  # rise replaces warm-up (warmup_epochs must be 0). (start, peak_position, end).
  o.triangle = (0.2, 0.23, 0.07)
  # name 'airbench_sgd' (cnn_jax.speedrun.airbench_optimizer): Nesterov/heavy-ball SGD with
  # coupled decay on *every* parameter, the gradient of BatchNorm biases (modules named
  # norm*) times bias_scaler, the kernel of a top-level module 'whiten' never updated and
  # its bias frozen after whiten_bias_epochs.
  o.bias_scaler = 64.0
  o.whiten_bias_epochs = 3.0
  return o


def _lookahead_defaults() -> ml_collections.ConfigDict:
  """The ``lookahead`` section of :func:`base_config`: airbench94's lookahead (Jordan 2024,
  arXiv:2404.00498, Sec. 3; :func:`cnn_jax.speedrun.lookahead_step`), off by default."""
  la = ml_collections.ConfigDict()
  # Every this many optimizer steps from epoch start_epochs on, the slow weights (parameters
  # and BatchNorm statistics) move toward the weights with decay
  # rho = decay_base**every_n_steps * (step / total_steps)**decay_pow and the weights are
  # pulled back to them (also at each epoch end). 0 = off.
  la.every_n_steps = 0
  la.start_epochs = 3.0
  la.decay_base = 0.95
  la.decay_pow = 3.0
  return la


def _transfer_defaults() -> ml_collections.ConfigDict:
  """The ``transfer`` section of :func:`base_config`: what a run initialised from
  ``init_from`` trains and re-initialises (cnn_jax/transfer.py). Only with ``init_from``."""
  t = ml_collections.ConfigDict()
  # 'finetune': every parameter trains; 'linear_probe': only the head trains, the rest is
  # frozen and runs in inference mode (BatchNorm running averages); 'progressive': the head,
  # then one more top-level parameter group every unfreeze_every_epochs, top down.
  t.mode = "finetune"
  # Path prefixes under params re-initialised instead of restored, e.g. ('Dense_0',)
  # (resnet20, cifar10_cnn), ('head',) (ViT, Mixer, ConvNeXt V2). () = the classifier, found
  # by forward order, re-initialised only when num_classes changed its shape.
  t.head = ()
  t.unfreeze_every_epochs = 1.0  # progressive: epochs between two unfreezings
  return t


_CHOICES = {
    "optim.name": ("sgd", "adamw", "airbench_sgd"),
    "optim.schedule": ("cosine", "piecewise", "constant", "triangle"),
    "eval_tta": ("none", "flip", "flip_translate"),
    "data.pad_mode": ("reflect", "constant"),
    "data.flip_mode": ("random", "alternating"),
    "data.loader": ("auto", "memory", "grain"),
    "data.augment": ("pad_crop", "inception"),
    "data.device_resident": ("auto", "on", "off"),
    "dtype": ("float32", "bfloat16", "auto"),
    "batchnorm_stats": ("global", "per_device"),
    "materialize_conv_inputs": ("auto", "on", "off"),
    "conv_backend": ("auto", "xla", "onednn"),
    "transfer.mode": ("finetune", "linear_probe", "progressive"),
}
_POSITIVE = ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
             "eval_every_epochs", "keep_checkpoints", "optim.lr",
             "transfer.unfreeze_every_epochs")
_NON_NEGATIVE = ("optim.weight_decay", "optim.warmup_epochs", "optim.min_lr",
                 "optim.grad_clip_norm", "data.crop_pad", "data.num_train", "data.num_test",
                 "checkpoint_every_steps", "label_smoothing", "optim.momentum",
                 "data.image_size", "data.read_threads", "optim.whiten_bias_epochs",
                 "model.whitening_images", "lookahead.every_n_steps",
                 "lookahead.start_epochs", "lookahead.decay_pow")
_POSITIVE += ("data.memory_limit_mb", "data.prefetch_batches", "optim.bias_scaler",
              "model.whitening_eps")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _flat_keys(config, prefix="", expand_kwargs=False):
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict) and (k != "kwargs" or expand_kwargs):
      keys += _flat_keys(v, f"{prefix}{k}.", expand_kwargs)
    else:
      keys.append(f"{prefix}{k}")
  return keys


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Calls ``get_config()`` of a config file, ``'path.py'`` or ``'path.py:arg'`` (as
  ``config_flags`` does, where ``arg`` is passed to ``get_config``).

  Raises:
    FileNotFoundError: no such config file.
  """
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_cnn_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(argv: list[str], flag: str = "config") -> None:
  """Checks ``--config.a.b=v`` command-line overrides against the config file's keys.

  ``config_flags`` rejects an unknown key with a long traceback; this runs first and
  stops with one line naming the key and the nearest valid ones.

  Raises:
    SystemExit: an override names a key the config does not have.
  """
  spec, keys = None, []
  for i, a in enumerate(argv):
    if a.startswith(f"--{flag}="):
      spec = a.split("=", 1)[1]
    elif a == f"--{flag}" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif a.startswith(f"--{flag}."):
      keys.append(a[len(flag) + 3:].split("=", 1)[0])
  if spec is None or not keys:
    return
  valid = _flat_keys(load_config_file(spec), expand_kwargs=True)
  for k in keys:
    if k not in valid:
      close = difflib.get_close_matches(k, valid, n=3, cutoff=0.5)
      raise SystemExit(f"error: unknown config key {k!r} (from --{flag}.{k}); "
                       f"nearest valid keys: {', '.join(close) if close else 'none close'}. "
                       f"Valid keys: {', '.join(valid)}")


def _check_type(key: str, value, default) -> None:
  """Raises TypeError when ``value`` (of config key ``key``) is not of ``default``'s type.

  ml_collections refuses such an assignment to a field of :func:`base_config`, but not
  ``None``, nor any value in a config built from a plain dict.
  """
  if default is None:
    return
  if isinstance(default, bool):
    ok, want = isinstance(value, bool), "a bool"
  elif isinstance(default, int):
    ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an int"
  elif isinstance(default, float):
    ok, want = isinstance(value, numbers.Real) and not isinstance(value, bool), "a float"
  elif isinstance(default, str):
    ok, want = isinstance(value, str), "a str"
  elif isinstance(default, (tuple, list)):
    ok, want = isinstance(value, (tuple, list)), "a tuple"
  elif isinstance(default, ml_collections.ConfigDict):
    ok, want = isinstance(value, (ml_collections.ConfigDict, dict)), "a ConfigDict"
  else:
    return
  if not ok:
    raise TypeError(f"config key {key} = {value!r} ({type(value).__name__}); expected {want} "
                    f"(default {default!r})")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a training config; returns it unchanged.

  Raises:
    KeyError: a key of :func:`base_config` is missing, or an unknown key is present
      (names it and the nearest valid keys).
    TypeError: a value not of its default's type (an int where a float is expected is fine;
      names key, value, its type and the expected one).
    ValueError: a value out of range or not among the choices (names key, value, expected).
  """
  defaults = base_config()
  valid = _flat_keys(defaults)
  have = _flat_keys(config)
  for k in have:
    if k not in valid and not k.startswith("model.kwargs."):
      close = difflib.get_close_matches(k, valid, n=3, cutoff=0.5)
      raise KeyError(f"unknown config key {k!r}; nearest valid keys: {close or valid[:5]}")
  for k in valid:
    if k not in have:
      raise KeyError(f"config is missing key {k!r} (start configs from "
                     f"cnn_jax.config.base_config())")
  for k in valid:
    _check_type(k, _get(config, k), _get(defaults, k))
  for k, choices in _CHOICES.items():
    if _get(config, k) not in choices:
      raise ValueError(f"config key {k} = {_get(config, k)!r}; expected one of {choices}")
  for k in _POSITIVE:
    if not _get(config, k) > 0:
      raise ValueError(f"config key {k} = {_get(config, k)!r}; expected > 0")
  for k in _NON_NEGATIVE:
    if not _get(config, k) >= 0:
      raise ValueError(f"config key {k} = {_get(config, k)!r}; expected >= 0")
  for k in ("label_smoothing", "ema_decay"):
    if not 0.0 <= config[k] < 1.0:
      raise ValueError(f"config key {k} = {config[k]}; expected [0, 1)")
  for k, kind in (("restart", bool), ("init_from", str)):
    if not isinstance(config[k], kind):
      raise ValueError(f"config key {k} = {config[k]!r}; expected a {kind.__name__}")
  b = tuple(config.optim.boundaries_epochs)
  if list(b) != sorted(b):
    raise ValueError(f"config key optim.boundaries_epochs = {b}; expected increasing values")
  _validate_transfer(config)
  _validate_data(config.data)
  _validate_recipe(config)
  return config


def _validate_recipe(config: ml_collections.ConfigDict) -> None:
  """Checks the airbench-recipe keys (``optim.triangle``, ``lookahead``) that range checks
  cannot, and the combinations that do not go together.

  Raises:
    ValueError: names the key(s), the value and what was expected.
  """
  o = config.optim
  tri = tuple(o.triangle)
  if not (len(tri) == 3 and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                for v in tri) and tri[0] >= 0 and 0 < tri[1] < 1
          and tri[2] >= 0):
    raise ValueError(f"config key optim.triangle = {tri!r}; expected (start, peak_position, "
                     f"end) with start >= 0, 0 < peak_position < 1, end >= 0, e.g. "
                     f"(0.2, 0.23, 0.07)")
  if o.schedule == "triangle" and o.warmup_epochs:
    raise ValueError(f"config key optim.warmup_epochs = {o.warmup_epochs}; expected 0 with "
                     f"optim.schedule = 'triangle' (its rise from optim.triangle[0] * lr "
                     f"to lr is the warm-up)")
  la = config.lookahead
  if not 0.0 < la.decay_base <= 1.0:
    raise ValueError(f"config key lookahead.decay_base = {la.decay_base}; expected (0, 1], "
                     f"e.g. 0.95")
  if la.every_n_steps and config.ema_decay:
    raise ValueError(f"config key lookahead.every_n_steps = {la.every_n_steps} and config "
                     f"key ema_decay = {config.ema_decay}: expected at most one of them "
                     f"on (the train state keeps either a weight average or lookahead's "
                     f"slow weights); set one to 0")


def _validate_data(d: ml_collections.ConfigDict) -> None:
  """Checks the input-pipeline keys of section ``data`` that range checks cannot.

  Raises:
    ValueError: names the key(s), the value and what was expected.
  """
  lo, hi = tuple(d.rrc_scale) if len(d.rrc_scale) == 2 else (-1, -1)
  if not 0 < lo <= hi <= 1:
    raise ValueError(f"config key data.rrc_scale = {tuple(d.rrc_scale)}; expected "
                     f"(lo, hi) with 0 < lo <= hi <= 1, e.g. (0.08, 1.0)")
  lo, hi = tuple(d.rrc_ratio) if len(d.rrc_ratio) == 2 else (-1, -1)
  if not 0 < lo <= hi:
    raise ValueError(f"config key data.rrc_ratio = {tuple(d.rrc_ratio)}; expected (lo, hi) "
                     f"with 0 < lo <= hi, e.g. (0.75, 1.3333)")
  if not 0 < d.eval_crop_fraction <= 1:
    raise ValueError(f"config key data.eval_crop_fraction = {d.eval_crop_fraction}; "
                     f"expected (0, 1], e.g. 0.875 (224 of 256)")
  if d.num_workers < -1:
    raise ValueError(f"config key data.num_workers = {d.num_workers}; expected -1 (auto), "
                     f"0 (this process) or a worker count")
  if d.augment == "inception" and d.loader == "memory":
    raise ValueError("config key data.augment = 'inception' crops images of any size on the "
                     "host, which only data.loader = 'grain' (or 'auto') does; the 'memory' "
                     "loader holds fixed-size images")
  if d.loader == "grain" and d.skip_corrupt:
    raise ValueError("config key data.skip_corrupt = True needs data.loader = 'memory' (a "
                     "streamed epoch cannot drop an example without changing every later "
                     "batch); fix or remove the file instead")


def _validate_transfer(config: ml_collections.ConfigDict) -> None:
  """Checks section ``transfer`` (after :func:`validate`'s choice and range checks): the head
  is a tuple of path prefixes under ``params``, and a non-default mode or head comes with
  the ``init_from`` it acts on.

  Raises:
    ValueError: names the key(s), the value and what was expected.
  """
  head = config.transfer.head
  if not (isinstance(head, (tuple, list)) and all(
      isinstance(h, str) and h and not h.startswith(("params/", "batch_stats/", "/"))
      and not h.endswith("/") for h in head)):
    raise ValueError(f"config key transfer.head = {head!r}; expected a tuple of parameter "
                     f"path prefixes under params, e.g. ('Dense_0',), or () for the "
                     f"classifier found automatically")
  if config.init_from:
    return
  for key, value, default in (("transfer.mode", config.transfer.mode, "finetune"),
                              ("transfer.head", tuple(head), ())):
    if value != default:
      raise ValueError(f"config key {key} = {value!r} acts only on a run initialised from "
                       f"another run's checkpoint, but config key init_from = ''; set "
                       f"init_from to that run's workdir, or {key} to {default!r}")


# The compute dtype that config key dtype = 'auto' means on each JAX platform
# (``jax.default_backend()``); any platform not listed gets 'float32'. TPU: bfloat16 is the
# MXU's native input type (float32 matmuls take several bf16 passes), so it is the speed
# default there (Google Cloud TPU docs, "Improve your model's performance with bfloat16").
AUTO_DTYPE = {"tpu": "bfloat16"}


def auto_dtype(platform: str | None = None) -> str:
  """What ``dtype = 'auto'`` resolves to on ``platform`` ('cpu', 'gpu', 'tpu', ...; ``None``:
  ``jax.default_backend()``, which initialises JAX's backends, so call it only where the
  trainer would: after ``XLA_FLAGS`` and distributed initialisation). Returns
  ``'bfloat16'`` or ``'float32'`` (:data:`AUTO_DTYPE`)."""
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  return AUTO_DTYPE.get(platform.lower(), "float32")


def resolve_dtype(config: ml_collections.ConfigDict,
                  platform: str | None = None) -> ml_collections.ConfigDict:
  """``config`` with ``dtype = 'auto'`` replaced by :func:`auto_dtype` ``(platform)``; a copy
  (the caller's config, locked or frozen, is left as it is), or ``config`` itself when its
  dtype is not 'auto' (nothing is validated here: :func:`validate` does that, before or
  after). The trainer calls it before logging ``config.json`` and before checking a resume,
  so the log records the dtype that ran and a run resumed with 'auto' on the same platform
  matches its logged value (on another platform :func:`check_resume` names the
  difference)."""
  if config.get("dtype") != "auto":
    return config
  out = _mutable_copy(config)
  out.dtype = auto_dtype(platform)
  return out


def _mutable_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  if isinstance(config, ml_collections.FrozenConfigDict):
    return ml_collections.ConfigDict(config)
  return copy.deepcopy(config)  # ConfigDict(config) would share the sections


def resolve_conv_backend(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``conv_backend = 'auto'`` replaced by what it means here
  (:func:`cnn_jax.ops.cpu_conv.resolve_backend`: ``'onednn'`` on a one-device CPU process
  where oneDNN is installed, else ``'xla'``); a copy, or ``config`` itself when the key is
  not 'auto'. Like :func:`resolve_dtype`, it initialises JAX's backends: call it where the
  trainer does."""
  if config.get("conv_backend") != "auto":
    return config
  from cnn_jax.ops import cpu_conv  # pylint: disable=g-import-not-at-top
  out = _mutable_copy(config)
  out.conv_backend = cpu_conv.resolve_backend("auto")
  return out


# Keys that change how a run is watched, evaluated, stored or scheduled on the hardware, not
# the parameters it trains:
# a resumed run may change them (e.g. a data folder at another path on another machine).
# ``restart`` too: it decides whether there is a run to resume at all (True never resumes).
RESUME_MAY_CHANGE = ("progress_bar", "tensorboard", "log_every_steps", "eval_every_epochs",
                     "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
                     "data.dir", "data.cache_dir", "materialize_conv_inputs", "restart",
                     # Same convolution, another library: float rounding differs, not the run.
                     "conv_backend",
                     # The loaders give the same batches; these change only speed/memory.
                     "data.loader", "data.memory_limit_mb", "data.num_workers",
                     "data.read_threads", "data.prefetch_batches", "data.device_resident",
                     # Test-time augmentation changes the logged test metrics, not the weights.
                     "eval_tta")


def from_json(text: str) -> ml_collections.ConfigDict:
  """The config a run logged as ``config.json``, over :func:`base_config`: keys it gained
  after the run take their defaults, and values keep its types (a tuple logged as a JSON
  list comes back a tuple).

  Raises:
    json.JSONDecodeError: ``text`` is not JSON.
  """
  config = base_config()
  config.update(json.loads(text))
  return config


def _flat_values(config: ml_collections.ConfigDict) -> dict:
  # Each value through JSON, so that both sides of a comparison have the same types (a tuple
  # and the JSON list it was logged as compare equal).
  return {k: json.loads(json.dumps(_get(config, k), default=repr))
          for k in _flat_keys(config, expand_kwargs=True)}


def check_resume(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                 where: str = "config.json") -> None:
  """Checks that ``config`` continues the run that ``saved`` (its logged config) started.

  A checkpoint resumed under another learning rate, model or dataset would silently mix
  two experiments in one workdir and one ``metrics.jsonl``; only the keys in
  ``RESUME_MAY_CHANGE`` may differ.

  Raises:
    ValueError: other keys differ; names each with the logged and the new value.
  """
  old, new = _flat_values(saved), _flat_values(config)
  diff = [k for k in sorted(old.keys() | new.keys())
          if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]
  if diff:
    changes = "; ".join(f"{k}: {old.get(k)!r} in {where}, {new.get(k)!r} now" for k in diff)
    raise ValueError(f"cannot resume: the config differs from the run's ({changes}). "
                     f"Resume with the run's values (its command-line overrides), or train "
                     f"in a new --workdir.")
