import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pipeline.evaluate.metrics import classification_metrics, expected_calibration_error
from pipeline.training import loss_config, phase_items

NAMES = ["clean", "bridge", "open"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 1, 1]


def test_metrics_match_sklearn():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    for avg in ("macro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average=avg))
        assert m[f"{avg}_precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, average=avg))
        assert m[f"{avg}_recall"] == pytest.approx(recall_score(Y_TRUE, Y_PRED, average=avg))
    assert m["confusion"] == [[2, 1, 0], [0, 3, 0], [1, 1, 2]]
    assert m["per_class"]["open"]["recall"] == pytest.approx(0.5)


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
