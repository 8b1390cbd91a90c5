"""Summarise runs from their logs: final and best top-1, wall time, throughput, curves, and
the architecture comparison table (parameters, MACs, throughput, accuracy).

``python -m cnn_jax.report <workdir> [--plot curves.png]`` prints one run's summary as JSON;
``python -m cnn_jax.report <workdir> [<workdir> ...] --table`` prints a Markdown table with a
row per run. Everything is computed from the logged records (``metrics.jsonl``,
``config.json``) and the model definitions, so README and experiment notes quote numbers a
script made.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from cnn_jax import provenance
from cnn_jax.metric_writer import read_jsonl


def summarize(metrics_path: str | pathlib.Path) -> dict:
  """Returns the run's headline numbers from its metrics file.

  Keys: ``final_test_accuracy`` (fraction), ``best_test_accuracy``, ``best_epoch``,
  ``final_test_loss``, ``epochs``, ``steps``, ``wall_s`` (seconds, from the last record of the
  last segment; resumed runs add their segments), ``median_images_per_s`` (train records),
  ``segments`` (1 + number of resumes), ``num_params``, ``model``, ``data_source``, ``platform``,
  and the code/hardware provenance of the last segment (``git_commit``, ``cpu``, ... when logged);
  for runs with a weight EMA (``ema_decay > 0``) also ``final_ema_test_accuracy`` and
  ``best_ema_test_accuracy``.

  Raises:
    ValueError: the file has no evaluation record.
  """
  recs = read_jsonl(metrics_path)
  evals = [r for r in recs if "test_accuracy" in r]
  if not evals:
    raise ValueError(f"{metrics_path}: no evaluation record (test_accuracy) yet")
  trains = [r for r in recs if "images_per_s" in r]
  starts = [r for r in recs if r.get("event") == "start"]
  # wall_s restarts at 0 in each resumed segment: add each segment's last value.
  wall, seg_last = 0.0, 0.0
  for r in recs:
    if r.get("event") == "start":
      wall += seg_last
      seg_last = 0.0
    elif "wall_s" in r:
      seg_last = r["wall_s"]
  wall += seg_last
  best = max(evals, key=lambda r: r["test_accuracy"])
  final = evals[-1]
  ema = ({"final_ema_test_accuracy": final["ema_test_accuracy"],
          "best_ema_test_accuracy": max(r["ema_test_accuracy"] for r in evals)}
         if "ema_test_accuracy" in final else {})
  return {
      "model": starts[0].get("model") if starts else None,
      "num_params": starts[0].get("num_params") if starts else None,
      "data_source": starts[0].get("data_source") if starts else None,
      "platform": starts[0].get("platform") if starts else None,
      "devices": starts[0].get("devices") if starts else None,
      **{k: starts[-1].get(k) for k in provenance.KEYS if starts and k in starts[-1]},
      "segments": len(starts),
      "steps": final["step"],
      "epochs": final["epoch"],
      "final_test_accuracy": final["test_accuracy"],
      "final_test_loss": final["test_loss"],
      "test_count": final.get("test_count"),
      "best_test_accuracy": best["test_accuracy"],
      "best_epoch": best["epoch"],
      **ema,
      "wall_s": wall,
      "median_images_per_s": statistics.median(r["images_per_s"] for r in trains[1:] or trains)
                             if trains else None,
  }


def run_config(workdir: str | pathlib.Path) -> dict:
  """The run's logged config, ``<workdir>/config.json``, as a dict.

  Raises:
    FileNotFoundError: the workdir has no ``config.json``.
  """
  return json.loads((pathlib.Path(workdir) / "config.json").read_text())


def comparison_row(workdir: str | pathlib.Path) -> dict:
  """One row of the comparison table: :func:`summarize` of ``workdir/metrics.jsonl`` plus
  ``macs`` (multiply-accumulates per image of one forward pass, counted by
  :func:`cnn_jax.summary.count_macs` on the model that ``workdir/config.json`` names, at its
  dataset's image size), ``run`` (the workdir's name), and ``dataset``, ``batch_size`` and
  ``seed`` and ``conv_backend`` (``'xla'`` for runs older than that key) from the config.
  Provenance keys (``git_commit``,
  ``cpu``, ...) missing from the log are taken from ``workdir/provenance.json`` if present.

  Raises:
    FileNotFoundError: ``config.json`` or ``metrics.jsonl`` is missing from ``workdir``.
    ValueError: no evaluation record yet (see :func:`summarize`).
    KeyError: the config names a dataset or model this version does not register.
  """
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.datasets import DATASETS  # pylint: disable=g-import-not-at-top
  from cnn_jax.summary import count_macs  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  cfg = run_config(workdir)
  info = DATASETS[cfg["data"]["name"]]
  model = models.create(cfg["model"]["name"], num_classes=info.num_classes,
                        **cfg["model"].get("kwargs", {}))
  row = summarize(workdir / "metrics.jsonl")
  # Runs logged before the start record carried provenance may have it recorded beside
  # their logs; logged values always win.
  side = workdir / "provenance.json"
  if side.exists():
    for k, v in json.loads(side.read_text()).items():
      row.setdefault(k, v)
  row.update(run=workdir.name, macs=count_macs(model, info.image_shape),
             dataset=cfg["data"]["name"], batch_size=cfg["batch_size"], seed=cfg["seed"],
             # Runs logged before config key conv_backend existed had XLA's convolutions.
             conv_backend=cfg.get("conv_backend", "xla"))
  return row


def hardware_label(row: dict) -> str:
  """``'2-core AMD EPYC'``, ``'2-core Intel Xeon, oneDNN convs'`` (a :func:`comparison_row`
  of a run with ``conv_backend = 'onednn'``) or ``'8 x TPU v5 lite'``: where a run (a
  :func:`summarize` or :func:`comparison_row` dict) trained, for a table's hardware column."""
  hw = row.get("cpu") or row.get("platform") or "?"
  if row.get("device_kind") and row.get("device_kind") != "cpu":
    return f"{row['devices']} x {row['device_kind']}"
  if row.get("cpu_count"):
    hw = f"{row['cpu_count']}-core {hw}"
  return hw + (", oneDNN convs" if row.get("conv_backend") == "onednn" else "")


