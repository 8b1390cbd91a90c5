"""Table 1, the evolution of CNN architectures: the table and plots, rebuilt from the data.

    python -m experiments.evolution.report [--check]

Reads only ``measurements.jsonl`` (written by ``python -m experiments.evolution.run``) and
:mod:`experiments.evolution.rows`, and writes beside this file ``table.md`` (the table, a
line with the measurement's hardware, commit, date and jax version, notes and the
numbered references), ``table.csv`` (the same cells) and two plots,
``top1_vs_params.png`` and ``top1_vs_gmacs.png``. ``--check`` rebuilds ``table.md`` and
``table.csv`` in a temporary folder and exits 1 if the committed ones differ (the plots are
not compared). Models of :data:`rows.ROWS` without a measurement get '-' cells.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from cnn_jax import report
from experiments.evolution import rows as rows_mod

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MEASUREMENTS = HERE / "measurements.jsonl"
_REF_NUMBER = {key: i for i, key in enumerate(rows_mod.SOURCES, 1)}
# Label offsets (points) in the plots; ViT-Ti's default one lands on MobileNetV2's label.
_LABEL_OFFSET = {"vit_tiny_patch16_224": (5, -11)}


def read_measurements(path: str | pathlib.Path) -> tuple[dict, dict[str, dict]]:
  """The provenance line and the model records of a ``run.py`` output file.

  Returns:
    ``(provenance, {registry name: record})``; a later record of a name replaces an
    earlier one.

  Raises:
    FileNotFoundError: no such file (the message says how to make it).
    ValueError: the first line is not a provenance record.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no measurements; run python -m experiments.evolution.run")
  lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  if not lines or lines[0].get("event") != "provenance":
    raise ValueError(f"{path}: line 1 is not the provenance record of experiments.evolution.run")
  return lines[0], {r["model"]: r for r in lines[1:]}


def cite(source: str) -> str:
  """``'he2015, Table 3 (...)'`` -> ``'[5, Table 3 (...)]'``: the source key replaced by its
  number in :data:`rows.SOURCES` (the reference list under the table).

  Raises:
    KeyError: the key is not in :data:`rows.SOURCES`.
  """
  cut = min((i for i in (source.find(", "), source.find(": ")) if i >= 0), default=len(source))
  key, rest = source[:cut], source[cut:]
  return f"[{_REF_NUMBER[key]}{rest}]"


def _env(v: str | None) -> str:
  """An environment value for the footer: in backticks, or "(unset)"."""
  return f"`{v}`" if v else "(unset)"


def _rate(v: float) -> str:
  """Images/s with three significant figures at most, never in exponent form."""
  return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def header(prov: dict) -> list[str]:
  """Column names; the speed column names the batch size of the measurement."""
  batch = prov.get("settings", {}).get("batch", "?")
  return ["model", "registry name", "year", "depth, paper",
          "weight layers: longest path / all", "params", "params, paper",
          "params, torchvision", "input", "GMACs/image",
          "XLA GFLOPs/2 (/ MACs, / valid-tap MACs)",
          "top-1 (%), published", "top-1 protocol [source]", f"images/s, batch {batch}"]


def table_rows(measured: dict[str, dict]) -> list[list[str]]:
  """One row of strings per :data:`rows.ROWS` entry, in its order, measured cells from
  ``measured`` (registry name -> ``run.py`` record; '-' where absent, 'failed: ...' where
  the run recorded an error)."""
  out = []
  for r in rows_mod.ROWS:
    m = measured.get(r.name)
    shape = "x".join(str(d) for d in r.input_shape)
    if r.input_shape != (224, 224, 3):
      shape += " (native)"
    static = [f"{r.display} [{_REF_NUMBER[r.paper]}]", f"`{r.name}`", str(r.year),
              f"{r.depth} {cite(r.depth_source)}"]
    pub_params = f"{r.params_paper} {cite(r.params_paper_source)}"
    tv = "-" if r.params_torchvision is None else f"{r.params_torchvision:,}"
    top1 = "-" if r.top1 is None else repr(r.top1)  # the digits as written in rows.py
    proto = r.top1_protocol + (f" {cite(r.top1_source)}" if r.top1_source else "")
    if m is None or "error" in m:
      speed = "-" if m is None else f"failed: {m['error']}"
      out.append([*static, "-", "-", pub_params, tv, shape, "-", "-", top1, proto, speed])
      continue
    macs, xla = m["macs"], m["xla_flops"]
    out.append([
        *static, f"{m['weight_layers_longest_path']} / {m['weight_layers']}",
        f"{m['params']:,}", pub_params, tv, shape, f"{macs / 1e9:#.3g}",
        f"{xla / 2e9:#.3g} ({xla / (2 * macs):.3f}, {xla / (2 * m['macs_valid_taps']):.3f})",
        top1, proto, _rate(m["images_per_s"])])
  return out


