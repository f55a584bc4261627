"""Huge pages for host memory: the environment rule, the re-execution, and the page faults saved."""
import os
import subprocess
import sys

import pytest

from lesion_jax import hugepages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_GLIBC = (2, 36)


def test_the_tunable_is_added_and_other_tunables_are_kept():
  assert hugepages.environment_with_huge_pages({"HOME": "/h"}, NEW_GLIBC) == {
      "HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = hugepages.environment_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, NEW_GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, glibc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NEW_GLIBC),  # the user's own choice stands
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, NEW_GLIBC),  # already re-executed
    ({"LESION_JAX_HUGE_PAGES": "0"}, NEW_GLIBC),  # opted out
    ({}, (2, 31)),  # glibc without the tunable
])
def test_nothing_changes_when_set_refused_or_unsupported(environ, glibc):
  if sys.platform != "linux":
    pytest.skip("the rule is Linux-only; elsewhere nothing changes for any input")
  assert hugepages.environment_with_huge_pages(environ, glibc) is None


def _glibc_with_tunable() -> None:
  version = hugepages._glibc_version()
  if sys.platform != "linux" or version is None or version < hugepages.MIN_GLIBC:
    pytest.skip(f"needs Linux with glibc >= 2.35, this is {sys.platform} with glibc {version}")


def test_reexecution_keeps_the_command_line_and_adds_the_tunable():
  _glibc_with_tunable()
  script = ("import os, sys; from lesion_jax import hugepages; "
            "hugepages.reexec_with_huge_pages(); "
            "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  out = subprocess.run([sys.executable, "-c", script, "a", "--b=1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60, check=True).stdout
  assert out.strip() == "glibc.malloc.hugetlb=1 ['a', '--b=1']"


def _faults_for_a_fresh_64mib_block(tunables: str | None) -> int:
  """Minor page faults for writing a block fresh from glibc's malloc, as XLA's buffers are.

  (Not a NumPy array: NumPy asks for huge pages for its large arrays by itself.)
  """
  script = ("import ctypes, resource; libc = ctypes.CDLL(None); "
            "libc.malloc.restype = ctypes.c_void_p; size = 64 * 2**20; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
            "block = libc.malloc(size); ctypes.memset(block, 1, size); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=60, check=True).stdout
  return int(out)


def test_the_tunable_cuts_the_page_faults_of_a_large_block():
  _glibc_with_tunable()
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      mode = f.read()
  except OSError:
    pytest.skip("no /sys/kernel/mm/transparent_hugepage: the kernel has no huge pages")
  if "[never]" in mode:
    pytest.skip(f"transparent huge pages are off on this kernel ({mode.strip()})")
  plain = _faults_for_a_fresh_64mib_block(None)
  huge = _faults_for_a_fresh_64mib_block(hugepages.TUNABLE)
  # 4 KiB pages: one fault per page, 16,384 for 64 MiB; 2 MiB pages: 32, plus 4 KiB ones at
  # the block's unaligned ends.
  assert plain > 10_000
  assert huge < plain / 10