def commit_label(row: dict) -> str:
  """The run's commit, 7 hex digits, with ``+dirty`` when tracked files differed from it."""
  return (row.get("git_commit") or "?")[:7] + ("+dirty" if row.get("git_dirty") else "")


def comparison_table(workdirs) -> str:
  """A Markdown table, one row per run in ``workdirs`` (see :func:`comparison_row`).

  Columns: run, model, parameters, MMACs per image (FLOPs = 2 x MACs), epochs, final and
  best test top-1 (%) of the weights, final test top-1 (%) of the weight EMA ('-' for runs
  without one, ``ema_decay = 0``), median train throughput (images/s, on the run's own
  hardware: compare throughput only between rows with the same hardware column), wall time
  (minutes), hardware and commit.
  """
  head = ("| run | model | params | MMACs/image | epochs | top-1 final (%) | top-1 best (%) "
          "| EMA top-1 final (%) | train images/s | wall (min) | hardware | commit |")
  lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
  for w in workdirs:
    r = comparison_row(w)
    hw, commit = hardware_label(r), commit_label(r)
    ips = "-" if r["median_images_per_s"] is None else f"{r['median_images_per_s']:.0f}"
    ema = (f"{100 * r['final_ema_test_accuracy']:.2f}" if "final_ema_test_accuracy" in r
           else "-")
    lines.append(
        f"| {r['run']} | `{r['model']}` | {r['num_params']:,} | {r['macs'] / 1e6:.2f} "
        f"| {r['epochs']:g} | {100 * r['final_test_accuracy']:.2f} "
        f"| {100 * r['best_test_accuracy']:.2f} | {ema} | {ips} | {r['wall_s'] / 60:.1f} "
        f"| {hw} | {commit} |")
  return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
  """A GitHub-flavoured Markdown table: ``header`` (column names) then one line per row of
  ``rows`` (cells already formatted as strings, or values passed through ``str``; a ``|``
  inside a cell is escaped).

  Raises:
    ValueError: a row's length differs from the header's (names the row).
  """
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for i, row in enumerate(rows):
    if len(row) != len(header):
      raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}: {row!r}")
    lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
  return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list]) -> str:
  """The cells of :func:`markdown_table` as CSV (RFC 4180 quoting, ``\\n`` line ends)."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows([[str(c) for c in row] for row in rows])
  return buf.getvalue()


def write_table(stem: str | pathlib.Path, header: list[str], rows: list[list]) -> str:
  """Writes ``<stem>.md`` (:func:`markdown_table`) and ``<stem>.csv`` (:func:`csv_table`)
  and returns the Markdown. Both are deterministic functions of ``header`` and ``rows``,
  so a table rebuilt from the same logs is byte-identical.
  """
  stem = pathlib.Path(stem)
  md = markdown_table(header, rows)
  stem.with_suffix(".md").write_text(md)
  stem.with_suffix(".csv").write_text(csv_table(header, rows))
  return md


def stale_table_files(stem: str | pathlib.Path, header: list[str], rows: list[list]) -> list[str]:
  """The files among ``<stem>.md`` and ``<stem>.csv`` whose content is not what
  :func:`write_table` would write now (missing files included); ``[]`` when both are
  byte-identical. For a report's ``--check``."""
  stem = pathlib.Path(stem)
  want = {".md": markdown_table(header, rows), ".csv": csv_table(header, rows)}
  stale = []
  for suffix, text in want.items():
    path = stem.with_suffix(suffix)
    if not path.is_file() or path.read_text() != text:
      stale.append(str(path))
  return stale


