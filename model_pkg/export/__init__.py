"""`python -m model_pkg.export onnx`: export a saved model's towers to ONNX for ONNX Runtime inference.

    python -m model_pkg.export onnx --model models/arcface-embedder --photos ../shared/data/dogfacenet
    python -m model_pkg.export onnx --model models/arcface-embedder --photos ../shared/data/dogfacenet \\
        --splits train/splits/dogfacenet.json --int8          # + int8 image tower, calibrated on training dogs
    python -m model_pkg.export onnx --model models/dual-encoder --photos ../shared/data/flickr8k/images

writes `<model>/onnx/` (or `--out`): `image.onnx` (pixels (B, 3, S, S) -> the backbone's tokens (B, T, D), flip
TTA included when the model uses it; for a dual encoder the tokens of its `feature_layer`), `text.onnx` (a dual
encoder's transformers text tower: ids, mask (B, L) -> mean-pooled (B, H)), and `manifest.json` (opset, input
size, layer, TTA, checksum of the weights each graph came from, and the check below). `from_pretrained` uses
them when they lie in `<model>/onnx/` (`model_pkg.onnx_runtime`); preprocessing stays `model_pkg.transforms`.

Every graph (opset 18, dynamic batch axis; dynamic sequence axis for text) is run by onnxruntime on real photos
from `--photos` (and on fixed sentences) and compared with PyTorch: the export fails unless the largest
difference is at most `--tolerance` times the largest output value. `--int8` adds a statically quantised image
tower (QDQ, per-channel 7-bit int8 weights, uint8 activations, MinMax ranges from `--calibration-photos` photos
of the `--calibration-split` dogs) and makes it the one inference uses; its agreement with PyTorch (cosine of pooled
features) is recorded, its accuracy is for `python -m model_pkg.evaluate` on the exported folder to judge.
Exporting needs the `onnx` and `onnxscript` packages (requirements.txt); running needs only `onnxruntime`.
The comparison with PyTorch is `model_pkg.onnx_check`, the int8 step `model_pkg.onnx_quantization`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from ..data import IMAGE_EXTENSIONS, load_splits
from ..fileio import atomic_write_json
from ..modeling_utils import UntrustedModelError, check_model_folder
from ..onnx_check import check_image_graph, relative_error
from ..onnx_quantization import quantize_image_tower
from ..onnx_runtime import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    ONNX_SUBDIR,
    ExportError,
    create_session,
    export_graph,
    exportable_towers,
    tower_checksum,
)
from ..photo_batches import PixelLoader, load_photos
from ..transforms import create_transform

__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx", "quantize_image_tower"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4  # fp32 ONNX Runtime vs PyTorch: largest |difference| / largest |output|
# Fixed sentences the text graph is checked on: short and long, punctuation, another language, a typo.
CHECK_SENTENCES = [
    "a black dog",
    "Two children play with a brown puppy in the park near a red fountain.",
    "chien noir qui court sur la plage",
    "a dgo jumping over a fence!",
    "A man in a blue jacket rides a bicycle down a wet street while a small white dog runs beside him "
    "and people wait under umbrellas at the bus stop on the corner of the busy road.",
]


# -- loading -------------------------------------------------------------------------------------------
def load_for_export(folder: str | os.PathLike) -> nn.Module:
    """A saved petmatch model in float32 eval mode, on PyTorch only (an existing export is not used)."""
    from ..arcface import ArcFaceEmbedderModel
    from ..dual_encoder import DualEncoderModel
    from ..pair_matcher import PairMatcherModel

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ExportError(f"{str(path)!r} is not a saved model folder (no config.json): pass --model <folder>.")
    try:
        check_model_folder(path)
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (UntrustedModelError, ValueError) as err:
        raise ExportError(str(err)) from err
    classes = {cls.config_class.model_type: cls for cls in (ArcFaceEmbedderModel, PairMatcherModel, DualEncoderModel)}
    if model_type not in classes:
        raise ExportError(f"{str(path)!r} holds a {model_type!r} model; export handles {sorted(classes)}.")
    model = classes[model_type].from_pretrained(path, dtype=torch.float32, use_safetensors=True, use_onnx=False)
    return model.float().eval()


def list_photos(root: str | os.PathLike, splits: str | os.PathLike | None = None, split: str | None = None) -> list[str]:
    """Image files under `root` (sorted), only of the identities (sub-folder names) of `split` when given."""
    base = Path(root)
    if not base.is_dir():
        raise ExportError(f"photo folder {str(base)!r} does not exist: pass --photos <folder of photos>.")
    paths = sorted(str(p) for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if splits is not None and split is not None:
        ids = set(load_splits(splits).get(split) or [])
        if not ids:
            raise ExportError(f"split {split!r} of {os.fspath(splits)!r} lists no identities.")
        paths = [p for p in paths if Path(p).parent.name in ids]
    if not paths:
        raise ExportError(
            f"no photos ({', '.join(IMAGE_EXTENSIONS)}) under {str(base)!r}" + (f" for split {split!r}" if split else "")
        )
    return paths


def spread(items: Sequence[str], count: int) -> list[str]:
    """`count` items evenly spaced over `items` (all of them when there are fewer): many dogs, not one."""
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def photo_pixels(backbone: Backbone, paths: Sequence[str]) -> torch.Tensor:
    """Photos -> (N, 3, S, S) through the model's own eval transform (`model_pkg.transforms`)."""
    return torch.stack(load_photos(paths, PixelLoader(create_transform(backbone.data_config, train=False)))[0])


