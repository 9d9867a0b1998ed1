"""What a run leaves on disk: checkpoint discovery for auto-resume, `--fresh`, and atomic saving.

A run resumes from its newest complete checkpoint unless `fresh` is set, in which case what the old run
left is removed first. Every model folder a run writes (the final model, the frozen-phase model, with or
without a model card) is written into a temporary sibling and swapped in, so a run killed while saving
leaves the folder whole or absent, never one that no longer loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..hub import save_image_processor, write_model_card

logger = logging.getLogger(__name__)

__all__ = ["last_checkpoint", "remove_previous_run", "save_atomically", "save_with_model_card"]


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last), for auto-resume."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(name.split("-")[-1]), path))
    return max(found)[1] if found else None


def remove_previous_run(*folders: str) -> None:
    """`--fresh`: starting over, the old run's checkpoints (and frozen-phase model) go. Call it on the main
    process only."""
    for stale in folders:
        if os.path.isdir(stale):
            logger.info("--fresh: removing %s", stale)
            shutil.rmtree(stale)


def save_atomically(directory: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """`write(tmp_dir)` into a temporary sibling, then swap it in: `directory` is always whole or absent."""
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(str(tmp))
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_with_model_card(model: Any, save_directory: str, weights_dtype: torch.dtype | None = None, **card: Any) -> None:
    """`model.save_pretrained` + a model card (README.md, `hub.write_model_card(**card)`, named after the
    folder) + the image processor of a model with an image tower (`hub.save_image_processor`), swapped into place
    atomically; ready for `push_folder_to_hub`."""

    def write(directory: str) -> None:
        model.save_pretrained(directory, weights_dtype=weights_dtype)
        save_image_processor(model, directory)
        write_model_card(directory, model_name=os.path.basename(os.path.normpath(save_directory)), **card)

    save_atomically(save_directory, write)
