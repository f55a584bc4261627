"""`python -m lesion_jax.models`: every registered setting the paper uses, with its size.

The P column is written like the paper's Table 2 ("8M", "0.4M"); the exact count follows. Counts
come from `jax.eval_shape`, so nothing is computed and the table prints in seconds.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable

from lesion_jax.models import count_params, create_model

# Table 2's P column for the paper's best setting of each architecture.
PAPER_P = {
    ("unet", "ifc=32"): "8M",
    ("att_unet", "ifc=64"): "32M",
    ("r2_unet", "ifc=16"): "6M",
    ("att_r2_unet", "ifc=64"): "96M",
    ("deeplabv3plus_xception65", "output_stride=16"): "41M",
    ("deeplab_mobilenetv2", "alpha=1.0, output_stride=16"): "2M",
    ("deeplab_mobilenetv2", "alpha=0.35, output_stride=16"): "0.4M",
}
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def paper_settings() -> list[tuple[str, dict[str, Any]]]:
  """(name, options) of every setting the paper trains: ifC 16/32/64, OS 8/16, Keras alphas."""
  settings: list[tuple[str, dict[str, Any]]] = []
  for name in ("unet", "att_unet", "r2_unet", "att_r2_unet"):
    settings += [(name, {"ifc": ifc}) for ifc in (16, 32, 64)]
  settings += [("deeplabv3plus_xception65", {"output_stride": os}) for os in (16, 8)]
  settings += [("deeplab_mobilenetv2", {"alpha": alpha, "output_stride": 16})
               for alpha in KERAS_ALPHAS]
  settings.append(("deeplab_mobilenetv2", {"alpha": 0.35, "output_stride": 8}))
  return settings


def format_millions(count: int) -> str:
  """Table 2's style: one decimal below 1M ("0.4M"), whole millions above ("8M")."""
  millions = count / 1e6
  return f"{millions:.1f}M" if millions < 1 else f"{millions:.0f}M"


def table(settings: Iterable[tuple[str, dict[str, Any]]]) -> str:
  rows = [("model", "setting", "P", "params", "paper P")]
  for name, options in settings:
    setting = ", ".join(f"{key}={value}" for key, value in options.items())
    count = count_params(create_model(name, **options))
    rows.append((name, setting, format_millions(count), f"{count:,}",
                 PAPER_P.get((name, setting), "")))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                     for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
           for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  del argv  # no options
  print(table(paper_settings()))
  print("\nP as in the paper's Table 2 (rounded to whole millions above 1M; the paper writes "
        "96M for AttR2U-Net's 96.5M).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
