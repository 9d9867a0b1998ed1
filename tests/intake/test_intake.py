"""The photo intake (species, crop, kind, reshoot reasons) and the calibrated per-kind fusion, on the shipped models'
settings and the real photos in tests/photos/ (dog faces, whole dogs, cat faces, cats in ordinary photos)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from model_pkg.intake import FusionConfig, KindFusion, PhotoIntake, fused_vectors, gallery_vectors
from model_pkg.intake.fusion import SPECIES_FLOOR, pair_kind
from model_pkg.intake.settings import KINDS, IntakeConfig

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = Path(__file__).resolve().parents[1] / "photos"
SHIPPED = json.loads((ROOT / "models" / "arcface-embedder" / "config.json").read_text())


def photos(kind: str) -> list[Path]:
    return sorted((PHOTOS / kind).glob("*/*.jpg"))


@pytest.fixture(scope="module")
def intake() -> PhotoIntake:
    return PhotoIntake(SHIPPED["intake"])


def test_shipped_models_carry_the_same_intake_and_fusion():
    matcher = json.loads((ROOT / "models" / "pair-matcher" / "config.json").read_text())
    assert SHIPPED["intake"] == matcher["intake"] and SHIPPED["fusion"] == matcher["fusion"]
    assert set(SHIPPED["fusion"]["kinds"]) == set(KINDS)


@pytest.mark.parametrize(
    ("folder", "species", "kind"),
    [
        ("dog_faces", "dog", "dog_face"),
        ("whole_dogs", "dog", "dog_body"),
        ("cat_faces", "cat", "cat_face"),
        ("cat_photos", "cat", "cat_body"),
    ],
)
def test_species_and_kind_of_real_photos(intake, folder, species, kind):
    results = intake(photos(folder))
    assert [r.species for r in results] == [species] * len(results)
    assert sum(r.kind == kind for r in results) >= len(results) - 1, [r.kind for r in results]
    assert all(r.usable for r in results), [r.reshoot for r in results]


def test_photo_without_an_animal_is_reshot(intake):
    y, x = np.mgrid[0:480, 0:640]
    gradient = Image.fromarray(np.stack([x * 255 // 640, y * 255 // 480, np.full_like(x, 128)], -1).astype(np.uint8))
    street = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    for image in (gradient, street):
        (result,) = intake([image])
        assert result.reshoot is not None and "no dog or cat" in result.reshoot
        assert result.species is None and result.kind is None


def test_two_animals_are_reshot(intake):
    a, b = (Image.open(p).convert("RGB").resize((300, 300)) for p in photos("dog_faces")[::3][:2])
    canvas = Image.new("RGB", (1000, 400), (200, 200, 200))
    canvas.paste(a, (0, 50))
    canvas.paste(b, (700, 50))
    (result,) = intake([canvas])
    assert result.reshoot is not None and "more than one animal" in result.reshoot


def test_tiny_animal_is_reshot_with_a_reason_to_act_on(intake):
    face = Image.open(photos("dog_faces")[0]).convert("RGB").resize((40, 40))
    canvas = Image.new("RGB", (1200, 900), (120, 160, 90))
    canvas.paste(face, (600, 400))
    (result,) = intake([canvas])
    assert result.reshoot is not None
    assert "fills most of the frame" in result.reshoot or "pixels across" in result.reshoot


def test_blurred_photo_is_reshot(intake):
    sharp = Image.open(photos("dog_faces")[0]).convert("RGB")
    (ok, blurred) = intake([sharp, sharp.filter(ImageFilter.GaussianBlur(4))])
    assert ok.usable
    assert blurred.reshoot is not None and "blurred" in blurred.reshoot


def test_large_photo_is_cropped_around_the_animal_not_squashed(intake):
    cat = Image.open(photos("cat_photos")[0]).convert("RGB")
    canvas = Image.new("RGB", (4000, 3000), (235, 230, 220))
    canvas.paste(cat.resize((cat.width * 2, cat.height * 2)), (2400, 1500))
    (result,) = intake([canvas])
    assert result.species == "cat" and result.usable
    assert result.cropped
    left, top, right, bottom = result.box
    scale = 2048 / 4000  # load_image caps the longest side at 2,048 px
    cat_box = (2400 * scale, 1500 * scale, 3680 * scale, 2780 * scale)
    assert left <= cat_box[0] + 50 and top <= cat_box[1] + 50 and right >= cat_box[2] - 50 and bottom >= cat_box[3] - 50
    assert (right - left) * (bottom - top) < 0.6 * 2048 * 1536  # around the cat, not the whole scene
    assert min(right - left, bottom - top) > 224  # far more pixels than a squashed 224 px photo keeps


def test_kind_fusion_probability_is_monotone_and_centred():
    fusion = KindFusion(trained_weight=0.4, slope=25.0, centres={"1": 0.55, "3": 0.7})
    cosines = np.linspace(-1, 1, 41)
    for size in (1, 2, 3, 5):
        p = [fusion.probability(c, size) for c in cosines]
        assert all(b >= a for a, b in zip(p, p[1:]))
    assert fusion.probability(0.55, 1) == pytest.approx(0.5)
    assert fusion.probability(0.55, 2) == pytest.approx(0.5)  # sizes without a centre use the largest size below
    assert fusion.probability(0.7, 4) == pytest.approx(0.5)


def test_fusion_settings_round_trip_through_a_saved_model(tmp_path):
    from model_pkg import PairMatcherConfig

    fusion = FusionConfig(
        {
            k: KindFusion(0.1 * (i + 1), 10.0 + i, {"1": 0.5, "2": 0.6}, gallery_score_threshold=0.9 + i / 100)
            for i, k in enumerate(KINDS)
        }
    )
    config = PairMatcherConfig(intake=IntakeConfig(min_sharpness=9.0).to_dict(), fusion=fusion.to_dict())
    config.save_pretrained(tmp_path)
    loaded = PairMatcherConfig.from_pretrained(tmp_path)
    assert FusionConfig.from_dict(loaded.fusion) == fusion
    assert IntakeConfig.from_dict(loaded.intake).min_sharpness == 9.0
    with pytest.raises(ValueError, match="needs an intake"):
        PairMatcherConfig(fusion=fusion.to_dict())
    with pytest.raises(ValueError, match="unknown intake settings"):
        PairMatcherConfig(intake={"min_sharpnes": 3})
    with pytest.raises(ValueError, match="no settings for the kinds"):
        FusionConfig({"dog_face": KindFusion(0.5)})


def test_gallery_decides_each_query_at_the_thresholds_of_its_kind():
    """Two different cats look more alike to these features than two different dogs: an unknown cat face that
    would pass the one threshold of every kind is "unknown" at the cat faces' own threshold."""
    from model_pkg.gallery import GalleryIndex
    from model_pkg.gallery_store import kind_thresholds

    fusion = FusionConfig.from_dict(SHIPPED["fusion"])
    cat = fusion.kinds["cat_face"].gallery_score_threshold
    assert cat is not None and cat > SHIPPED["score_threshold"]
    assert all(fusion.kinds[k].gallery_score_threshold is not None for k in KINDS)
    gallery = GalleryIndex(3, "ip")
    gallery.add(np.eye(3, dtype=np.float32)[:2], ["Tigro", "Birba"])
    similarity = (SHIPPED["score_threshold"] + cat) / 2  # between the one threshold and the cat faces' own
    query = np.array([[similarity, 0.0, math.sqrt(1 - similarity**2)]], np.float32)

    def vote(thresholds):
        return gallery.classify(query, k=2, thresholds=thresholds)[0]

    as_cat = vote(kind_thresholds(fusion, "cat_face", SHIPPED["score_threshold"], 0.003))
    assert (as_cat.label, as_cat.accepted, as_cat.reason) == (None, False, "unknown")
    global_only = vote(kind_thresholds(None, "cat_face", SHIPPED["score_threshold"], 0.003))
    assert (global_only.label, global_only.accepted) == ("Tigro", True)
    close_call = vote(kind_thresholds(None, None, 0.0, 0.9))
    assert (close_call.label, close_call.reason) == (None, "reshoot")


