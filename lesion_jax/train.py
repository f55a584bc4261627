"""Training and evaluation: pure step functions, and the run that `launch.py` starts.

`train_step` and `eval_step` are written for one device and are pure: (state, batch) in,
(state, metrics) out, no config reads and no side effects. `parallel` maps them over the devices.
`train_and_evaluate` is the whole protocol of the paper (section 2.2) in three named parts:
`setup_run` (config -> model, data, optimiser, restored state), `loop.train_loop` (train with
early stopping on the validation JA, keeping the best checkpoint) and `final_evaluation` (the
binarisation threshold chosen on validation among 50 values in [0.5, 1], then the ISIC metrics on
each test database at it, results.json and the reports).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from lesion_jax import checkpoint as checkpoint_lib
from lesion_jax import evaluation as evaluation_lib
from lesion_jax import augment, inference
from lesion_jax import losses as losses_lib
from lesion_jax import loop as loop_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax import models as models_lib
from lesion_jax import errors, optim, parallel, preemption, runs, transfer
from lesion_jax import spec as spec_lib
from lesion_jax import workdir as workdir_lib
from lesion_jax.data import loading, pipeline
from lesion_jax.errors import ConfigError
from lesion_jax.spec import RunSpec, StepFunctions

NonFiniteLossError = loop_lib.NonFiniteLossError
RUN_OUTPUTS = workdir_lib.RUN_OUTPUTS


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # base key of the dropout and augmentation draws; step and device folded in
  # An exponential moving average of {'params', 'batch_stats'} (config.training.ema_decay),
  # carried beside the trained weights and checkpointed with them; None when off.
  ema: Any = None
  ema_decay: float | None = struct.field(pytree_node=False, default=None)


def ema_update(ema: Any, variables: Any, decay: float, step: jax.Array) -> Any:
  """`decay * ema + (1 - decay) * variables`, the decay warmed up as min(decay, (1+t)/(10+t))
  so that the average does not keep the random initialisation for thousands of steps."""
  step = jnp.asarray(step, jnp.float32)
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, v: rate * e + (1.0 - rate) * v, ema, variables)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], loss_fn: Callable,
               augment_options: augment.AugmentOptions = augment.AugmentOptions()
               ) -> tuple[TrainState, dict]:
  """One optimisation step on this device's share of a batch of uint8 images and masks."""
  # Dropout masks (models/philox.py) and augmentation draws are pure functions of (seed, step,
  # device): a resumed run repeats them exactly.
  step_key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                parallel.replica_index())
  dropout_rng, augment_rng = jax.random.split(step_key)
  images, masks = augment.augment_batch(augment_rng, batch["image"], batch["mask"],
                                        augment_options)
  images = inference.standardize(images)

  def compute_loss(params):
    logits, updates = state.apply_fn(
        inference.model_variables({"params": params, "batch_stats": state.batch_stats}),
        images, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    return loss_fn(logits, masks).mean(), updates

  (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  # Data parallelism: every device applies the mean gradient of the global batch.
  grads = parallel.cross_replica_mean(grads)
  # Models normalise over the global batch already; the mean only guards a model without it.
  batch_stats = parallel.cross_replica_mean(updates.get("batch_stats", state.batch_stats))
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema_decay is not None:
    state = state.replace(ema=ema_update(
        state.ema, {"params": state.params, "batch_stats": state.batch_stats}, state.ema_decay,
        state.step))
  return state, {"loss": parallel.cross_replica_mean(loss)}


def train_steps(state: TrainState, batches: Mapping[str, jax.Array], loss_fn: Callable,
                augment_options: augment.AugmentOptions = augment.AugmentOptions()
                ) -> tuple[TrainState, dict]:
  """`train_step` over a stack of k batches ((k, batch, ...) leaves) in one call: k steps per
  dispatch, for accelerators whose small steps are bound by launching them. Metrics are (k,)."""
  return jax.lax.scan(
      lambda carry, batch: train_step(carry, batch, loss_fn, augment_options), state, batches)


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], loss_fn: Callable,
              thresholds: jax.Array, tta: str = "none") -> dict:
  """Per-image confusion counts at every threshold of the grid, and per-image losses.

  Counts rather than scores are returned so the host can form exact ISIC metrics for any
  threshold and drop the padded images of the last batch. `tta` averages the probabilities
  over flipped (and turned) copies (inference.TTA_CHOICES).
  """
  logits, probs = inference.forward(
      state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
      tta)
  return {
      "counts": metrics_lib.confusion_counts_at_thresholds(probs, batch["mask"], thresholds),
      "loss": loss_fn(logits, batch["mask"]),
  }


