"""Table 1, the evolution of CNN architectures: measure each model on this machine.

    python -m experiments.evolution.run [--models lenet5 alexnet ...] [--batch 32] \
        [--windows 5] [--batches-per-window 2] [--min-window-s 1] [--warmup 2] \
        [--out experiments/evolution/measurements.jsonl]

No training and no trained weights: every number is a property of the architecture
(parameters, MACs, weight layers) or of running it (compile time, inference speed) with
random weights. Per model (:func:`measure`):

* ``params``: entries of the ``params`` collection (``cnn_jax.models.count_params`` of the
  initialised variables; BatchNorm statistics are not parameters), checked equal to the
  sum of :func:`cnn_jax.summary.layer_table`'s per-module column;
* ``macs``: multiply-accumulates per image of one forward pass,
  :func:`cnn_jax.summary.count_macs` (conv + dense + every other ``dot_general``, padding
  taps included; FLOPs = 2 x MACs); ``macs_valid_taps``: the same without taps that land
  on zero padding (what XLA counts); ``xla_flops``: XLA's ``cost_analysis()`` FLOPs per
  image of the compiled forward pass (:func:`cnn_jax.summary.xla_flops`, which also counts
  elementwise ops);
* ``weight_layers``: module calls of a weight-layer type (:data:`WEIGHT_TYPES`) that do
  MACs, in :func:`cnn_jax.summary.layer_table` (every branch counted; a module called twice
  counts twice); ``weight_layers_longest_path``: the most weight layers on any one path
  from the input to the logits through the traced forward pass (:func:`longest_path`), the
  reading of "depth" under which GoogLeNet has 22 layers and ResNet-50 50;
* ``compile_s``: seconds to lower and compile ``jax.jit(model.apply)`` at the batch size;
* ``images_per_s``: median over ``windows`` timed windows (``images_per_s_windows`` lists
  them), each of ``batches_per_window`` calls (``--batches-per-window``, raised for fast
  models until a window lasts ``--min-window-s``), after ``warmup`` calls that are not
  counted; float32 random images and weights, ``model.apply(variables, x, train=False)``,
  ``jax.block_until_ready`` at the end of each window.

Output: ``--out`` is replaced atomically (a temporary file, then ``os.replace``), so a
killed run leaves the previous file intact. Line 1 is the provenance
(``cnn_jax.provenance.run_provenance()``: commit, CPU, jax versions, ``XLA_FLAGS``,
``LD_PRELOAD``; plus the date, the settings and the total wall time), then one record per
model. ``python -m experiments.evolution.report`` turns it into the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import statistics
import sys
import time

from cnn_jax import xla_cpu
from experiments.evolution import rows as rows_mod

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "measurements.jsonl"

# Flax module types that hold a weight matrix or kernel applied by one conv/dot_general.
WEIGHT_TYPES = ("Conv", "ConvTranspose", "ConvLocal", "Dense", "DenseGeneral", "Einsum")
_WEIGHT_OPS = ("conv_general_dilated", "dot_general")

# Keys of a model record, in the order they are written.
RECORD_KEYS = ("model", "input_shape", "num_classes", "batch", "params", "macs",
               "macs_valid_taps", "xla_flops", "weight_layers", "weight_layers_longest_path",
               "compile_s", "images_per_s", "images_per_s_windows", "batches_per_window",
               "warmup_batches", "wall_s")


def _sub_jaxprs(eqn) -> list:
  """The jaxprs held in ``eqn.params`` (jit, custom_jvp/vjp, remat, scan, while bodies)."""
  from jax.extend import core as jax_core  # pylint: disable=g-import-not-at-top
  out = []
  for key, val in eqn.params.items():
    if key in ("jvp_jaxpr_fun", "jvp_jaxpr_thunk"):
      continue  # derivative rules: not run by the forward pass
    for v in (val if isinstance(val, (tuple, list)) else (val,)):
      if isinstance(v, jax_core.ClosedJaxpr):
        out.append(v.jaxpr)
      elif isinstance(v, jax_core.Jaxpr):
        out.append(v)
  return out


def _path_depths(jaxpr, in_depths, prefix, is_weight) -> list[int]:
  """Longest weight-layer count reaching each output of ``jaxpr``, given the inputs'."""
  from jax.extend import core as jax_core  # pylint: disable=g-import-not-at-top
  from cnn_jax.analysis.tracing import tags_of  # pylint: disable=g-import-not-at-top
  depth: dict = {}

  def get(v):
    return 0 if isinstance(v, jax_core.Literal) else depth.get(v, 0)

  for v, d in zip(jaxpr.invars, in_depths):
    depth[v] = d
  for eqn in jaxpr.eqns:
    tags = prefix + tags_of(eqn.source_info.name_stack)
    ins = [get(v) for v in eqn.invars]
    d_in = max(ins, default=0)
    n_out = len(eqn.outvars)
    subs = _sub_jaxprs(eqn)
    if eqn.primitive.name in _WEIGHT_OPS:
      out = [d_in + int(is_weight(tags))] * n_out
    elif eqn.primitive.name == "cond":  # operands follow the branch index; any branch may run
      branches = [_path_depths(b.jaxpr, ins[1:], tags, is_weight)
                  for b in eqn.params["branches"]]
      out = [max(ins[0], *col) for col in zip(*branches)]
    elif len(subs) == 1 and len(subs[0].invars) == len(ins) and len(subs[0].outvars) == n_out:
      out = _path_depths(subs[0], ins, tags, is_weight)  # jit, custom_jvp/vjp, remat: 1:1
    elif subs:  # loops: the longest path through one trip, after the deepest input
      inner = max(max(_path_depths(s, [0] * len(s.invars), tags, is_weight), default=0)
                  for s in subs)
      out = [d_in + inner] * n_out
    else:
      out = [d_in] * n_out
    for v, d in zip(eqn.outvars, out):
      depth[v] = d
  return [get(v) for v in jaxpr.outvars]


