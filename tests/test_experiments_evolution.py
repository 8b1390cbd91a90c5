"""Table 1 (experiments/evolution): the static rows, the measurement and the report.

Cheap by design: the only compiled models are LeNet-5 (32x32) and a tiny synthetic
report; the deeper checks trace models without running them.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from cnn_jax import models, provenance, summary
from experiments.evolution import report, rows, run


def test_rows_name_registered_models_and_cite_known_sources():
  registered = set(models.list_models())
  names = [r.name for r in rows.ROWS]
  assert len(names) == len(set(names)) == 11
  for r in rows.ROWS:
    assert r.name in registered, r.name
    assert r.paper in rows.SOURCES, r.name
    # Every source field resolves to a numbered reference (KeyError otherwise).
    for src in (r.depth_source, r.params_paper_source, r.top1_source or r.paper):
      assert report.cite(src).startswith("["), src
    assert (r.top1 is None) == (r.top1_source == ""), r.name
    assert r.top1 is None or 50 < r.top1 < 90, r.name
  assert rows.row("lenet5").input_shape == (32, 32, 1)
  with pytest.raises(KeyError, match="not a Table 1 model"):
    rows.row("resnet20")
  with pytest.raises(KeyError):
    report.cite("nobody2099, Table 1")


def test_lenet5_paper_layer_counts():
  # Sec. II-B's per-layer counts sum to the paper's 60,000; the dense variant's count
  # follows from them with the three documented changes.
  assert sum(rows.LENET5_PAPER_LAYER_PARAMS.values()) == 60_000
  assert rows.lenet5_dense_params(10) == 61_706


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v2"])
def test_measured_params_equal_independent_published_count(name):
  r = rows.row(name)
  model = models.create(name, num_classes=r.num_classes)
  assert summary.count_params_of(model, r.input_shape) == r.params_expected


@pytest.mark.parametrize("name,depth,all_layers", [("googlenet", 22, 58),
                                                   ("resnet50", 50, 54)])
def test_longest_path_reproduces_published_depth(name, depth, all_layers):
  # Traced, not run: GoogLeNet's 22 counts one branch per Inception module, ResNet-50's 50
  # leaves out the projection shortcuts that "all" counts.
  r = rows.row(name)
  model = models.create(name, num_classes=1000)
  on_path, valid = run.longest_path(model, (64, 64, 3))
  assert on_path == depth == int(r.depth)
  layers = summary.layer_table(model, (64, 64, 3))
  assert sum(1 for l in layers if l.type in run.WEIGHT_TYPES and l.macs > 0) == all_layers
  assert 0 < valid < sum(l.macs for l in layers)  # padding taps removed


def test_run_writes_provenance_then_records(tmp_path):
  out = tmp_path / "m.jsonl"
  out.write_text("previous\n")
  lines = run.run(["lenet5"], out, batch=4, windows=2, batches_per_window=1, warmup=1,
                  min_window_s=0.02, log=lambda *a, **k: None)
  written = [json.loads(l) for l in out.read_text().splitlines()]
  assert written == json.loads(json.dumps(lines))
  assert not (tmp_path / "m.jsonl.tmp").exists()
  prov, rec = written
  assert prov["event"] == "provenance" and prov["wall_s"] > 0 and prov["date"]
  assert set(provenance.KEYS) <= set(prov)
  assert prov["settings"]["batch"] == 4 and prov["settings"]["models"] == ["lenet5"]
  assert tuple(rec) == run.RECORD_KEYS
  assert rec["params"] == 61_706
  # conv 28*28*6*25 + conv 10*10*16*150 + dense 400*120 + 120*84 + 84*10
  assert rec["macs"] == rec["macs_valid_taps"] == 416_520
  assert rec["weight_layers"] == rec["weight_layers_longest_path"] == 5
  assert 1.0 <= rec["xla_flops"] / (2 * rec["macs"]) <= 1.1  # + bias adds, ReLUs
  assert len(rec["images_per_s_windows"]) == 2
  assert min(rec["images_per_s_windows"]) > 0 and rec["images_per_s"] > 0
  assert rec["batches_per_window"] >= 1 and rec["compile_s"] > 0


def test_run_rejects_unknown_model_before_measuring(tmp_path):
  with pytest.raises(KeyError):
    run.run(["lenet5", "resnet20"], tmp_path / "m.jsonl", log=lambda *a, **k: None)
  assert not (tmp_path / "m.jsonl").exists()
  with pytest.raises(ValueError, match="windows"):
    run.time_forward(models.create("lenet5"), (32, 32, 1), 2, 0, 1, 0, 10)


def _synthetic(path):
  prov = {"event": "provenance", "date": "2026-12-01T10:00:00+00:00",
          "git_commit": "abcdef0123456789", "git_dirty": True,
          "git_dirty_files": ["README.md"], "jax": "0.10.2", "jaxlib": "0.10.2",
          "device_kind": "cpu", "device_count": 1, "cpu": "Test CPU", "cpu_count": 2,
          "xla_flags": "--xla_flag=1", "ld_preload": "",
          "settings": {"batch": 32, "windows": 5, "batches_per_window": 2,
                       "min_window_s": 1.0, "warmup_batches": 2},
          "wall_s": 600.0}
  recs = [
      {"model": "lenet5", "params": 61706, "macs": 416520, "macs_valid_taps": 416520,
       "xla_flops": 850000.0, "weight_layers": 5, "weight_layers_longest_path": 5,
       "images_per_s": 12345.6},
      {"model": "resnet50", "params": 25557032, "macs": 4_089_184_256,
       "macs_valid_taps": 3_948_000_000, "xla_flops": 8_000_000_000.0,
       "weight_layers": 54, "weight_layers_longest_path": 50, "images_per_s": 12.34},
      {"model": "vgg16", "error": "RuntimeError: boom"},
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in (prov, *recs)))


def test_report_table_from_synthetic_measurements(tmp_path):
  meas = tmp_path / "measurements.jsonl"
  _synthetic(meas)
  assert report.main(["--measurements", str(meas), "--out-dir", str(tmp_path)]) == 0
  for f in ("table.md", "table.csv", "top1_vs_params.png", "top1_vs_gmacs.png"):
    assert (tmp_path / f).stat().st_size > 0, f
  cells = list(csv.reader(io.StringIO((tmp_path / "table.csv").read_text())))
  assert cells[0][-1] == "images/s, batch 32"
  body = {row[1]: row for row in cells[1:]}
  assert list(body) == [f"`{r.name}`" for r in rows.ROWS]
  assert body["`resnet50`"] == [
      "ResNet-50 [5]", "`resnet50`", "2015", "50 [5, Table 1]", "50 / 54", "25,557,032",
      "- [5: not given (Table 1 gives FLOPs)]", "25,557,032", "224x224x3", "4.09",
      "4.00 (0.978, 1.013)", "77.15", "10 crops [5, Table 3 (22.85% top-1 error)]", "12.3"]
  lenet = body["`lenet5`"]
  assert lenet[4:6] == ["5 / 5", "61,706"] and lenet[8] == "32x32x1 (native)"
  assert lenet[9] == "0.000417" and lenet[11] == "-" and lenet[13] == "12346"
  assert body["`vgg16`"][5] == "-" and body["`vgg16`"][13] == "failed: RuntimeError: boom"
  assert body["`vgg16`"][11] == "73.0"  # published digits kept
  assert body["`densenet121`"][4] == "-" and body["`densenet121`"][13] == "-"
  md = (tmp_path / "table.md").read_text()
  table_lines = [l for l in md.splitlines() if l.startswith("| ")]
  assert len(table_lines) == 2 + len(rows.ROWS)  # header, separator, rows
  assert ("Measured 2026-12-01T10:00:00+00:00 on 2-core Test CPU, commit abcdef0+dirty "
          "(differing files: README.md), jax 0.10.2 / jaxlib 0.10.2") in md
  assert "LD_PRELOAD (unset)" in md and "3 models in 10.0 min" in md
  assert "14. torchvision model documentation" in md
  # Only ResNet-50 has both a measurement and a published top-1.
  assert report.plot_top1(report.read_measurements(meas)[1], "macs", tmp_path / "p.png") == 1


def test_report_check_detects_stale_tables(tmp_path, capsys):
  meas = tmp_path / "measurements.jsonl"
  _synthetic(meas)
  args = ["--measurements", str(meas), "--out-dir", str(tmp_path)]
  assert report.main([*args, "--check"]) == 1  # nothing written yet
  assert report.main(args) == 0
  assert report.main([*args, "--check"]) == 0
  csv_path = tmp_path / "table.csv"
  csv_path.write_text(csv_path.read_text().replace("12.3", "12.4"))
  assert report.main([*args, "--check"]) == 1
  assert "table.csv" in capsys.readouterr().out
  assert report.main(args) == 0
  md = tmp_path / "table.md"
  md.write_text(md.read_text().replace("Test CPU", "Other CPU"))
  assert report.main([*args, "--check"]) == 1
  with pytest.raises(ValueError, match="provenance"):
    meas.write_text(json.dumps({"model": "lenet5"}) + "\n")
    report.read_measurements(meas)
