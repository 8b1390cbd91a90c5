"""Table 5, the families on Tiny-ImageNet-10 at an equal budget: the table and plots.

    python -m experiments.tiny_imagenet10.report [--check]

The same columns and plots as table 2 (:mod:`experiments.cifar10_families.report`), from
this table's run folders; top-1 is on the 500 validation images (50 per class).
"""

import pathlib
import sys

from experiments import budget
from experiments.cifar10_families import report as families_report
from experiments.tiny_imagenet10.run import FAMILY, RUNS

def main(argv=None) -> int:
  """``[--check]``, as :func:`experiments.cifar10_families.report.main`."""
  return families_report.main(
      argv, runs=RUNS, family=FAMILY, table_dir=pathlib.Path(__file__).parent,
      what=f"Tiny-ImageNet-10 (64x64, 5,000 train / 500 val), {budget.EPOCHS} epochs each")


if __name__ == "__main__":
  sys.exit(main())
