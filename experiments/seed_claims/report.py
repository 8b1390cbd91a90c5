"""Rebuilds Table 6 (the seed texts' numeric claims, checked with cnn_jax's code).

``python -m experiments.seed_claims.report`` writes ``table.md``, ``table.csv`` (both through
``cnn_jax.report.write_table``) and ``README.md`` (a header with the counts and the failing
claims, then the table) next to this file; ``--check`` rebuilds them in memory instead and
exits 1, naming the files, if the committed ones differ. Every cell is a deterministic
function of :func:`claims.check_all` (integers and fixed-format floats; no timestamps), so a
rebuild is byte-identical. No data or network is needed: models are traced
(``jax.eval_shape`` / ``jax.make_jaxpr``), never run; about half a minute on a CPU.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile

from cnn_jax.report import write_table

from experiments.seed_claims import claims

HERE = pathlib.Path(__file__).resolve().parent
HEADER = ["#", "seed file", "claim (quoted)", "claimed", "computed by cnn_jax", "units",
          "verdict", "how"]
FILES = ("table.md", "table.csv", "README.md")


def table_rows(results: list[dict]) -> list[list[str]]:
  """One table row per claim: id, seed file, quote (as a Markdown code span, so ``*`` and
  ``|`` in it stay literal), claimed, computed, units, verdict (with the difference), how."""
  return [[r["id"], r["seed"], f"`{r['quote']}`", r["claimed"], r["computed"], r["units"],
           r["verdict"] + (f" ({r['detail']})" if r["detail"] else ""), r["how"]]
          for r in results]


def _bullets(results: list[dict], verdict: str, with_how: bool = False) -> list[str]:
  out = []
  for r in results:
    if r["verdict"] != verdict:
      continue
    diff = f" ({r['detail']})" if r["detail"] else ""
    extra = (r["how"] if with_how else r["note"]).rstrip(".")
    out.append(f"- **{r['id']}** `{r['quote']}` claimed {r['claimed']}; computed: "
               f"{r['computed']}{diff}." + (f" {extra}." if extra else ""))
  return out


_NOT_CODE = """\
## In the seeds, but not checkable by code (not in the table)

- Speed and hardware: "A MobileNetV3 runs inference in 5ms on a smartphone. A comparable ViT
  takes 3 to 5 times longer" and "15 to 25ms" (`000`), "sub-10ms latency" (`000`), "YOLO ...
  60+ fps on embedded hardware" (`003`): they need the devices.
- Training cost and data scale: "A ResNet-50 trains in hours on a single GPU", "thousands of
  GPU hours" for a ViT-Large, "under 50K images", "under 1M images" (`000`), "needs 14M+
  images or pretraining" (`001`): no number a model definition determines.
- Training outcomes: "networks deeper than about 20 layers actually performed worse" (`000`;
  He et al. 2016, Fig. 1 show it for 56 vs 20 plain layers on CIFAR-10) and "networks 10x
  deeper than what had been possible" (`002`) would need training runs; "99% training accuracy
  but 72% validation accuracy" (`000`) is a hypothetical.
- Qualitative costs with no number: SE and CBAM "add minimal computational cost" (`003`;
  for scale, cnn_jax counts `seresnet50` 28,088,024 and `cbam_resnet50` 28,089,624 against
  `resnet50` 25,557,032 parameters).
- Repeats of a claim already in the table from the same file: `000` "Five layers, 60K
  parameters", "138M parameters made VGG expensive", "A 3x3 kernel uses 9 parameters
  regardless of image size", "Two 3x3 layers have the same receptive field as one 5x5 layer",
  "From LeNet's 60K parameters ... ConvNeXt V2 hitting 88.9%"; `001` the FAQ's 150 million /
  1,792, 5x5 receptive field, output-size and 'same' padding answers, and "roughly a 1/8 to
  1/9 reduction" (= 001-13); `003` "Output_H = (H + 2P - K) / S + 1" (= 003-01); `004`
  "5 conv layers, 60M parameters" (= 004-14, 004-15), "Just ~60K parameters" (= 004-13) and
  the Sequential's per-layer shape comments (implied by 004-07).
- `000`'s inline formulas were images in the original page; its text keeps only "gives ."
  for the 32x32 example, whose numbers are the table rows 000-07 to 000-10.
