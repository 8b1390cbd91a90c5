"""The documentation stays true: every run folder's README opens with its current generated
header, every relative link in the README, docs/ and the experiment notes resolves, and the
README keeps the test command that CI runs."""

from __future__ import annotations

import pathlib
import re

import pytest

from cnn_jax import report

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# Run folders: experiments/<name>/ with a metrics.jsonl at their top level (not the table
# folders, whose runs live under experiments/<table>/runs/).
RUN_FOLDERS = sorted(p.parent for p in EXPERIMENTS.glob("*/metrics.jsonl"))


def test_there_are_run_folders():
  assert RUN_FOLDERS, f"no experiments/*/metrics.jsonl under {EXPERIMENTS}"


@pytest.mark.parametrize("folder", RUN_FOLDERS, ids=lambda p: p.name)
def test_run_folder_readme_opens_with_its_current_header(folder):
  readme = folder / "README.md"
  assert readme.is_file(), f"{folder.name} has no README.md"
  want = report.run_header(folder)
  got = readme.read_text()[:len(want)]
  assert got == want, (
      f"{readme.relative_to(REPO)}: header missing or stale; rewrite it with "
      f"`python -m cnn_jax.report {folder.relative_to(REPO)} --header --write`")


def test_header_rewrite_keeps_the_notes_and_is_idempotent(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from cnn_jax.config import base_config  # pylint: disable=g-import-not-at-top
  run = tmp_path / "my_run"
  run.mkdir()
  cfg = base_config()
  cfg.model.name = "cifar10_cnn"
  (run / "config.json").write_text(cfg.to_json())
  records = [
      {"event": "start", "step": 0, "model": "cifar10_cnn", "num_params": 289194,
       "git_commit": "a" * 40, "git_dirty": False, "cpu": "Test CPU", "cpu_count": 2,
       "device_kind": "cpu", "jax": "0.0.1"},
      {"step": 5, "epoch": 0.5, "train_loss": 2.0, "images_per_s": 100.0, "wall_s": 10.0},
      {"step": 10, "epoch": 1.0, "test_loss": 1.4, "test_accuracy": 0.5, "test_count": 100,
       "wall_s": 30.0}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  notes = "# A hand-written title\n\n| command | `python -m cnn_jax.train --x` (note) |\n"
  (run / "README.md").write_text(notes)
  header = report.run_header(run)
  assert header.startswith("# my_run\n") and header.endswith(report.HEADER_END + "\n")
  assert "- **command**: `python -m cnn_jax.train --x`\n" in header
  assert "`aaaaaaa` (logged in `metrics.jsonl`)" in header and "2-core Test CPU" in header
  assert "final 50.00% (50 / 100), best 50.00% (epoch 1)" in header
  text = report.readme_with_header(run)
  assert text == header + "\n#" + notes  # the old title becomes a second-level heading
  (run / "README.md").write_text(text)
  assert report.readme_with_header(run) == text
  # A sweep's stdout.log starts with the command; it wins over the notes.
  (run / "stdout.log").write_text("$ python -m cnn_jax.train --y\nlog\n")
  assert "- **command**: `python -m cnn_jax.train --y`\n" in report.run_header(run)


def _doc_files() -> list[pathlib.Path]:
  return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted(EXPERIMENTS.glob("*/README.md"))]


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; [label]: target definitions.
_INLINE = re.compile(r"!?\[(?:[^\]\n]|\][^(\n])*?\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def relative_links(text: str) -> list[str]:
  """The relative link targets of a Markdown text (fragments stripped), leaving out links
  inside code, absolute URLs (``scheme:...``) and pure ``#anchors``."""
  text = _CODE_SPAN.sub("", _FENCE.sub("", text))
  out = []
  for target in _INLINE.findall(text) + _REFDEF.findall(text):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
      continue
    out.append(target.split("#", 1)[0])
  return out


def test_relative_links_finds_what_it_should():
  text = ("[a](docs/x.md#part) ![b](img.png) [c](https://e.org/y) [d](#here) "
          "`[e](in_code.md)`\n```\n[f](in_fence.md)\n```\n[g]: ref/target.md\n")
  assert relative_links(text) == ["docs/x.md", "img.png", "ref/target.md"]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
  broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
  assert not broken, f"{doc.relative_to(REPO)}: links to missing files {broken}"


def test_readme_holds_the_ci_test_command_verbatim():
  ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
  assert ci in (REPO / "README.md").read_text().splitlines()


def test_readme_headline_table_is_the_generated_one():
  """The table pasted into README.md is, line for line, the start of
  experiments/evolution/table.md (regenerated by its report), so the README quotes no
  number that the measurement did not produce."""
  readme = (REPO / "README.md").read_text()
  start = readme.index("<!-- headline table: experiments/evolution/table.md -->")
  end = readme.index("<!-- end of headline table -->")
  pasted = [l for l in readme[start:end].splitlines() if l.startswith("| ")]
  table = (REPO / "experiments" / "evolution" / "table.md").read_text().splitlines()
  assert pasted and pasted == [l for l in table if l.startswith("| ")][:len(pasted)]
  assert len(pasted) == 13  # header, separator and the 11 models
