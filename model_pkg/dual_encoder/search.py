"""Text-to-image search with a `DualEncoderModel`: type a sentence, get the matching photos.

    engine = ImageSearchEngine(AutoModel.from_pretrained("models/dual-encoder"))
    engine.build_image_database(paths)            # every photo through the image tower once
    engine.save_database("photos.db")             # a vector store folder, atomic, with the model's id
    engine.search_database("a black dog running on the beach", top_k=10)   # -> [SearchHit(path, score)]
    engine.rank_images("two children playing", some_paths, top_k=3)       # no database needed

Scores are cosine similarities in the shared space; a model with a query bank (`DualEncoderModel.set_query_bank`)
adds each photo's offset (`image_score_offsets`), which takes back what a photo gains by resembling every caption.
The database is a plain `gallery.index.VectorStore` (cosine, faiss, the gallery's files; no voting, no thresholds):
one row per photo (`database_vectors`: the embedding, and
with a bank the offset and a norm-equalising column, so the index's cosine ranks by cosine + offset exactly),
labelled by its path, tagged with `model_fingerprint(model)` so a database is never queried with a different model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..gallery.index import VectorStore
from ..modeling_utils import model_identity
from ..photo_batches import PixelLoader, embed_batches
from ..transforms import create_transform
from .modeling_dual_encoder import DualEncoderModel

logger = logging.getLogger(__name__)

__all__ = [
    "ImageSearchEngine",
    "SearchHit",
    "database_vectors",
    "embed_images",
    "model_fingerprint",
    "query_vectors",
    "score_scale",
]

MAX_QUERY_CHARS = 10_000


@dataclass
class SearchHit:
    """One photo found for a query: its path and score, the cosine similarity plus the photo's query-bank offset when
    the model has a bank (hits are sorted best first)."""

    path: str
    score: float


def model_fingerprint(model: DualEncoderModel) -> str:
    """`petmatch_dual_encoder:<16 hex>`: `modeling_utils.model_identity`, equal for the same weights and
    forward-pass config wherever the model was loaded from (never a path or a library version)."""
    return model_identity(model)


def database_vectors(model: DualEncoderModel, image_embeds: np.ndarray) -> np.ndarray:
    """Image embeddings (N, P) -> the rows a search database stores. Without a query bank, the embeddings. With one,
    (N, P + 2): the embedding, the photo's offset (`image_score_offsets`, in [-1, 1]) and a last column that gives
    every row the same norm, sqrt(2): the database's cosine (it normalises rows and queries) then ranks by embedding
    cosine + offset exactly, and `score_scale` turns it back into that sum."""
    image_embeds = np.asarray(image_embeds, dtype=np.float32)
    if model.query_bank is None:
        return image_embeds
    offsets = model.image_score_offsets(torch.from_numpy(image_embeds)).numpy().astype(np.float64)
    fill = np.sqrt(np.maximum(1.0 - offsets**2, 0.0))
    return np.concatenate([image_embeds, offsets[:, None], fill[:, None]], axis=1).astype(np.float32)


def query_vectors(model: DualEncoderModel, text_embeds: np.ndarray) -> np.ndarray:
    """Text embeddings (M, P) -> search queries against `database_vectors`: with a bank, columns 1 and 0 appended,
    so a query's dot product with a row is its cosine with the photo plus the photo's offset."""
    text_embeds = np.asarray(text_embeds, dtype=np.float32)
    if model.query_bank is None:
        return text_embeds
    extra = np.tile(np.array([[1.0, 0.0]], np.float32), (len(text_embeds), 1))
    return np.concatenate([text_embeds, extra], axis=1)


def score_scale(model: DualEncoderModel) -> float:
    """The database's cosine of a query and a row, times this, is the photo's score (cosine + offset)."""
    if model.query_bank is None:
        return 1.0
    return 2.0  # |query row| = |database row| = sqrt(2)


def database_dim(model: DualEncoderModel) -> int:
    return model.config.projection_dim + (2 if model.query_bank is not None else 0)


@torch.no_grad()
def embed_images(
    model: DualEncoderModel,
    image_paths: Sequence[str],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Photos -> (embeddings (N, P) float32 of the readable ones, their paths, [(path, reason)] skipped)."""
    load = PixelLoader(create_transform(model.vision_model.backbone.data_config, train=False))
    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    paths = [os.fspath(p) for p in image_paths]

    def embed(pixels: list) -> np.ndarray:
        return model.get_image_features(torch.stack(pixels).to(device)).float().cpu().numpy()

    try:
        out = embed_batches(
            paths, embed, load=load, batch_size=batch_size, on_error="skip", progress=progress, dim=model.config.projection_dim
        )
    finally:
        model.train(was_training)
    skipped = [(paths[i], reason) for i, reason in out.skipped]
    for path, reason in skipped:
        logger.warning("skipped unreadable image %s: %s", path, reason)
    return out.vectors, [paths[i] for i in out.kept], skipped


