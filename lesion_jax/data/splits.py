"""Deterministic, stratified train / validation / test partitions (paper section 2.1 and Table 1).

Every builder partitions its images with `partition`, so the same files always give the same
split, whatever order the file system lists them in. Class proportions are kept per split: the
count of each class in a split is its exact share rounded by the largest-remainder method, so
no class is off by more than one image and the split totals are exact.

`hashed_partition` is the other kind, for databases that circulate in incomplete copies
(`waterloo`): each group's split is a function of its own key alone, so a copy missing some
files splits the files it has exactly as the complete copy does. The price is that shares hold
only in expectation, per class as well as overall.
"""
from __future__ import annotations

import bisect
import hashlib
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


def _check_fractions(fractions: Mapping[str, float]) -> None:
  if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
    raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def partition(ids: Sequence[str], labels: Sequence[Hashable] | None,
              fractions: Mapping[str, float], seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
  """Splits `ids` into the named fractions, stratified by `labels` (None: one class).

  Returns {split name: sorted ids}. Deterministic in (set of ids, labels, fractions, seed).
  """
  if len(set(ids)) != len(ids):
    raise ValueError("partition() got duplicate ids; deduplicate before splitting")
  if labels is not None and len(labels) != len(ids):
    raise ValueError(f"partition() got {len(ids)} ids but {len(labels)} labels")
  _check_fractions(fractions)
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


def unit_hash(key: str, salt: str) -> float:
  """A number in [0, 1) fixed by `key` and `salt` alone, on every machine and Python version.

  SHA-256, not `hash()`: Python salts str hashes per process. 53 bits, so that the float is
  exact and can never round up to 1.0.
  """
  digest = hashlib.sha256(f"{salt}\0{key}".encode("utf-8")).digest()
  return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def hashed_partition(ids: Sequence[str], groups: Sequence[str], fractions: Mapping[str, float],
                     salt: str) -> dict[str, list[str]]:
  """Splits `ids` so that each id's split depends only on its group key (and `salt`).

  The group's `unit_hash` is compared with the cumulative fractions, in the order given: with
  {"train": 0.6, "validation": 0.2, "test": 0.2}, u < 0.6 is train, u < 0.8 validation, else
  test. Ids of one group (the photographs of one lesion) therefore always share a split, and
  removing or adding other ids never moves them. Every group draws its own independent u, so
  each class, whatever the stratification variable, gets the fractions in expectation; the
  realized counts scatter binomially around them. Returns {split name: sorted ids}.
  """
  if len(set(ids)) != len(ids):
    raise ValueError("hashed_partition() got duplicate ids; deduplicate before splitting")
  if len(groups) != len(ids):
    raise ValueError(f"hashed_partition() got {len(ids)} ids but {len(groups)} groups")
  _check_fractions(fractions)
  names = list(fractions)
  bounds = np.cumsum([fractions[n] for n in names]).tolist()
  result: dict[str, list[str]] = {n: [] for n in names}
  for image_id, group in zip(ids, groups):
    # min(): rounding can leave the last bound a hair under 1.0; u above it is the last split.
    index = min(bisect.bisect_right(bounds, unit_hash(group, salt)), len(names) - 1)
    result[names[index]].append(image_id)
  return {n: sorted(v) for n, v in result.items()}
