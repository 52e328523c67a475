"""Metrics on embeddings and labels: retrieval mAP / precision@k / PR curve, and the
kernel estimate of the information between a representation and the labels."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .device import in_fp32

RECALL_POINTS = torch.linspace(0, 1, 11)
# the reference's levels, np.arange(0, 1.01, 0.1) in float64 (0.30000000000000004, …)
REFERENCE_LEVELS = torch.arange(11, dtype=torch.float64) * 0.1


def _distances(q: torch.Tensor, db: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1) @ F.normalize(db, dim=1).t()
    if metric == "euclidean":
        return torch.cdist(q, db)
    raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")


@torch.no_grad()
def retrieval_metrics(queries: torch.Tensor, q_labels: torch.Tensor, database: torch.Tensor,
                      db_labels: torch.Tensor, metric: str = "cosine", k: int = 100,
                      query_batch: int = 128, check: Callable[[], None] = lambda: None) -> dict:
    """Retrieve the database for every query; relevant = same label. Each query is ranked once
    for every figure below.

    mAP is the 11-point interpolated average precision (precision interpolated as the
    best precision at any recall ≥ r, for r = 0, 0.1, …, 1) averaged over queries.
    ``map_reference`` is the reference code's partial interpolation over queries in batches of
    ``query_batch`` (:func:`reference_map`). Also returns precision@k, the mean interpolated
    precision–recall curve and ``ap``, every counted query's AP in query order (for the
    bootstrap over queries).
    """
    queries, database = queries.float().cpu(), database.float().cpu()
    q_labels, db_labels = q_labels.cpu(), db_labels.cpu()
    if query_batch < 1:
        raise ValueError("query_batch must be at least 1")
    k = min(k, len(database))
    ranks = torch.arange(1, len(database) + 1)
    ap_all, ref_all, p_at_k_sum, curve_sum = [], [], 0.0, torch.zeros(11)
    for start in range(0, len(queries), query_batch):
        check()  # raises to stop (a cancel): a full evaluation ranks for tens of seconds
        q, ql = queries[start:start + query_batch], q_labels[start:start + query_batch]
        order = _distances(q, database, metric).argsort(dim=1, stable=True)
        rel = (db_labels[order] == ql[:, None]).float()          # [q, N], ranked
        rel = rel[rel.sum(1) > 0]                                 # no relevant item: no AP
        if not len(rel):
            continue
        hits = rel.cumsum(1)
        precision = hits / ranks
        recall = hits / hits[:, -1:]
        idx = torch.searchsorted(recall.contiguous(), RECALL_POINTS.expand(len(recall), 11).contiguous())
        idx = idx.clamp_max(rel.shape[1] - 1)
        # interpolated precision at recall r: best precision among ranks whose recall ≥ r
        interp = precision.flip(1).cummax(1).values.flip(1).gather(1, idx)
        curve_sum += interp.sum(0)
        ap_all += interp.mean(1).tolist()
        p_at_k_sum += rel[:, :k].mean(1).sum().item()
        # the reference's backward pass spans as many ranks as its batch has queries, and each level
        # reads the rank whose recall is nearest to it (the first such), in float64
        span = min(len(q), rel.shape[1])
        partial = torch.cat([precision[:, :span].flip(1).cummax(1).values.flip(1), precision[:, span:]], 1)
        ref_all += partial.gather(1, nearest_recall(hits, REFERENCE_LEVELS)).mean(1).tolist()
    counted = max(len(ap_all), 1)
    return {"metric": metric, "map": sum(ap_all) / counted, f"precision_at_{k}": p_at_k_sum / counted,
            "map_reference": sum(ref_all) / counted, "map_reference_query_batch": query_batch,
            "pr_curve": {"recall": RECALL_POINTS.tolist(), "precision": (curve_sum / counted).tolist()},
            "queries": len(ap_all), "database": len(database), "ap": ap_all}


def nearest_recall(hits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Per row, for each level, the first rank whose recall (``hits`` / total, in float64) is nearest
    to it — ``argmin |recall − level|`` as the reference reads its 11 points — found with two
    searches instead of a pass over every rank."""
    recall = hits.double() / hits[:, -1:].double()
    lv = levels.to(torch.float64).expand(len(recall), len(levels)).contiguous()
    last = recall.shape[1] - 1
    hi = torch.searchsorted(recall, lv).clamp_max(last)          # first rank with recall ≥ level
    lo = (hi - 1).clamp_min(0)
    take_lo = (hi > 0) & ((recall.gather(1, lo) - lv).abs() <= (recall.gather(1, hi) - lv).abs())
    first_lo = torch.searchsorted(recall, recall.gather(1, lo).contiguous())  # that recall's first rank
    return torch.where(take_lo, first_lo, hi)


