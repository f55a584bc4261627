"""Checkpoint-based transfer: init_from, dont_load and frozen (paper, Exp 2)."""
import os

import jax
import numpy as np
import optax
import pytest

from lesion_jax import checkpoint as checkpoint_lib
from lesion_jax import optim, runs, train, transfer
from lesion_jax.errors import ConfigError
from tests.conftest import tiny_config


def test_merge_takes_loaded_values_and_keeps_dont_load_fresh():
  fresh = {"params": {"enc": {"w": np.zeros(3)}, "head": {"w": np.zeros(2)}}}
  loaded = {"params": {"enc": {"w": np.ones(3)}, "head": {"w": np.ones(5)}}}
  merged = transfer.merge_variables(fresh, loaded, dont_load=["params/head/.*"])
  np.testing.assert_array_equal(merged["params"]["enc"]["w"], np.ones(3))
  np.testing.assert_array_equal(merged["params"]["head"]["w"], np.zeros(2))


def test_merge_lists_missing_unexpected_and_mismatched_names():
  fresh = {"params": {"a": np.zeros(3), "b": np.zeros(2), "c": np.zeros(1)}}
  loaded = {"params": {"a": np.zeros(4), "b": np.zeros(2), "d": np.zeros(1)}}
  with pytest.raises(ValueError) as error:
    transfer.merge_variables(fresh, loaded)
  message = str(error.value)
  assert "missing" in message and "params/c" in message
  assert "not in the model: params/d" in message
  assert "params/a: model (3,) vs checkpoint (4,)" in message


def test_bad_patterns_are_reported():
  with pytest.raises(ValueError, match="regular expression"):
    transfer.merge_variables({"params": {}}, {"params": {}}, dont_load=["(unclosed"])
  with pytest.raises(ValueError, match="matches no variable"):
    transfer.check_patterns_match({"params": {"a": np.zeros(1)}}, ["params/zzz"], "frozen")


def _frozen_params():
  rng = np.random.default_rng(0)
  return {"encoder": {"kernel": rng.normal(size=(8, 16)).astype(np.float32),
                      "bias": rng.normal(size=16).astype(np.float32)},
          "head": {"kernel": rng.normal(size=(16, 2)).astype(np.float32),
                   "bias": rng.normal(size=2).astype(np.float32)}}


SCHEDULE = optax.linear_schedule(1e-2, 1e-3, 10)


@pytest.mark.parametrize("flatten", [False, True])
def test_frozen_parameters_stay_put_and_the_others_follow_plain_adam(flatten):
  params = _frozen_params()
  tx = transfer.freeze(optim.adam(SCHEDULE, flatten), ["params/encoder/.*"])
  reference_tx = optax.adam(SCHEDULE)  # plain Adam on the trained parameters alone
  reference = {"head": params["head"]}
  state, reference_state = tx.init(params), reference_tx.init(reference)
  step, reference_step = jax.jit(tx.update), jax.jit(reference_tx.update)
  rng = np.random.default_rng(1)
  trained = params
  for _ in range(4):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    updates, state = step(grads, state, trained)
    trained = optax.apply_updates(trained, updates)
    updates, reference_state = reference_step({"head": grads["head"]}, reference_state, reference)
    reference = optax.apply_updates(reference, updates)
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(trained["encoder"][name], params["encoder"][name])
    assert not np.array_equal(trained["head"][name], params["head"][name])
    if flatten:  # the same elementwise Adam, compiled as one fused vector: last-bit rounding
      np.testing.assert_allclose(trained["head"][name], reference["head"][name], rtol=1e-6)
    else:
      np.testing.assert_array_equal(trained["head"][name], reference["head"][name])


@pytest.mark.parametrize("flatten", [False, True])
def test_frozen_parameters_hold_no_adam_moments(flatten):
  params = _frozen_params()
  state = transfer.freeze(optim.adam(SCHEDULE, flatten), ["params/encoder/.*"]).init(params)
  moments = [x for x in jax.tree.leaves(state) if np.ndim(x)]  # the scalars are step counts
  trained = sum(x.size for x in jax.tree.leaves(params["head"]))
  assert sum(x.size for x in moments) == 2 * trained  # mu and nu of the head, nothing else
  assert sum(x.nbytes for x in moments) == 2 * 4 * trained
  unfrozen = optim.adam(SCHEDULE, flatten).init(params)
  assert sum(np.size(x) for x in jax.tree.leaves(unfrozen) if np.ndim(x)) == 2 * (
      trained + sum(x.size for x in jax.tree.leaves(params["encoder"])))


