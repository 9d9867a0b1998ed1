"""PhotoGallery, the app's persistent gallery: photos and index saved together, re-embedded for a new embedder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_pkg import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.data import ImageLoadError
from model_pkg.gallery import GalleryMismatchError
from model_pkg.gallery_store import PhotoGallery, embedder_id

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "embedding_size": 16, "num_classes": 0}


def tiny(seed: int) -> ArcFaceEmbedderModel:
    torch.manual_seed(seed)
    return ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**TINY)).eval()


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name in ("a", "b"):
        base = rng.integers(0, 255, (48, 48, 3))
        out[name] = []
        for i in range(3):
            path = tmp_path / f"{name}{i}.png"
            Image.fromarray(np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)).save(path)
            out[name].append(str(path))
    return out


def test_register_save_reopen_and_identify(tmp_path, photos):
    gallery = PhotoGallery(tmp_path / "g", tiny(0), score_threshold=None, margin_threshold=0.0)
    with pytest.raises(ValueError, match="gallery is empty"):
        gallery.identify(photos["a"][0])
    assert gallery.register("  Bella  ", photos["a"][:2]) == 2
    assert gallery.register("Max", photos["b"][:2]) == 2
    reopened = PhotoGallery(tmp_path / "g", tiny(0))
    assert reopened.index.labels == ["Bella", "Bella", "Max", "Max"] and reopened.model_id == gallery.model_id
    assert all((tmp_path / "g" / m["photo"]).is_file() for m in reopened.index.metadata)
    result = gallery.identify(photos["a"][2])
    scores = [m.score for m in result.matches]  # one match per animal, best first, with its own photo
    assert sorted(m.label for m in result.matches) == ["Bella", "Max"] and scores == sorted(scores, reverse=True)
    assert all(m.photo.startswith(str(tmp_path / "g" / "photos")) for m in result.matches) and result.message()


def test_identify_searches_once_and_matches_classify(tmp_path, photos, monkeypatch):
    # issue 34: one search per identify; its vote is classify's and its matches are the nearest animals by search
    from model_pkg.intake.embedding import embed_photos

    gallery = PhotoGallery(tmp_path / "g", tiny(0), score_threshold=None, margin_threshold=0.0)
    gallery.register("Bella", photos["a"][:2])
    gallery.register("Max", photos["b"][:2])
    query = embed_photos(gallery.embedder, [photos["a"][2]]).gallery
    expected = gallery.index.classify(query, k=gallery.k)[0]
    scores, labels, _ = gallery.index.search(query, k=50)
    nearest = [(lab, float(s)) for lab, s in zip(labels[0], scores[0])]
    best = [(lab, s) for i, (lab, s) in enumerate(nearest) if lab not in {n for n, _ in nearest[:i]}]
    calls = []
    search_raw = type(gallery.index.store)._search_raw
    monkeypatch.setattr(
        type(gallery.index.store), "_search_raw", lambda self, *a, **kw: calls.append(1) or search_raw(self, *a, **kw)
    )
    result = gallery.identify(photos["a"][2])
    assert len(calls) == 1
    assert result.prediction.to_dict() == expected.to_dict()  # thresholds None / 0.0: the vote stands as it is
    assert [(m.label, m.score) for m in result.matches] == best


def test_bad_photo_leaves_the_gallery_unchanged(tmp_path, photos):
    gallery = PhotoGallery(tmp_path / "g", tiny(0))
    gallery.register("Bella", photos["a"][:1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="bad.jpg.*empty"):
        gallery.register("Max", [photos["b"][0], str(bad)])
    assert gallery.index.labels == ["Bella"] and len(list((tmp_path / "g" / "photos").rglob("*.jpg"))) == 1
    with pytest.raises(ValueError, match="at most 64"):
        gallery.register("x" * 65, photos["b"][:1])


def test_another_embedder_re_embeds_the_stored_photos(tmp_path, photos):
    first = PhotoGallery(tmp_path / "g", tiny(0))
    first.register("Bella", photos["a"])
    second = PhotoGallery(tmp_path / "g", tiny(1))
    assert second.model_id == embedder_id(tiny(1)) != first.model_id
    assert second.index.labels == ["Bella"] * 3 and not np.allclose(second.index.vectors, first.index.vectors)
    with pytest.raises(GalleryMismatchError, match="rebuild"):
        second.add_gallery(first.index, tmp_path / "g")


def test_remove_an_animal(tmp_path, photos):
    gallery = PhotoGallery(tmp_path / "g", tiny(0))
    gallery.register("Bella", photos["a"][:2])
    gallery.register("Max", photos["b"][:1])
    bella_files = [tmp_path / "g" / m["photo"] for m in gallery.index.metadata[:2]]
    assert gallery.remove(" Bella ") == 2
    assert not any(f.exists() for f in bella_files) and len(list((tmp_path / "g" / "photos").rglob("*.jpg"))) == 1
    assert PhotoGallery(tmp_path / "g", tiny(0)).index.labels == ["Max"]  # saved before remove returned
    with pytest.raises(ValueError, match="No animal named 'Bella'.*'Max'"):
        gallery.remove("Bella")


def test_threads_identify_while_others_register_and_remove(tmp_path, photos):
    """An app answers requests in several threads: no call fails, no registration is lost, disk and memory agree."""
    from concurrent.futures import ThreadPoolExecutor

    gallery = PhotoGallery(tmp_path / "g", tiny(0), score_threshold=None, margin_threshold=0.0)
    gallery.register("Bella", photos["a"][:1])
    seen: list[set[str]] = []

    def identify(_):
        for _ in range(6):
            result = gallery.identify(photos["a"][2])
            seen.append({m.label for m in result.matches})

    def register(worker):
        for i in range(3):
            gallery.register(f"dog {worker}-{i}", photos["b"][i : i + 1])

    def register_and_remove(_):
        for i in range(3):
            gallery.register(f"visitor {i}", photos["b"][:2])
            assert gallery.remove(f"visitor {i}") == 2

    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(identify, 0), pool.submit(identify, 1), pool.submit(register, 0), pool.submit(register, 1)]
        jobs.append(pool.submit(register_and_remove, 0))
        for job in jobs:
            job.result(timeout=120)  # re-raises any error of the thread

    expected = ["Bella"] + [f"dog {w}-{i}" for w in range(2) for i in range(3)]
    assert sorted(gallery.index.labels) == sorted(expected)
    reopened = PhotoGallery(tmp_path / "g", tiny(0))
    assert sorted(reopened.index.labels) == sorted(expected) and np.allclose(
        reopened.index.vectors[np.argsort(reopened.index.ids)], gallery.index.vectors[np.argsort(gallery.index.ids)]
    )
    stored = {str(p.relative_to(tmp_path / "g")) for p in (tmp_path / "g" / "photos").rglob("*.jpg")}
    assert stored == {m["photo"] for m in reopened.index.metadata}  # no photo lost, none left behind by a removal
    assert len(seen) == 12 and all("Bella" in labels for labels in seen)


def test_animal_records_ids_and_the_audit_log(tmp_path, photos):
    """Issue 33: animals are records with stable ids; names are unique (NFKC, case ignored); every change is one
    fsynced line of the audit log, which survives a line torn by a kill -9."""
    from model_pkg.gallery_store import NameTakenError, UnknownAnimalError

    gallery = PhotoGallery(tmp_path / "g", tiny(0))
    bella = gallery.register_animal("Bella", photos["a"][:2], "key:aaaa1111", note="owner: 555-0100")
    assert bella.id.startswith("a") and bella.name == "Bella" and len(bella.photos) == 2
    assert bella.registered_by == "key:aaaa1111" and bella.registered_at and bella.public().keys() >= {"id", "name"}
    assert "note" not in bella.public() and "registered_by" not in bella.public()
    with pytest.raises(NameTakenError, match=f"'Bella' is already registered \\(id {bella.id}"):
        gallery.register_animal("ＢＥＬＬＡ", photos["b"][:1], "key:bbbb2222")
    max_ = gallery.register_animal("Max", photos["b"][:1], "key:bbbb2222")
    assert gallery.add_photos(bella.id, photos["a"][2:], "key:bbbb2222").photos[:2] == bella.photos
    with pytest.raises(NameTakenError):
        gallery.update(max_.id, "key:aaaa1111", name="bella")
    renamed = gallery.update(bella.id, "key:aaaa1111", name="Bella Rose", species="dog", note="")
    assert renamed.id == bella.id and renamed.name == "Bella Rose" and len(renamed.photos) == 3 and renamed.note == ""
    reopened = PhotoGallery(tmp_path / "g", tiny(0))  # another process sees the same records
    assert [(a.id, a.name, len(a.photos)) for a in reopened.animals()] == [(bella.id, "Bella Rose", 3), (max_.id, "Max", 1)]
    assert reopened.identify(photos["a"][0]).matches[0].animal == bella.id
    assert gallery.photo_file(bella.id, bella.photos[0]).is_file()
    with pytest.raises(UnknownAnimalError):
        gallery.photo_file(max_.id, bella.photos[0])  # a photo is found only under its own animal
    # a kill -9 in the middle of an append leaves a torn last line: it is skipped, and the next entry stays whole
    with open(gallery.audit_path, "ab") as fh:
        fh.write(b'{"at": "2026-12-07T00:00:00+00:00", "who": "key:tor')
    assert gallery.delete(max_.id, "key:aaaa1111") == 1
    with pytest.raises(UnknownAnimalError):
        gallery.delete(max_.id, "key:aaaa1111")
    log = gallery.audit_log()
    assert [(e["action"], e["animal"], e["who"]) for e in log] == [
        ("register", bella.id, "key:aaaa1111"),
        ("register", max_.id, "key:bbbb2222"),
        ("add_photos", bella.id, "key:bbbb2222"),
        ("update", bella.id, "key:aaaa1111"),
        ("delete", max_.id, "key:aaaa1111"),
    ]
    assert log[3]["old_name"] == "Bella" and log[3]["name"] == "Bella Rose" and log[3]["note_changed"] is True
    assert "555-0100" not in gallery.audit_path.read_text()  # the staff note never enters the log


def test_galleries_from_before_records_get_stable_ids(tmp_path, photos):
    gallery = PhotoGallery(tmp_path / "g", tiny(0))
    gallery.register("Bella", photos["a"][:1])
    old = gallery.index  # strip the record fields, as a gallery saved before issue 33 has them
    rows = [{"photo": m["photo"]} for m in old.metadata]
    gallery.folder.rebuild(old.labels, rows)
    gallery.folder.save()
    first, second = PhotoGallery(tmp_path / "g", tiny(0)), PhotoGallery(tmp_path / "g", tiny(0))
    assert first.animals()[0].id == second.animals()[0].id and first.animals()[0].name == "Bella"
    renamed = first.update(first.animals()[0].id, "key:aaaa1111", name="Bella II")
    assert second.animal(renamed.id).name == "Bella II"


@pytest.mark.parametrize("name", ["Bel\u200bla", "Max\x07", "\u202eRex", "x" * 65])
def test_names_with_invisible_characters_or_too_long_are_refused(tmp_path, photos, name):
    from model_pkg.gallery_store import normalize_name

    with pytest.raises(ValueError, match="control or invisible|at most 64"):
        normalize_name(name)
    assert normalize_name("  Ｍａｘ\n  Ⅱ ") == "Max II"
