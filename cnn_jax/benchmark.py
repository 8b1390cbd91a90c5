"""Training and inference speed of a model on this machine, optionally side by side with PyTorch.

    python -m cnn_jax.benchmark --model resnet20 --batch 128 [--input 32x32x3]
        [--dtype float32|bfloat16] [--compare-torch] [--rounds R] [--windows 5]
        [--steps-per-window N] [--materialize auto|on|off] [--conv-backend auto|xla|onednn]
        [--convs project|xla] [--no-tcmalloc] [--json FILE]

The JAX side runs in a child process, so that its environment is set before JAX starts: the
``XLA_FLAGS`` that ``python -m cnn_jax.train`` runs with (:func:`cnn_jax.xla_cpu.apply_cpu_defaults`:
the Eigen-convolution flag on jaxlib 0.10, unless ``XLA_FLAGS`` sets it or
``CNN_JAX_KEEP_XLA_FLAGS=1``), tcmalloc in ``LD_PRELOAD`` when
:func:`cnn_jax.xla_cpu.find_tcmalloc` finds it (``--no-tcmalloc``: glibc malloc), and the
trainer's ``materialize_conv_inputs`` and ``conv_backend`` settings (``auto``: materialized
conv inputs on the CPU backend with XLA's convolutions; oneDNN's convolutions where
:func:`cnn_jax.ops.cpu_conv.resolve_backend` finds them, see :mod:`cnn_jax.ops.onednn_conv`).
It measures

* compile time (s) of the train step and of the inference step (``lower`` + ``compile``);
* training images/s of the trainer's own train step, :func:`cnn_jax.steps.make_train_step`
  (random crop + flip, normalisation, forward, backward, SGD with Nesterov momentum and
  weight decay from :func:`cnn_jax.config.base_config`, BatchNorm in training mode), jitted
  with the state donated as in ``cnn_jax/train.py``, and inference images/s of
  :func:`cnn_jax.steps.make_eval_step` (``train=False`` forward, loss and correct sums): each
  the median over ``--windows`` timed windows of ``--steps-per-window`` steps (default: about
  2 s per window) after three warm-up steps, on one batch of random uint8 images kept on the
  device (input pipeline excluded);
* achieved GFLOP/s: XLA's ``cost_analysis()`` FLOPs of the compiled step times steps/s (XLA
  counts no FLOPs in a custom call, so under the oneDNN backend the FLOPs are those of the
  same step compiled with XLA's convolutions);
* peak memory: the child's max RSS (``resource.getrusage``) and the compiled steps'
  ``memory_analysis()`` temporary-buffer sizes.

``--dtype bfloat16`` builds the model with ``dtype=jnp.bfloat16`` and passes the same dtype
to the steps, as ``config.dtype`` does in :func:`cnn_jax.train.build_run`; parameters and
optimizer state stay float32.

``--compare-torch`` also runs the PyTorch twin of the model (``benchmarks/torch_twins.py``,
eager, channels_last, ``torch.set_num_threads(2)``, the same batch, augmentation, optimizer and
dtype, bf16 through ``torch.autocast``) in its own child process, after checking that the twin
has exactly the JAX model's parameter count, and alternates the two (JAX, torch, JAX, torch,
... for ``--rounds`` rounds, default 2) so that a load change on a shared machine falls on
both. It prints both medians over rounds and a line starting ``ratio``: JAX images/s over
torch images/s, training and inference. Both children get the same ``LD_PRELOAD``. PyTorch
is an optional extra (``pip install -e .[torch]``); this module never imports it.

Every printed line ends with the machine: CPU model, core count, and whether the CPU has
AVX-512, AVX512-BF16 and AMX (``/proc/cpuinfo`` flags). ``--json FILE`` appends one JSON
object per invocation (settings, machine, every child's result, medians, ratios) to FILE.
Speed is never asserted in tests: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_TWINS = REPO / "benchmarks" / "torch_twins.py"
RESULT_PREFIX = "BENCHMARK_RESULT "
_CHILD_ARG = "--_jax-child"
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


# ---------------------------------------------------------------- machine description


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
  """``{'avx512': ..., 'avx512_bf16': ..., 'amx': ...}`` from the ``flags`` of
  ``/proc/cpuinfo`` (or the text ``cpuinfo``); all False where it cannot be read. AMX means
  ``amx_bf16`` or ``amx_tile``."""
  if cpuinfo is None:
    try:
      cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
      cpuinfo = ""
  m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
  flags = set(m.group(1).split()) if m else set()
  return {"avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
          "amx": bool(flags & {"amx_bf16", "amx_tile"})}


def core_count() -> int:
  """Logical CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def machine() -> dict:
  """CPU model (:func:`cnn_jax.provenance.cpu_model`), ``cores`` and :func:`cpu_flags`."""
  from cnn_jax import provenance  # pylint: disable=g-import-not-at-top
  return {"cpu": provenance.cpu_model(), "cores": core_count(), **cpu_flags()}


