"""Training and evaluation: pure step functions and the loop that `launch.py` runs.

`train_step` and `eval_step` are written for one device and are pure: (state, batch) in,
(state, metrics) out, no config reads and no side effects. `parallel` maps them over the devices.
`train_and_evaluate` is the whole protocol of the paper (section 2.2): train with early stopping
on the validation JA, keep the best checkpoint, pick the binarisation threshold on validation
among 50 values in [0.5, 1], then report the ISIC metrics on each test database at it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training import early_stopping, train_state

from lesion_jax import checkpoint as checkpoint_lib
from lesion_jax import config as config_lib
from lesion_jax import data as data_lib
from lesion_jax import losses as losses_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax import models as models_lib
from lesion_jax import optim, parallel, report, transfer
from lesion_jax.data import pipeline

# Files a run writes in its workdir; `--overwrite` removes exactly these and nothing else.
RUN_OUTPUTS = ("checkpoints", "config.json", "metrics.jsonl", "results.json", "results.md",
               "overlays", "tensorboard", "threshold_curve.json", "threshold_curve.png",
               "per_image.csv", "training_curves.png")


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # base key of the dropout draws; step and device are folded in


def _variables(params, batch_stats) -> dict:
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def train_step(state: TrainState, batch: Mapping[str, jax.Array],
               loss_fn: Callable) -> tuple[TrainState, dict]:
  """One optimisation step on this device's share of the batch."""
  # Dropout masks are a pure function of (seed, step, device); models/philox.py draws them.
  dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                   parallel.replica_index())

  def compute_loss(params):
    logits, updates = state.apply_fn(
        _variables(params, state.batch_stats), batch["image"], train=True,
        rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    return loss_fn(logits, batch["mask"]).mean(), updates

  (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  # Data parallelism: every device applies the mean gradient of the global batch.
  grads = parallel.cross_replica_mean(grads)
  # Models normalise over the global batch already; the mean only guards a model without it.
  batch_stats = parallel.cross_replica_mean(updates.get("batch_stats", state.batch_stats))
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return state, {"loss": parallel.cross_replica_mean(loss)}


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], loss_fn: Callable,
              thresholds: jax.Array) -> dict:
  """Per-image confusion counts at every threshold of the grid, and per-image losses.

  Counts rather than scores are returned so the host can form exact ISIC metrics for any
  threshold and drop the padded images of the last batch.
  """
  logits = state.apply_fn(_variables(state.params, state.batch_stats), batch["image"],
                          train=False)
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  return {
      "counts": metrics_lib.confusion_counts_at_thresholds(probs, batch["mask"], thresholds),
      "loss": loss_fn(logits, batch["mask"]),
  }


def predict_step(state: TrainState, images: jax.Array) -> jax.Array:
  logits = state.apply_fn(_variables(state.params, state.batch_stats), images, train=False)
  return jax.nn.sigmoid(logits.astype(jnp.float32))


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
  return transfer.freeze(optim.adam(schedule), frozen), schedule


@functools.lru_cache(maxsize=16)
def _jitted_init(model):
  return jax.jit(functools.partial(model.init, train=False))


def create_train_state(model, tx, rng: jax.Array, image_size: int) -> TrainState:
  model = _canonical(model)
  init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = _jitted_init(model)({"params": init_rng, "dropout": dropout_rng}, dummy)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}), rng=state_rng)
  # A strongly typed step: a weakly typed Python 0 would make the second step recompile.
  return state.replace(step=jnp.zeros((), jnp.int32))


