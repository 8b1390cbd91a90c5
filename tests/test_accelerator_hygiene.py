"""Issue #24 item 4, accelerator hygiene, checked without an accelerator.

* The train step that ``cnn_jax.train`` compiles donates the train state: every state leaf is
  a donated argument of the lowered program (``tf.aliasing_output`` / ``jax.buffer_donor``),
  an input/output alias of the compiled executable (``input_output_alias``), and deleted
  after the call.
* No device-to-host transfer inside the train step: no host-callback primitive in its jaxpr
  (``debug_callback``, ``pure_callback``, ``io_callback``, ...), no host callback custom call,
  outfeed, infeed, send or recv in its compiled HLO.
* The train loop reads device values on the host only on logging steps (and on the epoch
  boundaries where it evaluates and checkpoints), never on the other steps.
* ``config.dtype = 'auto'`` resolves to bfloat16 on TPU and float32 elsewhere, and bfloat16
  reaches the step's convolutions while parameters stay float32.

How host reads are counted, and why so: ``jax.transfer_guard_device_to_host('disallow')`` does
not fire on the CPU backend (measured with jax 0.10.2: ``np.asarray``, ``float``,
``jax.device_get`` and ``str`` of a CPU array all pass under it, the host *is* the device), and
wrapping ``jax.device_get`` would see none of the loop's reads (``cnn_jax.parallel.to_host``
uses ``np.asarray``). What does see every read is the value accessor of JAX's array class
(``ArrayImpl._value``), *provided* the array spans several devices: a single-device CPU array
also exports the Python buffer protocol, through which ``np.asarray`` reads it without any
Python-level call, but a multi-device array refuses that protocol, so every route (``float``,
``int``, ``bool``, ``str``, ``.item()``, ``.tolist()``, ``np.asarray``, ``np.mean`` of a list,
``jax.device_get``) goes through ``_value``. So the run happens in a subprocess with 2 fake CPU
devices (``--xla_force_host_platform_device_count=2``), where the loop's state and metrics are
replicated over a 2-device mesh, and the subprocess first checks that its counter sees each of
those routes (if a future jax read arrays another way, that check fails instead of the test
passing vacuously). ``ArrayImpl._value`` is private API: a jax upgrade that removes it fails
this test loudly, never silently.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_CHILD = "--hygiene-child"
_RESULT = "HYGIENE_RESULT "

# Primitives that run host code from inside a jitted program (jax.debug.print/callback,
# jax.pure_callback, jax.experimental.io_callback, host_callback's outfeed).
_CALLBACK_PRIMITIVE = re.compile(
    r"(?<![\w.])(\w*callback\w*|debug_print|outfeed|infeed)(?=\[|\s)")
# HLO that moves data between device and host: a custom call to a Python callback target
# (xla_python_cpu_callback, xla_ffi_python_cpu_callback, xla_python_gpu_callback, ...), or
# the infeed / outfeed / send / recv instructions.
_HLO_HOST_CALL = re.compile(r'custom_call_target="[^"]*callback[^"]*"')
_HLO_HOST_OP = re.compile(r"\s(outfeed|infeed|send|recv|send-done|recv-done)\(")


def host_callbacks_in_jaxpr(jaxpr_text: str) -> list[str]:
  """Names of host-callback primitives in a printed jaxpr (nested jaxprs included)."""
  return sorted(set(_CALLBACK_PRIMITIVE.findall(jaxpr_text)))


def host_transfers_in_hlo(hlo_text: str) -> list[str]:
  """Host-callback custom calls and infeed/outfeed/send/recv instructions in HLO text."""
  return sorted(set(_HLO_HOST_CALL.findall(hlo_text)) | set(_HLO_HOST_OP.findall(hlo_text)))


def donated_args(lowered_text: str) -> list[int]:
  """Indices of the lowered (StableHLO) ``main`` function's arguments marked as donated:
  ``tf.aliasing_output`` (aliased to an output at lowering) or ``jax.buffer_donor`` (left for
  XLA to alias, as sharded programs are)."""
  m = re.search(r"func\.func public @main\((.*?)\)\s*->", lowered_text, re.S)
  assert m, "no public @main function in the lowered module"
  out = []
  for piece in re.split(r"(?=%arg\d+:)", m.group(1)):
    idx = re.match(r"%arg(\d+):", piece)
    if idx and ("tf.aliasing_output" in piece or "jax.buffer_donor = true" in piece):
      out.append(int(idx.group(1)))
  return out


def aliased_params(compiled_text: str) -> list[int]:
  """Parameter numbers that the compiled HLO module aliases to outputs
  (``input_output_alias={ {out}: (param, {}, may-alias), ... }`` of its ``HloModule`` line);
  ``[]`` without aliasing."""
  header = next((line for line in compiled_text.splitlines() if line.startswith("HloModule")), "")
  m = re.search(r"input_output_alias=\{(.*?)\}\s*(,|$)", header)
  if not m:
    return []
  return sorted({int(p) for p in re.findall(r"\}:\s*\((\d+),", header)})


# ------------------------------------------------------------------ the checkers can fail


def _with_debug_print(x):
  jax.debug.print("x = {}", x)
  return x + 1


def _with_pure_callback(x):
  return jax.pure_callback(lambda v: v * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _with_io_callback(x):
  from jax.experimental import io_callback  # pylint: disable=g-import-not-at-top
  io_callback(lambda v: None, None, x)
  return x + 1


@pytest.mark.parametrize("fn", [_with_debug_print, _with_pure_callback, _with_io_callback],
                         ids=["debug_print", "pure_callback", "io_callback"])
def test_callback_detectors_find_host_callbacks(fn):
  x = jnp.ones((4,))
  assert host_callbacks_in_jaxpr(str(jax.make_jaxpr(jax.jit(fn))(x)))
  assert host_transfers_in_hlo(jax.jit(fn).lower(x).compile().as_text())
  clean = jax.jit(lambda v: v * 2 + 1)
  assert not host_callbacks_in_jaxpr(str(jax.make_jaxpr(clean)(x)))
  assert not host_transfers_in_hlo(clean.lower(x).compile().as_text())


def test_donation_detectors_tell_donated_from_not():
  state = {"a": jnp.ones((4, 4)), "b": jnp.zeros((3,))}
  fn = lambda s, y: (jax.tree.map(lambda v: v + 1, s), y.sum())
  donated = jax.jit(fn, donate_argnums=0).lower(state, jnp.ones(3))
  kept = jax.jit(fn).lower(state, jnp.ones(3))
  assert donated_args(donated.as_text()) == [0, 1]
  assert aliased_params(donated.compile().as_text()) == [0, 1]
  assert donated_args(kept.as_text()) == []
  assert aliased_params(kept.compile().as_text()) == []


# ------------------------------------------------------------------ the real train loop


class HostReads:
  """Counts host reads of device values made by one thread (``ArrayImpl._value``, through
  which float/int/bool/str/item/tolist/np.asarray/jax.device_get of a multi-device array all
  pass, and ``copy_to_host_async``), per *window*: the number of train steps called so far,
  set by the caller in :attr:`window`."""

  def __init__(self):
    self.window = 0
    self.counts: dict[int, int] = {}
    self._thread = threading.get_ident()
    self._cls = type(jnp.zeros(()))
    self._saved = {}

  def _count(self):
    if threading.get_ident() == self._thread:
      self.counts[self.window] = self.counts.get(self.window, 0) + 1

  def __enter__(self):
    value = self._cls.__dict__.get("_value")
    assert isinstance(value, property), (
        f"{self._cls.__name__}._value is no longer a property in jax {jax.__version__}: "
        f"update HostReads in {__file__}")
    copy_async = self._cls.__dict__["copy_to_host_async"]
    self._saved = {"_value": value, "copy_to_host_async": copy_async}
    counter = self

    def read(arr):
      counter._count()  # pylint: disable=protected-access
      return value.fget(arr)

    def copy(arr, *a, **k):
      counter._count()  # pylint: disable=protected-access
      return copy_async(arr, *a, **k)

    self._cls._value = property(read)
    self._cls.copy_to_host_async = copy
    return self

  def __exit__(self, *exc):
    for k, v in self._saved.items():
      setattr(self._cls, k, v)


def _self_check(reads: HostReads) -> dict:
  """How many reads the counter sees for each way of reading a replicated 2-device array."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax import parallel  # pylint: disable=g-import-not-at-top
  repl = parallel.replicated(parallel.data_mesh())
  make = jax.jit(lambda: jnp.arange(4.0) + 1.0, out_shardings=repl)
  routes = {
      "float": lambda: float(make()[0]), "int": lambda: int(make()[1]),
      "bool": lambda: bool(make()[2] > 0), "str": lambda: str(make()),
      "item": lambda: make()[0].item(), "tolist": lambda: make().tolist(),
      "np.asarray": lambda: np.asarray(make()), "np.mean of a list": lambda: np.mean([make()]),
      "jax.device_get": lambda: jax.device_get({"a": make()}),
      "parallel.to_host": lambda: parallel.to_host({"a": make()}),
  }
  seen = {}
  for name, route in routes.items():
    reads.window, reads.counts = -1, {}
    route()
    seen[name] = reads.counts.get(-1, 0)
  reads.window, reads.counts = 0, {}
  return seen


