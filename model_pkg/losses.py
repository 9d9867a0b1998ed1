"""Losses, each a small standalone function or module so it can be tested against a naive reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pair_bce_loss"]


def pair_bce_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy on same/different logits.

    Args:
        logits: (B,) raw scores, > 0 means "same animal".
        labels: (B,) 1 for same, 0 for different.
        pos_weight: weight of the positive class (e.g. #neg / #pos when positives are rare).
    """
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)