@functools.lru_cache(maxsize=16)
def _canonical(model):
  """The first model seen that equals `model` (flax modules compare by their fields).

  The train state carries `model.apply`, and bound methods of two equal modules still differ,
  so every run would trace and compile its steps anew. With one instance per setting, later
  runs in the same process (a sweep, a transfer experiment, a test session) reuse them.
  """
  return model


@functools.lru_cache(maxsize=16)
def _optimizer(total_steps: int, steps_per_epoch: int, optimizer_settings: str,
               frozen: tuple) -> tuple[Any, Callable]:
  """(Adam on the SGDR schedule, the schedule), one pair per setting.

  Like `_canonical`: the train state carries the optimiser, so equal settings must give the
  same object for later runs in the process to reuse the compiled steps.
  """
  settings = ml_collections.ConfigDict(json.loads(optimizer_settings))
  schedule = optim.sgdr_schedule(total_steps, steps_per_epoch, settings)
  return transfer.freeze(optim.adam(schedule, settings.flatten), frozen), schedule


def optimizer(config: ml_collections.ConfigDict, total_steps: int,
              steps_per_epoch: int) -> tuple[Any, Callable]:
  """(the run's optimiser, its learning-rate schedule) from config.optimizer and config.frozen."""
  return _optimizer(total_steps, steps_per_epoch,
                    json.dumps(config.optimizer.to_dict(), sort_keys=True), tuple(config.frozen))


@functools.lru_cache(maxsize=16)
def _jitted_schedule(schedule: Callable) -> Callable:
  """The learning-rate schedule as one compiled function, compiled here: evaluated op by op,
  the first logging step would compile a dozen small programs in the middle of training."""
  jitted = jax.jit(schedule)
  jitted(jnp.zeros((), jnp.int32)).block_until_ready()
  return jitted


@functools.lru_cache(maxsize=16)
def _jitted_init(model, tx):
  """(the model's variables, the optimiser's state, step 0) as one compiled program. Created op
  by op, the optimiser state would compile one small program per parameter shape (~45 for a
  MobileNetV2), in every process."""
  def init(rngs, dummy):
    variables = model.init(rngs, dummy, train=False)
    return variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32)
  return jax.jit(init)


def _init_size(model, image_size) -> tuple[int, int]:
  """The input size a model's variables are initialised at. A registry model's do not depend on
  it: they are initialised at the size `count_params` traces, so that one compiled init serves
  the model at every image size. Others: `image_size`."""
  side = models_lib.variables_input_side(model)
  return (side, side) if side else pipeline.image_shape(image_size)


def create_train_state(model, tx, rng: jax.Array, image_size,
                       ema_decay: float | None = None) -> TrainState:
  model = _canonical(model)
  init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  # NumPy zeros: a jnp.zeros would compile a program of its own in every process.
  dummy = np.zeros((1, *_init_size(model, image_size), 3), np.float32)
  variables, opt_state, step = _jitted_init(model, tx)(
      {"params": init_rng, "dropout": dropout_rng}, dummy)
  # TrainState.create, with the optimiser state from the program above. The step is strongly
  # typed: a weakly typed Python 0 would make the second step recompile.
  state = TrainState(step=step, apply_fn=model.apply, params=variables["params"], tx=tx,
                     opt_state=opt_state, batch_stats=variables.get("batch_stats", {}),
                     rng=state_rng)
  if ema_decay is not None:
    state = state.replace(ema_decay=float(ema_decay), ema={
        "params": state.params, "batch_stats": state.batch_stats})
  return state


def compiler_options(config: ml_collections.ConfigDict, model, platform: str) -> dict:
  """The XLA options the run's steps compile with on `platform` (empty: XLA's defaults)."""
  options = models_lib.xla_compiler_options(model, config.cpu_ynnpack, platform)
  if platform == "gpu" and config.xla_gpu_command_buffer is not None:
    options["xla_gpu_enable_command_buffer"] = config.xla_gpu_command_buffer
    if config.xla_gpu_command_buffer:
      options["xla_gpu_graph_min_graph_size"] = 1  # capture even short chains of kernels
  return options


