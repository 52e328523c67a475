"""Evaluation of a trained model: accuracy, retrieval, per-layer information, cost."""
from __future__ import annotations

import torch
from torch import nn

from .augment import eval_batches
from .data import Dataset, Split
from .device import Runtime
from .features import FeatureTap
from .metrics import information_with_labels, retrieval_metrics
from .profile import profile


@torch.no_grad()
def predict(model: nn.Module, split: Split, data: Dataset, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and embeddings (on the CPU) of every image in ``split``, unaugmented."""
    model.eval()
    logits, embeds = [], []
    with FeatureTap(model) as tap:
        for x, _ in eval_batches(split, runtime.device, data.mean, data.std, channels_last=runtime.channels_last):
            with runtime.autocast():
                out = tap(x, features=False)
            logits.append(out.logits.float().cpu())
            embeds.append(out.embedding.float().flatten(1).cpu())
    return torch.cat(logits), torch.cat(embeds)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.cpu()).float().mean().item())


@torch.no_grad()
def eval_accuracy(model: nn.Module, split: Split, data: Dataset, runtime: Runtime) -> float:
    return accuracy(predict(model, split, data, runtime)[0], split.labels)


def fixed_batch(split: Split, size: int) -> Split:
    """An evenly spaced, fixed subset of ``split`` (the same every epoch and every model)."""
    n = len(split)
    idx = torch.linspace(0, n - 1, min(size, n)).round().long()
    return Split(split.images[idx], split.labels[idx])


@torch.no_grad()
def layer_information(model: nn.Module, batch: Split, data: Dataset, runtime: Runtime) -> list[float]:
    """Information (bits) between each stage's output — then the embedding — and the labels."""
    model.eval()
    x, y = next(eval_batches(batch, runtime.device, data.mean, data.std, batch_size=len(batch)))
    with FeatureTap(model) as tap, runtime.autocast():
        out = tap(x)
    reps = out.features + [out.embedding]
    return [round(information_with_labels(r.float(), y), 4) for r in reps]


def evaluate_model(model: nn.Module, data: Dataset, runtime: Runtime, *, retrieval: bool = True,
                   max_queries: int | None = None, latency_runs: int = 50, input_size: int = 32) -> dict:
    """Top-1 accuracy, retrieval (cosine and Euclidean) and cost of a trained model."""
    logits, q_emb = predict(model, data.test, data, runtime)
    result = {"test_acc": accuracy(logits, data.test.labels)}
    if retrieval:
        _, db_emb = predict(model, data.train, data, runtime)
        q_lab = data.test.labels
        if max_queries is not None and len(q_lab) > max_queries:
            keep = torch.linspace(0, len(q_lab) - 1, max_queries).round().long()
            q_emb, q_lab = q_emb[keep], q_lab[keep]
        result["retrieval"] = {m: retrieval_metrics(q_emb, q_lab, db_emb, data.train.labels, m)
                               for m in ("cosine", "euclidean")}
    result |= profile(model, runtime.device, input_size, latency_runs)
    return result
