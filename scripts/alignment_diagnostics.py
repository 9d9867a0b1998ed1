"""Where unpaired alignment loses on the text pair: the ceiling of a linear map, and the anchor matching.

    python scripts/alignment_diagnostics.py --cache-dir /work/feature_cache

Uses the true caption pairs, which the aligner never sees, only to judge it:

* the top-1 of no map (raw coordinates compared), and of orthogonal Procrustes / least squares fitted on
  the paired non-held-out captions: the best any linear map can do (the held-back split of
  bench_alignment.py: 8,192 captions, seed 0);
* for a few k-means runs on the two fitting halves, how many of the 20 centroids each quadratic-assignment
  method (scipy's FAQ and 2-opt, 30 restarts each) matches to the B centroid that the paired map says
  is its counterpart, and the QAP objective of the found and of that true permutation (found < true:
  the solver, not the kernels, is what fails).

With `--fixed-point`: where unpaired self-learning settles *if it starts at the answer*. On the
benchmark's split (seed 0; `model_pkg.data.splits.split_by_group`, as bench_alignment.py), the map is started at the paired optimum
(orthogonal Procrustes on the true pairs of both fitting halves) and then refined without pairs, as the
aligner does: 10 CSLS self-learning steps (our last stage) or 100 Refine-1 steps; the first with the
fitting halves cut to 2,000 / 4,000 / all points per side. The top-1 it drifts to bounds what an
unpaired fit on that much data can reach.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment, quadratic_assignment

from model_pkg.align import MiniVec2VecAligner, MiniVec2VecConfig
from model_pkg.align.steps import centre_and_normalize, centred_kernel, procrustes
from model_pkg.data.splits import split_by_group
from model_pkg.metrics import alignment_metrics


def centred_unit(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="/work/feature_cache")
    parser.add_argument("--runs", type=int, default=4, help="k-means runs whose centroid matching is checked")
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--fixed-point", action="store_true", help="only the fixed-point analysis (see above)")
    args = parser.parse_args()
    if args.fixed_point:
        return fixed_point(args.cache_dir)
    za = np.load(os.path.join(args.cache_dir, "flickr8k__all-MiniLM-L6-v2__0__meanpool.npz"))
    zb = np.load(os.path.join(args.cache_dir, "flickr8k__paraphrase-MiniLM-L3-v2__0__meanpool.npz"))
    if not (za["paths"] == zb["paths"]).all():
        raise SystemExit("the two caption caches are not in the same order")
    a_all, b_all = za["features"].astype(np.float64), zb["features"].astype(np.float64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(a_all))
    held, fit = order[:8192], order[8192:]
    a, b = centred_unit(a_all, a_all[fit].mean(0)), centred_unit(b_all, b_all[fit].mean(0))
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    print("no map:", alignment_metrics(f32(a[held]), f32(b[held])))
    w, _ = orthogonal_procrustes(a[fit], b[fit])
    print("paired orthogonal Procrustes (ceiling):", alignment_metrics(f32(a[held] @ w), f32(b[held])))
    wl, *_ = np.linalg.lstsq(a[fit], b[fit], rcond=None)
    print("paired least squares (ceiling):", alignment_metrics(f32(a[held] @ wl), f32(b[held])))

    half_a, half_b = fit[: len(fit) // 2], fit[len(fit) // 2 :]
    xa = centred_unit(a_all[half_a], a_all[half_a].mean(0)).astype(np.float32)
    xb = centred_unit(b_all[half_b], b_all[half_b].mean(0)).astype(np.float32)
    aligner = MiniVec2VecAligner(MiniVec2VecConfig())
    r = np.random.default_rng(1)
    for run in range(args.runs):
        ca, cb = aligner._kmeans(xa, 20, r), aligner._kmeans(xb, 20, r)
        ka, kb = centred_kernel(ca), centred_kernel(cb)
        _, truth = linear_sum_assignment(-(unit(ca @ w) @ unit(cb).T))

        def objective(perm: np.ndarray, ka=ka, kb=kb) -> float:  # bound now: the loop rebinds ka, kb
            return float(np.sum(ka * kb[np.ix_(perm, perm)])) / float(np.sum(ka * ka))

        for method, extra in (("faq", {"P0": "randomized"}), ("2opt", {})):
            start = time.perf_counter()
            best = max(
                (
                    quadratic_assignment(ka, kb, method=method, options={"maximize": True, "rng": r, **extra})
                    for _ in range(args.restarts)
                ),
                key=lambda res: res.fun,
            )
            print(
                f"run {run} {method:4s} x{args.restarts}: {np.mean(best.col_ind == truth):.2f} of centroids matched right, "
                f"objective {objective(best.col_ind):.3f} (true permutation {objective(truth):.3f}), "
                f"{time.perf_counter() - start:.1f} s"
            )


def fixed_point(cache_dir: str) -> None:
    za = np.load(os.path.join(cache_dir, "flickr8k__all-MiniLM-L6-v2__0__meanpool.npz"))
    zb = np.load(os.path.join(cache_dir, "flickr8k__paraphrase-MiniLM-L3-v2__0__meanpool.npz"))
    a_all, b_all = za["features"].astype(np.float32), zb["features"].astype(np.float32)
    groups = np.array([p.split("#")[0] for p in za["paths"].astype(str)])
    held, half_a, half_b = split_by_group(groups, 8192, 0)
    mean_a, mean_b = a_all[half_a].mean(0), b_all[half_b].mean(0)
    a, b = centre_and_normalize(a_all, mean_a, "A"), centre_and_normalize(b_all, mean_b, "B")
    fit = np.concatenate([half_a, half_b])
    w_star = procrustes(a[fit], b[fit])  # uses the pairs: the start, never a method
    top1 = lambda w: alignment_metrics(a[held] @ w, b[held])["top1"]  # noqa: E731
    print(f"paired optimum (start): top-1 {top1(w_star):.3f}")
    # the aligner's own stages, from the paired optimum (defaults: k = 10; Refine-1 1,000 points, k = 50, alpha 0.5)
    aligner = MiniVec2VecAligner(MiniVec2VecConfig(csls_iterations=10, refine1_iterations=100))
    for n in (2000, 4000, len(half_a)):
        w = aligner._csls_self_learning(a[half_a[:n]], b[half_b[:n]], w_star, np.random.default_rng(0))
        print(f"{n} points per side, 10 CSLS self-learning steps from the optimum: top-1 {top1(w):.3f}", flush=True)
    w = aligner._refine1(a[half_a], b[half_b], w_star, np.random.default_rng(0))
    print(f"{len(half_a)} points per side, 100 Refine-1 steps from the optimum: top-1 {top1(w):.3f}")


if __name__ == "__main__":
    main()