def _state_dict(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": state.rng}


def _replace_from_dict(state: TrainState, restored: Mapping[str, Any]) -> TrainState:
  return state.replace(step=restored["step"], params=restored["params"],
                       batch_stats=restored["batch_stats"], opt_state=restored["opt_state"],
                       rng=restored["rng"])


# ----------------------------------------------------------------------------------------------
# Evaluation on the host side.

@dataclasses.dataclass
class Evaluation:
  """Per-image results of one pass over a split."""
  counts: np.ndarray  # (N, T, 4) confusion counts at every threshold
  loss: np.ndarray  # (N,)
  index: np.ndarray  # (N,) position in the source, to draw an image again

  def ja_at(self, threshold_index: int) -> float:
    return metrics_lib.macro_average(self.counts[:, threshold_index])["ja"]


def evaluate(p_eval_step: Callable, replicated_state, source, preprocess, *,
             batch_size_per_device: int, num_devices: int, num_threads: int) -> Evaluation:
  counts, losses, indices, valid = [], [], [], []
  for batch in pipeline.evaluation_batches(
      source, preprocess, batch_size_per_device=batch_size_per_device, num_devices=num_devices,
      num_threads=num_threads, process_index=parallel.process_index(),
      process_count=parallel.process_count()):
    out = parallel.to_host(p_eval_step(replicated_state,
                                       {"image": batch["image"], "mask": batch["mask"]}))
    counts.append(out["counts"])
    losses.append(out["loss"])
    indices.append(batch["index"].reshape(-1))
    valid.append(batch["valid"].reshape(-1))
  arrays = [np.concatenate(x) for x in (counts, losses, indices, valid)]
  if parallel.process_count() > 1:
    # The padding is dropped only after the gather: every process sends arrays of one shape
    # (as many batches each), while their counts of real images may differ by one.
    from jax.experimental import multihost_utils
    arrays = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in arrays]
  *arrays, keep = arrays
  return Evaluation(*(a[keep > 0] for a in arrays))


# ----------------------------------------------------------------------------------------------
# The run.

class NonFiniteLossError(FloatingPointError):
  pass


class MetricWriter:
  """metrics.jsonl lines and TensorBoard scalars/images; only the main process writes."""

  def __init__(self, workdir: str):
    self.enabled = parallel.is_main_process()
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.enabled else None
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


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Creates the workdir, or checks it holds this same config (resume) unless `overwrite`."""
  config_lib.check_workdir_parent(workdir)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    current = _config_json(config)
    if previous != current and not overwrite:
      changed = sorted(_diff_keys(previous, current))
      raise FileExistsError(
          f"{workdir!r} holds a run with a different config (keys that differ: "
          f"{', '.join(changed)}). Use another --workdir, or pass --overwrite to delete that "
          "run's checkpoints and results and start again.")
  if overwrite and parallel.is_main_process():
    for name in RUN_OUTPUTS:
      target = os.path.join(workdir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
  parallel.sync_hosts("workdir-cleared")
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    with open(path, "w") as f:
      json.dump(_config_json(config), f, indent=2, sort_keys=True)


_ABSENT = object()  # a key one config has and the other lacks (not the same as None)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    keys = set()
    for k in set(a) | set(b):
      keys |= _diff_keys(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")
    return keys
  return set() if a is b or a == b else {prefix.rstrip(".")}


@dataclasses.dataclass
class Datasets:
  train: list  # data sources of the train splits
  validation: list
  test: dict  # name -> data source
  train_size: int


def load_datasets(config: ml_collections.ConfigDict) -> Datasets:
  train_names = config_lib.dataset_names(config.data.train, "data.train")
  test_names = config_lib.dataset_names(config.data.test, "data.test") or train_names
  builders = {}
  # Processes sharing a data dir must not build the same dataset at once: process 0 prepares
  # every dataset first, the others then open the finished copy (or build their own).
  if not parallel.is_main_process():
    parallel.sync_hosts("datasets-prepared")
  for name in dict.fromkeys(train_names + test_names):
    options = dict(config.data.options.get(name, {})) if name in config.data.options else {}
    if name.startswith("synthetic_lesions/"):
      options = {**config.data.synthetic.to_dict(), **options}
    elif config.data.stored_size:
      options.setdefault("image_size", config.data.stored_size)
    builders[name] = data_lib.get_builder(
        name, data_dir=config.data.data_dir, manual_dir=config.data.manual_dir,
        manual_dirs=config.data.manual_dirs.to_dict(), options=options)
  if parallel.is_main_process():
    parallel.sync_hosts("datasets-prepared")
  train = [_split_source(builders[n], n, "train") for n in train_names]
  validation = [_split_source(builders[n], n, "validation") for n in train_names]
  test = {n: _split_source(builders[n], n, "test") for n in test_names}
  for name, source in zip(train_names, train):
    logging.info("train: %s, %d images", name, len(source))
  return Datasets(train=train, validation=validation, test=test,
                  train_size=sum(len(s) for s in train))


def _split_source(builder, name: str, split: str):
  """The split's random-access source; an empty list where the database has no such split."""
  if split not in builder.info.splits:
    # tfds cannot store an empty split (e.g. `isic` without the ISIC 2017 test archives).
    logging.warning("%s has no %s split; it counts as empty", name, split)
    return []
  return builder.as_data_source(split)


