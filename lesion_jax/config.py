"""The base experiment config: the schema every experiment shares, and its own checks.

Every file in `configs/` starts from `base_config()` and changes a few fields, so all experiments
share one schema. The base config is locked: a typo such as `config.modle` fails when the config
file is loaded, and `--config.a.b=value` overrides of keys that do not exist are refused by
ml_collections. `check_values` checks what the schema alone can (counts, ranges, fixed choices);
`lesion_jax.spec.validate` adds the registered names and the model, once, at the entry.
"""
from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from lesion_jax.errors import ConfigError, MissingPathError

# Config keys whose children are free-form (a mapping the user fills), so the schema check skips them.
FREE_FORM_KEYS = ("data.options",)


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the paper's training protocol (section 2.2) on the reduced Mobile DeepLab."""
  config = ml_collections.ConfigDict()
  # What `launch.py` does with this config: see lesion_jax.experiment.EXPERIMENTS.
  config.experiment = "train"
  config.seed = 0
  # Number of local devices to train on; None uses all of them (pmap over every GPU).
  config.num_devices = config_dict.placeholder(int)

  config.model = _model()

  # One of: ce, dice, jaccard, ce_log_jaccard, ce_log_dice (paper, "Model Optimization").
  config.loss = "dice"

  config.data = _data()

  config.batch_size_per_device = 4  # the paper's batch size
  # CPU only: let XLA hand convolutions to YNNPACK ('on'), run its own kernels ('off'), or use
  # the model's measured preference ('auto': off for the U-Nets, on for DeepLab).
  config.cpu_ynnpack = "auto"
  # GPU only: XLA command buffers (CUDA graphs) for the compiled steps, e.g.
  # "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" (any graph size); "" turns them
  # off; None keeps XLA's default. A launch-bound step (small model, batch 4) gains from them.
  config.xla_gpu_command_buffer = config_dict.placeholder(str)

  config.training = _training()
  config.optimizer = _optimizer()

  # Transfer (paper, Exp 2): start from another run's best checkpoint (or `init_step`).
  config.init_from = config_dict.placeholder(str)  # workdir of the earlier run
  config.init_step = config_dict.placeholder(int)
  config.dont_load = ()  # regexes of variable paths that start fresh, e.g. 'params/.*logits.*'
  config.frozen = ()  # regexes of parameter paths that are not trained

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2  # latest checkpoints kept, besides the best one
  config.checkpoint.every_steps = config_dict.placeholder(int)  # also mid-epoch; None: per eval
  # Also a latest checkpoint at least this often (long epochs; a SIGKILL loses at most this).
  config.checkpoint.every_seconds = config_dict.placeholder(float)

  config.evaluation = ml_collections.ConfigDict()
  # Test-time augmentation of the final evaluation (threshold search, test metrics, overlays)
  # and of `lesion_jax.predict`: 'none', 'flips' (4 copies) or 'dihedral' (8 on square images,
  # the 4 flips otherwise), probabilities averaged before the threshold. Validation during
  # training, which chooses the checkpoint, stays without.
  config.evaluation.tta = "none"
  # The weights scored at the end: 'best' (the best validation checkpoint) or 'ema' (the
  # weight average of the last step; needs training.ema_decay).
  config.evaluation.weights = "best"
  # Masks cleaned before they are scored and written (lesion_jax/postprocess.py): 'none' or
  # 'largest_component' (the largest region, its holes filled).
  config.evaluation.postprocess = "none"

  config.report = ml_collections.ConfigDict()
  config.report.num_overlays = 3  # best and worst test images drawn in Fig. 1 colours

  # Throughput benchmark (config.experiment = "benchmark"; lesion_jax/benchmark/). It times the
  # real train and eval steps at data.image_size, batch_size_per_device and num_devices.
  config.benchmark = _benchmark()

  # Sweep (config.experiment = "sweep"; lesion_jax/sweep.py): one run per combination, each in
  # WORKDIR/<name made of its overrides>, then a Table 2-style table of them all.
  config.sweep = ml_collections.ConfigDict()
  # Grids, each {dotted key: [values]}: a grid adds the product of its lists; duplicates run once.
  config.sweep.grids = ()

  # Exp 1 vs Exp 2 (config.experiment = "transfer"; lesion_jax/sweep.py): train this config on
  # its own data (Exp 1), pretrain it on other data, fine-tune that on its data (Exp 2), compare.
  config.transfer = ml_collections.ConfigDict()
  config.transfer.pretrain_data = ()  # train datasets of the pretraining run (paper: set D)
  config.transfer.pretrain_test = ()  # test datasets reported for it; empty: pretrain_data
  # Finished runs to reuse instead of training them in WORKDIR/exp1 and WORKDIR/pretrain.
  config.transfer.baseline_workdir = config_dict.placeholder(str)
  config.transfer.pretrain_workdir = config_dict.placeholder(str)

  config.lock()
  return config