@functools.lru_cache(maxsize=8)
def _pmapped_steps(loss_fn: Callable, augment_options: augment.AugmentOptions, tta: str,
                   devices: tuple, compiler_options: tuple) -> tuple:
  """The pmapped train step, k-step train call, eval step and final eval step (with `tta`),
  kept for the next run in this process.

  A sweep, a transfer experiment or a test session trains many runs in one process; runs of
  the same model then reuse JAX's traced and compiled steps instead of tracing, lowering and
  loading them again (several seconds each on a CPU).
  """
  options = dict(compiler_options)
  p_train = parallel.pmap_train_step(
      functools.partial(train_step, loss_fn=loss_fn, augment_options=augment_options),
      list(devices), options)
  p_train_steps = parallel.pmap_train_step(
      functools.partial(train_steps, loss_fn=loss_fn, augment_options=augment_options),
      list(devices), options)
  thresholds = jnp.asarray(metrics_lib.THRESHOLDS, jnp.float32)

  def p_eval_with(mode: str) -> Callable:
    return parallel.pmap_eval_step(
        functools.partial(eval_step, loss_fn=loss_fn, thresholds=thresholds, tta=mode),
        list(devices), options)
  p_eval = p_eval_with("none")
  # Without TTA the final evaluation is validation's program: one compilation serves both.
  p_eval_final = p_eval if tta == "none" else p_eval_with(tta)
  return StepFunctions(p_train, p_train_steps, p_eval, p_eval_final)


# ----------------------------------------------------------------------------------------------
# The run.

def steps_per_dispatch(config: ml_collections.ConfigDict, platform: str) -> int:
  """config.training.steps_per_dispatch, or the backend's measured default when None."""
  if config.training.steps_per_dispatch:
    return int(config.training.steps_per_dispatch)
  return DEFAULT_STEPS_PER_DISPATCH.get(platform, 1)


# Steps per pmapped call when the config leaves it unset. CPU: 1, a step takes 0.1-2 s there
# and one dispatch ~1 ms (docs/performance.md, entry 18). GPU: 1 until measured on one.
DEFAULT_STEPS_PER_DISPATCH = {"cpu": 1}


