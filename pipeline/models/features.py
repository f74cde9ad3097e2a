"""Frozen ImageNet features of grey images: what the appearance folds and the domain-gap
meter compare images by."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.models.backbones import build_backbone
from pipeline.models.preprocess import Normalize, Preprocess


@torch.no_grad()
def image_features(images: np.ndarray, backbone: str = "efficientnet_lite0",
                   batch_size: int = 64) -> np.ndarray:
    """Frozen, globally pooled ImageNet features of float32 (N, 1, S, S) model inputs in
    [0, 1] (the offline weights; UserError when they are unavailable)."""
    pp = Preprocess(images.shape[-1])
    net = torch.nn.Sequential(Normalize(pp.mean, pp.std),
                              build_backbone(backbone, 0, pretrained=True)).eval()
    out = [net(torch.from_numpy(images[i: i + batch_size])).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)