def table_arguments(doc: str, argv=None):
  """The command line of a table's ``report.py``: ``[--check]`` (``doc``'s first line is
  the description). Returns the parsed ``argparse.Namespace``."""
  ap = argparse.ArgumentParser(description=doc.splitlines()[0])
  ap.add_argument("--check", action="store_true",
                  help="exit 1 if table.md/table.csv differ from a rebuild; write nothing")
  return ap.parse_args(argv)


def check_or_write_table(stem: str | pathlib.Path, header: list[str], rows: list[list],
                         check: bool) -> int:
  """What a table report's command line does with its rows: with ``check``, print which of
  ``<stem>.md``/``<stem>.csv`` are stale (:func:`stale_table_files`) and write nothing;
  else write both (:func:`write_table`) and print the Markdown. Returns the exit status:
  1 when ``check`` found a stale file, else 0."""
  if check:
    stale = stale_table_files(stem, header, rows)
    print("stale: " + ", ".join(stale) if stale else
          f"{pathlib.Path(stem).name}.md and .csv are up to date")
    return 1 if stale else 0
  print(write_table(stem, header, rows))
  return 0


def table_main(doc: str, argv, stem: str | pathlib.Path, header: list[str], build,
               plots=None) -> int:
  """The whole command line of a table's ``report.py`` (``[--check]``, :func:`table_arguments`):
  ``build() -> (rows, done)`` gives the table's rows and whatever ``plots(done)`` draws from
  (the finished runs); the table is written or checked (:func:`check_or_write_table`), and the
  plots are drawn only when writing. Returns the exit status."""
  args = table_arguments(doc, argv)
  rows, done = build()
  rc = check_or_write_table(stem, header, rows, args.check)
  if not args.check and plots is not None:
    plots(done)
  return rc