def _step_plan(config: ml_collections.ConfigDict, train_size: int,
               global_batch: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, steps between evaluations)."""
  steps_per_epoch = train_size // global_batch
  if steps_per_epoch < 1:
    raise ConfigError(f"{train_size} training images are fewer than one global batch "
                     f"of {global_batch}; lower config.batch_size_per_device")
  total_steps = config.training.num_epochs * steps_per_epoch
  if config.training.max_steps:
    total_steps = min(total_steps, config.training.max_steps)
  return steps_per_epoch, total_steps, config.training.eval_every_epochs * steps_per_epoch


def _initial_state(config, workdir: str, state: TrainState,
                   checkpoints: checkpoint_lib.RunCheckpoints, source: TransferSource | None):
  """The state to start from: restored (resume), from other weights (transfer), or fresh.

  A latest/ step that does not restore is moved aside and the one before it is tried; when
  none restores, the run goes on from its best checkpoint (`_state_from_best`), and without one
  starts again. Each fallback is one warning line.
  """
  had_checkpoints = checkpoints.latest_step() is not None
  resumed = checkpoints.restore_latest_intact(checkpoint_lib.state_to_dict(state))
  if resumed is not None:
    restored, meta = resumed
    state = checkpoint_lib.state_from_dict(state, restored)
    logging.info("Resuming %s from step %d", workdir, int(state.step))
    return state, loop_lib.LoopState.from_meta(meta)
  if had_checkpoints:
    from_best = _state_from_best(config, workdir, state, checkpoints, source)
    if from_best is not None:
      return from_best
    logging.warning("no checkpoint of %s restores: training starts again from step 0", workdir)
  init_from = None
  if config.model.init_from:
    state = _init_from_pretrained(state, config)
  if source is not None:
    state, init_from = _init_from_run(state, config, source)
  if state.ema is not None:  # the average starts from the weights training starts from
    state = state.replace(ema={"params": state.params, "batch_stats": state.batch_stats})
  return state, loop_lib.LoopState(init_from=init_from)


def _state_from_best(config, workdir: str, state: TrainState,
                     checkpoints: checkpoint_lib.RunCheckpoints, source: TransferSource | None):
  """(state, loop state) from the best checkpoint when no latest/ one restored; None without.

  The best checkpoint holds the weights only: the run goes on from its step (data order and
  learning-rate schedule included) with Adam's moments started again from zero.
  """
  best = checkpoints.restore_best_intact({"params": state.params,
                                          "batch_stats": state.batch_stats})
  if best is None:
    return None
  variables, meta = best
  step = int(meta["step"])
  state = state.replace(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                        batch_stats=variables["batch_stats"],
                        opt_state=_schedule_at(state.tx.init(variables["params"]), step))
  if getattr(state, "ema", None) is not None:  # the weight average starts again from here
    state = state.replace(ema={"params": variables["params"],
                               "batch_stats": variables["batch_stats"]})
  logging.warning("no latest checkpoint of %s restores: going on from its best checkpoint, step "
                  "%d, with a fresh optimiser state", workdir, step)
  init_from = _source_record(config.init_from, source.meta) if source is not None else None
  return state, loop_lib.LoopState.after_best(meta["val_ja"], step, init_from)


def _schedule_at(opt_state: Any, step: int) -> Any:
  """A fresh optimiser state whose learning-rate schedule stands at `step`; Adam's own count
  stays at zero, its bias correction belonging to the fresh moments."""
  def move(node):
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jnp.asarray(step, node.count.dtype))
    return node
  return jax.tree.map(move, opt_state,
                      is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState))


def _training_data(config: ml_collections.ConfigDict, datasets: loading.Datasets,
                   devices: list):
  """(validation source, step-indexed training batches), both decoded once when they fit."""
  size, threads, cache_gb = config.data.image_size, config.data.num_threads, config.data.cache_gb
  train = pipeline.decode_split(datasets.train, size, cache_gb=cache_gb, num_threads=threads)
  validation = pipeline.decode_split(datasets.validation, size, cache_gb=cache_gb,
                                     num_threads=threads, what="validation")
  batches = pipeline.training_batches(
      train, seed=config.seed, batch_size_per_device=config.batch_size_per_device,
      num_devices=len(devices), process_index=parallel.process_index(),
      process_count=parallel.process_count())
  return validation, batches


def setup_run(config: ml_collections.ConfigDict, workdir: str, devices: list,
              model=None) -> tuple[RunSpec, TrainState, loop_lib.LoopState]:
  """(the run's spec, its first state, its loop state) for a validated config: model, data,
  optimiser and compiled steps, and the state restored, initialised from elsewhere or fresh.

  `model` replaces the one config.model describes (the benchmark times settings that are not
  config keys, e.g. a depthwise implementation).
  """
  _, ignored = models_lib.config_kwargs(config)
  for key in ignored if model is None else ():
    logging.warning("config.model.%s=%r is ignored: model %r does not take it", key,
                    config.model[key], config.model.name)
  # BatchNorm statistics over the global batch: the models' BN layers reduce over the pmap axis.
  model = _canonical(model or models_lib.from_config(config, bn_axis_name=parallel.AXIS_NAME))
  size = pipeline.image_shape(config.data.image_size)
  source = _transfer_source(config, model, size)  # before the datasets are built
  datasets = loading.load_datasets(config)
  global_batch = config.batch_size_per_device * len(devices) * parallel.process_count()
  steps_per_epoch, total_steps, eval_every = _step_plan(config, datasets.train_size,
                                                        global_batch)
  tx, schedule = optimizer(config, total_steps, steps_per_epoch)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), size,
                             config.training.ema_decay)
  transfer.check_patterns_match({"params": state.params}, config.frozen, "frozen")
  checkpoints = checkpoint_lib.RunCheckpoints(workdir, keep=config.checkpoint.keep)
  state, loop = _initial_state(config, workdir, state, checkpoints, source)
  options = compiler_options(config, model, devices[0].platform)
  steps = _pmapped_steps(
      losses_lib.get_loss(config.loss), augment.AugmentOptions.from_config(config),
      config.evaluation.tta, tuple(devices), tuple(sorted(options.items())))
  validation, train_batches = _training_data(config, datasets, devices)
  # From the state, not `models.count_params`: that would trace the model once more.
  num_params = int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(state.params)))
  logging.info("%s: %s parameters; %d steps per epoch of %d images; %d devices; %d steps",
               config.model.name, f"{num_params:,}", steps_per_epoch, global_batch,
               len(devices), total_steps)
  run = RunSpec(
      config=config, workdir=workdir, devices=tuple(devices), model=model, image_size=size,
      datasets=datasets, validation=validation, train_batches=train_batches,
      global_batch=global_batch, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      eval_every=eval_every, steps_per_dispatch=steps_per_dispatch(config, devices[0].platform),
      learning_rate=_jitted_schedule(schedule), num_params=num_params, steps=steps,
      checkpoints=checkpoints)
  return run, state, loop


def _final_variables(run: RunSpec, trained: TrainState, last_step: int) -> tuple[dict, int]:
  """(variables, step) the final evaluation scores: the best checkpoint's, or with
  config.evaluation.weights 'ema' the weight average at the run's last step."""
  if run.config.evaluation.weights == "ema":
    if trained.ema is None:
      raise ConfigError("config.evaluation.weights='ema' needs config.training.ema_decay: this "
                        "run kept no weight average")
    return {"params": trained.ema["params"], "batch_stats": trained.ema["batch_stats"]}, last_step
  best, meta = run.checkpoints.restore_best(
      {"params": trained.params, "batch_stats": trained.batch_stats})
  return best, int(meta["step"])


def _final_evaluator(run: RunSpec, trained: TrainState, variables: dict):
  """(the validation Evaluation, a function scoring a test split) of the final evaluation: on
  the devices, or on the host where masks are post-processed before they are counted."""
  postprocess = run.config.evaluation.postprocess
  if postprocess != "none":
    def evaluate_split(source):
      return evaluation_lib.evaluate_on_host(
          run.model, variables, source, run.image_size, tta=run.config.evaluation.tta,
          postprocess=postprocess, batch_size=run.config.batch_size_per_device)
  else:
    replicated = parallel.replicate(
        trained.replace(params=variables["params"], batch_stats=variables["batch_stats"]),
        run.devices)

    def evaluate_split(source):
      return evaluation_lib.evaluate(run.steps.eval_final, replicated, source, run.image_size,
                                     **run.eval_kwargs)
  return evaluate_split(run.validation), evaluate_split


def final_evaluation(run: RunSpec, replicated, loop: loop_lib.LoopState, last_step: int,
                     stop: preemption.StopRequest | None = None) -> dict:
  """Best checkpoint (or the weight average, config.evaluation.weights) -> threshold search on
  validation -> test metrics (masks post-processed with config.evaluation.postprocess) ->
  results and reports.

  A signal during it stops the run before results.json is written; the last step's checkpoint
  is on disk, so the same command evaluates again.
  """
  trained = parallel.unreplicate(replicated)
  variables, chosen_step = _final_variables(run, trained, last_step)
  run.checkpoints.close()
  validation, evaluate_split = _final_evaluator(run, trained, variables)
  threshold, t_index, ja_curve = evaluation_lib.threshold_search(validation)
  test_results, per_image = evaluation_lib.score_test_splits(evaluate_split, run.datasets.test,
                                                             t_index)
  results = {
      "model": {"name": run.config.model.name, "params": int(run.num_params)},
      "loss": run.config.loss,
      "threshold": float(threshold),
      "validation": evaluation_lib.validation_summary(validation, t_index, ja_curve),
      "test": test_results,
      "best_step": int(chosen_step),
      "weights": run.config.evaluation.weights,
      "init_from": loop.init_from,
      "training": {"steps": int(last_step), "seconds": float(loop.train_seconds),
                   "images_per_second": float(loop.images_per_second)},
      "warnings": evaluation_lib.collapse_warnings(validation, t_index, threshold),
  }
  for warning in results["warnings"]:
    logging.warning("%s", warning)
  if stop is not None and stop.received:
    raise errors.RunStopped(
        f"{stop.received} received during the final evaluation: results.json was not written. "
        "Training had finished and is saved; run the same command again to evaluate.",
        step=last_step, signal_name=stop.received)
  if parallel.is_main_process():
    evaluation_lib.write_reports(run.workdir, results, ja_curve, per_image, run.datasets.test,
                                 run.model, variables, run.image_size,
                                 run.config.report.num_overlays, run.config.evaluation.tta,
                                 run.config.evaluation.postprocess,
                                 (validation, t_index, "+".join(run.config.data.train)))
  evaluation_lib.write_results(run.workdir, results)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       overwrite: bool = False) -> dict:
  """Runs (or resumes) one experiment in `workdir` and returns its results.json content."""
  # Everything that can be checked cheaply is checked before data, compilation or training.
  spec_lib.validate(config)
  return train_validated(config, workdir, overwrite)


