"""Reports: bootstrap CIs of paired differences, the compare command, Table 2 and the plots."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lesion_jax import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = report.METRIC_COLUMNS


# ----------------------------------------------------------------------------------------------
# Bootstrap confidence intervals.

def test_identical_values_give_zero_difference_and_a_zero_width_interval():
  mean, low, high = report.bootstrap_mean_ci(np.zeros(37))
  assert (mean, low, high) == (0.0, 0.0, 0.0)


def test_a_constant_shift_gives_that_shift_with_no_spread():
  rng = np.random.default_rng(1)
  a = rng.uniform(size=(50, 6))
  shift = np.array([0.1, -0.02, 0.0, 0.3, 0.05, -0.4])
  mean, low, high = report.bootstrap_mean_ci((a + shift) - a)
  np.testing.assert_allclose(mean, shift, atol=1e-12)
  np.testing.assert_allclose(low, shift, atol=1e-12)
  np.testing.assert_allclose(high, shift, atol=1e-12)


def test_interval_matches_the_normal_approximation_for_many_images():
  rng = np.random.default_rng(0)
  values = rng.normal(0.02, 0.1, size=400)
  mean, low, high = report.bootstrap_mean_ci(values, resamples=10_000, seed=3)
  half_width = 1.96 * values.std() / np.sqrt(len(values))
  assert mean == pytest.approx(values.mean())
  assert low == pytest.approx(values.mean() - half_width, abs=0.15 * half_width)
  assert high == pytest.approx(values.mean() + half_width, abs=0.15 * half_width)


def test_interval_equals_a_loop_over_the_same_resamples():
  """The vectorised resampling against one resample at a time with the same generator."""
  values = np.random.default_rng(5).uniform(size=(23, 2))
  _, low, high = report.bootstrap_mean_ci(values, resamples=500, seed=11, level=0.9)
  rng = np.random.default_rng(11)
  means = np.stack([values[rng.integers(0, 23, size=23)].mean(axis=0) for _ in range(500)])
  np.testing.assert_allclose(low, np.quantile(means, 0.05, axis=0))
  np.testing.assert_allclose(high, np.quantile(means, 0.95, axis=0))


def test_fixed_seed_makes_the_interval_reproducible():
  values = np.random.default_rng(2).normal(size=30)
  assert report.bootstrap_mean_ci(values, seed=4) == report.bootstrap_mean_ci(values, seed=4)


def test_bad_bootstrap_input_is_refused():
  with pytest.raises(ValueError, match="N >= 1"):
    report.bootstrap_mean_ci(np.zeros(0))
  with pytest.raises(ValueError, match="resamples"):
    report.bootstrap_mean_ci(np.zeros(3), resamples=0)


def test_paired_differences_join_on_dataset_and_image_id():
  a = {"d1": {"x": dict.fromkeys(METRICS, 0.5), "y": dict.fromkeys(METRICS, 0.7),
              "only_in_a": dict.fromkeys(METRICS, 0.0)}}
  b = {"d1": {"y": dict.fromkeys(METRICS, 0.8), "x": dict.fromkeys(METRICS, 0.9)},
       "d2": {"z": dict.fromkeys(METRICS, 1.0)}}
  rows = report.paired_differences(a, b, resamples=200)
  assert [r["metric"] for r in rows] == list(METRICS)  # d2 is not in both runs
  ja = next(r for r in rows if r["metric"] == "ja")
  assert ja["n_images"] == 2 and ja["only_a"] == 1 and ja["only_b"] == 0
  assert ja["difference"] == pytest.approx(np.mean([0.9 - 0.5, 0.8 - 0.7]))
  assert ja["a"] == pytest.approx(0.6) and ja["b"] == pytest.approx(0.85)
  assert ja["low"] == pytest.approx(0.1) and ja["high"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------------------------
# The compare command on two fake finished runs.

def _fake_run(workdir, per_image: dict, threshold=0.5, name="deeplab_mobilenetv2"):
  os.makedirs(workdir, exist_ok=True)
  test = {}
  for dataset, images in per_image.items():
    values = {m: np.array([images[i][m] for i in images]) for m in METRICS}
    test[dataset] = {**{m: float(v.mean()) for m, v in values.items()},
                     "n_images": len(images)}
  results = {"model": {"name": name, "params": 440417}, "loss": "dice",
             "threshold": threshold, "validation": {"ja": 0.8, "n_images": 3}, "test": test,
             "best_step": 10, "init_from": None,
             "training": {"steps": 20, "seconds": 12.0, "images_per_second": 40.0}}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)
  report.write_per_image(str(workdir), {
      d: (list(images), {m: np.array([images[i][m] for i in images]) for m in METRICS})
      for d, images in per_image.items()})
  return results


def _images(values: dict[str, float]) -> dict:
  return {image_id: dict.fromkeys(METRICS, v) for image_id, v in values.items()}


@pytest.fixture
def two_runs(tmp_path):
  exp1 = tmp_path / "exp1"
  exp2 = tmp_path / "exp2"
  _fake_run(exp1, {"dermofit": _images({"a": 0.6, "b": 0.7, "c": 0.8}),
                   "smartskins": _images({"s1": 0.9})})
  _fake_run(exp2, {"dermofit": _images({"c": 0.85, "a": 0.65, "b": 0.75}),
                   "smartskins": _images({"s1": 0.9})}, threshold=0.56)
  return str(exp1), str(exp2)


def test_compare_prints_the_table_and_the_paired_differences(two_runs, capsys):
  assert report.main(["compare", *two_runs, "--names", "Exp 1", "Exp 2",
                      "--resamples", "1000"]) == 0
  out = capsys.readouterr().out
  assert "| dermofit | Exp 1 | 0.50 | 70.00 |" in out
  assert "| dermofit | Exp 2 | 0.56 | 75.00 |" in out
  # Every dermofit image improved by exactly 5 points: CI [+5, +5]; smartskins did not change.
  assert "| dermofit | JA | 70.00 | 75.00 | +5.00 | [+5.00, +5.00] | yes | 3 |" in out
  assert "| smartskins | JA | 90.00 | 90.00 | +0.00 | [+0.00, +0.00] | no | 1 |" in out


def test_compare_of_three_runs_gives_every_pair_its_differences(two_runs, tmp_path, capsys):
  scratch = tmp_path / "scratch"
  _fake_run(scratch, {"dermofit": _images({"a": 0.55, "b": 0.65, "c": 0.75})})
  assert report.main(["compare", str(scratch), *two_runs, "--names", "Exp 0", "Exp 1", "Exp 2",
                      "--resamples", "1000"]) == 0
  out = capsys.readouterr().out
  # Every image improves by the same amount in each pair, so each CI is a point.
  assert "| dermofit | JA | 65.00 | 70.00 | +5.00 | [+5.00, +5.00] | yes | 3 |" in out
  assert "| dermofit | JA | 65.00 | 75.00 | +10.00 | [+10.00, +10.00] | yes | 3 |" in out
  assert "| dermofit | JA | 70.00 | 75.00 | +5.00 | [+5.00, +5.00] | yes | 3 |" in out
  assert out.index("(Exp 1 − Exp 0") < out.index("(Exp 2 − Exp 0") < out.index("(Exp 2 − Exp 1")
  assert "| validation |" not in out  # only where both runs wrote their validation images


def test_compare_pairs_the_validation_images_where_both_runs_wrote_them(two_runs, capsys):
  for workdir, values in zip(two_runs, ({"#0": 0.5, "#1": 0.7}, {"#0": 0.6, "#1": 0.8})):
    report.write_per_image(workdir, {"validation": (
        list(values), {m: np.array(list(values.values())) for m in METRICS})},
        report.VALIDATION_PER_IMAGE)
  assert report.main(["compare", *two_runs, "--resamples", "100"]) == 0
  assert "| validation | JA | 60.00 | 70.00 | +10.00 | [+10.00, +10.00] | yes | 2 |" in (
      capsys.readouterr().out)


def test_compare_writes_a_report_without_the_figure(two_runs, tmp_path):
  out_dir = tmp_path / "cmp"
  path = report.write_comparison_report(str(out_dir), list(two_runs), ["Exp 1", "Exp 2"],
                                        resamples=100, figure=False, paper_reference=True)
  text = open(path).read()
  assert "| smartskins | Exp 2 | 0.56 | 78.04 |" in text  # the paper's Table 3 beside ours
  data = json.load(open(out_dir / "comparison.json"))
  dermofit_ja = next(r for r in data["paired_differences"]
                     if r["subset"] == "dermofit" and r["metric"] == "ja")
  assert dermofit_ja["difference"] == pytest.approx(0.05)
  # Multi-host: the other processes compute the same report but write nothing.
  report.write_comparison_report(str(tmp_path / "silent"), list(two_runs), figure=False,
                                 write=False)
  assert not (tmp_path / "silent").exists()


def test_compare_command_line_reports_a_missing_run(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lesion_jax.report", "compare",
                           str(tmp_path / "nope"), str(tmp_path / "nope2")],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2
  assert "nope: no such folder" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# Table 2.

def _entry(run, model, loss, results_ja=None, **config_model):
  config = {"model": {"name": model, "alpha": 0.35, "output_stride": 16, "ifc": None,
                      **config_model}, "loss": loss, "init_from": None}
  results = None
  if results_ja is not None:
    metrics = dict.fromkeys(METRICS, results_ja)
    results = {"model": {"name": model, "params": 7_850_000}, "threshold": 0.52,
               "validation": {**metrics, "n_images": 10},
               "test": {"dermofit": {**metrics, "n_images": 20}}}
  return report.table2_entry(run, config, results, "finished" if results else "failed")


def test_table2_groups_unets_first_then_deeplab_encoders(tmp_path):
  entries = [
      _entry("m035", "deeplab_mobilenetv2", "dice", 0.83, alpha=0.35),
      _entry("m100", "deeplab_mobilenetv2", "jaccard", 0.85, alpha=1.0),
      _entry("xc", "deeplabv3plus_xception65", "jaccard", 0.85),
      _entry("r2", "r2_unet", "jaccard", 0.83, ifc=16),
      _entry("u32", "unet", "jaccard", 0.78, ifc=32),
      _entry("u16", "unet", "dice", None),  # default ifC of the registry: 32
      _entry("att", "att_unet", "dice", 0.77, ifc=64),
  ]
  md_path, csv_path = report.write_table2(str(tmp_path), entries)
  lines = [l for l in open(md_path).read().split("## Test subset")[0].splitlines()
           if l.startswith("| ") and not l.startswith("| Run")]
  assert [l.split(" | ")[0][2:] for l in lines] == ["u16", "u32", "att", "r2", "xc", "m100",
                                                     "m035"]
  assert lines[1] == ("| u32 | U-Net | 1 − JA | ifC=32 | None | 7.85M | 0.52 | 78.00 | 78.00 | "
                      "78.00 | 78.00 | 78.00 | 78.00 |")
  assert lines[0].startswith("| u16 | U-Net | 1 − DI | ifC=32 | None | – | – | failed |")
  assert "| xc | Xception, OS=16 | 1 − JA | – | None |" in lines[4]
  assert "| m035 | MobileNetV2, OS=16 | 1 − DI | α=0.35 |" in lines[6]
  rows = open(csv_path).read().strip().splitlines()
  assert len(rows) == 1 + 2 * len(entries)  # validation and dermofit for every run
  assert rows[0].startswith("run,subset,status,model,architecture,loss,ifc,alpha")


def test_pretraining_label_names_the_weights_the_run_started_from():
  assert report.pretraining_label({"model": {}, "init_from": None}) == "None"
  assert report.pretraining_label({"model": {}, "init_from": "runs/exp2/pretrain"}) == \
      "run pretrain"
  pascal = "deeplab_zoo:/w/deeplabv3_mnv2_pascal_train_aug/model.ckpt-30000"
  assert report.pretraining_label({"model": {"init_from": pascal}}) == "Pascal"
  cityscapes = "deeplab_zoo:/w/deeplabv3_cityscapes_train/model.ckpt"
  assert report.pretraining_label({"model": {"init_from": cityscapes}}) == "Cityscapes"
  keras = "keras_mobilenet_v2:/w/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"
  assert report.pretraining_label({"model": {"init_from": keras}}) == "ImageNet"


# ----------------------------------------------------------------------------------------------
# Training curves and Fig. 1 helpers.

def test_restarts_are_the_steps_where_the_learning_rate_rises():
  steps = [10, 20, 30, 40, 50, 60]
  rates = [1e-3, 5e-4, 1e-6, 9e-4, 2e-4, 8e-4]
  assert report.restart_steps(steps, rates) == [40, 60]


def test_metrics_of_a_resumed_run_keep_the_last_line_per_step(tmp_path):
  lines = [{"kind": "train", "step": 10, "loss": 1.0, "learning_rate": 1e-3},
           {"kind": "train", "step": 20, "loss": 0.9, "learning_rate": 5e-4},
           {"kind": "validation", "step": 20, "ja": 0.5, "loss": 0.8},
           {"kind": "train", "step": 20, "loss": 0.7, "learning_rate": 5e-4}]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("\n".join(json.dumps(l) for l in lines) + '\n{"kind": "tra')  # cut by a kill
  metrics = report.read_metrics(str(tmp_path))
  assert [m["loss"] for m in metrics["train"]] == [1.0, 0.7]
  assert report.plot_training_curves(str(tmp_path / "curves.png"), metrics, best_step=20)
  assert Image.open(tmp_path / "curves.png").size[0] > 100
  assert not report.plot_training_curves(str(tmp_path / "none.png"), {})


def test_cases_are_the_best_median_and_worst_by_mean_ja():
  ja = np.array([[0.9, 0.1, 0.5, 0.7, 0.3],
                 [0.8, 0.2, 0.6, 0.6, 0.4]])
  assert report.pick_cases(ja) == [("best", 0), ("median", 2), ("worst", 1)]
  assert report.pick_cases(np.array([[0.4]])) == [("best", 0)]


def test_fig1_grid_draws_the_comparison_colours(tmp_path):
  truth = np.zeros((8, 8), bool)
  truth[2:6, 2:6] = True
  prediction = np.zeros((8, 8), bool)
  prediction[3:7, 3:7] = True
  panel = report.comparison_image(truth, prediction)
  assert tuple(panel[3, 3]) == report.FIG1_COLOURS["tp"]
  assert tuple(panel[6, 6]) == report.FIG1_COLOURS["fp"]
  assert tuple(panel[2, 2]) == report.FIG1_COLOURS["fn"]
  assert tuple(panel[0, 0]) == report.FIG1_COLOURS["tn"]
  image = np.full((8, 8, 3), 128, np.uint8)
  path = str(tmp_path / "fig1.png")
  report.plot_fig1_grid(path, [image, image], [truth, truth],
                        [[prediction, truth], [truth, prediction]], ["Exp 1", "Exp 2"],
                        ["best", "worst"])
  assert Image.open(path).size[0] > Image.open(path).size[1]  # 4 columns, 2 rows


def test_run_report_has_the_table3_rows_validation_line_summary_and_curves(tmp_path):
  metrics = dict.fromkeys(METRICS, 0.8)
  results = {"model": {"name": "unet", "params": 7_850_000}, "loss": "jaccard",
             "threshold": 0.52, "validation": {**metrics, "ja_at_0.5": 0.79, "n_images": 9},
             "test": {"dermofit": {**metrics, "n_images": 20}}, "best_step": 40,
             "init_from": None,
             "training": {"steps": 60, "seconds": 30.0, "images_per_second": 8.0}}
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in (10, 20, 30):
      f.write(json.dumps({"kind": "train", "step": step, "loss": 0.5,
                          "learning_rate": 1e-3 / step}) + "\n")
  thresholds = np.linspace(0.5, 1.0, 50)
  report.write_run_report(str(tmp_path), results, np.linspace(0.8, 0.7, 50), thresholds)
  text = (tmp_path / "results.md").read_text()
  assert "| dermofit | " in text and "| 0.52 | 80.00 | 80.00 |" in text
  assert "Validation subset at T = 0.52 (9 images" in text and "TJA 80.00" in text
  assert "unet (7.85M, 7,850,000 parameters), loss jaccard, T = 0.52; 60 steps in 30 s, " \
      "8.0 images/s" in text
  assert (tmp_path / "training_curves.png").exists() and (tmp_path / "threshold_curve.png").exists()


def test_table_command_reads_the_runs_of_a_sweep_folder(tmp_path):
  for name in ("run_a", "run_b"):
    (tmp_path / "sweep" / name).mkdir(parents=True)
    (tmp_path / "sweep" / name / "config.json").write_text("{}")
  (tmp_path / "sweep" / "sweep.json").write_text("{}")
  assert report.run_folders([str(tmp_path / "sweep")]) == [
      str(tmp_path / "sweep" / "run_a"), str(tmp_path / "sweep" / "run_b")]
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no training run"):
    report.run_folders([str(tmp_path / "empty")])


def test_overlays_of_an_image_id_with_a_slash_are_written_flat(tmp_path):
  # Waterloo's ids name their atlas: "dermquest/D19_2".
  image = np.full((8, 8, 3), 200, np.uint8)
  mask = np.zeros((8, 8), np.uint8)
  mask[2:6, 2:6] = 1
  example = {"image": image, "mask": mask[..., None], "image_id": b"dermquest/D19_2"}
  written = report.write_overlays(str(tmp_path), "waterloo", [("best", 0, 0)], [example],
                                  mask[None].astype(np.float32), np.array([0.9]), 8, 0.5)
  assert [os.path.basename(p) for p in written] == ["best1_dermquest_D19_2_ja0.900.png"]
  assert os.path.isfile(written[0])
