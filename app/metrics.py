"""Metrics on embeddings and labels: retrieval mAP / precision@k / PR curve, and the
kernel estimate of the information between a representation and the labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .device import in_fp32

RECALL_POINTS = torch.linspace(0, 1, 11)


def _distances(q: torch.Tensor, db: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1) @ F.normalize(db, dim=1).t()
    if metric == "euclidean":
        return torch.cdist(q, db)
    raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")


@torch.no_grad()
def retrieval_metrics(queries: torch.Tensor, q_labels: torch.Tensor, database: torch.Tensor,
                      db_labels: torch.Tensor, metric: str = "cosine", k: int = 100, chunk: int = 256) -> dict:
    """Retrieve the database for every query; relevant = same label.

    mAP is the 11-point interpolated average precision (precision interpolated as the
    best precision at any recall ≥ r, for r = 0, 0.1, …, 1) averaged over queries.
    Also returns precision@k and the mean interpolated precision–recall curve.
    """
    queries, database = queries.float().cpu(), database.float().cpu()
    q_labels, db_labels = q_labels.cpu(), db_labels.cpu()
    n_rel = (q_labels[:, None] == db_labels[None, :]).sum(1).float()
    k = min(k, len(database))
    ap_sum, p_at_k_sum, curve_sum, counted = 0.0, 0.0, torch.zeros(11), 0
    for start in range(0, len(queries), chunk):
        q, ql, nr = queries[start:start + chunk], q_labels[start:start + chunk], n_rel[start:start + chunk]
        order = _distances(q, database, metric).argsort(dim=1, stable=True)
        rel = (db_labels[order] == ql[:, None]).float()          # [q, N], ranked
        keep = nr > 0                                             # a query with no relevant item has no AP
        rel, nr = rel[keep], nr[keep]
        hits = rel.cumsum(1)
        precision = hits / torch.arange(1, rel.shape[1] + 1)
        recall = hits / nr[:, None]
        best_after = precision.flip(1).cummax(1).values.flip(1)   # max precision at rank ≥ i
        # interpolated precision at recall r: best precision among ranks whose recall ≥ r
        idx = torch.searchsorted(recall.contiguous(), RECALL_POINTS.expand(len(recall), 11).contiguous())
        idx = idx.clamp_max(rel.shape[1] - 1)
        interp = best_after.gather(1, idx)
        curve_sum += interp.sum(0)
        ap_sum += interp.mean(1).sum().item()
        p_at_k_sum += rel[:, :k].mean(1).sum().item()
        counted += len(rel)
    counted = max(counted, 1)
    return {"metric": metric, "map": ap_sum / counted, f"precision_at_{k}": p_at_k_sum / counted,
            "pr_curve": {"recall": RECALL_POINTS.tolist(), "precision": (curve_sum / counted).tolist()},
            "queries": counted, "database": len(database)}


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
