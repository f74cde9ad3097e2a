"""Where a classifier looks: class-activation maps, their overlays, and a check against the
defect masks the generator writes (does the model look at the defect or at its context?).

The map is HiResCAM (Draelos & Carin 2020), the faithful variant of Grad-CAM (Selvaraju et al.
2017): the class score's gradient times a feature map, summed over channels, ReLU'd and
upsampled to the image. Grad-CAM averages the gradient over the map first, which can light up
places the score does not depend on. The layer is the last feature map at least `min_size`
pixels wide (edge_cnn's last map is 2x2 at 128 px, too coarse to say anything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _feature_layer(net: nn.Module, image_size: int, min_size: int) -> nn.Module:
    """The last module whose output is a (B, C, H, W) map with H >= min_size."""
    found: list[tuple[nn.Module, int]] = []

    def record(mod, _inp, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            found.append((mod, out.shape[-1]))

    hooks = [m.register_forward_hook(record) for m in net.modules()
             if not list(m.children())]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    maps = [m for m, size in found if size >= min_size]
    if not maps:
        raise ValueError(f"no feature map of at least {min_size} px in the network")
    return maps[-1]


def saliency_maps(net: nn.Module, images: torch.Tensor, classes: Sequence[int] | None = None,
                  min_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, H, W) in [0, 1] at the input size, predicted classes (N,)) for [0, 1] images
    (N, 1, H, W); the map of `classes[i]` when given, else of the predicted class."""
    layer = _feature_layer(net, images.shape[-1], min_size)
    saved: dict[str, torch.Tensor] = {}

    def keep(_mod, _inp, out):
        out.retain_grad()
        saved["a"] = out

    handle = layer.register_forward_hook(keep)
    try:
        net.eval()
        x = images.clone().requires_grad_(False)
        logits = net(x)
        pred = logits.argmax(1)
        target = pred if classes is None else torch.as_tensor(list(classes))
        net.zero_grad(set_to_none=True)
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    act, grad = saved["a"].detach(), saved["a"].grad.detach()
    cam = F.relu((grad * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).numpy(), pred.numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A BGR uint8 picture of a grey uint8 image with its map in the JET colours."""
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heat, alpha, grey, 1 - alpha, 0)


@dataclass(frozen=True)
class Localisation:
    peak_inside: float  # share of images whose map peaks inside the defect mask
    mass_inside: float  # mean share of the map's mass inside the mask
    mask_share: float  # mean share of the image the mask covers: what a blind map would get
    n: int


def localisation(cams: np.ndarray, masks: np.ndarray) -> Localisation:
    """How much of each map falls on its (non-empty) defect mask (N, H, W booleans)."""
    masks = np.asarray(masks, bool)
    keep = masks.reshape(len(masks), -1).any(1)
    cams, masks = cams[keep], masks[keep]
    if not len(cams):
        return Localisation(float("nan"), float("nan"), float("nan"), 0)
    flat = cams.reshape(len(cams), -1)
    peaks = flat.argmax(1)
    inside = masks.reshape(len(masks), -1)[np.arange(len(masks)), peaks]
    mass = (flat * masks.reshape(len(masks), -1)).sum(1) / flat.sum(1).clip(1e-12)
    return Localisation(float(inside.mean()), float(mass.mean()), float(masks.mean()),
                        int(len(cams)))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A boolean mask grown by `pixels` (a map of a coarse feature grid cannot do better than
    about half its cell)."""
    if pixels <= 0:
        return np.asarray(mask, bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(np.asarray(mask, np.uint8), kernel) > 0


def explain_images(model, images: Sequence[np.ndarray], batch_size: int = 32
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model-size uint8 images, saliency maps, predicted classes) of a SEMClassifier for
    uint8 grey images of any size, through the model's own preprocessing."""
    pp = model.pp
    x = np.stack([pp(img) for img in images]).astype(np.float32)
    cams, preds = [], []
    for start in range(0, len(x), batch_size):
        cam, pred = saliency_maps(model.net, torch.from_numpy(x[start: start + batch_size]))
        cams.append(cam)
        preds.append(pred)
    shown = np.uint8(np.clip(x[:, 0] * 255.0 + 0.5, 0, 255))
    return shown, np.concatenate(cams), np.concatenate(preds)


# Peak and mass are counted within this many pixels of the defect at 128 px: the maps come
# from an 8x8 feature grid (16 px cells), the masks are often a few pixels wide.
MASK_TOLERANCE_PX = 8


def mask_localisation(model, items: Sequence[tuple[str, str, str]],
                      tolerance_px: int = MASK_TOLERANCE_PX) -> dict[str, dict]:
    """Per fine class, how the model's maps fall on the defect masks: items are (image path,
    mask path, fine class) of synthetic images; classes without defect (empty masks) are
    left out. {class: asdict(Localisation)}, plus "all"."""
    from dataclasses import asdict
    from pathlib import Path

    from pipeline.data.images import read_gray8, to_model_input

    size = model.pp.image_size
    scale = size / 128
    by_class: dict[str, list[int]] = {}
    for i, (_, _, cls) in enumerate(items):
        by_class.setdefault(cls, []).append(i)
    _, cams, _ = explain_images(model, [read_gray8(Path(p)) for p, _, _ in items])
    masks = np.stack([dilate(to_model_input(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE), size)
                             > 127, round(tolerance_px * scale)) for _, m, _ in items])
    out = {}
    for cls, idx in sorted(by_class.items()):
        result = localisation(cams[idx], masks[idx])
        if result.n:
            out[cls] = asdict(result)
    overall = localisation(cams, masks)
    out["all"] = asdict(overall)
    return out


def looks_elsewhere(localised: dict[str, dict], recall: dict[str, float],
                    min_recall: float = 0.5) -> list[str]:
    """Classes the model recognises (recall >= min_recall) while its maps put no more mass on
    the defect than a blind map would (mass_inside <= mask_share): a shortcut to look at."""
    return [c for c, v in localised.items() if c != "all" and recall.get(c, 0.0) >= min_recall
            and v["mass_inside"] <= v["mask_share"]]