def train_validated(config: ml_collections.ConfigDict, workdir: str,
                    overwrite: bool = False) -> dict:
  """`train_and_evaluate` of a config that `spec.validate` has checked: launch.py and sweeps
  validate where a config enters, once."""
  devices = parallel.local_devices(config.num_devices)
  # Held to the end, and taken before config.json is read or written: a second launch into this
  # workdir is refused at once instead of training beside this one.
  with workdir_lib.locked(workdir):
    return _train_and_evaluate_locked(config, workdir, devices, overwrite)


def _train_and_evaluate_locked(config: ml_collections.ConfigDict, workdir: str, devices: list,
                               overwrite: bool) -> dict:
  workdir_lib.prepare_workdir(config, workdir, overwrite)
  if os.path.exists(os.path.join(workdir, "results.json")):
    logging.info("%s is a finished run; its results are in %s/results.json", workdir, workdir)
    return workdir_lib.read_results(workdir)
  with workdir_lib.run_log(workdir), preemption.StopRequest() as stop:
    # The whole config goes to the log file only; config.json holds it as JSON.
    logging.info("Resolved config:\n%s", config, extra={"console": False})
    run, state, loop = setup_run(config, workdir, devices)
    start_step = int(state.step)
    # The replicated copy is the live one (and is donated at every step).
    replicated = parallel.replicate(state, devices)
    del state
    replicated, last_step = loop_lib.train_loop(run, replicated, loop, stop, start_step)
    results = final_evaluation(run, replicated, loop, last_step, stop)
  parallel.sync_hosts("run-finished")
  return results