def _child(workdir: str, data_dir: str, cache_dir: str) -> dict:
  """Runs a tiny real training (small_cnn, 2 epochs of 4 steps, a train record every 3
  steps, a checkpoint and an evaluation after each epoch) through
  ``cnn_jax.train.train_and_evaluate`` on 2 CPU devices, with host reads counted per step
  and the jitted train step captured; returns what the test asserts on."""
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top

  cfg = tiny_config("small_cnn", data_dir, cache_dir, num_train=128, num_test=100,
                    batch_size=32, num_epochs=2)
  cfg.log_every_steps = 3
  captured, deleted = {}, []
  real_compile_steps = train._compile_steps  # pylint: disable=protected-access

  with HostReads() as reads:
    selfcheck = _self_check(reads)

    def compile_steps(*args, **kwargs):
      train_step, eval_step, ema_eval_step = real_compile_steps(*args, **kwargs)

      def counted_step(state, images, labels):
        if "args" not in captured:
          captured["args"] = jax.tree.map(
              lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
              (state, images, labels))
          captured["n_state"] = len(jax.tree.leaves(state))
        old = jax.tree.leaves(state)
        out = train_step(state, images, labels)
        deleted.append(all(x.is_deleted() for x in old))
        reads.window = len(deleted)  # what the loop does from here on is this step's
        return out

      captured["step"] = train_step
      return counted_step, eval_step, ema_eval_step

    train._compile_steps = compile_steps  # pylint: disable=protected-access
    try:
      train.train_and_evaluate(cfg, workdir)
    finally:
      train._compile_steps = real_compile_steps  # pylint: disable=protected-access
    counts = dict(reads.counts)

  step, args = captured["step"], captured["args"]
  lowered = step.lower(*args)
  compiled_text = lowered.compile().as_text()
  return {
      "devices": jax.device_count(), "selfcheck": selfcheck,
      "reads": {str(k): v for k, v in counts.items()}, "deleted": deleted,
      "steps_per_epoch": 128 // 32, "log_every": cfg.log_every_steps,
      "n_state": captured["n_state"], "n_args": len(jax.tree.leaves(args)),
      "donated": donated_args(lowered.as_text()),
      "aliased": aliased_params(compiled_text),
      "jaxpr_callbacks": host_callbacks_in_jaxpr(str(jax.make_jaxpr(step)(*args))),
      "hlo_transfers": host_transfers_in_hlo(compiled_text),
      "metrics": [json.loads(x) for x in
                  (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()],
  }


@pytest.fixture(scope="module")
def hygiene(cifar10_dir, cache_dir, tmp_path_factory):
  """The subprocess run of :func:`_child` on 2 fake CPU devices."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count=2").strip()
  workdir = tmp_path_factory.mktemp("hygiene")
  r = subprocess.run([sys.executable, __file__, _CHILD, str(workdir), str(cifar10_dir),
                      str(cache_dir)], env=env, capture_output=True, text=True, cwd=REPO,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  (line,) = [x for x in r.stdout.splitlines() if x.startswith(_RESULT)]
  return json.loads(line[len(_RESULT):])


def test_host_read_counter_sees_every_route(hygiene):
  assert hygiene["devices"] == 2
  missed = [name for name, n in hygiene["selfcheck"].items() if n < 1]
  assert not missed, f"HostReads does not see these reads: {missed}"


def _after_checkpoint(h) -> set[int]:
  """The steps right after a checkpoint inside the run (one per epoch but the last)."""
  spe = h["steps_per_epoch"]
  return {k + 1 for k in range(spe, 2 * spe, spe)}


def test_train_step_donates_the_whole_state(hygiene):
  n = hygiene["n_state"]
  assert n > 3  # step, params, momentum
  # The state is the first argument: its leaves are the first n arguments of the program.
  assert hygiene["donated"] == list(range(n)), hygiene["donated"]
  assert hygiene["aliased"] == list(range(n)), hygiene["aliased"]
  # Every call consumed its input state, except possibly the step right after a checkpoint:
  # on CPU, reading an array to the host (np.asarray) gives a zero-copy view of its buffer,
  # and XLA does not donate a buffer while such a view lives (it copies instead); the
  # asynchronous orbax save holds those views until its background write is done (measured:
  # step 5 of this run kept its input; with no checkpoint inside the run every step
  # donated). That depends on when the write finishes, so that step is not asserted.
  steps = range(1, len(hygiene["deleted"]) + 1)
  assert len(steps) == 2 * hygiene["steps_per_epoch"]
  kept = [k for k in steps
          if not hygiene["deleted"][k - 1] and k not in _after_checkpoint(hygiene)]
  assert not kept, f"train steps {kept} did not donate their input state"


def test_train_step_has_no_host_transfer(hygiene):
  assert hygiene["jaxpr_callbacks"] == []
  assert hygiene["hlo_transfers"] == []


def test_loop_reads_device_values_only_on_logging_steps(hygiene):
  spe, log_every = hygiene["steps_per_epoch"], hygiene["log_every"]
  total = 2 * spe
  logging = {k for k in range(1, total + 1) if k % log_every == 0 or k == total}
  epoch_ends = {k for k in range(1, total + 1) if k % spe == 0}  # evaluation + checkpoint
  reads = {int(k): v for k, v in hygiene["reads"].items()}
  plain = sorted(set(range(1, total + 1)) - logging - epoch_ends)
  assert plain, "the run must have steps that neither log nor evaluate"
  offending = {k: reads[k] for k in plain if reads.get(k)}
  assert not offending, (f"host reads of device values after plain train steps "
                         f"{offending} (logging steps: {sorted(logging)})")
  # And the counter was live during the run: the metrics were read where they are logged.
  assert all(reads.get(k, 0) > 0 for k in logging), (reads, sorted(logging))
  logged = [m["step"] for m in hygiene["metrics"] if "train_loss" in m]
  assert logged == sorted(logging)


# ------------------------------------------------------------------ bf16 by default on TPU


def _auto():
  from cnn_jax.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.dtype = "auto"
  return c


@pytest.mark.parametrize("platform,want", [("tpu", "bfloat16"), ("TPU", "bfloat16"),
                                           ("cpu", "float32"), ("gpu", "float32"),
                                           ("cuda", "float32"), ("rocm", "float32")])
def test_auto_dtype_resolves_per_platform(platform, want):
  from cnn_jax.config import resolve_dtype, validate  # pylint: disable=g-import-not-at-top
  c = _auto()
  c.lock()
  r = resolve_dtype(c, platform)
  assert r.dtype == want
  assert c.dtype == "auto"  # a copy: the caller's config is left alone
  r.optim.lr = 123.0
  assert c.optim.lr != 123.0  # a deep copy
  validate(c)
  validate(r)


def test_auto_dtype_follows_the_default_backend(monkeypatch):
  from cnn_jax.config import resolve_dtype  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert resolve_dtype(_auto()).dtype == "bfloat16"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resolve_dtype(_auto()).dtype == "float32"


@pytest.mark.parametrize("explicit", ["float32", "bfloat16"])
def test_explicit_dtype_is_kept_on_tpu(explicit):
  from cnn_jax.config import base_config, resolve_dtype  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.dtype = explicit
  assert resolve_dtype(c, "tpu").dtype == explicit


def test_resume_with_auto_matches_the_logged_resolved_dtype():
  from cnn_jax import config as cfg_lib  # pylint: disable=g-import-not-at-top
  check_resume, from_json, resolve_dtype = (cfg_lib.check_resume, cfg_lib.from_json,
                                            cfg_lib.resolve_dtype)
  logged = from_json(resolve_dtype(_auto(), "cpu").to_json())
  assert logged.dtype == "float32"
  check_resume(logged, resolve_dtype(_auto(), "cpu"))
  with pytest.raises(ValueError, match="dtype"):
    check_resume(logged, resolve_dtype(_auto(), "tpu"))


def test_default_dtype_is_bfloat16_on_tpu_float32_elsewhere():
  from cnn_jax.config import base_config, resolve_dtype  # pylint: disable=g-import-not-at-top
  assert resolve_dtype(base_config(), "tpu").dtype == "bfloat16"
  assert resolve_dtype(base_config(), "cpu").dtype == "float32"


def test_bfloat16_reaches_the_convolutions_and_parameters_stay_float32():
  """The resolved dtype is what the model computes in: with bfloat16 every convolution and
  matrix product of the forward pass takes bfloat16 operands, the parameters are float32."""
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, steps  # pylint: disable=g-import-not-at-top
  model = models.create("cifar10_cnn", num_classes=10, dtype=jnp.bfloat16)
  tx = optax.sgd(0.1)
  # Shapes only (eval_shape, make_jaxpr): nothing is compiled or computed.
  state = jax.eval_shape(lambda: steps.init_state(model, tx, jax.random.key(0), (32, 32, 3)))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8)
  text = str(jax.make_jaxpr(lambda s, v: model.apply(
      s.variables(), steps.augment.normalize(v, [128.0] * 3, [64.0] * 3, jnp.bfloat16),
      train=False))(state, x))
  ops = [line for line in text.splitlines()
         if re.search(r"=\s*(conv_general_dilated|dot_general)\[", line)]
  assert ops, "no convolution or dot in the forward pass"
  not_bf16 = [line.strip()[:120] for line in ops if "bf16[" not in line.split("=")[0]]
  assert not not_bf16, not_bf16


if __name__ == "__main__" and sys.argv[1:2] == [_CHILD]:
  sys.path.insert(0, str(REPO))
  print(_RESULT + json.dumps(_child(*sys.argv[2:5])), flush=True)
