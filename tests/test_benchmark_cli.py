"""``python -m cnn_jax.benchmark``: its output lines, argument errors, and the PyTorch twins
of ``benchmarks/torch_twins.py`` (same parameter count and same logits as the JAX models).
Speeds are only checked to be positive numbers: they depend on the machine and its load."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import benchmark, models

MACHINE = re.compile(r"\[.+, \d+ cores, AVX-512 (yes|no), AVX512-BF16 (yes|no), AMX (yes|no)\]$")
NUM = r"([0-9][0-9,]*\.?[0-9]*)"


def _num(pattern: str, line: str) -> float:
  m = re.search(pattern, line)
  assert m, f"{pattern!r} not in {line!r}"
  return float(m.group(1).replace(",", ""))


@pytest.mark.slow
def test_cli_prints_the_jax_measurements(tmp_path):
  out_json = tmp_path / "bench.jsonl"
  env = dict(os.environ, PYTHONPATH=str(benchmark.REPO))
  out = subprocess.run(
      [sys.executable, "-m", "cnn_jax.benchmark", "--model", "cifar10_cnn", "--batch", "8",
       "--windows", "2", "--steps-per-window", "1", "--json", str(out_json)],
      capture_output=True, text=True, env=env, timeout=600, cwd=benchmark.REPO)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert all(MACHINE.search(line) for line in lines), lines
  assert lines[0].startswith("benchmark cifar10_cnn batch 8 input 32x32x3 float32:")
  assert "parameters: JAX 289,194" in lines[1]
  (run,) = [line for line in lines if line.startswith("jax   round 1/1:")]
  for pattern in (rf"compile {NUM} s train", rf"\+ {NUM} s inference",
                  rf"train {NUM} images/s", rf"\({NUM} GFLOP/s\); inference",
                  rf"inference {NUM} images/s", rf"images/s \({NUM} GFLOP/s\); peak",
                  rf"peak RSS {NUM} MiB"):
    assert _num(pattern, run) > 0, (pattern, run)
  (med,) = [line for line in lines if line.startswith("jax   median of 1 round(s)")]
  assert _num(rf"train {NUM} images/s", med) > 0
  assert not any(line.startswith(("torch", "ratio")) for line in lines)
  (record,) = [json.loads(x) for x in out_json.read_text().splitlines()]
  assert record["n_params"] == 289_194 and record["ratio"] is None
  (res,) = record["runs"]["jax"]
  assert len(res["train_windows"]) == 2 and res["train_steps_per_window"] == 1
  assert res["train_gflop_per_step"] > 0 and res["inference_gflop_per_step"] > 0
  assert res["materialize_conv_inputs"] is True  # the trainer's 'auto' on CPU


def test_unknown_model_lists_close_names(capsys):
  with pytest.raises(SystemExit) as e:
    benchmark.main(["--model", "resnet2O", "--batch", "8"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "unknown model 'resnet2O'" in err and "resnet20" in err


@pytest.mark.parametrize("bad", ["32x32", "32x32x0", "axbxc", "32x32x3x1"])
def test_bad_input_shape_is_an_argument_error(capsys, bad):
  with pytest.raises(SystemExit) as e:
    benchmark.main(["--model", "resnet20", "--batch", "8", "--input", bad])
  assert e.value.code == 2
  assert "--input must be HxWxC like 32x32x3" in capsys.readouterr().err


def test_cpu_flags_from_cpuinfo_text():
  text = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
  assert benchmark.cpu_flags(text) == {"avx512": True, "avx512_bf16": True, "amx": True}
  assert benchmark.cpu_flags("flags : fpu avx2\n") == {"avx512": False, "avx512_bf16": False,
                                                     "amx": False}
  tag = benchmark.machine_tag({"cpu": "X", "cores": 2, "avx512": True, "avx512_bf16": False,
                               "amx": False})
  assert MACHINE.search(tag)


def test_child_env_adds_tcmalloc_only_when_no_allocator_is_preloaded(monkeypatch):
  from cnn_jax import xla_cpu
  monkeypatch.setattr(xla_cpu, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
  env = benchmark.child_env(environ={"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=x"})
  assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=x"  # a user's own kept
  assert benchmark.child_env(environ={"LD_PRELOAD": "/x/libjemalloc.so"})["LD_PRELOAD"] == (
      "/x/libjemalloc.so")
  assert "LD_PRELOAD" not in benchmark.child_env(tcmalloc=False, environ={})


# ------------------------------------------------------------------ PyTorch twins

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch not installed (pip install -e .[torch])")


@pytest.fixture(scope="module")
def twins():
  spec = importlib.util.spec_from_file_location("torch_twins", benchmark.TORCH_TWINS)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _randomized_variables(model, x, seed):
  """Initialised variables with every BatchNorm scale, bias and running statistic random, so
  that a mis-mapped BatchNorm parameter changes the logits."""
  variables = model.init(jax.random.key(seed), x, train=False)
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name in ("mean",) or (name == "bias" and leaf.ndim == 1):
      return jnp.asarray(rng.normal(0, 0.2, leaf.shape), leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


TWIN_NAMES = ["resnet20", "cifar10_cnn", "airbench94"]
LOGIT_SCALE = {"airbench94": 1 / 9}  # a model's fixed factor on its logits


@needs_torch
@pytest.mark.parametrize("name", TWIN_NAMES)
def test_twin_has_the_same_parameter_count(twins, name):
  jax_count = benchmark.jax_param_count(name, (32, 32, 3))
  assert twins.count_params(twins.create(name)) == jax_count
  assert jax_count == {"resnet20": 269_722, "cifar10_cnn": 289_194,
                       "airbench94": 1_971_640}[name]


@needs_torch
@pytest.mark.parametrize("name", TWIN_NAMES)
def test_twin_with_copied_weights_gives_the_same_logits(twins, name):
  import torch  # pylint: disable=g-import-not-at-top
  model = models.create(name)
  x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
  variables = _randomized_variables(model, jnp.asarray(x), seed=0)
  twin = twins.create(name)
  twins.copy_jax_variables(twin, variables)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  twin.eval()
  with torch.no_grad():
    got = twin(xt).numpy()
  want = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
  # Not a degenerate all-zero comparison (airbench94 multiplies its logits by 1/9).
  assert np.abs(want).max() > 0.1 * LOGIT_SCALE.get(name, 1.0)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # Training mode too (batch statistics): the same architecture in both modes.
  twin.train()
  with torch.no_grad():
    got = twin(xt).numpy()
  want, _ = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=0)


@needs_torch
def test_weight_copy_refuses_another_architecture(twins):
  model = models.create("resnet20")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  with pytest.raises(ValueError, match="twin shape"):
    twins.copy_jax_variables(twins.create("resnet32"), variables)


# ------------------------------------------------------------ airbench94's PyTorch trainer


def _airbench94_trainer():
  """``benchmarks/airbench94_torch.py`` as a module."""
  spec = importlib.util.spec_from_file_location(
      "airbench94_torch", benchmark.REPO / "benchmarks" / "airbench94_torch.py")
  trainer = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(trainer)
  return trainer


def test_airbench94_torch_lookahead_averages_every_float_entry():
  torch = pytest.importorskip("torch")
  trainer = _airbench94_trainer()
  bn = torch.nn.BatchNorm2d(3)  # slow copy: bias 0, running_mean 0, num_batches_tracked 0
  la = trainer.Lookahead(bn)
  with torch.no_grad():
    bn.bias.fill_(1.0)
    bn.running_mean.fill_(2.0)
    bn.num_batches_tracked += 5
  la.update(bn, decay=0.75)  # slow = 0.75 slow + 0.25 weights, weights = slow
  np.testing.assert_allclose(bn.bias.detach().numpy(), 0.25)
  np.testing.assert_allclose(bn.running_mean.numpy(), 0.5)
  np.testing.assert_allclose(bn.weight.detach().numpy(), 1.0)
  assert int(bn.num_batches_tracked) == 5  # integer buffers untouched
  with torch.no_grad():
    bn.bias.fill_(9.0)
  la.update(bn, decay=1.0)  # the epoch-end copy back
  np.testing.assert_allclose(bn.bias.detach().numpy(), 0.25)


def test_airbench94_torch_trainer_smoke_run(tmp_path, cifar10_dir):
  """``benchmarks/airbench94_torch.py`` on 16 real images, batch 16: one step an epoch, so
  its ceil(9.9) = 10 steps are 10 epochs (the whitening bias freezes at epoch 3, the lookahead
  starts at step 5 and averages at step 10), evaluated on 100 test images: its records, its
  learning rates, and its whitening weight against cnn_jax's
  :func:`~cnn_jax.models.airbench.whitening_kernel` of the same images. ~20 s of CPU."""
  torch = pytest.importorskip("torch")
  from cnn_jax.models import airbench  # pylint: disable=g-import-not-at-top
  trainer = _airbench94_trainer()
  args = trainer.parse_args(["--data-dir", str(cifar10_dir), "--workdir", str(tmp_path),
                             "--train-subset", "16", "--test-subset", "100",
                             "--batch-size", "16", "--threads", "2"])
  out = trainer.train(args)

  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(x) for x in lines]
  assert records == out["records"]
  epochs, final = records[:-1], records[-1]
  assert [r["epoch"] for r in epochs] == list(range(10))
  assert [r["step"] for r in epochs] == list(range(1, 11))
  for r in epochs:
    assert set(r) == {"epoch", "step", "train_loss", "train_acc", "lr", "images_per_s",
                      "wall_s"}
    assert all(np.isfinite(v) for v in r.values()), r
    assert r["train_loss"] > 0 and r["images_per_s"] > 0
  # Triangle over 10 steps, peak at step int(0.23 * 10) = 2; the record's lr is its epoch's
  # step's (0-based step s - 1): 11.5 / (1024 * (1 + 1 / 0.15)) times the factor.
  base = 11.5 / (1024 * (1 + 1 / (1 - 0.85)))
  want = [base * np.interp(s - 1, [0, 2, 10], [0.2, 1.0, 0.07]) for s in range(1, 11)]
  np.testing.assert_allclose([r["lr"] for r in epochs], want, rtol=1e-6)
  assert final["final"] is True and final["step"] == 10
  for level in (0, 1, 2):
    assert 0.0 <= final[f"test_acc_tta{level}"] <= 1.0
    assert np.isfinite(final[f"test_loss_tta{level}"])
  assert final["wall_s"] >= epochs[-1]["wall_s"] > 0

  config = json.loads((tmp_path / "config.json").read_text())
  assert config["n_params"] == 1_971_640 and config["derived"]["total_steps"] == 10
  assert config["data"]["num_train"] == 16 and config["threads"] == 2
  assert config["hyp"]["momentum"] == 0.85 and config["cpu"]

  # The whitening weight (frozen, so still the init after training and lookahead): filter i
  # and i + 12 are +-v_i / sqrt(lambda_i + 5e-4) of the patch second moments, as cnn_jax's
  # kernel of the same images up to each eigenvector's sign.
  images = out["whitening_images"].permute(0, 2, 3, 1).numpy()
  assert images.shape == (16, 32, 32, 3)
  want = airbench.whitening_kernel(images).transpose(3, 2, 0, 1)  # HWIO -> OIHW
  got = out["model"].whiten.weight.detach().numpy()
  assert got.shape == want.shape == (24, 3, 2, 2)
  g, w = got.reshape(24, -1), want.reshape(24, -1)
  np.testing.assert_allclose(g[12:], -g[:12], rtol=0, atol=1e-6)
  sign = np.sign(np.sum(g[:12] * w[:12], axis=1, keepdims=True))
  np.testing.assert_allclose(g[:12], sign * w[:12], rtol=1e-3, atol=1e-3 * np.abs(w).max())
  # Sign-free: W^T W = 2 (S + eps)^-1 in both.
  np.testing.assert_allclose(g.T @ g, w.T @ w, rtol=1e-3, atol=1e-3 * np.abs(w.T @ w).max())
  assert not out["model"].whiten.weight.requires_grad
  assert isinstance(out["model"].whiten.weight, torch.nn.Parameter)
