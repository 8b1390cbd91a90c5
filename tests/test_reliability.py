"""Reliability (issue #22): a SIGKILL anywhere loses only the steps after the newest
checkpoint, and the rerun ends bit for bit as an uninterrupted run with one metrics record
per step (item 1); a signal stops training with a checkpoint that resumes bit for bit
(item 2); a save killed midway is no checkpoint and a damaged one is set aside for the
previous one (item 3); a NaN/Inf loss stops it without saving the bad state, gradient
clipping bounds the update (item 4); a used workdir can be restarted or a run initialised
from another's weights, with a checkpoint that does not fit the model named by path and
shapes (item 5).

The in-process runs train ``cifar10_cnn`` on 96 real CIFAR-10 images at batch 32 (3 steps
per epoch); the SIGKILL test runs the command line on a 170-image copy.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cnn_jax import checkpoint, metric_writer, models, optim, steps, train
from cnn_jax import data as cnn_data
from cnn_jax.config import base_config
from cnn_jax.metric_writer import read_jsonl
from tests.conftest import tiny_config, wrap_train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _load_data_once():
  """``data.load`` reads the whole decoded CIFAR-10 cache (~8 s); the runs of this module
  share one load per data config."""
  real, loaded = cnn_data.load, {}

  def load(data_config):
    key = data_config.to_json()
    if key not in loaded:
      loaded[key] = real(data_config)
    return loaded[key]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cnn_data, "load", load)
    yield


def _config(cifar10_dir, cache_dir, num_epochs=2):
  return tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=96, num_test=70,
                     batch_size=32, num_epochs=num_epochs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cifar10_dir, cache_dir):
  """An uninterrupted 2-epoch run (6 steps; checkpoints at 3 and 6): ``(workdir, final)``."""
  workdir = tmp_path_factory.mktemp("reference")
  return workdir, train.train_and_evaluate(_config(cifar10_dir, cache_dir), str(workdir))


def _newest_checkpoint(workdir) -> tuple[int, dict]:
  """The step and arrays (NumPy, as saved: step, params, batch_stats, opt_state, ...) of
  the newest checkpoint in ``workdir``."""
  step = checkpoint.saved_steps(workdir)[-1]
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "default"
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr, warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": NumPy wanted
    tree = ckptr.restore(path)
  return step, jax.tree.map(np.asarray, tree)


def _wrap_train_step(monkeypatch, after_call):
  """Makes the trainer's train step call ``after_call(n, state) -> state`` after its n-th
  call (n from 1), on the state it returns; the real step stays jitted."""
  def around(n, step, state, x, y):
    state, metrics = step(state, x, y)
    return after_call(n, state), metrics
  wrap_train_step(monkeypatch, around)


# --- Item 2: SIGTERM / SIGINT -------------------------------------------------------------


def test_sigint_mid_epoch_saves_that_step_and_the_resumed_run_is_bit_identical(
    reference, cifar10_dir, cache_dir, tmp_path, monkeypatch, capsys, request):
  """A real SIGINT after step 5 (mid-epoch 2; not a log or checkpoint step) stops the run
  with a checkpoint of step 5; the same call resumes there and ends with every array
  (parameters, BatchNorm statistics, optimizer state) equal to the uninterrupted run's."""
  ref_dir, ref_final = reference
  cfg = _config(cifar10_dir, cache_dir)
  # The trainer leaves an ignored SIGINT alone (a background job's); a pytest-xdist worker
  # may have inherited it ignored, so give this process Python's default handler first.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

  def signal_after_5(n, state):
    if n == 5:
      os.kill(os.getpid(), signal.SIGINT)
    return state

  _wrap_train_step(monkeypatch, signal_after_5)
  with pytest.raises(train.Preempted) as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  monkeypatch.undo()
  ckpt = tmp_path.absolute() / "checkpoints" / "5"
  assert (e.value.step, e.value.path, e.value.exit_code) == (5, ckpt, 130)
  assert (f"SIGINT: checkpoint saved at step 5 in {ckpt}; rerun the same command to resume\n"
          in capsys.readouterr().out)
  assert checkpoint.saved_steps(tmp_path) == [3, 5]  # complete, not an orbax temporary
  assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored
  recs = read_jsonl(tmp_path / "metrics.jsonl")
  # Step 5's metrics are logged before stopping; nothing after it ran.
  assert [r["step"] for r in recs if "train_loss" in r] == [2, 4, 5]
  assert [r["step"] for r in recs if "test_loss" in r] == [3]

  resumed = train.train_and_evaluate(cfg, str(tmp_path))
  starts = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event")]
  assert starts == [0, 5]
  (step_a, want), (step_b, got) = _newest_checkpoint(ref_dir), _newest_checkpoint(tmp_path)
  assert step_a == step_b == 6
  flat_want, flat_got = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (want, got))
  assert [p for p, _ in flat_want] == [p for p, _ in flat_got]
  for (path, a), (_, b) in zip(flat_want, flat_got):
    np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))
  assert resumed["test_loss"] == ref_final["test_loss"]
  assert resumed["test_accuracy"] == ref_final["test_accuracy"]


