"""Transfer learning (issue #25 item 5; cnn_jax/transfer.py): a run initialised from another
run's checkpoint re-initialises its head and trains everything (finetune), the head alone
with the backbone's parameters and BatchNorm statistics untouched (linear_probe), or the
head and then one more stage per interval, top down (progressive); bad config combinations,
and a checkpoint that does not fit outside the head, are refused by name.

The runs train ``cifar10_cnn`` with widths (8, 8, 8) (stages ``ConvBNReLU_0`` ...
``ConvBNReLU_5``, ``Dense_0``) on random 16x16 images (``cnn_jax.data.load`` is replaced):
64 training images at batch 32, 2 steps per epoch.
"""

import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn_jax import checkpoint, evaluate, models, optim, train, transfer
from cnn_jax import data as cnn_data
from cnn_jax.data import loader as data_loader
from cnn_jax.checkpoint import key_path_str
from cnn_jax.config import base_config, load_config_file, validate
from tests.conftest import wrap_train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKBONE = tuple(f"ConvBNReLU_{i}" for i in range(6))
COLLECTIONS = ("params", "batch_stats")
_SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _dataset(num_classes: int, seed: int) -> cnn_data.Dataset:
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  labels = lambda n: (np.arange(n) % num_classes).astype(np.int32)
  return cnn_data.Dataset(images(64), labels(64), images(16), labels(16),
                          tuple(f"class{i}" for i in range(num_classes)),
                          np.full(3, 127.5, np.float32), np.full(3, 74.0, np.float32),
                          f"synthetic, {num_classes} classes")


# config key data.name -> the data: the source task, a new one with fewer classes, and a new
# one with as many classes as the source (its head has the source's shapes).
DATASETS = {"source10": _dataset(10, 0), "target5": _dataset(5, 1), "target10": _dataset(10, 2)}


@pytest.fixture(scope="module", autouse=True)
def _synthetic_data():
  with pytest.MonkeyPatch.context() as mp:
    fake = lambda data_config: DATASETS[data_config.name]
    mp.setattr(cnn_data, "load", fake)
    mp.setattr(data_loader, "load", fake)  # the in-memory loader's own reference
    yield


def _config(data_name, num_epochs=2, init_from="", mode="finetune", head=()):
  c = base_config()
  c.model.name = "cifar10_cnn"
  c.model.kwargs.widths = (8, 8, 8)
  c.data.name = data_name
  c.data.loader = "memory"  # 'auto' would look the synthetic names up in the datasets table
  c.batch_size, c.eval_batch_size, c.num_epochs = 32, 16, num_epochs
  c.optim.warmup_epochs = 0.0
  c.log_every_steps = 2
  c.progress_bar = c.tensorboard = False
  c.init_from, c.transfer.mode, c.transfer.head = str(init_from), mode, head
  return c


