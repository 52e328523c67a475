"""Export a trained model to ONNX, check it against PyTorch on real images, time both.

    from app.export import export_onnx
    report = export_onnx("runs/…/checkpoints/indistill-s0.pt", "student.onnx")

The ONNX graph takes normalised float32 images ``[batch, 3, H, W]`` (the checkpoint's
mean/std, stored in the file's metadata) with a dynamic batch axis and returns
``logits`` and ``embedding`` (the classifier's input). The check runs onnxruntime on
real test images (the data the checkpoint names when it is at hand, else the embedded
CIFAR-10 sample) and reports the largest absolute difference to PyTorch, then the
median CPU latency of both at batch 1 and 256. onnx and onnxruntime (and onnxscript,
which ``torch.onnx`` needs) are an optional extra: ``pip install -r requirements-extra.txt``.
No Gradio here; Compare calls :func:`export_for_download`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn


from . import settings
from .checkpoint import load_model
from .config import SAMPLE_DATA, DataConfig
from .data import DataError, load_dataset
from .device import Runtime

EXTRA_HINT = "pip install -r requirements-extra.txt"
TOLERANCE = 1e-4
OPSET = 18


class ExportError(ValueError):
    """The export cannot run or its check failed; the message is one line saying why."""


def require_onnx():
    """``(onnx, onnxruntime)``; :class:`ExportError` naming the install command when missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as exc:
        name = getattr(exc, "name", None) or "onnx"
        raise ExportError(f"ONNX export needs the optional packages onnx, onnxruntime and onnxscript "
                          f"({name} is not installed): {EXTRA_HINT}") from None
    return onnx, onnxruntime


class LogitsAndEmbedding(nn.Module):
    """A copy of a zoo model whose forward returns ``(logits, embedding)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(model).eval()
        self.classifier = self.body.classifier
        self.body.classifier = nn.Identity()  # the body now ends at the embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(x)
        return self.classifier(embedding), embedding


def _data_source(meta: dict, data_dir: str | None) -> str | None:
    """The dataset to draw test images from: ``data_dir``, else $INDISTILL_DATA_DIR when the
    checkpoint's data description names that file, else None (the embedded sample)."""
    if data_dir:
        return data_dir
    env = settings.read("INDISTILL_DATA_DIR")
    if env and env.name and env.name in str(meta.get("data", "")):
        return str(env)
    return None


def check_images(meta: dict, count: int = 256, data_dir: str | None = None,
                cache_dir: str | None = None) -> tuple[torch.Tensor, str]:
    """Up to ``count`` uint8 test images ``[N, 3, S, S]`` at the checkpoint's input size, and their source."""
    source = _data_source(meta, data_dir)
    per_class = math.ceil(count / max(meta.get("num_classes", 10), 1))
    size = int(meta.get("input_size", 32))
    description = str(meta.get("data", ""))
    cfg = DataConfig(dataset="folder" if source is None else "cifar100" if description.startswith("cifar100") else "cifar10",
                     data_dir=str(source or SAMPLE_DATA), cache_dir=cache_dir, download=False,
                     train_per_class=1, test_per_class=per_class, input_size=size)
    try:
        data = load_dataset(cfg)
    except DataError as exc:
        raise ExportError(f"cannot read test images from {cfg.data_dir}: {exc}") from None
    images = data.test.images[:count]
    return images, f"{len(images)} test images of {data.description}"


def normalise(images: torch.Tensor, meta: dict) -> torch.Tensor:
    mean = torch.tensor(meta.get("mean", (0.5, 0.5, 0.5))).view(1, -1, 1, 1)
    std = torch.tensor(meta.get("std", (0.25, 0.25, 0.25))).view(1, -1, 1, 1)
    return ((images.float() / 255.0 - mean) / std).contiguous()


