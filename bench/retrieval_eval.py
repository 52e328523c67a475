"""Cost of the full retrieval evaluation (the reference's protocol: 10,000 test queries against
50,000 training images), per metric, against the way the InDistill reference code evaluates.

- engine: ``app.metrics.retrieval_metrics``, torch; every figure from one ranking of each query
  (proper mAP, reference-form mAP, precision@100, PR curve, per-query AP).
- reference way: a plain numpy evaluation written after the reference code's
  ``utils/retrieval_evaluation.py`` (its method, not its code): queries in batches of 128, each
  batch's full distance matrix and full ranking of the database, precision and recall over every
  rank in float64, the partial backward interpolation, then each of the 11 recall levels (and the
  21 levels of its fine PR curve) read by an ``argmin |recall − level|`` pass over every rank. It
  gives the reference-form mAP and the PR curve only (no proper mAP, no precision@100, no per-query AP).

The two run alternately on the same class-clustered float32 embeddings; the script checks that both
give the same reference-form mAP (to 1e-4: float32 distances may order near-ties differently) and
prints both times and their ratio.

    python bench/retrieval_eval.py --json                 # 64-d embeddings, like CNN 8/16/32's relu(fc1)
    python bench/retrieval_eval.py --queries 500 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.metrics import retrieval_metrics  # noqa: E402

LEVELS = np.arange(11) * 0.1          # float64, as np.arange(0, 1.01, 0.1)
FINE_LEVELS = np.arange(21) * 0.05


def reference_way(q: np.ndarray, ql: np.ndarray, db: np.ndarray, dl: np.ndarray, batch: int = 128) -> dict:
    """The reference code's evaluation, in numpy: reference-form mAP and the fine PR curve."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    dbn, per_class = unit(db), np.bincount(dl)
    ranks = np.arange(1, len(db) + 1, dtype=np.float64)
    ap_sum, fine_sum, counted = 0.0, np.zeros(len(FINE_LEVELS)), 0
    for start in range(0, len(q), batch):
        qb, lb = q[start:start + batch], ql[start:start + batch]
        order = np.argsort(1.0 - unit(qb) @ dbn.T, axis=1, kind="stable")   # the full ranking
        rel = dl[order] == lb[:, None]
        hits = np.cumsum(rel, axis=1, dtype=np.float64)
        precision = hits / ranks
        for i in reversed(range(len(precision) - 1)):   # the reference's backward pass: as many ranks as queries
            precision[:, i] = np.maximum(precision[:, i], precision[:, i + 1])
        recall = hits / per_class[lb][:, None]
        rows = np.arange(len(qb))
        at = lambda levels: np.stack(  # noqa: E731
            [precision[rows, np.argmin(np.abs(recall - r), axis=1)] for r in levels], axis=1)
        ap_sum += at(LEVELS).mean(axis=1).sum()
        fine_sum += at(FINE_LEVELS).sum(axis=0)
        counted += len(qb)
    return {"map_reference": ap_sum / counted, "pr_fine": (fine_sum / counted).tolist()}


def embeddings(queries: int, database: int, dim: int) -> tuple:
    """Class-clustered embeddings, so rankings look like a trained network's (every query has relevant items)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, dim, generator=g)
    ql, dl = torch.randint(0, 10, (queries,), generator=g), torch.randint(0, 10, (database,), generator=g)
    q = centres[ql] + 1.5 * torch.randn(queries, dim, generator=g)
    db = centres[dl] + 1.5 * torch.randn(database, dim, generator=g)
    return q, ql, db, dl


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--database", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q, ql, db, dl = embeddings(args.queries, args.database, args.dim)
    qn, qln, dbn, dln = q.numpy(), ql.numpy(), db.numpy(), dl.numpy()   # float32 features, as the reference extracts
    engine_s, reference_s = [], []
    for _ in range(args.repeats):
        r, s = timed(lambda: retrieval_metrics(q, ql, db, dl, "cosine"))
        engine_s.append(s)
        ref, s = timed(lambda: reference_way(qn, qln, dbn, dln))
        reference_s.append(s)
    gap = abs(ref["map_reference"] - r["map_reference"])
    if gap > 1e-4:
        raise SystemExit(f"the two evaluations disagree on the reference-form mAP: {r['map_reference']:.6f} "
                         f"(engine) vs {ref['map_reference']:.6f} (reference way)")
    out = {"queries": args.queries, "database": args.database, "dim": args.dim, "threads": args.threads,
           "repeats": args.repeats, "engine_s": round(statistics.median(engine_s), 2),
           "reference_way_s": round(statistics.median(reference_s), 2),
           "ratio": round(statistics.median(reference_s) / statistics.median(engine_s), 2),
           "map": round(r["map"], 4), "map_reference": round(r["map_reference"], 4),
           "map_reference_gap": float(f"{gap:.2g}")}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
