import pytest
import torch

from app.metrics import information_with_labels, retrieval_metrics


def test_map_on_a_case_worked_out_by_hand():
    # query at 0; database at 0.1 (A), 0.2 (B), 0.3 (B), 0.4 (A): relevant at ranks 1 and 4.
    # precision 1, 1/2, 1/3, 1/2 at recall .5, .5, .5, 1 → interpolated precision 1 for
    # r ≤ 0.5 (6 points) and 1/2 for r > 0.5 (5 points): AP = (6 + 2.5) / 11.
    q, ql = torch.tensor([[0.0]]), torch.tensor([0])
    db, dbl = torch.tensor([[0.1], [0.2], [0.3], [0.4]]), torch.tensor([0, 1, 1, 0])
    r = retrieval_metrics(q, ql, db, dbl, metric="euclidean", k=2)
    assert r["map"] == pytest.approx(8.5 / 11)
    assert r["precision_at_2"] == pytest.approx(0.5)
    assert r["pr_curve"]["precision"] == pytest.approx([1.0] * 6 + [0.5] * 5)


def test_map_averages_queries_and_ignores_queries_without_relevant_items():
    db, dbl = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    q, ql = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 2])
    r = retrieval_metrics(q, ql, db, dbl, metric="cosine", k=1)
    assert r["map"] == pytest.approx(1.0) and r["queries"] == 2


def test_chunking_does_not_change_the_result():
    torch.manual_seed(0)
    q, ql = torch.randn(50, 8), torch.randint(0, 4, (50,))
    db, dbl = torch.randn(80, 8), torch.randint(0, 4, (80,))
    a = retrieval_metrics(q, ql, db, dbl, query_batch=7)
    b = retrieval_metrics(q, ql, db, dbl, query_batch=1000)
    assert a["map"] == pytest.approx(b["map"])


def test_information_grows_with_class_separation():
    torch.manual_seed(0)
    y = torch.arange(10).repeat(20)
    noise = information_with_labels(torch.randn(200, 16), y)
    separated = information_with_labels(torch.nn.functional.one_hot(y, 10).float() * 5 + 0.1 * torch.randn(200, 10), y)
    assert 0 <= noise < separated
    assert separated <= torch.log2(torch.tensor(10.0)).item() + 1e-6


def test_reference_compatible_map_interpolates_only_the_first_batch_ranks():
    # one query, database ranked 0, 0, 1, 1, 1 (three relevant): precision 0, 0, 1/3, 1/2, 3/5 at
    # recall 0, 0, 1/3, 2/3, 1. Proper: the best later precision is 3/5 everywhere → AP = .6.
    # Reference with a batch of 1 query: no interpolation, and each level reads the rank whose recall
    # is nearest (float64): r = 0, .1 → rank 1 (0); .2, .3, .4 → rank 3 (1/3); .5 (2/3 is nearer by
    # rounding), .6, .7, .8 → rank 4 (1/2); .9, 1 → rank 5 (3/5): AP = (0 + 0 + 1 + 2 + 1.2)/11.
    from app.metrics import reference_map
    q, ql = torch.tensor([[0.0]]), torch.tensor([1])
    db, dbl = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5]]), torch.tensor([0, 0, 1, 1, 1])
    proper = retrieval_metrics(q, ql, db, dbl, metric="euclidean")
    assert proper["map"] == pytest.approx(0.6) and proper["ap"] == pytest.approx([0.6])
    assert reference_map(db, dbl, q, ql, "euclidean", query_batch=1) == pytest.approx(4.2 / 11)
    # a batch at least as long as the database interpolates every rank: 3/5 at every level
    many_q, many_l = q.repeat(5, 1), ql.repeat(5)
    assert reference_map(db, dbl, many_q, many_l, "euclidean", query_batch=5) == pytest.approx(0.6)


def reference_oracle(order, q_labels, db_labels, batch):
    """The reference's figure written out plainly (numpy, loops): per batch of queries, precision
    at every rank, a backward max over the first len(batch) − 1 positions only, recall against the
    class's database count, and each of the 11 levels read at the first rank of nearest recall."""
    import numpy as np
    counts = np.bincount(db_labels)
    levels = np.arange(0, 1.01, 0.1)
    total = 0.0
    for s in range(0, len(q_labels), batch):
        rows = []
        for o, t in zip(order[s:s + batch], q_labels[s:s + batch]):
            rel = (db_labels[o] == t).astype(float)
            hits = np.cumsum(rel)
            rows.append((hits / np.arange(1, len(rel) + 1), hits / counts[t]))
        prec = np.array([r[0] for r in rows])
        for i in range(len(rows) - 2, -1, -1):
            prec[:, i] = np.maximum(prec[:, i], prec[:, i + 1])
        for (_, recall), p in zip(rows, prec):
            total += np.mean([p[np.argmin(np.abs(recall - lv))] for lv in levels])
    return total / len(q_labels)


@pytest.mark.parametrize("per_class", [500, 17, 13])
def test_reference_map_reproduces_the_reference_figure(per_class):
    """Equal to the reference's computation, also where class counts are not multiples of 10
    (there the nearest recall and the first rank reaching it differ)."""
    torch.manual_seed(per_class)
    dbl = torch.arange(10).repeat_interleave(per_class)
    db = torch.randn(len(dbl), 12) + torch.nn.functional.one_hot(dbl, 12).float()
    ql = torch.randint(0, 10, (300,))
    q = torch.randn(300, 12) + torch.nn.functional.one_hot(ql, 12).float()
    from app.metrics import _distances
    order = _distances(q, db, "cosine").argsort(dim=1, stable=True).numpy()
    expected = reference_oracle(order, ql.numpy(), dbl.numpy(), 128)
    got = retrieval_metrics(q, ql, db, dbl, "cosine", query_batch=128)["map_reference"]
    assert got == pytest.approx(expected, abs=1e-6)   # float32 precision beside numpy float64
