"""Truth and correlation for bench_recommend.py: what each backbone really achieves, and how well the scores rank it.

The truth is :func:`one_shot_rank1` (one-shot gallery rank-1 on the test dogs) and :func:`flickr_t2i_r10`
(text->image R@10 after a LiT-style linear probe); :func:`correlate` adds the rank-average `combined` score
and the Kendall / weighted tau of every score against each truth, :func:`merge` pools earlier runs, and
:func:`append_rows` extends the JSON-lines results table. Separate from the benchmark's driver because
``--merge`` and the report need only these, not the models or the images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model_pkg.fileio import atomic_write, atomic_write_json
from model_pkg.metrics import retrieval_metrics
from model_pkg.recommend.scores import rank_average


def one_shot_rank1(features: np.ndarray, labels: list[str], draws: int, seed: int) -> float:
    """Mean rank-1 (percent) over `draws` one-shot galleries: one random photo per dog registered, the rest query."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    by_dog: dict = {}
    for i, dog in enumerate(labels):
        by_dog.setdefault(dog, []).append(i)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        gallery = np.array([rng.choice(idx) for idx in by_dog.values()])
        queries = np.setdiff1d(np.arange(len(labels)), gallery)
        values.append(retrieval_metrics(labels[queries], labels[gallery], f[queries] @ f[gallery].T, ks=(1,))["r1"])
    return float(np.mean(values))


def flickr_t2i_r10(train_x, train_caps, dev_x, dev_caps, epochs: int = 20, seed: int = 0) -> float:
    """LiT-style: frozen image features -> a trained linear map into the frozen caption space (symmetric
    InfoNCE, one random caption of each photo per step); text->image R@10 (percent) on the dev photos."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    caps = torch.nn.functional.normalize(torch.from_numpy(train_caps).float(), dim=-1)  # (N, 5, E)
    proj = torch.nn.Linear(x.shape[1], caps.shape[-1])
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*proj.parameters(), log_scale], lr=1e-3, weight_decay=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 256):
            idx = order[i : i + 256]
            img = torch.nn.functional.normalize(proj(x[idx]), dim=-1)
            txt = caps[idx, torch.randint(0, caps.shape[1], (len(idx),), generator=g)]
            logits = log_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
            target = torch.arange(len(idx))
            loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        img = torch.nn.functional.normalize(proj(torch.from_numpy((dev_x - mean) / std).float()), dim=-1).numpy()
    txt = dev_caps.reshape(-1, dev_caps.shape[-1])
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    owners = np.repeat(np.arange(len(dev_caps)), dev_caps.shape[1])
    return retrieval_metrics(owners, np.arange(len(dev_caps)), txt @ img.T, ks=(10,))["r10"]


def taus(scores: dict, truth: list[float]) -> dict:
    from scipy.stats import kendalltau, weightedtau

    return {
        name: {"kendall_tau": float(kendalltau(v, truth).statistic), "weighted_tau": float(weightedtau(v, truth).statistic)}
        for name, v in scores.items()
    }


def append_rows(table: Path, rows: list[dict]) -> None:
    """Append `rows` to the JSON-lines results table atomically (the old table plus the new rows)."""
    old = table.read_text(encoding="utf-8") if table.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write(table, lambda fh: fh.write(old + "".join(json.dumps(r) + "\n" for r in rows)))


TRUTH_OF = {"dog": "dog_one_shot_rank1", "flickr": "flickr_t2i_r10"}
SCORE_NAMES = ("logme", "knn_loo", "combined")


def correlate(results: list[dict]) -> dict:
    """Add each task's rank-average `combined` score to `results`; Kendall / weighted tau of every score vs truth."""
    for task in TRUTH_OF:
        combined = rank_average({s: [r[f"{task}_{s}"] for r in results] for s in ("logme", "knn_loo")})
        for r, v in zip(results, combined):
            r[f"{task}_combined"] = float(v)
    correlation = {
        task: taus({s: [r[f"{task}_{s}"] for r in results] for s in SCORE_NAMES}, [r[truth] for r in results])
        for task, truth in TRUTH_OF.items()
    }
    mean = lambda key: {s: float(np.mean([correlation[t][s][key] for t in TRUTH_OF])) for s in SCORE_NAMES}  # noqa: E731
    return {
        "candidates": results,
        "correlation": correlation,
        "mean_weighted_tau": mean("weighted_tau"),
        "mean_kendall_tau": mean("kendall_tau"),
    }


def merge(paths: list[str], out: str | None) -> dict:
    """Pool the candidates of several runs (same protocol) and recompute combined scores and taus."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    protocols = {json.dumps(r["protocol"], sort_keys=True) for r in runs}
    if len(protocols) != 1:
        raise SystemExit(f"cannot merge runs with different protocols: {sorted(protocols)}")
    results = [c for r in runs for c in r["candidates"]]
    summary = {
        **correlate(results),
        "extraction": {k: v for r in runs for k, v in r["extraction"].items()},
        "protocol": runs[0]["protocol"],
        "merged_from": paths,
    }
    print(json.dumps({k: summary[k] for k in ("correlation", "mean_weighted_tau", "mean_kendall_tau")}, indent=1))
    if out:
        atomic_write_json(summary, out)
    return summary