def test_a_frozen_optimiser_state_restarts_its_schedule_and_round_trips_a_checkpoint(tmp_path):
  params = _frozen_params()
  tx = transfer.freeze(optim.adam(SCHEDULE, True), ["params/encoder/.*"])
  # train._schedule_at (a resume from the best checkpoint) finds the schedule inside partition.
  state = train._schedule_at(tx.init(params), 7)
  counts = {type(node).__name__: int(node.count) for node in jax.tree.leaves(
      state, is_leaf=lambda n: isinstance(n, (optax.ScaleByScheduleState, optax.ScaleByAdamState)))
      if hasattr(node, "count")}
  assert counts == {"ScaleByScheduleState": 7, "ScaleByAdamState": 0}
  _, state = tx.update(jax.tree.map(np.ones_like, params), state, params)
  checkpoints = checkpoint_lib.RunCheckpoints(str(tmp_path))
  checkpoints.save_latest(1, {"opt_state": state}, {}, wait=True)
  restored, _ = checkpoints.restore_latest({"opt_state": tx.init(params)})
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, restored["opt_state"],
               checkpoint_lib.to_numpy(state))


def test_freezing_nothing_keeps_the_optimiser_and_freezing_everything_is_an_error():
  tx = optim.adam(SCHEDULE)
  assert transfer.freeze(tx, ()) is tx  # the state layout and compiled steps stay as they were
  with pytest.raises(ConfigError, match=r"config.frozen=\['params/.\*'\] matches every"):
    transfer.freeze(tx, ["params/.*"]).init(_frozen_params())


@pytest.fixture(scope="module")
def source_dir(tiny_run):
  """The session's finished tiny run (tests/conftest.py): the runs here only read it."""
  return tiny_run[0]


@pytest.mark.slow
def test_init_from_run(data_dir, tmp_path, source_dir):
  source = runs.load_run(source_dir)

  # A fine-tuning run on the other domain, head fresh. The tiny runs' settings otherwise: their
  # compiled steps serve (config.frozen would compile its own; the run's optimiser freezing is
  # test_the_run_optimiser_freezes_config_frozen's).
  target_dir = str(tmp_path / "target")
  config = tiny_config(data_dir, **{"data.train": ("synthetic_lesions/macroscopic",)})
  config.init_from = source_dir
  config.dont_load = (r"params/.*logits.*",)
  captured = {}
  real_init = train._init_from_run

  def spy(state, cfg, source):
    new_state, info = real_init(state, cfg, source)
    captured["initial"] = checkpoint_lib.to_numpy({"params": new_state.params,
                                            "batch_stats": new_state.batch_stats})
    captured["fresh"] = checkpoint_lib.to_numpy({"params": state.params})
    return new_state, info

  train._init_from_run = spy
  try:
    results = train.train_and_evaluate(config, target_dir)
  finally:
    train._init_from_run = real_init

  initial = transfer.flatten(captured["initial"])
  expected = transfer.flatten(source.variables)
  fresh = transfer.flatten(captured["fresh"])
  for path, value in initial.items():
    if "logits" in path:  # dont_load: the fresh initialisation
      np.testing.assert_array_equal(value, fresh[path])
    else:  # everything else, batch statistics included, equals the source's best checkpoint
      np.testing.assert_array_equal(value, expected[path])
  assert any(p.startswith("batch_stats/") for p in initial)

  after = transfer.flatten(runs.load_run(target_dir).variables["params"])
  moved = [p for p in after if "logits" not in p
           and not np.array_equal(after[p], expected["params/" + p])]
  assert moved, "the loaded parameters should have trained on"
  assert results["init_from"]["workdir"] == os.path.abspath(source_dir)
  assert results["init_from"]["step"] == source.meta["step"]


