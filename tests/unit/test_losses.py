import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.models.losses import (
    FocalLoss,
    build_hard_loss,
    class_weights_from_counts,
    kd_loss,
)

LOGITS = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
TARGET = torch.tensor([0, 2])


def _log_softmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def test_ce_label_smoothing_matches_hand_computation():
    eps, k = 0.1, 3
    expected = 0.0
    for row, t in zip(LOGITS.tolist(), TARGET.tolist(), strict=True):
        lp = _log_softmax(row)
        q = [eps / k + (1 - eps) * (i == t) for i in range(k)]
        expected += -sum(qi * li for qi, li in zip(q, lp, strict=True))
    expected /= 2
    got = build_hard_loss("ce", label_smoothing=eps)(LOGITS, TARGET)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_focal_gamma0_equals_ce_also_with_class_weights():
    w = torch.tensor([1.0, 2.0, 0.5])
    focal = build_hard_loss("focal", gamma=0.0, class_weights=w)
    assert torch.allclose(focal(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET, weight=w))
    assert torch.allclose(FocalLoss(gamma=0.0)(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET))


def test_focal_gamma2_matches_hand_computation():
    expected = 0.0
    for row, t in zip(LOGITS.tolist(), TARGET.tolist(), strict=True):
        lp = _log_softmax(row)[t]
        expected += -((1 - math.exp(lp)) ** 2) * lp
    expected /= 2
    assert FocalLoss(gamma=2.0)(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)
    # per-class alpha scales each sample by its target's alpha
    alpha = torch.tensor([0.25, 1.0, 0.75])
    lp = [_log_softmax(r)[t] for r, t in zip(LOGITS.tolist(), TARGET.tolist(), strict=True)]
    exp_alpha = (
        sum(-a * (1 - math.exp(v)) ** 2 * v for a, v in zip([0.25, 0.75], lp, strict=True)) / 2
    )
    assert FocalLoss(gamma=2.0, alpha=alpha)(LOGITS, TARGET).item() == pytest.approx(
        exp_alpha, abs=1e-6
    )


def test_kd_loss_matches_manual_kl_and_is_zero_for_identical_logits():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.3, 0.2, 0.1]])
    t = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    T = 3.0
    manual = 0.0
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        ls = _log_softmax([v / T for v in srow])
        lt = _log_softmax([v / T for v in trow])
        manual += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    manual = manual / 2 * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(manual, abs=1e-6)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_class_weights_from_counts():
    w = class_weights_from_counts([10, 40, 0, 50], "inverse")
    raw = [1 / 10, 1 / 40, 1 / 50]
    scale = 3 / sum(raw)
    assert torch.allclose(w, torch.tensor([raw[0] * scale, raw[1] * scale, 0.0, raw[2] * scale]))
    assert not torch.isnan(w).any() and w[[0, 1, 3]].mean().item() == pytest.approx(1.0)
    s = class_weights_from_counts([1, 4], "sqrt_inverse")
    assert torch.allclose(s, torch.tensor([1.0, 0.5]) * 2 / 1.5)
    e = class_weights_from_counts([10, 1000], "effective", beta=0.99)
    raw_e = torch.tensor([(1 - 0.99) / (1 - 0.99**10), (1 - 0.99) / (1 - 0.99**1000)])
    assert torch.allclose(e, raw_e * 2 / raw_e.sum())
    with pytest.raises(UserError, match="mode"):
        class_weights_from_counts([1, 2], "bogus")
    with pytest.raises(UserError, match="0 training images"):
        class_weights_from_counts([0, 0], "inverse")


def test_unknown_loss_and_focal_with_smoothing_are_user_errors():
    with pytest.raises(UserError, match="ce"):
        build_hard_loss("hinge")
    with pytest.raises(UserError, match="label_smoothing"):
        build_hard_loss("focal", label_smoothing=0.1)