"""


def readme(results: list[dict], table_md: str) -> str:
  """The README: what the table is, how to rebuild it, the verdict rules and counts, the
  failing / approximate / unchecked claims with their explanations, then ``table_md``."""
  n = collections.Counter(r["verdict"] for r in results)
  parts = [
      "# Table 6: the seed material's numeric claims, checked",
      "",
      "The five texts cnn_jax was created from (`../shared/seeds/*.txt`) state many numbers: "
      "output sizes, parameter and MAC counts, receptive fields, depths, and ImageNet "
      "accuracies. Every one that code can check is a row below: the claim quoted from its "
      "seed file, the claimed value, the value cnn_jax computes with its own code (the "
      "function is named in *how*: `cnn_jax.ops.formulas`, `cnn_jax.ops.pooling`, "
      "`cnn_jax.models.create` + `cnn_jax.summary`, `cnn_jax.analysis`), and a verdict. "
      "Published accuracies cannot be computed; they are compared with the original paper's "
      "number, cited in *how*. The claims, their quotes and the comparison rules are data in "
      "`claims.py`; `tests/test_experiments_seed_claims.py` checks every quote occurs in its "
      "seed file, re-derives a few values by hand, and checks this folder is up to date.",
      "",
      "```bash",
      "python -m experiments.seed_claims.report          # rewrites table.md, table.csv, "
      "README.md",
      "python -m experiments.seed_claims.report --check  # exit 1 if they are stale",
      "```",
      "",
      "**Verdicts.** Exact claims (integers, shapes, layer lists) hold iff equal. A rounded "
      "claim (\"61M\", \"about 150 million\") holds if the computed value rounds to it at the "
      "claim's own precision, *holds approximately* if the claim is within 5% of the computed "
      "value, else does not hold. Bounds and ranges (\"over 150,000\", \"140M+\", \"8-9x\") "
      "hold if met and hold approximately if missed by at most 5%. Published accuracies hold "
      "within the claim's rounding and hold approximately within 0.5 percentage points of the "
      "paper. The difference shown is `claimed / computed - 1` (or claimed minus paper, in "
      "points). *Not checked*: no number we are sure of to compare with.",
      "",
      f"**{len(results)} claims: {n[claims.HOLDS]} hold, {n[claims.APPROX]} hold "
      f"approximately, {n[claims.FAILS]} do not hold, {n[claims.UNCHECKED]} not checked.**",
      "",
      "## Claims that do not hold",
      "",
      *_bullets(results, claims.FAILS),
      "",
      "## Claims that hold only approximately",
      "",
      *_bullets(results, claims.APPROX),
      "",
      "## Not checked",
      "",
      *_bullets(results, claims.UNCHECKED, with_how=True),
      "",
      _NOT_CODE,
      "## The table",
      "",
      table_md,
  ]
  return "\n".join(parts)


def render(results: list[dict] | None = None) -> dict[str, bytes]:
  """The three files' bytes, built in a temporary folder with ``write_table`` (the same
  writer :func:`build` uses), keyed by file name."""
  results = claims.check_all() if results is None else results
  with tempfile.TemporaryDirectory() as tmp:
    md = write_table(pathlib.Path(tmp) / "table", HEADER, table_rows(results))
    out = {name: (pathlib.Path(tmp) / name).read_bytes() for name in FILES[:2]}
  out["README.md"] = readme(results, md).encode()
  return out


def build(out_dir: pathlib.Path = HERE) -> list[dict]:
  """Writes ``table.md``, ``table.csv`` and ``README.md`` into ``out_dir``; returns the
  :func:`claims.check_all` rows they were made from."""
  results = claims.check_all()
  for name, data in render(results).items():
    (pathlib.Path(out_dir) / name).write_bytes(data)
  return results


def check(out_dir: pathlib.Path = HERE, rendered: dict[str, bytes] | None = None) -> list[str]:
  """Names of the files in ``out_dir`` that are missing or differ from a fresh rebuild
  (empty when everything is up to date); ``rendered``: that rebuild (:func:`render`'s
  output) when the caller already has it, else it is rendered here."""
  stale = []
  for name, data in (rendered if rendered is not None else render()).items():
    path = pathlib.Path(out_dir) / name
    if not path.is_file() or path.read_bytes() != data:
      stale.append(name)
  return stale


def main(argv=None) -> int:
  """Command line: rebuild the files, or with ``--check`` exit 1 if they are stale."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--check", action="store_true",
                  help="rebuild in memory and exit 1 if the committed files differ")
  args = ap.parse_args(argv)
  if args.check:
    stale = check()
    if stale:
      print(f"stale: {', '.join(stale)} in {HERE} differ from a rebuild; run "
            f"python -m experiments.seed_claims.report", file=sys.stderr)
      return 1
    print(f"up to date: {', '.join(FILES)}")
    return 0
  n = collections.Counter(r["verdict"] for r in build())
  print(f"wrote {', '.join(FILES)} in {HERE}: {dict(sorted(n.items()))}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