@pytest.mark.slow
def test_cli_sigterm_exits_143_with_a_complete_checkpoint(cifar10_dir, cache_dir, tmp_path):
  """The command line, sent SIGTERM once training runs, saves the step it reached, prints
  where and exits with 128 + 15."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "cnn_jax.train", "--config", "configs/cifar10_cnn.py",
       "--workdir", str(tmp_path), f"--config.data.dir={cifar10_dir}",
       f"--config.data.cache_dir={cache_dir}", "--config.data.num_train=96",
       "--config.data.num_test=70", "--config.batch_size=32", "--config.eval_batch_size=70",
       "--config.num_epochs=500", "--config.eval_every_epochs=500",
       "--config.log_every_steps=2", "--config.progress_bar=False",
       "--config.tensorboard=False"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    # Wait for the first train record: the loop (and its signal handlers) is running.
    while not (metrics.is_file() and any("train_loss" in r for r in read_jsonl(metrics))):
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, err[-3000:]
  m = re.search(r"^SIGTERM: checkpoint saved at step (\d+) in (\S+); rerun the same "
                r"command to resume$", out, re.M)
  assert m, out
  step = int(m.group(1))
  assert 2 <= step < 1500
  assert pathlib.Path(m.group(2)) == tmp_path.absolute() / "checkpoints" / str(step)
  assert checkpoint.saved_steps(tmp_path)[-1] == step
  assert "final:" not in out and "Traceback" not in err


# --- Item 4: numerical faults -------------------------------------------------------------


def _poison(state, path=("Dense_0", "bias")):
  flat = flax.traverse_util.flatten_dict(state.params)
  flat[path] = flat[path] * jnp.nan
  return state.replace(params=flax.traverse_util.unflatten_dict(flat))


def test_nan_loss_between_log_steps_stops_before_the_next_save(cifar10_dir, cache_dir,
                                                               tmp_path, monkeypatch):
  """Parameters turned NaN after step 4 make step 5's loss NaN. Metrics are read at log
  steps (every 4), but the epoch-end evaluation and checkpoint at step 6 come first: they
  must find it, so step 3 stays the newest checkpoint and nothing of step 6 exists."""
  cfg = _config(cifar10_dir, cache_dir, num_epochs=3)
  cfg.log_every_steps = 4
  _wrap_train_step(monkeypatch, lambda n, s: _poison(s) if n == 4 else s)
  with pytest.raises(train.NonFiniteError, match=r"train loss is nan at step 5 \(detected at "
                                                 r"step 6.*the newest checkpoint, step 3 in "
                                                 r".*checkpoints/3, is intact") as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  assert e.value.step == 5 and e.value.leaf.startswith("params/")
  assert f"first non-finite parameter or BatchNorm statistic: {e.value.leaf}." in str(e.value)
  assert checkpoint.saved_steps(tmp_path) == [3]
  assert not list((tmp_path / "checkpoints").glob("6*"))  # no save of step 6 even begun
  recs = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs if "test_loss" in r] == [3]  # no evaluation of step 6
  _, kept = _newest_checkpoint(tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(kept["params"]))


def test_nonfinite_parameters_with_a_finite_loss_are_not_saved(cifar10_dir, cache_dir,
                                                               tmp_path, monkeypatch):
  """An update that overflows leaves a finite loss for its own step: the parameters are
  checked before the epoch-end evaluation and save of step 3, which are refused naming the
  leaf (step 4's loss, the next check of the losses alone, would come too late)."""
  cfg = _config(cifar10_dir, cache_dir, num_epochs=2)
  _wrap_train_step(monkeypatch, lambda n, s: _poison(s) if n == 3 else s)
  with pytest.raises(train.NonFiniteError, match=r"parameters to be evaluated at step 3 are "
                                                 r"not finite.*params/Dense_0/bias.*no "
                                                 r"checkpoint had been written") as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  assert (e.value.step, e.value.leaf) == (3, "params/Dense_0/bias")
  assert checkpoint.saved_steps(tmp_path) == []
  assert not [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "test_loss" in r]


def _sgd(**overrides):
  c = base_config().optim
  c.lr, c.momentum, c.weight_decay, c.schedule, c.warmup_epochs = 1.0, 0.0, 0.0, "constant", 0
  c.update(overrides)
  return c


def test_grad_clip_norm_bounds_the_update():
  """optim.grad_clip_norm clips the global gradient norm (optax.clip_by_global_norm) before
  the optimizer: at lr 1 the SGD update is -g * min(1, clip / |g|)."""
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
  big = {"w": jnp.full((3, 4), 2.0), "b": jnp.full((4,), -3.0)}  # |g| = sqrt(48 + 36)
  small = jax.tree.map(lambda g: g * 1e-3, big)
  tx, _ = optim.create_optimizer(_sgd(grad_clip_norm=0.5), 10, 1)
  updates, _ = tx.update(big, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 0.5, rtol=1e-6)
  scale = 0.5 / np.sqrt(84.0)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -scale * g, rtol=1e-6), updates, big)
  updates, _ = tx.update(small, tx.init(params), params)  # under the bound: untouched
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -g, rtol=1e-6), updates, small)
  off, _ = optim.create_optimizer(_sgd(), 10, 1)  # 0 = off
  np.testing.assert_allclose(optax.tree.norm(off.update(big, off.init(params))[0]),
                             np.sqrt(84.0), rtol=1e-6)