def longest_path(model, input_shape) -> tuple[int, int]:
  """Weight layers on the longest input-to-logits path of ``model``'s forward pass, and its
  MACs per image without zero-padding taps.

  Traces ``model.apply(v, x, train=False)`` on one ``(1, H, W, C)`` float32 image
  (:func:`cnn_jax.analysis.tracing.trace_model`; nothing is computed) and walks the jaxpr
  in order, giving each value the largest number of weight layers on any path of ops from
  the image to it. A weight layer is a ``conv_general_dilated`` or ``dot_general`` traced
  inside a module call of a :data:`WEIGHT_TYPES` type (so attention's ``QK^T``/``AV``
  products are not weight layers). Branches merged by concatenation or addition count
  their longest member only: GoogLeNet gives 22, ResNet-50 50 (the projection shortcut is
  off the longest path), as their papers count. A loop body (``scan``/``while``) counts
  one trip; no registry model has one in its forward pass.

  Args:
    model: an unbound Flax module, NHWC input.
    input_shape: ``(H, W, C)`` of one image.

  Returns:
    ``(weight_layers_on_longest_path, macs_per_image_without_padding_taps)``.

  Raises:
    ValueError: bad ``input_shape``; whatever the model raises for that shape.
  """
  from cnn_jax.analysis.counting import macs_by_tag  # pylint: disable=g-import-not-at-top
  from cnn_jax.analysis.tracing import trace_model  # pylint: disable=g-import-not-at-top
  traced = trace_model(model, input_shape, batch=1)
  types = [c.type for c in traced.calls]

  def is_weight(tags):
    return bool(tags) and types[tags[-1]] in WEIGHT_TYPES

  jaxpr = traced.closed_jaxpr.jaxpr
  # invars: the flattened variables, then the image; only the image starts a path.
  depths = _path_depths(jaxpr, [0] * len(jaxpr.invars), (), is_weight)
  valid = sum(macs_by_tag(jaxpr, count_padding=False).values())
  return max(depths, default=0), int(valid)


