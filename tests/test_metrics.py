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
    a = retrieval_metrics(q, ql, db, dbl, chunk=7)
    b = retrieval_metrics(q, ql, db, dbl, chunk=1000)
    assert a["map"] == pytest.approx(b["map"])


def test_information_grows_with_class_separation():
    torch.manual_seed(0)
    y = torch.arange(10).repeat(20)
    noise = information_with_labels(torch.randn(200, 16), y)
    separated = information_with_labels(torch.nn.functional.one_hot(y, 10).float() * 5 + 0.1 * torch.randn(200, 10), y)
    assert 0 <= noise < separated
    assert separated <= torch.log2(torch.tensor(10.0)).item() + 1e-6