def test_fused_cosine_is_the_weighted_sum_of_the_two_matchers():
    rng = np.random.default_rng(0)
    t, u = rng.normal(size=(2, 8)), rng.normal(size=(2, 16))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    fused = fused_vectors(t, u, np.array([0.3, 0.3]))
    assert float(fused[0] @ fused[1]) == pytest.approx(0.3 * t[0] @ t[1] + 0.7 * u[0] @ u[1], abs=1e-6)


def test_a_cat_is_never_close_to_a_dog_in_the_gallery():
    same = np.ones((2, 4), np.float32) / 2  # identical fused vectors: cosine 1 before the species block
    g = gallery_vectors(same, ["dog", "cat"])
    assert float(g[0] @ g[1]) <= SPECIES_FLOOR + 1e-6
    g = gallery_vectors(np.array([[1, 0, 0, 0], [-1, 0, 0, 0]], np.float32), ["dog", "dog"])
    assert float(g[0] @ g[1]) == pytest.approx(0.5)  # the least similar dogs stay above every cross-species score
    assert math.isclose(float(np.linalg.norm(g[0])), 1.0, rel_tol=1e-6)


def test_pair_kind_follows_the_majority_of_photos():
    assert pair_kind("dog", ["dog_face", "dog_face"], ["dog_face"]) == "dog_face"
    assert pair_kind("cat", ["cat_face"], ["cat_body"]) == "cat_body"  # a tie between faces and bodies: bodies
    assert pair_kind("cat", ["cat_face", "cat_face"], ["cat_body"]) == "cat_face"