class ImageSearchEngine:
    """Search photos by text with a dual encoder (see the module docstring)."""

    def __init__(self, model: DualEncoderModel, batch_size: int = 32):
        if not isinstance(model, DualEncoderModel):
            raise TypeError(f"ImageSearchEngine needs a DualEncoderModel, got {type(model).__name__}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.batch_size = batch_size
        self.model_id = model_fingerprint(model)
        self.database: VectorStore | None = None
        self.skipped: list[tuple[str, str]] = []
        self.root: str | None = None  # stored paths are relative to this folder (see build_image_database)

    # -- database ------------------------------------------------------------------------------------
    def build_image_database(
        self,
        image_paths: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
        root: str | os.PathLike | None = None,
    ) -> None:
        """Embed `image_paths` into a new database (replacing any previous one). Unreadable photos are
        skipped and listed in `self.skipped` as (path, reason); `progress(done, total)` is called per batch.

        `root`: store the paths relative to this folder, so a saved database still finds its photos when the
        folder moves (a shipped demo index, a clone elsewhere); `load_database(directory, root=...)` and the
        hits then give `root`-joined paths."""
        paths = [os.fspath(p) for p in image_paths]
        if not paths:
            raise ValueError("build_image_database needs at least one image path.")
        emb, kept, self.skipped = embed_images(self.model, paths, self.batch_size, progress)
        if not kept:
            raise ValueError(f"none of the {len(paths)} images could be read (e.g. {self.skipped[0][1]}).")
        rows = database_vectors(self.model, emb)
        database = VectorStore(rows.shape[1], "ip", approximate_above=max(len(kept), 200_000), model_id=self.model_id)
        if root is not None:
            kept = [os.path.relpath(os.path.abspath(p), os.path.abspath(root)) for p in kept]
        database.add(rows, kept, metadata=[{"path": p} for p in kept])
        self.database = database
        self.root = None if root is None else os.fspath(root)

    def save_database(self, directory: str | os.PathLike) -> None:
        """Write the database to `directory` atomically (a vector store folder with checksums, `VectorStore.save`)."""
        self.database_or_raise().save(directory)

    def load_database(self, directory: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
        """Load a saved database; `GalleryMismatchError` if another model (or embedding size) built it.
        `root`: the folder its relative paths are resolved against (as given to `build_image_database`)."""
        self.database = VectorStore.load(directory, expected_dim=database_dim(self.model), expected_model_id=self.model_id)
        self.root = None if root is None else os.fspath(root)

    def resolve_path(self, path: str) -> str:
        """A path as stored in the database -> the file's path (joined to the database's `root`)."""
        return path if self.root is None or os.path.isabs(path) else os.path.join(self.root, path)

    def database_or_raise(self) -> VectorStore:
        if self.database is None:
            raise RuntimeError("no image database: call build_image_database(paths) or load_database(directory) first.")
        return self.database

    # -- queries ---------------------------------------------------------------------------------------
    def encode_query(self, query: str) -> np.ndarray:
        """A query -> its (1, D) search vector for the database (`query_vectors`). Empty or non-text queries are a
        ValueError; very long ones are truncated to the text tower's `max_length` tokens."""
        if not isinstance(query, str):
            raise ValueError(f"the query must be a string, got {type(query).__name__}.")
        if not query.strip():
            raise ValueError("the query is empty: type a description of the photo, e.g. 'a black dog running on the beach'.")
        return query_vectors(self.model, self.model.encode_text([query[:MAX_QUERY_CHARS]]).numpy())

    def search_encoded(self, query: np.ndarray, top_k: int = 10) -> tuple[np.ndarray, list[str]]:
        """An `encode_query` vector -> (scores (k,), stored paths) of the database's `top_k` best photos, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        scores, labels, _ = self.database_or_raise().search(query, k=top_k)
        return scores[0] * score_scale(self.model), labels[0]

    def search_database(self, query: str, top_k: int = 10) -> list[SearchHit]:
        """The `top_k` photos of the database that best match `query`, best first."""
        scores, labels = self.search_encoded(self.encode_query(query), top_k)
        return [SearchHit(path=self.resolve_path(p), score=float(s)) for p, s in zip(labels, scores)]

    def rank_images(self, text_query: str, image_paths: Sequence[str], top_k: int = 10) -> list[SearchHit]:
        """Rank `image_paths` (unreadable ones skipped, see `self.skipped`) by how well they match `text_query`."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        query = self.encode_query(text_query)
        emb, kept, self.skipped = embed_images(self.model, list(image_paths), self.batch_size)
        scores = (database_vectors(self.model, emb) @ query[0]) if len(kept) else np.zeros(0)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [SearchHit(path=kept[i], score=float(scores[i])) for i in order]