def machine_tag(m: dict) -> str:
  """``'[AMD EPYC, 2 cores, AVX-512 yes, AVX512-BF16 yes, AMX no]'``."""
  yn = lambda b: "yes" if b else "no"
  return (f"[{m['cpu']}, {m['cores']} cores, AVX-512 {yn(m['avx512'])}, "
          f"AVX512-BF16 {yn(m['avx512_bf16'])}, AMX {yn(m['amx'])}]")


# ---------------------------------------------------------------- the JAX child


def time_windows(fn, windows: int, steps_per_window: int | None, warmup: int = 3,
                 target_s: float = 2.0):
  """``warmup`` calls of ``fn`` (each returns something to block on), then ``windows`` timed
  windows of ``steps_per_window`` calls, dispatched back to back and blocked on once at the
  window's end (None: about ``target_s`` seconds per window, from the last warm-up call).
  Returns (seconds per window, a list of ``windows`` floats; steps per window, an int)."""
  import jax  # pylint: disable=g-import-not-at-top
  last = 0.0
  for _ in range(warmup):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    last = time.perf_counter() - t
  n = steps_per_window or max(1, round(target_s / max(last, 1e-6)))
  out = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(n):
      r = fn()
    jax.block_until_ready(r)
    out.append(time.perf_counter() - t)
  return out, n


