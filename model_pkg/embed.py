"""Embed a photo collection into sharded, resumable embeddings, spread over processes with accelerate.

    python -m model_pkg.embed --model models/arcface-embedder --images ../shared/data/dogfacenet --out runs/emb/dogs
    accelerate launch --num_processes 2 -m model_pkg.embed --model ... --images ... --out ...   # 2 processes (CPU or GPUs)
    accelerate launch --multi_gpu --num_machines 4 ... -m model_pkg.embed ...                  # several nodes, shared --out

``--images`` is a folder (every image below it, recursively; a photo's id is its path relative to the
folder and its label the name of its top-level sub-folder, "" for loose photos) or a ``datasets`` folder
saved with ``Dataset.save_to_disk`` that has an ``image_path`` column (optional ``id`` and ``label``).

The output folder holds

* ``shard-<hash>.parquet``: columns ``id`` (string), ``label`` (string), ``embedding`` (float32 list of
  the model's size), L2-normalised; photos that could not be read are listed in the file's schema
  metadata (``failed``) instead. Each shard is written to a temporary file and renamed, so a shard that
  exists under its final name is complete: that rename is the commit point.
* ``manifest.json``: the model's identity (``model_id``), the dimension, every finished shard with its
  row count and sha256, the failed photos, the total, and ``complete`` (every listed photo is embedded or
  failed). Written (atomically) at the start of a run and again when it ends.

Resuming: a run lists the photos, skips every id already in a finished shard, and embeds the rest; a
killed run therefore continues where it stopped, and its half-written shard (a temporary file) is
discarded. No photo is embedded twice in the result: the pending photos are split between processes
(``PartialState.split_between_processes``) after every process has read the same finished shards, and
the final manifest drops any id that a concurrent run put into a second shard. An output folder made by
another model is refused.

Read the result with :func:`iter_embeddings` (shard by shard, bounded memory) or :func:`load_embeddings`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .data import load_image
from .data.folders import IMAGE_EXTENSIONS
from .data.images import ImageLoadError
from .fileio import atomic_write, atomic_write_json, sha256_file
from .modeling_utils import model_identity
from .transforms import create_transform

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingsError",
    "MANIFEST_FILE",
    "Photo",
    "embed_collection",
    "iter_embeddings",
    "list_photos",
    "load_embeddings",
    "main",
    "part_shards",
    "read_manifest",
]

FORMAT = "petmatch-embeddings"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"


class EmbeddingsError(ValueError):
    """The photos, the model or the output folder cannot be used as given (the message says what to change)."""


@dataclass(frozen=True)
class Photo:
    id: str
    path: str
    label: str


# --------------------------------------------------------------------------- #
# Listing photos
# --------------------------------------------------------------------------- #
def _is_dataset_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() and (path / "state.json").is_file()


def list_photos(images: str | os.PathLike) -> list[Photo]:
    """The photos of a folder (recursive) or of a saved ``datasets`` folder, sorted by id; ids are unique."""
    root = Path(images)
    if not root.is_dir():
        raise EmbeddingsError(f"--images {str(root)!r} is not a folder: pass a folder of photos or a saved datasets folder")
    photos: list[Photo]
    if _is_dataset_folder(root):
        import datasets

        table = datasets.load_from_disk(str(root))
        if not isinstance(table, datasets.Dataset):
            raise EmbeddingsError(f"{str(root)!r} holds a DatasetDict: pass one split's folder (e.g. {str(root / 'train')!r})")
        if "image_path" not in table.column_names:
            raise EmbeddingsError(
                f"dataset {str(root)!r} has no 'image_path' column (it has {table.column_names}): store the photo file "
                "paths in a column named image_path"
            )
        cols = table.with_format(None)
        paths = [str(p) for p in cols["image_path"][:]]
        ids = [str(v) for v in cols["id"][:]] if "id" in table.column_names else paths
        labels = [str(v) for v in cols["label"][:]] if "label" in table.column_names else [""] * len(paths)
        photos = [Photo(i, p if os.path.isabs(p) else str(root / p), lab) for i, p, lab in zip(ids, paths, labels)]
    else:
        exts = tuple(IMAGE_EXTENSIONS)
        photos = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root)
            for name in filenames:
                if name.startswith(".") or not name.lower().endswith(exts):
                    continue
                rel = (rel_dir / name).as_posix()
                label = rel_dir.parts[0] if rel_dir.parts else ""
                photos.append(Photo(rel, os.path.join(dirpath, name), label))
    if not photos:
        raise EmbeddingsError(f"no photos in {str(root)!r} (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    photos.sort(key=lambda p: p.id)
    repeated = sorted({a.id for a, b in zip(photos, photos[1:]) if a.id == b.id})
    if repeated:
        raise EmbeddingsError(f"photo ids must be unique, repeated: {repeated[:5]}: give every row of the dataset its own id")
    return photos


# --------------------------------------------------------------------------- #
# Shards and manifest
# --------------------------------------------------------------------------- #
def _shard_name(ids: Sequence[str]) -> str:
    # named by its content: a resumed run never reuses the name of a finished shard (its ids are done)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"{SHARD_PREFIX}{digest}{SHARD_SUFFIX}"


def _shard_files(out: Path) -> list[Path]:
    return sorted(p for p in out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}") if not p.name.startswith("."))


def _read_shard_ids(path: Path) -> tuple[list[str], list[str]]:
    """(embedded ids, failed ids) of a finished shard."""
    try:
        table = pq.read_table(path, columns=["id"])
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingsError(
            f"shard {str(path)!r} is unreadable ({exc}): delete it and run again to re-embed its photos"
        ) from exc
    meta = table.schema.metadata or {}
    failed = json.loads(meta.get(b"failed", b"[]"))
    return [str(v) for v in table.column("id").to_pylist()], failed


def _write_shard(path: Path, ids: list[str], labels: list[str], vectors: np.ndarray, failed: list[str]) -> None:
    dim = int(vectors.shape[1])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "id": pa.array(ids, type=pa.string()),
            "label": pa.array(labels, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    ).replace_schema_metadata({b"failed": json.dumps(failed).encode(), b"dim": str(dim).encode()})
    atomic_write(path, lambda fh: pq.write_table(table, fh), binary=True)


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an embeddings folder (raises :class:`EmbeddingsError` when missing or not one)."""
    path = Path(out) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbeddingsError(f"{str(path)!r} does not exist: run `python -m model_pkg.embed ... --out {out}` first") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmbeddingsError(f"{str(path)!r} is corrupt ({exc}): run the embedding command again to rewrite it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EmbeddingsError(f"{str(path)!r} is not a petmatch embeddings manifest")
    return manifest


def _finalise(out: Path, base: dict[str, Any], total: int | None) -> dict[str, Any]:
    """Rewrite the manifest from the finished shards; an id already in an earlier shard is dropped from later ones."""
    seen: set[str] = set()
    shards: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in _shard_files(out):
        ids, bad = _read_shard_ids(path)
        dup = [i for i in ids if i in seen]
        if dup:  # only a second run writing into the same folder at the same time can cause this
            logger.warning("%s repeats %d ids of earlier shards: rewriting it without them", path.name, len(dup))
            table = pq.read_table(path)
            keep = np.array([i not in seen for i in ids])
            if keep.any():
                vecs = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(len(ids), -1)[keep]
                labels = [lab for lab, k in zip(table.column("label").to_pylist(), keep) if k]
                _write_shard(path, [i for i, k in zip(ids, keep) if k], labels, vecs, bad)
                ids = [i for i, k in zip(ids, keep) if k]
            else:
                path.unlink()
                continue
        seen.update(ids)
        failed.extend(b for b in bad if b not in seen)
        shards.append({"file": path.name, "rows": len(ids), "failed": len(bad), "sha256": sha256_file(path)})
    manifest = dict(base)
    manifest.update(
        shards=shards,
        num_embeddings=len(seen),
        failed=sorted(set(failed)),
        num_photos=total,
        complete=total is not None and len(seen) + len(set(failed)) >= total,
    )
    atomic_write_json(manifest, out / MANIFEST_FILE)
    return manifest


# --------------------------------------------------------------------------- #
# Embedding
# --------------------------------------------------------------------------- #
class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, photos: Sequence[Photo], transform) -> None:
        self.photos = photos
        self.transform = transform

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            return i, self.transform(load_image(self.photos[i].path))
        except (ImageLoadError, OSError) as exc:
            logger.warning("skipping %s: %s", self.photos[i].path, exc)
            return i, None


