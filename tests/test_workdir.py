"""The workdir rule: one config per run folder, resumable across code versions, never overwritten
unasked."""
import json

import pytest

from lesion_jax import config as config_lib
from lesion_jax import errors, workdir


def _stored_by_an_older_version(tmp_path, config, missing: str):
  """config.json as a version of lesion_jax without the key `missing` would have written it."""
  stored = workdir.config_json(config)
  section, key = missing.split(".")
  del stored[section][key]
  (tmp_path / "config.json").write_text(json.dumps(stored))


def test_a_key_added_since_at_its_default_does_not_block_a_resume(tmp_path):
  config = config_lib.base_config()
  _stored_by_an_older_version(tmp_path, config, "training.divergence_factor")
  workdir.prepare_workdir(config, str(tmp_path), overwrite=False)  # resumes: no error
  assert json.loads((tmp_path / "config.json").read_text())["training"][
      "divergence_factor"] == config.training.divergence_factor


def test_a_changed_value_or_a_new_key_away_from_its_default_is_refused(tmp_path):
  config = config_lib.base_config()
  _stored_by_an_older_version(tmp_path, config, "training.divergence_factor")
  changed = config_lib.base_config().unlock()
  changed.training.divergence_factor = 5.0
  changed.loss = "jaccard"
  with pytest.raises(errors.WorkdirError, match=r"keys that differ: loss, "
                                                r"training.divergence_factor\)"):
    workdir.prepare_workdir(changed, str(tmp_path), overwrite=False)


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
  config = config_lib.base_config()
  (tmp_path / "results.json").write_text("{}")
  (tmp_path / "log.txt").write_text("old log")
  (tmp_path / "my_notes.txt").write_text("mine")
  workdir.prepare_workdir(config, str(tmp_path), overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "my_notes.txt"]
