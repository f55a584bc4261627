"""The training loop: steps, logging, validation with early stopping, checkpoints.

`train_loop` runs the pmapped train step from the run's first (or resumed) step to its last,
evaluating the validation JA at the end of every `eval_every_epochs`, keeping the best checkpoint
and stopping early when `patience` evaluations in a row brought no better JA (paper, 2.2). Its
state between steps is a `LoopState`, saved with every latest checkpoint, so a resumed run
continues exactly where the stopped one was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax.training import early_stopping

from lesion_jax import checkpoint as checkpoint_lib
from lesion_jax import evaluation as evaluation_lib
from lesion_jax import errors, inference, parallel, preemption
from lesion_jax.data import pipeline
from lesion_jax.spec import RunSpec


NonFiniteLossError = errors.TrainingDiverged  # the name earlier versions raised


@dataclasses.dataclass
class LoopState:
  """What the loop carries between steps and across a resume (checkpoint metadata)."""
  # Early stopping on the validation JA (paper 2.2): flax's EarlyStopping, which minimises, kept
  # on -JA. Its best_metric is inf before the first evaluation.
  early_stop: early_stopping.EarlyStopping = dataclasses.field(
      default_factory=early_stopping.EarlyStopping)
  best_step: int = 0
  train_seconds: float = 0.0  # compilation, evaluation and saving excluded
  images_per_second: float = 0.0
  init_from: dict | None = None  # the run this one started from (transfer)
  # Divergence check: mean train loss of the run's first steps, and how many it averages.
  loss_reference: float = 0.0
  loss_reference_steps: int = 0

  @property
  def best_val_ja(self) -> float:
    """The best validation JA so far; -1 before the first evaluation."""
    best = self.early_stop.best_metric
    return -1.0 if math.isinf(best) else -best

  @property
  def evaluations_without_improvement(self) -> int:
    return self.early_stop.patience_count

  @property
  def should_stop(self) -> bool:
    return self.early_stop.should_stop

  def record_validation(self, val_ja: float, step: int, patience: int) -> bool:
    """Updates the best score and the early-stopping count; True when `val_ja` is a new best.

    Keras (the paper's) stops once `patience` evaluations in a row brought no better JA; flax's
    EarlyStopping counts only the evaluations before the one at hand, so it gets patience - 1.
    """
    self.early_stop = self.early_stop.replace(patience=patience - 1).update(-val_ja)
    if self.early_stop.has_improved:
      self.best_step = step
    return self.early_stop.has_improved

  @classmethod
  def after_best(cls, val_ja: float, step: int, init_from: dict | None) -> "LoopState":
    """The state of a run going on from its best checkpoint (no latest one restored)."""
    return cls(early_stop=early_stopping.EarlyStopping(best_metric=-float(val_ja)),
               best_step=step, init_from=init_from)

  def to_meta(self) -> dict:
    return {"best_val_ja": self.best_val_ja, "best_step": self.best_step,
            "es_count": self.evaluations_without_improvement, "should_stop": self.should_stop,
            "train_seconds": self.train_seconds, "images_per_second": self.images_per_second,
            "init_from": self.init_from, "loss_reference": self.loss_reference,
            "loss_reference_steps": self.loss_reference_steps}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any]) -> "LoopState":
    """The state saved by `to_meta`, or by earlier versions (which also stored `es_best`)."""
    best = float(meta["best_val_ja"])
    early_stop = early_stopping.EarlyStopping(
        best_metric=-best if best >= 0 else float("inf"), patience_count=int(meta["es_count"]),
        should_stop=bool(meta["should_stop"]))
    return cls(early_stop=early_stop, best_step=int(meta["best_step"]),
               train_seconds=float(meta["train_seconds"]),
               images_per_second=float(meta["images_per_second"]),
               init_from=meta.get("init_from"),
               loss_reference=float(meta.get("loss_reference", 0.0)),
               loss_reference_steps=int(meta.get("loss_reference_steps", 0)))


class Clock:
  """Training time and images/s, excluding compilation, evaluation and saving."""

  def __init__(self, seconds_before: float, global_batch: int, untimed_calls: int = 1):
    self.seconds_before = seconds_before
    self.global_batch = global_batch
    # The clock starts once the first call (and its compilation) is done; a benchmark also
    # leaves out a few warm-up calls.
    self.untimed_calls = untimed_calls
    self.start: float | None = None
    self.images = 0
    self.paused_seconds = 0.0

  def steps_done(self, step_metrics: Any, num_steps: int = 1) -> None:
    if self.start is None:
      self.untimed_calls -= 1
      if self.untimed_calls <= 0:
        jax.block_until_ready(step_metrics)
        self.start = time.perf_counter()
    else:
      self.images += self.global_batch * num_steps

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      if self.start is not None:  # before the clock starts there is nothing to leave out
        self.paused_seconds += time.perf_counter() - start

  def elapsed(self) -> float:
    if self.start is None:
      return 0.0
    return time.perf_counter() - self.start - self.paused_seconds

  def images_per_second(self) -> float | None:
    elapsed = self.elapsed()
    return self.images / elapsed if elapsed > 0 and self.start is not None else None

  def record(self, loop: LoopState) -> None:
    if self.start is None:
      return
    loop.train_seconds = self.seconds_before + self.elapsed()
    if self.images and self.images_per_second():
      loop.images_per_second = self.images_per_second()


class MetricWriter:
  """metrics.jsonl lines and TensorBoard scalars/images; only the main process writes."""

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = parallel.is_main_process()
    path = os.path.join(workdir, "metrics.jsonl")
    # From step 0 too: a run that starts again (no checkpoint restored) logs every step anew.
    if self.enabled and os.path.exists(path):
      _drop_rows_after(path, start_step)
    self._jsonl = open(path, "a") if self.enabled else None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, kind: str, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"kind": kind, "step": int(step), **{
        k: float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(f"{kind}/{key}", float(value), int(step))

  def images(self, tag: str, step: int, images: np.ndarray) -> None:
    if self.enabled and len(images):
      self._tb.add_images(tag, images, int(step), dataformats="NHWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Removes the metrics.jsonl rows of steps after `step`, which a resumed run logs again.

  A run killed after its last checkpoint had logged those steps already; without this the file
  would hold them twice. Rows cut short by the kill are dropped too.
  """
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if int(json.loads(line)["step"]) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError, TypeError):
        continue
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