def _model() -> ml_collections.ConfigDict:
  """The network: `name` picks a registry entry; the other keys are passed when that model takes
  them (so `--config.model.name=unet --config.model.ifc=16` works from any config)."""
  model = ml_collections.ConfigDict()
  model.name = "deeplab_mobilenetv2"
  model.alpha = 0.35
  model.output_stride = 16
  model.ifc = config_dict.placeholder(int)
  model.dtype = "float32"  # compute dtype; parameters stay float32. 'bfloat16' for speed.
  # BatchNorm running-average momentum; None keeps the architecture's (Keras 0.999, TF 0.9997),
  # right for the paper's long runs. Runs of a few hundred steps need ~0.99.
  model.bn_momentum = config_dict.placeholder(float)
  # Pretrained weights ("PreT" in Table 2) as 'KIND:PATH': 'keras_mobilenet_v2:<file.h5>' or
  # 'deeplab_zoo:<model.ckpt-N>' (Pascal VOC / Cityscapes). `dont_load` applies here too.
  model.init_from = config_dict.placeholder(str)
  return model


def _data() -> ml_collections.ConfigDict:
  """Datasets, image size, augmentation and the input pipeline."""
  data = ml_collections.ConfigDict()
  # Training mixture: datasets whose `train` splits are mixed in proportion to their size, and
  # whose `validation` splits (10% of train/val, paper 2.2) choose checkpoints and the threshold.
  data.train = ("synthetic_lesions/dermoscopic",)
  # Datasets whose `test` split is reported, each separately (Table 3). Empty: the train datasets.
  data.test = ()
  # Model input size: S (square, the paper's 512x512) or (height, width), e.g. (192, 256) for
  # ISIC's 4:3 images. Both sides must be multiples of the model's stride.
  data.image_size = ml_collections.FieldReference(512, field_type=object)
  # Augmentation (paper 2.2), drawn per example on the device (lesion_jax/augment.py).
  data.flip = True  # horizontal and vertical flips
  data.rotate = True  # quarter turns (half turns for images that are not square)
  # More augmentation (off by default), drawn per example after the flips and turns.
  data.augment = ml_collections.ConfigDict()
  data.augment.scale = (1.0, 1.0)  # random zoom range, aspect kept (e.g. (0.8, 1.25))
  data.augment.rotation_degrees = 0.0  # rotation by any angle in +-this
  data.augment.elastic_pixels = 0.0  # elastic (grid) distortion of up to this many pixels
  data.augment.elastic_grid = 4  # its control points per side
  data.augment.brightness = 0.0  # colour factors drawn in 1 +- strength
  data.augment.contrast = 0.0
  data.augment.saturation = 0.0
  data.augment.hue = 0.0  # hue rotation of up to +-this many turns (e.g. 0.05)
  data.data_dir = config_dict.placeholder(str)  # tfds data dir; None: ~/tensorflow_datasets
  data.manual_dir = config_dict.placeholder(str)  # official archives (one root, or per name)
  # Per-database archive folders; each overrides `manual_dir` (e.g. --config.data.manual_dirs.isic=...).
  data.manual_dirs = ml_collections.ConfigDict(
      {name: config_dict.placeholder(str)
       for name in ("isic", "ph2", "dermofit", "smartskins", "waterloo")})
  data.options = ml_collections.ConfigDict()  # {dataset name: {builder option: value}}
  # Real databases: store a copy resized to this size (e.g. 512) instead of the native images,
  # so training does not decode large JPEGs every epoch. None: native resolution.
  data.stored_size = ml_collections.FieldReference(None, field_type=object)
  # The synthetic builder's settings (count, stored size, seed) for synthetic_lesions/*.
  data.synthetic = ml_collections.ConfigDict(
      dict(num_images=300, image_size=256, seed=0))
  data.num_threads = 2  # host threads decoding and resizing examples
  # Decode and resize every training and validation image once, into memory, when they fit in
  # this many GB (2000 images at 256x256 take 0.5 GB); beyond it, or at 0, each read decodes.
  data.cache_gb = 8.0
  return data


