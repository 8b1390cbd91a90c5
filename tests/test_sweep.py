"""The comparison tables' machinery: sweeps (cnn_jax/sweep.py), table files
(cnn_jax/report.py) and the committed tables rebuilt from their logs."""

from __future__ import annotations

import json

import pytest

from cnn_jax import report, sweep
from tests.conftest import SHARED_DATA


def test_markdown_and_csv_tables_and_their_check(tmp_path):
  header, rows = ["model", "note"], [["`a`", "x|y"], ["b", 'say "hi", twice']]
  md = report.write_table(tmp_path / "t", header, rows)
  assert md == ("| model | note |\n| --- | --- |\n| `a` | x\\|y |\n"
                '| b | say "hi", twice |\n')
  assert (tmp_path / "t.csv").read_text() == 'model,note\n`a`,x|y\nb,"say ""hi"", twice"\n'
  assert report.stale_table_files(tmp_path / "t", header, rows) == []
  changed = report.stale_table_files(tmp_path / "t", header, [["`a`", "x|y"], ["c", "z"]])
  assert changed == [str(tmp_path / "t.md"), str(tmp_path / "t.csv")]
  assert report.stale_table_files(tmp_path / "none", header, rows) == [
      str(tmp_path / "none.md"), str(tmp_path / "none.csv")]
  with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
    report.markdown_table(header, [["only one"]])


def test_run_argv_and_workdir(tmp_path):
  r = sweep.Run("r32", "configs/cifar10_resnet20.py", {"model.name": "resnet32", "num_epochs": 3})
  argv = r.argv(tmp_path / "w", tmp_path)
  assert argv[:6] == ["-m", "cnn_jax.train", "--config", "configs/cifar10_resnet20.py",
                      "--workdir", str(tmp_path / "w")]
  assert {"--config.progress_bar=False", "--config.tensorboard=False",
          "--config.model.name=resnet32", "--config.num_epochs=3",
          f"--config.data.dir={(tmp_path / 'cifar10-jpeg').resolve()}"} == set(argv[6:])
  assert r.workdir(tmp_path) == tmp_path / "runs" / "r32"
  shared = sweep.Run("r32", "c.py", home="experiments/resnet_depth")
  assert shared.workdir(tmp_path) == sweep.REPO / "experiments/resnet_depth/runs/r32"
  with pytest.raises(ValueError, match=r"unknown run\(s\) \['nope'\]; this table has \['r32'\]"):
    sweep.run_all([r], tmp_path, tmp_path, only=["nope"])


def test_run_state_and_move_aside(tmp_path):
  w = tmp_path / "runs" / "a"
  assert sweep.run_state(w) == "new"
  w.mkdir(parents=True)
  (w / "config.json").write_text(json.dumps({"num_epochs": 2}))
  (w / "metrics.jsonl").write_text(json.dumps({"event": "start", "step": 0}) + "\n")
  assert sweep.run_state(w) == "stale"  # records but no checkpoint to resume from
  with (w / "metrics.jsonl").open("a") as f:
    f.write(json.dumps({"test_accuracy": 0.5, "step": 10, "epoch": 2.0}) + "\n")
  assert sweep.run_state(w) == "done"
  (w / sweep.PID_FILE).write_text("999999999")  # no such process: not running
  assert sweep.run_state(w) == "done"
  dest = sweep.move_aside(w)
  assert not w.exists() and dest.parent == tmp_path / "runs" / ".aside"
  assert dest.name.startswith("a-") and (dest / "metrics.jsonl").is_file()


def test_sweep_runs_a_missing_run_then_skips_it(tmp_path, cache_dir):
  """One real (tiny) run through the sweep's subprocess; a second call trains nothing;
  raising num_epochs in the logged config makes the checkpointed run resumable."""
  assert (SHARED_DATA / "cifar10-jpeg").is_dir(), f"real CIFAR-10 expected in {SHARED_DATA}"
  run = sweep.Run("tiny", "configs/cifar10_cnn.py", {
      "num_epochs": 1, "batch_size": 32, "eval_batch_size": 50, "data.num_train": 96,
      "data.num_test": 70, "optim.warmup_epochs": 0.0, "data.cache_dir": str(cache_dir)})
  assert sweep.run_all([run], tmp_path, SHARED_DATA) == 0
  w = tmp_path / "runs" / "tiny"
  assert sweep.run_state(w) == "done" and not (w / sweep.PID_FILE).exists()
  log = (w / "stdout.log").read_text()
  assert "-m cnn_jax.train --config configs/cifar10_cnn.py" in log and "final:" in log
  before = (w / "metrics.jsonl").read_text()
  assert sweep.run_all([run], tmp_path, SHARED_DATA) == 0
  assert (w / "metrics.jsonl").read_text() == before
  cfg = json.loads((w / "config.json").read_text())
  (w / "config.json").write_text(json.dumps({**cfg, "num_epochs": 2}))
  assert sweep.run_state(w) == "resumable"


@pytest.mark.parametrize("table", ["resnet_depth", "cifar10_families", "data_efficiency",
                                   "tiny_imagenet10", "transfer_tin10", "cifar10_speedrun"])
def test_committed_tables_rebuild_byte_for_byte(table):
  """Each table's report, run on the committed run logs, reproduces the committed
  table.md/table.csv exactly (the --check mode writes nothing)."""
  import importlib  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(f"experiments.{table}.report")
  assert mod.main(["--check"]) == 0
