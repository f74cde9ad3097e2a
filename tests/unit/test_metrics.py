import json

import numpy as np
import pytest

from pipeline.data.split import phase_items
from pipeline.evaluate.metrics import (
    classification_metrics,
    expected_calibration_error,
    headline,
)
from pipeline.stages.common import write_headline
from pipeline.training import loss_config

NAMES = ["clean", "bridge", "open"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 1, 1]


def test_metrics_match_hand_computed_values():
    """Confusion [[2,1,0],[0,3,0],[1,1,2]]: per class (tp, fp, fn) = (2,1,1), (3,2,0), (2,0,2)."""
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["confusion"] == [[2, 1, 0], [0, 3, 0], [1, 1, 2]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    precision, recall, f1 = [2 / 3, 3 / 5, 1.0], [2 / 3, 1.0, 1 / 2], [2 / 3, 3 / 4, 2 / 3]
    for i, name in enumerate(NAMES):
        assert m["per_class"][name] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": [3, 3, 4][i]})
    assert m["macro_precision"] == pytest.approx(34 / 45)  # (2/3 + 3/5 + 1) / 3
    assert m["macro_recall"] == pytest.approx(13 / 18)  # (2/3 + 1 + 1/2) / 3
    assert m["macro_f1"] == pytest.approx(25 / 36)  # (2/3 + 3/4 + 2/3) / 3
    # Weighted by support 3, 3, 4.
    assert m["weighted_precision"] == pytest.approx((3 * 2 / 3 + 3 * 3 / 5 + 4 * 1) / 10)
    assert m["weighted_recall"] == pytest.approx(7 / 10)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 3 * 3 / 4 + 4 * 2 / 3) / 10)


def test_macro_skips_classes_absent_from_both_and_counts_predicted_only_ones():
    """Class 3 is predicted once but never true (F1 0, counted); class 4 never appears (left
    out): the definition SEMClassifier logs during validation."""
    m = classification_metrics([0, 0, 1, 1, 2], [0, 3, 1, 1, 2], ["a", "b", "c", "d", "e"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    assert m["macro_precision"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1 + 1 * 1) / 5)
    assert m["per_class"]["e"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_defect_detection_and_false_alarms():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES, clean_classes=["clean"])
    # 7 defects, one (an open) predicted clean; 3 clean images, one flagged as a defect.
    assert m["defect_recall"] == pytest.approx(6 / 7)
    assert m["clean_false_alarm"] == pytest.approx(1 / 3)


def test_ece_of_perfectly_calibrated_and_overconfident():
    y = np.array([0, 1, 0, 1])
    half = np.full((4, 2), 0.5)
    half[:, 0] += 1e-9  # argmax 0: right for half of them, at confidence 0.5
    assert expected_calibration_error(half, y) == pytest.approx(0.0, abs=1e-6)
    sure = np.array([[1.0, 0.0]] * 4)
    assert expected_calibration_error(sure, y) == pytest.approx(0.5)


def test_loss_config_class_weights_from_counts():
    cfg = loss_config({"name": "ce", "label_smoothing": 0.1, "class_weights": "inverse"},
                      [0, 0, 0, 1], 3)
    w = cfg["class_weights"]
    assert w[0] < w[1] and w[2] == 0.0
    assert loss_config({"name": "ce", "class_weights": "none"}, [0], 2)["class_weights"] is None


def test_phase_items_map_fine_classes(taxonomy, tmp_path):
    rows = [{"path": "a.png", "fine_class": "clean_via"}, {"path": "b.png", "fine_class": "residue"}]
    items = phase_items(rows, tmp_path, taxonomy, "phase3")
    assert items == [(str(tmp_path / "a.png"), 3), (str(tmp_path / "b.png"), 8)]


def test_headline_renames_rounds_and_drops_undefined_scores(tmp_path):
    scores = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], ["clean", "a", "b"],
                                    clean_classes=["clean"])
    row = headline(scores)
    assert row == {"accuracy": 0.75, "macro_f1": round(scores["macro_f1"], 4),
                   "defect_recall": 1.0, "false_alarm": 0.0}
    assert "defect_recall" not in headline({**scores, "defect_recall": float("nan")})
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "stale_set.json").write_text("{}")
    write_headline(folder, {"test": scores}, {"timing": {"seconds": 1.5}})
    assert sorted(p.name for p in folder.iterdir()) == ["test.json", "timing.json"]
    assert json.loads((folder / "timing.json").read_text()) == {"seconds": 1.5}
    assert json.loads((folder / "test.json").read_text()) == row
