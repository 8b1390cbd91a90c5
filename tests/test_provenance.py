"""cnn_jax.provenance: the dirty-file list from git, in a throwaway repository."""

import shutil
import subprocess

import pytest

from cnn_jax import provenance


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_dirty_files_keep_spaces_unicode_and_renames(tmp_path):
  def git(*args):
    return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                          check=True).stdout

  git("init", "-q")
  for name in ("plain.py", "with space.py", "naïve.py", "old name.py", "clean.py"):
    (tmp_path / name).write_text("x = 1\n")
  git("add", "-A")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
  for name in ("plain.py", "with space.py", "naïve.py"):
    (tmp_path / name).write_text("x = 2\n")
  git("mv", "old name.py", "new -> name.py")
  (tmp_path / "untracked.py").write_text("")
  status = git("status", "--porcelain", "-z", "--untracked-files=no")
  assert sorted(provenance.parse_porcelain_z(status)) == sorted(
      ["plain.py", "with space.py", "naïve.py", "new -> name.py"])
  assert provenance.parse_porcelain_z("") == []
