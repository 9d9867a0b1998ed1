"""Photo embedding throughput against plain timm, and the int8 image tower's accuracy cost (issue 14).

    OMP_NUM_THREADS=2 python bench/bench_embed_speed.py --json bench/results/embed_speed.json
    OMP_NUM_THREADS=2 python bench/bench_embed_speed.py --quality --json bench/results/embed_int8_quality.json

Speed (default): JPEG files of test dogs (DogFaceNet) -> decode, resize, normalise -> pooled feature, at batch
1, 6 and 32, each cell timed for `--seconds` after a warm-up batch, the variants taking turns per batch size:
* `timm eager`: plain timm, `timm.create_model("tf_efficientnet_lite0", num_classes=0)` with the same ImageNet
  weights, timm's own eval transform (`timm.data.create_transform`), `model(x)` under no_grad, fp32;
* `ours pytorch`: a saved ArcFace embedder on Lite0 at 224 px (no TTA) from `from_pretrained(use_onnx=False)`,
  `pool_photos` (the backbone's pooled feature) on `model_pkg.transforms` pixels in channels_last;
* `ours onnx fp32` / `ours onnx int8`: the same model with its `python -m model_pkg.export onnx` export
  (`--int8` for the latter) in `<model>/onnx/`, served by onnxruntime (`model_pkg.onnx_runtime`);
* `+ decode threads`: the ONNX paths with JPEG decoding on `--decode-threads` threads, one batch ahead;
* `shipped ...`: models/arcface-embedder (its image size; flip TTA = two backbone passes per photo), whole embedding.
`model only` is the same forward pass on pixels decoded beforehand.

Dual encoder (`--dual models/dual-encoder --json bench/results/embed_speed_dual.json`): `encode_text` on Flickr8k
captions (per second: captions) and `get_image_features` on Flickr8k photos (decode included), PyTorch vs ONNX.

Quality (`--quality`): the one-shot gallery of `python -m model_pkg.evaluate gallery` (G = 1, 20% unknown dogs,
seed 0, thresholds on val) on the test dogs, for the shipped embedder on PyTorch, ONNX fp32 and ONNX int8
(calibrated on `--calibration-photos` photos of training dogs). The int8 graph ships only if rank-1 drops
by less than 0.5 points.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import timm
import torch

from model_pkg.arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.backbones import load_offline_state_dict
from model_pkg.data import load_image
from model_pkg.export import export_onnx, list_photos, photo_pixels, spread
from model_pkg.fileio import atomic_write_json
from model_pkg.onnx_quantization import quantize_image_tower
from model_pkg.onnx_runtime import SPINNING, OnnxTower
from model_pkg.transforms import create_transform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DATA = os.path.join(ROOT, "..", "shared", "data", "dogfacenet")
SPLITS = os.path.join(ROOT, "train", "splits", "dogfacenet.json")
SHIPPED = os.path.join(ROOT, "models", "arcface-embedder")


def pixel_batches(paths: Sequence[str], batch: int, transform: Callable, threads: int) -> Iterator[torch.Tensor]:
    """Endless batches of decoded, transformed photos (cycling over `paths`). With `threads` > 0 the photos
    of a batch decode on that many threads, and the next batch decodes while the caller runs the model."""
    cycle = itertools.cycle(paths)
    chunks = (list(itertools.islice(cycle, batch)) for _ in itertools.count())
    if threads <= 0:
        for chunk in chunks:
            yield torch.stack([transform(load_image(p)) for p in chunk])
        return
    with ThreadPoolExecutor(threads) as decode, ThreadPoolExecutor(1) as ahead:

        def load(chunk: list[str]) -> torch.Tensor:
            return torch.stack(list(decode.map(lambda p: transform(load_image(p)), chunk)))

        pending = ahead.submit(load, next(chunks))
        for chunk in chunks:
            upcoming = ahead.submit(load, chunk)
            yield pending.result()
            pending = upcoming


@torch.no_grad()
def throughput(encode: Callable, batches: Iterator[torch.Tensor], seconds: float) -> dict[str, float]:
    """Images/s and ms/image of `encode` over `batches` for about `seconds`, after one warm-up batch."""
    encode(next(batches))
    images, start = 0, time.perf_counter()
    while True:
        pixels = next(batches)
        encode(pixels)
        images += len(pixels)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and images >= 3 * len(pixels):
            break
    return {"images_per_s": round(images / elapsed, 2), "ms_per_image": round(1000 * elapsed / images, 3), "images": images}


def build_lite0_embedder(folder: str) -> None:
    """A saved ArcFace embedder on ImageNet Lite0 at 224 px without TTA: `our` paths run exactly timm's network."""
    config = ArcFaceEmbedderConfig(backbone="tf_efficientnet_lite0", image_size=224, num_classes=0, tta_flip=False)
    ArcFaceEmbedderModel(config).eval().save_pretrained(folder)