def footer(prov: dict, measured: dict[str, dict]) -> str:
  """The text under the table: where and how it was measured (from the provenance line),
  notes, and the numbered references."""
  s = prov.get("settings", {})
  commit = (prov.get("git_commit") or "?")[:7] + ("+dirty" if prov.get("git_dirty") else "")
  dirty = prov.get("git_dirty_files") or []
  hw = f"{prov.get('cpu_count', '?')}-core {prov.get('cpu', '?')}"
  if prov.get("device_kind") not in (None, "cpu"):
    hw = f"{prov.get('device_count')} x {prov['device_kind']}"
  lines = [
      f"Measured {prov.get('date', '?')} on {hw}, commit {commit}"
      + (f" (differing files: {', '.join(dirty)})" if dirty else "")
      + f", jax {prov.get('jax', '?')} / jaxlib {prov.get('jaxlib', '?')}, "
      f"XLA_FLAGS {_env(prov.get('xla_flags'))}, LD_PRELOAD {_env(prov.get('ld_preload'))}; "
      f"float32, random weights, batch {s.get('batch', '?')}, median of "
      f"{s.get('windows', '?')} timed windows (at least {s.get('batches_per_window', '?')} "
      f"calls and {s.get('min_window_s', '?')} s each) after {s.get('warmup_batches', '?')} "
      f"uncounted calls; {len(measured)} models in "
      f"{prov.get('wall_s', float('nan')) / 60:.1f} min.",
      "",
      "Weight layers: conv and dense layers (Flax `Conv`/`Dense`/`DenseGeneral`/`Einsum` "
      "calls that do MACs) on the longest input-to-logits path of the traced forward pass, "
      "then in the whole pass (every branch). GMACs: conv + dense + attention matmuls per "
      "image, zero-padding taps included (FLOPs = 2 x MACs); XLA GFLOPs/2: XLA's "
      "`cost_analysis()` of the compiled forward pass, which skips padding taps and adds "
      "elementwise ops; the second ratio, against MACs without padding taps, is the "
      "cross-check. LeNet-5 runs at its native 32x32x1 input with 10 classes (it cannot "
      "take 224x224x3 images), so its MACs and speed do not compare with the other rows'. "
      "Top-1 protocols differ between papers (crops, scales); the column says which. The "
      "registry models follow torchvision's layouts where torchvision has the model "
      "(AlexNet: the single-GPU variant with 64-192-384-256-256 filters; GoogLeNet: a 3x3 "
      "conv in the \"5x5\" branch), so the paper columns describe the paper's own variant.",
      "",
      "References:",
      "",
  ]
  lines += [f"{n}. {text}" for n, text in enumerate(rows_mod.SOURCES.values(), 1)]
  return "\n".join(lines) + "\n"


def write_tables(stem: str | pathlib.Path, hdr: list[str], rows: list[list[str]],
                 foot: str) -> str:
  """Writes ``<stem>.csv`` and ``<stem>.md`` (the table, a blank line, ``foot``) with
  :func:`cnn_jax.report.write_table`, and returns the Markdown written."""
  stem = pathlib.Path(stem)
  md = report.write_table(stem, hdr, rows) + "\n" + foot
  stem.with_suffix(".md").write_text(md)
  return md