def _compiled_steps(spec: dict):
  """The trainer's train step (donated) and eval step for ``spec``, compiled, with a train
  state and a random uint8 batch: ``(train, eval, state, (x, y, mask), n_params,
  materialize, train_compile_s, eval_compile_s, conv_backend, (train FLOPs, eval FLOPs))``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, optim, steps, xla_cpu  # pylint: disable=g-import-not-at-top
  from cnn_jax.config import base_config  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops import cpu_conv, depthwise  # pylint: disable=g-import-not-at-top

  batch, (h, w, c), nc = spec["batch"], spec["input"], spec["num_classes"]
  dtype = jnp.dtype(spec["dtype"])
  backend = cpu_conv.resolve_backend(spec.get("conv_backend", "auto"))
  materialize = xla_cpu.resolve_materialize(spec["materialize"], backend)
  cfg = base_config()
  cfg.optim.update(spec.get("optim") or {})
  model = models.create(spec["model"], num_classes=nc, dtype=dtype,
                        **(spec.get("model_kwargs") or {}))
  tx, _ = optim.create_optimizer(cfg.optim, max(1, 50_000 // batch), cfg.num_epochs)
  state = steps.init_state(model, tx, jax.random.key(cfg.seed), (h, w, c))
  n_params = models.count_params(state.params, None)
  mean, std = [128.0] * c, [64.0] * c
  step_kwargs = dict(num_classes=nc, mean=mean, std=std, dtype=dtype)
  train_fn = (
      steps.make_train_step(model, tx, seed=cfg.seed, crop_pad=cfg.data.crop_pad,
                            pad_mode=cfg.data.pad_mode, flip=cfg.data.flip,
                            label_smoothing=cfg.label_smoothing,
                            materialize_conv_inputs=materialize, **step_kwargs))
  train_step = jax.jit(train_fn, donate_argnums=0)
  eval_fn = steps.make_eval_step(model, **step_kwargs)
  eval_step = jax.jit(eval_fn)
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.integers(0, 256, (batch, h, w, c), dtype=np.uint8))
  y = jax.device_put(rng.integers(0, nc, (batch,)).astype(np.int32))
  mask = jax.device_put(np.ones((batch,), np.float32))

  # 'xla': every conv traced as XLA's own (no CPU rerouting by cnn_jax.ops.cpu_conv).
  convs = depthwise.xla_convs() if spec.get("convs") == "xla" else contextlib.nullcontext()
  with cpu_conv.conv_backend(backend), convs:
    t = time.perf_counter()
    train_c = train_step.lower(state, x, y).compile()
    train_compile = time.perf_counter() - t
    t = time.perf_counter()
    eval_c = eval_step.lower(state, x, y, mask).compile()
    eval_compile = time.perf_counter() - t
  flops = compiled_flops(train_c), compiled_flops(eval_c)
  if backend == "onednn" and spec.get("convs") != "xla":
    # Custom calls count no FLOPs: XLA's convs for the count, traced afresh (a jitted
    # function's trace cache does not see the conv context).
    with depthwise.xla_convs():
      flops = (compiled_flops(jax.jit(functools.partial(train_fn)).lower(state, x, y).compile()),
               compiled_flops(jax.jit(functools.partial(eval_fn)).lower(state, x, y, mask)
                              .compile()))

  return (train_c, eval_c, state, (x, y, mask), n_params, materialize, train_compile,
          eval_compile, backend, flops)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled XLA executable (``jax.stages.Compiled``) by XLA's
  ``cost_analysis()`` (its ``'flops'`` entry: a multiply-add counts 2); 0.0 where the backend
  gives no analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def temp_mib(compiled) -> float | None:
  """XLA's temporary-buffer size of a compiled executable in MiB (``memory_analysis()``),
  ``None`` where the backend does not give it."""
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 2**20
  except Exception:  # pylint: disable=broad-except
    return None


def run_jax(spec: dict) -> dict:
  """The JAX measurement (runs in the child process; see the module docstring). ``spec``:
  ``model``, ``batch``, ``input`` [H, W, C], ``dtype``, ``windows``, ``steps_per_window``
  (None = auto), ``materialize`` ('auto', 'on', 'off'), ``num_classes``, ``convs``
  ('project' or 'xla', see ``--convs``); optional ``model_kwargs`` (extra keyword arguments
  of the model constructor, as config key ``model.kwargs``) and ``optim`` (overrides of
  :func:`cnn_jax.config.base_config`'s ``optim`` section, e.g. ``{'name': 'adamw'}``).
  Returns a JSON-ready dict of the measurements: images/s (medians and per window), GFLOP per
  step and GFLOP/s (XLA ``cost_analysis``), compile seconds, MiB, versions and device."""
  import resource  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  batch, (h, w, c) = spec["batch"], spec["input"]
  (train_c, eval_c, state, (x, y, mask), n_params, materialize, train_compile,
   eval_compile, backend, (train_flop, eval_flop)) = _compiled_steps(spec)

  holder = [state]

  def one_train():
    holder[0], m = train_c(holder[0], x, y)
    return m["loss"]

  def one_eval():
    return eval_c(holder[0], x, y, mask)["loss_sum"]

  train_s, n_train = time_windows(one_train, spec["windows"], spec["steps_per_window"])
  eval_s, n_eval = time_windows(one_eval, spec["windows"], spec["steps_per_window"])
  train_ips = [batch * n_train / s for s in train_s]
  eval_ips = [batch * n_eval / s for s in eval_s]
  med_train, med_eval = statistics.median(train_ips), statistics.median(eval_ips)
  return {
      "framework": "jax", "model": spec["model"], "batch": batch, "input": [h, w, c],
      "dtype": spec["dtype"], "n_params": n_params,
      "train_compile_s": train_compile, "inference_compile_s": eval_compile,
      "train_images_per_s": med_train, "train_windows": train_ips,
      "train_steps_per_window": n_train,
      "inference_images_per_s": med_eval, "inference_windows": eval_ips,
      "inference_steps_per_window": n_eval,
      "train_gflop_per_step": train_flop / 1e9, "inference_gflop_per_step": eval_flop / 1e9,
      "train_gflop_per_s": train_flop / 1e9 * med_train / batch,
      "inference_gflop_per_s": eval_flop / 1e9 * med_eval / batch,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "train_temp_mib": temp_mib(train_c), "inference_temp_mib": temp_mib(eval_c),
      "materialize_conv_inputs": materialize, "convs": spec.get("convs", "project"),
      "conv_backend": backend,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "ld_preload": os.environ.get("LD_PRELOAD", ""), "jax": jax.__version__,
      "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
  }


# ---------------------------------------------------------------- the parent


def _positive(s: str) -> int:
  try:
    v = int(s)
  except ValueError:
    v = 0
  if v < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
  return v


def child_env(tcmalloc: bool = True, environ=None) -> dict:
  """The children's environment: ``environ`` (default ``os.environ``) with the trainer's
  ``XLA_FLAGS`` default and, when ``tcmalloc`` and no allocator is preloaded already,
  :func:`cnn_jax.xla_cpu.find_tcmalloc`'s library in front of ``LD_PRELOAD``."""
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  env = dict(os.environ if environ is None else environ)
  xla_cpu.apply_cpu_defaults(env)
  preload = env.get("LD_PRELOAD", "")
  if tcmalloc and not any(a in preload for a in _ALLOCATORS):
    lib = xla_cpu.find_tcmalloc()
    if lib:
      env["LD_PRELOAD"] = f"{lib} {preload}".strip()
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  return env


def jax_child_cmd(spec: dict) -> list[str]:
  """The command line of a JAX child that runs :func:`run_jax` ``(spec)`` and prints its
  result on a line starting :data:`RESULT_PREFIX` (read by :func:`run_child`)."""
  return [sys.executable, "-m", "cnn_jax.benchmark", _CHILD_ARG, json.dumps(spec)]


def torch_child_cmd(model: str, batch: int, input_shape, dtype: str, num_classes: int,
                    windows: int, threads: int, expect_params: int,
                    steps_per_window: int | None = None) -> list[str]:
  """The command line of a PyTorch child (``benchmarks/torch_twins.py``) timing ``model``'s
  twin; it exits 3 when the twin's parameter count differs from ``expect_params``."""
  cmd = [sys.executable, str(TORCH_TWINS), "--model", model, "--batch", str(batch),
         "--input", "x".join(map(str, input_shape)), "--dtype", dtype,
         "--num-classes", str(num_classes), "--windows", str(windows),
         "--threads", str(threads), "--expect-params", str(expect_params)]
  if steps_per_window:
    cmd += ["--steps-per-window", str(steps_per_window)]
  return cmd


def torch_twin_names(env: dict | None = None) -> list[str] | None:
  """The models that have a PyTorch twin in ``benchmarks/torch_twins.py`` (its ``TWINS``),
  read in a child process so that this one never imports torch; ``None`` when PyTorch is not
  installed or the file is missing.

  Raises:
    SystemExit: the child failed for another reason (its last lines).
  """
  if importlib.util.find_spec("torch") is None or not TORCH_TWINS.is_file():
    return None
  code = ("import importlib.util, json, sys; "
          "s = importlib.util.spec_from_file_location('torch_twins', sys.argv[1]); "
          "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
          f"print({RESULT_PREFIX!r} + json.dumps(sorted(m.TWINS)))")
  return run_child([sys.executable, "-c", code, str(TORCH_TWINS)],
                   env if env is not None else dict(os.environ), "torch twin list")


def run_child(cmd: list[str], env: dict, what: str):
  """Runs ``cmd`` with ``env`` and returns the JSON value of its last line starting
  :data:`RESULT_PREFIX`.

  Raises:
    SystemExit: the child exited non-zero (with the last 15 lines of its stderr) or printed
      no result.
  """
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if out.returncode != 0:
    tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
    raise SystemExit(f"cnn_jax.benchmark: the {what} child process failed "
                     f"(exit {out.returncode}):\n{tail}")
  for line in reversed(out.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  raise SystemExit(f"cnn_jax.benchmark: the {what} child printed no result:\n{out.stdout[-2000:]}")


def jax_param_count(name: str, input_shape, num_classes: int = 10) -> int:
  """The JAX model's parameter count, from shapes only (``jax.eval_shape``, no compute)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create(name, num_classes=num_classes)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)),
                                        train=False))
  return models.count_params(v)


def _fmt_mib(v) -> str:
  return "n/a" if v is None else f"{v:,.1f} MiB"


def format_jax(r: dict) -> str:
  return (f"compile {r['train_compile_s']:.1f} s train + {r['inference_compile_s']:.1f} s "
          f"inference; train {r['train_images_per_s']:.1f} images/s "
          f"({r['train_gflop_per_s']:.1f} GFLOP/s); inference "
          f"{r['inference_images_per_s']:.1f} images/s ({r['inference_gflop_per_s']:.1f} "
          f"GFLOP/s); peak RSS {_fmt_mib(r['peak_rss_mib'])}, XLA temp "
          f"{_fmt_mib(r['train_temp_mib'])} train / {_fmt_mib(r['inference_temp_mib'])} inference")


def format_torch(r: dict) -> str:
  return (f"first step {r['first_step_s']:.2f} s; train {r['train_images_per_s']:.1f} images/s; "
          f"inference {r['inference_images_per_s']:.1f} images/s; peak RSS "
          f"{_fmt_mib(r['peak_rss_mib'])} (torch {r['torch']}, {r['threads']} threads)")


def _arg_parser() -> argparse.ArgumentParser:
  from cnn_jax.summary import _parse_input  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m cnn_jax.benchmark",
                               description=__doc__.splitlines()[0])
  ap.add_argument("--model", required=True, help="registered model name, e.g. resnet20")
  ap.add_argument("--batch", type=_positive, required=True)
  ap.add_argument("--input", type=_parse_input, default=(32, 32, 3), help="HxWxC (32x32x3)")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                  help="compute dtype (parameters stay float32)")
  ap.add_argument("--num-classes", type=_positive, default=10)
  ap.add_argument("--compare-torch", action="store_true",
                  help="also time the PyTorch twin (benchmarks/torch_twins.py), alternating")
  ap.add_argument("--rounds", type=_positive, default=None,
                  help="child runs per framework (default 2 with --compare-torch, else 1)")
  ap.add_argument("--windows", type=_positive, default=5, help="timed windows per measurement")
  ap.add_argument("--steps-per-window", type=_positive, default=None,
                  help="steps per timed window (default: about 2 s per window)")
  ap.add_argument("--materialize", choices=("auto", "on", "off"), default="auto",
                  help="materialize_conv_inputs, as the config key (auto: on for CPU with "
                  "XLA's convolutions)")
  ap.add_argument("--conv-backend", choices=("auto", "xla", "onednn"), default="auto",
                  help="as the config key conv_backend (auto: oneDNN on one CPU device when "
                  "installed, see cnn_jax.ops.onednn_conv)")
  ap.add_argument("--convs", choices=("project", "xla"), default="project",
                  help="'project': the models' convolution (cnn_jax.ops.cpu_conv, as "
                  "training runs); 'xla': every conv XLA's own, to measure the rerouting")
  ap.add_argument("--no-tcmalloc", action="store_true",
                  help="do not preload tcmalloc (glibc malloc unless LD_PRELOAD names one)")
  ap.add_argument("--torch-threads", type=_positive, default=2)
  ap.add_argument("--json", metavar="FILE", help="append one JSON object for this run to FILE")
  return ap


def _print_medians(results: dict, what: str, tag: str) -> dict:
  """Prints each framework's median over rounds; returns ``{framework: {key: median}}``."""
  medians = {}
  for fw, runs in results.items():
    if not runs:
      continue
    med = {k: statistics.median(x[k] for x in runs)
           for k in ("train_images_per_s", "inference_images_per_s")}
    medians[fw] = med
    per = lambda k: ", ".join(f"{x[k]:.1f}" for x in runs)
    extra = ""
    if fw == "jax":
      extra = (f"; {statistics.median(x['train_gflop_per_s'] for x in runs):.1f} / "
               f"{statistics.median(x['inference_gflop_per_s'] for x in runs):.1f} GFLOP/s "
               f"train / inference")
    print(f"{fw:<5} median of {len(runs)} round(s) {what}: train "
          f"{med['train_images_per_s']:.1f} images/s ({per('train_images_per_s')}), inference "
          f"{med['inference_images_per_s']:.1f} images/s ({per('inference_images_per_s')})"
          f"{extra}  {tag}", flush=True)
  return medians


def _print_ratio(medians: dict, what: str, tag: str) -> dict | None:
  """Prints the ``ratio`` line (JAX / PyTorch images/s); ``None`` without a torch run."""
  if "torch" not in medians:
    return None
  j, t = medians["jax"], medians["torch"]
  ratios = {k: j[k] / t[k] for k in j}
  print(f"ratio JAX/PyTorch {what}: train {ratios['train_images_per_s']:.2f}x "
        f"({j['train_images_per_s']:.1f} / {t['train_images_per_s']:.1f} images/s), "
        f"inference {ratios['inference_images_per_s']:.2f}x "
        f"({j['inference_images_per_s']:.1f} / {t['inference_images_per_s']:.1f} images/s)  "
        f"{tag}", flush=True)
  return ratios


def _append_json(a, argv, rounds, mach, env, n_jax, results, medians, ratios) -> None:
  """Appends this run's record (arguments, machine, per-round results, medians, ratios)
  as one JSON line to ``a.json``."""
  record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": argv, "model": a.model,
            "batch": a.batch, "input": list(a.input), "dtype": a.dtype, "rounds": rounds,
            "machine": mach, "xla_flags": env.get("XLA_FLAGS", ""),
            "ld_preload": env.get("LD_PRELOAD", ""), "n_params": n_jax,
            "runs": results, "medians": medians, "ratio": ratios}
  with open(a.json, "a") as f:
    f.write(json.dumps(record) + "\n")


def main(argv=None) -> int:
  """The command line (see the module docstring). Returns 0; argument errors exit 2."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == [_CHILD_ARG]:
    print(RESULT_PREFIX + json.dumps(run_jax(json.loads(argv[1]))), flush=True)
    return 0
  ap = _arg_parser()
  a = ap.parse_args(argv)

  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  try:
    models.create(a.model)
  except KeyError as e:
    ap.error(e.args[0])
  if a.compare_torch and importlib.util.find_spec("torch") is None:
    ap.error("--compare-torch needs PyTorch: pip install -e '.[torch]'")
  if a.compare_torch and not TORCH_TWINS.is_file():
    ap.error(f"--compare-torch: {TORCH_TWINS} not found (a source checkout is needed)")
  rounds = a.rounds or (2 if a.compare_torch else 1)
  mach = machine()
  tag = machine_tag(mach)
  env = child_env(tcmalloc=not a.no_tcmalloc)
  shape = "x".join(map(str, a.input))
  what = f"{a.model} batch {a.batch} input {shape} {a.dtype}"
  n_jax = jax_param_count(a.model, a.input, a.num_classes)

  print(f"benchmark {what}: XLA_FLAGS={env.get('XLA_FLAGS', '')!r} materialize {a.materialize}, "
        f"conv_backend {a.conv_backend}, convs {a.convs}, "
        f"LD_PRELOAD={env.get('LD_PRELOAD', '')!r}, {a.windows} windows of "
        f"{a.steps_per_window or '~2 s of'} steps, {rounds} round(s)  {tag}", flush=True)
  torch_cmd = torch_child_cmd(a.model, a.batch, a.input, a.dtype, a.num_classes, a.windows,
                              a.torch_threads, n_jax, a.steps_per_window)
  if a.compare_torch:
    n_torch = run_child(torch_cmd + ["--check"], env, "torch twin check")["n_params"]
    print(f"parameters: JAX {n_jax:,} = PyTorch twin {n_torch:,}  {tag}", flush=True)
  else:
    print(f"parameters: JAX {n_jax:,}  {tag}", flush=True)

  spec = dict(model=a.model, batch=a.batch, input=list(a.input), dtype=a.dtype,
              windows=a.windows, steps_per_window=a.steps_per_window,
              materialize=a.materialize, num_classes=a.num_classes, convs=a.convs,
              conv_backend=a.conv_backend)
  jax_cmd = jax_child_cmd(spec)
  results = {"jax": [], "torch": []}
  for r in range(rounds):
    res = run_child(jax_cmd, env, "JAX")
    results["jax"].append(res)
    print(f"jax   round {r + 1}/{rounds}: {format_jax(res)}  {tag}", flush=True)
    if a.compare_torch:
      res = run_child(torch_cmd, env, "torch")
      results["torch"].append(res)
      print(f"torch round {r + 1}/{rounds}: {format_torch(res)}  {tag}", flush=True)

  medians = _print_medians(results, what, tag)
  ratios = _print_ratio(medians, what, tag) if a.compare_torch else None
  if a.json:
    _append_json(a, argv, rounds, mach, env, n_jax, results, medians, ratios)
  return 0


if __name__ == "__main__":
  sys.exit(main())
