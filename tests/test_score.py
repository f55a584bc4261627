"""`python -m lesion_jax.score` against the official ISIC scorer, and its bad-input errors."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
from isic_challenge_scoring.segmentation import SegmentationScore
from PIL import Image

from lesion_jax import score

H, W = 16, 24
REPO = pathlib.Path(__file__).resolve().parents[1]
# The official scorer's macro_average keys -> ours.
OFFICIAL_NAMES = {"threshold_jaccard": "tja", "jaccard": "ja", "dice": "di",
                  "accuracy": "ac", "sensitivity": "se", "specificity": "sp"}


def _save(path: pathlib.Path, array: np.ndarray, mode: str = "L") -> None:
  image = Image.fromarray(np.asarray(array, np.uint8))
  if mode != "L":
    image = image.convert(mode)
  image.save(path)


def _blob(top: int, left: int, height: int, width: int, value: int = 255) -> np.ndarray:
  array = np.zeros((H, W), np.uint8)
  array[top:top + height, left:left + width] = value
  return array


@pytest.fixture
def folders(tmp_path):
  """Truth and prediction folders with the ISIC edge cases and mixed file naming."""
  truth, pred = tmp_path / "truth", tmp_path / "pred"
  truth.mkdir()
  pred.mkdir()
  # Grey levels around the official cut (> 128): 129 and 200 are lesion, 128 and 100 are not.
  graded = _blob(3, 4, 8, 12, 200)
  graded[3:5, 4:16] = 128
  graded[5, 4:16] = 129
  graded[10, 4:16] = 100
  truth_graded = _blob(3, 4, 8, 12)
  truth_graded[3, 4:16] = 128  # grey truth pixels are cut at > 128 too
  cases = {
      "ISIC_0000001": (truth_graded, graded, "L"),
      "ISIC_0000002": (np.zeros((H, W)), np.zeros((H, W)), "L"),          # both empty
      "ISIC_0000003": (np.zeros((H, W)), _blob(0, 0, 2, 3), "L"),        # empty truth
      "ISIC_0000004": (np.full((H, W), 255), _blob(0, 0, 10, 24), "L"),  # full truth
      "ISIC_0000005": (_blob(5, 5, 6, 6), np.zeros((H, W)), "L"),        # missed lesion
      "ISIC_0000006": (_blob(2, 2, 10, 10), _blob(2, 2, 10, 6), "L"),    # ja 0.6 -> tja 0
      "ISIC_0000007": (_blob(4, 4, 8, 8), _blob(4, 5, 8, 8), "1"),       # bilevel PNG
  }
  for i, (key, (t, p, mode)) in enumerate(sorted(cases.items())):
    truth_suffix = "_Segmentation" if i == 5 else "_segmentation"  # one ISIC 2016 name
    _save(truth / f"{key}{truth_suffix}.png", t)
    _save(pred / (f"{key}_segmentation.png" if i % 2 else f"{key}.png"), p, mode)
  (truth / "LICENSE.txt").write_text("ignored by both scorers")
  return truth, pred


def _official(truth: pathlib.Path, pred: pathlib.Path) -> dict[str, float]:
  with warnings.catch_warnings():
    # isic-challenge-scoring 5.6 uses Series.rename(inplace=True), deprecated by recent pandas.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    macro = SegmentationScore.from_dir(truth, pred).macro_average
  return {ours: float(macro[theirs]) for theirs, ours in OFFICIAL_NAMES.items()}


def test_score_folders_equals_official_scorer(folders):
  got = score.score_folders(*folders)
  expected = _official(*folders)
  assert got["n_images"] == 7
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  # The folders do exercise the tja cut and the freebie cases.
  assert 0.0 < got["tja"] < got["ja"] < 1.0


def test_main_prints_json_equal_to_official(folders, capsys):
  truth, pred = folders
  assert score.main(["--truth", str(truth), "--pred", str(pred)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert set(printed) == {"tja", "ja", "di", "ac", "se", "sp", "n_images"}
  for key, value in _official(truth, pred).items():
    assert printed[key] == pytest.approx(value, abs=1e-6), key


def test_module_command_line(folders):
  truth, pred = folders
  result = subprocess.run(
      [sys.executable, "-m", "lesion_jax.score", "--truth", str(truth), "--pred", str(pred),
       "--threshold", "128"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert printed["n_images"] == 7
  for key, value in _official(truth, pred).items():
    assert printed[key] == pytest.approx(value, abs=1e-6), key


def test_threshold_flag_moves_the_cut(folders):
  truth, pred = folders
  # ISIC_0000001 at > 128: prediction rows 5-9 against truth rows 4-10, ja = 5/7. At > 99 the
  # 100- and 128-valued rows count on both sides and rows 3-10 match exactly, ja = 1.
  default = score.score_folders(truth, pred)
  lower = score.score_folders(truth, pred, threshold=99)
  assert lower["ja"] - default["ja"] == pytest.approx((1 - 5 / 7) / 7)


def _error_of(truth, pred, capsys) -> str:
  assert score.main(["--truth", str(truth), "--pred", str(pred)]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and "Traceback" not in captured.err
  return captured.err


def test_every_problem_is_listed_at_once(folders, capsys):
  truth, pred = folders
  (pred / "ISIC_0000002_segmentation.png").unlink()  # truth without prediction
  _save(pred / "ISIC_0000099.png", np.zeros((H, W)))  # prediction without truth
  _save(pred / "ISIC_0000003.png", np.zeros((H + 1, W)))  # size mismatch
  (pred / "ISIC_0000004_segmentation.png").write_bytes(b"not a png")  # unreadable
  _save(pred / "ISIC_0000005.png", np.zeros((H, W, 3)), "RGB")  # not greyscale
  _save(pred / "ISIC_0000006_segmentation.png", _blob(2, 2, 10, 6, 1))  # 0/1 mask
  _save(pred / "ISIC_0000007_Segmentation.png", np.zeros((H, W)))  # duplicate id
  err = _error_of(truth, pred, capsys)
  assert "7 problem(s)" in err
  for needle in ("1 truth mask(s) without a prediction: ISIC_0000002_segmentation.png",
                 "1 prediction(s) without a truth mask: ISIC_0000099.png",
                 "ISIC_0000003.png is 17x24 (HxW), its truth ISIC_0000003_segmentation.png is "
                 "16x24",
                 "ISIC_0000004_segmentation.png: cannot be read as a PNG",
                 "ISIC_0000005.png: mode 'RGB', expected a single-channel",
                 "ISIC_0000006_segmentation.png: values are 0/1 only",
                 "both give image id 'ISIC_0000007'"):
    assert needle in err, needle
  assert score.PAIRING_RULE in err


def test_empty_and_missing_folders(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  err = _error_of(empty, tmp_path / "nowhere", capsys)
  assert "truth folder" in err and "holds no masks (*.png, *.bmp)" in err
  assert "nowhere does not exist" in err


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
  truth, pred = tmp_path / "truth", tmp_path / "pred"
  truth.mkdir()
  pred.mkdir()
  _save(truth / "ISIC_0000001_segmentation.png", np.zeros((H, W)))
  result = subprocess.run(
      [sys.executable, "-m", "lesion_jax.score", "--truth", str(truth), "--pred", str(pred)],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  # The empty folder is the cause; its consequence (every truth unpaired) is not listed.
  assert f"prediction folder {pred} holds no masks" in result.stderr
  assert "without a prediction" not in result.stderr


def test_a_missing_truth_folder_is_the_single_cause(tmp_path, capsys):
  pred = tmp_path / "pred"
  pred.mkdir()
  for i in range(12):
    _save(pred / f"ISIC_{i:07d}.png", np.zeros((H, W)))
  err = _error_of(tmp_path / "no_truth", pred, capsys)
  assert err.strip().count("\n") == 0 and f"truth folder {tmp_path / 'no_truth'} does not exist" in err


def test_image_id_accepts_the_isic_ph2_and_waterloo_namings():
  for name in ("ISIC_0012345_segmentation.png", "ISIC_0012345_Segmentation.png",
               "ISIC_0012345.png"):
    assert score.image_id(pathlib.Path(name)) == "ISIC_0012345"
  for name in ("IMD003_lesion.bmp", "IMD003_Lesion.png", "IMD003_segmentation.png"):
    assert score.image_id(pathlib.Path(name)) == "IMD003"
  for name in ("AMM_1_contour.png", "AMM_1_orig_segmentation.png", "AMM_1_orig.png"):
    assert score.image_id(pathlib.Path(name)) == "AMM_1"
  # Only a suffix counts: an id that merely contains the words keeps them.
  assert score.image_id(pathlib.Path("lesion_contour_7.png")) == "lesion_contour_7"


def _jaccard(truth: np.ndarray, pred: np.ndarray) -> float:
  truth, pred = truth > 128, pred > 128
  return np.count_nonzero(truth & pred) / np.count_nonzero(truth | pred)


def test_ph2_and_waterloo_names_pair_and_score_as_numpy(tmp_path):
  truth, pred = tmp_path / "truth", tmp_path / "pred"
  truth.mkdir()
  pred.mkdir()
  # truth name, prediction name (as predict writes it, or plain), truth mask, predicted mask
  pairs = [("IMD003_lesion.png", "IMD003.png", _blob(2, 2, 8, 8), _blob(3, 2, 8, 10)),
           ("IMD010_lesion.bmp", "IMD010_segmentation.png", _blob(0, 0, 16, 6),
            _blob(0, 1, 16, 6)),  # PH2 ships its masks as BMP
           ("AMM_1_contour.png", "AMM_1_orig_segmentation.png", _blob(5, 5, 4, 12),
            _blob(6, 4, 6, 12))]  # Waterloo: photo AMM_1_orig.jpg, mask AMM_1_contour.png
  for truth_name, pred_name, t, p in pairs:
    _save(truth / truth_name, t)
    _save(pred / pred_name, p)
  got = score.score_folders(truth, pred)
  assert got["n_images"] == 3
  expected = np.mean([_jaccard(t, p) for _, _, t, p in pairs])
  assert 0.3 < expected < 0.9
  assert got["ja"] == pytest.approx(expected, abs=1e-12)


def test_unpaired_error_states_the_rule_and_names_a_few_files(tmp_path, capsys):
  truth, pred = tmp_path / "truth", tmp_path / "pred"
  truth.mkdir()
  pred.mkdir()
  for i in range(7):  # a naming the rule does not know: nothing pairs
    _save(truth / f"IMD00{i}_mask.png", _blob(2, 2, 4, 4))
    _save(pred / f"IMD00{i}.png", _blob(2, 2, 4, 4))
  err = _error_of(truth, pred, capsys)
  assert ("7 truth mask(s) without a prediction: IMD000_mask.png, IMD001_mask.png, "
          "IMD002_mask.png, IMD003_mask.png, IMD004_mask.png and 2 more") in err
  assert ("7 prediction(s) without a truth mask: IMD000.png, IMD001.png, IMD002.png, "
          "IMD003.png, IMD004.png and 2 more") in err
  assert "2 problem(s)" in err and score.PAIRING_RULE in err
  assert "IMD005" not in err


def test_two_files_with_one_id_are_named(tmp_path, capsys):
  truth, pred = tmp_path / "truth", tmp_path / "pred"
  truth.mkdir()
  pred.mkdir()
  _save(truth / "IMD003.png", _blob(2, 2, 4, 4))
  _save(truth / "IMD003_lesion.png", _blob(2, 2, 4, 4))
  _save(pred / "IMD003_segmentation.png", _blob(2, 2, 4, 4))
  err = _error_of(truth, pred, capsys)
  assert "truth: IMD003.png and IMD003_lesion.png both give image id 'IMD003'" in err


def test_help_states_the_pairing_rule(capsys):
  with pytest.raises(SystemExit):
    score.main(["--help"])
  printed = " ".join(capsys.readouterr().out.split())
  assert "_lesion (PH2)" in printed and "_contour (Waterloo)" in printed
  assert "IMD003_lesion.png pairs with IMD003.png" in printed
