"""``python -m experiments.zoo_benchmark.run`` (issue #24 item 5): one tiny model, one short
window, the table written with its columns and provenance. Speeds are only checked to be
positive numbers, never compared: they depend on the machine and its load."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from cnn_jax import benchmark
from experiments.zoo_benchmark import run as zoo_run

# The columns the issue asks for (images/s, GFLOP/s, fraction of the fp32 and bf16 peaks,
# ratio to PyTorch), spelled as the CSV header spells them.
EXPECTED_COLUMNS = [
    "model", "family", "params", "dtype", "train_images_per_s", "inference_images_per_s",
    "train_gflop_per_image", "inference_gflop_per_image", "train_gflop_per_s",
    "inference_gflop_per_s", "train_pct_of_fp32_peak", "train_pct_of_bf16_peak",
    "inference_pct_of_fp32_peak", "inference_pct_of_bf16_peak", "train_compile_s",
    "torch_train_images_per_s", "torch_inference_images_per_s", "ratio_train",
    "ratio_inference", "error"]
ZOO = ["mlp", "cifar10_cnn", "resnet20", "preact_resnet20", "resnet20_dilated",
       "convnextv2_atto_cifar", "resnet56", "mobilenet_v2_cifar", "mixer_tiny_patch4_cifar",
       "vit_tiny_patch4_cifar", "vgg16_cifar"]


def test_zoo_is_table_2_with_its_configs():
  z = zoo_run.zoo()
  assert list(z) == ZOO
  assert z["vit_tiny_patch4_cifar"]["optim"]["name"] == "adamw"
  assert z["vit_tiny_patch4_cifar"]["model_kwargs"] == {"drop_path_rate": 0.1}
  assert z["resnet20"]["optim"]["name"] == "sgd"


def test_row_arithmetic():
  jax_runs = [{"batch": 128, "n_params": 10, "train_images_per_s": v,
               "inference_images_per_s": 4 * v, "train_gflop_per_step": 12.8,
               "inference_gflop_per_step": 6.4,
               "train_gflop_per_s": v / 10, "inference_gflop_per_s": 2 * v / 10,
               "train_compile_s": 1.0} for v in (100.0, 300.0, 200.0)]
  torch_runs = [{"train_images_per_s": 400.0, "inference_images_per_s": 1600.0}]
  row = zoo_run.make_row("m", "f", "float32", jax_runs, torch_runs,
                         {"float32": 80.0, "bfloat16": 160.0})
  assert row["train_images_per_s"] == 200.0  # median of the rounds
  assert row["train_gflop_per_image"] == pytest.approx(0.1)
  assert row["train_pct_of_fp32_peak"] == pytest.approx(25.0)  # 20 of 80 GFLOP/s
  assert row["train_pct_of_bf16_peak"] == pytest.approx(12.5)
  assert row["inference_pct_of_fp32_peak"] == pytest.approx(50.0)
  assert row["ratio_train"] == pytest.approx(0.5)
  assert row["ratio_inference"] == pytest.approx(0.5)
  bare = zoo_run.make_row("m", "f", "float32", jax_runs, [], {"float32": 80.0})
  assert bare["ratio_train"] is None and bare["torch_train_images_per_s"] is None
  assert bare["train_pct_of_bf16_peak"] is None


def test_unknown_model_is_an_argument_error(capsys):
  with pytest.raises(SystemExit) as e:
    zoo_run.main(["--models", "mlp,resnet2O"])
  assert e.value.code == 2
  assert "resnet2O" in capsys.readouterr().err


def test_one_model_table(tmp_path):
  out = tmp_path / "zoo"
  env = dict(os.environ, PYTHONPATH=str(benchmark.REPO))
  r = subprocess.run(
      [sys.executable, "-m", "experiments.zoo_benchmark.run", "--models", "mlp",
       "--windows", "1", "--steps-per-window", "1", "--peak-size", "128", "--no-torch",
       "--out", str(out)],
      capture_output=True, text=True, env=env, cwd=benchmark.REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  with open(out / "table.csv", newline="") as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == EXPECTED_COLUMNS
    (row,) = list(reader)
  assert row["model"] == "mlp" and row["dtype"] == "float32" and row["error"] == ""
  assert int(row["params"]) > 0
  for k in ("train_images_per_s", "inference_images_per_s", "train_gflop_per_s",
            "inference_gflop_per_s", "train_pct_of_fp32_peak", "train_pct_of_bf16_peak"):
    v = float(row[k])
    assert v > 0 and math.isfinite(v), (k, row[k])
  assert row["ratio_train"] == ""  # no PyTorch run

  records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  meta, rows = records[0], records[1:]
  assert meta["record"] == "meta" and meta["complete"] is True
  assert meta["lscpu"]["flags"] and meta["lscpu"]["model"]
  assert meta["versions"]["jax"] and meta["versions"]["backend"]
  assert meta["wall_s"] > 0 and meta["started"] and meta["finished"]
  assert "commit" in meta["git"]
  assert set(meta["peak"]["peaks"]) == {"float32", "bfloat16"}
  assert all(p["gflop_per_s"] > 0 for p in meta["peak"]["peaks"].values())
  (rec,) = rows
  assert rec["record"] == "row" and rec["model"] == "mlp"
  assert rec["spec"]["optim"]["name"] == "adamw"  # the table-2 config's optimizer
  assert len(rec["jax"]) == 1 and len(rec["jax"][0]["train_windows"]) == 1
  # the row's percentage is its GFLOP/s over the peak the same run measured
  peak32 = meta["peak"]["peaks"]["float32"]["gflop_per_s"]
  assert float(row["train_pct_of_fp32_peak"]) == pytest.approx(
      100 * rec["jax"][0]["train_gflop_per_s"] / peak32)

  md = (out / "table.md").read_text()
  header = md.splitlines()[0]
  for col in ("train images/s", "inference images/s", "GFLOP/s train / inference",
              "train % of fp32 / bf16 peak", "JAX / PyTorch train"):
    assert col in header
  assert "| `mlp` |" in md and "All CPU flags (lscpu)" in md