@torch.no_grad()
def reference_map(database: torch.Tensor, db_labels: torch.Tensor, queries: torch.Tensor, q_labels: torch.Tensor,
                  metric: str = "cosine", query_batch: int = 128) -> float:
    """mAP as the reference InDistill code computes it, for comparing with published figures.

    Queries go in batches of ``query_batch``; within a batch the backward "precision =
    max(precision, precision of the next rank)" pass runs over as many ranks as the batch
    has queries instead of over all ranks, so only the first ``len(batch)`` ranks are
    interpolated and later ranks keep their raw precision. Each of the 11 recall points
    (float64 0, 0.1, …, 1) then reads that precision at the first rank whose recall is
    nearest to it (:func:`nearest_recall`): the first rank reaching it when every class's
    count is a multiple of 10, as in CIFAR-10. Queries without a relevant item are skipped
    (as there). Queries are taken in the order given (the folder loader orders the test split
    by class, torchvision's CIFAR by its file order: only the last, partial batch differs).
    """
    return retrieval_metrics(queries, q_labels, database, db_labels, metric, query_batch=query_batch)["map_reference"]


def _gram_normalised(k: torch.Tensor) -> torch.Tensor:
    """Normalise a PSD kernel matrix to unit trace (after making its diagonal 1)."""
    d = k.diagonal().clamp_min(1e-12).sqrt()
    k = k / (d[:, None] * d[None, :])
    return k / k.shape[0]


def renyi2_entropy(a: torch.Tensor) -> float:
    """Matrix-based Rényi entropy of order 2 (bits) of a unit-trace Gram matrix: −log₂ tr(A²)."""
    return float(-torch.log2((a * a).sum()).item())


@torch.no_grad()
@in_fp32
def information_with_labels(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Kernel estimate of I(X; Y) between a representation and the class labels (bits).

    Matrix-based Rényi α-entropy (Sanchez Giraldo, Rao & Príncipe 2015) with α = 2:
    a Gaussian kernel on the flattened, standardised features (bandwidth: median
    pairwise distance), a delta kernel on labels, and I = S(A) + S(B) − S(A∘B).
    It is bounded by S(B) ≤ log₂(#classes) and grows as the representation separates the
    classes. Used to draw per-layer information flow, as in InDistill's Fig. 4.
    """
    x = features.float().flatten(1).cpu()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    d2 = torch.cdist(x, x).pow(2)
    off = d2[~torch.eye(len(x), dtype=torch.bool)]
    sigma2 = off.median().clamp_min(1e-6)
    a = _gram_normalised(torch.exp(-d2 / (2 * sigma2)))
    y = labels.cpu()
    b = _gram_normalised((y[:, None] == y[None, :]).float())
    ab = a * b
    ab = ab / ab.trace()
    return renyi2_entropy(a) + renyi2_entropy(b) - renyi2_entropy(ab)


def flow_divergence(student: list[float], teacher: list[float]) -> float:
    """Information-flow divergence of Passalis, Tzelepi & Tefas (CVPR 2020): the sum over the
    student's layers of (ω_t^κ(i) − ω_s^i)², ω the per-layer information with the labels and
    κ(i) the teacher layer at the same relative depth (the identity for equal depths).

    An analogue: ω here is :func:`information_with_labels` (matrix-based Rényi α = 2), not
    the paper's quadratic-MI estimate."""
    n, m = len(student), len(teacher)
    if not n or not m:
        raise ValueError("both information-flow vectors need at least one layer")
    match = [round(i * (m - 1) / max(n - 1, 1)) for i in range(n)]
    return sum((teacher[j] - s) ** 2 for s, j in zip(student, match))