def test_the_run_optimiser_freezes_config_frozen(data_dir):
  """train.optimizer, which a run builds its optimiser with, freezes config.frozen's matches:
  no update and no Adam moments for them, Adam's for the rest."""
  params = _frozen_params()
  config = tiny_config(data_dir, frozen=("params/encoder/.*",))
  tx, _ = train.optimizer(config, total_steps=10, steps_per_epoch=5)
  state = tx.init(params)
  moments = [x.shape for x in jax.tree.leaves(state) if np.ndim(x)]
  assert sorted(moments) == sorted(2 * [(16, 2), (2,)])  # mu and nu of the head alone
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["encoder"]))
  assert all(np.all(u < 0) for u in jax.tree.leaves(updates["head"]))
  unfrozen, _ = train.optimizer(tiny_config(data_dir), total_steps=10, steps_per_epoch=5)
  head_updates, _ = unfrozen.update(grads, unfrozen.init(params), params)
  for got, want in zip(jax.tree.leaves(updates["head"]), jax.tree.leaves(head_updates["head"])):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_init_from_shape_mismatch_names_the_parameter_before_any_compilation(
    data_dir, tmp_path, source_dir, monkeypatch):
  config = tiny_config(data_dir, **{"training.num_epochs": 1, "model.alpha": 0.5})
  config.init_from = source_dir

  def must_not_run(*args, **kwargs):
    raise AssertionError("the mismatch should be found before the datasets and the model")
  monkeypatch.setattr(train.loading, "load_datasets", must_not_run)
  monkeypatch.setattr(train, "create_train_state", must_not_run)
  with pytest.raises(ValueError, match="(?s)shape mismatch:.*params/.*kernel: model"):
    train.train_and_evaluate(config, str(tmp_path / "target"))


def test_init_from_missing_checkpoint_is_clear(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
    checkpoint_lib.read_variables(str(tmp_path / "empty"))
  assert not (tmp_path / "empty" / "checkpoints").exists()  # reading created nothing


def test_pretrained_spec_errors_name_the_kinds_and_path(tmp_path):
  with pytest.raises(KeyError, match="deeplab_zoo, keras_mobilenet_v2"):
    transfer.parse_pretrained("imagenet:/x")
  with pytest.raises(ValueError, match="KIND:PATH"):
    transfer.parse_pretrained("keras_mobilenet_v2")
  with pytest.raises(FileNotFoundError, match="missing.h5"):
    transfer.parse_pretrained(f"keras_mobilenet_v2:{tmp_path}/missing.h5")
  (tmp_path / "model.ckpt-30000.index").write_text("")
  assert transfer.parse_pretrained(f"deeplab_zoo:{tmp_path}/model.ckpt-30000") == (
      "deeplab_zoo", f"{tmp_path}/model.ckpt-30000")


@pytest.mark.slow
def test_config_model_init_from_loads_pretrained_weights(data_dir, tmp_path):
  """config.model.init_from reaches the loader of its kind with the model's variables."""
  weights = tmp_path / "weights.h5"
  weights.write_text("stand-in")
  calls = []

  def fake_loader(variables, path, dont_load):
    calls.append((path, dont_load, sorted(variables)))
    # Mark every kernel so the run's starting point is recognisable.
    flat = transfer.flatten(variables)
    return transfer.unflatten({k: np.full_like(v, 0.01) if k.endswith("kernel") else v
                               for k, v in flat.items()}), None

  transfer.PRETRAINED_KINDS.add("fake_for_test", fake_loader)
  started = {}
  real_init = train._init_from_pretrained

  def spy(state, cfg):
    new_state = real_init(state, cfg)
    started.update(transfer.flatten(checkpoint_lib.to_numpy({"params": new_state.params})))
    return new_state

  train._init_from_pretrained = spy
  try:
    config = tiny_config(data_dir)  # init_from is not part of the compiled step: cache hit
    config.model.init_from = f"fake_for_test:{weights}"
    config.dont_load = ("params/logits/.*",)
    train.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    train._init_from_pretrained = real_init
    transfer.PRETRAINED_KINDS._entries.pop("fake_for_test")
  assert calls == [(str(weights), ("params/logits/.*",), ["batch_stats", "params"])]
  kernels = {k: v for k, v in started.items() if k.endswith("kernel")}
  assert kernels and all(np.all(v == np.float32(0.01)) for v in kernels.values())