def median_ms(fn, x, runs: int, warmup: int = 3) -> float:
    """Median wall time (ms) of ``fn(x)`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def write_onnx(model: nn.Module, example: torch.Tensor, out_path: Path, meta: dict) -> str:
    """Export ``(logits, embedding)`` with a dynamic batch axis; returns the exporter used."""
    onnx, _ = require_onnx()
    wrapped = LogitsAndEmbedding(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (example,), input_names=["input"], output_names=["logits", "embedding"],
                                    dynamic_shapes={"x": {0: batch}}, opset_version=OPSET, dynamo=True)
    program.save(str(out_path), external_data=False)
    proto = onnx.load(str(out_path))
    onnx.checker.check_model(proto)
    props = {"arch": meta["arch"], "width": meta.get("width", 1.0), "input": "float32 [batch, 3, H, W], "
             "(x / 255 - mean) / std per channel", "mean": meta.get("mean"), "std": meta.get("std"),
             "input_size": meta.get("input_size", 32), "classes": meta.get("classes"), "phase": meta.get("phase"),
             "test_acc": meta.get("test_acc")}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(out_path))
    return "torch.onnx (dynamo)"


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, images: torch.Tensor | None = None, *,
                data_dir: str | None = None, runs: int = 100, runs_b256: int = 10, check_batch: int = 256) -> dict:
    """Export a checkpoint to ONNX, check it against PyTorch on real images and time both on the CPU.

    ``images``: uint8 ``[N, 3, H, W]`` test images; when None they are read from
    ``data_dir`` or the checkpoint's data, else the embedded sample (see module doc).
    Returns the figures; ``ok`` says whether the largest difference is within 1e-4.
    """
    model, meta = load_model(checkpoint_path)
    _, ort = require_onnx()
    out_path = Path(out_path)
    if images is None:
        images, source = check_images(meta, check_batch, data_dir)
    else:
        source = f"{len(images)} given images"
    x = normalise(images[:check_batch], meta)
    exporter = write_onnx(model, x[:2], out_path, meta)

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(out_path), options, providers=["CPUExecutionProvider"])
    torch_model = Runtime(torch.device("cpu")).prepare(LogitsAndEmbedding(model))  # as Compare profiles it

    def run_torch(batch):
        with torch.inference_mode():
            return torch_model(batch)

    def run_onnx(batch):
        return session.run(None, {"input": batch})

    ref = [t.float() for t in run_torch(x)]
    got = [torch.from_numpy(a) for a in run_onnx(x.numpy())]
    diffs = [float((r - g).abs().max()) for r, g in zip(ref, got)]
    b256 = x.repeat(math.ceil(256 / len(x)), 1, 1, 1)[:256].contiguous()
    result = {
        "checkpoint": str(checkpoint_path), "onnx_path": str(out_path), "arch": meta["arch"], "phase": meta.get("phase"),
        "exporter": exporter, "opset": OPSET, "inputs": ["input"], "outputs": ["logits", "embedding"],
        "onnx_bytes": out_path.stat().st_size, "images": source, "max_abs_diff": max(diffs),
        "max_abs_diff_logits": diffs[0], "max_abs_diff_embedding": diffs[1],
        "top1_agreement": float((ref[0].argmax(1) == got[0].argmax(1)).float().mean()),
        "tolerance": TOLERANCE, "threads": torch.get_num_threads(), "onnxruntime": ort.__version__,
        "onnx_ms_b1": median_ms(run_onnx, x[:1].numpy(), runs), "torch_ms_b1": median_ms(run_torch, x[:1], runs),
        "onnx_ms_b256": median_ms(run_onnx, b256.numpy(), runs_b256),
        "torch_ms_b256": median_ms(run_torch, b256, runs_b256)}
    result["ok"] = result["max_abs_diff"] <= TOLERANCE
    return result


def summary_markdown(r: dict) -> str:
    """The export report as a short markdown block (Compare shows it beside the download)."""
    verdict = "within" if r["ok"] else "ABOVE"
    return (f"**ONNX export of {r['arch']}** ({r['phase'] or 'model'}, opset {r['opset']}, "
            f"{r['onnx_bytes'] / 1e6:.2f} MB): outputs `logits`, `embedding`; input normalised float32 "
            f"`[batch, 3, H, W]` (mean/std in the file's metadata).\n\n"
            f"Check on {r['images']}: max |ONNX − PyTorch| = {r['max_abs_diff']:.2e} ({verdict} {r['tolerance']:g}); "
            f"top-1 agreement {r['top1_agreement'] * 100:.1f} %.\n\n"
            f"| CPU latency ({r['threads']} threads) | batch 1 | batch 256 |\n|---|---|---|\n"
            f"| onnxruntime {r['onnxruntime']} | {r['onnx_ms_b1']:.3f} ms | {r['onnx_ms_b256']:.1f} ms |\n"
            f"| PyTorch {torch.__version__.split('+')[0]} | {r['torch_ms_b1']:.3f} ms | {r['torch_ms_b256']:.1f} ms |")


def export_for_download(checkpoint: str | Path, out_dir: str | Path, **kwargs) -> tuple[Path, str]:
    """Export ``checkpoint`` into ``out_dir`` (named after it); returns the ONNX path and the
    markdown summary. Raises :class:`ExportError` (one line) when the extra is missing or the check fails."""
    out = Path(out_dir) / f"{Path(checkpoint).stem}.onnx"
    report = export_onnx(checkpoint, out, **kwargs)
    if not report["ok"]:
        raise ExportError(f"ONNX check failed: max abs difference {report['max_abs_diff']:.2e} > {TOLERANCE:g}")
    return out, summary_markdown(report)