def plain_timm() -> tuple[Callable, Callable]:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_offline_state_dict("tf_efficientnet_lite0", model))
    model.reset_classifier(0)  # -> the pooled feature, like num_classes=0
    model.eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    return model, timm.data.create_transform(**data_config)


def attach_fp32(model: ArcFaceEmbedderModel, folder: str, spinning: bool = SPINNING) -> None:
    """Serve the model's backbone with the fp32 graph of an export whose manifest points at the int8 one."""
    runner = model.backbone.onnx_runner
    assert runner is not None, f"no ONNX export attached from {folder}"
    entry = {**runner.entry, "file": runner.entry["fp32_file"], "precision": "fp32"}
    model.backbone.onnx_runner = OnnxTower(os.path.join(folder, "onnx", entry["file"]), entry, spinning=spinning)


def speed(args, work: str) -> dict:
    test_photos = spread(list_photos(args.data, args.splits, "test"), args.photos)
    lite0_dir, shipped_dir = os.path.join(work, "lite0-224"), os.path.join(work, "arcface-embedder")
    build_lite0_embedder(lite0_dir)
    shutil.copytree(args.shipped, shipped_dir, ignore=shutil.ignore_patterns("onnx"))
    exports = {}
    for folder in (lite0_dir, shipped_dir):
        start = time.perf_counter()
        export_onnx(folder, photos=args.data, int8=True, splits=args.splits, calibration_photos=args.calibration_photos)
        exports[os.path.basename(folder)] = round(time.perf_counter() - start, 1)

    timm_model, timm_transform = plain_timm()
    ours_pt = ArcFaceEmbedderModel.from_pretrained(lite0_dir, use_onnx=False).eval()
    ours_int8 = ArcFaceEmbedderModel.from_pretrained(lite0_dir).eval()
    ours_fp32 = ArcFaceEmbedderModel.from_pretrained(lite0_dir).eval()
    attach_fp32(ours_fp32, lite0_dir)
    ours_fp32_other = ArcFaceEmbedderModel.from_pretrained(lite0_dir).eval()
    attach_fp32(ours_fp32_other, lite0_dir, spinning=not SPINNING)
    shipped_pt = ArcFaceEmbedderModel.from_pretrained(shipped_dir, use_onnx=False).eval()
    shipped_int8 = ArcFaceEmbedderModel.from_pretrained(shipped_dir).eval()
    shipped_fp32 = ArcFaceEmbedderModel.from_pretrained(shipped_dir).eval()
    attach_fp32(shipped_fp32, shipped_dir)
    ours_tf = create_transform(ours_pt.data_config)
    shipped_tf = create_transform(shipped_pt.data_config)

    def ours(model):  # what model_pkg.features.compute_tokens feeds the backbone: channels_last pixels
        return lambda x: model.pool_photos(x.contiguous(memory_format=torch.channels_last))

    def shipped(model):
        return lambda x: model.get_image_features(pixel_values=x.contiguous(memory_format=torch.channels_last))

    cfg = shipped_pt.config
    what = f"{cfg.image_size} px, flip TTA" if getattr(cfg, "tta_flip", False) else f"{cfg.image_size} px"
    variants = {  # name: (encode, transform, decode threads)
        "timm eager": (timm_model, timm_transform, 0),
        "ours pytorch": (ours(ours_pt), ours_tf, 0),
        "ours onnx fp32": (ours(ours_fp32), ours_tf, 0),
        "ours onnx int8": (ours(ours_int8), ours_tf, 0),
        f"ours onnx fp32, spinning {'off' if SPINNING else 'on'}": (ours(ours_fp32_other), ours_tf, 0),
        "ours onnx fp32 + decode threads": (ours(ours_fp32), ours_tf, args.decode_threads),
        "ours onnx int8 + decode threads": (ours(ours_int8), ours_tf, args.decode_threads),
        f"shipped pytorch ({what})": (shipped(shipped_pt), shipped_tf, 0),
        f"shipped onnx fp32 ({what})": (shipped(shipped_fp32), shipped_tf, 0),
        f"shipped onnx int8 ({what})": (shipped(shipped_int8), shipped_tf, 0),
    }
    rows = []
    for batch in args.batch_sizes:
        for name, (encode, transform, threads) in variants.items():
            row = {"variant": name, "batch": batch, "decode_threads": threads}
            row.update(throughput(encode, pixel_batches(test_photos, batch, transform, threads), args.seconds))
            if threads == 0:  # the model alone, on pixels decoded beforehand
                fixed = next(pixel_batches(test_photos, batch, transform, 0))
                model_only = throughput(encode, itertools.repeat(fixed), args.seconds / 2)
                row["model_only_images_per_s"] = model_only["images_per_s"]
            rows.append(row)
            print(
                f"batch {batch:>2}  {name:<40} {row['images_per_s']:>7.1f} img/s  {row['ms_per_image']:>7.2f} ms/img"
                f"  model only {row.get('model_only_images_per_s', float('nan')):>7.1f}",
                flush=True,
            )
    baseline = max((r for r in rows if r["variant"] == "timm eager"), key=lambda r: r["images_per_s"])
    for row in rows:
        row["x_timm_best"] = round(row["images_per_s"] / baseline["images_per_s"], 2)
    return {
        "timm_best_batch": baseline["batch"],
        "timm_best_images_per_s": baseline["images_per_s"],
        "export_seconds": exports,
        "rows": rows,
    }