def test_grad_clip_norm_bounds_the_train_step_update():
  """Through the train step: one SGD step at lr 1 moves the parameters by at most the clip
  norm (and by more without it, so the bound is what holds them)."""
  model = models.create("cifar10_cnn", widths=(8, 8, 8))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
  y = jnp.asarray(rng.integers(0, 10, (8,), dtype=np.int32))
  moved = {}
  for clip in (0.0, 0.01):
    tx, _ = optim.create_optimizer(_sgd(grad_clip_norm=clip), 10, 1)
    state = steps.init_state(model, tx, jax.random.key(0), (16, 16, 3))
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                         std=[64.0] * 3, seed=0))
    new, _ = step(state, x, y)
    moved[clip] = float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, new.params,
                                                       before)))
  assert moved[0.01] <= 0.01 * (1 + 1e-4) and moved[0.01] > 0.009
  assert moved[0.0] > 0.1


# --- Item 5: restart, init_from, checkpoints that do not fit ------------------------------


def test_restart_moves_the_previous_run_aside_and_starts_from_scratch(
    reference, cifar10_dir, cache_dir, tmp_path):
  ref_dir, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  (workdir / "NOTES.md").write_text("mine\n")
  old = {f: (workdir / f).read_bytes() for f in ("metrics.jsonl", "config.json")}
  cfg = _config(cifar10_dir, cache_dir, num_epochs=1)
  cfg.optim.lr = 0.05  # a resume would refuse this config
  cfg.restart = True
  # An init_from that holds nothing is refused before anything is moved.
  cfg.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match=r"config key init_from = '.*nothing'.*holds "
                                              r"no complete checkpoint"):
    train.train_and_evaluate(cfg, str(workdir))
  assert checkpoint.saved_steps(workdir) == [3, 6] and not list(workdir.glob("previous-*"))
  cfg.init_from = ""
  final = train.train_and_evaluate(cfg, str(workdir))
  assert final["step"] == 3
  (aside,) = workdir.glob("previous-*")
  assert re.fullmatch(r"previous-\d{8}-\d{6}", aside.name)
  assert checkpoint.saved_steps(aside) == [3, 6]
  assert old == {f: (aside / f).read_bytes() for f in old}
  assert (workdir / "NOTES.md").read_text() == "mine\n"  # not the run's: stays
  assert checkpoint.saved_steps(workdir) == [3]
  recs = read_jsonl(workdir / "metrics.jsonl")
  starts = [r for r in recs if r.get("event") == "start"]
  assert len(starts) == 1 and starts[0]["step"] == 0
  assert starts[0]["previous_run"] == str(aside)
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.05


