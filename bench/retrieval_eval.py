"""Cost of the full retrieval evaluation (the reference's protocol: 10,000 test queries against
50,000 training images), per metric: every figure from one ranking of each query (proper mAP,
reference-form mAP, precision@100, PR curve, per-query AP) against ranking each query twice
(once for the proper mAP, once for the reference form: what the engine did before), alternating.

    python bench/retrieval_eval.py --json                 # 64-d embeddings, like CNN 8/16/32's relu(fc1)
    python bench/retrieval_eval.py --queries 2000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.metrics import retrieval_metrics  # noqa: E402


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
    g = torch.Generator().manual_seed(0)
    # class-clustered embeddings, so rankings look like a trained network's
    centres = torch.randn(10, args.dim, generator=g)
    ql, dl = torch.randint(0, 10, (args.queries,), generator=g), torch.randint(0, 10, (args.database,), generator=g)
    q = centres[ql] + 1.5 * torch.randn(args.queries, args.dim, generator=g)
    db = centres[dl] + 1.5 * torch.randn(args.database, args.dim, generator=g)
    once, twice = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        r = retrieval_metrics(q, ql, db, dl, "cosine")
        once.append(time.perf_counter() - t)
        t = time.perf_counter()
        retrieval_metrics(q, ql, db, dl, "cosine")  # the proper mAP's ranking …
        retrieval_metrics(q, ql, db, dl, "cosine")  # … and the reference form's, separately
        twice.append(time.perf_counter() - t)
    out = {"queries": args.queries, "database": args.database, "dim": args.dim, "threads": args.threads,
           "repeats": args.repeats, "one_ranking_s": round(statistics.median(once), 2),
           "two_rankings_s": round(statistics.median(twice), 2),
           "ratio": round(statistics.median(twice) / statistics.median(once), 2),
           "map": round(r["map"], 4), "map_reference": round(r["map_reference"], 4)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