def test_a_dog_is_never_matched_to_a_cat():
    from transformers import AutoModel

    import model_pkg  # noqa: F401  (registers the models with AutoModel)
    from model_pkg.pair_matcher.pipeline import match_sets

    model = AutoModel.from_pretrained(ROOT / "models" / "pair-matcher")
    dog, cat = photos("dog_faces")[:2], photos("cat_faces")[:2]
    result = match_sets(model, dog, cat)
    assert result.probability == 0.0 and not result.same
    assert any("never the same animal" in note for note in result.notes)
    same_cat = match_sets(model, photos("cat_faces")[:2], photos("cat_faces")[2:3])
    assert same_cat.kind == "cat_face" and same_cat.same
    assert [r.species for r in same_cat.intake_a] == ["cat", "cat"]


def test_intake_network_runs_on_onnx_runtime_and_recovers_a_damaged_export(tmp_path, monkeypatch):
    """The intake's untrained network runs on ONNX Runtime (3x faster than PyTorch on 2 cores), exported once into
    the cache; a damaged cached graph is put aside and exported again, never used and never a crash."""
    import torch

    from model_pkg.intake.photo_intake import _pixels
    from model_pkg.intake.reference import REFERENCE_NETWORK, ReferenceFeatures, reference_network
    from model_pkg.onnx_runtime import tower_checksum

    monkeypatch.setenv("PETMATCH_CACHE", str(tmp_path))
    network = reference_network()
    damaged = tmp_path / "onnx" / f"reference-{REFERENCE_NETWORK}-{tower_checksum(network)}.onnx"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not an onnx graph")
    features = ReferenceFeatures(network)
    assert features.source == "onnxruntime"
    assert damaged.with_name(damaged.name + ".rejected").read_bytes() == b"not an onnx graph"
    pixels = _pixels([Image.open(p).convert("RGB") for p in photos("cat_photos")[:2] + photos("whole_dogs")[:2]])
    with torch.no_grad():
        expected = network.forward_features(pixels)
    assert torch.allclose(features.forward_features(pixels), expected, atol=1e-3)


def test_registration_refuses_a_photo_the_intake_would_have_retaken(tmp_path):
    """A shelter registering an animal with a photo of no animal gets the reason and the photo's number; nothing of
    that upload is stored, so later identifications are never compared with it."""
    from model_pkg import ArcFaceEmbedderModel
    from model_pkg.gallery_store import PhotoGallery

    street = tmp_path / "street.jpg"
    Image.fromarray((np.random.default_rng(1).random((480, 640, 3)) * 255).astype(np.uint8)).save(street)
    gallery = PhotoGallery(tmp_path / "gallery", ArcFaceEmbedderModel.from_pretrained(ROOT / "models" / "arcface-embedder"))
    dog = photos("whole_dogs")[:2]
    with pytest.raises(ValueError, match=r"Nothing was registered\. Retake or leave out photo 2 \(street\.jpg\): no dog or cat"):
        gallery.register_animal("Rex", [dog[0], street, dog[1]], by="test")
    assert len(gallery) == 0 and not [p for p in (tmp_path / "gallery").rglob("*.jpg")]
    gallery.register_animal("Rex", dog, by="test")
    assert gallery.photo_counts() == {"Rex": 2}