class LossMonitor:
  """Step losses kept on the device until a logging step fetches them, then checked.

  Fetching every step would make the host wait for the device at every step; fetched in a
  group, every step's loss is checked and their mean is logged. Training has diverged when a
  loss is NaN or infinite (the step itself skips such an update, so the parameters stay
  finite), or when it exceeds `divergence_factor` times the mean loss of the run's first
  `divergence_reference_steps` steps (an exploding loss stays finite for a while: 3e12).
  """

  def __init__(self, run: RunSpec, writer: MetricWriter, clock: Clock, loop: LoopState):
    self.run, self.writer, self.clock, self.loop = run, writer, clock, loop
    self.pending: list[tuple[int, dict]] = []

  def add(self, last_step: int, step_metrics: dict) -> None:
    """The metrics of one call: its losses are (devices,) or (devices, steps in the call)."""
    self.pending.append((last_step, step_metrics))

  def flush(self) -> None:
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    per_call = [np.atleast_1d(np.asarray(m["loss"])[0]) for m in fetched]
    steps = [last - len(call) + 1 + i for (last, _), call in zip(self.pending, per_call)
             for i in range(len(call))]
    losses = np.concatenate(per_call).astype(np.float64)
    for step, loss in zip(steps, losses):
      self._check(step, loss)
    last_step = self.pending[-1][0]
    values = {"loss": float(losses.mean()),
              "learning_rate": float(self.run.learning_rate(np.int32(last_step - 1)))}
    images_per_second = self.clock.images_per_second()
    if images_per_second is not None:
      values["images_per_second"] = images_per_second
    self.writer.write("train", last_step, values)
    self.pending.clear()

  def _check(self, step: int, loss: float) -> None:
    what = divergence(loss, self.loop, self.run.config.training)
    if what:
      raise self._diverged(step, what)

  def _diverged(self, step: int, what: str) -> errors.TrainingDiverged:
    kept = self.run.checkpoints.latest_step()
    where = (f"The last good checkpoint, step {kept}, is kept in "
             f"{self.run.workdir}/checkpoints/latest" if kept is not None else
             "No checkpoint had been saved yet, so none is kept")
    return errors.TrainingDiverged(
        f"training diverged at step {step}: {what}. {where}. Lower "
        "config.optimizer.learning_rate (or try another loss) and start again in a new "
        "--workdir, or in this one with --overwrite.")


