"""Dual encoder: tiny-config model tests, loss, retrieval metrics, caption data, search engine, CLI, training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import model_pkg  # noqa: F401  (registers the Auto classes)
from model_pkg.dual_encoder import (
    DualEncoderConfig,
    DualEncoderModel,
    DualEncoderTextConfig,
    DualEncoderVisionConfig,
    build_vocab,
)
from model_pkg.dual_encoder.data import (
    CaptionDataError,
    caption_pairs,
    load_caption_splits,
    load_flickr8k_splits,
    read_token_file,
)
from model_pkg.dual_encoder.search import ImageSearchEngine, SearchHit
from model_pkg.gallery import GalleryMismatchError
from model_pkg.losses import symmetric_contrastive_loss
from model_pkg.metrics import text_image_retrieval_metrics

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CAPTIONS = ["a black dog runs on the beach", "two children play in the park", "a man rides a red bike", "a dog jumps"]
TINY_VISION = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "freeze": False}
TINY_BERT = {  # MiniLM's tokenizer (offline package) with a 2-layer, 32-wide BERT
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def tiny_model(seed: int = 0, text: str = "lstm", **overrides) -> DualEncoderModel:
    torch.manual_seed(seed)
    if text == "lstm":
        text_config = {"tower": "lstm", "vocab": build_vocab(CAPTIONS, min_freq=1), "embedding_dim": 16, "hidden_size": 16}
    else:
        text_config = {"tower": "transformers", "pretrained": False, "hf_config": TINY_BERT, "max_length": 16}
    text_config.update(overrides.pop("text_config", {}))
    vision = {**TINY_VISION, **overrides.pop("vision_config", {})}
    return DualEncoderModel(DualEncoderConfig(vision_config=vision, text_config=text_config, projection_dim=16, **overrides))


def test_contrastive_loss_matches_naive_reference():
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    naive = 0.0
    for i in range(5):
        naive += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert torch.allclose(symmetric_contrastive_loss(logits), naive / 10, atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        symmetric_contrastive_loss(torch.randn(3, 4))


def test_retrieval_metrics_both_directions():
    img = np.eye(3, dtype=np.float32)
    # captions 0,1 -> image 0 (caption 1 points at image 1 instead: a miss at rank 1), caption 2 -> image 2
    txt = np.array([[1, 0, 0], [0.1, 0.9, 0], [0, 0, 1]], dtype=np.float32)
    out = text_image_retrieval_metrics(img, txt, [0, 0, 2])
    assert out["text_to_image"]["r1"] == pytest.approx(200 / 3)
    assert out["text_to_image"]["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["image_to_text"]["r1"] == pytest.approx(100.0)  # image 1 has no caption: not a query
    with pytest.raises(ValueError, match="one image row per caption"):
        text_image_retrieval_metrics(img, txt, [0, 1])


@pytest.mark.parametrize("text", ["lstm", "transformers"])
def test_forward_shapes_loss_and_gradients(text):
    model = tiny_model(text=text, projection="mlp").train()
    batch = model.tokenize(["a black dog", "a red bike on the grass"])
    out = model(**batch, pixel_values=torch.randn(2, 3, 32, 32), return_loss=True)
    assert out.image_embeds.shape == out.text_embeds.shape == (2, 16)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.logits_per_text.shape == (2, 2) and torch.isfinite(out.loss)
    assert torch.allclose(model.logit_scale.exp(), torch.tensor(1 / 0.07))
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_lit_freezing_and_cached_outputs_match_pixels():
    model = tiny_model(text="transformers", vision_config={"freeze": True}, text_config={"trainable_layers": 1}).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith("vision_model.backbone.") or "layer.1." not in n for n in frozen)
    assert any(n.startswith("text_model.encoder.encoder.layer.1.") for n, p in model.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.text_model.encoder.embeddings.parameters())
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cached = model.vision_model.tower_outputs(pixels)
        model.eval()
        assert torch.allclose(model.get_image_features(pixels), model.get_image_features(image_features=cached), atol=1e-6)
    with pytest.raises(ValueError, match="pooled features"):
        model.get_image_features(image_features=torch.randn(3, 7))


def test_lstm_vocab_saved_and_unknown_words():
    model = tiny_model()
    ids = model.tokenize(["ein schwarzer Hund", "", "a dog " * 500])
    assert ids["input_ids"][0].tolist()[:3] == [1, 1, 1]  # unknown words -> <unk>
    assert ids["input_ids"].shape[1] == model.config.text_config.max_length  # truncated
    emb = model.encode_text(["ein schwarzer Hund", "a dog"])
    assert torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="vocab"):
        DualEncoderTextConfig(tower="lstm", vocab=["dog", "cat"])
    with pytest.raises(ValueError, match="pooling"):
        DualEncoderVisionConfig(pooling="max")


def test_config_from_vision_text_configs():
    cfg = DualEncoderConfig.from_vision_text_configs(
        DualEncoderVisionConfig(**TINY_VISION),
        DualEncoderTextConfig(tower="lstm", vocab=["<pad>", "<unk>", "dog"]),
        projection_dim=8,
    )
    again = DualEncoderConfig.from_dict(cfg.to_dict())
    assert again.vision_config.backbone == "test_efficientnet" and again.text_config.vocab[-1] == "dog"
    assert again.projection_dim == 8
    with pytest.raises(ValueError, match="temperature_init"):
        DualEncoderConfig(temperature_init=0.0)


# -- caption data ---------------------------------------------------------------------------------------------
def _mini_flickr(root: Path, n: int = 6) -> Path:
    src = Path(__file__).parents[1] / "photos" / "flickr8k"  # 9 real captioned photos that ship with the repository
    names = (src / "Flickr_8k.devImages.txt").read_text().split()[:n]
    captions = read_token_file(src / "Flickr8k.token.txt")
    (root / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(src / "images" / name, root / "images" / name)
    lines = [f"{name}#{j}\t{c}" for name in names for j, c in enumerate(captions[name])]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[: n // 2]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[n // 2 :] + ["not_there.jpg"]) + "\n")
    return root


@pytest.fixture(scope="module")
def mini_flickr(tmp_path_factory):
    return _mini_flickr(tmp_path_factory.mktemp("flickr"))


def test_flickr8k_splits_and_bad_files(mini_flickr, tmp_path):
    splits = load_caption_splits(mini_flickr)
    assert set(splits) == {"train", "dev"} and len(splits["train"]) == 3
    assert len(splits["dev"]) == 3  # the listed image with no file is skipped ...
    assert json.loads(splits["dev"].info.description)["skipped"]["no_caption"] == 1  # ... and counted
    paths, captions, owner = caption_pairs(splits["dev"])
    assert len(captions) == 15 and owner[:5] == [0] * 5 and Path(paths[0]).is_file()
    with pytest.raises(CaptionDataError, match="does not exist"):
        load_flickr8k_splits(mini_flickr, token_file=tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("no tab here\n")
    with pytest.raises(CaptionDataError, match="line 1"):
        read_token_file(bad)
    empty_images = tmp_path / "no_images"
    empty_images.mkdir()
    with pytest.raises(CaptionDataError, match="no usable image"):
        load_flickr8k_splits(mini_flickr, image_dir=empty_images)


def test_imagefolder_metadata(mini_flickr, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = sorted(p.name for p in (mini_flickr / "images").iterdir())[0]
    shutil.copy(mini_flickr / "images" / name, folder / name)
    rows = [
        {"file_name": name, "caption": "a dog"},
        {"file_name": name, "caption": ["a brown dog", "dog outside"]},
        {"file_name": "ghost.jpg", "caption": "no such photo"},
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    split = load_caption_splits(folder)["train"]
    assert split["captions"][:] == [["a dog", "a brown dog", "dog outside"]]
    with pytest.raises(CaptionDataError, match="does not exist"):
        load_caption_splits(tmp_path / "nowhere" / "x")


# -- search -------------------------------------------------------------------------------------------------------
def test_search_engine(mini_flickr, tmp_path):
    images = sorted(str(p) for p in (mini_flickr / "images").iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    engine = ImageSearchEngine(tiny_model(), batch_size=4)
    with pytest.raises(RuntimeError, match="no image database"):
        engine.search_database("a dog")
    calls = []
    engine.build_image_database(images + [str(broken)], progress=lambda done, total: calls.append((done, total)))
    assert [p for p, _ in engine.skipped] == [str(broken)] and calls[-1] == (7, 7)
    hits = engine.search_database("a black dog on the beach", top_k=3)
    assert len(hits) == 3 and all(isinstance(h, SearchHit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    ranked = engine.rank_images("a black dog on the beach", images, top_k=3)
    assert [h.path for h in ranked] == [h.path for h in hits]
    assert engine.search_database("Ein schwarzer Hund läuft am Strand 🐕", top_k=2)  # non-English: still answers
    assert engine.search_database("dog " * 5000, top_k=1)  # very long: truncated
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            engine.search_database(empty)
    engine.save_database(tmp_path / "db")
    again = ImageSearchEngine(engine.model)
    again.load_database(tmp_path / "db")
    assert [h.path for h in again.search_database("a black dog on the beach", top_k=3)] == [h.path for h in hits]
    other = ImageSearchEngine(tiny_model(seed=1))
    with pytest.raises(GalleryMismatchError, match="built by model"):
        other.load_database(tmp_path / "db")


def test_search_database_with_root_survives_a_move(mini_flickr, tmp_path):
    import shutil

    root = tmp_path / "site"
    shutil.copytree(mini_flickr / "images", root / "photos")
    engine = ImageSearchEngine(tiny_model(), batch_size=4)
    engine.build_image_database(sorted(str(p) for p in (root / "photos").iterdir()), root=root)
    first = [h.path for h in engine.search_database("a dog", top_k=2)]
    assert all(p.startswith(str(root)) for p in first)
    engine.save_database(root / "db")
    moved = tmp_path / "moved"
    shutil.move(str(root), str(moved))  # e.g. the repository cloned somewhere else
    again = ImageSearchEngine(engine.model)
    again.load_database(moved / "db", root=moved)
    hits = again.search_database("a dog", top_k=2)
    assert [h.path for h in hits] == [p.replace(str(root), str(moved)) for p in first]
    assert all(os.path.isfile(h.path) for h in hits)


def test_query_bank_offsets_search_scores_and_round_trip(mini_flickr, tmp_path, hub_offline):
    from model_pkg.data import load_image
    from model_pkg.transforms import create_transform

    images = sorted(str(p) for p in (mini_flickr / "images").iterdir())
    query = "a black dog on the beach"
    model = tiny_model(text="transformers").eval()
    plain_engine = ImageSearchEngine(model, batch_size=4)
    plain_engine.build_image_database(images)
    plain_engine.save_database(tmp_path / "plain-db")

    model.set_query_bank(CAPTIONS, temperature=0.05)
    assert model.config.query_bank_size == len(CAPTIONS) and model.query_bank.shape == (len(CAPTIONS), 16)
    emb = model.get_image_features(torch.randn(3, 3, 32, 32))
    expected = -0.05 * torch.log(torch.exp(model.encode_text(CAPTIONS) @ emb.T / 0.05).mean(0))
    assert torch.allclose(model.image_score_offsets(emb), expected, atol=1e-5)

    engine = ImageSearchEngine(model, batch_size=4)
    with pytest.raises(GalleryMismatchError):  # built without the bank's offsets: refused, not mis-ranked
        engine.load_database(tmp_path / "plain-db")
    engine.build_image_database(images)
    hits = engine.search_database(query, top_k=6)
    # the search ranks every photo by cosine + its offset, exactly
    transform = create_transform(model.vision_model.backbone.data_config, train=False)
    text = model.encode_text([query])[0]
    expected_scores = {}
    for path in images:
        with torch.no_grad():
            e = model.get_image_features(transform(load_image(path))[None])
        expected_scores[path] = float(e[0] @ text + model.image_score_offsets(e)[0])
    assert [h.path for h in hits] == sorted(expected_scores, key=expected_scores.get, reverse=True)
    assert [round(h.score, 4) for h in hits] == [round(expected_scores[h.path], 4) for h in hits], (hits, expected_scores)
    assert [h.path for h in engine.rank_images(query, images, top_k=6)] == [h.path for h in hits]

    model.save_pretrained(tmp_path / "banked")
    again = AutoModel.from_pretrained(tmp_path / "banked")
    assert again.config.query_bank_size == len(CAPTIONS) and again.config.query_bank_temperature == 0.05
    assert torch.allclose(again.query_bank, model.query_bank)
    engine.save_database(tmp_path / "db")
    reloaded = ImageSearchEngine(again)
    reloaded.load_database(tmp_path / "db")
    assert [h.path for h in reloaded.search_database(query, top_k=6)] == [h.path for h in hits]
    with pytest.raises(ValueError, match="at least one caption"):
        model.set_query_bank([])
    with pytest.raises(ValueError, match="query_bank_temperature"):
        DualEncoderConfig(query_bank_temperature=0.0)


def test_query_bank_captions_one_per_photo(mini_flickr):
    from model_pkg.dual_encoder.training import query_bank_captions

    split = load_flickr8k_splits(mini_flickr)["train"]
    first_captions = [caps[0] for caps in split["captions"]]
    some = query_bank_captions(split, 2, seed=0)
    assert len(some) == 2 and set(some) <= set(first_captions) and some == query_bank_captions(split, 2, seed=0)
    assert sorted(query_bank_captions(split, 1000)) == sorted(first_captions)  # capped at one per photo
    with pytest.raises(ValueError, match="at least 1 caption"):
        query_bank_captions(split, 0)


# -- CLI and training -------------------------------------------------------------------------------------------
def test_train_tiny_run_and_text_search_cli(mini_flickr, tmp_path):
    from model_pkg.evaluate import main as evaluate_main
    from train.run import main as train_main

    model = json.dumps(
        {
            "vision_config": {**TINY_VISION, "freeze": True},
            "text_config": {"tower": "lstm", "embedding_dim": 8, "hidden_size": 8},
            "projection_dim": 8,
        }
    )
    summary = train_main(
        [
            "--task",
            "dual",
            "--config",
            "train/configs/dual_encoder_lstm_baseline.yaml",
            "--fresh",
            "--set",
            f"data_dir={mini_flickr}",
            "--set",
            f"output_dir={tmp_path / 'run'}",
            "--set",
            f"model={model}",
            "--set",
            "vocab_min_freq=1",
            "--set",
            "batch_size=3",
            "--set",
            "max_steps=4",
            "--set",
            "eval_steps=2",
            "--set",
            "report_to=none",
            "--set",
            "query_bank_size=2",
        ]
    )
    assert set(summary["dev"]) == {"text_to_image", "image_to_text"}
    assert summary["dev_without_query_bank"]["image_to_text"] == summary["dev"]["image_to_text"]  # the bank: t2i only
    assert any("eval_t2i_r10" in row for row in summary["log_history"])
    saved = tmp_path / "run" / "model"
    assert (saved / "README.md").is_file() and (saved / "model.safetensors").is_file()
    assert AutoModel.from_pretrained(saved).query_bank.shape == (2, 8)  # one caption of 2 of the 3 training photos
    out = tmp_path / "ts.json"
    result = evaluate_main(
        [
            "text-search",
            "--model",
            str(saved),
            "--images",
            str(mini_flickr / "images"),
            "--captions",
            str(mini_flickr / "Flickr8k.token.txt"),
            "--split-list",
            str(mini_flickr / "Flickr_8k.devImages.txt"),
            "--json",
            str(out),
        ]
    )
    stored = json.loads(out.read_text())
    assert set(stored["text_to_image"]) == {"r1", "r5", "r10", "mrr"} and stored["num_images"] == 3
    assert result["image_to_text"]["r10"] == 100.0  # 3 images: every caption set is in the top 10
    with pytest.raises(SystemExit, match="caption file"):
        evaluate_main(
            [
                "text-search",
                "--model",
                str(saved),
                "--images",
                str(mini_flickr / "images"),
                "--captions",
                str(tmp_path / "none.txt"),
                "--split-list",
                str(mini_flickr / "Flickr_8k.devImages.txt"),
            ]
        )
    with pytest.raises(SystemExit, match="not a dual encoder|'petmatch_dual_encoder'"):
        (tmp_path / "wrong").mkdir()
        (tmp_path / "wrong" / "config.json").write_text(json.dumps({"model_type": "petmatch_pair_matcher"}))
        evaluate_main(
            [
                "text-search",
                "--model",
                str(tmp_path / "wrong"),
                "--images",
                str(mini_flickr / "images"),
                "--captions",
                str(mini_flickr / "Flickr8k.token.txt"),
                "--split-list",
                str(mini_flickr / "Flickr_8k.devImages.txt"),
            ]
        )


def test_shipped_model_loads_offline(hub_offline):
    folder = Path(__file__).resolve().parents[2] / "models" / "dual-encoder"
    if not (folder / "config.json").is_file():
        pytest.skip("models/dual-encoder is not shipped in this checkout")
    model = AutoModel.from_pretrained(folder).eval()
    assert isinstance(model, DualEncoderModel)
    # MiniLM's frozen bottom layers and word embeddings are referenced from the PyPI package, not copied.
    assert (folder / "model.safetensors").stat().st_size < 25 * 2**20
    assert model.query_bank is not None and model.query_bank.shape == (model.config.query_bank_size, 256)
    emb = model.encode_text(["a black dog running on the beach", "a girl in a pink dress"])
    assert emb.shape == (2, model.config.projection_dim) and torch.isfinite(emb).all()
    assert float(F.cosine_similarity(emb[0], emb[1], dim=0)) < 0.99


def test_hub_caption_dataset_offline_is_a_clear_error(hub_offline, tmp_path):
    with pytest.raises(CaptionDataError, match="jxie/flickr8k"):
        load_caption_splits("jxie/flickr8k", cache_dir=tmp_path)


@pytest.mark.parametrize("pooling", ["timm", "attention"])
def test_earlier_feature_layer_cached_outputs_match_pixels_and_round_trip(tmp_path, pooling):
    """`vision_config.feature_layer`: the tower reads an earlier stage's map (the recommend bench's best layer
    for Flickr8k); its cached outputs give the same embeddings as pixels, before and after save/load."""
    model = tiny_model(vision_config={"feature_layer": "stage3", "pooling": pooling}).eval()
    t, c = model.vision_model.backbone.token_shape("stage3")
    assert model.vision_model.dim == c and model.vision_model.backbone.token_dim != c
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cached = model.vision_model.tower_outputs(pixels)
        assert cached.shape == ((2, t, c) if pooling == "attention" else (2, c))
        emb = model.get_image_features(pixels)
        torch.testing.assert_close(model.get_image_features(image_features=cached), emb)
    model.save_pretrained(tmp_path / "m")
    loaded = DualEncoderModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_image_features(pixels), emb)
    with pytest.raises(ValueError, match="no token layer 'stage9'"):
        tiny_model(vision_config={"feature_layer": "stage9"})


def test_flip_tta_of_an_earlier_feature_layer_round_trips(tmp_path):
    """`vision_config.tta_flip`: at inference a photo's stage tokens are the mean of its own and its mirror image's
    (the mirror's map flipped back); training with gradients sees the single view; a saved model keeps it."""
    model = tiny_model(vision_config={"feature_layer": "stage3", "freeze": True}).eval()
    backbone = model.vision_model.backbone
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own, mirror = backbone.forward_tokens(pixels, "stage3"), backbone.forward_tokens(pixels.flip(-1), "stage3")
        single = model.get_image_features(pixels)
        model.set_tta_flip(True)
        t, c = backbone.token_shape("stage3")
        side = int(t**0.5)
        mirror_back = mirror.transpose(1, 2).reshape(2, c, side, side).flip(-1).flatten(2).transpose(1, 2)
        torch.testing.assert_close(backbone.forward_tokens(pixels, "stage3"), 0.5 * (own + mirror_back))
        flipped = model.get_image_features(pixels)
    assert not torch.allclose(flipped, single)
    with torch.enable_grad():
        torch.testing.assert_close(backbone.forward_tokens(pixels, "stage3"), own)  # training: one view
    model.save_pretrained(tmp_path / "m")
    loaded = DualEncoderModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.vision_config.tta_flip and loaded.vision_model.backbone.tta_flip
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_image_features(pixels), flipped)


def test_image_tower_cache_is_keyed_by_the_weights(mini_flickr, tmp_path):
    """A frozen tower's cached outputs are reused on resume, and never read back for other weights under the same
    timm name and size (a tower tuned on a GPU, then frozen for the text side's training)."""
    from model_pkg.dual_encoder.training import image_tower_outputs

    paths = sorted(str(p) for p in (mini_flickr / "images").iterdir())[:2]
    first = tiny_model(vision_config={"freeze": True})
    second = tiny_model(vision_config={"freeze": True})
    with torch.no_grad():
        for p in second.vision_model.backbone.parameters():
            p.add_(0.5)
    a = image_tower_outputs(first, paths, str(tmp_path))
    b = image_tower_outputs(second, paths, str(tmp_path))
    assert not torch.allclose(a, b)
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 2
    torch.testing.assert_close(image_tower_outputs(first, paths, str(tmp_path)), a)  # read back: same outputs
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 2
