"""Cross-modal retrieval on the dev split: how the dual encoder is judged while it trains and after.

Every dev image against all dev captions: text->image and image->text R@1/5/10 (percent) and MRR
(`metrics.text_image_retrieval_metrics`), from pixels and text or from the cached outputs of frozen towers.
`trainer.DualEncoderTrainer` makes this HF Trainer's evaluation (instead of a loss), and `flat_metrics` names
the numbers the way the Trainer logs them, with `recall_mean`, the mean of the six recalls, that selects the
best checkpoint. Separate from `training.py` because `python -m model_pkg.evaluate text-search` and the
text-search benchmark evaluate saved models with it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..metrics import text_image_retrieval_metrics
from .modeling_dual_encoder import DualEncoderModel

__all__ = ["evaluate_retrieval", "flat_metrics"]


@torch.no_grad()
def evaluate_retrieval(
    model: DualEncoderModel,
    image_paths: Sequence[str],
    captions: Sequence[str],
    caption_image: Sequence[int],
    image_features: torch.Tensor | None = None,
    text_features: torch.Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Every image against all captions: text->image and image->text R@1/5/10 (percent) and MRR. Text->image
    ranks as `ImageSearchEngine` does (with the model's query-bank offsets, if it has a bank).
    `image_features` / `text_features`: cached outputs of frozen towers, used instead of pixels / text."""
    from .search import database_vectors, embed_images, query_vectors

    was_training = model.training
    model.eval()
    try:
        if image_features is not None:
            device = model.logit_scale.device
            img = torch.cat(
                [
                    model.get_image_features(image_features=image_features[i : i + batch_size].to(device)).float().cpu()
                    for i in range(0, len(image_features), batch_size)
                ]
            ).numpy()
        else:
            img, kept, skipped = embed_images(model, image_paths, batch_size=min(batch_size, 64))
            if skipped:
                raise ValueError(f"{len(skipped)} evaluation image(s) could not be read, e.g. {skipped[0]}")
        if text_features is not None:
            txt = torch.cat(
                [
                    model.get_text_features(text_features=text_features[i : i + batch_size].to(model.logit_scale.device))
                    .float()
                    .cpu()
                    for i in range(0, len(text_features), batch_size)
                ]
            ).numpy()
        else:
            txt = model.encode_text(list(captions), batch_size=batch_size).numpy()
    finally:
        model.train(was_training)
    result = text_image_retrieval_metrics(img, txt, caption_image)
    if model.query_bank is not None:  # text->image ranked as the search ranks (cosine + the photo's offset)
        result["text_to_image"] = text_image_retrieval_metrics(
            database_vectors(model, img), query_vectors(model, txt), caption_image
        )["text_to_image"]
    return result


def flat_metrics(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"text_to_image": {"r1", ...}, ...} -> {"t2i_r1", ..., "i2t_mrr", "recall_mean"}."""
    short = {"text_to_image": "t2i", "image_to_text": "i2t"}
    out = {f"{short[d]}_{k}": v for d, values in result.items() for k, v in values.items()}
    out["recall_mean"] = float(np.mean([v for k, v in out.items() if "_r" in k]))
    return out
