"""Configuration of the mini-vec2vec aligner (unpaired linear map between two embedding spaces)."""

from __future__ import annotations

from transformers import PretrainedConfig


class MiniVec2VecConfig(PretrainedConfig):
    r"""Configuration of [`MiniVec2VecAligner`]: a linear map from embedding space A to space B learnt
    without paired data (Dar, "mini-vec2vec: Scaling Universal Geometry Alignment with Linear
    Transformations", 2025). The defaults are the paper's reference settings.

    Args:
        source_dim (`int`, *optional*): dimension of space A; set by `align` from the data.
        target_dim (`int`, *optional*): dimension of space B; set by `align` from the data.
        anchor_runs (`int`): independent k-means + matching runs whose matched centroids, concatenated,
            are the anchors (30 runs x 20 clusters = 600 anchors per side).
        anchor_clusters (`int`): k-means clusters per side and run.
        anchor_sample (`int`): points sampled per side for each run's k-means.
        qap_restarts (`int`): randomised restarts of the quadratic assignment per run; the best is kept.
        qap_method (`str`): `scipy.optimize.quadratic_assignment` method, `"2opt"` or `"faq"`.
        match_k (`int`): pseudo-pairs: each A point is paired with the mean of its `match_k` nearest
            B points in relative (cosine-to-anchors) space.
        refine1_iterations (`int`): Refine-1 iterations: refit on sampled nearest-neighbour pairs.
        refine1_sample (`int`): A points sampled per Refine-1 iteration.
        refine1_k (`int`): B neighbours averaged per sampled point in Refine-1.
        refine1_alpha (`float`): weight kept by the old map at each Refine-1 step (`W = a W + (1 - a) W_new`).
        refine2_iterations (`int`): Refine-2 iterations: k-means on A, k-means on B initialised from
            the mapped A centres, Procrustes between the two sets of centres.
        refine2_clusters (`int`): k-means clusters of Refine-2.
        refine2_alpha (`float`): weight kept by the old map at each Refine-2 step.
        csls_iterations (`int`): iterations of a final self-learning stage that is not in the paper (0, the
            default, skips it): a dictionary over all points, each A point paired with its best B point and
            each B point with its best A point by cross-domain similarity local scaling (CSLS, Conneau et
            al. 2018), then orthogonal Procrustes on that dictionary. Refine-1's mean of 50 neighbours
            blurs the targets; this stage sharpens the map (text pair of `bench/`: top-1 .83 -> .89).
        csls_k (`int`): neighbours whose mean similarity is each point's hubness penalty in CSLS.
        csls_sample (`int`): at most this many points per side enter each iteration's dictionary (a
            random sample when there are more), which bounds its (sample x sample) similarity matrix.
        kmeans_backend (`str`): who runs Lloyd's iterations after k-means++ seeding: `"faiss"` (fast) or
            `"sklearn"` (the reference implementation's `KMeans`).
        kmeans_max_iter (`int`): Lloyd iterations per k-means (faiss: exactly this many).
        seed (`int`): seeds every random choice; the same data and seed give the same map.
    """

    model_type = "petmatch_mini_vec2vec"

    def __init__(
        self,
        source_dim: int | None = None,
        target_dim: int | None = None,
        anchor_runs: int = 30,
        anchor_clusters: int = 20,
        anchor_sample: int = 10_000,
        qap_restarts: int = 30,
        qap_method: str = "2opt",
        match_k: int = 50,
        refine1_iterations: int = 100,
        refine1_sample: int = 1000,
        refine1_k: int = 50,
        refine1_alpha: float = 0.5,
        refine2_iterations: int = 1,
        refine2_clusters: int = 500,
        refine2_alpha: float = 0.5,
        csls_iterations: int = 0,
        csls_k: int = 10,
        csls_sample: int = 10_000,
        kmeans_backend: str = "faiss",
        kmeans_max_iter: int = 25,
        seed: int = 0,
        **kwargs,
    ):
        for name, value in (("source_dim", source_dim), ("target_dim", target_dim)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer (the embedding size) or None.")
        positive = {
            "anchor_runs": anchor_runs,
            "anchor_clusters": anchor_clusters,
            "anchor_sample": anchor_sample,
            "qap_restarts": qap_restarts,
            "match_k": match_k,
            "refine1_sample": refine1_sample,
            "refine1_k": refine1_k,
            "refine2_clusters": refine2_clusters,
            "csls_k": csls_k,
            "csls_sample": csls_sample,
            "kmeans_max_iter": kmeans_max_iter,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1.")
        if anchor_clusters < 2:
            raise ValueError(f"anchor_clusters={anchor_clusters} must be >= 2: one cluster per side has nothing to match.")
        for name, value in (
            ("refine1_iterations", refine1_iterations),
            ("refine2_iterations", refine2_iterations),
            ("csls_iterations", csls_iterations),
        ):
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0 (0 skips that refinement).")
        for name, alpha in (("refine1_alpha", refine1_alpha), ("refine2_alpha", refine2_alpha)):
            if not 0.0 <= alpha < 1.0:
                raise ValueError(f"{name}={alpha!r} must lie in [0, 1): the weight the old map keeps at each step.")
        if kmeans_backend not in ("faiss", "sklearn"):
            raise ValueError(f"kmeans_backend={kmeans_backend!r} must be 'faiss' or 'sklearn'.")
        if qap_method not in ("2opt", "faq"):
            raise ValueError(f"qap_method={qap_method!r} must be '2opt' or 'faq' (scipy.optimize.quadratic_assignment).")
        self.source_dim = None if source_dim is None else int(source_dim)
        self.target_dim = None if target_dim is None else int(target_dim)
        self.anchor_runs = int(anchor_runs)
        self.anchor_clusters = int(anchor_clusters)
        self.anchor_sample = int(anchor_sample)
        self.qap_restarts = int(qap_restarts)
        self.qap_method = qap_method
        self.match_k = int(match_k)
        self.refine1_iterations = int(refine1_iterations)
        self.refine1_sample = int(refine1_sample)
        self.refine1_k = int(refine1_k)
        self.refine1_alpha = float(refine1_alpha)
        self.refine2_iterations = int(refine2_iterations)
        self.refine2_clusters = int(refine2_clusters)
        self.refine2_alpha = float(refine2_alpha)
        self.csls_iterations = int(csls_iterations)
        self.csls_k = int(csls_k)
        self.csls_sample = int(csls_sample)
        self.kmeans_backend = kmeans_backend
        self.kmeans_max_iter = int(kmeans_max_iter)
        self.seed = int(seed)
        super().__init__(**kwargs)

    @property
    def min_points(self) -> int:
        """The fewest points per side `align` accepts: every k-means needs at least one point per cluster."""
        needed = [self.anchor_clusters, self.match_k]
        if self.refine1_iterations:
            needed.append(self.refine1_k)
        if self.refine2_iterations:
            needed.append(self.refine2_clusters)
        if self.csls_iterations:
            needed.append(self.csls_k)
        return max(needed)