# -- the graphs ----------------------------------------------------------------------------------------
class ImageTowerGraph(nn.Module):
    """What `image.onnx` computes: `Backbone.forward_tokens(pixels, layer)` under no_grad (flip TTA included)."""

    def __init__(self, backbone: Backbone, layer: str | None):
        super().__init__()
        self.backbone = backbone
        self.layer = layer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_tokens(pixel_values, self.layer)


def export_image_tower(backbone: Backbone, layer: str | None, path: Path, pixels: torch.Tensor, opset: int) -> dict[str, Any]:
    graph = ImageTowerGraph(backbone, layer)
    batch = torch.export.Dim("batch", min=1, max=4096)
    export_graph(graph, (pixels[:2],), (["pixel_values"], ["tokens"]), ({0: batch},), path, opset)
    return {
        "file": path.name,
        "inputs": ["pixel_values"],
        "output": "tokens",
        "input_size": [3, backbone.image_size, backbone.image_size],
        "layer": layer,
        "tta_flip": bool(backbone.tta_flip),
        "precision": "fp32",
        "check": check_image_graph(path, graph, pixels),
    }


def export_text_tower(model: Any, path: Path, opset: int) -> dict[str, Any]:
    tower = model.text_model
    encoded = model.tokenize(CHECK_SENTENCES)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=2, max=4096)
    shapes = ({0: batch, 1: length}, {0: batch, 1: length})
    export_graph(tower, (ids[:2], mask[:2]), (["input_ids", "attention_mask"], ["text_features"]), shapes, path, opset)
    session = create_session(path)
    with torch.no_grad():
        reference = tower(ids, mask).numpy()
    diffs = []
    for rows in (slice(0, 1), slice(None)):  # one sentence, and the padded batch
        width = int(mask[rows].sum(1).max())  # a batch of one carries no padding
        feeds = {"input_ids": ids[rows, :width].numpy(), "attention_mask": mask[rows, :width].numpy()}
        diffs.append(relative_error(reference[rows], session.run(None, feeds)[0]))
    return {
        "file": path.name,
        "inputs": ["input_ids", "attention_mask"],
        "output": "text_features",
        "max_length": int(model.config.text_config.max_length),
        "precision": "fp32",
        "check": {"sentences": len(CHECK_SENTENCES), "relative_error": max(diffs)},
    }


