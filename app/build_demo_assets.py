"""Build the app's demo assets for the given embedder (and dual encoder, when there is one).

    python app/build_demo_assets.py                          # models/arcface-embedder, models/dual-encoder
    python app/build_demo_assets.py --embedder-model DIR --dual-model DIR --assets-dir app/assets

The app runs the same steps at start for whatever is missing or was made by another model, so this script
is only needed to rebuild the shipped assets after a new model is shipped.

1. ``<assets>/demo_photos/`` (model-independent; copied once from ``../shared/data/dogfacenet`` and committed,
   so a fresh machine or a Space needs no shared data): photos of test-split dogs, never trained on.
   ``gallery/<dog>/`` are registered under the names of ``manifest.json``, ``queries/<dog>/`` are their other
   photos, ``unknown/<dog>/`` dogs left out of the gallery (with ``queries/``: the threshold calibration set),
   ``new/<dog>/`` dogs used nowhere else, for the examples and the tests.
2. ``<assets>/demo_gallery/``: a :class:`~model_pkg.gallery.GalleryIndex` of the gallery photos tagged with the
   embedder's id, its "unknown"/"reshoot" thresholds calibrated on the query and unknown photos.
3. ``<assets>/text_index/``: the text-search database of the Flickr8k dev images and the demo dogs
   (``ImageSearchEngine``), when a dual encoder is given. Its paths are relative to ``<assets>``; the Flickr8k
   photos it shows ship as 128 px thumbnails in ``<assets>/text_photos/`` (copied once, with ``--recopy-photos``),
   so a clone without ``../shared`` answers text searches with photos that load. The shipped vectors were computed
   on the 224 px originals; an index rebuilt for another dual encoder embeds the thumbnails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from model_pkg.fileio import atomic_write_json
from model_pkg.gallery import META_FILE, GalleryFileError, GalleryIndex, GalleryMismatchError
from model_pkg.gallery_store.folder import embed_photos, embedder_id

ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = ROOT / "app" / "assets"
SHARED_DATA = ROOT.parent / "shared" / "data"
SPLITS_FILE = ROOT / "train" / "splits" / "dogfacenet.json"
DEMO_NAMES = ["Bella", "Max", "Luna", "Charlie", "Daisy", "Rocky", "Milo", "Coco", "Bailey", "Nala"]
GALLERY_PHOTOS, QUERY_PHOTOS, UNKNOWN_DOGS, UNKNOWN_PHOTOS, NEW_DOGS, NEW_PHOTOS = 3, 3, 30, 2, 3, 4
# Pets beside the dog faces, so the demo shows the intake on ordinary photos: id -> (name, gallery photos, queries),
# paths relative to the shared data folder. Whole dogs from MPDD (CC BY 4.0), cats from Cat-Faces-Identification (MIT).
DEMO_PETS = {
    "mpdd-56": (
        "Rex",
        ["mpdd/56/56_c1s6_1.jpg", "mpdd/56/56_c3s4_0.jpg", "mpdd/56/56_c4s6_6.jpg"],
        ["mpdd/56/56_c2s5_5.jpg", "mpdd/56/56_c5s3_2.jpg", "mpdd/56/56_c6s6_0.jpg"],
    ),
    "cat-tigro": (
        "Tigro",
        ["cats/faces/tigro/1.jpg", "cats/faces/tigro/10.jpg", "cats/photos/tigro/t1.jpg"],
        ["cats/faces/tigro/11.jpg", "cats/photos/tigro/t10.jpg", "cats/photos/tigro/t11.jpg"],
    ),
    "cat-birba": (
        "Birba",
        ["cats/faces/birba/1.jpg", "cats/faces/birba/4.jpg", "cats/photos/birba/2020-02-09_18:58:36.jpg"],
        ["cats/faces/birba/6.jpg", "cats/photos/birba/2020-02-09_18:58:50.jpg", "cats/photos/birba/2020-02-09_18:58:44.jpg"],
    ),
}
Log = Callable[[str], None]


def _photos(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
        key=lambda p: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in p.stem.split(".")],
    )


def copy_demo_photos(assets_dir: Path, dogfacenet: Path, log: Log = print) -> dict:
    """Pick the demo dogs from the test split (dogs sorted by number) and copy their photos; returns the manifest."""
    if not dogfacenet.is_dir():
        raise FileNotFoundError(
            f"the demo photos are missing from {assets_dir / 'demo_photos'} and the shared data folder {dogfacenet} "
            "is not there to copy them from: restore app/assets/demo_photos from git, or pass --data"
        )
    test_dogs = json.loads(SPLITS_FILE.read_text())["test"] if SPLITS_FILE.is_file() else os.listdir(dogfacenet)
    dogs = sorted(test_dogs, key=lambda d: int(d) if str(d).isdigit() else str(d))
    roles: dict[str, list[str]] = {"gallery": [], "unknown": [], "new": []}
    for dog in dogs:
        n = len(_photos(dogfacenet / dog))
        if len(roles["gallery"]) < len(DEMO_NAMES) and n >= GALLERY_PHOTOS + 2:
            roles["gallery"].append(dog)
        elif len(roles["new"]) < NEW_DOGS and n >= NEW_PHOTOS:
            roles["new"].append(dog)
        elif len(roles["unknown"]) < UNKNOWN_DOGS:
            roles["unknown"].append(dog)
    target = assets_dir / "demo_photos"
    tmp = assets_dir / ".demo_photos.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for role, chosen in roles.items():
        for dog in chosen:
            photos = _photos(dogfacenet / dog)
            parts = {
                "gallery": {
                    "gallery": photos[:GALLERY_PHOTOS],
                    "queries": photos[GALLERY_PHOTOS : GALLERY_PHOTOS + QUERY_PHOTOS],
                },
                "unknown": {"unknown": photos[:UNKNOWN_PHOTOS]},
                "new": {"new": photos[:NEW_PHOTOS]},
            }[role]
            for folder, files in parts.items():
                (tmp / folder / dog).mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copyfile(f, tmp / folder / dog / f.name)
    for pet, (_, gallery, queries) in DEMO_PETS.items():
        for folder, files in (("gallery", gallery), ("queries", queries)):
            (tmp / folder / pet).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(dogfacenet.parent / f, tmp / folder / pet / Path(f).name.replace(":", "-"))
    manifest = {
        "source": "DogFaceNet (CC BY 4.0), test-split dogs; a whole dog of MPDD (CC BY 4.0); two cats of "
        "Cat-Faces-Identification (MIT)",
        "names": {**dict(zip(roles["gallery"], DEMO_NAMES)), **{pet: name for pet, (name, _, _) in DEMO_PETS.items()}},
        **{f"{role}_dogs": chosen for role, chosen in roles.items()},
    }
    manifest["gallery_dogs"] += list(DEMO_PETS)
    atomic_write_json(manifest, tmp / "manifest.json")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    log(f"copied demo photos of {sum(map(len, roles.values()))} dogs into {target}")
    return manifest


def _files(root: Path, folder: str, dogs: list[str]) -> tuple[list[str], list[str]]:
    paths, dog_of = [], []
    for dog in dogs:
        for p in _photos(root / folder / dog) if (root / folder / dog).is_dir() else []:
            paths.append(str(p))
            dog_of.append(dog)
    return paths, dog_of


def build_demo_gallery(embedder, assets_dir: Path, log: Log = print) -> GalleryIndex:
    """Embed the demo gallery photos, calibrate the thresholds on the query/unknown photos and save the gallery."""
    photos = assets_dir / "demo_photos"
    manifest = json.loads((photos / "manifest.json").read_text())
    names = manifest["names"]
    gallery_paths, gallery_dogs = _files(photos, "gallery", manifest["gallery_dogs"])
    query_paths, query_dogs = _files(photos, "queries", manifest["gallery_dogs"])
    unknown_paths, _ = _files(photos, "unknown", manifest["unknown_dogs"])
    every = gallery_paths + query_paths + unknown_paths
    log(f"embedding {len(every)} demo photos with {embedder_id(embedder)} ...")
    emb = embed_photos(embedder, every, progress=lambda done, total: log(f"  demo gallery: {done}/{total} photos"))
    n_g, n_q = len(gallery_paths), len(query_paths)
    index = GalleryIndex(emb.shape[1], "ip", model_id=embedder_id(embedder))
    index.add(
        emb[:n_g],
        [names[d] for d in gallery_dogs],
        metadata=[{"photo": os.path.relpath(p, photos), "dog": d} for p, d in zip(gallery_paths, gallery_dogs)],
    )
    k = int(getattr(embedder.config, "gallery_k", 20))
    result = index.calibrate(emb[n_g : n_g + n_q], [names[d] for d in query_dogs], emb[n_g + n_q :], k=k)
    index.save(assets_dir / "demo_gallery")
    log(
        f"demo gallery: {len(names)} animals, thresholds score {result['score_threshold']:.3f} / margin "
        f"{result['margin_threshold']:.3f} (known accuracy {result['known_accuracy']:.0%}, unknown rejection "
        f"{result['unknown_rejection']:.0%} on {result['num_known']} + {result['num_unknown']} calibration photos)"
    )
    return index


def ensure_demo_gallery(embedder, assets_dir: Path = ASSETS_DIR, data_dir: Path = SHARED_DATA, log: Log = print) -> GalleryIndex:
    """The demo gallery for `embedder`: loaded when it is there and was made by it, else (re)built."""
    assets_dir = Path(assets_dir)
    if not (assets_dir / "demo_photos" / "manifest.json").is_file():
        copy_demo_photos(assets_dir, Path(data_dir) / "dogfacenet", log)
    gallery_dir = assets_dir / "demo_gallery"
    if (gallery_dir / META_FILE).is_file():
        try:
            index = GalleryIndex.load(gallery_dir)
            if index.model_id == embedder_id(embedder):
                return index
            log(f"the demo gallery was made by {index.model_id}, not {embedder_id(embedder)}: rebuilding it")
        except (GalleryFileError, GalleryMismatchError) as err:
            log(f"the demo gallery is unreadable ({err}): rebuilding it")
    return build_demo_gallery(embedder, assets_dir, log)


TEXT_PHOTOS, TEXT_PHOTO_SIDE, TEXT_PHOTO_QUALITY = "text_photos", 128, 70  # ~3.8 KB a photo, 3.8 MB for 1,000


def _flickr_dev_photos(data_dir: Path) -> list[Path]:
    flickr = Path(data_dir) / "flickr8k"
    if not (flickr / "Flickr_8k.devImages.txt").is_file():
        return []
    names = [n.strip() for n in (flickr / "Flickr_8k.devImages.txt").read_text().split() if n.strip()]
    return [flickr / "images" / n for n in names if (flickr / "images" / n).is_file()]


def copy_text_photos(assets_dir: Path, data_dir: Path, log: Log = print) -> int:
    """Write the Flickr8k dev images as the small thumbnails the text index shows (``<assets>/text_photos/``)."""
    from PIL import Image

    target = Path(assets_dir) / TEXT_PHOTOS
    target.mkdir(parents=True, exist_ok=True)
    sources = _flickr_dev_photos(data_dir)
    for source in sources:
        with Image.open(source) as image:
            thumb = image.convert("RGB").resize((TEXT_PHOTO_SIDE, TEXT_PHOTO_SIDE), Image.Resampling.LANCZOS)
        thumb.save(target / source.name, quality=TEXT_PHOTO_QUALITY, optimize=True)
    log(f"{len(sources)} text-search photos written to {target}")
    return len(sources)


def text_index_paths(assets_dir: Path, data_dir: Path) -> list[str]:
    """The photos the demo text index covers: the Flickr8k dev images (the shipped thumbnails, else the shared data's
    originals) and the demo dogs."""
    shipped = Path(assets_dir) / TEXT_PHOTOS
    if shipped.is_dir() and any(shipped.iterdir()):
        paths = [str(p.resolve()) for p in sorted(shipped.iterdir()) if p.suffix.lower() == ".jpg"]
    else:
        paths = [str(p.resolve()) for p in _flickr_dev_photos(data_dir)]
    photos = Path(assets_dir) / "demo_photos"
    for folder in ("gallery", "queries", "new"):
        if (photos / folder).is_dir():
            paths += [str(p.resolve()) for dog in sorted(os.listdir(photos / folder)) for p in _photos(photos / folder / dog)]
    return paths


def ensure_text_index(engine, dual_model, assets_dir: Path = ASSETS_DIR, data_dir: Path = SHARED_DATA, log: Log = print) -> None:
    """Load the demo text-search database into `engine` (an ``ImageSearchEngine``), building it when it is
    missing or was made by another dual encoder."""
    index_dir = Path(assets_dir) / "text_index"
    source_file = index_dir / "source.json"
    model_id = embedder_id(dual_model)
    if source_file.is_file():
        try:
            built_by = json.loads(source_file.read_text()).get("model_id")
            if built_by == model_id:
                engine.load_database(str(index_dir / "database"), root=str(assets_dir))
                return
            log(f"the text index was made by {built_by}, not {model_id}: rebuilding it")
        except (GalleryFileError, GalleryMismatchError, ValueError, OSError) as err:
            log(f"the text index does not fit this dual encoder ({type(err).__name__}: {err}): rebuilding it")
    paths = text_index_paths(Path(assets_dir), Path(data_dir))
    log(f"indexing {len(paths)} photos for text search ...")

    # paths stored relative to the assets folder, so the shipped index works in any clone and any copy of the assets
    def progress(done: int, total: int) -> None:
        log(f"  text index: {done}/{total} photos")

    engine.build_image_database(paths, progress=progress, root=str(assets_dir))
    engine.save_database(str(index_dir / "database"))
    atomic_write_json({"model_id": model_id, "num_images": len(paths)}, source_file)


def main(argv: list[str] | None = None) -> None:
    from app.models import load_embedder, load_text_search, model_flags

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    model_flags(parser)
    parser.add_argument("--recopy-photos", action="store_true", help="pick and copy the demo photos again")
    args = parser.parse_args(argv)
    assets = Path(args.assets_dir)
    if args.recopy_photos:
        copy_demo_photos(assets, Path(args.data) / "dogfacenet")
        copy_text_photos(assets, Path(args.data))
    embedder, why = load_embedder(args.embedder_model)
    if embedder is None:
        raise SystemExit(f"cannot build the demo gallery: {why}")
    ensure_demo_gallery(embedder, assets, Path(args.data))
    text, why = load_text_search(args.dual_model)
    if text is None:
        print(f"text index skipped: {why}")
    else:
        ensure_text_index(text.engine, text.model, assets, Path(args.data))


if __name__ == "__main__":
    main()
