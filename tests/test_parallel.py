"""Data parallelism: 8 fake CPU devices and 2 local processes agree with 1 device.

Each configuration runs in a subprocess because the device count and the distributed
runtime must be fixed before JAX starts.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax import models
from tests.conftest import REPO, tiny_config

WORKER = str(REPO / "tests" / "parallel_worker.py")
# Sharding reorders float32 sums (per-device partial sums, then an all-reduce) and runs
# convolutions on smaller per-device batches, so results agree to rounding, not bit for bit:
# losses to 1e-5 relative; parameters after 3 steps at lr 0.05 to 2e-4 absolute (updates are
# ~1e-2, so a step that skipped the gradient all-reduce would miss this by far).
LOSS_RTOL = 1e-5
PARAM_RTOL, PARAM_ATOL = 1e-3, 2e-4


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ)
  # Appended, so the suite's XLA CPU flags (conftest.py) stay beside the fake device count.
  env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={devices}").strip()
  env["PYTHONPATH"] = str(REPO)
  env.update(extra)
  return env


def _run_worker(model, out, devices, *args, extra_env=None, timeout=600):
  r = subprocess.run([sys.executable, WORKER, model, str(out), *args],
                     env=_env(devices, **(extra_env or {})), capture_output=True, text=True,
                     timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return dict(np.load(out))


def _compare(a, b):
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=LOSS_RTOL)
  keys = [k for k in a if k.startswith("[")]
  assert keys and keys == [k for k in b if k.startswith("[")]
  for k in keys:
    np.testing.assert_allclose(a[k], b[k], rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=k)


def _layernorm_model():
  """A registry model normalised by LayerNorm only (no BatchNorm)."""
  for name in ("convnextv2_atto_cifar", "vit_tiny_patch4_cifar", "mixer_tiny_patch4_cifar"):
    if name in models.list_models():
      return name
  pytest.fail("no LayerNorm model registered")


@pytest.mark.parametrize("model,lr", [("cifar10_cnn", "0.05"),
                                      pytest.param("layernorm", "0.01", marks=pytest.mark.slow)])
def test_8_devices_match_1_device(model, lr, tmp_path):
  model = _layernorm_model() if model == "layernorm" else model
  one = _run_worker(model, tmp_path / "one.npz", 1, "--lr", lr)
  eight = _run_worker(model, tmp_path / "eight.npz", 8, "--lr", lr)
  assert int(eight["devices"]) == 8 and int(one["devices"]) == 1
  assert one["losses"][-1] < one["losses"][0]  # it trained
  _compare(one, eight)


@pytest.mark.slow  # CI time on a 2-core AVX2 CPU; runs with -m slow
def test_ghost_batchnorm_per_device_statistics(tmp_path):
  """4 devices with per-device statistics == 1 device normalising 4 groups separately,
  and != statistics over the global batch."""
  sharded = _run_worker("cifar10_cnn", tmp_path / "s.npz", 4, "--bn-groups", "4")
  grouped = _run_worker("cifar10_cnn", tmp_path / "g.npz", 1, "--bn-groups", "4")
  _compare(sharded, grouped)
  glob = _run_worker("cifar10_cnn", tmp_path / "glob.npz", 4)
  assert abs(glob["losses"][0] - sharded["losses"][0]) > 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  single = _run_worker("cifar10_cnn", tmp_path / "single.npz", 2)
  port = _free_port()
  procs = []
  for pid in range(2):
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(pid)}
    procs.append(subprocess.Popen([sys.executable, WORKER, "cifar10_cnn",
                                   str(tmp_path / "multi.npz")], env=_env(1, **env),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  multi = dict(np.load(tmp_path / "multi.npz"))
  assert int(multi["processes"]) == 2 and int(multi["devices"]) == 2
  _compare(single, multi)


@pytest.mark.slow  # CI time on a 2-core AVX2 CPU; runs with -m slow
def test_checkpoint_from_8_devices_restores_on_1(cifar10_dir, cache_dir, tmp_path):
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=64, num_test=50,
                    batch_size=32, num_epochs=2)
  cfg.eval_batch_size = 40  # divides by 8; 50 test images: last batch padded and masked
  script = (f"import json, ml_collections; from cnn_jax.train import train_and_evaluate; "
            f"cfg = ml_collections.ConfigDict(json.loads({cfg.to_json()!r})); "
            f"print('RESULT', json.dumps(train_and_evaluate(cfg, {str(tmp_path)!r})))")
  r = subprocess.run([sys.executable, "-c", script], env=_env(8), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  eight = json.loads(r.stdout.split("RESULT", 1)[1])
  assert eight["test_count"] == 50

  # Here (1 device): a finished run re-evaluates from the restored checkpoint...
  from cnn_jax import train
  again = train.train_and_evaluate(cfg, str(tmp_path))
  np.testing.assert_allclose(again["test_loss"], eight["test_loss"], rtol=1e-5)
  assert again["test_accuracy"] == eight["test_accuracy"]
  # ...and training continues from its epoch-1 checkpoint (the final one removed).
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  more = train.train_and_evaluate(cfg, str(tmp_path))
  assert more["step"] == 4 and more["test_count"] == 50
  # Same batches from the same state: only the devices' summation order differs.
  np.testing.assert_allclose(more["test_loss"], eight["test_loss"], rtol=1e-3)
  from cnn_jax.metric_writer import read_jsonl
  starts = [s for s in read_jsonl(tmp_path / "metrics.jsonl") if s.get("event") == "start"]
  assert [(s["step"], s["devices"]) for s in starts] == [(0, 8), (4, 1), (2, 1)]


def test_batch_size_must_divide_device_count():
  r = subprocess.run(
      [sys.executable, "-c",
       "from cnn_jax import parallel; parallel.check_batch_size(100, parallel.data_mesh())"],
      env=_env(8), capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert "batch_size = 100 must divide by the number of devices (8)" in r.stderr