def time_forward(model, input_shape, batch: int, windows: int, batches_per_window: int,
                 warmup: int, num_classes: int, min_window_s: float = 1.0,
                 seed: int = 0) -> dict:
  """Inference speed of ``jax.jit(model.apply)`` on random float32 images and weights.

  Args:
    model: unbound Flax module called as ``model.apply(v, x, train=False)``.
    input_shape: ``(H, W, C)`` of one image.
    batch: images per call.
    windows: timed windows (>= 1); the result is their median.
    batches_per_window: the fewest calls per window (>= 1); the window is blocked on once,
      at its end.
    warmup: untimed calls after compilation (>= 0).
    num_classes: expected logits width, checked.
    min_window_s: windows are lengthened to at least this many seconds (estimated from
      the last warm-up call): a LeNet-5 batch takes about a millisecond, and windows that
      short measure timer and dispatch noise.
    seed: PRNG seed of the weights and images.

  Returns:
    ``{'params', 'compile_s', 'images_per_s', 'images_per_s_windows', 'window_batches'}``:
    the parameter count of the initialised variables, seconds to lower and compile the
    forward pass, images/s (median, and per window in order), and calls per window.

  Raises:
    ValueError: a count below its minimum.
    RuntimeError: the logits are not ``(batch, num_classes)`` or not finite.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  if batch < 1 or windows < 1 or batches_per_window < 1 or warmup < 0:
    raise ValueError(f"need batch, windows, batches_per_window >= 1 and warmup >= 0; got "
                     f"{batch}, {windows}, {batches_per_window}, {warmup}")
  key = jax.random.PRNGKey(seed)
  x = jax.random.normal(key, (batch, *input_shape), jnp.float32)
  # Initialised under jit: eager init of a 224x224 model runs op by op and is slow.
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(key, x[:1])
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  t0 = time.perf_counter()
  compiled = fwd.lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  y = jax.block_until_ready(compiled(variables, x))
  if y.shape != (batch, num_classes) or not bool(jnp.isfinite(y).all()):
    raise RuntimeError(f"logits of shape {y.shape} (want {(batch, num_classes)}), "
                       f"finite: {bool(jnp.isfinite(y).all())}")
  one_s = None
  for _ in range(max(warmup, 1)):  # at least one timed call to size the windows
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x))
    one_s = time.perf_counter() - t0
  n = max(batches_per_window, math.ceil(min_window_s / max(one_s, 1e-6)))
  rates = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(n):
      y = compiled(variables, x)
    jax.block_until_ready(y)
    rates.append(n * batch / (time.perf_counter() - t0))
  return {"params": models.count_params(variables), "compile_s": compile_s,
          "images_per_s": statistics.median(rates), "images_per_s_windows": rates,
          "window_batches": n}


def measure(name: str, *, batch: int = 32, windows: int = 5, batches_per_window: int = 2,
            warmup: int = 2, min_window_s: float = 1.0,
            input_shape: tuple[int, int, int] | None = None,
            num_classes: int | None = None) -> dict:
  """One model's record (keys :data:`RECORD_KEYS`; see the module docstring).

  Args:
    name: registry name; a Table 1 model unless ``input_shape`` and ``num_classes`` are
      both given.
    batch, windows, batches_per_window, warmup, min_window_s: as in
      :func:`time_forward`.
    input_shape: ``(H, W, C)``; default the row's native input (224x224x3, LeNet-5
      32x32x1).
    num_classes: default the row's (1000, LeNet-5 10).

  Returns:
    The record: counts as ints, ``xla_flops`` per image (float), seconds, images/s.

  Raises:
    KeyError: ``name`` is not a Table 1 model and no shape/classes were given, or not
      registered.
    AssertionError: the traced parameter count differs from the initialised one.
    Whatever :func:`time_forward` raises.
  """
  from cnn_jax import models, summary  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  if input_shape is None or num_classes is None:
    r = rows_mod.row(name)
    input_shape = r.input_shape if input_shape is None else input_shape
    num_classes = r.num_classes if num_classes is None else num_classes
  input_shape = tuple(int(d) for d in input_shape)
  model = models.create(name, num_classes=num_classes)
  layers = summary.layer_table(model, input_shape)
  on_path, valid = longest_path(model, input_shape)
  xla = summary.xla_flops(model, input_shape)
  timing = time_forward(model, input_shape, batch, windows, batches_per_window, warmup,
                        num_classes, min_window_s)
  traced_params = sum(r.params for r in layers)
  if traced_params != timing["params"]:
    raise AssertionError(f"{name}: {traced_params} parameters traced, "
                         f"{timing['params']} initialised")
  rec = {
      "model": name, "input_shape": list(input_shape), "num_classes": num_classes,
      "batch": batch, "params": timing["params"], "macs": sum(r.macs for r in layers),
      "macs_valid_taps": valid, "xla_flops": xla,
      "weight_layers": sum(1 for r in layers if r.type in WEIGHT_TYPES and r.macs > 0),
      "weight_layers_longest_path": on_path, "compile_s": timing["compile_s"],
      "images_per_s": timing["images_per_s"],
      "images_per_s_windows": timing["images_per_s_windows"],
      "batches_per_window": timing["window_batches"], "warmup_batches": warmup,
  }
  rec["wall_s"] = time.perf_counter() - t_start
  return rec


def write_jsonl_atomic(path: str | pathlib.Path, records: list[dict]) -> None:
  """Writes ``records`` one JSON object a line to ``path`` through ``<path>.tmp`` and
  ``os.replace``: readers see the old file or the whole new one, never a part."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def run(names, out: str | pathlib.Path = DEFAULT_OUT, *, batch: int = 32, windows: int = 5,
        batches_per_window: int = 2, warmup: int = 2, min_window_s: float = 1.0,
        log=print) -> list[dict]:
  """Measures ``names`` in order and replaces ``out`` with the provenance line and one
  record per model (:func:`measure`; a model that raises gets ``{'model', 'error'}``
  instead and the others still run).

  Args:
    names: registry names of Table 1 models (:data:`rows.ROWS`), in the order to measure.
    out: the JSONL file to replace (:func:`write_jsonl_atomic`), once all are measured.
    batch, windows, batches_per_window, warmup, min_window_s: as in :func:`time_forward`.
    log: ``print``-like progress sink (called with ``flush=True``).

  Returns:
    All lines written, provenance first: the provenance dict (``event``, ``date`` in UTC
    ISO 8601, :func:`cnn_jax.provenance.run_provenance` keys, ``settings``, ``wall_s``
    seconds) and the records (:data:`RECORD_KEYS`; images/s, seconds, MACs per image).

  Raises:
    KeyError: a name that is not a Table 1 model (before anything is measured).
  """
  from cnn_jax import provenance  # pylint: disable=g-import-not-at-top
  names = list(names)
  for n in names:
    rows_mod.row(n)
  t0 = time.perf_counter()
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  prov = {"event": "provenance", "date": date, **provenance.run_provenance(),
          "settings": {"batch": batch, "windows": windows,
                       "batches_per_window": batches_per_window,
                       "min_window_s": min_window_s, "warmup_batches": warmup,
                       "dtype": "float32", "models": names}}
  recs = []
  for i, n in enumerate(names, 1):
    log(f"[{i}/{len(names)}] {n} ...", flush=True)
    try:
      rec = measure(n, batch=batch, windows=windows, batches_per_window=batches_per_window,
                    warmup=warmup, min_window_s=min_window_s)
    except Exception as e:  # pylint: disable=broad-except
      # One model's failure must not discard the minutes spent on the others.
      rec = {"model": n, "error": f"{type(e).__name__}: {e}"}
      log(f"[{i}/{len(names)}] {n} FAILED: {rec['error']}", flush=True)
    else:
      log(f"[{i}/{len(names)}] {n}: {rec['params']:,} params, {rec['macs'] / 1e9:.3f} "
          f"GMACs, XLA/(2 MACs) {rec['xla_flops'] / (2 * rec['macs']):.3f}, "
          f"{rec['weight_layers_longest_path']}/{rec['weight_layers']} weight layers, "
          f"compile {rec['compile_s']:.1f} s, {rec['images_per_s']:.1f} images/s "
          f"({rec['wall_s']:.0f} s)", flush=True)
    recs.append(rec)
  prov["wall_s"] = time.perf_counter() - t0
  lines = [prov, *recs]
  write_jsonl_atomic(out, lines)
  log(f"wrote {out} ({prov['wall_s'] / 60:.1f} min)", flush=True)
  return lines


