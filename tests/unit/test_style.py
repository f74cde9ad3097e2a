"""Style transfer toward real images: it moves the image statistics, keeps labels, masks and
the geometry, and is deterministic per (seed, epoch, index)."""

import cv2
import numpy as np
import pytest

from pipeline.data.datamodule import ImageDataset
from pipeline.data.style import (
    StyleTransfer,
    match_histogram,
    pick_references,
    style_from_config,
    swap_low_frequencies,
)
from pipeline.errors import UserError
from pipeline.synth.render import render_sample


def _sample(seed: int = 3):
    return render_sample("particle", "inlens_hires", seed, image_size=64)


def _reference(seed: int = 0) -> np.ndarray:
    """A bright, high-contrast stand-in for a real image: a lit gradient with sharp bars."""
    rng = np.random.default_rng(seed)
    ref = np.tile(np.linspace(60, 250, 64), (64, 1))
    ref[:, ::6] = 20
    return np.clip(ref + rng.normal(0, 4, ref.shape), 0, 255).astype(np.uint8)


def test_histogram_matching_takes_the_reference_histogram_and_is_monotone():
    smp, ref = _sample(), _reference()
    out = match_histogram(smp.image, ref)
    for q in (10, 50, 90):
        assert abs(np.percentile(out, q) - np.percentile(ref, q)) <= 6
    order = np.argsort(smp.image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # no grey level swaps places
    # The defect stays where the mask says, with the same sign of contrast to its surround.
    inside, outside = smp.mask > 0, smp.mask == 0
    before = smp.image[inside].mean() - smp.image[outside].mean()
    after = out[inside].mean() - out[outside].mean()
    assert np.sign(before) == np.sign(after) and abs(after) > 0


def test_fda_swaps_only_the_low_frequencies():
    smp, ref = _sample(), _reference()
    assert np.array_equal(swap_low_frequencies(smp.image, ref, 0.0), smp.image)
    out = swap_low_frequencies(smp.image, ref, 0.05)
    # The mean grey (the DC amplitude) moves to the reference's ...
    assert abs(float(out.mean()) - float(ref.mean())) < abs(float(smp.image.mean())
                                                              - float(ref.mean())) / 2
    # ... while the fine structure, where the defect edges live, is the image's own (another
    # scene's correlates near 0; what is lost is clipping where the image brightened).
    lap = [cv2.Laplacian(a.astype(np.float32), cv2.CV_32F).ravel()
           for a in (smp.image, out, _sample(9).image)]
    assert np.corrcoef(lap[0], lap[1])[0, 1] > 0.8 > 0.2 > abs(np.corrcoef(lap[0], lap[2])[0, 1])
    with pytest.raises(ValueError, match="shape"):
        swap_low_frequencies(smp.image, ref[:32], 0.05)


@pytest.mark.parametrize("method", ["histogram", "fda"])
def test_a_styled_dataset_keeps_labels_and_is_deterministic(tmp_path, method):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], _sample(i).image)
    items = [(p, i % 2) for i, p in enumerate(paths)]
    style = StyleTransfer([_reference(0), _reference(1)], method, p=1.0)
    plain, styled = ImageDataset(items, 64, seed=5), ImageDataset(items, 64, seed=5, style=style)
    for key in [(0, 0), (3, 2)]:
        x0, y0 = plain[key]
        x1, y1 = styled[key]
        assert y0 == y1 and x1.shape == x0.shape and not np.array_equal(x0, x1)
        assert np.array_equal(x1, styled[key][0])  # the same view on every call
    # p=0: style transfer draws from its own generator, so every other draw is unchanged.
    off = ImageDataset(items, 64, seed=5, style=StyleTransfer([_reference()], method, p=0.0))
    assert all(np.array_equal(off[(i, 1)][0], plain[(i, 1)][0]) for i in range(4))


def test_references_are_resized_to_the_served_image_and_bad_settings_refused():
    style = StyleTransfer([_reference()], "fda", p=1.0)
    out = style(cv2.resize(_sample().image, (96, 96)), np.random.default_rng(0))
    assert out.shape == (96, 96)
    with pytest.raises(UserError, match="train.style.method"):
        StyleTransfer([_reference()], "cyclegan")


def test_style_is_off_without_real_images_and_picks_a_stable_subset(tmp_path):
    cfg = {"enabled": True, "method": "histogram", "p": 0.5, "fda_beta": 0.05, "references": 2}
    assert style_from_config(cfg, [], 64, 0) is None
    assert style_from_config({**cfg, "enabled": False}, ["x.png"], 64, 0) is None
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"r{i}.png"))
        cv2.imwrite(paths[-1], _reference(i))
    picked = pick_references(paths, 2, 0)
    assert len(picked) == 2 and picked == pick_references(list(reversed(paths)), 2, 0)
    style = style_from_config(cfg, paths, 64, 0)
    assert len(style.references) == 2 and style.references[0].shape == (64, 64)
