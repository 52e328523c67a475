"""Import the InDistill authors' released CIFAR-10 models (gsarridis/InDistill,
``results/models/``, Apache-2.0) into the project's CNNs.

Their ``Cnn32`` (16/32/64) and ``Cnn32_Small`` (8/16/32) are the project's ``cnn_16_32_64``
and ``cnn_8_16_32`` except that each convolution has a bias before its BatchNorm. The bias
``c`` is folded into the BatchNorm's running mean (μ − c): exact in eval mode, and absorbed
by the batch statistics in training. Keys map ``conv{i}`` → ``blocks.{i-1}.0``,
``conv{i}_bn`` → ``blocks.{i-1}.1``, ``fc1`` → ``fc.0``, ``fc2`` → ``classifier``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models import build_model

from .checkpoint import CheckpointError, load_checkpoint, load_into, save_model

# the reference's input normalisation (utils/loaders.py), on [0, 1] pixels
REFERENCE_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
REFERENCE_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHS = ("cnn_16_32_64", "cnn_8_16_32")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
ORIGIN = "InDistill authors' release (gsarridis/InDistill, commit 70f47f06, results/models/), Apache-2.0"


def default_models_dir() -> Path:
    """$INDISTILL_REFERENCE_MODELS, else ../shared/reference/models beside the checkout."""
    from .settings import read
    root = Path(__file__).resolve().parents[1]
    return read("INDISTILL_REFERENCE_MODELS") or root.parent / "shared" / "reference" / "models"


def reference_keys() -> list[str]:
    """The keys of a reference ``Cnn32``/``Cnn32_Small`` state dict, in order."""
    keys = []
    for i in (1, 2, 3):
        keys += [f"conv{i}.weight", f"conv{i}.bias"] + [f"conv{i}_bn.{k}" for k in _BN]
    return keys + ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def convert_state(state: dict, arch: str) -> dict:
    """The project state dict of ``arch`` holding the reference ``state`` (conv bias folded)."""
    if arch not in ARCHS:
        raise CheckpointError(f"--arch must be {' or '.join(ARCHS)} (the reference's Cnn32 / Cnn32_Small), got {arch!r}")
    expected = reference_keys()
    for key in expected:
        if key not in state:
            raise CheckpointError(f"not the reference layout: key {key!r} is missing (expected the keys "
                                  f"conv1…conv3 with bias, conv1_bn…conv3_bn, fc1, fc2)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"not the reference layout: unexpected key {extra[0]!r}")
    model = build_model(arch, 10)
    own = model.state_dict()
    out = {}
    for i in (1, 2, 3):
        conv, bn, dst = f"conv{i}", f"conv{i}_bn", f"blocks.{i - 1}"
        out[f"{dst}.0.weight"] = state[f"{conv}.weight"]
        for k in _BN:
            out[f"{dst}.1.{k}"] = state[f"{bn}.{k}"]
        out[f"{dst}.1.running_mean"] = state[f"{bn}.running_mean"] - state[f"{conv}.bias"]
    out |= {"fc.0.weight": state["fc1.weight"], "fc.0.bias": state["fc1.bias"],
            "classifier.weight": state["fc2.weight"], "classifier.bias": state["fc2.bias"]}
    for key, value in out.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"the reference model does not fit {arch}: {key} has shape {tuple(value.shape)}, "
                                  f"{arch} needs {tuple(own[key].shape)} (the other --arch?)")
    return {k: v.detach().float().clone() if v.is_floating_point() else v.clone() for k, v in out.items()}


def import_reference(path: str | Path, arch: str, out: str | Path, note: str = "") -> dict:
    """Convert the reference file ``path`` into a project checkpoint at ``out``; returns its meta."""
    path = Path(path)
    state = load_checkpoint(path)["state_dict"]
    model = build_model(arch, 10)
    load_into(model, {"state_dict": convert_state(state, arch), "meta": {}}, f"reference model {path.name}")
    meta = {"arch": arch, "width": 1.0, "num_classes": 10, "classes": CIFAR10_CLASSES,
            "mean": list(REFERENCE_MEAN), "std": list(REFERENCE_STD), "input_size": 32, "phase": "imported",
            "seed": None, "test_acc": None, "data": "original CIFAR-10 (the authors' training)",
            "provenance": {"origin": ORIGIN, "file": path.name, "note": note,
                           "conversion": "conv bias folded into the BatchNorm running mean; keys renamed"}}
    save_model(model, out, meta)
    return meta


# The reference's published retrieval figures (results/scores/*.pickle, printed by its results.py; on
# original CIFAR-10): mAP cosine, mAP Euclidean, top-100 precision (cosine), all in %.
PUBLISHED = {
    "auxiliary_baseline_cifar10": ("cnn_16_32_64", "auxiliary CNN 16/32/64, cross-entropy", 44.87, 38.54, 68.42),
    "auxiliary_cifar10": ("cnn_16_32_64", "auxiliary teacher (PKT from their ResNet-18)", 66.78, 62.12, 75.90),
    "student_baseline_cifar10": ("cnn_8_16_32", "student CNN 8/16/32, cross-entropy", 39.05, 35.10, 58.59),
    "student_cifar10_indistill_pkt_cls": ("cnn_8_16_32", "student, InDistill + PKT", 54.61, 50.47, 65.40),
}
# pruned_auxiliary_cifar10.pt is not a network of its own (its conv2 takes the full conv1's 16
# channels): it only makes the warm-up's targets, and is checked filter by filter in the tests.
NOT_EVALUATED = {"pruned_auxiliary_cifar10": "targets only: its conv2/conv3 take the unpruned network's channels"}


def evaluate_released(models_dir: str | Path, data_cfg, log=lambda _m: None) -> dict:
    """Accuracy and retrieval of the released models on ``data_cfg``'s images, by the reference's
    protocol (queries: the test split; database: the training split, unaugmented; ``relu(fc1)``;
    the proper and the reference-form 11-point mAP with query batches of 128; top-100 precision),
    each fed with the reference's normalisation. Returns one entry per file with the published
    figures beside the measured ones."""
    import dataclasses
    import tempfile

    from .checkpoint import load_model
    from .data import load_dataset
    from .device import resolve
    from .evaluate import evaluate_model
    models_dir = Path(models_dir)
    data = dataclasses.replace(load_dataset(data_cfg, log), mean=REFERENCE_MEAN, std=REFERENCE_STD)
    rt = resolve("cpu", "fp32")
    out = {"data": data.description, "queries": len(data.test), "database": len(data.train), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, what, cos, euc, p100) in PUBLISHED.items():
            path = models_dir / f"{name}.pt"
            if not path.is_file():
                raise CheckpointError(f"released model {path} not found (the InDistill authors' results/models/)")
            import_reference(path, arch, Path(tmp) / "m.pt")
            model, _ = load_model(Path(tmp) / "m.pt")
            r = evaluate_model(model, data, rt, retrieval=True, query_batch=128)
            entry = {"arch": arch, "what": what, "test_acc": r["test_acc"], "test_acc_ci": r["test_acc_ci"],
                     "classifier_trained": name != "student_cifar10_indistill_pkt_cls",
                     "published": {"map_cosine": cos, "map_euclidean": euc, "precision_at_100_cosine": p100}}
            for metric in ("cosine", "euclidean"):
                m = r["retrieval"][metric]
                entry[metric] = {k: m[k] for k in ("map", "map_ci", "map_reference", "precision_at_100")}
            out["models"][name] = entry
            log(f"released {name}: mAP cosine {entry['cosine']['map'] * 100:.2f} % (reference form "
                f"{entry['cosine']['map_reference'] * 100:.2f} %; published {cos:.2f} %)")
    out["not_evaluated"] = NOT_EVALUATED
    return out