def main(argv=None) -> int:
  """CLI (see the module docstring). Returns 1 if any model failed, else 0."""
  names = [r.name for r in rows_mod.ROWS]
  ap = argparse.ArgumentParser(prog="python -m experiments.evolution.run",
                               description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", choices=names, default=names, metavar="NAME",
                  help=f"registry names, in table order by default: {' '.join(names)}")
  ap.add_argument("--batch", type=int, default=32, help="images per call (default 32)")
  ap.add_argument("--windows", type=int, default=5, help="timed windows (median; default 5)")
  ap.add_argument("--batches-per-window", type=int, default=2,
                  help="calls per timed window (default 2)")
  ap.add_argument("--min-window-s", type=float, default=1.0,
                  help="more calls per window until it lasts this long (default 1 s)")
  ap.add_argument("--warmup", type=int, default=2, help="uncounted calls first (default 2)")
  ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                  help=f"JSONL to replace (default {DEFAULT_OUT.relative_to(HERE.parents[1])})")
  args = ap.parse_args(argv)
  # XLA reads XLA_FLAGS once, at its first computation: set the training runs' CPU flags
  # before anything runs so that the speeds compare with cnn_jax.train's.
  xla_cpu.apply_and_report("experiments.evolution.run")
  lines = run(args.models, args.out, batch=args.batch, windows=args.windows,
              batches_per_window=args.batches_per_window, warmup=args.warmup,
              min_window_s=args.min_window_s)
  return 1 if any("error" in r for r in lines[1:]) else 0


if __name__ == "__main__":
  sys.exit(main())
