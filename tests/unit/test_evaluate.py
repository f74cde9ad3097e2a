"""confusion_records, class mapping between taxonomies, corruptions, the OOD threshold."""

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluate.folder import MappedPredictor, map_classes, map_probs
from pipeline.evaluate.metrics import confusion_records
from pipeline.evaluate.ood import calibrate_threshold, flag_low_confidence, flag_summary
from pipeline.evaluate.robustness import (
    CORRUPTIONS,
    class_balanced,
    corrupt,
    robustness_figure,
    robustness_table,
)

P1 = ["clean", "bridge", "open", "ler", "crack", "cmp", "particle", "via", "other"]


def test_confusion_records_format():
    recs = confusion_records([0, 1, 2], [0, 2, 2], ["clean", "bridge", "open"])
    assert recs == [{"actual": "clean", "predicted": "clean"},
                    {"actual": "bridge", "predicted": "open"},
                    {"actual": "open", "predicted": "open"}]


def test_map_phase1_to_phase2_by_name(taxonomy):
    m = map_classes(P1, taxonomy.phase("phase2").classes, taxonomy)
    assert m == {"clean": "Clean", "bridge": "Bridge", "open": "Open", "ler": "LER",
                 "crack": "Crack", "cmp": "CMP", "particle": "Particle", "via": "VIA",
                 "other": "Other"}
    assert set(m.how.values()) == {"name"} and m.unpredictable == []


def test_map_phase1_to_phase3_clean_ambiguity(taxonomy):
    p3 = taxonomy.phase("phase3").classes
    m = map_classes(P1, p3, taxonomy)
    assert m["cmp"] == "CMP" and m["other"] == "OTHERS" and m.how["other"] == "name"
    assert m["clean"] == "OTHERS" and m.how["clean"] == "default"
    assert m.ambiguous["clean"] == ["CLEAN_CRACK", "CLEAN_LAYER", "CLEAN_VIA"]
    assert m.unpredictable == ["CLEAN_CRACK", "CLEAN_LAYER", "CLEAN_VIA"]
    assert "could mean" in m.summary()
    rep = m.report()
    assert rep["by_default"] == {"clean": "OTHERS"} and rep["by_override"] == {}

    o = map_classes(P1, p3, taxonomy, overrides={"clean": "CLEAN_LAYER"})
    assert o["clean"] == "CLEAN_LAYER" and o.how["clean"] == "override"
    assert o.report()["by_override"] == {"clean": "CLEAN_LAYER"}
    with pytest.raises(UserError, match="add a mapping override such as clean: CLEAN_CRACK"):
        map_classes(P1, p3, taxonomy, default=None)
    with pytest.raises(UserError, match="overrides"):
        map_classes(P1, p3, taxonomy, overrides={"clean": "Clean"})


def test_map_phase3_model_back_to_phase1_merges_clean(taxonomy):
    m = map_classes(taxonomy.phase("phase3").classes, P1, taxonomy)
    assert {m[c] for c in ("CLEAN_CRACK", "CLEAN_LAYER", "CLEAN_VIA")} == {"clean"}
    probs = np.array([[0.2, 0.1, 0.3, 0.1, 0, 0, 0, 0, 0.3, 0, 0]])
    mapped = map_probs(probs, m, taxonomy.phase("phase3").classes, P1)
    assert mapped[0, P1.index("clean")] == pytest.approx(0.5)
    assert mapped[0, P1.index("bridge")] == pytest.approx(0.2)
    assert mapped.sum() == pytest.approx(1.0)


class BrightnessPredictor:
    """Stand-in model: class = mean brightness band (4 classes)."""

    class_names = ["a", "b", "c", "d"]
    image_size, fmt, path = 32, "stub", None

    def predict(self, images):
        band = np.array([min(3, int(img.mean() // 64)) for img in images])
        return np.eye(4, dtype=np.float32)[band] * 0.9 + 0.025


def test_mapped_predictor_scores_target_classes():
    mp = MappedPredictor(BrightnessPredictor(), {"a": "x", "b": "x", "c": "y", "d": "y"},
                         ["y", "x"])
    probs = mp.predict([np.full((8, 8), 10, np.uint8), np.full((8, 8), 200, np.uint8)])
    assert mp.class_names == ["y", "x"] and probs.argmax(1).tolist() == [1, 0]


def image(seed=0, shape=(40, 48)):
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, shape, dtype=np.uint8)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_is_deterministic(kind):
    img = image()
    for level in CORRUPTIONS[kind]:
        a, b = corrupt(img, kind, level, seed=3), corrupt(img, kind, level, seed=3)
        assert a.dtype == np.uint8 and a.shape == img.shape
        assert np.array_equal(a, b) and not np.array_equal(a, img)


def test_corrupt_identity_levels_and_seed():
    img = image()
    for kind, level in (("noise", 0), ("blur", 0), ("gamma", 1.0), ("rescale", 1.0)):
        assert np.array_equal(corrupt(img, kind, level, 0), img), kind
    assert not np.array_equal(corrupt(img, "noise", 8, 0), corrupt(img, "noise", 8, 1))
    assert corrupt(img, "gamma", 0.6, 0).mean() > img.mean()  # gamma < 1 brightens
    with pytest.raises(UserError, match="unknown corruption"):
        corrupt(img, "fog", 1, 0)


def test_robustness_table_has_clean_row_and_drops():
    levels = [np.full((32, 32), v, np.uint8) for v in (20, 90, 150, 230)]
    table = robustness_table(BrightnessPredictor(), levels, [0, 1, 2, 3], ["a", "b", "c", "d"],
                             corruptions={"gamma": [1.0, 0.3], "noise": [2]})
    assert table[0] == {"corruption": "clean", "level": 0.0, "accuracy": 1.0, "macro_f1": 1.0,
                        "drop_vs_clean": 0.0}
    gamma = {r["level"]: r for r in table if r["corruption"] == "gamma"}
    assert gamma[1.0]["drop_vs_clean"] == 0.0
    assert gamma[0.3]["drop_vs_clean"] > 0  # strong brightening moves images up a band
    assert len(table) == 4
    fig = robustness_figure(table)
    assert len(fig.axes) == 2


def test_ood_threshold_is_a_validation_quantile():
    rng = np.random.default_rng(0)
    val = rng.dirichlet(np.full(4, 0.3), size=1000)
    t = calibrate_threshold(val, 0.05)
    assert flag_low_confidence(val, t).mean() == pytest.approx(0.05, abs=0.005)
    flat = np.full((10, 4), 0.25)
    assert flag_low_confidence(flat, t).all()
    s = flag_summary(np.vstack([val[:10], flat]), t, y_true=np.zeros(20, int))
    assert s["n"] == 20 and s["flag_rate"] >= 0.5 and "accuracy_kept" in s
    with pytest.raises(UserError, match="quantile"):
        calibrate_threshold(val, 1.5)


def test_robustness_sample_keeps_every_class():
    """The test split lists images class by class; the robustness sample takes them in turn."""
    items = [(f"c{c}_{i}.png", c) for c in range(4) for i in range(30)]
    picked = class_balanced(items, 10)
    assert [y for _, y in picked] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert picked[:4] == [("c0_0.png", 0), ("c1_0.png", 1), ("c2_0.png", 2), ("c3_0.png", 3)]
    uneven = [("a", 0), ("b", 1), ("c", 1), ("d", 1)]
    assert class_balanced(uneven, 10) == [("a", 0), ("b", 1), ("c", 1), ("d", 1)]
    assert class_balanced(items, 0) == []