def test_init_from_takes_weights_and_batchnorm_statistics_only(
    reference, cifar10_dir, cache_dir, tmp_path, monkeypatch):
  """A fresh AdamW run with an EMA, initialised from the SGD reference run: its first step
  sees the reference's parameters and BatchNorm statistics, step 0, a fresh optimizer
  state, and an EMA starting at the loaded weights."""
  ref_dir, _ = reference
  ref_step, ref = _newest_checkpoint(ref_dir)
  cfg = _config(cifar10_dir, cache_dir, num_epochs=1)
  cfg.init_from, cfg.optim.name, cfg.ema_decay = str(ref_dir), "adamw", 0.5
  first = {}

  def record_first(n, step, state, x, y):
    if n == 1:
      first.update(jax.tree.map(np.asarray, {"step": state.step, "params": state.params,
                                             "batch_stats": state.batch_stats,
                                             "opt_state": state.opt_state,
                                             "ema": state.ema}))
    return step(state, x, y)

  wrap_train_step(monkeypatch, record_first)
  train.train_and_evaluate(cfg, str(tmp_path))
  monkeypatch.undo()
  assert first["step"] == 0
  for c in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, first[c], ref[c])
    jax.tree.map(np.testing.assert_array_equal, first["ema"][c], ref[c])
  adam = first["opt_state"][0][0]  # chain -> adamw's scale_by_adam state
  assert int(adam.count) == 0
  assert all(not x.any() for x in jax.tree.leaves((adam.mu, adam.nu)))
  start = read_jsonl(tmp_path / "metrics.jsonl")[0]
  assert start["init_from"] == str(ref_dir.absolute() / "checkpoints" / str(ref_step))
  assert start["init_from_step"] == ref_step == 6


def test_init_from_another_architecture_names_the_first_mismatched_path(
    reference, cifar10_dir, cache_dir, tmp_path):
  ref_dir, _ = reference
  cfg = _config(cifar10_dir, cache_dir)
  cfg.init_from = str(ref_dir)
  cfg.model.kwargs.widths = (32, 64, 256)
  with pytest.raises(ValueError, match=re.escape(
      "params/ConvBNReLU_4/BatchNorm_0/bias has shape (128,) in the checkpoint, (256,) in "
      "the model (and ") + r"\d+ more mismatched arrays\)") as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  assert f"checkpoint {ref_dir.absolute() / 'checkpoints' / '6'}" in str(e.value)
  assert checkpoint.saved_steps(tmp_path) == []


def _state(num_classes):
  model = models.create("cifar10_cnn", num_classes=num_classes)
  tx, _ = optim.create_optimizer(base_config().optim, 10, 1)
  return steps.init_state(model, tx, jax.random.key(num_classes), (32, 32, 3))


def test_resume_into_a_changed_model_names_the_path_and_both_shapes(tmp_path):
  """A normal resume whose model changed under the same config (e.g. edited model code):
  orbax's error names no array; ours names the first one and both shapes."""
  mngr = checkpoint.manager(tmp_path, 2)
  checkpoint.save(mngr, 7, _state(10))
  mngr.wait_until_finished()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  wider = checkpoint.abstract_like(jax.eval_shape(lambda: _state(100)), sharding)
  with pytest.raises(ValueError, match=re.escape(
      f"cannot resume from checkpoint {tmp_path.absolute() / 'checkpoints' / '7'}: it does "
      f"not fit the model this config builds: params/Dense_0/bias has shape (10,) in the "
      f"checkpoint, (100,) in the model (and ")):
    checkpoint.restore_latest(mngr, wider)
  same = checkpoint.abstract_like(jax.eval_shape(lambda: _state(10)), sharding)
  assert int(checkpoint.restore_latest(mngr, same).step) == 0
  mngr.close()


def test_restore_variables_skip_keeps_the_fresh_leaves(reference):
  """The hook transfer learning builds on: paths in ``skip`` keep their fresh value and are
  not compared, everything else comes from the checkpoint."""
  ref_dir, _ = reference
  _, ref = _newest_checkpoint(ref_dir)
  fresh = _state(100)
  fresh = {"params": fresh.params, "batch_stats": fresh.batch_stats}
  with pytest.raises(ValueError, match=r"params/Dense_0/bias has shape \(10,\)"):
    checkpoint.restore_variables(ref_dir, fresh)
  got, step, _ = checkpoint.restore_variables(ref_dir, fresh, skip=("params/Dense_0",))
  assert step == 6
  np.testing.assert_array_equal(got["params"]["Dense_0"]["kernel"],
                                fresh["params"]["Dense_0"]["kernel"])
  del got["params"]["Dense_0"], ref["params"]["Dense_0"]
  jax.tree.map(np.testing.assert_array_equal, {c: got[c] for c in ("params", "batch_stats")},
               {c: ref[c] for c in ("params", "batch_stats")})


# --- Item 1: kill anywhere, resume exactly; no duplicate metrics records -------------------