def _flat(tree) -> dict:
  """``{'Dense_0/kernel': array}``."""
  return {key_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host(state) -> dict:
  """Copies (not views: the step donates the state) of both collections, flattened."""
  return {c: {p: np.array(x) for p, x in _flat(getattr(state, c)).items()}
          for c in COLLECTIONS}


def _same_bits(a, b) -> bool:
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A 2-epoch run on the 10-class source task: ``(workdir, its newest checkpoint's
  collections, flattened)``."""
  workdir = tmp_path_factory.mktemp("source")
  train.train_and_evaluate(_config("source10"), str(workdir))
  step = checkpoint.saved_steps(workdir)[-1]
  path = workdir.absolute() / "checkpoints" / str(step) / "default"
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr, warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": NumPy wanted
    tree = ckptr.restore(path)
  return workdir, {c: {p: np.asarray(x) for p, x in _flat(tree[c]).items()}
                   for c in COLLECTIONS}


def _record_states(monkeypatch) -> list:
  """Makes the trainer's train step append :func:`_host` of the state before its first call
  and after every call to the returned list; the real step stays jitted."""
  seen = []

  def record(n, step, state, x, y):
    if n == 1:
      seen.append(_host(state))
    state, metrics = step(state, x, y)
    seen.append(_host(state))
    return state, metrics

  wrap_train_step(monkeypatch, record)
  return seen


def _changed_groups(before: dict, after: dict) -> dict:
  """``{collection: top-level groups with a leaf whose bits differ}``."""
  return {c: {p.split("/")[0] for p, x in after[c].items() if not _same_bits(x, before[c][p])}
          for c in COLLECTIONS}


def test_linear_probe_trains_only_a_new_head_and_keeps_every_batchnorm_statistic(
    source, tmp_path, monkeypatch, capsys):
  """5 classes from a 10-class source, transfer.head automatic: Dense_0 is re-initialised
  with 5 outputs; after 4 steps every other parameter and every BatchNorm statistic has the
  source checkpoint's bits, while the head has moved."""
  src_dir, src = source
  seen = _record_states(monkeypatch)
  train.train_and_evaluate(_config("target5", init_from=src_dir, mode="linear_probe"),
                           str(tmp_path))
  monkeypatch.undo()
  assert len(seen) == 5
  first, last = seen[0], seen[-1]
  head = ("Dense_0/bias", "Dense_0/kernel")
  for p in head:
    assert first["params"][p].shape == src["params"][p].shape[:-1] + (5,)
  assert src["params"]["Dense_0/bias"].shape == (10,)
  for c in COLLECTIONS:
    assert set(last[c]) == set(src[c])
    for p, x in last[c].items():
      if c == "params" and p in head:
        assert not np.array_equal(x, first[c][p]), p  # trained
      else:
        assert _same_bits(x, src[c][p]), f"{c}/{p} changed"
  assert last["batch_stats"]  # the model has BatchNorm: the check above is not vacuous
  out = capsys.readouterr().out
  kernel = src["params"]["Dense_0/kernel"].shape
  assert ("cnn_jax: init_from: re-initialised, not restored (the classifier, whose class "
          "count changed): params/Dense_0/bias (10,) in the checkpoint -> (5,), "
          f"params/Dense_0/kernel {kernel} in the checkpoint -> {kernel[:-1] + (5,)}\n") in out
  assert ("cnn_jax: transfer.mode = 'linear_probe': only the head (Dense_0) trains; the rest "
          "is frozen") in out


def test_finetune_reinitialises_a_named_head_of_equal_shape_and_trains_everything(
    source, tmp_path, monkeypatch, capsys):
  """10 classes from a 10-class source (CIFAR-10 -> Tiny-ImageNet-10): the head has the
  source's shapes, and transfer.head = ('Dense_0',) re-initialises it by name to the new
  run's fresh initialisation; everything else starts at the source's values, and two
  fine-tuning steps move every parameter and BatchNorm statistic."""
  src_dir, src = source
  cfg = _config("target10", num_epochs=1, init_from=src_dir, head=("Dense_0",))
  seen = _record_states(monkeypatch)
  train.train_and_evaluate(cfg, str(tmp_path))
  monkeypatch.undo()
  assert len(seen) == 3
  first, last = seen[0], seen[-1]
  run = train.build_run(cfg, DATASETS["target10"], _SHARDING)
  # The new run's initial head (jitted alone: the whole initialisation compiles 5x slower).
  fresh = _flat(jax.jit(lambda key: run.init(key).params["Dense_0"])(jax.random.key(cfg.seed)))
  for c in COLLECTIONS:
    for p, x in first[c].items():
      if c == "params" and p.startswith("Dense_0/"):
        assert x.shape == src[c][p].shape and not np.allclose(x, src[c][p]), p
        np.testing.assert_allclose(x, fresh[p.removeprefix("Dense_0/")], rtol=1e-6, err_msg=p)
      else:
        assert _same_bits(x, src[c][p]), f"{c}/{p}"
  changed = _changed_groups(first, last)
  assert changed == {"params": set(BACKBONE) | {"Dense_0"}, "batch_stats": set(BACKBONE)}
  for c in COLLECTIONS:  # every leaf, not only a leaf per group
    assert all(not _same_bits(x, first[c][p]) for p, x in last[c].items())
  assert ("re-initialised, not restored (named by config key transfer.head): "
          "params/Dense_0/bias (10,) in the checkpoint -> (10,)") in capsys.readouterr().out


def test_progressive_unfreezes_top_down_one_stage_per_interval(source, tmp_path, monkeypatch,
                                                               capsys):
  """unfreeze_every_epochs = 0.5 at 2 steps per epoch: Dense_0 trains from step 0, then
  ConvBNReLU_5 from step 1, ConvBNReLU_4 from step 2, ... ConvBNReLU_0 from step 6. At each
  step exactly those parameters move, and the running statistics of the still-frozen stages
  keep their bits; the checkpoint (optimizer state with the schedule's count) restores."""
  src_dir, _ = source
  cfg = _config("target5", num_epochs=4, init_from=src_dir, mode="progressive")
  cfg.transfer.unfreeze_every_epochs = 0.5
  seen = _record_states(monkeypatch)
  train.train_and_evaluate(cfg, str(tmp_path))
  monkeypatch.undo()
  assert len(seen) == 9
  start = {"Dense_0": 0, **{f"ConvBNReLU_{i}": 6 - i for i in range(6)}}
  for t in range(8):
    trains = {g for g, s in start.items() if s <= t}
    assert _changed_groups(seen[t], seen[t + 1]) == {
        "params": trains, "batch_stats": trains - {"Dense_0"}}, f"step {t}"
  assert ("cnn_jax: transfer.mode = 'progressive': the head (Dense_0) trains from step 0, "
          "then, top down, ConvBNReLU_5 at step 1 (epoch 0.5); ConvBNReLU_4 at step 2 "
          "(epoch 1); ConvBNReLU_3 at step 3 (epoch 1.5); ConvBNReLU_2 at step 4 (epoch 2); "
          "ConvBNReLU_1 at step 5 (epoch 2.5); ConvBNReLU_0 at step 6 (epoch 3)\n"
          ) in capsys.readouterr().out
  restored = evaluate.restore_run(tmp_path)  # the config's optimizer tree, from config.json
  assert int(restored.state.step) == 8
  assert isinstance(restored.state.opt_state, transfer.UnfreezeState)
  assert int(restored.state.opt_state.count) == 8
  for c in COLLECTIONS:
    for p, x in _host(restored.state)[c].items():
      assert _same_bits(x, seen[-1][c][p]), f"{c}/{p}"


def test_a_mismatch_outside_the_head_is_refused_by_path(source):
  """A wider last stage: the head (named) is re-initialised whatever its shape, but the first
  stage that differs is refused naming its path and both shapes. (The restore of a run's
  start, on the state's shapes: what train_and_evaluate calls after initialising it.)"""
  src_dir, _ = source
  cfg = _config("target5", init_from=src_dir, mode="linear_probe", head=("Dense_0",))
  cfg.model.kwargs.widths = (8, 8, 16)
  run = train.build_run(cfg, DATASETS["target5"], _SHARDING)
  with pytest.raises(ValueError, match=re.escape(
      f"cannot initialise from checkpoint {src_dir.absolute() / 'checkpoints' / '4'}: it does "
      f"not fit the model this config builds: params/ConvBNReLU_4/BatchNorm_0/bias has shape "
      f"(8,) in the checkpoint, (16,) in the model (and ")) as e:
    # pylint: disable-next=protected-access
    train._init_from(str(src_dir), run, run.abstract_state, _SHARDING)
  assert "Dense_0" not in str(e.value)


def _plan(mode="finetune", head=(), num_classes=10, every=1.0, widths=(8, 8, 8)):
  t = base_config().transfer
  t.mode, t.head, t.unfreeze_every_epochs = mode, head, every
  model = models.create("cifar10_cnn", num_classes=num_classes, widths=widths)
  return transfer.make_plan(t, model, (16, 16, 3), num_classes, 2)


def test_reinit_leaves_auto_only_for_a_new_class_count_named_head_always():
  plan = _plan()
  assert plan.head == ("Dense_0",) and not plan.head_explicit
  _, _, params = transfer.forward_stages(models.create("cifar10_cnn", widths=(8, 8, 8)),
                                         (16, 16, 3), 10)
  fresh = {"params": params, "batch_stats": {}}
  same = {f"params/{p}": tuple(x.shape) for p, x in _flat(params).items()}
  assert transfer.reinit_leaves(plan, same, fresh) == []  # a warm start: restored
  hundred = {**same, "params/Dense_0/bias": (100,), "params/Dense_0/kernel": (8, 100)}
  assert transfer.reinit_leaves(plan, hundred, fresh) == [
      ("params/Dense_0/bias", (100,), (10,)), ("params/Dense_0/kernel", (8, 100), (8, 10))]
  wider = {**hundred, "params/Dense_0/kernel": (16, 100)}  # not only the class axis
  assert transfer.reinit_leaves(plan, wider, fresh) == []  # left to the restore to refuse
  named = _plan(head=("Dense_0",))
  assert named.head_explicit
  assert transfer.reinit_leaves(named, same, fresh) == [
      ("params/Dense_0/bias", (10,), (10,)), ("params/Dense_0/kernel", (8, 10), (8, 10))]


def test_stages_follow_the_forward_pass_for_any_family():
  """Stages come from the order of the forward pass, not from the (sorted) names:
  BasicBlock_10 is above BasicBlock_9; a ViT's root parameters are the lowest stages."""
  stages, head, _ = transfer.forward_stages(models.create("resnet32", num_classes=7),
                                            (32, 32, 3), 7)
  assert stages == ("Conv_0", "BatchNorm_0", *(f"BasicBlock_{i}" for i in range(15)),
                    "Dense_0")
  assert head == "Dense_0"
  stages, head, _ = transfer.forward_stages(
      models.create("vit_tiny_patch4_cifar", num_classes=7), (32, 32, 3), 7)
  assert stages[:3] == ("cls_token", "pos_embed", "patch_embed")
  assert stages[-2:] == ("norm", "head") and head == "head"
  plan = _plan("progressive", every=1.5)  # 3 steps per unfreezing at 2 steps per epoch
  assert plan.stages == (*BACKBONE, "Dense_0")
  assert plan.unfreeze_at == {f"ConvBNReLU_{i}": 3 * (6 - i) for i in range(6)}
  assert plan.unfreeze_step("Dense_0/kernel") == 0
  assert set(_plan("linear_probe").unfreeze_at.values()) == {transfer.NEVER}
  assert set(_plan().unfreeze_at.values()) == {0}


def test_unfreeze_on_schedule_holds_frozen_leaves_and_their_optimizer_state():
  """SGD + Nesterov with weight decay: a frozen leaf gets a zero update (no decay) while its
  momentum is not fed; its first update after unfreezing is a fresh optimizer's first."""
  c = base_config().optim
  c.weight_decay, c.schedule, c.warmup_epochs = 0.1, "constant", 0.0
  inner, _ = optim.create_optimizer(c, 10, 1)
  params = {"low": {"kernel": jnp.full((2, 2), 3.0)}, "top": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = transfer.unfreeze_on_schedule(inner, lambda p: 2 if p.startswith("low/") else 0)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    assert not np.any(updates["low"]["kernel"]) and np.all(updates["top"]["kernel"] < 0)
  updates, state = tx.update(grads, state, params)
  first, _ = inner.update(grads, inner.init(params), params)
  np.testing.assert_allclose(updates["low"]["kernel"], first["low"]["kernel"], rtol=1e-6)
  assert not np.allclose(updates["top"]["kernel"], first["top"]["kernel"])  # has momentum
  assert int(state.count) == 3


def test_bad_transfer_configs_are_refused_naming_the_keys(tmp_path):
  def refused(match, **changes):
    c = base_config()
    for k, v in changes.items():
      section, _, leaf = k.rpartition("__")
      (c[section] if section else c)[leaf] = v
    with pytest.raises(ValueError, match=match):
      validate(c)

  refused(r"transfer.mode = 'linear_probe' acts only on a run initialised from another "
          r"run's checkpoint, but config key init_from = ''", transfer__mode="linear_probe")
  refused(r"transfer.mode = 'progressive' acts only.*init_from = ''",
          transfer__mode="progressive")
  refused(r"transfer.head = \('Dense_0',\) acts only.*init_from = ''",
          transfer__head=("Dense_0",))
  refused(r"transfer.mode = 'frozen'; expected one of \('finetune', 'linear_probe', "
          r"'progressive'\)", transfer__mode="frozen", init_from="x")
  refused(r"transfer.unfreeze_every_epochs = 0.0; expected > 0",
          transfer__unfreeze_every_epochs=0.0, init_from="x")
  refused(r"transfer.head = \('params/Dense_0',\); expected a tuple of parameter path "
          r"prefixes under params", transfer__head=("params/Dense_0",), init_from="x")
  c = base_config()
  c.init_from, c.transfer.mode, c.transfer.head = "x", "progressive", ("Dense_0",)
  validate(c)
  with pytest.raises(ValueError, match=re.escape(
      "config key transfer.head = ('Dense_9',): 'Dense_9' names no parameter of the model "
      "(StackedCNN's top-level parameter groups, bottom to top: ConvBNReLU_0, ConvBNReLU_1, "
      "ConvBNReLU_2, ConvBNReLU_3, ConvBNReLU_4, ConvBNReLU_5, Dense_0)")):
    _plan("linear_probe", head=("Dense_9",))


@pytest.mark.parametrize("arg", ["scratch", "linear_probe", "finetune", "progressive"])
def test_tiny_imagenet10_transfer_config(arg, monkeypatch, tmp_path):
  spec = f"{REPO / 'configs' / 'tiny_imagenet10_transfer.py'}:{arg}"
  monkeypatch.setenv("CNN_JAX_TRANSFER_SOURCE", str(tmp_path))
  c = validate(load_config_file(spec))
  assert (c.model.name, c.data.name, c.num_epochs) == ("resnet20", "tiny_imagenet_10", 10)
  if arg == "scratch":
    assert (c.init_from, c.transfer.mode, tuple(c.transfer.head)) == ("", "finetune", ())
  else:
    assert (c.init_from, c.transfer.mode) == (str(tmp_path), arg)
    assert tuple(c.transfer.head) == ("Dense_0",)  # equal shapes: re-initialised by name
    monkeypatch.delenv("CNN_JAX_TRANSFER_SOURCE")
    with pytest.raises(ValueError, match=r"config key transfer.* acts only.*init_from = ''"):
      validate(load_config_file(spec))
