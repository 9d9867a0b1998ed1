"""Adaptive score normalisation (s-norm) of the siamese head's cosine, and the masked mean over a set's photos or
tokens that it shares with the set pooling and the cross-attention head of `modeling_pair_matcher`.

Apart from the model file because it is a self-contained function of vectors (no parameters), tested on its own
against the formula (`tests/training/test_train.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PhotoSet", "adaptive_snorm", "masked_mean"]

PhotoSet = tuple[torch.Tensor, torch.Tensor]  # (B, N, H) photo vectors, (B, N) True for real photos


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, H), mask (B, L) bool -> (B, H) mean over the True positions."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def adaptive_snorm(
    score: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    cohort: torch.Tensor,
    top_k: int,
    photos_a: PhotoSet | None = None,
    photos_b: PhotoSet | None = None,
) -> torch.Tensor:
    """Adaptive symmetric score normalisation: each side's cosine to its `top_k` closest cohort identities
    gives the mean and spread of "different animal" scores for that side, and the pair's cosine is measured
    in those units. a, b (B, H) unit vectors, cohort (C, H) unit rows. With `photos_a` (and likewise `_b`),
    that side's mean and spread are the means over its real photos of each photo's own (`cohort_stats="photos"`)."""

    def stats(x: torch.Tensor, photos: PhotoSet | None) -> tuple[torch.Tensor, torch.Tensor]:
        # the set vector is a set of one "photo"
        rows, mask = (x.unsqueeze(1), None) if photos is None else (F.normalize(photos[0], dim=-1), photos[1])
        top = (rows @ cohort.T).topk(top_k, dim=-1).values  # (B, N, top_k)
        per_row = torch.stack([top.mean(-1), top.std(-1).clamp_min(1e-4)], dim=-1)  # (B, N, 2)
        mu, sd = (per_row[:, 0] if mask is None else masked_mean(per_row, mask)).unbind(-1)
        return mu, sd

    mu_a, sd_a = stats(a, photos_a)
    mu_b, sd_b = stats(b, photos_b)
    return 0.5 * ((score - mu_a) / sd_a + (score - mu_b) / sd_b)
