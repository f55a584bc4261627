"""Deterministic, stratified train / validation / test partitions (paper section 2.1 and Table 1).

Every builder partitions its images with `partition`, so the same files always give the same
split, whatever order the file system lists them in. Class proportions are kept per split: the
count of each class in a split is its exact share rounded by the largest-remainder method, so
no class is off by more than one image and the split totals are exact.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Mapping, Sequence

import numpy as np

# The paper's protocol: test share per database (Table 1), then 90/10 train/validation (2.2).
VALIDATION_FRACTION = 0.1
DEFAULT_SEED = 20200709  # fixed for reproducibility; any constant works, it must never change.


def _largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
  """Integers summing to `total`, each within one of its exact share."""
  exact = np.asarray(shares, dtype=np.float64)
  exact = exact / exact.sum() * total
  counts = np.floor(exact).astype(int)
  order = np.argsort(-(exact - counts), kind="stable")
  for i in order[: total - counts.sum()]:
    counts[i] += 1
  return counts.tolist()


def partition(ids: Sequence[str], labels: Sequence[Hashable] | None,
              fractions: Mapping[str, float], seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
  """Splits `ids` into the named fractions, stratified by `labels` (None: one class).

  Returns {split name: sorted ids}. Deterministic in (set of ids, labels, fractions, seed).
  """
  if len(set(ids)) != len(ids):
    raise ValueError("partition() got duplicate ids; deduplicate before splitting")
  if labels is not None and len(labels) != len(ids):
    raise ValueError(f"partition() got {len(ids)} ids but {len(labels)} labels")
  if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
    raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")
  names = list(fractions)
  by_class: dict[Hashable, list[str]] = defaultdict(list)
  for i, image_id in enumerate(ids):
    by_class[None if labels is None else labels[i]].append(image_id)

  # Split totals first, then give each class its share of each split, so totals are exact.
  totals = _largest_remainder(len(ids), [fractions[n] for n in names])
  classes = sorted(by_class, key=str)
  class_sizes = [len(by_class[c]) for c in classes]
  # counts[c, s]: images of class c in split s. Start from the floor of the exact share, then
  # hand out the leftover units by largest remainder while both the class and the split still
  # lack images. Every count stays within one of its exact share and all sums are exact.
  exact = np.outer(class_sizes, [fractions[n] for n in names])
  counts = np.floor(exact).astype(int)
  class_left = np.array(class_sizes) - counts.sum(1)
  split_left = np.array(totals) - counts.sum(0)
  cells = sorted(np.ndindex(counts.shape), key=lambda cs: -(exact[cs] - counts[cs]))
  for _ in range(2):  # second pass: any cell with room, should remainders alone not suffice.
    for c, s in cells:
      if class_left[c] > 0 and split_left[s] > 0:
        counts[c, s] += 1
        class_left[c] -= 1
        split_left[s] -= 1

  result: dict[str, list[str]] = {n: [] for n in names}
  rng = np.random.default_rng(seed)
  for c, cls in enumerate(classes):
    members = sorted(by_class[cls])
    order = rng.permutation(len(members))
    start = 0
    for s, name in enumerate(names):
      result[name].extend(members[i] for i in order[start:start + counts[c, s]])
      start += counts[c, s]
  return {n: sorted(v) for n, v in result.items()}


def train_validation_test(ids: Sequence[str], labels: Sequence[Hashable] | None,
                          test_fraction: float, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
  """The paper's protocol: `test_fraction` held out, the rest split 90/10 train/validation."""
  pool_fraction = 1.0 - test_fraction
  return partition(ids, labels, {
      "train": pool_fraction * (1 - VALIDATION_FRACTION),
      "validation": pool_fraction * VALIDATION_FRACTION,
      "test": test_fraction,
  }, seed)