def quality(args, work: str) -> dict:
    from model_pkg.evaluation import evaluate_gallery_protocol

    folder = os.path.join(work, "arcface-embedder")
    shutil.copytree(args.shipped, folder, ignore=shutil.ignore_patterns("onnx"))
    manifest = export_onnx(folder, photos=args.data, int8=True, splits=args.splits, calibration_photos=args.calibration_photos)
    int8 = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    fp32 = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    attach_fp32(fp32, folder)
    pytorch = ArcFaceEmbedderModel.from_pretrained(folder, use_onnx=False).eval()
    # the same calibration with full 8-bit weights, whose uint8 x int8 products saturate on CPUs without VNNI
    calibration = spread(list_photos(args.data, args.splits, "train"), args.calibration_photos)
    full = os.path.join(folder, "onnx", "image.int8-full-range.onnx")
    quantize_image_tower(
        os.path.join(folder, "onnx", "image.onnx"), full, photo_pixels(pytorch.backbone, calibration), reduce_range=False
    )
    int8_full = ArcFaceEmbedderModel.from_pretrained(folder).eval()
    int8_full.backbone.onnx_runner = OnnxTower(full, {**manifest["towers"]["image"], "file": os.path.basename(full)})
    keys = ("rank1", "rank5", "map", "open_set_auroc", "known_accuracy", "unknown_rejection", "balanced_accuracy")
    rows = []
    variants = (
        ("pytorch", pytorch),
        ("onnx fp32", fp32),
        ("onnx int8 (7-bit weights: the export's)", int8),
        ("onnx int8, full 8-bit weights", int8_full),
    )
    for name, model in variants:
        start = time.perf_counter()
        result = evaluate_gallery_protocol(
            model,
            args.data,
            gallery_per_id=1,
            unknown_fraction=0.2,
            seed=0,
            splits=args.splits,
            split="test",
            threshold_split="val",
        )
        rows.append({"variant": name, **{k: result[k] for k in keys}, "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    drop = rows[0]["rank1"] - rows[2]["rank1"]  # the int8 graph `export --int8` writes
    return {
        "protocol": "evaluate gallery, test split, G=1, 20% unknown, seed 0, thresholds on val",
        "int8_calibration": manifest["towers"]["image"]["calibration"],
        "int8_check": manifest["towers"]["image"]["check_int8"],
        "rows": rows,
        "int8_rank1_drop_points": round(drop, 3),
        "int8_full_range_rank1_drop_points": round(rows[0]["rank1"] - rows[3]["rank1"], 3),
        "int8_ships": bool(drop < 0.5),
    }


def per_item(measured: dict[str, float]) -> dict[str, float]:
    """`throughput`'s numbers for items that are captions or photos."""
    return {"per_s": measured["images_per_s"], "ms_each": measured["ms_per_image"], "items": measured["images"]}


def dual(args, work: str) -> dict:
    """The dual encoder's towers on PyTorch and on ONNX Runtime: Flickr8k captions and photos."""
    from model_pkg.dual_encoder import DualEncoderModel

    folder = os.path.join(work, "dual-encoder")
    shutil.copytree(args.dual, folder, ignore=shutil.ignore_patterns("onnx"))
    images = os.path.join(args.flickr, "images")
    start = time.perf_counter()
    manifest = export_onnx(folder, photos=images)
    export_seconds = round(time.perf_counter() - start, 1)
    models = {
        "pytorch": DualEncoderModel.from_pretrained(folder, use_onnx=False).eval(),
        "onnx fp32": DualEncoderModel.from_pretrained(folder).eval(),
    }
    with open(os.path.join(args.flickr, "Flickr8k.token.txt"), encoding="utf-8") as fh:
        captions = [line.split("\t", 1)[1].strip() for line in itertools.islice(fh, 512)]
    photos = spread(list_photos(images), args.photos)
    rows = []
    for batch in args.batch_sizes:
        for name, model in models.items():
            chunks = (captions[i : i + batch] for i in itertools.cycle(range(0, len(captions) - batch + 1, batch)))
            text = throughput(lambda texts: model.encode_text(texts), chunks, args.seconds)  # noqa: B023
            rows.append({"tower": "text", "variant": name, "batch": batch, **per_item(text)})
            transform = create_transform(model.vision_model.backbone.data_config)
            image = throughput(lambda x: model.get_image_features(x), pixel_batches(photos, batch, transform, 0), args.seconds)  # noqa: B023
            rows.append({"tower": "image", "variant": name, "batch": batch, **per_item(image)})
            print(
                f"batch {batch:>2}  {name:<10} text {text['images_per_s']:>8.1f}/s  image {image['images_per_s']:>7.1f}/s",
                flush=True,
            )
    return {"export_seconds": export_seconds, "checks": {k: v["check"] for k, v in manifest["towers"].items()}, "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="DogFaceNet identity folders")
    parser.add_argument("--splits", default=SPLITS, help="splits JSON: test dogs are timed, training dogs calibrate int8")
    parser.add_argument("--shipped", default=SHIPPED, help="the shipped ArcFace embedder folder (copied, never modified)")
    parser.add_argument("--quality", action="store_true", help="measure the int8 accuracy cost instead of speed")
    parser.add_argument("--dual", default=None, help="time this dual-encoder folder's towers instead (copied, never modified)")
    parser.add_argument("--flickr", default=os.path.join(ROOT, "..", "shared", "data", "flickr8k"), help="Flickr8k folder")
    parser.add_argument("--batch-sizes", default="1,6,32")
    parser.add_argument("--photos", type=int, default=256, help="test photos cycled through")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--calibration-photos", type=int, default=256)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        result = quality(args, work) if args.quality else dual(args, work) if args.dual else speed(args, work)
    import onnxruntime

    result["setup"] = {
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "torch": torch.__version__.split("+")[0],
        "timm": timm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "photos": "Flickr8k photos and captions" if args.dual else "DogFaceNet test dogs (224x224 JPEG)",
    }
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
