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
    # Reference with a batch of 1 query: no interpolation; recall 0 reads rank 1 (0), r = .1–.3
    # rank 3 (1/3), r = .4–.6 rank 4 (1/2), r = .7–1 rank 5 (3/5): AP = (0 + 1 + 1.5 + 2.4)/11.
    from app.metrics import reference_map
    q, ql = torch.tensor([[0.0]]), torch.tensor([1])
    db, dbl = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5]]), torch.tensor([0, 0, 1, 1, 1])
    proper = retrieval_metrics(q, ql, db, dbl, metric="euclidean")
    assert proper["map"] == pytest.approx(0.6) and proper["ap"] == pytest.approx([0.6])
    assert reference_map(db, dbl, q, ql, "euclidean", query_batch=1) == pytest.approx(4.9 / 11)
    # a batch at least as long as the database interpolates every rank: the proper figure
    many_q, many_l = q.repeat(5, 1), ql.repeat(5)
    assert reference_map(db, dbl, many_q, many_l, "euclidean", query_batch=5) == pytest.approx(0.6)


def test_reference_map_never_exceeds_the_proper_one():
    torch.manual_seed(1)
    q, ql = torch.randn(120, 6), torch.randint(0, 3, (120,))
    db, dbl = torch.randn(90, 6), torch.randint(0, 3, (90,))
    from app.metrics import reference_map
    proper = retrieval_metrics(q, ql, db, dbl)["map"]
    assert reference_map(db, dbl, q, ql, "cosine", query_batch=8) <= proper + 1e-9
    assert reference_map(db, dbl, q, ql, "cosine", query_batch=200) == pytest.approx(proper)