def plot(metrics_path: str | pathlib.Path, out: str | pathlib.Path) -> None:
  """Writes train loss and test top-1 against epochs to ``out`` (PNG); test top-1 of the
  weight EMA too, for runs that kept one."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  recs = read_jsonl(metrics_path)
  tr = [r for r in recs if "train_loss" in r and "test_accuracy" not in r]
  ev = [r for r in recs if "test_accuracy" in r]
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
  a.plot([r["epoch"] for r in tr], [r["train_loss"] for r in tr])
  a.set(xlabel="epoch", ylabel="train loss", yscale="log")
  b.plot([r["epoch"] for r in ev], [100 * r["test_accuracy"] for r in ev], marker=".",
         label="weights")
  ev_ema = [r for r in ev if "ema_test_accuracy" in r]
  if ev_ema:
    b.plot([r["epoch"] for r in ev_ema], [100 * r["ema_test_accuracy"] for r in ev_ema],
           marker=".", label="weight EMA")
    b.legend()
  b.set(xlabel="epoch", ylabel="test top-1 (%)")
  for ax in (a, b):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def plot_runs(workdirs, labels, out: str | pathlib.Path, title: str) -> None:
  """Training curves of several runs in one PNG: train loss (log scale) and test top-1
  (%) against epochs, one line per run labelled by ``labels``.

  Raises:
    ValueError: ``labels`` and ``workdirs`` differ in length.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if len(labels) != len(workdirs):
    raise ValueError(f"{len(labels)} labels for {len(workdirs)} runs")
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  for w, label in zip(workdirs, labels):
    recs = read_jsonl(pathlib.Path(w) / "metrics.jsonl")
    tr = [r for r in recs if "train_loss" in r and "test_accuracy" not in r]
    ev = [r for r in recs if "test_accuracy" in r]
    line, = a.plot([r["epoch"] for r in tr], [r["train_loss"] for r in tr], label=label)
    b.plot([r["epoch"] for r in ev], [100 * r["test_accuracy"] for r in ev], marker=".",
           color=line.get_color(), label=label)
  a.set(xlabel="epoch", ylabel="train loss (cross-entropy)", yscale="log", title="training")
  b.set(xlabel="epoch", ylabel="test top-1 (%)", title="test")
  for ax in (a, b):
    ax.grid(alpha=0.3)
  b.legend(fontsize="small")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_tradeoff(points: list[tuple[str, float, float]], out: str | pathlib.Path, *,
                  xlabel: str, ylabel: str, title: str, series: str = "") -> None:
  """A scatter of ``(label, x, y)`` points on a log x axis, each point annotated with its
  label: accuracy against parameters or MACs. ``series`` names the points in the legend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.scatter([p[1] for p in points], [p[2] for p in points], label=series or None, zorder=3)
  for label, x, y in points:
    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3, which="both")
  if series:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)

HEADER_END = ("<!-- end of the header written by `python -m cnn_jax.report <this folder> --header "
              "--write`; free-text notes below -->")


def run_command(workdir: str | pathlib.Path) -> str | None:
  """The command that trained the run in ``workdir``: the first line of ``stdout.log`` when
  it is one (``$ <command>``, as :mod:`cnn_jax.sweep` writes it), else the code span that
  opens the ``| command |`` table row of the notes in ``README.md`` (runs launched by hand),
  else None."""
  workdir = pathlib.Path(workdir)
  log = workdir / "stdout.log"
  if log.is_file():
    with log.open() as f:
      first = f.readline().rstrip("\n")
    if first.startswith("$ "):
      return first[2:]
  readme = workdir / "README.md"
  if readme.is_file():
    head = "| command | `"
    for line in readme.read_text().splitlines():
      if line.startswith(head) and "`" in line[len(head):]:
        return line[len(head):].split("`", 1)[0]
  return None


def run_header(workdir: str | pathlib.Path) -> str:
  """The header every run folder's ``README.md`` opens with (Markdown, ending in
  :data:`HEADER_END` and a newline): a title (the folder's name), then one line each for the
  command (:func:`run_command`), config (model, data, epochs, batch, seed; parameters and MACs
  from :func:`comparison_row`), commit of each segment (``provenance.json`` when the log
  predates provenance logging), hardware, wall time and result (final and best test top-1,
  and of the weight EMA when the run kept one). Computed from the folder's logs alone, so a
  test can check that a README's header is current.

  Raises:
    as :func:`comparison_row`.
  """
  workdir = pathlib.Path(workdir)
  row, cfg = comparison_row(workdir), run_config(workdir)
  starts = [r for r in read_jsonl(workdir / "metrics.jsonl") if r.get("event") == "start"]
  cmd = run_command(workdir)
  kwargs = cfg["model"].get("kwargs") or {}
  model = f"`{cfg['model']['name']}`" + (
      " (" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")" if kwargs else "")
  data = row["dataset"] + (f" (`{row['data_source']}`)" if row.get("data_source") else "")
  epochs = f"{row['epochs']:g} epoch{'s' if row['epochs'] != 1 else ''}" + (
      f" of the {cfg['num_epochs']} configured" if row["epochs"] != cfg["num_epochs"] else "")
  size = (f"{row['num_params']:,} parameters, " if row.get("num_params") else "") + (
      f"{row['macs'] / 1e6:.2f} MMACs/image")
  logged = [commit_label(s) for s in starts if s.get("git_commit")]
  if len(logged) == len(starts) and logged:
    commit = ", ".join(f"`{c}`" for c in logged) + (
        f" ({len(starts)} segments, in order; logged in `metrics.jsonl`)" if len(starts) > 1
        else " (logged in `metrics.jsonl`)")
  elif row.get("git_commit"):
    commit = f"`{commit_label(row)}` (`provenance.json`: the log predates provenance logging)"
  else:
    commit = "not recorded"
  hw = [hardware_label(row)]
  if row.get("jax"):
    hw.append(f"jax {row['jax']}")
  if row.get("xla_flags"):
    hw.append(f"`XLA_FLAGS={row['xla_flags']}`")
  if row.get("ld_preload"):
    hw.append(f"`LD_PRELOAD={row['ld_preload']}`")
  segs = f", summed over {row['segments']} segments" if row["segments"] > 1 else ""
  ips = row["median_images_per_s"]
  wall = (f"{row['wall_s'] / 60:.1f} min ({row['wall_s']:,.0f} s{segs}) for "
          f"{row['steps']:,} steps" + (f"; median {ips:.0f} train images/s" if ips else ""))
  n = row.get("test_count")

  def pct(a):
    return f"{100 * a:.2f}%" + (f" ({round(a * n):,} / {n:,})" if n else "")

  result = (f"test top-1 final {pct(row['final_test_accuracy'])}, best "
            f"{100 * row['best_test_accuracy']:.2f}% (epoch {row['best_epoch']:g})")
  if "final_ema_test_accuracy" in row:
    result += (f"; weight EMA final {pct(row['final_ema_test_accuracy'])}, best "
               f"{100 * row['best_ema_test_accuracy']:.2f}%")
  lines = [
      f"# {workdir.name}",
      "",
      "- **command**: " + (f"`{cmd}`" if cmd else "not recorded"),
      f"- **config**: {model} on {data}, {epochs} at batch {row['batch_size']}, seed "
      f"{row['seed']}; {size} (full config: `config.json`)",
      f"- **commit**: {commit}",
      "- **hardware**: " + ", ".join(hw),
      f"- **wall time**: {wall}",
      f"- **result**: {result}",
      "",
      HEADER_END,
  ]
  return "\n".join(lines) + "\n"


def readme_with_header(workdir: str | pathlib.Path) -> str:
  """``workdir/README.md`` with a current :func:`run_header` on top. The notes kept below it
  are what follows an existing header's :data:`HEADER_END` line, else the whole old file with
  its title demoted to a second-level heading (the header's title is the page's)."""
  readme = pathlib.Path(workdir) / "README.md"
  old = readme.read_text() if readme.is_file() else ""
  if HEADER_END in old:
    notes = old.split(HEADER_END, 1)[1].lstrip("\n")
  else:
    notes = "#" + old if old.startswith("# ") else old
  return run_header(workdir) + ("\n" + notes if notes else "")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdirs", type=pathlib.Path, nargs="+", metavar="workdir")
  ap.add_argument("--plot", type=pathlib.Path, default=None,
                  help="write curves to this PNG (one workdir only)")
  ap.add_argument("--table", action="store_true",
                  help="print a Markdown comparison table, one row per workdir")
  ap.add_argument("--header", action="store_true",
                  help="print the run's README header (Markdown, see run_header)")
  ap.add_argument("--write", action="store_true",
                  help="with --header: put it on top of <workdir>/README.md instead, "
                       "replacing an old header and keeping the notes below it")
  args = ap.parse_args()
  if args.table:
    print(comparison_table(args.workdirs))
    return
  if len(args.workdirs) != 1:
    ap.error("give one workdir, or several with --table")
  if args.header:
    if args.write:
      text = readme_with_header(args.workdirs[0])
      (args.workdirs[0] / "README.md").write_text(text)
    else:
      print(run_header(args.workdirs[0]), end="")
    return
  path = args.workdirs[0] / "metrics.jsonl"
  print(json.dumps(summarize(path), indent=2))
  if args.plot:
    plot(path, args.plot)


if __name__ == "__main__":
  main()
