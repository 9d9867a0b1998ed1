"""Evaluation metrics for petmatch models (the project's single metrics package).

Four families of numbers are computed here:

* **Verification** (``verification_metrics``, ``choose_threshold``, ``roc_pr_curves``;
  :mod:`.verification`): a model scores a *pair* of photo sets; label 1 means "same dog", 0 "different
  dogs".  A pair is predicted positive when ``score >= threshold``.  Scores may be probabilities, cosine
  similarities or any other real number where higher means "more likely the same dog".
* **Retrieval / identification** (``retrieval_metrics``, ``text_image_retrieval_metrics``;
  :mod:`.retrieval`): each query is ranked against a gallery by similarity; recall@k, mAP and MRR.
* **Open set** (``open_set_metrics``; :mod:`.retrieval`): how well a "known dog" score separates
  queries whose dog is in the gallery from queries whose dog is not.
* **Embedding-space alignment** (``alignment_metrics``; :mod:`.alignment`): row ``i`` of vectors mapped from
  space A should be nearest to row ``i`` of the true space-B vectors, among all rows.

Plus ``confusion`` / ``save_confusion`` (:mod:`.confusion_matrix`) for classification-style confusion
matrices.  The input checks every metric shares live in :mod:`.inputs`.  Every dict returned holds plain
Python ``float``/``int``/``str``/``list`` values so it can be passed to ``json.dumps`` directly.

Import the metrics from here (``from model_pkg.metrics import verification_metrics``); the modules are the
layout, not a second API.
"""

from __future__ import annotations

from .alignment import alignment_metrics
from .confusion_matrix import confusion, save_confusion
from .retrieval import open_set_metrics, retrieval_metrics, text_image_retrieval_metrics
from .verification import choose_guarded_threshold, choose_threshold, roc_pr_curves, verification_metrics

__all__ = [
    "choose_threshold",
    "choose_guarded_threshold",
    "verification_metrics",
    "roc_pr_curves",
    "retrieval_metrics",
    "text_image_retrieval_metrics",
    "open_set_metrics",
    "alignment_metrics",
    "confusion",
    "save_confusion",
]
