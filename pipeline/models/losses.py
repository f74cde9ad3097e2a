"""Classification losses: cross-entropy (label smoothing), focal, class weights, and KD."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import UserError


class FocalLoss(nn.Module):
    """Multi-class focal loss: -alpha_y * w_y * (1 - p_y)^gamma * log p_y.

    `alpha` is one factor for all classes or one per class; `weight` are class weights. With
    reduction "mean" and weights, the sum is divided by the summed weights of the targets (as
    `nn.CrossEntropyLoss` does), so gamma=0 without alpha equals weighted cross-entropy.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Tensor | None = None,
        weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
        self.gamma = gamma
        self.reduction = reduction
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha).float())
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * (self.alpha[target] if self.alpha.ndim else self.alpha)
        w = self.weight[target] if self.weight is not None else None
        if w is not None:
            loss = loss * w
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / w.sum() if w is not None else loss.mean()


def build_hard_loss(
    name: str,
    *,
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    class_weights: Tensor | None = None,
) -> nn.Module:
    """The supervised loss named in the config: "ce" or "focal"."""
    if name == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if name == "focal":
        if label_smoothing:
            raise UserError("loss.label_smoothing works only with loss.name=ce; set it to 0")
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        return FocalLoss(gamma=gamma, alpha=alpha_t, weight=class_weights)
    raise UserError(f"loss.name={name!r} is unknown; use 'ce' or 'focal'")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Hinton distillation: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch.

    The T^2 factor keeps the gradient scale comparable to the hard loss as T changes.
    """
    return F.kl_div(
        F.log_softmax(student_logits / T, dim=1),
        F.log_softmax(teacher_logits.detach() / T, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (T * T)


def class_weights_from_counts(
    counts: Sequence[int], mode: str = "inverse", beta: float = 0.999
) -> Tensor:
    """Per-class weights from training counts, scaled so present classes average 1.

    inverse: 1/n; sqrt_inverse: 1/sqrt(n); effective: (1 - beta) / (1 - beta^n) (Cui et al.
    2019, "effective number of samples"). Classes with no samples get weight 0.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.ndim != 1 or (n < 0).any():
        raise UserError(f"class counts must be a list of non-negative integers, got {counts}")
    present = n > 0
    if not present.any():
        raise UserError("class weights: every class has 0 training images; check the split")
    safe = n.clamp(min=1)
    if mode == "inverse":
        w = 1.0 / safe
    elif mode == "sqrt_inverse":
        w = 1.0 / safe.sqrt()
    elif mode == "effective":
        if not 0.0 <= beta < 1.0:
            raise UserError(f"class weights: beta must be in [0, 1), got {beta}")
        w = (1.0 - beta) / -torch.expm1(safe * math.log(beta)) if beta > 0 else torch.ones_like(n)
    else:
        raise UserError(
            f"class weights mode {mode!r} is unknown; use inverse, sqrt_inverse or effective"
        )
    w = torch.where(present, w, torch.zeros_like(w))
    return (w * present.sum() / w.sum()).float()
