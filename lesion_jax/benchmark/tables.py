"""benchmark.md: the rows of a benchmark as tables headed by the device and the JAX version."""
from __future__ import annotations

import os
from typing import Any, Sequence

from lesion_jax.data import pipeline


def _size(value: Any) -> str:
  """An image size as width x height (a square S gives SxS)."""
  if value is None:
    return "?"
  height, width = pipeline.image_shape(value)
  return f"{width}x{height}"


def _num(value: Any, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def _mib(value: Any) -> str:
  return "-" if value is None else f"{value / 2**20:,.0f}"


def _gflops(value: Any) -> str:
  return "-" if value is None else f"{value / 1e9:,.2f}"


_SECTIONS = {
    "models": ("Models", [
        ("model", "model", str), ("dtype", "dtype", str),
        ("params", "params (M)", lambda v: _num(v and v / 1e6, ".2f")),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("train_images_per_s_per_device", "img/s/device", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("compile_s", "compile s", lambda v: _num(v, ".1f")),
        ("eval_images_per_s", "eval img/s", lambda v: _num(v, ".2f")),
        ("loop_images_per_s", "loop img/s", lambda v: _num(v, ".2f")),
        ("loop_to_step_ratio", "loop / step", lambda v: _num(v, ".2f")),
        ("flops_per_image", "train GFLOP/img", _gflops),
        ("achieved_flops_per_s", "GFLOP/s", _gflops),
        ("peak_bytes", "XLA MiB/device", _mib),
        ("device_peak_bytes", "device peak MiB", _mib),
        ("input_bound", "input-bound", lambda v: "-" if v is None else ("yes" if v else "no")),
        ("xla_options", "XLA options", lambda v: v or "-"),
    ]),
    "batch_size": ("Batch-size sweep (largest per-device batch that fits)", [
        ("model", "model", str), ("dtype", "dtype", str),
        ("batch_per_device", "batch/device", str),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("peak_bytes", "XLA MiB/device", _mib),
        ("error", "note", lambda v: v or ""),
    ]),
    "devices": ("Device-count sweep (per-device batch fixed)", [
        ("model", "model", str), ("dtype", "dtype", str), ("devices", "devices", str),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("train_images_per_s_per_device", "img/s/device", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("scaling_efficiency", "efficiency", lambda v: _num(v, ".2f")),
    ]),
}


def _step_cell(row: dict) -> str:
  if row.get("step_ms_median") is None:
    return "-" if not row.get("error") else "does not fit"
  return (f"{row['step_ms_median']:.1f} ({row['step_ms_p10']:.1f}-"
          f"{row['step_ms_p90']:.1f})")


def markdown(rows: Sequence[dict], env: dict, notes: Sequence[str] = ()) -> str:
  """benchmark.md: the environment, then one table per sweep present in `rows`."""
  first = rows[0] if rows else {}
  lines = [
      "# Training throughput",
      "",
      f"Device: **{env['device_kind']}** ({env['platform']}), {first.get('devices', '?')} "
      f"of {env['local_devices']} local device(s); JAX {env['jax_version']}; "
      f"host CPUs: {env['host_cpus']}; Python {env['python']}.",
      f"Image size {_size(first.get('image_size'))}, "
      f"batch {first.get('batch_per_device', '?')} per device unless a sweep says otherwise. "
      "Steady-state images/s exclude compilation (median step time; p10-p90 in brackets).",
  ]
  if env.get("platform") == "cpu":
    tunables = env.get("glibc_tunables")
    lines.append("Host memory: " + (f"GLIBC_TUNABLES={tunables}" if tunables else
                                    "glibc defaults (4 KiB pages; see lesion_jax/hugepages.py)")
                 + ".")
  if "adam_flat" in env:
    lines.append("Adam: " + ("on one flat vector of all parameters (config.optimizer.flatten)."
                             if env["adam_flat"] else "one update per parameter tensor."))
  if env.get("load_average_start") is not None:
    lines.append(f"Host load average (1, 5, 15 min) at start {env['load_average_start']}"
                 + (f", at end {env['load_average_end']}" if env.get("load_average_end")
                    else "") + ".")
  lines.append("train img/s: the step alone, on a batch already on the devices; loop img/s: "
               "the real training loop (input pipeline, augmentation, step, logging), which "
               "reaches its step when loop / step is 1. GFLOP/img: counted on the step as "
               "JAX lowers it, the same on every backend.")
  lines.append("XLA MiB/device: planned memory of one train step (arguments + outputs + "
               "temporaries - donated). Device peak: the allocator's high-water mark where the "
               "backend reports one (not on CPU).")
  for sweep, (title, columns) in _SECTIONS.items():
    chosen = [r for r in rows if r["sweep"] == sweep]
    if not chosen:
      continue
    lines += ["", f"## {title}", "",
              "| " + " | ".join(c[1] for c in columns) + " |",
              "|" + "---|" * len(columns)]
    for row in chosen:
      cells = [_step_cell(row) if fmt is None else fmt(row.get(key)) for key, _, fmt in columns]
      lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in chosen if r.get("error") and sweep != "batch_size"]
    for row in errors:
      lines.append(f"\n{row['model']} ({row['dtype']}, batch {row['batch_per_device']}): "
                   f"{row['error']}")
  if notes:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def end_summary(rows: list[dict], workdir: str) -> str:
  """The last lines of a benchmark on the console."""
  lines = ["", f"Finished benchmark: {workdir}"]
  for row in rows:
    if row["sweep"] == "models":
      rate = row["train_images_per_s"]
      loop = row.get("loop_images_per_s")
      lines.append(f"  {row['model']} ({row['dtype']}): "
                   + (f"{rate:.1f} train images/s (step alone)" if rate
                      else row.get("error") or "-")
                   + (f", {loop:.1f} in the training loop" if loop else ""))
  lines.append(f"Tables: {os.path.join(workdir, 'benchmark.md')} (and benchmark.json)")
  return "\n".join(lines)