def _collate(items):
    ok = [(i, x) for i, x in items if x is not None]
    bad = [i for i, x in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], bad, pixels


@torch.no_grad()
def _embed_shard(model, photos: Sequence[Photo], device, batch_size: int, num_workers: int):
    loader = torch.utils.data.DataLoader(
        _PhotoDataset(photos, create_transform(model.backbone.data_config, train=False)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    rows: list[int] = []
    failed: list[str] = []
    chunks: list[np.ndarray] = []
    for idx, bad, pixels in loader:
        failed.extend(photos[i].id for i in bad)
        if pixels is None:
            continue
        pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)  # ~3x faster convolutions on CPU
        emb = model.get_image_features(pixel_values=pixels)  # (B, E), L2-normalised
        chunks.append(emb.float().cpu().numpy())
        rows.extend(idx)
    dim = int(model.config.embedding_size)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return [photos[i] for i in rows], vectors, failed


def _load_model(path: str | os.PathLike):
    from .evaluation import EvaluationError, load_arcface_model  # the shared loading rules (safetensors only, clear errors)

    try:
        return load_arcface_model(path)
    except EvaluationError as exc:
        raise EmbeddingsError(str(exc).replace("`evaluate gallery`", "`model_pkg.embed`")) from exc


def embed_collection(
    model: str | os.PathLike | torch.nn.Module,
    images: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 4096,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Embed every photo of ``images`` not yet in ``out`` (see the module docstring); returns the manifest.

    Call it from every process of an ``accelerate launch``: each embeds its share of the pending shards on
    its own device. ``model`` is a saved ArcFace embedder folder or a loaded model."""
    from accelerate import PartialState

    if shard_size < 1 or batch_size < 1 or num_workers < 0:
        raise EmbeddingsError(
            f"shard_size and batch_size must be >= 1 and num_workers >= 0, got {shard_size}, {batch_size}, {num_workers}"
        )
    # without a GPU, PartialState only joins a multi-process launch as a CPU process group when told so
    state = PartialState(cpu=not torch.cuda.is_available())
    net: Any = _load_model(model) if isinstance(model, (str, os.PathLike)) else model
    net = net.to(state.device).eval()
    out_dir = Path(out)
    base = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_id": model_identity(net),
        "model": Path(model).name if isinstance(model, (str, os.PathLike)) else type(net).__name__,
        "dim": int(net.config.embedding_size),
        "source": Path(images).name,
    }
    photos = list_photos(images)
    # every process checks the folder (so all of them stop on an error, none waits at a barrier) ...
    if (out_dir / MANIFEST_FILE).is_file():
        old = read_manifest(out_dir)
        if old.get("model_id") != base["model_id"] or old.get("dim") != base["dim"]:
            raise EmbeddingsError(
                f"{str(out_dir)!r} holds embeddings of model {old.get('model_id')!r}, not of {base['model_id']!r}: "
                "embeddings of different models are not comparable; use another --out folder"
            )
    elif out_dir.is_dir() and _shard_files(out_dir):
        raise EmbeddingsError(f"{str(out_dir)!r} holds shards but no {MANIFEST_FILE}: use an empty --out folder")
    state.wait_for_everyone()
    if state.is_main_process:  # ... before the main process writes the starting manifest
        out_dir.mkdir(parents=True, exist_ok=True)
        _finalise(out_dir, base, len(photos))
    state.wait_for_everyone()
    done: set[str] = set()
    for path in _shard_files(out_dir):  # every process reads the same finished shards ...
        ids, failed = _read_shard_ids(path)
        done.update(ids)
        done.update(failed)
    state.wait_for_everyone()  # ... before any process writes a new one
    pending = [p for p in photos if p.id not in done]
    shards = [pending[i : i + shard_size] for i in range(0, len(pending), shard_size)]
    if state.is_main_process:
        logger.info(
            "%d photos, %d already embedded, %d shards to go on %d processes",
            len(photos),
            len(done),
            len(shards),
            state.num_processes,
        )
    with state.split_between_processes(shards) as mine:
        for chunk in mine:
            kept, vectors, failed = _embed_shard(net, chunk, state.device, batch_size, num_workers)
            _write_shard(
                out_dir / _shard_name([p.id for p in chunk]), [p.id for p in kept], [p.label for p in kept], vectors, failed
            )
    state.wait_for_everyone()
    manifest = _finalise(out_dir, base, len(photos)) if state.is_main_process else {}
    state.wait_for_everyone()
    return manifest if state.is_main_process else read_manifest(out_dir)


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #
def part_shards(manifest: dict[str, Any], part: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The manifest's shard entries of ``part`` = (i, S): every S-th shard starting at the i-th (all when None)."""
    if part is None:
        return list(manifest["shards"])
    i, count = part
    if not 0 <= i < count:
        raise EmbeddingsError(f"part must be I/S with 0 <= I < S, got {i}/{count}")
    return [entry for j, entry in enumerate(manifest["shards"]) if j % count == i]


def iter_embeddings(
    out: str | os.PathLike, verify: bool = True, part: tuple[int, int] | None = None
) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """Yield ``(ids, labels, vectors (n, dim) float32)`` per finished shard of the manifest, in its order.

    ``verify`` checks each shard's sha256 against the manifest first; ``part`` = (i, S) keeps every S-th
    shard starting at the i-th (:func:`part_shards`), to build one of S index parts."""
    out_dir = Path(out)
    manifest = read_manifest(out_dir)
    dim = int(manifest["dim"])
    for entry in part_shards(manifest, part):
        path = out_dir / entry["file"]
        if not path.is_file():
            raise EmbeddingsError(f"shard {str(path)!r} listed in the manifest is missing: run the embedding command again")
        if verify and sha256_file(path) != entry["sha256"]:
            raise EmbeddingsError(f"shard {str(path)!r} does not match its manifest checksum: run the embedding command again")
        table = pq.read_table(path)
        ids = [str(v) for v in table.column("id").to_pylist()]
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(ids), dim)
        yield ids, [str(v) for v in table.column("label").to_pylist()], vectors


def load_embeddings(out: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """All embeddings of a folder at once: ``(ids, labels, vectors (N, dim))`` (small collections only)."""
    ids: list[str] = []
    labels: list[str] = []
    chunks = []
    for i, lab, vec in iter_embeddings(out):
        ids.extend(i)
        labels.extend(lab)
        chunks.append(vec)
    dim = int(read_manifest(out)["dim"])
    return ids, labels, np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a saved ArcFace embedder folder (e.g. models/arcface-embedder)")
    parser.add_argument("--images", required=True, help="a folder of photos (recursive) or a saved datasets folder")
    parser.add_argument("--out", required=True, help="the embeddings folder (created; an existing one is resumed)")
    parser.add_argument("--shard-size", type=int, default=4096, help="photos per shard (the unit of resuming)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = embed_collection(args.model, args.images, args.out, args.shard_size, args.batch_size, args.num_workers)
    except EmbeddingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    from accelerate import PartialState

    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        print(
            f"{manifest['num_embeddings']} embeddings in {len(manifest['shards'])} shards, {len(manifest['failed'])} "
            f"unreadable photos, complete={manifest['complete']}: {args.out}"
        )
    return manifest


if __name__ == "__main__":
    main()
