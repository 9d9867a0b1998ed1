"""`evaluate text-search`: text-to-image and image-to-text retrieval of a dual encoder, every image of a split
list against all of that list's captions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..loading import load_dual_model
from .common import EvaluationError

__all__ = ["evaluate_text_search"]


def evaluate_text_search(
    model: Any, images: str | os.PathLike, captions: str | os.PathLike, split_list: str | os.PathLike, batch_size: int = 64
) -> dict:
    """Every image of ``split_list`` (found in ``images``) against all of its captions in ``captions``.

    Returns ``{"text_to_image": {"r1", "r5", "r10", "mrr"}, "image_to_text": {...}}`` plus the counts,
    model, files and seconds. Listed images missing from ``images`` are skipped and counted.
    """
    from ..dual_encoder import DualEncoderModel
    from ..dual_encoder.data import caption_pairs, load_flickr8k_splits
    from ..dual_encoder.evaluation import evaluate_retrieval

    start = time.perf_counter()
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise EvaluationError(f"image folder {str(image_dir)!r} does not exist: pass --images <folder with the photos>")
    net = model if isinstance(model, DualEncoderModel) else load_dual_model(model)
    splits = load_flickr8k_splits(image_dir.parent, captions, {"eval": split_list}, image_dir=image_dir)
    paths, texts, owner = caption_pairs(splits["eval"])
    result: dict[str, Any] = dict(evaluate_retrieval(net, paths, texts, owner, batch_size=batch_size))
    skipped = json.loads(splits["eval"].info.description or "{}").get("skipped", {})
    result.update(
        num_images=len(paths),
        num_captions=len(texts),
        skipped_images=skipped,
        model=os.path.abspath(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        captions=os.path.abspath(os.fspath(captions)),
        split_list=os.path.abspath(os.fspath(split_list)),
        seconds=round(time.perf_counter() - start, 3),
    )
    return result
