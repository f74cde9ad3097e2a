"""The domain-gap meter: its distances and classifier behave as measures should."""

import numpy as np

from pipeline.evaluate.domain_gap import domain_accuracy, domain_gap, frechet_distance, image_stats


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifts = [frechet_distance(a, a + d) for d in (0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts) and shifts[0] > 1.0  # 8 * 0.5^2 = 2 for the means alone


def test_the_domain_classifier_is_at_chance_on_two_halves_of_one_set():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16))
    assert 0.4 < domain_accuracy(x[:300], x[300:]) < 0.6
    assert domain_accuracy(x[:300], x[300:] + 1.0) > 0.9


def test_low_level_statistics_see_noise_and_blur():
    rng = np.random.default_rng(2)
    clean = np.tile(np.linspace(40, 200, 64, dtype=np.float32), (64, 1))
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    flat = image_stats(clean.astype(np.uint8))
    assert flat["noise"] < 0.005 and abs(image_stats(noisy)["noise"] - 10 / 255) < 0.01
    bars = np.zeros((64, 64), np.uint8)
    bars[:, ::8] = 255
    import cv2

    assert image_stats(bars)["sharpness"] > 10 * image_stats(cv2.GaussianBlur(bars, (0, 0), 2))[
        "sharpness"]


def test_per_class_rows_only_for_classes_on_both_sides():
    rng = np.random.default_rng(3)
    syn, real = rng.normal(size=(60, 8)), rng.normal(size=(40, 8)) + 0.5
    stats = [{"contrast": 0.1, "sharpness": 0.0, "noise": 0.0, "mean_grey": 0.5}] * 100
    rows = domain_gap(syn, real, stats[:60], stats[:40], ["a"] * 30 + ["b"] * 30,
                      ["a"] * 20 + ["c"] * 20)
    assert [r.scope for r in rows] == ["all", "a"]
    assert rows[0].n_synthetic == 60 and rows[1].n_real == 20 and rows[1].frechet > 0