def stale_files(stem: str | pathlib.Path, hdr: list[str], rows: list[list[str]],
                foot: str) -> list[str]:
  """The files among ``<stem>.md``/``<stem>.csv`` that differ from a rebuild (or are
  missing); ``[]`` when both are byte-identical."""
  stem = pathlib.Path(stem)
  stale = []
  with tempfile.TemporaryDirectory() as tmp:
    fresh = pathlib.Path(tmp) / stem.name
    write_tables(fresh, hdr, rows, foot)
    for suffix in (".md", ".csv"):
      path = stem.with_suffix(suffix)
      if not path.is_file() or path.read_bytes() != fresh.with_suffix(suffix).read_bytes():
        stale.append(str(path))
  return stale


def plot_top1(measured: dict[str, dict], key: str, out: str | pathlib.Path) -> int:
  """Published top-1 (%) against a measured quantity, log x axis, one point per model with
  both (LeNet-5, without an ImageNet result, is left out), labelled "name (year)";
  single-view and multi-view published protocols are separate series.

  Args:
    measured: registry name -> ``run.py`` record.
    key: ``'params'`` (x = parameters) or ``'macs'`` (x = GMACs per image).
    out: PNG path.

  Returns:
    The number of points drawn.

  Raises:
    ValueError: an unknown ``key``.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if key == "params":
    scale, xlabel = 1e6, "parameters, millions (measured; log scale)"
    title = "Published ImageNet top-1 vs parameters"
  elif key == "macs":
    scale, xlabel = 1e9, "GMACs per 224x224 image (measured; log scale)"
    title = "Published ImageNet top-1 vs multiply-accumulates"
  else:
    raise ValueError(f"key must be 'params' or 'macs', got {key!r}")
  series = {True: ("one view (one crop, or one scale)", "o"),
            False: ("multi-crop (10 crops)", "s")}
  fig, ax = plt.subplots(figsize=(7.5, 5))
  drawn = 0
  for single, (label, marker) in series.items():
    pts = [(r, measured[r.name][key] / scale) for r in rows_mod.ROWS
           if r.top1 is not None and r.single_view == single
           and "error" not in measured.get(r.name, {"error": 1})]
    if not pts:
      continue
    ax.scatter([x for _, x in pts], [r.top1 for r, _ in pts], marker=marker, label=label,
               zorder=3)
    for r, x in pts:
      ax.annotate(f"{r.display} ({r.year})", (x, r.top1), textcoords="offset points",
                  xytext=_LABEL_OFFSET.get(r.name, (5, 3)), fontsize=8)
    drawn += len(pts)
  ax.set(xscale="log", xlabel=xlabel, ylabel="published ImageNet-1k top-1 (%)", title=title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small", title="published protocol", title_fontsize="small",
            loc="upper left")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return drawn


def main(argv=None) -> int:
  """CLI (see the module docstring). Returns 0, or 1 when ``--check`` finds stale files."""
  ap = argparse.ArgumentParser(prog="python -m experiments.evolution.report",
                               description=__doc__.splitlines()[0])
  ap.add_argument("--check", action="store_true",
                  help="exit 1 if table.md/table.csv differ from a rebuild; write nothing")
  ap.add_argument("--measurements", type=pathlib.Path, default=DEFAULT_MEASUREMENTS,
                  help="run.py output to read (default: measurements.jsonl beside this file)")
  ap.add_argument("--out-dir", type=pathlib.Path, default=HERE,
                  help="where table.md/.csv and the PNGs go (default: beside this file)")
  args = ap.parse_args(argv)
  prov, measured = read_measurements(args.measurements)
  hdr, body, foot = header(prov), table_rows(measured), footer(prov, measured)
  stem = args.out_dir / "table"
  if args.check:
    stale = stale_files(stem, hdr, body, foot)
    print("stale: " + ", ".join(stale) if stale else "table.md and table.csv are up to date")
    return 1 if stale else 0
  print(write_tables(stem, hdr, body, foot))
  plot_top1(measured, "params", args.out_dir / "top1_vs_params.png")
  plot_top1(measured, "macs", args.out_dir / "top1_vs_gmacs.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
