"""Which threshold policy decides best on pairs it was not chosen on? Validation dogs only (issue 12).

    python scripts/threshold_policy.py --models imagenet-cosine,models/pair-matcher --json bench/results/threshold_policy_val.json

For each model and set size, the validation dogs' pairs are drawn twice with different seeds: thresholds
are chosen on the first draw (random- and hard-negative pairs) and judged on the second, so a policy that
only fits the noise of its own pairs shows it. Policies: `random` (best accuracy on random-negative pairs,
the pairs a shelter sees; ties to the lowest threshold), `guarded@t` (within t of that accuracy, the
threshold best on hard-negative pairs: `metrics.choose_guarded_threshold`), `balanced` (best mean of the two
accuracies). The test dogs are not touched.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from model_pkg.evaluation import BASELINE, evaluate_pair
from model_pkg.fileio import atomic_write_json
from model_pkg.loading import load_pair_model
from model_pkg.metrics import choose_guarded_threshold, choose_threshold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scores(model, data, splits, size, negatives, seed, pairs) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.npz")
        evaluate_pair(
            model, data, set_size=size, pairs=pairs, seed=seed, negatives=negatives, splits=splits, split="val",
            threshold_split="", save_scores=path,
        )  # fmt: skip
        with np.load(path) as npz:
            return npz["labels"].astype(int), npz["scores"].astype(np.float64)


def accuracy(labels: np.ndarray, s: np.ndarray, t: float) -> float:
    return float(((s >= t) == labels).mean())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=f"{BASELINE},models/pair-matcher")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "dogfacenet"))
    parser.add_argument("--splits", default=os.path.join(ROOT, "train", "splits", "dogfacenet.json"))
    parser.add_argument("--sizes", default="1,3")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--seeds", default="100,101", help="choose on the first draw, judge on the second")
    parser.add_argument("--tolerances", default="0.0025,0.005,0.01")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    choose_seed, judge_seed = (int(s) for s in args.seeds.split(","))
    rows = []
    for name in args.models.split(","):
        model = name if name == BASELINE else load_pair_model(name)
        for size in (int(s) for s in args.sizes.split(",")):
            draws = {
                (neg, seed): scores(model, args.data, args.splits, size, neg, seed, args.pairs)
                for neg in ("random", "hard")
                for seed in (choose_seed, judge_seed)
            }
            (ry, rs), (hy, hs) = draws[("random", choose_seed)], draws[("hard", choose_seed)]
            policies = {"random": choose_threshold(ry, rs)}
            for tol in (float(t) for t in args.tolerances.split(",")):
                policies[f"guarded@{tol:g}"] = choose_guarded_threshold(ry, rs, hy, hs, tol)
            candidates = np.unique(np.concatenate([rs, hs]))
            means = [(accuracy(ry, rs, t) + accuracy(hy, hs, t)) / 2 for t in candidates]
            policies["balanced"] = float(candidates[int(np.argmax(means))])
            (jry, jrs), (jhy, jhs) = draws[("random", judge_seed)], draws[("hard", judge_seed)]
            for policy, t in policies.items():
                row = {
                    "model": name,
                    "set_size": f"{size}v{size}",
                    "policy": policy,
                    "threshold": t,
                    "random_acc_chosen_on": accuracy(ry, rs, t),
                    "hard_acc_chosen_on": accuracy(hy, hs, t),
                    "random_acc_new_pairs": accuracy(jry, jrs, t),
                    "hard_acc_new_pairs": accuracy(jhy, jhs, t),
                }
                rows.append(row)
                print(
                    f"{name:24s} {size}v{size} {policy:14s} thr {t:.4f}  new pairs: random {100 * row['random_acc_new_pairs']:.1f}% "
                    f"hard {100 * row['hard_acc_new_pairs']:.1f}%  (chosen-on: {100 * row['random_acc_chosen_on']:.1f}% / "
                    f"{100 * row['hard_acc_chosen_on']:.1f}%)",
                    flush=True,
                )
    print("\n| model | pairs | policy | random (new val pairs) | hard (new val pairs) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['set_size']} | {r['policy']} | {100 * r['random_acc_new_pairs']:.1f}% | "
            f"{100 * r['hard_acc_new_pairs']:.1f}% |"
        )
    if args.json:
        atomic_write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