def divergence(loss: float, loop: LoopState, training) -> str | None:
  """What is wrong with one step's `loss`, or None; a loss of the run's first
  `training.divergence_reference_steps` steps also joins the reference mean (in `loop`)."""
  if not np.isfinite(loss):
    return f"the loss became {loss}"
  if (training.divergence_factor and loop.loss_reference_steps
      and loss > training.divergence_factor * loop.loss_reference):
    return (f"the loss reached {loss:.4g}, {loss / loop.loss_reference:.3g} times its mean "
            f"over the run's first {loop.loss_reference_steps} steps ({loop.loss_reference:.4g}; "
            f"config.training.divergence_factor = {training.divergence_factor:g})")
  if loop.loss_reference_steps < training.divergence_reference_steps:
    n = loop.loss_reference_steps
    loop.loss_reference = (loop.loss_reference * n + loss) / (n + 1)
    loop.loss_reference_steps = n + 1
  return None


class SaveTimer:
  """`config.checkpoint.every_seconds`: a latest checkpoint at least this often, so that a
  killed run (SIGKILL, a crash) loses at most that much of a long epoch.

  With several processes the clock of process 0 decides, at logging steps, for all of them.
  """

  def __init__(self, every_seconds: float | None, log_every_steps: int):
    self.every_seconds = every_seconds
    self.log_every_steps = log_every_steps
    self.last = time.monotonic()

  def due(self, step: int) -> bool:
    if not self.every_seconds:
      return False
    if parallel.process_count() == 1:
      return time.monotonic() - self.last >= self.every_seconds
    if step % self.log_every_steps:
      return False
    return parallel.broadcast_from_main(time.monotonic() - self.last >= self.every_seconds)

  def saved(self) -> None:
    self.last = time.monotonic()


