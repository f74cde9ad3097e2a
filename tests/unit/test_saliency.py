"""Saliency maps (HiResCAM) and the defect-mask localisation check."""

import numpy as np
import torch
from torch import nn

from pipeline.evaluate.saliency import dilate, localisation, overlay, saliency_maps


class CornerNet(nn.Module):
    """Sees only the top-left 8x8 corner of a 32 px image: its logits depend on nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 2)
        corner = torch.zeros(1, 1, 32, 32)
        corner[..., :8, :8] = 1
        self.register_buffer("corner", corner)

    def forward(self, x):
        a = self.relu(self.conv(x)) * self.corner
        return self.head(a.mean((2, 3)))


def test_the_map_of_a_model_that_sees_one_corner_peaks_in_that_corner():
    torch.manual_seed(0)
    net = CornerNet()
    cams, preds = saliency_maps(net, torch.rand(6, 1, 32, 32), min_size=8)
    assert cams.shape == (6, 32, 32) and preds.shape == (6,)
    for cam in cams:
        row, col = np.unravel_index(cam.argmax(), cam.shape)
        assert row < 10 and col < 10
        assert cam[:10, :10].sum() > 0.9 * cam.sum()


def test_localisation_is_one_for_a_full_mask_and_zero_for_a_disjoint_one():
    cams = np.zeros((3, 16, 16))
    cams[:, 2:5, 2:5] = 1.0
    full = np.ones((3, 16, 16), bool)
    disjoint = np.zeros((3, 16, 16), bool)
    disjoint[:, 10:, 10:] = True
    assert localisation(cams, full).peak_inside == 1.0
    assert localisation(cams, full).mass_inside == 1.0
    far = localisation(cams, disjoint)
    assert far.peak_inside == 0.0 and far.mass_inside < 1e-9 and far.n == 3
    assert localisation(cams, np.zeros((3, 16, 16), bool)).n == 0  # clean images: no mask
    assert dilate(disjoint[0], 2).sum() > disjoint[0].sum()


def test_overlay_is_a_colour_picture_of_the_image():
    img = np.full((16, 16), 100, np.uint8)
    out = overlay(img, np.zeros((16, 16)))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
