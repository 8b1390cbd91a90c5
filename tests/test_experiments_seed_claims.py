"""Table 6 (experiments/seed_claims): the committed table is a fresh rebuild, its quotes are
in the seed texts, and a few of its values agree with hand derivations from first principles.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest

from experiments.seed_claims import claims, report

SEEDS = pathlib.Path(os.environ.get(
    "CNN_JAX_SHARED_SEEDS",
    pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "seeds"))

BY_ID = {c.id: c for c in claims.all_claims()}


def _value(claim_id: str):
  return BY_ID[claim_id].compute().value


def _norm(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip()


# (a) The committed files are what the code produces now.


@pytest.fixture(scope="module")
def rebuilt() -> dict[str, bytes]:
  """One fresh rebuild of the table's files (every claim re-checked: the costly part),
  shared by the two tests below."""
  return report.render()


def test_committed_table_is_a_fresh_rebuild(rebuilt):
  stale = report.check(report.HERE, rebuilt)
  assert not stale, (f"{stale} in experiments/seed_claims differ from a rebuild; run "
                     f"python -m experiments.seed_claims.report")


def test_check_catches_a_tampered_copy(tmp_path, rebuilt):
  for name in report.FILES:
    (tmp_path / name).write_bytes((report.HERE / name).read_bytes())
  csv = tmp_path / "table.csv"
  csv.write_text(csv.read_text().replace("289,194", "289,195", 1))
  (tmp_path / "README.md").unlink()
  assert report.check(tmp_path, rebuilt) == ["table.csv", "README.md"]


# (b) Values re-derived by hand, from first principles (not copied from the code's output).


def test_dense_layer_on_an_image():
  # Every one of the 224*224*3 inputs connects to each of the 1,000 units.
  assert claims._fc_224() == 224 * 224 * 3 * 1000 == 150_528_000
  assert claims.judge(BY_ID["000-03"], BY_ID["000-03"].compute())[0] == claims.FAILS
  assert claims.judge(BY_ID["001-05"], BY_ID["001-05"].compute())[0] == claims.HOLDS
  # 256*256*3 inputs, 1,000 units, one bias each.
  assert _value("004-02") == 256 * 256 * 3 * 1000 + 1000


def test_two_3x3_against_one_5x5():
  # Two 3x3 layers: 1 + 2 + 2 = 5 pixels of field; weights 2 * 9 C^2 against 25 C^2.
  assert _value("000-36") == (5, 5, 18, 25)
  assert _value("001-09") == (5, 18, 25, 28)  # 1 - 18/25 = 7/25 = 28%


def test_output_sizes_by_the_formula():
  # floor((n + 2p - d(k-1) - 1) / s) + 1 on the seed's 32x32 input with a 3x3 kernel.
  for cid, s, p, d in (("000-07", 1, 0, 1), ("000-08", 1, 1, 1), ("000-09", 2, 1, 1),
                       ("000-10", 1, 2, 2)):
    assert _value(cid) == (32 + 2 * p - d * 2 - 1) // s + 1
  assert _value("000-02") == 6 - 3 + 1  # 3x3 'valid' on 6x6
  assert _value("003-01") == 15  # (32 - 3) / 2 + 1 = 15.5, floored


def test_cifar10net_parameters_by_hand():
  # The seed's CIFAR10Net: six 3x3 convs with biases, BatchNorm scale+offset, Linear(128, 10).
  convs = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
  total = (sum(9 * ci * co + co for ci, co in convs) + sum(2 * co for _, co in convs)
           + 128 * 10 + 10)
  assert total == 289_194
  assert _value("000-14") == total
  assert claims.judge(BY_ID["000-14"], BY_ID["000-14"].compute())[0] == claims.FAILS
  assert _value("000-13") == claims.CIFAR10NET_SEED


def test_receptive_field_recurrence_along_cifar10_cnn():
  # Araujo et al. 2019: r += (k - 1) * j; j *= s. Conv 3/1, conv 3/1, pool 2/2, twice, then
  # two convs.
  r, j, sizes = 1, 1, []
  for k, s in [(3, 1), (3, 1), (2, 2), (3, 1), (3, 1), (2, 2), (3, 1), (3, 1)]:
    r += (k - 1) * j
    j *= s
    sizes.append(r)
  assert _value("000-44") == tuple(sizes) == (3, 5, 6, 10, 14, 16, 24, 32)


def test_depthwise_separable_saving():
  # separable / standard = (K^2 C_in + C_in C_out) / (K^2 C_in C_out) = 1/C_out + 1/K^2.
  assert _value("003-13") == pytest.approx(1 / (1 / 128 + 1 / 9))
  lo, hi = _value("001-13")  # MobileNet v1's C_out run from 64 to 1024
  assert lo == pytest.approx(1 / (1 / 64 + 1 / 9))
  assert hi == pytest.approx(1 / (1 / 1024 + 1 / 9))


def test_resnet_depths_by_hand():
  # 1 stem conv + 3 convs per bottleneck block + 1 fc (He et al. 2016, Table 1).
  depth = lambda blocks: 1 + 3 * sum(blocks) + 1  # noqa: E731
  assert _value("000-38") == (depth((3, 4, 6, 3)), depth((3, 4, 23, 3)),
                              depth((3, 8, 36, 3)))


def test_judge_rules():
  c = lambda **kw: claims.Claim("x", "f", "q", compute=None, units="", claimed_text="",  # noqa
                                **kw)
  v = claims.Value
  assert claims.judge(c(claimed=61e6, compare="rounded", step=1e6), v(61_100_840, ""))[0] == \
      claims.HOLDS
  assert claims.judge(c(claimed=60e6, compare="rounded", step=1e6), v(61_100_840, ""))[0] == \
      claims.APPROX
  assert claims.judge(c(claimed=4e6, compare="rounded", step=1e6), v(6_624_904, ""))[0] == \
      claims.FAILS
  assert claims.judge(c(claimed=74.4, compare="points", step=0.1), v(74.4, ""))[0] == \
      claims.HOLDS
  assert claims.judge(c(claimed=76.0, compare="points", step=0.1), v(77.15, ""))[0] == \
      claims.FAILS
  assert claims.judge(c(claimed=(8, 9), compare="range"), v((7.9, 8.9), ""))[0] == claims.APPROX
  assert claims.judge(c(claimed=140e6, compare="at_least"), v(100e6, ""))[0] == claims.FAILS


# (c) Every quote is in its seed file, so no claim can be invented.


def test_every_quote_occurs_in_its_seed_file():
  if not SEEDS.is_dir():
    pytest.skip(f"seed texts not found at {SEEDS} (set CNN_JAX_SHARED_SEEDS)")
  texts = {}
  for name in claims.SEED_FILES:
    path = SEEDS / name
    assert path.is_file(), f"seed file {path} missing"
    texts[name] = _norm(path.read_text(encoding="utf-8"))
  missing = [(c.id, c.quote) for c in claims.all_claims() if _norm(c.quote) not in texts[c.seed]]
  assert not missing, f"quotes not found in their seed files: {missing}"


def test_ids_unique_and_in_order():
  ids = [c.id for c in claims.all_claims()]
  assert len(ids) == len(set(ids))
  assert ids == sorted(ids)
  assert all(c.seed.startswith(c.id[:3]) for c in claims.all_claims())
