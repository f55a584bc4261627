"""Stopping at a signal: SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C).

Cluster schedulers (SLURM, Kubernetes, cloud spot instances) send SIGTERM some seconds before
they kill a job. Instead of dying at once, training finishes the step it is in, saves a latest
checkpoint of exactly that step (data position included), says how to resume and exits with
code 75 (errors.EXIT_STOPPED). Ctrl-C does the same; a second Ctrl-C stops at once.

With several processes every one must stop at the same step, or their checkpoint would mix
steps. JAX's preemption sync manager (started by `jax.distributed.initialize`, which catches
SIGTERM itself) agrees on that step: `reached_preemption_sync_point(step)` turns true at the
same step on every process. SIGINT is turned into a SIGTERM of the process so that it takes the
same path.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Installs the signal handlers while active; `reached(step)` says when to stop and save."""

  def __init__(self):
    self.received: str | None = None  # the name of the first signal
    self._previous: dict[int, Any] = {}
    self._multi_process = jax.process_count() > 1

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only; nothing to install
    if self._multi_process:
      # SIGTERM belongs to JAX's preemption notifier; SIGINT is passed on to it.
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_to_sigterm)
    else:
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _record(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user will not wait for the save
    self.received = self.received or name
    logging.warning("%s received: training stops after the current step, which is saved", name)

  def _forward_to_sigterm(self, signum: int, frame) -> None:
    if self.received is not None:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """True at the step to stop at: the current one, or in a multi-process run the one every
    process agreed on (all processes must call this at every step)."""
    if self._multi_process:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or "SIGTERM"
        return True
      return False
    return self.received is not None


__all__ = ["SIGNALS", "StopRequest"]
