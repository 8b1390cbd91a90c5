"""The zoo benchmark table: training and inference speed of every CIFAR-10 table model.

    python -m experiments.zoo_benchmark.run [--models mlp,cifar10_cnn ...] [--windows 5]
        [--steps-per-window N] [--dtypes float32[,bfloat16]] [--rounds 1] [--batch 128]
        [--peak-size 4096] [--no-torch] [--no-tcmalloc] [--torch-threads 2] [--out DIR]

For each model of table 2 (``experiments/cifar10_families/run.py``, in its order; ``--models``
picks some), at batch 128 on random 32x32x3 uint8 images, it measures with
:func:`cnn_jax.benchmark.run_jax` in a JAX child process (the trainer's ``XLA_FLAGS``,
tcmalloc, materialized conv inputs on CPU, as ``python -m cnn_jax.benchmark``):

* training images/s of the trainer's own donated train step (augmentation, forward, backward,
  optimizer update, BatchNorm in training mode) and inference images/s of its eval step, each
  the median of ``--windows`` timed windows after three warm-up steps (median over
  ``--rounds`` child runs);
* GFLOP/s: XLA's ``cost_analysis()`` FLOPs of the compiled step (a multiply-add counts 2)
  times steps/s;
* the fraction (%) of the machine's measured fp32 and bf16 peak: the GFLOP/s of one jitted
  ``--peak-size`` square matmul in float32 and in bfloat16 (XLA's default precision, as the
  models' layers use), measured in a JAX child of the same environment, median of the same
  windows; FLOPs again from ``cost_analysis()`` (2 n^3);
* for a model with a PyTorch twin (``benchmarks/torch_twins.py``: resnet20, resnet56,
  cifar10_cnn), the twin's images/s (eager, channels_last, same batch, augmentation, SGD and
  dtype; parameter count checked equal) and the ratio JAX / PyTorch; PyTorch is optional.

The model is built with its table-2 config's ``model.kwargs`` (dropout, drop path) and
optimizer (``optim.name``, e.g. AdamW for ConvNeXt V2, ViT, Mixer and the MLP); everything
else is :func:`cnn_jax.config.base_config`'s.

Writes, to ``--out`` (default this folder), replacing what was there: ``results.jsonl`` (a
``meta`` record: machine from ``lscpu``, versions, commit, date, load, wall time, the peaks;
then one ``row`` record per model and dtype with every child's full result), ``table.csv``
and ``table.md`` (the table and a footer with the same facts). They are rewritten after
every model, so an interrupted run keeps the rows done (``meta.complete`` false). A model
whose child fails is recorded with its error and the run goes on; the exit status is then 1.
Speed depends on the machine and its load: run it on an idle machine, and compare rows only
within one table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

from cnn_jax import benchmark

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
_PEAK_CHILD_ARG = "--_peak-child"
INPUT = (32, 32, 3)
NUM_CLASSES = 10

# The CSV columns, in order (table.md shows the same values, some merged in one cell).
COLUMNS = ("model", "family", "params", "dtype", "train_images_per_s",
           "inference_images_per_s", "train_gflop_per_image", "inference_gflop_per_image",
           "train_gflop_per_s", "inference_gflop_per_s", "train_pct_of_fp32_peak",
           "train_pct_of_bf16_peak", "inference_pct_of_fp32_peak",
           "inference_pct_of_bf16_peak", "train_compile_s", "torch_train_images_per_s",
           "torch_inference_images_per_s", "ratio_train", "ratio_inference", "error")


# ---------------------------------------------------------------- the zoo


def zoo() -> dict[str, dict]:
  """``{model: {'family', 'config', 'model_kwargs', 'optim'}}`` for the runs of
  ``experiments/cifar10_families/run.py``, in its order: each run's config file with its
  overrides applied (``model.kwargs`` as a dict; ``optim`` without its tuple-valued keys,
  which do not change a step's cost)."""
  from cnn_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  from experiments.cifar10_families import run as families  # pylint: disable=g-import-not-at-top
  out = {}
  for r in families.RUNS:
    cfg = load_config_file(str(REPO / r.config))
    for key, value in r.overrides.items():
      *path, leaf = key.split(".")
      node = cfg
      for part in path:
        node = node[part]
      node[leaf] = value
    out[cfg.model.name] = {
        "family": families.FAMILY.get(r.name, ""), "config": r.config,
        "model_kwargs": cfg.model.kwargs.to_dict(),
        "optim": {k: v for k, v in cfg.optim.to_dict().items()
                  if not isinstance(v, (tuple, list))}}
  return out


# ---------------------------------------------------------------- the peak child


def run_peak(spec: dict) -> dict:
  """The peak-GFLOP/s measurement (runs in a JAX child): for each dtype of ``spec['dtypes']``,
  one jitted ``(n, n) @ (n, n)`` matmul of random normal matrices (``n = spec['n']``) timed in
  ``spec['windows']`` windows (:func:`cnn_jax.benchmark.time_windows`). Returns
  ``{'n', 'backend', 'device_kind', 'peaks': {dtype: {'gflop_per_s' (median),
  'windows' (GFLOP/s per window), 'gflop_per_call', 'steps_per_window'}}}``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = spec["n"]
  peaks = {}
  for name in spec["dtypes"]:
    dt = jnp.dtype(name)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dt)
    b = jax.random.normal(kb, (n, n), dt) / n ** 0.5
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    flop = benchmark.compiled_flops(compiled) or 2.0 * n ** 3
    call = lambda c=compiled, a=a, b=b: c(a, b)
    secs, k = benchmark.time_windows(call, spec["windows"], spec["steps_per_window"])
    per = [flop * k / s / 1e9 for s in secs]
    peaks[name] = {"gflop_per_s": statistics.median(per), "windows": per,
                   "gflop_per_call": flop / 1e9, "steps_per_window": k}
  return {"n": n, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "peaks": peaks}


# ---------------------------------------------------------------- machine and provenance


def lscpu(text: str | None = None) -> dict:
  """``{'model', 'flags' (list), 'sockets', 'cores_per_socket', 'threads_per_core'}`` from
  ``lscpu`` (or its output ``text``); fields it does not give are ``None`` (flags from
  ``/proc/cpuinfo`` then)."""
  if text is None:
    try:
      text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                            env=dict(os.environ, LC_ALL="C")).stdout
    except (OSError, subprocess.SubprocessError):
      text = ""
  fields = dict((k.strip(), v.strip()) for k, _, v in
                (line.partition(":") for line in text.splitlines()) if _)
  flags = fields.get("Flags")
  if flags is None:
    try:
      m = re.search(r"^flags\s*:\s*(.*)$", pathlib.Path("/proc/cpuinfo").read_text(), re.M)
      flags = m.group(1) if m else ""
    except OSError:
      flags = ""
  as_int = lambda k: int(fields[k]) if fields.get(k, "").isdigit() else None
  return {"model": fields.get("Model name"), "flags": flags.split(),
          "sockets": as_int("Socket(s)"), "cores_per_socket": as_int("Core(s) per socket"),
          "threads_per_core": as_int("Thread(s) per core")}


# ---------------------------------------------------------------- rows and files


def _median(runs: list[dict], key: str):
  vals = [r[key] for r in runs if r.get(key) is not None]
  return statistics.median(vals) if vals else None


def make_row(model: str, family: str, dtype: str, jax_runs: list[dict],
             torch_runs: list[dict], peaks: dict, error: str = "") -> dict:
  """One table row (the :data:`COLUMNS`) from the child results of one model and dtype:
  medians over rounds; percentages of ``peaks`` (``{dtype: GFLOP/s}``); ratios JAX / PyTorch
  images/s where ``torch_runs`` is not empty; ``None`` where a value is missing."""
  row = dict.fromkeys(COLUMNS)
  row.update(model=model, family=family, dtype=dtype, error=error)
  if jax_runs:
    batch = jax_runs[0]["batch"]
    row.update(
        params=jax_runs[0]["n_params"],
        train_images_per_s=_median(jax_runs, "train_images_per_s"),
        inference_images_per_s=_median(jax_runs, "inference_images_per_s"),
        train_gflop_per_image=jax_runs[0]["train_gflop_per_step"] / batch,
        inference_gflop_per_image=jax_runs[0]["inference_gflop_per_step"] / batch,
        train_gflop_per_s=_median(jax_runs, "train_gflop_per_s"),
        inference_gflop_per_s=_median(jax_runs, "inference_gflop_per_s"),
        train_compile_s=_median(jax_runs, "train_compile_s"))
    for what in ("train", "inference"):
      for peak_dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        p = peaks.get(peak_dtype)
        if p:
          row[f"{what}_pct_of_{short}_peak"] = 100.0 * row[f"{what}_gflop_per_s"] / p
  if torch_runs:
    row["torch_train_images_per_s"] = _median(torch_runs, "train_images_per_s")
    row["torch_inference_images_per_s"] = _median(torch_runs, "inference_images_per_s")
    if jax_runs:
      row["ratio_train"] = row["train_images_per_s"] / row["torch_train_images_per_s"]
      row["ratio_inference"] = (row["inference_images_per_s"]
                                / row["torch_inference_images_per_s"])
  return row


def _fmt(v, digits: int = 3) -> str:
  """A cell: '-' for None, thousands separators for ints, ``digits`` significant digits
  (at least the integer part) for floats."""
  if v is None or v == "":
    return "-"
  if isinstance(v, int):
    return f"{v:,}"
  if isinstance(v, float):
    if v == 0 or abs(v) >= 10 ** (digits - 1):
      return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"
  return str(v)


def _pair(a, b) -> str:
  return "-" if a is None and b is None else f"{_fmt(a)} / {_fmt(b)}"


def _pct_pair(a, b) -> str:
  pct = lambda v: "-" if v is None else f"{v:.1f}%"
  return "-" if a is None and b is None else f"{pct(a)} / {pct(b)}"


def table_md(rows: list[dict], meta: dict) -> str:
  """The Markdown table of ``rows`` with a footer describing ``meta``."""
  head = ["model", "family", "params", "dtype", "train images/s", "inference images/s",
          "GFLOP/image train / inference", "GFLOP/s train / inference",
          "train % of fp32 / bf16 peak", "inference % of fp32 / bf16 peak",
          "train compile s", "PyTorch images/s train / inference",
          "JAX / PyTorch train", "JAX / PyTorch inference"]
  align = ["---", "---", "---:", "---"] + ["---:"] * (len(head) - 4)
  lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
  for r in rows:
    if r["error"]:
      lines.append(f"| `{r['model']}` | {r['family']} | - | {r['dtype']} | failed: "
                   f"{r['error'].splitlines()[0][:120]} |" + " |" * (len(head) - 5))
      continue
    ratio = lambda v: "-" if v is None else f"{v:.2f}x"
    torch = ("no twin" if r["torch_train_images_per_s"] is None
             else _pair(r["torch_train_images_per_s"], r["torch_inference_images_per_s"]))
    cells = [f"`{r['model']}`", r["family"], _fmt(r["params"]), r["dtype"],
             _fmt(r["train_images_per_s"]), _fmt(r["inference_images_per_s"]),
             _pair(r["train_gflop_per_image"], r["inference_gflop_per_image"]),
             _pair(r["train_gflop_per_s"], r["inference_gflop_per_s"]),
             _pct_pair(r["train_pct_of_fp32_peak"], r["train_pct_of_bf16_peak"]),
             _pct_pair(r["inference_pct_of_fp32_peak"], r["inference_pct_of_bf16_peak"]),
             _fmt(r["train_compile_s"], 2), torch, ratio(r["ratio_train"]),
             ratio(r["ratio_inference"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n" + footer(meta) + "\n"


def footer(meta: dict) -> str:
  """The table's description: machine, software, commit, settings, peaks, wall time."""
  cpu = meta["lscpu"]
  flags = set(cpu["flags"])
  speed = ", ".join(f"{f} {'yes' if f in flags else 'no'}"
                    for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
  git = meta["git"]
  commit = (git["commit"] or "unknown")[:7]
  if git["dirty_files"]:
    commit += f"+dirty (differing files: {', '.join(git['dirty_files'])})"
  peaks = meta.get("peak") or {}
  peak_txt = "; ".join(
      f"{d} {p['gflop_per_s']:,.1f} GFLOP/s" for d, p in (peaks.get("peaks") or {}).items())
  j = meta.get("versions") or {}
  torch_v = f", torch {j['torch']}" if j.get("torch") else ""
  state = "" if meta["complete"] else " **Incomplete** (interrupted or still running)."
  a = meta["settings"]
  spw = a["steps_per_window"] or "~2 s of"
  cpu_name = cpu["model"] or meta["machine"]["cpu"]
  return (
      f"Measured {meta['started']} to {meta['finished']} on {cpu_name} "
      f"({meta['machine']['cores']} logical CPUs; {speed}); JAX backend "
      f"{j.get('backend', '?')} ({j.get('device_kind', '?')}), jax {j.get('jax', '?')} / "
      f"jaxlib {j.get('jaxlib', '?')}{torch_v}, Python {meta['python']}; commit {commit}; "
      f"XLA_FLAGS `{meta['xla_flags']}`, LD_PRELOAD `{meta['ld_preload']}`; load average "
      f"{meta['load_start'][0]:.2f} at the start, {meta['load_end'][0]:.2f} at the end. "
      f"Batch {a['batch']}, {'x'.join(map(str, INPUT))} random uint8 images, random weights; "
      f"median of {a['windows']} timed windows of {spw} steps after 3 warm-up steps, "
      f"{a['rounds']} round(s); GFLOP from XLA `cost_analysis` (multiply-add = 2). Peaks "
      f"(jitted {peaks.get('n', '?')}x{peaks.get('n', '?')} matmul): {peak_txt or 'not measured'}. "
      f"{meta['n_models']} model(s) in {meta['wall_s'] / 60:.1f} min.{state}\n\n"
      f"All CPU flags (lscpu): `{' '.join(cpu['flags'])}`")


def write_outputs(out: pathlib.Path, meta: dict, rows: list[dict],
                  records: list[dict]) -> None:
  """(Re)writes ``results.jsonl``, ``table.csv`` and ``table.md`` in ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "results.jsonl", "w") as f:
    f.write(json.dumps({"record": "meta", **meta}) + "\n")
    for rec in records:
      f.write(json.dumps({"record": "row", **rec}) + "\n")
  with open(out / "table.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
  (out / "table.md").write_text(table_md(rows, meta))


# ---------------------------------------------------------------- the command line


def _arg_parser(names: list[str]) -> argparse.ArgumentParser:
  positive = benchmark._positive  # pylint: disable=protected-access
  ap = argparse.ArgumentParser(prog="python -m experiments.zoo_benchmark.run",
                               description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=None,
                  help=f"models to measure, space- or comma-separated (default all: "
                  f"{', '.join(names)})")
  ap.add_argument("--windows", type=positive, default=5,
                  help="timed windows per measurement")
  ap.add_argument("--steps-per-window", type=positive, default=None,
                  help="steps per timed window (default: about 2 s per window)")
  ap.add_argument("--rounds", type=positive, default=1,
                  help="child runs per model and framework (medians over them)")
  ap.add_argument("--batch", type=positive, default=128)
  ap.add_argument("--dtypes", default="float32",
                  help="compute dtypes, comma-separated: float32, bfloat16 (one row each)")
  ap.add_argument("--peak-size", type=positive, default=4096,
                  help="side n of the n x n matmul that measures the peaks")
  ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch twins")
  ap.add_argument("--torch-threads", type=positive, default=2)
  ap.add_argument("--no-tcmalloc", action="store_true",
                  help="do not preload tcmalloc (see python -m cnn_jax.benchmark)")
  ap.add_argument("--out", type=pathlib.Path, default=HERE,
                  help="output folder (default: experiments/zoo_benchmark)")
  return ap


def main(argv=None) -> int:
  """The command line (see the module docstring). Returns 0, or 1 when a model failed;
  argument errors exit 2."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == [_PEAK_CHILD_ARG]:
    print(benchmark.RESULT_PREFIX + json.dumps(run_peak(json.loads(argv[1]))), flush=True)
    return 0
  t0 = time.time()
  # Here, not at the top: the parent stays free of jax (which provenance imports).
  from cnn_jax import provenance  # pylint: disable=g-import-not-at-top
  models = zoo()
  ap = _arg_parser(list(models))
  a = ap.parse_args(argv)
  chosen = list(models)
  if a.models:
    chosen = [m for arg in a.models for m in arg.split(",") if m]
    unknown = [m for m in chosen if m not in models]
    if unknown:
      ap.error(f"--models: not in the zoo: {', '.join(unknown)}; the zoo: "
               f"{', '.join(models)}")
  dtypes = [d for d in a.dtypes.split(",") if d]
  if not dtypes or any(d not in ("float32", "bfloat16") for d in dtypes):
    ap.error(f"--dtypes: expected float32 and/or bfloat16, got {a.dtypes!r}")

  env = benchmark.child_env(tcmalloc=not a.no_tcmalloc)
  mach = benchmark.machine()
  tag = benchmark.machine_tag(mach)
  twins = None if a.no_torch else benchmark.torch_twin_names(env)
  meta = {
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "finished": None, "complete": False, "wall_s": 0.0, "n_models": 0,
      "argv": argv, "machine": mach, "lscpu": lscpu(), "git": provenance.git_state(),
      "python": sys.version.split()[0], "xla_flags": env.get("XLA_FLAGS", ""),
      "ld_preload": env.get("LD_PRELOAD", ""), "load_start": list(os.getloadavg()),
      "load_end": list(os.getloadavg()), "torch_twins": twins,
      "settings": {"batch": a.batch, "input": list(INPUT), "windows": a.windows,
                   "steps_per_window": a.steps_per_window, "rounds": a.rounds,
                   "dtypes": dtypes, "peak_size": a.peak_size},
      "versions": {}, "peak": None}
  print(f"zoo benchmark: {len(chosen)} model(s) x {', '.join(dtypes)}, batch {a.batch}, "
        f"{a.windows} windows, {a.rounds} round(s); PyTorch twins: "
        f"{', '.join(t for t in (twins or []) if t in chosen) or 'none'}  {tag}", flush=True)

  peak_dtypes = ["float32", "bfloat16"]
  peak_spec = {"n": a.peak_size, "dtypes": peak_dtypes, "windows": a.windows,
               "steps_per_window": a.steps_per_window}
  meta["peak"] = benchmark.run_child(
      [sys.executable, "-m", "experiments.zoo_benchmark.run", _PEAK_CHILD_ARG,
       json.dumps(peak_spec)], env, "peak matmul")
  peaks = {d: p["gflop_per_s"] for d, p in meta["peak"]["peaks"].items()}
  print("peak: " + ", ".join(f"{d} {p:,.1f} GFLOP/s" for d, p in peaks.items())
        + f" ({a.peak_size}x{a.peak_size} matmul)  {tag}", flush=True)

  rows, records, failed = [], [], 0
  for name in chosen:
    info = models[name]
    for dtype in dtypes:
      spec = dict(model=name, batch=a.batch, input=list(INPUT), dtype=dtype,
                  windows=a.windows, steps_per_window=a.steps_per_window, materialize="auto",
                  num_classes=NUM_CLASSES, convs="project", model_kwargs=info["model_kwargs"],
                  optim=info["optim"])
      jax_runs, torch_runs, error = [], [], ""
      try:
        for _ in range(a.rounds):
          res = benchmark.run_child(benchmark.jax_child_cmd(spec), env, f"JAX {name}")
          jax_runs.append(res)
          if twins and name in twins:
            torch_runs.append(benchmark.run_child(
                benchmark.torch_child_cmd(name, a.batch, INPUT, dtype, NUM_CLASSES, a.windows,
                                          a.torch_threads, res["n_params"],
                                          a.steps_per_window), env, f"torch {name}"))
      except SystemExit as e:  # run_child's error: record it, go on with the next model
        error, failed = str(e.code), failed + 1
      row = make_row(name, info["family"], dtype, jax_runs, torch_runs, peaks, error)
      rows.append(row)
      records.append({"model": name, "dtype": dtype, "config": info["config"], "spec": spec,
                      "row": row, "jax": jax_runs, "torch": torch_runs})
      if jax_runs and not meta["versions"]:
        meta["versions"] = {k: jax_runs[0][k] for k in ("jax", "jaxlib", "backend",
                                                        "device_kind")}
      if torch_runs:
        meta["versions"]["torch"] = torch_runs[0]["torch"]
      print(f"{name} {dtype}: " + (f"FAILED {error.splitlines()[0]}" if error else (
          f"train {_fmt(row['train_images_per_s'])} images/s "
          f"({_fmt(row['train_gflop_per_s'])} GFLOP/s, "
          f"{row['train_pct_of_fp32_peak']:.1f}% of fp32 peak), inference "
          f"{_fmt(row['inference_images_per_s'])} images/s"
          + (f"; JAX/PyTorch train {row['ratio_train']:.2f}x, inference "
             f"{row['ratio_inference']:.2f}x" if row["ratio_train"] else ""))) + f"  {tag}",
            flush=True)
      meta.update(n_models=len({r["model"] for r in rows}), wall_s=time.time() - t0,
                  load_end=list(os.getloadavg()),
                  finished=datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"))
      write_outputs(a.out, meta, rows, records)
  meta.update(complete=True, wall_s=time.time() - t0, load_end=list(os.getloadavg()),
              finished=datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"))
  write_outputs(a.out, meta, rows, records)
  print(f"wrote {a.out / 'table.md'}, table.csv, results.jsonl ({meta['wall_s'] / 60:.1f} "
        f"min)  {tag}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