def _training() -> ml_collections.ConfigDict:
  """Epochs, early stopping, logging, steps per dispatch and the divergence guard."""
  training = ml_collections.ConfigDict()
  training.num_epochs = 100
  training.max_steps = config_dict.placeholder(int)  # cap on steps (smoke tests); None: epochs
  training.patience = 10  # early stopping: evaluations without a better validation JA
  # An exponential moving average of the weights and BatchNorm statistics, kept in latest/
  # checkpoints (lesion_jax/levers.py scores it); e.g. 0.9995. None: none kept.
  training.ema_decay = config_dict.placeholder(float)
  training.log_every_steps = 20
  training.eval_every_epochs = 1
  # Train steps per pmapped call (lax.scan), to cut launch overhead where a step is short (GPU).
  # None: the backend's measured default (train.DEFAULT_STEPS_PER_DISPATCH). Logging, evaluation
  # and saving still happen at the same steps; a signal stops after the call in flight.
  training.steps_per_dispatch = config_dict.placeholder(int)
  training.tensorboard_images = 4  # predictions shown in TensorBoard at each evaluation
  # Divergence: training stops with an error (exit code 3) when a step's loss is NaN or
  # infinite, or exceeds this many times the mean loss of the run's first
  # `divergence_reference_steps` steps (0 turns the second check off).
  training.divergence_factor = 100.0
  training.divergence_reference_steps = 50
  return training


def _optimizer() -> ml_collections.ConfigDict:
  """Adam with cosine annealing and warm restarts (SGDR, Loshchilov & Hutter; paper's [8])."""
  optimizer = ml_collections.ConfigDict()
  optimizer.learning_rate = 1e-3  # peak of the first cycle
  optimizer.min_learning_rate = 1e-6  # end of every cycle
  optimizer.cycle_epochs = 10.0  # length of the first cycle
  optimizer.cycle_mult = 2.0  # each cycle is this much longer than the one before
  optimizer.peak_decay = 0.9  # each restart peaks this much lower than the one before
  optimizer.warmup_steps = 0  # linear warm-up at the start of each cycle
  # Adam on one flat vector of all parameters (optax.flatten): one fused update instead of a few
  # kernels per parameter tensor, for steps bound by kernel launches (a GPU at batch 4). The
  # same numbers; a run resumes only with the setting it started with (the state's layout).
  optimizer.flatten = False
  return optimizer