# -- the whole export ---------------------------------------------------------------------------------
def export_onnx(
    model_folder: str | os.PathLike,
    photos: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    towers: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    check_photos: int = 16,
    tolerance: float = DEFAULT_TOLERANCE,
    int8: bool = False,
    splits: str | os.PathLike | None = None,
    calibration_split: str = "train",
    calibration_photos: int = 256,
) -> dict[str, Any]:
    """Export the towers of the model saved in `model_folder` to `out` (default `<model_folder>/onnx`).

    Args:
        photos: folder of real photos (identity sub-folders or flat) the image graph is checked on, and
            calibrated on with `int8`.
        towers: `image`, `text` (default: every tower the model has; see `onnx_runtime.exportable_towers`).
        opset: ONNX opset.
        check_photos: photos, evenly spaced over `photos`, the graph is compared with PyTorch on.
        tolerance: the largest allowed |ONNX - PyTorch| over the largest |PyTorch output| (fp32 graphs).
        int8: also write `image.int8.onnx`, statically quantised, and make it the one inference uses.
        splits, calibration_split: calibrate on the photos of this split's identities (e.g. training dogs)
            only; without `splits` on all of `photos`.
        calibration_photos: photos the int8 ranges are measured on.

    Returns the manifest written to `<out>/manifest.json` (last, atomically: a failed export leaves no manifest
    that points at it). Raises `ExportError` with what to do for bad arguments or a graph that disagrees."""
    model: Any = load_for_export(model_folder)  # a petmatch model: its towers differ by type
    available = exportable_towers(model)
    wanted = list(towers or available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ExportError(f"model {os.fspath(model_folder)!r} has no tower {unknown}; it has {sorted(available)}.")
    if int8 and "image" not in wanted:
        raise ExportError("--int8 quantises the image tower: export it too (--towers image).")
    if photos is None and "image" in wanted:
        raise ExportError("checking (and calibrating) the image graph needs real photos: pass --photos <folder of photos>.")
    out_dir = Path(out) if out is not None else Path(model_folder) / ONNX_SUBDIR
    out_dir.mkdir(parents=True, exist_ok=True)
    # An earlier export's manifest goes first: until the new one is complete, the model runs on PyTorch.
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "model_type": model.config.model_type,
        "opset": opset,
        "exporter": f"torch {torch.__version__.split('+')[0]} dynamo",
        "tolerance": tolerance,
        "towers": {},
    }
    for name in wanted:
        module, layer = available[name]
        path = out_dir / f"{name}.onnx"
        if name == "image":
            assert isinstance(module, Backbone) and photos is not None
            pixels = photo_pixels(module, spread(list_photos(photos), max(check_photos, 2)))
            entry = export_image_tower(module, layer, path, pixels, opset)
            entry["check"]["photos"] = len(pixels)
        else:
            if getattr(model.config.text_config, "tower", None) != "transformers":
                raise ExportError("only a transformers text tower is exported (the LSTM baseline is not).")
            entry = export_text_tower(model, path, opset)
        if entry["check"]["relative_error"] > tolerance:
            path.unlink(missing_ok=True)
            raise ExportError(
                f"the exported {name} graph disagrees with PyTorch: relative error {entry['check']['relative_error']:.2e} "
                f"> tolerance {tolerance:.0e}. Report it with your torch / onnxruntime versions; the model runs on PyTorch."
            )
        entry["source_checksum"] = tower_checksum(module)
        manifest["towers"][name] = entry
        logger.info("exported the %s tower to %s: %s", name, path, entry["check"])
    if int8:
        backbone, layer = available["image"]
        assert isinstance(backbone, Backbone) and photos is not None
        chosen = spread(list_photos(photos, splits, calibration_split if splits else None), calibration_photos)
        int8_path = out_dir / "image.int8.onnx"
        calibration = quantize_image_tower(out_dir / "image.onnx", int8_path, photo_pixels(backbone, chosen))
        calibration["split"] = calibration_split if splits else "all photos"
        entry = manifest["towers"]["image"]
        pixels = photo_pixels(backbone, spread(list_photos(photos), max(check_photos, 2)))
        check = check_image_graph(int8_path, ImageTowerGraph(backbone, layer), pixels)
        check["photos"] = len(pixels)
        entry.update(file=int8_path.name, fp32_file="image.onnx", precision="int8", calibration=calibration, check_int8=check)
    atomic_write_json(manifest, out_dir / MANIFEST_FILE)
    return manifest
