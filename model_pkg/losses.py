"""Losses, each a small standalone function or module so it can be tested against a naive reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArcFaceHead", "arcface_margin_logits", "max_violation_loss", "pair_bce_loss", "symmetric_contrastive_loss"]


def pair_bce_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy on same/different logits.

    Args:
        logits: (B,) raw scores, > 0 means "same animal".
        labels: (B,) 1 for same, 0 for different.
        pos_weight: weight of the positive class (e.g. #neg / #pos when positives are rare).
    """
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)


# Cosines are clamped this far inside [-1, 1]: sin(theta) = sqrt(1 - cos^2) then stays > 0, so its
# gradient -cos/sin is finite (at |cos| = 1 exactly it would be inf, and inf * 0 = NaN).
_COS_EPS = 1e-7


def arcface_margin_logits(
    cosine: torch.Tensor, labels: torch.Tensor, margin: float, scale: float, easy_margin: bool = False
) -> torch.Tensor:
    """ArcFace logits (Deng et al., CVPR 2019): `s * cos(theta_y + m)` for each row's target class y,
    `s * cos(theta_j)` for the other classes; feed them to `F.cross_entropy`.

    `cos(theta + m)` is computed without `arccos` as `cos * cos(m) - sin * sin(m)`. It decreases with
    theta only while `theta + m <= pi`; past that (`cos <= th = cos(pi - m)`) the target logit falls back
    to `cos - mm` with `mm = m * sin(m)` (InsightFace's `th` / `mm` rule), a CosFace-style penalty that
    keeps the target logit decreasing in theta (it steps from -1 down to `-cos(m) - mm` at the switch).
    `easy_margin` instead applies the margin only where `cos > 0`.
    Computed in at least float32 whatever the autocast dtype.

    Args:
        cosine: (B, C) cosine similarity of each embedding to each class centre.
        labels: (B,) target class indices.
        margin: additive angular margin m in radians (0 gives the normalised softmax, NormFace).
        scale: s, the radius of the hypersphere the logits live on.
        easy_margin: margin only for targets closer than 90 degrees.
    """
    dtype = torch.promote_types(cosine.dtype, torch.float32)
    cosine = cosine.to(dtype).clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)
    if margin == 0.0:
        return scale * cosine
    sine = torch.sqrt(1.0 - cosine * cosine)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
    if easy_margin:
        phi = torch.where(cosine > 0, phi, cosine)
    else:
        th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
        phi = torch.where(cosine > th, phi, cosine - mm)
    target = F.one_hot(labels.long(), cosine.shape[-1]).to(torch.bool)  # (B, C)
    return scale * torch.where(target, phi, cosine)


class ArcFaceHead(nn.Module):
    """Additive angular margin softmax over `num_classes` learned class centres.

    `margin` and `scale` are plain attributes, so a training callback can change them between steps
    (a margin schedule); the class centres `weight` (C, E) are the module's only parameter.

    `forward(embeddings, labels)` returns `(loss, logits)`: `logits` (B, C) are `scale * cos` without
    margin (what a classifier would predict with), `loss` the cross-entropy of the margin logits,
    `None` without labels.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, margin: float = 0.5, scale: float = 64.0, easy_margin: bool = False
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1 for a margin head.")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin

    @property
    def margin(self) -> float:
        return self._margin

    @margin.setter
    def margin(self, value: float):
        if not 0.0 <= float(value) < math.pi / 2:
            raise ValueError(f"margin={value} must lie in [0, pi/2) radians.")
        self._margin = float(value)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float):
        if not float(value) > 0.0:
            raise ValueError(f"scale={value} must be > 0.")
        self._scale = float(value)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) embeddings -> (B, C) cosine to every class centre, in float32 even under autocast."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            weight = F.normalize(self.weight.float(), dim=-1)
            return F.linear(F.normalize(embeddings.float(), dim=-1), weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        cosine = self.cosine(embeddings)  # (B, C)
        logits = self.scale * cosine
        if labels is None:
            return None, logits
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            margin_logits = arcface_margin_logits(cosine, labels, self.margin, self.scale, self.easy_margin)
            return F.cross_entropy(margin_logits, labels.long()), logits

    def extra_repr(self) -> str:
        c, e = self.weight.shape
        return f"embedding_size={e}, num_classes={c}, margin={self.margin}, scale={self.scale}, easy_margin={self.easy_margin}"


def symmetric_contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: row i of the (B, B) text x image logits matches image i.

    The mean of the text->image and image->text cross-entropies, computed in float32.
    """
    if logits_per_text.ndim != 2 or logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(f"logits_per_text must be a square (B, B) matrix, got shape {tuple(logits_per_text.shape)}.")
    logits = logits_per_text.float()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def max_violation_loss(similarity: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++'s hinge on the hardest negative (Faghri et al. 2018): row i of the (B, B) text x image cosine
    similarities matches image i; for each text, the image scoring highest among the wrong ones must stay
    `margin` below its own image, and the same for each image. Mean over both directions."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (B, B) matrix, got shape {tuple(similarity.shape)}.")
    sim = similarity.float()
    positive = sim.diagonal()
    wrong = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), float("-inf"))
    text_to_image = (margin + wrong.max(dim=1).values - positive).clamp(min=0)
    image_to_text = (margin + wrong.max(dim=0).values - positive).clamp(min=0)
    return 0.5 * (text_to_image.mean() + image_to_text.mean())