def _benchmark() -> ml_collections.ConfigDict:
  """The throughput benchmark: models, sizes, steps and sweeps timed."""
  benchmark = ml_collections.ConfigDict()
  # Models timed, each "name" or "name:option=value,...": Table 2's settings. Empty: config.model.
  benchmark.models = (
      "unet:ifc=32", "att_unet:ifc=64", "r2_unet:ifc=16", "att_r2_unet:ifc=64",
      "deeplabv3plus_xception65:output_stride=16", "deeplab_mobilenetv2:alpha=1.0",
      "deeplab_mobilenetv2:alpha=0.35")
  benchmark.dtypes = ()  # compute dtypes compared, e.g. ("float32", "bfloat16"); (): model's
  benchmark.warmup_steps = 2  # untimed steps after compilation
  benchmark.steps = 10  # timed train steps, and as many eval steps
  benchmark.pipeline_batches = 20  # batches timed through the input pipeline alone; 0: skip
  benchmark.pipeline_images = 64  # synthetic images it reads, stored at data.image_size
  # Also time the real training loop (input pipeline, augmentation, step, logging) per model.
  benchmark.loop = True
  benchmark.batch_sweep = False  # also double the per-device batch from 1 until it won't fit
  benchmark.max_batch_per_device = 256  # the batch sweep stops here at the latest
  benchmark.cpu_max_batch_per_device = 16  # ... and here on CPU (slow steps, shared RAM)
  benchmark.device_sweep = False  # also time 1, 2, 4, ... local devices: scaling efficiency
  return benchmark


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM_KEYS:
      keys |= _leaf_keys(value, path + ".")
    else:
      keys.add(path)
  return keys


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Refuses keys the base config does not know (a config file that unlocked and added some)."""
  unknown = sorted(_leaf_keys(config) - _leaf_keys(base_config()))
  if unknown:
    raise ConfigError(f"Unknown config key(s): {', '.join(unknown)}. Valid keys are those of "
                     "lesion_jax.config.base_config(); check the spelling.")


def dataset_names(names, key: str) -> tuple[str, ...]:
  """A config value holding dataset names as a tuple (a single string is one name)."""
  if isinstance(names, str):
    names = (names,)
  if not all(isinstance(n, str) for n in names):
    raise ConfigError(f"config.{key} must list dataset names, got {names!r}")
  # The command line gives "isic,ph2" (or "isic+ph2") as one string.
  return tuple(part.strip() for n in names for part in n.replace("+", ",").split(",")
               if part.strip())


def check_values(config: ml_collections.ConfigDict) -> None:
  """The schema's own checks: known keys, positive counts, ranges and fixed choices.

  Names looked up in the registries (models, losses, datasets...) and the model's own arguments
  are checked by `lesion_jax.spec.validate`, which calls this first: the schema imports nothing
  that imports it back.
  """
  check_known_keys(config)
  if not dataset_names(config.data.train, "data.train"):
    raise ConfigError("config.data.train is empty: name at least one dataset, e.g. "
                      "'synthetic_lesions/dermoscopic'")
  dataset_names(config.data.test, "data.test")
  for key in ("batch_size_per_device", "training.num_epochs", "training.log_every_steps",
              "training.eval_every_epochs", "checkpoint.keep"):
    value = config
    for part in key.split("."):
      value = value[part]
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")
  _check_training(config)
  _check_averaging(config)
  if config.data.cache_gb < 0:
    raise ConfigError(f"config.data.cache_gb must be >= 0, got {config.data.cache_gb}")
  if config.checkpoint.every_seconds is not None and not config.checkpoint.every_seconds > 0:
    raise ConfigError("config.checkpoint.every_seconds must be > 0 (or None), got "
                      f"{config.checkpoint.every_seconds}")
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.model.dtype must be float32, bfloat16 or float16, "
                      f"got {config.model.dtype!r}")
  if config.optimizer.cycle_epochs <= 0 or config.optimizer.cycle_mult < 1:
    raise ConfigError("config.optimizer.cycle_epochs must be > 0 and cycle_mult >= 1, got "
                      f"{config.optimizer.cycle_epochs} and {config.optimizer.cycle_mult}")
  check_init_from(config)


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _check_training(config: ml_collections.ConfigDict) -> None:
  training = config.training
  if training.steps_per_dispatch is not None and training.steps_per_dispatch < 1:
    raise ConfigError("config.training.steps_per_dispatch must be >= 1 (or None for the "
                      f"backend's default), got {training.steps_per_dispatch}")
  if training.divergence_factor < 0 or training.divergence_reference_steps < 1:
    raise ConfigError("config.training.divergence_factor must be >= 0 (0: off) and "
                      "divergence_reference_steps >= 1, got "
                      f"{training.divergence_factor} and {training.divergence_reference_steps}")
  if training.patience < 0:
    raise ConfigError(f"config.training.patience must be >= 0, got {training.patience}")


def _check_averaging(config: ml_collections.ConfigDict) -> None:
  """The weight average and the weights the final evaluation scores."""
  if config.training.ema_decay is not None and not 0 < config.training.ema_decay < 1:
    raise ConfigError("config.training.ema_decay must be in (0, 1) (or None for no average), "
                      f"got {config.training.ema_decay}")
  if config.evaluation.weights not in ("best", "ema"):
    raise ConfigError(f"config.evaluation.weights must be 'best' or 'ema', got "
                      f"{config.evaluation.weights!r}")
  if config.evaluation.weights == "ema" and config.training.ema_decay is None:
    raise ConfigError("config.evaluation.weights='ema' needs config.training.ema_decay (e.g. "
                      "0.9995): without it no weight average is kept")


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """config.init_from names an existing run folder (a transfer sets it once its source ran)."""
  if config.init_from and not os.path.isdir(os.path.expanduser(config.init_from)):
    raise MissingPathError(f"config.init_from={config.init_from!r}: no such run folder")


def check_workdir_parent(workdir: str) -> None:
  parent = os.path.dirname(os.path.abspath(os.path.expanduser(workdir)))
  if not os.path.isdir(parent):
    raise MissingPathError(f"--workdir {workdir!r}: its parent folder {parent!r} does not exist; "
                            "create it first (the workdir itself is created for you)")
