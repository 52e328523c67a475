"""Evaluation of a trained model: accuracy and retrieval with their intervals, per-layer information.

Every pass over images goes in batches of at most :data:`app.augment.EVAL_BATCH_FLOPS`
forward FLOPs (:func:`batch_size_for`) and calls ``check`` before each batch, and the
retrieval ranking checks between query chunks: ``check`` raises to stop (a cancel), so a
cancel lands within one such batch whatever the network.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .augment import eval_batch_for, eval_batches
from .data import Dataset, Split
from .device import Runtime
from .features import FeatureTap, Outputs
from . import losses
from . import stats
from .metrics import information_with_labels, retrieval_metrics
from .profile import forward_flops

Check = Callable[[], None]


def _no_check() -> None:
    pass


def batch_size_for(model: nn.Module, split: Split) -> int:
    """Images per evaluation batch of ``model`` on ``split``'s images (:func:`app.augment.eval_batch_for`)."""
    return eval_batch_for(forward_flops(model, tuple(split.images.shape[1:])))


@torch.no_grad()
def predict(model: nn.Module, split: Split, data: Dataset, runtime: Runtime,
            check: Check = _no_check) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and embeddings (on the CPU) of every image in ``split``, unaugmented (``check``
    before each batch: it raises to stop, e.g. on a cancel)."""
    model.eval()
    logits, embeds = [], []
    size = batch_size_for(model, split)
    with FeatureTap(model) as tap:
        for x, _ in eval_batches(split, runtime.device, data.mean, data.std, size, runtime.channels_last):
            check()
            with runtime.autocast():
                out = tap(x, features=False)
            logits.append(out.logits.float().cpu())
            embeds.append(out.embedding.float().flatten(1).cpu())
    return torch.cat(logits), torch.cat(embeds)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.cpu()).float().mean().item())


@torch.no_grad()
def eval_accuracy(model: nn.Module, split: Split, data: Dataset, runtime: Runtime, check: Check = _no_check) -> float:
    return accuracy(predict(model, split, data, runtime, check)[0], split.labels)


def fixed_batch(split: Split, size: int) -> Split:
    """An evenly spaced, fixed subset of ``split`` (the same every epoch and every model)."""
    n = len(split)
    idx = torch.linspace(0, n - 1, min(size, n)).round().long()
    return Split(split.images[idx], split.labels[idx])


def _joined(parts: list[Outputs]) -> Outputs:
    """The outputs of consecutive chunks of one batch, as one pass over the whole batch would give them."""
    def cat(tensors):
        return torch.cat(tensors) if tensors and tensors[0] is not None else None
    return Outputs(features=[cat(f) for f in zip(*(p.features for p in parts))],
                   inputs=[cat(i) for i in zip(*(p.inputs for p in parts))],
                   embedding=cat([p.embedding for p in parts]), logits=cat([p.logits for p in parts]))


@torch.no_grad()
def representations(model: nn.Module, batch: Split, data: Dataset, runtime: Runtime, raw: bool = False,
                    check: Check = _no_check):
    """Each stage's output, then the embedding (fp32), and the labels, for one fixed batch (run in
    chunks, ``check`` before each); ``raw``: the pass's :class:`~app.features.Outputs` (with each
    stage's input) and the labels."""
    model.eval()
    chunks, labels = [], []
    size = batch_size_for(model, batch)
    with FeatureTap(model) as tap:
        for x, y in eval_batches(batch, runtime.device, data.mean, data.std, size):
            check()
            with runtime.autocast():
                chunks.append(tap(x, inputs=raw))
            labels.append(y)
    out, y = _joined(chunks), torch.cat(labels)
    if raw:
        return out, y
    return [f.float() for f in out.features] + [out.embedding.float()], y


@torch.no_grad()
def split_map(model: nn.Module, split: Split, data: Dataset, runtime: Runtime, check: Check = _no_check) -> float:
    """Cosine retrieval mAP within ``split``: its even-indexed images query its odd-indexed ones
    (no image retrieves itself). The per-epoch curve of a unit that trains no classifier."""
    _, emb = predict(model, split, data, runtime, check)
    labels = split.labels.cpu()
    return retrieval_metrics(emb[0::2], labels[0::2], emb[1::2], labels[1::2], "cosine", check=check)["map"]


def information_of(reps: list[torch.Tensor], labels: torch.Tensor) -> list[float]:
    """Information (bits) between each representation and the labels (:func:`information_with_labels`)."""
    return [round(information_with_labels(r, labels), 4) for r in reps]


@torch.no_grad()
def layer_information(model: nn.Module, batch: Split, data: Dataset, runtime: Runtime,
                      check: Check = _no_check) -> list[float]:
    """Information (bits) between each stage's output — then the embedding — and the labels."""
    return information_of(*representations(model, batch, data, runtime, check=check))


@torch.no_grad()
def feature_mse(features: list[torch.Tensor], targets: list[torch.Tensor]) -> list[float]:
    """Per stage, the MSE between a student's stage output and the pruned network's kept
    channels, larger map average-pooled to the smaller as in the warm-up (InDistill's Fig. 2)."""
    return [round(float(losses.feature_mse(s.float(), t.float())), 6) for s, t in zip(features, targets)]


def evaluate_model(model: nn.Module, data: Dataset, runtime: Runtime, *, retrieval: bool = True,
                   max_queries: int | None = None, query_batch: int = 128,
                   check: Check = _no_check) -> dict:
    """Top-1 accuracy on the test split with its Wilson interval and per-image correctness,
    and retrieval (cosine and Euclidean) with a bootstrap interval over queries, per-query
    AP and the reference-compatible mAP. The test split is used here only, once per model.

    Fields: ``test_acc``, ``test_images``, ``test_acc_ci`` [low, high], ``correct`` (base64
    bits, test-image order); ``retrieval[metric]``: ``map``, ``map_ci``, ``ap`` (base64
    uint16 per query), ``map_reference`` (+ ``map_reference_query_batch``) besides the
    curve and precision@100. Cost (:func:`app.profile.profile`) is measured by the caller,
    once per architecture.
    """
    logits, q_emb = predict(model, data.test, data, runtime, check)
    hits = (logits.argmax(1) == data.test.labels.cpu()).int().tolist()
    n = len(hits)
    result = {"test_acc": sum(hits) / max(n, 1), "test_images": n, "test_acc_ci": list(stats.wilson(sum(hits), n)),
              "correct": stats.pack_bits(hits)}
    if retrieval:
        _, db_emb = predict(model, data.train, data, runtime, check)
        q_lab = data.test.labels
        if max_queries is not None and len(q_lab) > max_queries:
            keep = torch.linspace(0, len(q_lab) - 1, max_queries).round().long()
            q_emb, q_lab = q_emb[keep], q_lab[keep]
        result["retrieval"] = {}
        for m in ("cosine", "euclidean"):  # each query ranked once for every figure
            r = retrieval_metrics(q_emb, q_lab, db_emb, data.train.labels, m, query_batch=query_batch, check=check)
            ap = r.pop("ap")
            r.update(map_ci=list(stats.bootstrap_mean(ap)), ap=stats.pack_unit(ap))
            result["retrieval"][m] = r
    return result