def _init_from_pretrained(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
  """The fresh state with published pretrained weights (Keras ImageNet, DeepLab model zoo)."""
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  loaded = transfer.load_pretrained(checkpoint_lib.to_numpy(fresh), config.model.init_from,
                                    config.dont_load)
  logging.info("Initialised from pretrained weights %s", config.model.init_from)
  return state.replace(params=loaded["params"], batch_stats=loaded.get("batch_stats", {}))


class TransferSource(NamedTuple):
  """Run `config.init_from`'s best (or `init_step`) variables, read once per run."""
  variables: dict
  meta: dict
  described: str  # "WORKDIR (step N)", for messages


def _transfer_source(config: ml_collections.ConfigDict, model, size) -> TransferSource | None:
  """The variables of run `config.init_from`, checked against the model's
  shapes (from a trace, nothing compiled); None without init_from. A checkpoint that does not
  fit fails here, before the datasets are built and the steps compiled."""
  if not config.init_from:
    return None
  loaded, meta = checkpoint_lib.read_variables(config.init_from, config.init_step)
  described = f"{config.init_from} (step {meta['step']})"
  expected = runs.abstract_variables(model, size)
  transfer.check_patterns_match(expected, config.dont_load, "dont_load")
  transfer.merge_variables(expected, loaded, config.dont_load, source=described)
  return TransferSource(loaded, meta, described)


def _init_from_run(state: TrainState, config: ml_collections.ConfigDict,
                   source: TransferSource):
  """The fresh state with the variables of run `config.init_from` (a fresh optimiser)."""
  loaded, meta, described = source
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  merged = transfer.merge_variables(fresh, loaded, config.dont_load, source=described)
  logging.info("Initialised from %s, validation JA %.4f there", described, meta.get("val_ja", -1))
  state = state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {}))
  return state, _source_record(config.init_from, meta)


def _source_record(init_from: str, meta: Mapping[str, Any]) -> dict:
  """results.json's `init_from`: the run (and checkpoint) this one started from."""
  return {"workdir": os.path.abspath(init_from), "step": int(meta["step"]),
          "val_ja": meta.get("val_ja")}


__all__ = ["NonFiniteLossError", "RUN_OUTPUTS", "RunSpec", "TrainState", "create_train_state",
           "eval_step", "final_evaluation", "setup_run", "train_and_evaluate", "train_step",
           "train_validated"]
