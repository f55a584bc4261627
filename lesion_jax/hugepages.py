"""Transparent huge pages for the host memory of XLA's CPU backend (glibc's malloc tunable).

Each CPU train step allocates XLA's temporary buffers (~390 MB for the U-Net at 256x256, batch
4) and Eigen's convolution workspaces (up to 151 MB) afresh, and glibc's malloc serves blocks
that large with a new `mmap` that it unmaps when they are freed. With 4 KiB pages the kernel
then takes ~96,000 page faults per U-Net step (~54,000 for the reduced Mobile DeepLab),
zeroing every page again: ~200 ms of system time per U-Net step. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35 and newer) malloc asks for transparent
huge pages, which a kernel in the common `madvise` THP mode then gives: ~800 faults per step,
and the step is 1.1-1.2x faster (docs/performance.md, entry 17).

glibc reads its tunables once, when the process starts, so `launch.py` calls
`reexec_with_huge_pages()` first thing: the process re-executes itself, the same command line
under the same process id, with the tunable added. `LESION_JAX_HUGE_PAGES=0` turns this off.
A script that imports lesion_jax directly can set the variable itself:
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py`.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "LESION_JAX_HUGE_PAGES"
# The first glibc release with the glibc.malloc.hugetlb tunable.
MIN_GLIBC = (2, 35)


def _glibc_version() -> tuple[int, ...] | None:
  library, version = platform.libc_ver()
  if library != "glibc" or not version:
    return None
  return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def environment_with_huge_pages(environ: Mapping[str, str],
                                glibc: tuple[int, ...] | None = None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing should change.

  Nothing changes off Linux or glibc < 2.35, under `LESION_JAX_HUGE_PAGES=0`, or when
  GLIBC_TUNABLES already sets glibc.malloc.hugetlb (to any value: the user's choice stands).
  Other tunables already in GLIBC_TUNABLES are kept.
  """
  if environ.get(OPT_OUT, "1") == "0":
    return None
  glibc = _glibc_version() if glibc is None else glibc
  if sys.platform != "linux" or glibc is None or glibc < MIN_GLIBC:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=")[0] == "glibc.malloc.hugetlb" for item in tunables.split(":")):
    return None
  updated = dict(environ)
  updated["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return updated


def reexec_with_huge_pages() -> None:
  """Re-executes this Python process with huge pages on; returns only when nothing changes.

  Call it before importing JAX: everything done before it is done twice.
  """
  environ = environment_with_huge_pages(os.environ)
  if environ is None:
    return
  try:
    os.execve(sys.executable, list(sys.orig_argv), environ)
  except OSError as error:  # the process carries on as it is, with ordinary pages
    logging.warning("could not re-execute with %s (%s); host memory uses 4 KiB pages",
                    TUNABLE, error)


__all__ = ["environment_with_huge_pages", "reexec_with_huge_pages"]