def test_rewind_moves_records_past_the_step_aside_and_marks_later_starts(tmp_path):
  """metric_writer.rewind: train/eval records after the resumed step (and a line torn by a
  kill) move to metrics.discarded.jsonl, annotated; start records stay, a later one marked."""
  recs = [{"event": "start", "step": 0}, {"step": 2, "train_loss": 1.0},
          {"step": 3, "test_loss": 2.0}, {"step": 4, "train_loss": 0.5},
          {"event": "start", "step": 4}, {"step": 6, "train_loss": 0.4},
          {"step": 6, "test_loss": 1.5}]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 7, "tra')
  assert metric_writer.rewind(tmp_path, 3) == 4
  assert read_jsonl(path) == recs[:3] + [{**recs[4], "rolled_back_to_step": 3}]
  assert read_jsonl(tmp_path / "metrics.discarded.jsonl") == [
      {**r, "discarded_when_resuming_at": 3} for r in (recs[3], recs[5], recs[6])] + [
          {"unparsable_line": '{"step": 7, "tra', "discarded_when_resuming_at": 3}]
  assert not list(tmp_path.glob(".metrics.jsonl.*"))  # the temporary file was renamed
  before = path.read_bytes()
  assert metric_writer.rewind(tmp_path, 3) == 0 and path.read_bytes() == before
  # A resume at the last step repeats the final evaluation: its old record moves aside.
  assert metric_writer.rewind(tmp_path, 3, redo_eval=True) == 1
  assert [r["step"] for r in read_jsonl(path) if "test_loss" in r] == []
  assert metric_writer.rewind(tmp_path / "nothing", 3) == 0


def _small_cifar(src: pathlib.Path, dst: pathlib.Path, n_train: int, n_test: int):
  """A 10-class CIFAR-10 folder of ``n_train`` / ``n_test`` real images per class: the
  subprocesses below decode it in milliseconds instead of reading the full cache."""
  for split, n in (("train", n_train), ("test", n_test)):
    for c in sorted(p.name for p in (src / split).iterdir()):
      (dst / split / c).mkdir(parents=True)
      for f in sorted((src / split / c).iterdir())[:n]:
        shutil.copy(f, dst / split / c / f.name)
  return dst


_TINY_CONFIG = '''
from cnn_jax.config import base_config

def get_config():
  c = base_config()
  c.model.name = "cifar10_cnn"
  c.model.kwargs.widths = (8, 16, 16)
  c.data.dir, c.data.cache_dir = {data!r}, {cache!r}
  c.batch_size, c.eval_batch_size, c.num_epochs = 20, 70, 10  # 5 steps/epoch, 50 steps
  c.optim.warmup_epochs = 0.0
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_epochs = 1, 4, 1
  c.progress_bar, c.tensorboard = False, False
  return c
'''


