"""Table 1 of the paper, recomputed from built datasets: images per split and per class.

Counts come from the stored examples themselves (labels are read, images and masks are left
encoded), so the table shows what training will actually see. As in Table 1, "train/val" is
the pool of train + validation; validation is shown separately as well.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Sequence

import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DatabaseStats:
  """One database: split sizes and, per class, its images in each split."""
  database: str
  config: str
  domain: str
  label_names: tuple[str, ...]
  split_sizes: dict[str, int]  # split -> images (0 for a split that was not written)
  class_counts: dict[str, dict[str, int]]  # label -> split -> images

  @property
  def total(self) -> int:
    return sum(self.split_sizes.values())

  @property
  def train_val(self) -> int:
    return self.split_sizes["train"] + self.split_sizes["validation"]


def database_statistics(builder: tfds.core.DatasetBuilder) -> DatabaseStats:
  """Counts the examples of a prepared builder per split and per label."""
  features = builder.info.features
  label_names = tuple(features["label"].names)
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  split_sizes = {s: 0 for s in SPLITS}
  class_counts = {name: {s: 0 for s in SPLITS} for name in label_names}
  domains: Counter = Counter()
  for split in SPLITS:
    if split not in builder.info.splits:
      continue  # e.g. isic without the ISIC 2017 test archives: no test split.
    source = builder.as_data_source(split, decoders=skip)
    for i in range(len(source)):
      example = source[i]
      class_counts[label_names[int(example["label"])]][split] += 1
      domains[features["domain"].int2str(int(example["domain"]))] += 1
    split_sizes[split] = len(source)
  return DatabaseStats(
      database=builder.name,
      config=builder.builder_config.name if builder.builder_config else "",
      domain="/".join(sorted(domains)) or "-",
      label_names=label_names,
      split_sizes=split_sizes,
      class_counts=class_counts,
  )


def format_table(rows: Sequence[DatabaseStats]) -> str:
  """A plain-text Table 1: one line per database, then one per class (classes with images)."""
  header = ("domain", "database", "class", "images", "train/val", "train", "validation", "test")
  lines = []
  for row in rows:
    name = f"{row.database}/{row.config}" if row.config not in ("", "native") else row.database
    sizes = row.split_sizes
    lines.append((row.domain, name, "(all)", row.total, row.train_val, sizes["train"],
                  sizes["validation"], sizes["test"]))
    classes = [c for c in row.label_names if sum(row.class_counts[c].values())]
    if len(classes) > 1 or (classes and classes[0] != "unknown"):
      for c in classes:
        counts = row.class_counts[c]
        lines.append(("", "", c, sum(counts.values()), counts["train"] + counts["validation"],
                      counts["train"], counts["validation"], counts["test"]))
  table = [header] + [tuple(str(v) for v in line) for line in lines]
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  text_columns = 3  # left-aligned; the counts are right-aligned.
  out = []
  for r in table:
    cells = [v.ljust(w) if i < text_columns else v.rjust(w)
             for i, (v, w) in enumerate(zip(r, widths))]
    out.append("  ".join(cells).rstrip())
  out.insert(1, "-" * len(out[0]))
  return "\n".join(out)
