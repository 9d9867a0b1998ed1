"""`pair_bce_loss` against the textbook binary cross-entropy, written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from model_pkg.losses import pair_bce_loss


def naive_bce(logits: list[float], labels: list[float], pos_weight: float = 1.0) -> float:
    """mean_i -[w * y_i * log(sigmoid(x_i)) + (1 - y_i) * log(1 - sigmoid(x_i))], one pair at a time."""
    total = 0.0
    for x, y in zip(logits, labels):
        p = 1.0 / (1.0 + math.exp(-x))
        total += -(pos_weight * y * math.log(p) + (1.0 - y) * math.log(1.0 - p))
    return total / len(logits)


LOGITS = [2.0, -1.5, 0.0, 0.3, -4.0, 6.0]
LABELS = [1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("pos_weight", [None, 1.0, 3.0, 0.25])
def test_matches_naive_formula(pos_weight):
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    labels = torch.tensor(LABELS)  # integer labels, as a collator produces them
    loss = pair_bce_loss(logits, labels, pos_weight=pos_weight)
    expected = naive_bce(LOGITS, LABELS, 1.0 if pos_weight is None else pos_weight)
    assert loss.ndim == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_pos_weight_scales_only_positive_pairs():
    logits = torch.tensor(LOGITS)
    labels = torch.tensor(LABELS, dtype=torch.float32)
    pos = [(x, y) for x, y in zip(LOGITS, LABELS) if y == 1]
    neg = [(x, y) for x, y in zip(LOGITS, LABELS) if y == 0]
    pos_sum = naive_bce(*zip(*pos)) * len(pos)
    neg_sum = naive_bce(*zip(*neg)) * len(neg)
    loss = pair_bce_loss(logits, labels, pos_weight=4.0)
    assert loss.item() == pytest.approx((4.0 * pos_sum + neg_sum) / len(LOGITS), rel=1e-5)


def test_gradient_matches_sigmoid_minus_label():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(LABELS, dtype=torch.float64)
    pair_bce_loss(logits, labels).backward()
    expected = (torch.sigmoid(logits.detach()) - labels) / len(LOGITS)
    torch.testing.assert_close(logits.grad, expected)


def test_extreme_logits_stay_finite():
    # A confident wrong answer costs about |logit|; the naive formula would give log(0) = -inf here.
    logits = torch.tensor([200.0, -200.0, 200.0, -200.0])
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = pair_bce_loss(logits, labels, pos_weight=2.0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx((200.0 + 2.0 * 200.0 + 0.0 + 0.0) / 4, rel=1e-6)


def test_max_violation_loss_is_the_hinge_on_the_hardest_negative():
    from model_pkg.losses import max_violation_loss

    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.3, 0.7]])
    # text->image hardest wrong: 0.8, 0.6, 0.3; image->text hardest wrong: 0.2, 0.8, 0.6 (columns)
    t2i = [max(0, 0.2 + 0.8 - 0.9), max(0, 0.2 + 0.6 - 0.5), max(0, 0.2 + 0.3 - 0.7)]
    i2t = [max(0, 0.2 + 0.2 - 0.9), max(0, 0.2 + 0.8 - 0.5), max(0, 0.2 + 0.6 - 0.7)]
    expected = 0.5 * (sum(t2i) / 3 + sum(i2t) / 3)
    assert max_violation_loss(sim, margin=0.2).item() == pytest.approx(expected)
    assert max_violation_loss(torch.eye(4), margin=0.2).item() == 0.0  # every positive beats every negative by > 0.2
    with pytest.raises(ValueError, match="square"):
        max_violation_loss(torch.zeros(2, 3))