class _Concatenated:
  """Several data sources read as one (validation of a mixture)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    k = int(np.searchsorted(self.offsets, i, side="right") - 1)
    return self.sources[k][int(i - self.offsets[k])]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       overwrite: bool = False) -> dict:
  """Runs (or resumes) one experiment in `workdir` and returns its results.json content."""
  # Everything that can be checked cheaply is checked before data, compilation or training.
  config_lib.validate(config)
  devices = parallel.local_devices(config.num_devices)
  num_devices = len(devices)
  prepare_workdir(config, workdir, overwrite)
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    logging.info("%s is a finished run; its results are in %s", workdir, results_path)
    with open(results_path) as f:
      return json.load(f)

  _, ignored = config_lib.model_kwargs(config)
  for key in ignored:
    logging.warning("config.model.%s=%r is ignored: model %r does not take it", key,
                    config.model[key], config.model.name)
  # BatchNorm statistics over the global batch: the models' BN layers reduce over the pmap axis.
  model = config_lib.models_from_config(config, bn_axis_name=parallel.AXIS_NAME)
  loss_fn = losses_lib.get_loss(config.loss)
  datasets = load_datasets(config)
  preprocess_train = pipeline.Preprocess(config.data.image_size, config.data.flip,
                                         config.data.rotate)
  preprocess_eval = pipeline.Preprocess(config.data.image_size)

  global_batch = config.batch_size_per_device * num_devices * parallel.process_count()
  steps_per_epoch = datasets.train_size // global_batch
  if steps_per_epoch < 1:
    raise ValueError(f"{datasets.train_size} training images are fewer than one global batch "
                     f"of {global_batch}; lower config.batch_size_per_device")
  total_steps = config.training.num_epochs * steps_per_epoch
  if config.training.max_steps:
    total_steps = min(total_steps, config.training.max_steps)
  eval_every = config.training.eval_every_epochs * steps_per_epoch
  tx, schedule = _optimizer(total_steps, steps_per_epoch,
                            json.dumps(config.optimizer.to_dict(), sort_keys=True),
                            tuple(config.frozen))
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), config.data.image_size)
  transfer.check_patterns_match({"params": state.params}, config.frozen, "frozen")
  num_params = models_lib.count_params(model, (1, config.data.image_size,
                                               config.data.image_size, 3))

  checkpoints = checkpoint_lib.RunCheckpoints(workdir, keep=config.checkpoint.keep)
  stopper = early_stopping.EarlyStopping(patience=config.training.patience)
  loop = {"best_val_ja": -1.0, "best_step": 0, "es_best": math.inf, "es_count": 0,
          "init_from": None,
          "should_stop": False, "train_seconds": 0.0, "images_per_second": 0.0}
  start_step = 0
  init_from = None
  if config.model.init_from and checkpoints.latest_step() is None:
    state = _init_from_pretrained(state, config)
  if config.init_from and checkpoints.latest_step() is None:
    state, init_from = _init_from_run(state, config)
  if checkpoints.latest_step() is not None:
    restored, loop = checkpoints.restore_latest(_state_dict(state))
    state = _replace_from_dict(state, restored)
    start_step = int(state.step)
    stopper = stopper.replace(best_metric=loop["es_best"], patience_count=loop["es_count"],
                              should_stop=loop["should_stop"])
    logging.info("Resuming %s from step %d", workdir, start_step)
  elif init_from:
    loop["init_from"] = init_from

  writer = MetricWriter(workdir)
  compiler_options = models_lib.xla_compiler_options(model, config.cpu_ynnpack)
  p_train, p_eval = _pmapped_steps(loss_fn, tuple(devices),
                                   tuple(sorted(compiler_options.items())))
  validation = _Concatenated(datasets.validation)
  eval_kwargs = dict(batch_size_per_device=config.batch_size_per_device, num_devices=num_devices,
                     num_threads=config.data.num_threads)

  train_batches = pipeline.training_batches(
      datasets.train, preprocess_train, seed=config.seed,
      batch_size_per_device=config.batch_size_per_device, num_devices=num_devices,
      process_index=parallel.process_index(), process_count=parallel.process_count())
  logging.info("%s: %s parameters; %d steps per epoch of %d images; %d devices; %d steps",
               config.model.name, f"{num_params:,}", steps_per_epoch, global_batch, num_devices,
               total_steps)

  replicated = parallel.replicate(state, devices)
  del state  # the replicated copy is the live one (and is donated at every step)
  step = start_step
  pending_metrics: list[tuple[int, dict]] = []
  timing = {"start": None, "images": 0, "paused": 0.0, "seconds": loop["train_seconds"]}

  def flush_metrics() -> None:
    """Fetches the step metrics kept on device, stops on a NaN, logs the mean."""
    if not pending_metrics:
      return
    fetched = jax.device_get([m for _, m in pending_metrics])
    losses = np.array([np.asarray(m["loss"])[0] for m in fetched])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      first = pending_metrics[bad[0]][0]
      raise NonFiniteLossError(
          f"loss became {losses[bad[0]]} at step {first}; training stopped. The last good "
          f"checkpoint (step {checkpoints.latest_step()}) is kept in {workdir}/checkpoints")
    last_step = pending_metrics[-1][0]
    values = {"loss": float(losses.mean()), "learning_rate": float(schedule(last_step - 1))}
    if timing["start"] is not None:
      elapsed = time.perf_counter() - timing["start"] - timing["paused"]
      if elapsed > 0:
        values["images_per_second"] = timing["images"] / elapsed
    writer.write("train", last_step, values)
    pending_metrics.clear()

  if not loop["should_stop"] and step < total_steps:
    progress = report.progress_bar(total=total_steps, initial=step, desc="train")
    batches = parallel.prefetch_to_devices(
        pipeline.iterate_from(train_batches, step, num_threads=config.data.num_threads),
        devices)
    try:
      for step in range(start_step + 1, total_steps + 1):
        replicated, step_metrics = p_train(replicated, next(batches))
        pending_metrics.append((step, step_metrics))
        if timing["start"] is None:
          # Images/s excludes compilation: the clock starts once the first step is done.
          jax.block_until_ready(step_metrics)
          timing["start"] = time.perf_counter()
        else:
          timing["images"] += global_batch
        progress.update(1)
        if step % config.training.log_every_steps == 0:
          flush_metrics()
        at_eval = step % eval_every == 0 or step == total_steps
        at_save = (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0)
        if at_eval or at_save:
          pause_start = time.perf_counter()  # evaluation and saving do not count as training
        if at_eval:
          flush_metrics()
          evaluation = evaluate(p_eval, replicated, validation, preprocess_eval, **eval_kwargs)
          val_ja = evaluation.ja_at(0)  # threshold 0.5 until the search after training
          improved = val_ja > loop["best_val_ja"]
          stopper = stopper.update(-val_ja)
          # Keras semantics: stop once `patience` evaluations in a row brought no improvement
          # (flax's own flag waits one evaluation longer).
          stopper = stopper.replace(should_stop=stopper.patience_count >= stopper.patience
                                    and not stopper.has_improved)
          writer.write("validation", step, {"ja": val_ja, "loss": float(evaluation.loss.mean()),
                                            "best_ja": max(val_ja, loop["best_val_ja"])})
          _log_predictions(writer, host_predictor(replicated, devices), validation,
                           preprocess_eval, step, config.training.tensorboard_images)
          progress.set_postfix(val_ja=f"{val_ja:.3f}")
          if improved:
            loop.update(best_val_ja=val_ja, best_step=step)
            state_host = parallel.unreplicate(replicated)
            checkpoints.save_best(step, {"params": state_host.params,
                                         "batch_stats": state_host.batch_stats},
                                  {"step": step, "val_ja": val_ja})
        if at_eval or at_save:
          _update_timing(timing, loop)
          loop.update(es_best=float(stopper.best_metric), es_count=int(stopper.patience_count),
                      should_stop=bool(stopper.should_stop))
          checkpoints.save_latest(step, _state_dict(parallel.unreplicate(replicated)), loop)
          timing["paused"] += time.perf_counter() - pause_start
        if at_eval and stopper.should_stop:
          logging.info("Early stopping at step %d: no better validation JA for %d evaluations",
                       step, config.training.patience)
          break
    finally:
      progress.close()
    flush_metrics()

  # --- After training: threshold search on validation, then test at that threshold. ---
  best_vars, best_meta = checkpoints.restore_best(
      {"params": parallel.unreplicate(replicated).params,
       "batch_stats": parallel.unreplicate(replicated).batch_stats})
  checkpoints.close()
  host_state = parallel.unreplicate(replicated).replace(
      params=best_vars["params"], batch_stats=best_vars["batch_stats"])
  replicated = parallel.replicate(host_state, devices)
  validation_eval = evaluate(p_eval, replicated, validation, preprocess_eval, **eval_kwargs)
  threshold, ja_curve = metrics_lib.select_threshold(validation_eval.counts,
                                                     metrics_lib.THRESHOLDS)
  t_index = int(np.argmin(np.abs(metrics_lib.THRESHOLDS - threshold)))
  test_results, per_image = {}, {}
  for name, source in datasets.test.items():
    if len(source) == 0:
      logging.warning("%s has an empty test split; it is not reported", name)
      continue
    evaluation = evaluate(p_eval, replicated, source, preprocess_eval, **eval_kwargs)
    counts = evaluation.counts[:, t_index]
    test_results[name] = {**metrics_lib.macro_average(counts), "n_images": int(len(counts))}
    per_image[name] = (evaluation, metrics_lib.isic_metrics(counts))

  results = {
      "model": {"name": config.model.name, "params": int(num_params)},
      "loss": config.loss,
      "threshold": float(threshold),
      # All six metrics at T on validation: the paper's Table 2 reports these.
      "validation": {**metrics_lib.macro_average(validation_eval.counts[:, t_index]),
                     "ja": float(ja_curve[t_index]), "ja_at_0.5": float(ja_curve[0]),
                     "n_images": int(len(validation_eval.counts))},
      "test": test_results,
      "best_step": int(best_meta["step"]),
      "init_from": init_from or loop.get("init_from"),
      "training": {"steps": int(step), "seconds": float(loop["train_seconds"]),
                   "images_per_second": float(loop["images_per_second"])},
  }
  if parallel.is_main_process():
    predict = host_predictor(replicated, devices)
    report.write_run_report(workdir, results, ja_curve=ja_curve,
                            thresholds=metrics_lib.THRESHOLDS)
    report.write_per_image(workdir, {
        name: (_image_ids(datasets.test[name], evaluation.index), image_metrics)
        for name, (evaluation, image_metrics) in per_image.items()})
    for name, (evaluation, image_metrics) in per_image.items():
      report.write_overlays(workdir, name, datasets.test[name], evaluation.index,
                            image_metrics["ja"],
                            predict=predict, preprocess=preprocess_eval,
                            threshold=threshold, count=config.report.num_overlays)
    with open(results_path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)  # results.json marks a finished run
  writer.close()
  parallel.sync_hosts("run-finished")
  return results


def _init_from_pretrained(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
  """The fresh state with published pretrained weights (Keras ImageNet, DeepLab model zoo)."""
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  loaded = transfer.load_pretrained(transfer.to_host(fresh), config.model.init_from,
                                    config.dont_load)
  logging.info("Initialised from pretrained weights %s", config.model.init_from)
  return state.replace(params=loaded["params"], batch_stats=loaded.get("batch_stats", {}))


def _init_from_run(state: TrainState, config: ml_collections.ConfigDict):
  """The fresh state with the variables of run `config.init_from` (a fresh optimiser)."""
  loaded, meta = checkpoint_lib.read_variables(config.init_from, config.init_step)
  fresh = {"params": state.params, "batch_stats": state.batch_stats}
  transfer.check_patterns_match(fresh, config.dont_load, "dont_load")
  source = f"{config.init_from} (step {meta['step']})"
  merged = transfer.merge_variables(fresh, loaded, config.dont_load, source=source)
  logging.info("Initialised from %s, validation JA %.4f there", source, meta.get("val_ja", -1))
  state = state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {}))
  return state, {"workdir": os.path.abspath(config.init_from), "step": int(meta["step"]),
                 "val_ja": meta.get("val_ja")}


def _image_ids(source, indices: np.ndarray) -> list[str]:
  ids = []
  for i in indices:
    image_id = source[int(i)]["image_id"]
    ids.append(image_id.decode() if isinstance(image_id, bytes) else str(image_id))
  return ids


def _update_timing(timing: dict, loop: dict) -> None:
  if timing["start"] is None:
    return
  elapsed = time.perf_counter() - timing["start"] - timing["paused"]
  loop["train_seconds"] = timing["seconds"] + elapsed
  if elapsed > 0 and timing["images"]:
    loop["images_per_second"] = timing["images"] / elapsed


def host_predictor(replicated, devices) -> Callable[[np.ndarray], np.ndarray]:
  """A host function: (N, S, S, 3) standardised images -> (N, S, S) probabilities."""
  p_predict = _cached_pmap_predict(tuple(devices))
  num_devices = len(devices)

  def predict(images: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = -(-n // num_devices) * num_devices
    images = np.concatenate([images, np.zeros((padded - n,) + images.shape[1:], images.dtype)])
    probs = parallel.to_host(p_predict(replicated, parallel.shard(images, num_devices)))
    return probs[:n, ..., 0]

  return predict


@functools.lru_cache(maxsize=8)
def _pmapped_steps(loss_fn: Callable, devices: tuple, compiler_options: tuple) -> tuple:
  """The pmapped train and eval steps, kept for the next run in this process.

  A sweep, a transfer experiment or a test session trains many runs in one process; runs of
  the same model then reuse JAX's traced and compiled steps instead of tracing, lowering and
  loading them again (several seconds each on a CPU).
  """
  options = dict(compiler_options)
  p_train = parallel.pmap_train_step(functools.partial(train_step, loss_fn=loss_fn),
                                     list(devices), options)
  thresholds = jnp.asarray(metrics_lib.THRESHOLDS, jnp.float32)
  p_eval = parallel.pmap_eval_step(
      functools.partial(eval_step, loss_fn=loss_fn, thresholds=thresholds), list(devices),
      options)
  return p_train, p_eval


@functools.lru_cache(maxsize=4)
def _cached_pmap_predict(devices: tuple) -> Callable:
  # Host-local: only the main process draws predictions (reports, TensorBoard images).
  return parallel.pmap_local_step(predict_step, list(devices))


def _log_predictions(writer: MetricWriter, predict, source, preprocess, step: int,
                     count: int) -> None:
  if not writer.enabled or count <= 0 or len(source) == 0:
    return
  examples = [pipeline.prepare_example(source[i], preprocess)
              for i in range(min(count, len(source)))]
  probs = predict(np.stack([e["image"] for e in examples]))
  masks = np.stack([e["mask"][..., 0] for e in examples])
  # Each panel: truth | probability, as grey images.
  panels = np.concatenate([masks, probs], axis=2)[..., None].repeat(3, -1)
  writer.images("validation/truth_vs_probability", step, panels.astype(np.float32))


__all__ = ["TrainState", "train_step", "eval_step", "predict_step",
           "create_train_state", "train_and_evaluate", "evaluate", "Evaluation",
           "NonFiniteLossError", "RUN_OUTPUTS"]