def _records(workdir) -> list[dict]:
  """The complete lines of a metrics.jsonl another process is writing."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  out = []
  for line in (path.read_text().splitlines() if path.is_file() else []):
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # being written
  return out


def _landing(workdir) -> str:
  """Where a kill landed: the newest train step logged, the complete checkpoints, and any
  save in progress (an orbax temporary directory)."""
  recs = [r for r in _records(workdir) if "train_loss" in r]
  ckpts = workdir / "checkpoints"
  tmp = sorted(p.name for p in ckpts.iterdir() if "tmp" in p.name) if ckpts.is_dir() else []
  return (f"after train step {recs[-1]['step'] if recs else None}, complete checkpoints "
          f"{checkpoint.saved_steps(workdir)}, save in progress: {tmp or 'none'}")


def _run_cli(config_path, workdir, log, kill_when=None, timeout=300) -> int:
  """Runs the training command line; with ``kill_when(workdir) -> bool``, SIGKILLs it as
  soon as that holds (polled every 10 ms) and prints where it landed. Returns the exit
  status (-9 when killed)."""
  with open(log, "a") as out:
    proc = subprocess.Popen([sys.executable, "-m", "cnn_jax.train", "--config",
                             str(config_path), "--workdir", str(workdir)], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
      if kill_when is not None and kill_when(workdir):
        os.kill(proc.pid, signal.SIGKILL)
        print(f"SIGKILL {_landing(workdir)}")
        break
      time.sleep(0.01)
    return proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()


@pytest.mark.slow  # CI time (~90 s); bit-identical resume stays in CI via the SIGINT test
def test_sigkill_anywhere_then_rerun_ends_bit_identical_with_one_record_per_step(
    cifar10_dir, tmp_path):
  """The command line killed with SIGKILL (no handler runs) before its first checkpoint,
  just after its first checkpoint, and mid-run after a resume, then rerun until done, ends
  with parameters, BatchNorm statistics and optimizer state equal to an uninterrupted run's
  bit for bit, and metrics.jsonl holds exactly one train record per step and one eval
  record per evaluation (the records past each resumed checkpoint moved aside, counted)."""
  data = _small_cifar(cifar10_dir, tmp_path / "data", 10, 7)  # 100 train, 70 test images
  config = tmp_path / "tiny_config.py"
  config.write_text(_TINY_CONFIG.format(data=str(data), cache=str(tmp_path / "cache")))
  log = tmp_path / "log.txt"
  ref, run = tmp_path / "ref", tmp_path / "run"
  assert _run_cli(config, ref, log) == 0, log.read_text()[-3000:]

  def this_run(workdir, n_starts, min_steps):
    """This process wrote its start record (the ``n_starts + 1``-th) and then a train
    record ``min_steps`` or more steps after it."""
    recs = _records(workdir)
    starts = [i for i, r in enumerate(recs) if r.get("event") == "start"]
    return len(starts) > n_starts and any(
        r.get("step", -1) >= recs[starts[-1]]["step"] + min_steps
        for r in recs[starts[-1]:] if "train_loss" in r)

  kills = [lambda w, n: this_run(w, n, 1),  # at its first record: likely no checkpoint yet
           lambda w, n: this_run(w, n, 1) and bool(checkpoint.saved_steps(w)),
           lambda w, n: this_run(w, n, 6)]  # mid-run, after a resume
  for k, kill_when in enumerate(kills):
    rc = _run_cli(config, run, log, lambda w, f=kill_when, n=k: f(w, n))
    assert rc == -signal.SIGKILL, (k, rc, log.read_text()[-3000:])
  assert _run_cli(config, run, log) == 0, log.read_text()[-3000:]

  (step_a, want), (step_b, got) = _newest_checkpoint(ref), _newest_checkpoint(run)
  assert step_a == step_b == 50
  flat_want, flat_got = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (want, got))
  assert [p for p, _ in flat_want] == [p for p, _ in flat_got]
  diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for (_, a), (_, b) in zip(flat_want, flat_got) if np.size(a))
  print(f"final state vs the uninterrupted run: {len(flat_want)} arrays, max |difference| "
        f"{diff}")
  for (path, a), (_, b) in zip(flat_want, flat_got):
    np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))

  recs = read_jsonl(run / "metrics.jsonl")
  print(f"start records at steps {[r['step'] for r in recs if r.get('event') == 'start']}, "
        f"records moved aside {[r.get('discarded_records') for r in recs if r.get('event')]}")
  assert [r["step"] for r in recs if "train_loss" in r] == list(range(1, 51))
  assert [r["step"] for r in recs if "test_loss" in r] == list(range(5, 51, 5))
  ref_evals = [r for r in read_jsonl(ref / "metrics.jsonl") if "test_loss" in r]
  assert ([r["test_loss"] for r in recs if "test_loss" in r]
          == [r["test_loss"] for r in ref_evals])
  starts = [r["step"] for r in recs if r.get("event") == "start"]
  assert len(starts) == 4 and starts == sorted(starts) and starts[0] == 0 and starts[2] > 0
  # Which records were logged past the newest checkpoint depends on when each kill landed;
  # each resume counts those it moved aside in its start record.
  path = run / "metrics.discarded.jsonl"
  discarded = read_jsonl(path) if path.is_file() else []
  assert sum(r["discarded_records"] for r in recs if r.get("event")) == len(discarded)
  assert all(r["step"] > r["discarded_when_resuming_at"] for r in discarded
             if "unparsable_line" not in r)
  assert "Traceback" not in log.read_text()


# --- Item 3: atomic and verified checkpoints ----------------------------------------------


_KILLED_SAVE = '''
import os, signal, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from cnn_jax import checkpoint

mngr = checkpoint.manager(sys.argv[1], 3)
checkpoint.save(mngr, 3, {"w": jnp.arange(1000.0), "b": jnp.ones(7)})
mngr.wait_until_finished()

async def killed(self, *args, **kwargs):  # every file is written; the rename is next
  os.kill(os.getpid(), signal.SIGKILL)

atomicity.AtomicRenameTemporaryPath.finalize = killed
checkpoint.save(mngr, 6, {"w": jnp.arange(1000.0) + 6, "b": jnp.ones(7)})
mngr.wait_until_finished()
print("not killed")
'''


def test_a_save_killed_before_its_rename_is_not_a_checkpoint(tmp_path):
  """A process SIGKILLed while orbax finalises a save (its files written, the directory
  not yet renamed) leaves a temporary directory that is not listed or restored; saving that
  step again replaces it."""
  script = tmp_path / "killed_save.py"
  script.write_text(_KILLED_SAVE)
  r = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr[-3000:]
  ckpts = tmp_path / "checkpoints"
  (tmp,) = [p for p in ckpts.iterdir() if p.name.startswith("6")]
  assert ".orbax-checkpoint-tmp" in tmp.name and any(tmp.rglob("*"))
  assert checkpoint.saved_steps(tmp_path) == [3]
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32, sharding=sharding),
              "b": jax.ShapeDtypeStruct((7,), jnp.float32, sharding=sharding)}
  mngr = checkpoint.manager(tmp_path, 3)
  assert mngr.latest_step() == 3
  np.testing.assert_array_equal(checkpoint.restore_latest(mngr, abstract)["w"],
                                np.arange(1000.0))
  checkpoint.save(mngr, 6, {"w": jnp.arange(1000.0) + 6, "b": jnp.ones(7)})
  mngr.wait_until_finished()
  assert sorted(p.name for p in ckpts.iterdir()) == ["3", "6"]
  np.testing.assert_array_equal(checkpoint.restore_latest(mngr, abstract)["w"],
                                np.arange(1000.0) + 6)
  mngr.close()


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  f = _largest_file(step_dir)
  os.truncate(f, f.stat().st_size // 2)


def _overwrite(step_dir):  # same size, other bytes: orbax reads them without complaint
  f = _largest_file(step_dir)
  b = bytearray(f.read_bytes())
  b[len(b) // 3:len(b) // 3 + 64] = bytes(x ^ 0xFF for x in b[len(b) // 3:len(b) // 3 + 64])
  f.write_bytes(bytes(b))


def _flip_recorded_crc(step_dir):
  """Bytes that changed after the save without any reader noticing (bit rot under zstd's
  raw blocks), made deterministic: the recorded CRC32 of one array no longer fits its bytes."""
  f = step_dir / "_CHECKPOINT_METADATA"
  meta = json.loads(f.read_text())
  sums = meta["custom_metadata"]["cnn_jax_crc32"]
  key = sorted(k for k in sums if k.startswith("params/"))[0]
  sums[key] = int(sums[key]) ^ 1
  f.write_text(json.dumps(meta))


_DAMAGES = {
    "truncated array file": (_truncate, r"its arrays cannot be read"),
    # Either orbax reads the other bytes without complaint and the CRC32 catches them, or
    # they hit a zstd frame and TensorStore refuses them: which, depends on the file layout.
    "overwritten array bytes": (_overwrite, r"(params/\S+ does not match the CRC32 recorded "
                                            r"when it was saved|its arrays cannot be read "
                                            r"\(params/\S+: )"),
    "bytes that differ from their CRC32": (_flip_recorded_crc, r"params/\S+ does not match "
                                                               r"the CRC32 recorded when it "
                                                               r"was saved"),
    "deleted _METADATA": (lambda d: (d / "default" / "_METADATA").unlink(),
                          r"its metadata cannot be read \(FileNotFoundError"),
    "deleted _CHECKPOINT_METADATA": (lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
                                     r"its metadata cannot be read \(FileNotFoundError"),
}


def _two_checkpoints(workdir):
  """Checkpoints 3 and 6 of two different cifar10_cnn states; returns both states."""
  s3 = _state(10)
  s6 = s3.replace(step=s3.step + 6, params=jax.tree.map(lambda x: x + 1.0, s3.params))
  mngr = checkpoint.manager(workdir, 3)
  checkpoint.save(mngr, 3, s3)
  checkpoint.save(mngr, 6, s6)
  mngr.wait_until_finished()
  mngr.close()
  return s3, s6


@pytest.mark.parametrize("damage", list(_DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
    tmp_path, capsys, damage):
  damage_fn, why = _DAMAGES[damage]
  s3, _ = _two_checkpoints(tmp_path)
  step6 = tmp_path.absolute() / "checkpoints" / "6"
  damage_fn(step6)
  mngr = checkpoint.manager(tmp_path, 3)
  assert mngr.latest_step() == 6  # orbax alone would resume from it
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(jax.eval_shape(lambda: _state(10)), sharding)
  got = checkpoint.restore_latest(mngr, abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got),
               jax.tree.map(np.asarray, s3))
  aside = tmp_path.absolute() / "checkpoints.damaged" / "6"
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 1, out
  assert re.fullmatch(re.escape(f"cnn_jax: checkpoint {step6} is damaged (") + why + ".*"
                      + re.escape(f"); moved to {aside}; falling back to step 3"), out[0])
  assert aside.is_dir() and any(aside.rglob("*"))  # kept, not deleted
  assert mngr.latest_step() == 3 and checkpoint.saved_steps(tmp_path) == [3]
  checkpoint.save(mngr, 6, got)  # training can write step 6 again
  mngr.wait_until_finished()
  assert checkpoint.saved_steps(tmp_path) == [3, 6]
  mngr.close()


def test_when_every_checkpoint_is_damaged_resume_stops_and_moves_nothing(tmp_path, capsys):
  _two_checkpoints(tmp_path)
  ckpts = tmp_path.absolute() / "checkpoints"
  _truncate(ckpts / "6")
  (ckpts / "3" / "default" / "_METADATA").unlink()
  mngr = checkpoint.manager(tmp_path, 3)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(jax.eval_shape(lambda: _state(10)), sharding)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=re.escape(f"no intact checkpoint in {ckpts}: {ckpts / '6'}: its "
                                     f"arrays cannot be read")) as e:
    checkpoint.restore_latest(mngr, abstract)
  assert list(e.value.damaged) == [ckpts / "6", ckpts / "3"]
  assert "restart = True" in str(e.value)
  assert sorted(p.name for p in ckpts.iterdir()) == ["3", "6"]
  assert not (tmp_path / "checkpoints.damaged").exists() and capsys.readouterr().out == ""
  mngr.close()


def test_restore_never_unpickles(tmp_path, monkeypatch):
  """Checkpoints are TensorStore arrays and JSON metadata: a restore works with pickle's
  loaders disabled."""
  import pickle  # pylint: disable=g-import-not-at-top
  s3, s6 = _two_checkpoints(tmp_path)

  def refuse(*args, **kwargs):
    raise AssertionError("a checkpoint restore unpickled something")

  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  mngr = checkpoint.manager(tmp_path, 3)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(jax.eval_shape(lambda: _state(10)), sharding)
  got = checkpoint.restore_latest(mngr, abstract)
  mngr.close()
  assert int(got.step) == int(s6.step)
  fresh = {"params": jax.tree.map(jnp.zeros_like, s3.params),
           "batch_stats": jax.tree.map(jnp.zeros_like, s3.batch_stats)}
  variables, step, _ = checkpoint.restore_variables(tmp_path, fresh)
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, variables["params"], s6.params)


def test_init_from_a_damaged_checkpoint_names_it(tmp_path):
  _two_checkpoints(tmp_path)
  step6 = tmp_path.absolute() / "checkpoints" / "6"
  _overwrite(step6)
  s = _state(10)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=re.escape(f"cannot initialise from checkpoint {step6}: it is "
                                     f"damaged (") + r"(its arrays cannot be read \()?params/"):
    checkpoint.restore_variables(tmp_path, {"params": s.params, "batch_stats": s.batch_stats})


def test_resume_past_a_damaged_checkpoint_ends_bit_identical_without_duplicate_records(
    reference, cifar10_dir, cache_dir, tmp_path, capsys):
  """The finished reference run with its final checkpoint (step 6) damaged: the rerun falls
  back to step 3, trains steps 4-6 again and ends equal to the reference, with the records
  of steps 4-6 moved aside, not duplicated."""
  ref_dir, ref_final = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  _truncate(workdir / "checkpoints" / "6")
  final = train.train_and_evaluate(_config(cifar10_dir, cache_dir), str(workdir))
  out = capsys.readouterr().out
  assert f"cnn_jax: checkpoint {workdir.absolute() / 'checkpoints' / '6'} is damaged" in out
  assert (workdir / "checkpoints.damaged" / "6").is_dir()
  assert final["test_loss"] == ref_final["test_loss"]
  (_, want), (_, got) = _newest_checkpoint(ref_dir), _newest_checkpoint(workdir)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  recs = read_jsonl(workdir / "metrics.jsonl")
  ref_recs = read_jsonl(ref_dir / "metrics.jsonl")
  assert ([r["step"] for r in recs if "train_loss" in r]
          == [r["step"] for r in ref_recs if "train_loss" in r] == [2, 4, 6])
  assert [r["step"] for r in recs if "test_loss" in r] == [3, 6]
  start = [r for r in recs if r.get("event") == "start"][-1]
  assert start["step"] == 3 and start["discarded_records"] == 3  # train 4 and 6, eval 6
  assert len(read_jsonl(workdir / "metrics.discarded.jsonl")) == 3


def test_a_run_whose_checkpoints_are_all_damaged_stops_and_overwrites_nothing(
    reference, cifar10_dir, cache_dir, tmp_path):
  ref_dir, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  for step in (3, 6):
    _truncate(workdir / "checkpoints" / str(step))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=re.escape(f"no intact checkpoint in "
                                     f"{workdir.absolute() / 'checkpoints'}: ")):
    train.train_and_evaluate(_config(cifar10_dir, cache_dir), str(workdir))
  assert before == {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