def progress_bar(total: int, initial: int = 0, desc: str = ""):
  """A tqdm bar with ETA on the main process; silent elsewhere."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
              disable=not parallel.is_main_process(), mininterval=1.0)


def validate(run: RunSpec, replicated, loop: LoopState, step: int, writer: MetricWriter,
             progress) -> None:
  """Validation JA at threshold 0.5 (the search comes after training); keeps the best."""
  evaluation = evaluation_lib.evaluate(run.steps.eval, replicated, run.validation, run.image_size,
                                       **run.eval_kwargs)
  val_ja = evaluation.ja_at(0)
  improved = loop.record_validation(val_ja, step, run.config.training.patience)
  writer.write("validation", step, {"ja": val_ja, "loss": float(evaluation.loss.mean()),
                                    "best_ja": loop.best_val_ja})
  log_predictions(run, replicated, writer, step)
  progress.set_postfix(val_ja=f"{val_ja:.3f}")
  if improved:
    state = parallel.unreplicate(replicated)
    run.checkpoints.save_best(step, {"params": state.params, "batch_stats": state.batch_stats},
                              {"step": step, "val_ja": val_ja})


def dispatch_plan(start: int, total: int, steps_per_dispatch: int,
                  every: Sequence[int | None]) -> list[tuple[int, int]]:
  """(last step, steps) of each call from step `start` to `total`.

  A call runs at most `steps_per_dispatch` steps and never crosses a multiple of a count in
  `every` (logging, evaluation, saving), so those happen at the same steps whatever the number
  of steps per call.
  """
  plan, step = [], start
  while step < total:
    count = min([steps_per_dispatch, total - step] + [e - step % e for e in every if e])
    step += count
    plan.append((step, count))
  return plan


def _calls(run: RunSpec, plan: list[tuple[int, int]]) -> Iterator[dict]:
  """The batches of each call of `plan`, on the devices: one batch, or k stacked (axis 1)."""
  config = run.config
  start_step = plan[0][0] - plan[0][1]
  batches = pipeline.iterate_from(run.train_batches, start_step,
                                  num_threads=config.data.num_threads)

  def host_calls():
    for _, count in plan:
      group = [next(batches) for _ in range(count)]
      if run.steps_per_dispatch == 1:
        yield group[0]
      else:
        yield {k: np.stack([b[k] for b in group], axis=1) for k in group[0]}

  return parallel.prefetch_to_devices(host_calls(), run.devices)


def train_loop(run: RunSpec, replicated, loop: LoopState, stop: preemption.StopRequest,
               start_step: int, untimed_calls: int = 1) -> tuple[Any, int]:
  """Trains from `start_step` (the state's step) to the end or an early stop; returns (state,
  last step).

  Raises errors.TrainingDiverged when the loss diverges, and errors.RunStopped after saving the
  step it reached when SIGTERM or SIGINT arrives (`stop`). Images/s leave out the first
  `untimed_calls` calls (compilation; a benchmark's warm-up).
  """
  step = start_step
  if loop.should_stop and step < run.total_steps:
    logging.info("The run stopped early at step %d (no better validation JA for %d "
                 "evaluations): nothing more to train", step, run.config.training.patience)
  if loop.should_stop or step >= run.total_steps:
    return replicated, step
  config = run.config
  writer = MetricWriter(run.workdir, start_step=step)
  clock = Clock(loop.train_seconds, run.global_batch, untimed_calls)
  losses = LossMonitor(run, writer, clock, loop)
  timer = SaveTimer(config.checkpoint.every_seconds, config.training.log_every_steps)
  progress = progress_bar(total=run.total_steps, initial=step, desc="train")
  plan = dispatch_plan(step, run.total_steps, run.steps_per_dispatch,
                       (config.training.log_every_steps, run.eval_every,
                        config.checkpoint.every_steps))
  p_train = run.steps.train if run.steps_per_dispatch == 1 else run.steps.train_k
  try:
    for call, ((step, count), batch) in enumerate(zip(plan, _calls(run, plan)), start=1):
      replicated, step_metrics = p_train(replicated, batch)
      losses.add(step, step_metrics)
      clock.steps_done(step_metrics, count)
      progress.update(count)
      if step % config.training.log_every_steps == 0:
        losses.flush()
      at_eval = step % run.eval_every == 0 or step == run.total_steps
      stopping = stop.reached(call)  # every process calls it after every call
      every = config.checkpoint.every_steps
      if at_eval or stopping or (every and step % every == 0) or timer.due(step):
        losses.flush()  # a diverged loss is found before anything is saved
        clock.record(loop)  # the training time up to here; evaluating and saving do not count
        with clock.paused():
          if at_eval:
            validate(run, replicated, loop, step, writer, progress)
          run.checkpoints.save_latest(step, checkpoint_lib.state_to_dict(
              parallel.unreplicate(replicated)), loop.to_meta(), wait=stopping)
          timer.saved()
      if stopping:
        raise _stopped(run, step, stop.received)
      if at_eval and loop.should_stop:
        logging.info("Early stopping at step %d: no better validation JA for %d evaluations",
                     step, config.training.patience)
        break
    losses.flush()
  finally:
    progress.close()
    with contextlib.suppress(OSError):  # a full disk: the error in flight, if any, says so
      writer.close()
    run.checkpoints.wait()  # an asynchronous save in flight is finished before anything else
  return replicated, step


def _stopped(run: RunSpec, step: int, signal_name: str | None) -> errors.RunStopped:
  path = os.path.join(run.workdir, "checkpoints", "latest", str(step))
  return errors.RunStopped(
      f"{signal_name or 'a signal'} received: training stopped after step {step} of "
      f"{run.total_steps} and saved it in {path}. Run the same command again to resume there.",
      step=step, signal_name=signal_name or "")


def log_predictions(run: RunSpec, replicated, writer: MetricWriter, step: int) -> None:
  """TensorBoard: truth | probability panels of the first validation images, with the test-time
  augmentation of the final evaluation (the overlays' compiled program serves both)."""
  count = min(run.config.training.tensorboard_images, len(run.validation))
  if not writer.enabled or count <= 0:
    return
  examples = [run.validation[i] for i in range(count)]
  state = parallel.unreplicate(replicated)
  probs = inference.predict_examples(
      run.model, {"params": state.params, "batch_stats": state.batch_stats}, examples,
      run.image_size, run.config.evaluation.tta)
  masks = np.stack([pipeline.prepare_example(e, run.image_size)["mask"][..., 0]
                    for e in examples]).astype(np.float32)
  panels = np.concatenate([masks, probs], axis=2)[..., None].repeat(3, -1)
  writer.images("validation/truth_vs_probability", step, panels.astype(np.float32))


__all__ = ["Clock", "LossMonitor", "LoopState", "MetricWriter", "NonFiniteLossError",
           "SaveTimer", "dispatch_plan", "divergence", "progress_bar", "train_loop", "validate"]
